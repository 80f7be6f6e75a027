//! End to end through the real binary: send mail, stop the daemon, then `audit verify`
//! and `audit export` show every hop in order, with the TLS facts the client saw, and
//! the canary from subject and body appears neither in the store nor in the export.

mod common;
use common::*;
use std::process::Command;
use std::time::Duration;

const CANARY: &str = "CANARY-7f3a9c-PHI";

fn phigate(gw: &Gateway, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .arg("--config")
        .arg(&gw.config)
        .output()
        .expect("run phigate");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn all_bytes(dir: &std::path::Path, out: &mut Vec<u8>) {
    for e in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            all_bytes(&p, out);
        } else if let Ok(b) = std::fs::read(&p) {
            out.extend_from_slice(&b);
        }
    }
}

#[test]
fn trail_records_every_hop_and_verifies() {
    let mut gw = Gateway::start(GwOpts::default());
    let msg = format!("Subject: results {CANARY}\r\n\r\nBody line {CANARY}\r\n.\r\n");
    let t = py(gw.peer(
        "smtps",
        vec![
            send("EHLO ehr.clinic.test\r\n"),
            send("MAIL FROM:<dr.sender@clinic.test>\r\n"),
            send_n("RCPT TO:<patient@example.net>\r\nDATA\r\n", 2),
            send(&msg),
            send("QUIT\r\n"),
        ],
    ));
    let id = t.steps[3].replies[0]
        .queued_id()
        .unwrap_or_else(|| panic!("not queued: {:?}", t.steps[3]));
    assert_eq!(gw.wait_messages(1, Duration::from_secs(15)).len(), 1);
    // While the daemon runs, the CLI refuses clearly.
    let (ok, _, err) = phigate(&gw, &["audit", "verify"]);
    assert!(!ok && err.contains("the daemon holds the spool"), "{err}");

    gw.signal("TERM");
    assert!(gw.wait_exit(Duration::from_secs(30)).is_some(), "no exit");
    let log = gw.log();
    assert!(log.contains("audit chain head"), "head not logged: {log}");

    let (ok, out, err) = phigate(&gw, &["audit", "verify"]);
    assert!(ok, "verify failed: {out} {err}");
    assert!(
        out.starts_with("ok ") && out.contains(" records, head "),
        "{out}"
    );

    let (ok, out, err) = phigate(&gw, &["audit", "export", "--format", "jsonl"]);
    assert!(ok, "export failed: {err}");
    let recs: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    let kinds: Vec<&str> = recs.iter().filter_map(|r| r["kind"].as_str()).collect();
    let pos = |k: &str| {
        kinds
            .iter()
            .position(|x| *x == k)
            .unwrap_or_else(|| panic!("no {k} in {kinds:?}"))
    };
    let order = [
        "session_opened",
        "message_received",
        "policy_decision",
        "spooled",
        "delivery_attempt",
        "delivered",
    ];
    for w in order.windows(2) {
        assert!(
            pos(w[0]) < pos(w[1]),
            "{} not before {}: {kinds:?}",
            w[0],
            w[1]
        );
    }
    let session = &recs[pos("session_opened")];
    assert_eq!(session["tls_version"], t.tls["version"], "{session}");
    assert_eq!(session["cipher"], t.tls["cipher"], "{session}");
    let received = &recs[pos("message_received")];
    assert_eq!(received["message_id"], id.as_str());
    assert_eq!(received["sender"], "dr.sender@clinic.test");
    assert_eq!(received["recipients"][0], "patient@example.net");
    assert_eq!(recs[pos("delivered")]["recipient"], "patient@example.net");
    assert_eq!(recs[pos("delivery_attempt")]["method"], "sandbox");
    // Sequence numbers are contiguous.
    for (i, r) in recs.iter().enumerate() {
        assert_eq!(r["seq"].as_u64(), Some(i as u64 + 1));
    }
    assert!(!out.contains(CANARY), "canary in export");

    // The raw store holds neither the canary nor the addresses.
    let mut raw = Vec::new();
    all_bytes(&gw.data.join("spool"), &mut raw);
    let raw = String::from_utf8_lossy(&raw);
    assert!(!raw.contains(CANARY), "canary in the spool's raw bytes");
    assert!(!raw.contains("patient@example.net"), "address in clear");
    assert!(!raw.contains("dr.sender@clinic.test"), "address in clear");

    // The export was itself audited, and the chain still verifies.
    let (ok, out, _) = phigate(&gw, &["audit", "export", "--format", "csv"]);
    assert!(ok);
    assert!(
        out.lines().last().unwrap_or("").contains(",export,"),
        "{out}"
    );
    let (ok, out, err) = phigate(
        &gw,
        &["audit", "export", "--recipient", "patient@example.net"],
    );
    assert!(ok, "{err}");
    assert!(out.lines().count() >= 3, "{out}");
    let (ok, out, _) = phigate(&gw, &["audit", "verify"]);
    assert!(ok, "{out}");
}

#[test]
fn verify_and_export_through_the_running_daemon_are_audited() {
    let sockdir = tempfile::tempdir().expect("tempdir");
    let sock = sockdir.path().join("control.sock");
    let gw = Gateway::start(GwOpts {
        server_extra: format!("control_socket = \"{}\"\n", sock.display()),
        ..GwOpts::default()
    });
    let msg = format!("Subject: {CANARY}\r\n\r\n{CANARY}\r\n.\r\n");
    let t = py(gw.peer(
        "smtps",
        vec![
            send("EHLO ehr.clinic.test\r\n"),
            send("MAIL FROM:<dr.sender@clinic.test>\r\n"),
            send_n("RCPT TO:<patient@example.net>\r\nDATA\r\n", 2),
            send(&msg),
            send("QUIT\r\n"),
        ],
    ));
    let id = t.steps[3].replies[0].queued_id().expect("queued");
    assert_eq!(gw.wait_messages(1, Duration::from_secs(15)).len(), 1);
    // The daemon owns the spool; verify and export go through its control socket.
    let (ok, out, err) = phigate(&gw, &["audit", "verify"]);
    assert!(ok, "{err}");
    let before: u64 = out
        .strip_prefix("ok ")
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    let (ok, out, err) = phigate(&gw, &["audit", "export", "--message", &id]);
    assert!(ok, "{err}");
    let kinds: Vec<String> = out
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("jsonl");
            v["kind"].as_str().unwrap_or_default().to_string()
        })
        .collect();
    assert!(kinds.contains(&"delivered".to_string()), "{kinds:?}");
    assert!(!out.contains(CANARY));
    // The export is itself in the trail, and the chain still verifies.
    let (ok, out, err) = phigate(&gw, &["audit", "verify"]);
    assert!(ok, "{err}");
    let after: u64 = out
        .strip_prefix("ok ")
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    assert_eq!(after, before + 1, "export not recorded: {out}");
    let (ok, csv, err) = phigate(&gw, &["audit", "export", "--format", "csv"]);
    assert!(ok, "{err}");
    assert!(
        csv.starts_with("seq,time,kind,message_id,details\n"),
        "{csv}"
    );
    assert!(csv.contains(",export,"), "{csv}");
}
