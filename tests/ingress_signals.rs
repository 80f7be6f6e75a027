//! Operating the daemon: SIGHUP certificate reload without dropping sessions, SIGTERM
//! graceful shutdown, and no PHI in the logs even at debug level.

mod common;
use common::*;
use serde_json::json;
use std::time::Duration;

fn held_transaction(gw: &Gateway, go: &std::path::Path, listener: &str) -> serde_json::Value {
    gw.peer(
        listener,
        vec![
            send("EHLO ehr.clinic.test\r\n"),
            send_n(
                "MAIL FROM:<sender@clinic.test>\r\nRCPT TO:<patient@example.net>\r\n",
                2,
            ),
            json!({"wait_file": go, "send": "DATA\r\n"}),
            send("Subject: held\r\n\r\nfinished after the signal\r\n.\r\n"),
            send("QUIT\r\n"),
        ],
    )
}

#[test]
fn sighup_reloads_the_certificate_without_dropping_sessions() {
    if !require_tool("openssl") || !require_tool(PYTHON) {
        return;
    }
    let gw = Gateway::start(GwOpts::default());
    let port = gw.port("smtps");
    let old = served_fingerprint(port, &gw.pki.ca);
    assert_eq!(old, pem_fingerprint(&gw.pki.cert));

    let go = gw.tmp.path().join("go");
    let held = py_spawn(held_transaction(&gw, &go, "smtps"));
    // Wait until the held session is mid-transaction.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while gw.log().matches("TLS established").count() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "held session never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));

    let (cert, key) = gw.pki.new_server_cert();
    std::fs::write(&gw.pki.key, key).expect("write key");
    std::fs::write(&gw.pki.cert, cert).expect("write cert");
    let new = pem_fingerprint(&gw.pki.cert);
    assert_ne!(new, old);
    gw.signal("HUP");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !gw.log().contains("configuration reloaded") {
        assert!(
            std::time::Instant::now() < deadline,
            "no reload:\n{}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(served_fingerprint(port, &gw.pki.ca), new);

    std::fs::write(&go, b"").expect("release held session");
    let t = py_wait(held);
    assert_eq!(
        t.tls["peer_sha256"],
        json!(old),
        "held session was re-handshaked"
    );
    assert_eq!(t.line(2), "354 End data with <CR><LF>.<CR><LF>");
    let id = t.steps[3].replies[0]
        .queued_id()
        .expect("held session completed");
    assert!(gw
        .message(&id)
        .0
        .ends_with(b"finished after the signal\r\n"));

    // A broken certificate at reload: refused, the last good one stays, process lives.
    std::fs::write(
        &gw.pki.cert,
        b"-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n",
    )
    .expect("break cert");
    gw.signal("HUP");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !gw.log().contains("reload refused") {
        assert!(
            std::time::Instant::now() < deadline,
            "no refusal:\n{}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut gw = gw;
    assert!(
        gw.wait_exit(Duration::from_millis(200)).is_none(),
        "process died"
    );
    assert_eq!(served_fingerprint(port, &gw.pki.ca), new);
}

#[test]
fn sigterm_answers_idle_sessions_finishes_transactions_and_exits_zero() {
    if !require_tool(PYTHON) {
        return;
    }
    let mut gw = Gateway::start(GwOpts::default());
    let go = gw.tmp.path().join("go");
    let mut spec = gw.peer(
        "submission",
        vec![
            send("EHLO ehr.clinic.test\r\n"),
            send("STARTTLS\r\n"),
            starttls(),
            send("EHLO ehr.clinic.test\r\n"),
            send_n(
                "MAIL FROM:<sender@clinic.test>\r\nRCPT TO:<patient@example.net>\r\n",
                2,
            ),
            json!({"wait_file": go, "send": "DATA\r\n"}),
            send("Subject: held\r\n\r\nfinished during shutdown\r\n.\r\n"),
            send("QUIT\r\n"),
        ],
    );
    spec["steps"][5]["timeout"] = json!(20);
    let busy = py_spawn(spec);
    let idle = py_spawn(gw.peer(
        "smtps",
        vec![
            send("EHLO ehr.clinic.test\r\n"),
            json!({"replies": 1, "timeout": 30}),
        ],
    ));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while gw.log().matches("TLS established").count() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "sessions never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    gw.signal("TERM");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !gw.log().contains("shutting down") {
        assert!(
            std::time::Instant::now() < deadline,
            "no shutdown:\n{}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Idle sessions are told at once.
    let t = py_wait(idle);
    assert_eq!(
        t.line(1),
        format!("421 4.3.2 {HOSTNAME} Service shutting down")
    );
    // New connections are no longer accepted.
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", gw.port("smtps"))).is_err(),
        "still accepting after SIGTERM"
    );
    // The session in the middle of a transaction finishes it.
    std::fs::write(&go, b"").expect("release busy session");
    let t = py_wait(busy);
    assert_eq!(t.line(5), "354 End data with <CR><LF>.<CR><LF>");
    let id = t.steps[6].replies[0]
        .queued_id()
        .expect("busy session completed");
    assert!(gw.message(&id).0.ends_with(b"finished during shutdown\r\n"));
    let st = gw.wait_exit(Duration::from_secs(15)).expect("did not exit");
    assert!(st.success(), "exit status {st}");
    assert!(gw.log().contains("stopped"));
}

#[test]
fn no_phi_in_logs_at_debug_level() {
    if !require_tool(PYTHON) {
        return;
    }
    let gw = Gateway::start(GwOpts {
        log_level: "debug",
        users: vec!["alice"],
        ..GwOpts::default()
    });
    let canary = "zq7canary4711";
    let msg = format!(
        "From: <sender@clinic.test>\r\nTo: <{canary}@example.net>\r\nSubject: diagnosis {canary}\r\n\r\npatient {canary} has results\r\n.\r\n"
    );
    let t = py(gw.peer(
        "smtps",
        vec![
            send("EHLO ehr.clinic.test\r\n"),
            send(&auth_plain("alice", PASSWORD)),
            send_n(
                &format!("MAIL FROM:<sender@clinic.test>\r\nRCPT TO:<{canary}@example.net>\r\nRCPT TO:<bad%{canary}@example.net>\r\nDATA\r\n"),
                4,
            ),
            send(&msg),
            // Refused content (bare LF) must not leak into the log either.
            send_n(
                &format!(
                    "MAIL FROM:<x@clinic.test>\r\nRCPT TO:<{canary}@example.net>\r\nBDAT {} LAST\r\n{canary}\n\r\n",
                    canary.len() + 3
                ),
                3,
            ),
        ],
    ));
    assert!(t.steps[3].replies[0].queued_id().is_some(), "{:?}", t.raw);
    assert!(t.lines(2)[2].starts_with("553 5.1.3 "), "{:?}", t.raw);
    assert!(t.lines(4)[2].starts_with("554 5.5.2 "), "{:?}", t.raw);
    let stored = gw.messages();
    assert_eq!(stored.len(), 1);
    assert!(String::from_utf8_lossy(&stored[0].1).contains(canary));
    let log = gw.log();
    assert!(
        log.contains("DEBUG") || log.contains("debug"),
        "not at debug level"
    );
    assert!(log.contains("end of data"), "{log}");
    assert!(!log.contains(canary), "PHI canary in the log:\n{log}");
    assert!(!log.contains(PASSWORD), "password in the log");
}
