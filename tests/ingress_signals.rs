//! Operating the daemon: SIGHUP certificate reload without dropping sessions, SIGTERM
//! graceful shutdown, and no PHI in the logs even at debug level.

mod common;
use common::*;
use serde_json::json;
use std::time::Duration;

/// Wait (hang guard: 30 s) until the peer has created `path` (its `touch` step).
fn wait_touched(path: &std::path::Path, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !path.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what} not reached in 30 s (hang guard)"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A session that stops after MAIL and RCPT were answered (creating `ready`) until
/// `go` exists.
fn held_transaction(
    gw: &Gateway,
    ready: &std::path::Path,
    go: &std::path::Path,
    listener: &str,
) -> serde_json::Value {
    gw.peer(
        listener,
        vec![
            send("EHLO ehr.clinic.test\r\n"),
            send_n(
                "MAIL FROM:<sender@clinic.test>\r\nRCPT TO:<patient@example.net>\r\n",
                2,
            ),
            json!({"touch": ready, "wait_file": go, "send": "DATA\r\n"}),
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

    let (ready, go) = (gw.tmp.path().join("ready"), gw.tmp.path().join("go"));
    let held = py_spawn(held_transaction(&gw, &ready, &go, "smtps"));
    // The held session is mid-transaction once its MAIL and RCPT were answered.
    wait_touched(&ready, "held session mid-transaction");

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
    // Still alive, and (the positive check) still serving the last good certificate.
    let mut gw = gw;
    assert!(gw.wait_exit(Duration::ZERO).is_none(), "process died");
    assert_eq!(served_fingerprint(port, &gw.pki.ca), new);
}

#[test]
fn sigterm_answers_idle_sessions_finishes_transactions_and_exits_zero() {
    if !require_tool(PYTHON) {
        return;
    }
    let mut gw = Gateway::start(GwOpts::default());
    let go = gw.tmp.path().join("go");
    let (busy_ready, idle_ready) = (gw.tmp.path().join("busy"), gw.tmp.path().join("idle"));
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
            json!({"touch": busy_ready, "wait_file": go, "send": "DATA\r\n"}),
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
            json!({"touch": idle_ready, "replies": 1, "timeout": 30}),
        ],
    ));
    // Both sessions in place: the busy one mid-transaction, the idle one after EHLO.
    wait_touched(&busy_ready, "busy session mid-transaction");
    wait_touched(&idle_ready, "idle session after EHLO");
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
    // New connections are no longer accepted (while the busy session still holds the
    // process up). The deadline is a hang guard.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", gw.port("smtps"))).is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "still accepting 10 s after SIGTERM (hang guard)"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
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
