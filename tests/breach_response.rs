//! Breach prevention and response (#17), driving the real binary: a leaked credential
//! that suddenly mails many new domains trips a sending limit and a volume alert, the
//! admin freezes it, mail is still accepted but held, a `kill -9` neither resets the
//! quota nor lifts the freeze, `freeze off` releases delivery to a real receiving MTA,
//! and `audit incident` lists exactly what left, with its TLS evidence, in all three
//! formats and after the content was shredded. A second test covers per-message holds,
//! `--refuse-inbound` and revocation of a credential on an already-open session.

mod common;
use common::*;
use serde_json::{json, Value};
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what} (hang guard)");
}

/// One authenticated transaction over implicit TLS; returns (MAIL, RCPT..., DATA end).
fn transaction(gw: &Gateway, user: &str, rcpts: &[&str], body: &str) -> Vec<String> {
    let mut steps = vec![
        send("EHLO ehr.clinic.test\r\n"),
        send(&auth_plain(user, PASSWORD)),
        send("MAIL FROM:<ehr@clinic.test>\r\n"),
    ];
    for r in rcpts {
        steps.push(send(&format!("RCPT TO:<{r}>\r\n")));
    }
    steps.push(send("DATA\r\n"));
    steps.push(send(&format!(
        "From: <ehr@clinic.test>\r\nSubject: results\r\n\r\n{body}\r\n.\r\n"
    )));
    steps.push(send("QUIT\r\n"));
    let t = py(gw.peer("smtps", steps));
    assert!(t.line(1).starts_with("235"), "AUTH: {:?}", t.steps);
    (2..t.steps.len() - 1)
        .map(|i| t.line(i).to_string())
        .collect()
}

/// Send a message that must be accepted; returns its queue ID.
fn accepted(gw: &Gateway, user: &str, rcpts: &[&str]) -> String {
    let r = transaction(gw, user, rcpts, "Lab results attached.");
    let last = r.last().cloned().unwrap_or_default();
    last.strip_prefix("250 2.0.0 Ok: queued as ")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| panic!("not accepted: {r:?}"))
}

fn audit_records(gw: &Gateway) -> Vec<Value> {
    gw.cli_ok(&["audit", "export"])
        .lines()
        .map(|l| serde_json::from_str(l).expect("audit JSON line"))
        .collect()
}

fn scrape(port: u16) -> String {
    http_get(&format!("http://127.0.0.1:{port}/metrics")).1
}

fn inbox_count(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "eml"))
                .count()
        })
        .unwrap_or(0)
}

fn held_logged(gw: &Gateway, id: &str, after: usize) -> bool {
    gw.log().get(after..).is_some_and(|l| {
        l.lines()
            .any(|x| x.contains("delivery held") && x.contains(id))
    })
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

const DOMAINS: [&str; 4] = ["a.test", "b.test", "c.test", "d.test"];

#[test]
fn leaked_credential_is_limited_alerted_frozen_and_reported() {
    if !require_tool(PYTHON) {
        return;
    }
    let work = tempfile::tempdir().expect("tempdir");
    let syslog = UdpSocket::bind("127.0.0.1:0").expect("syslog socket");
    syslog
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let syslog_port = syslog.local_addr().expect("addr").port();
    let metrics_port = free_port();
    let sink_port = free_port();
    let mut delivery =
        "mode = \"mx\"\ntls_level = \"encrypt\"\nconnect_timeout = \"5s\"\n".to_string();
    // Filled in once the PKI exists (the receiver's CA is the test CA).
    delivery += "extra_ca_file = \"@CA@\"\n";
    for d in DOMAINS {
        delivery += &format!(
            "[delivery.domains.\"{d}\"]\nroute = \"127.0.0.1:{sink_port}\"\ntls_level = \"verify\"\n"
        );
    }
    delivery += &format!(
        "\n[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n\n\
         [audit]\nsyslog = \"udp://127.0.0.1:{syslog_port}\"\n\n\
         [limits]\ndomains_per_hour = 3\nmessages_per_day = 1000\n\
         [[limits.identity]]\nname = \"password:other\"\ndomains_per_hour = 100\n\n\
         [alerts]\nvolume_factor = 3.0\nvolume_min_messages = 1\n"
    );
    let mut gw = Gateway::configure(GwOpts {
        listeners: vec![listener("smtps", "implicit", &["password"])],
        delivery: Some(delivery),
        users: vec!["ehr"],
        control_socket: true,
        server_extra: "\n[queue]\nretry = [\"1s\"]\n".into(),
        ..GwOpts::default()
    });
    let text = std::fs::read_to_string(&gw.config).expect("config");
    std::fs::write(
        &gw.config,
        text.replace("@CA@", &gw.pki.ca.display().to_string()),
    )
    .expect("config");
    gw.launch();

    let inbox = work.path().join("inbox");
    std::fs::create_dir_all(&inbox).expect("inbox");
    let (cert, key) = gw.pki.new_server_cert();
    let mx_pem: PathBuf = work.path().join("mx.pem");
    std::fs::write(&mx_pem, cert).expect("mx cert");
    std::fs::write(work.path().join("mx.key"), key).expect("mx key");
    let sink_log = work.path().join("sink.log");
    let _sink = Proc(
        Command::new(PYTHON)
            .arg(peers_dir().join("tls_sink.py"))
            .arg(sink_port.to_string())
            .arg(&mx_pem)
            .arg(work.path().join("mx.key"))
            .arg(&inbox)
            .stdout(std::fs::File::create(&sink_log).expect("sink log"))
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn tls_sink.py"),
    );
    wait_for("receiving MTA", Duration::from_secs(20), || {
        std::fs::read_to_string(&sink_log).is_ok_and(|s| s.contains("ready"))
    });
    let mx_sha = pem_fingerprint(&mx_pem);
    let start = now_secs();

    // Normal use, then the burst to new domains.
    let m1 = accepted(&gw, "ehr", &["p1@a.test"]);
    let m2 = accepted(&gw, "ehr", &["p2@b.test", "p3@c.test"]);
    wait_for("three deliveries", Duration::from_secs(30), || {
        inbox_count(&inbox) == 3
    });
    // A fourth domain this hour: RCPT is refused, nothing is half-accepted.
    let r = transaction(&gw, "ehr", &["p4@d.test"], "more");
    assert!(r[0].starts_with("250"), "MAIL: {r:?}");
    assert!(
        r[1].starts_with("451 4.7.1"),
        "RCPT over the domain limit: {r:?}"
    );
    assert!(r[1].contains("domains_per_hour"), "{r:?}");
    assert!(!r[2].starts_with("354"), "DATA after a refused RCPT: {r:?}");

    let scraped = scrape(metrics_port);
    assert!(
        metric_sample(
            &scraped,
            "phigate_limit_refusals_total{limit=\"domains_per_hour\",stage=\"rcpt\"}"
        )
        .is_some_and(|v| v >= 1.0),
        "{scraped}"
    );
    assert!(
        metric_sample(&scraped, "phigate_security_alerts_total{kind=\"volume\"}")
            .is_some_and(|v| v >= 1.0),
        "volume alert metric: {scraped}"
    );
    let recs = audit_records(&gw);
    let limit = recs
        .iter()
        .find(|r| r["kind"] == "limit_exceeded")
        .expect("limit_exceeded audit record");
    assert_eq!(limit["limit"], "domains_per_hour");
    assert_eq!(limit["identity"], "password:ehr");
    let alert = recs
        .iter()
        .find(|r| r["kind"] == "security_alert" && r["alert"] == "volume")
        .expect("volume alert audit record");
    assert_eq!(alert["identity"], "password:ehr");
    // The alert reached the syslog mirror as an RFC 5424 line.
    let mut got = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !got.contains("security_alert") && Instant::now() < deadline {
        let mut buf = [0u8; 8192];
        if let Ok(n) = syslog.recv(&mut buf) {
            got.push_str(&String::from_utf8_lossy(&buf[..n]));
            got.push('\n');
        }
    }
    let line = got
        .lines()
        .find(|l| l.contains("security_alert"))
        .unwrap_or_else(|| panic!("no security_alert syslog line: {got}"));
    assert!(line.starts_with("<110>1 "), "RFC 5424 PRI/version: {line}");
    assert!(line.contains("\"alert\":\"volume\""), "{line}");
    for d in DOMAINS {
        assert!(!line.contains(d), "no addresses in alerts: {line}");
    }
    assert!(
        gw.log().contains("security alert"),
        "alert log line missing"
    );

    // Contain: freeze the identity. New mail is accepted, encrypted and held.
    // `--until` below has second resolution: let the clock pass the last send first.
    std::thread::sleep(Duration::from_millis(1100));
    let freeze_at = now_secs();
    let out = gw.cli_ok(&[
        "freeze",
        "on",
        "--identity",
        "password:ehr",
        "--reason",
        "credential leak",
    ]);
    assert!(out.contains("identity password:ehr frozen"), "{out}");
    let before = gw.log().len();
    let m3 = accepted(&gw, "ehr", &["p5@a.test"]);
    wait_for("hold logged", Duration::from_secs(20), || {
        held_logged(&gw, &m3, before)
    });
    assert_eq!(inbox_count(&inbox), 3, "a frozen identity's mail left");
    let status = gw.cli_json(&["freeze", "status"]);
    assert_eq!(
        status["identities"]["password:ehr"]["reason"],
        "credential leak"
    );
    assert_ne!(status["identities"]["password:ehr"]["admin"], "");
    let freeze_rec = audit_records(&gw)
        .into_iter()
        .find(|r| r["kind"] == "freeze")
        .expect("freeze audit record");
    assert_eq!(freeze_rec["action"], "on");
    assert_eq!(freeze_rec["identity"], "password:ehr");
    assert!(freeze_rec["admin"].as_str().is_some_and(|a| !a.is_empty()));

    // kill -9: the day's domain quota and the freeze both survive.
    gw.kill();
    let before = gw.log().len();
    gw.launch();
    wait_for("hold after restart", Duration::from_secs(20), || {
        held_logged(&gw, &m3, before)
    });
    let r = transaction(&gw, "ehr", &["p4@d.test"], "more");
    assert!(
        r[1].starts_with("451 4.7.1"),
        "quota reset by kill -9: {r:?}"
    );
    assert_eq!(inbox_count(&inbox), 3);

    // Release.
    gw.cli_ok(&["freeze", "off", "--identity", "password:ehr"]);
    wait_for("held message delivered", Duration::from_secs(30), || {
        inbox_count(&inbox) == 4
    });
    gw.wait_drained(Duration::from_secs(30));
    // Content is shredded on delivery (content_after_delivery = 0): the report must
    // come from the trail alone.
    let list = gw.cli_json(&["queue", "list"]);
    for id in [&m1, &m2, &m3] {
        let row = list
            .as_array()
            .and_then(|a| a.iter().find(|x| x["id"] == id.as_str()))
            .unwrap_or_else(|| panic!("{id} not listed: {list}"));
        assert_eq!(row["shredded"], true, "{row}");
    }

    let until = (now_secs() + 1).to_string();
    let since = start.saturating_sub(1).to_string();
    let run = |fmt: &str, until: &str| {
        let out = gw.cli(&[
            "audit",
            "incident",
            "--since",
            &since,
            "--until",
            until,
            "--identity",
            "password:ehr",
            "--format",
            fmt,
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(err.contains("verified before reporting: ok"), "{err}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let expected = [
        (&m1, "p1@a.test"),
        (&m2, "p2@b.test"),
        (&m2, "p3@c.test"),
        (&m3, "p5@a.test"),
    ];
    // JSON: field by field.
    let report: Value = serde_json::from_str(&run("json", &until)).expect("json report");
    let rows = report["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 4, "{report}");
    for (row, (id, rcpt)) in rows.iter().zip(expected) {
        assert_eq!(row["message_id"], id.as_str());
        assert_eq!(row["recipient"], rcpt);
        assert_eq!(row["identity"], "password:ehr");
        assert_eq!(row["source_ip"], "127.0.0.1");
        assert_eq!(row["decision"], "accept");
        assert_eq!(row["state"], "delivered");
        assert_eq!(row["tls_method"], "pkix", "{row}");
        assert!(
            row["tls_version"]
                .as_str()
                .is_some_and(|v| v.contains("1.")),
            "{row}"
        );
        assert_eq!(row["peer_cert_sha256"], mx_sha.as_str(), "{row}");
        assert_eq!(row["verified_tls"], true);
    }
    let s = &report["summary"];
    assert_eq!(s["messages"], 3);
    assert_eq!(s["recipients"], 4);
    assert_eq!(s["recipient_domains"], 3);
    assert_eq!(s["individuals"], 4);
    assert_eq!(s["delivered_verified_tls"], 4);
    assert!(report["chain"].as_str().is_some_and(|c| c.contains("ok ")));
    // What left before the freeze: exactly the first two messages.
    let before_freeze: Value =
        serde_json::from_str(&run("json", &freeze_at.to_string())).expect("json");
    let ids: Vec<&str> = before_freeze["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .filter_map(|r| r["message_id"].as_str())
        .collect();
    assert_eq!(ids, vec![m1.as_str(), m2.as_str(), m2.as_str()]);
    // CSV: header and the same rows.
    let csv = run("csv", &until);
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().expect("header").split(',').collect();
    let col = |n: &str| header.iter().position(|h| *h == n).expect(n);
    let body: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(body.len(), 4, "{csv}");
    for (cells, (id, rcpt)) in body.iter().zip(expected) {
        assert_eq!(cells[col("message_id")], id.as_str());
        assert_eq!(cells[col("recipient")], rcpt);
        assert_eq!(cells[col("state")], "delivered");
        assert_eq!(cells[col("tls_method")], "pkix");
        assert_eq!(cells[col("peer_cert_sha256")], mx_sha.as_str());
    }
    // Markdown: statement, summary and one table row per recipient.
    let md = run("md", &until);
    assert!(
        md.contains("Audit chain: verified before reporting: ok"),
        "{md}"
    );
    assert!(
        md.contains("- Individuals (distinct recipients): 4"),
        "{md}"
    );
    assert!(md.contains("- Delivered over verified TLS: 4"), "{md}");
    for (id, rcpt) in expected {
        assert!(
            md.lines()
                .any(|l| l.contains(id.as_str()) && l.contains(rcpt)),
            "{md}"
        );
    }
    // The reports themselves are in the trail.
    let n = audit_records(&gw)
        .iter()
        .filter(|r| r["kind"] == "incident_report")
        .count();
    assert!(n >= 4, "incident reports audited: {n}");
}

#[test]
fn holds_refuse_inbound_and_revocation_of_an_open_session() {
    if !require_tool(PYTHON) {
        return;
    }
    let mut gw = Gateway::start(GwOpts {
        listeners: vec![listener("smtps", "implicit", &["password"])],
        users: vec!["ehr", "doc"],
        control_socket: true,
        server_extra: "\n[queue]\nretry = [\"1s\"]\n".into(),
        delivery: Some(
            "mode = \"sandbox\"\n\n[alerts]\nauth_failures = 2\nnew_source_ip = true\n".into(),
        ),
        ..GwOpts::default()
    });

    // Hold one message: freeze everything first so it cannot leave before the hold.
    gw.cli_ok(&["freeze", "on", "--all"]);
    let before = gw.log().len();
    let id = accepted(&gw, "ehr", &["p1@x.test"]);
    wait_for("freeze hold", Duration::from_secs(20), || {
        held_logged(&gw, &id, before)
    });
    let out = gw.cli_ok(&["queue", "hold", &id]);
    assert!(out.contains("1 message(s) held"), "{out}");
    gw.cli_ok(&["freeze", "off", "--all"]);
    // Still held by the per-message hold after a restart.
    gw.stop();
    let before = gw.log().len();
    gw.launch();
    wait_for("hold after restart", Duration::from_secs(20), || {
        held_logged(&gw, &id, before)
    });
    assert!(gw.messages_now_len() == 0, "held message was delivered");
    let out = gw.cli_ok(&["queue", "release", &id]);
    assert!(out.contains("1 message(s) released"), "{out}");
    gw.message(&id);
    let holds: Vec<String> = audit_records(&gw)
        .iter()
        .filter(|r| r["kind"] == "hold")
        .map(|r| r["action"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(holds, vec!["hold", "release"]);

    // --refuse-inbound: that identity gets 451 4.7.1 at MAIL; others still send.
    gw.cli_ok(&[
        "freeze",
        "on",
        "--identity",
        "password:ehr",
        "--refuse-inbound",
    ]);
    let r = transaction(&gw, "ehr", &["p2@x.test"], "x");
    assert!(r[0].starts_with("451 4.7.1"), "{r:?}");
    accepted(&gw, "doc", &["p3@x.test"]);
    gw.cli_ok(&["freeze", "off"]);
    accepted(&gw, "ehr", &["p4@x.test"]);

    // Revocation: `doc` is authenticated on an open session; the user is deleted and
    // the daemon reloaded; the same session's next MAIL is refused.
    let mark = gw.tmp.path().join("authed");
    let go = gw.tmp.path().join("go");
    let child = py_spawn(gw.peer(
        "smtps",
        vec![
            send("EHLO ehr.clinic.test\r\n"),
            send(&auth_plain("doc", PASSWORD)),
            json!({ "touch": mark, "wait_file": go, "send": "MAIL FROM:<doc@clinic.test>\r\n" }),
            send("QUIT\r\n"),
        ],
    ));
    wait_for("session authenticated", Duration::from_secs(20), || {
        mark.exists()
    });
    gw.cli_ok(&["user", "remove", "doc"]);
    let before = gw.log().len();
    gw.signal("HUP");
    wait_for("reload", Duration::from_secs(20), || {
        gw.log()
            .get(before..)
            .is_some_and(|l| l.contains("configuration reloaded"))
    });
    std::fs::write(&go, "").expect("go");
    let t = py_wait(child);
    assert!(t.line(1).starts_with("235"), "{:?}", t.steps);
    assert!(
        t.line(2).starts_with("535 5.7.8"),
        "revoked session: {:?}",
        t.steps
    );

    // AUTH failures alert (audit + metric), never naming the user tried.
    let steps = vec![
        send("EHLO x\r\n"),
        send(&auth_plain("ehr", "wrong-1")),
        send(&auth_plain("ehr", "wrong-2")),
        send("QUIT\r\n"),
    ];
    py(gw.peer("smtps", steps));
    let alert = audit_records(&gw)
        .into_iter()
        .find(|r| r["kind"] == "security_alert" && r["alert"] == "auth_failures")
        .expect("auth_failures alert");
    assert_eq!(alert["ip"], "127.0.0.1");
    assert!(!alert.to_string().contains("ehr"), "{alert}");

    // New source IP for an identity that has sent before (from 127.0.0.1).
    let mut spec = gw.peer(
        "smtps",
        vec![
            send("EHLO x\r\n"),
            send(&auth_plain("ehr", PASSWORD)),
            send("MAIL FROM:<ehr@clinic.test>\r\n"),
            send("RCPT TO:<p5@x.test>\r\n"),
            send("DATA\r\n"),
            send("Subject: s\r\n\r\nx\r\n.\r\n"),
            send("QUIT\r\n"),
        ],
    );
    spec["source"] = json!("127.0.0.2");
    let t = py(spec);
    assert!(t.line(5).starts_with("250"), "{:?}", t.steps);
    let alert = audit_records(&gw)
        .into_iter()
        .find(|r| r["kind"] == "security_alert" && r["alert"] == "new_source_ip")
        .expect("new_source_ip alert");
    assert_eq!(alert["identity"], "password:ehr");
    assert_eq!(alert["ip"], "127.0.0.2");
}

impl GatewayExt for Gateway {
    fn messages_now_len(&self) -> usize {
        std::fs::read_dir(self.sandbox_dir())
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.path().extension().is_some_and(|x| x == "eml"))
                    .count()
            })
            .unwrap_or(0)
    }
}

trait GatewayExt {
    fn messages_now_len(&self) -> usize;
}

#[test]
fn dlp_burst_and_failed_tls_verification_raise_alerts() {
    if !require_tool(PYTHON) {
        return;
    }
    let work = tempfile::tempdir().expect("tempdir");
    let sink_port = free_port();
    let metrics_port = free_port();
    // The receiver's certificate is not trusted (no extra CA): `verify` must fail.
    let delivery = format!(
        "mode = \"mx\"\ntls_level = \"verify\"\nconnect_timeout = \"5s\"\n\
         [delivery.domains.\"x.test\"]\nroute = \"127.0.0.1:{sink_port}\"\ntls_level = \"verify\"\n\
         \n[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n\
         \n[alerts]\ndlp_findings = 2\n"
    );
    let gw = Gateway::start(GwOpts {
        listeners: vec![listener("smtps", "implicit", &["password"])],
        users: vec!["ehr"],
        control_socket: true,
        delivery: Some(delivery),
        policy: Some("[dlp]\nmode = \"monitor\"\n\n[default]\naction = \"accept\"\n".into()),
        server_extra: "\n[queue]\nretry = [\"1s\"]\n".into(),
        ..GwOpts::default()
    });
    let inbox = work.path().join("inbox");
    std::fs::create_dir_all(&inbox).expect("inbox");
    let (cert, key) = gw.pki.new_server_cert();
    std::fs::write(work.path().join("mx.pem"), cert).expect("mx cert");
    std::fs::write(work.path().join("mx.key"), key).expect("mx key");
    let sink_log = work.path().join("sink.log");
    let _sink = Proc(
        Command::new(PYTHON)
            .arg(peers_dir().join("tls_sink.py"))
            .arg(sink_port.to_string())
            .arg(work.path().join("mx.pem"))
            .arg(work.path().join("mx.key"))
            .arg(&inbox)
            .stdout(std::fs::File::create(&sink_log).expect("sink log"))
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn tls_sink.py"),
    );
    wait_for("receiving MTA", Duration::from_secs(20), || {
        std::fs::read_to_string(&sink_log).is_ok_and(|s| s.contains("ready"))
    });
    // Two distinct identifiers in one message: SSN and card number.
    let r = transaction(
        &gw,
        "ehr",
        &["p1@x.test"],
        "SSN 536-22-1876, card 4111 1111 1111 1111",
    );
    assert!(r.last().is_some_and(|l| l.starts_with("250")), "{r:?}");
    let find = |alert: &str| {
        audit_records(&gw)
            .into_iter()
            .find(|r| r["kind"] == "security_alert" && r["alert"] == alert)
    };
    let dlp = find("dlp_burst").expect("dlp_burst alert");
    assert_eq!(dlp["identity"], "password:ehr");
    assert_eq!(dlp["counts"]["findings"], 2);
    let text = dlp.to_string();
    assert!(
        !text.contains("536-22-1876") && !text.contains("4111"),
        "{text}"
    );
    wait_for("TLS verification alert", Duration::from_secs(30), || {
        find("tls_verification").is_some()
    });
    let tls = find("tls_verification").expect("alert");
    assert_eq!(tls["identity"], "password:ehr");
    assert_eq!(tls["ip"], "127.0.0.1");
    assert!(!tls.to_string().contains("x.test"), "{tls}");
    let scraped = scrape(metrics_port);
    for kind in ["dlp_burst", "tls_verification"] {
        assert!(
            metric_sample(
                &scraped,
                &format!("phigate_security_alerts_total{{kind=\"{kind}\"}}")
            )
            .is_some_and(|v| v >= 1.0),
            "{kind}: {scraped}"
        );
    }
    assert_eq!(inbox_count(&inbox), 0, "delivered over unverified TLS");
}

#[test]
fn removing_a_client_certificate_revokes_its_open_session_and_lockouts_alert() {
    if !require_tool(PYTHON) {
        return;
    }
    let gw = Gateway::start(GwOpts {
        listeners: vec![listener("smtps", "implicit", &["client-cert", "password"])],
        client_ca: true,
        users: vec!["ehr"],
        control_socket: true,
        auth_extra: "client_cert_allow = [\"ehr.clinic.test\"]\nmax_failures = 2\n".into(),
        ..GwOpts::default()
    });
    let mark = gw.tmp.path().join("ready");
    let go = gw.tmp.path().join("go");
    let mut spec = gw.peer(
        "smtps",
        vec![
            send("EHLO ehr.clinic.test\r\n"),
            send("MAIL FROM:<ehr@clinic.test>\r\n"),
            send("RSET\r\n"),
            json!({ "touch": mark, "wait_file": go, "send": "MAIL FROM:<ehr@clinic.test>\r\n" }),
            send("QUIT\r\n"),
        ],
    );
    spec["cert"] = json!(gw.pki.client_cert);
    spec["key"] = json!(gw.pki.client_key);
    let child = py_spawn(spec);
    wait_for("session authorised", Duration::from_secs(20), || {
        mark.exists()
    });
    let text = std::fs::read_to_string(&gw.config).expect("config");
    std::fs::write(
        &gw.config,
        text.replace(
            "client_cert_allow = [\"ehr.clinic.test\"]",
            "client_cert_allow = [\"other.clinic.test\"]",
        ),
    )
    .expect("config");
    let before = gw.log().len();
    gw.signal("HUP");
    wait_for("reload", Duration::from_secs(20), || {
        gw.log()
            .get(before..)
            .is_some_and(|l| l.contains("configuration reloaded"))
    });
    std::fs::write(&go, "").expect("go");
    let t = py_wait(child);
    assert!(
        t.line(1).starts_with("250 2.1.0"),
        "authorised before: {:?}",
        t.steps
    );
    assert!(t.line(3).starts_with("535 5.7.8"), "revoked: {:?}", t.steps);

    // Two failures reach `max_failures`: the lockout is an alert naming only the IP.
    py(gw.peer(
        "smtps",
        vec![
            send("EHLO x\r\n"),
            send(&auth_plain("ehr", "wrong-1")),
            send(&auth_plain("ehr", "wrong-2")),
            send("QUIT\r\n"),
        ],
    ));
    let alert = audit_records(&gw)
        .into_iter()
        .find(|r| r["kind"] == "security_alert" && r["alert"] == "auth_lockout")
        .expect("auth_lockout alert");
    assert_eq!(alert["ip"], "127.0.0.1");
    assert_eq!(alert["identity"], Value::Null);
}

#[test]
fn held_mail_is_quarantined_in_bulk_then_released_or_deleted() {
    if !require_tool(PYTHON) {
        return;
    }
    let gw = Gateway::start(GwOpts {
        listeners: vec![listener("smtps", "implicit", &["password"])],
        users: vec!["ehr", "doc"],
        control_socket: true,
        server_extra: "\n[queue]\nretry = [\"1s\"]\n".into(),
        ..GwOpts::default()
    });
    let start = now_secs();
    gw.cli_ok(&["freeze", "on", "--identity", "password:ehr"]);
    let before = gw.log().len();
    let m1 = accepted(&gw, "ehr", &["p1@x.test"]);
    let m2 = accepted(&gw, "ehr", &["p2@y.test"]);
    let m3 = accepted(&gw, "doc", &["p3@x.test"]);
    gw.message(&m3);
    wait_for("both held", Duration::from_secs(20), || {
        held_logged(&gw, &m1, before) && held_logged(&gw, &m2, before)
    });

    let out = gw.cli_ok(&["quarantine", "add", "--identity", "password:ehr"]);
    assert!(
        out.contains(&m1) && out.contains(&m2) && !out.contains(&m3),
        "{out}"
    );
    let later = (now_secs() + 3600).to_string();
    let out = gw.cli_ok(&["quarantine", "list", "--identity", "password:ehr"]);
    assert_eq!(out.lines().count(), 2, "{out}");
    let out = gw.cli_ok(&[
        "quarantine",
        "list",
        "--identity",
        "password:ehr",
        "--since",
        &later,
    ]);
    assert_eq!(out.lines().count(), 0, "time selection: {out}");
    gw.cli_ok(&["quarantine", "release", &m1]);
    let out = gw.cli_ok(&[
        "quarantine",
        "delete",
        "--identity",
        "password:ehr",
        "--since",
        &start.saturating_sub(1).to_string(),
    ]);
    assert!(out.contains(&m2) && !out.contains(&m1), "{out}");
    // m1 is out of quarantine; its identity's freeze still holds it until lifted.
    gw.cli_ok(&["freeze", "off"]);
    gw.message(&m1);
    gw.wait_drained(Duration::from_secs(30));
    assert_eq!(gw.messages_now_len(), 2, "m2 was deleted, never delivered");

    let out = gw.cli_ok(&[
        "audit",
        "incident",
        "--since",
        &start.saturating_sub(1).to_string(),
        "--until",
        &(now_secs() + 1).to_string(),
        "--format",
        "json",
    ]);
    let report: Value = serde_json::from_str(&out).expect("json");
    let state = |id: &str| {
        report["rows"]
            .as_array()
            .and_then(|a| a.iter().find(|r| r["message_id"] == id))
            .map(|r| {
                (
                    r["state"].clone(),
                    r["tls_method"].clone(),
                    r["verified_tls"].clone(),
                )
            })
            .unwrap_or_else(|| panic!("{id} missing: {report}"))
    };
    assert_eq!(
        state(&m1),
        (json!("delivered"), json!("sandbox"), json!(false))
    );
    assert_eq!(state(&m2).0, json!("deleted"));
    assert_eq!(state(&m3).0, json!("delivered"));
    assert_eq!(report["summary"]["delivered_verified_tls"], 0);
    assert_eq!(report["summary"]["recipient_domains"], 2);
}
