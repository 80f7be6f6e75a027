//! The metrics endpoint of the running binary: counters move when mail flows, queue
//! gauges are there, health and readiness answer, and no address or subject leaks into
//! the exposition. Scraped with Python's urllib, an independent HTTP client.

mod common;
use common::*;
use std::time::{Duration, Instant};

/// A gateway with `[metrics]` on a free port. The harness has no hook for extra
/// sections, so the table rides after the `[delivery]` body it lets us set.
pub fn gateway_with_metrics(extra: &str) -> (Gateway, u16) {
    let port = free_port();
    let gw = Gateway::start(GwOpts {
        delivery: Some(format!(
            "mode = \"sandbox\"\n\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n{extra}\n"
        )),
        ..GwOpts::default()
    });
    (gw, port)
}

#[test]
fn metrics_count_mail_and_never_show_phi() {
    if !require_tool(PYTHON) {
        return;
    }
    let (gw, port) = gateway_with_metrics("");
    let base = format!("http://127.0.0.1:{port}");
    assert_eq!(http_get(&format!("{base}/healthz")).0, 200);
    assert_eq!(http_get(&format!("{base}/readyz")).0, 200);
    assert_eq!(http_get(&format!("{base}/nope")).0, 404);

    let canary = "zq7metricscanary";
    for n in 0..2 {
        let t = py(gw.peer(
            "smtps",
            vec![
                send("EHLO ehr.clinic.test\r\n"),
                send_n(
                    &format!("MAIL FROM:<sender@clinic.test>\r\nRCPT TO:<{canary}{n}@example.net>\r\nDATA\r\n"),
                    3,
                ),
                send(&format!(
                    "Subject: results {canary}\r\n\r\npatient {canary} SSN 078-05-1120\r\n.\r\n"
                )),
                send("QUIT\r\n"),
            ],
        ));
        assert!(t.steps[2].replies[0].queued_id().is_some(), "{:?}", t.raw);
    }
    gw.wait_messages(2, Duration::from_secs(20));

    // Delivery is recorded just after the sandbox write; give it a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    let scrape = loop {
        let (status, body) = http_get(&format!("{base}/metrics"));
        assert_eq!(status, 200);
        let done = metric_sample(
            &body,
            "phigate_delivery_attempts_total{method=\"sandbox\",result=\"delivered\"}",
        );
        if done == Some(2.0) || Instant::now() > deadline {
            break body;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let s = |series: &str| metric_sample(&scrape, series);
    assert_eq!(
        s("phigate_connections_total{listener=\"smtps\"}"),
        Some(2.0),
        "{scrape}"
    );
    assert_eq!(
        s("phigate_messages_total{outcome=\"accepted\",reason=\"accept\"}"),
        Some(2.0),
        "{scrape}"
    );
    assert_eq!(
        s("phigate_delivery_attempts_total{method=\"sandbox\",result=\"delivered\"}"),
        Some(2.0),
        "{scrape}"
    );
    assert_eq!(s("phigate_outcomes_total{event=\"delivered\"}"), Some(2.0));
    assert_eq!(
        s("phigate_eod_to_reply_seconds_count{outcome=\"accepted\"}"),
        Some(2.0)
    );
    assert_eq!(
        s("phigate_eod_to_reply_seconds_bucket{outcome=\"accepted\",le=\"+Inf\"}"),
        Some(2.0)
    );
    assert!(
        s("phigate_delivery_attempt_duration_seconds_count{method=\"sandbox\"}") >= Some(1.0),
        "{scrape}"
    );
    assert_eq!(
        s("phigate_queue_recipients{state=\"delivered\"}"),
        Some(2.0)
    );
    assert_eq!(s("phigate_queue_pending_messages"), Some(0.0));
    assert!(scrape.contains("# TYPE phigate_dlp_findings_total counter"));
    assert!(scrape.contains("# TYPE phigate_dane_lookups_total counter"));
    assert_eq!(s("phigate_ready"), Some(1.0));
    assert!(
        !scrape.contains(canary),
        "PHI canary in the scrape:\n{scrape}"
    );
    assert!(!scrape.contains('@'), "an address in the scrape:\n{scrape}");
    assert!(!scrape.contains("078-05-1120"));
}

/// Refusals at the edge are counted by kind and code, never by address: a failed and a
/// successful AUTH, RCPTs refused for a blocked domain and for a bad parameter, and a
/// connection over the per-IP limit.
#[test]
fn auth_results_rcpt_refusals_and_connection_limits_are_counted() {
    if !require_tool(PYTHON) {
        return;
    }
    let port = free_port();
    let gw = Gateway::start(GwOpts {
        server_extra: "max_connections_per_ip = 1".into(),
        users: vec!["alice"],
        delivery: Some(format!(
            "mode = \"sandbox\"\n\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n"
        )),
        policy: Some(
            "[dlp]\nmode = \"enforce\"\n\n[recipients]\nblocked_domains = [\"blocked.example\"]\n\n[default]\naction = \"accept\"\n".into(),
        ),
        ..GwOpts::default()
    });
    let canary = "zq7refusedcanary";
    let t = py(gw.peer(
        "smtps",
        vec![
            send("EHLO ehr.clinic.test\r\n"),
            send(&auth_plain("alice", "wrong password")),
            send(&auth_plain("alice", PASSWORD)),
            send("MAIL FROM:<sender@clinic.test>\r\n"),
            send(&format!("RCPT TO:<{canary}@blocked.example>\r\n")),
            send(&format!("RCPT TO:<{canary}@example.net> FOO=BAR\r\n")),
            send("QUIT\r\n"),
        ],
    ));
    assert!(t.line(1).starts_with("535 5.7.8"), "{:?}", t.raw);
    assert!(t.line(2).starts_with("235 2.7.0"), "{:?}", t.raw);
    assert!(t.line(4).starts_with("550 5.7.1"), "{:?}", t.raw);
    assert!(t.line(5).starts_with("555 5.5.4"), "{:?}", t.raw);
    // One connection held open: the next one from the same address gets 421.
    let sub = gw.port("submission");
    let mut held = Plain::connect(sub);
    assert!(held.line().starts_with("220 "));
    let mut over = Plain::connect(sub);
    assert!(over.line().starts_with("421 4.7.0"));

    let (status, scrape) = http_get(&format!("http://127.0.0.1:{port}/metrics"));
    assert_eq!(status, 200);
    let s = |series: &str| metric_sample(&scrape, series);
    assert_eq!(
        s("phigate_auth_total{listener=\"smtps\",result=\"failure\"}"),
        Some(1.0),
        "{scrape}"
    );
    assert_eq!(
        s("phigate_auth_total{listener=\"smtps\",result=\"success\"}"),
        Some(1.0),
        "{scrape}"
    );
    assert_eq!(
        s("phigate_rcpt_refused_total{listener=\"smtps\",code=\"5.7.1\"}"),
        Some(1.0),
        "{scrape}"
    );
    assert_eq!(
        s("phigate_rcpt_refused_total{listener=\"smtps\",code=\"5.5.4\"}"),
        Some(1.0),
        "{scrape}"
    );
    assert_eq!(
        s("phigate_connections_refused_total{listener=\"submission\",limit=\"per_ip\"}"),
        Some(1.0),
        "{scrape}"
    );
    assert!(!scrape.contains(canary), "address in the scrape:\n{scrape}");
    assert!(
        !scrape.contains("alice"),
        "identity in the scrape:\n{scrape}"
    );
}
