//! The webhook outbox is durable: with the receiver down, messages go through the real
//! binary, phigate is killed (SIGKILL) and restarted, then the receiver comes up. Every
//! event arrives; a repeat carries the same event ID and body.

mod common;
use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

fn wait_for(timeout: Duration, mut ok: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

#[test]
fn events_survive_kill_9_and_reach_a_receiver_that_was_down() {
    if !require_tool(PYTHON) {
        return;
    }
    // A free port with nothing listening yet: the receiver is down.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let secrets = tempfile::tempdir().expect("tempdir");
    let secret_file = secrets.path().join("hook.secret");
    std::fs::write(&secret_file, "restart-secret\n").expect("secret");
    let metrics_port = free_port();
    let mut gw = Gateway::start(GwOpts {
        delivery: Some(format!(
            "mode = \"sandbox\"\n\n[[webhook]]\nurl = \"http://127.0.0.1:{port}/hook\"\nsecret_file = \"{}\"\n\n[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n",
            secret_file.display()
        )),
        ..GwOpts::default()
    });
    let mut ids = Vec::new();
    for i in 0..5 {
        let t = py(gw.peer(
            "smtps",
            vec![
                send("EHLO ehr.clinic.test\r\n"),
                send_n(
                    &format!(
                        "MAIL FROM:<sender@clinic.test>\r\nRCPT TO:<p{i}@example.net>\r\nDATA\r\n"
                    ),
                    3,
                ),
                send("Subject: r\r\n\r\nlab result\r\n.\r\n"),
                send("QUIT\r\n"),
            ],
        ));
        ids.push(t.steps[2].replies[0].queued_id().expect("queued"));
    }
    // Let the sandbox deliver them (their delivered events join the store), then crash.
    std::thread::sleep(Duration::from_secs(3));
    gw.kill();
    gw.restart("info");
    // The backlog gauge shows what the receiver has not got yet.
    let backlog = || {
        let (_, scrape) = http_get(&format!("http://127.0.0.1:{metrics_port}/metrics"));
        metric_sample(&scrape, "phigate_webhook_backlog_events{webhook=\"0\"}")
    };
    let pending = backlog().expect("backlog gauge");
    assert!(
        pending >= 10.0,
        "5 queued + 5 delivered events pending: {pending}"
    );
    let (_, got) = http_receiver_at(port, |_| "200 OK");

    let want: BTreeSet<(String, String)> = ids
        .iter()
        .flat_map(|id| ["message.queued", "message.delivered"].map(|t| (id.clone(), t.to_string())))
        .collect();
    let seen = || -> BTreeSet<(String, String)> {
        got.lock()
            .expect("lock")
            .iter()
            .filter_map(|p| serde_json::from_slice::<serde_json::Value>(&p.body).ok())
            .filter_map(|v| {
                Some((
                    v["message_id"].as_str()?.to_string(),
                    v["type"].as_str()?.to_string(),
                ))
            })
            .collect()
    };
    assert!(
        wait_for(Duration::from_secs(30), || want.is_subset(&seen())),
        "missing: {:?}\n{}",
        want.difference(&seen()).collect::<Vec<_>>(),
        gw.log()
    );
    // Duplicates only as the same event: same ID, same body.
    let mut by_id: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for p in got.lock().expect("lock").iter() {
        let id = p.header("X-Phigate-Event-Id").expect("event id");
        if let Some(prev) = by_id.insert(id.clone(), p.body.clone()) {
            assert_eq!(prev, p.body, "event {id} sent twice with different bodies");
        }
        let body = String::from_utf8_lossy(&p.body);
        assert!(
            !body.contains('@'),
            "address without include_addresses: {body}"
        );
    }
    assert!(by_id.len() >= want.len());
    assert!(
        wait_for(Duration::from_secs(30), || backlog() == Some(0.0)),
        "backlog drains to 0: {:?}",
        backlog()
    );
}

/// An anomaly alert (`Alerts::raise` writes a security_alert audit record) becomes a
/// `security.alert` event and reaches the webhook, carrying counts and rule, no address
/// and not the user name tried.
#[test]
fn security_alert_reaches_the_webhook() {
    if !require_tool(PYTHON) {
        return;
    }
    let (port, got) = http_receiver(|_| "200 OK");
    let secrets = tempfile::tempdir().expect("tempdir");
    let secret_file = secrets.path().join("hook.secret");
    std::fs::write(&secret_file, "alert-secret\n").expect("secret");
    let gw = Gateway::start(GwOpts {
        listeners: vec![listener("smtps", "implicit", &["password"])],
        users: vec!["ehr"],
        delivery: Some(format!(
            "mode = \"sandbox\"\n\n[alerts]\nauth_failures = 2\n\n[[webhook]]\nurl = \"http://127.0.0.1:{port}/hook\"\nsecret_file = \"{}\"\nevents = [\"security_alert\"]\n",
            secret_file.display()
        )),
        ..GwOpts::default()
    });
    py(gw.peer(
        "smtps",
        vec![
            send("EHLO x\r\n"),
            send(&auth_plain("zq7alertuser", "wrong-1")),
            send(&auth_plain("zq7alertuser", "wrong-2")),
            send("QUIT\r\n"),
        ],
    ));
    let alert = || {
        got.lock()
            .expect("lock")
            .iter()
            .filter_map(|p| serde_json::from_slice::<serde_json::Value>(&p.body).ok())
            .find(|v| v["type"] == "security.alert")
    };
    assert!(
        wait_for(Duration::from_secs(20), || alert().is_some()),
        "no security.alert webhook\n{}",
        gw.log()
    );
    let v = alert().expect("alert");
    assert_eq!(v["data"]["alert"], "auth_failures", "{v}");
    assert!(v["data"]["counts"].is_object(), "{v}");
    for p in got.lock().expect("lock").iter() {
        let body = String::from_utf8_lossy(&p.body);
        assert!(
            !body.contains('@') && !body.contains("zq7alertuser"),
            "{body}"
        );
    }
}
