//! Delivery webhooks from the running binary: a loopback HTTP server in this test
//! answers the first POST with 500 and later ones with 200; the event must arrive
//! again (retry, same event ID), signed `t=UNIX,v1=HMAC-SHA256(secret, t + "." + body)`
//! (checked by Python's hmac module, not phigate's code), without addresses.

mod common;
use common::*;
use std::io::Write;
use std::time::{Duration, Instant};

/// Python's verdict on a signature header: "ok" or why not (5-minute tolerance).
fn py_verify(secret: &str, header: &str, body: &[u8]) -> String {
    let script = r#"
import hmac, hashlib, sys, time
secret, header = sys.argv[1].encode(), sys.argv[2]
body = sys.stdin.buffer.read()
parts = dict(p.split("=", 1) for p in header.split(","))
t = parts["t"]
want = hmac.new(secret, t.encode() + b"." + body, hashlib.sha256).hexdigest()
if abs(time.time() - int(t)) > 300:
    print("stale")
elif not hmac.compare_digest(want, parts["v1"]):
    print("bad")
else:
    print("ok")
"#;
    let mut child = std::process::Command::new(PYTHON)
        .args(["-c", script, secret, header])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(body)
        .expect("write");
    let out = child.wait_with_output().expect("python3");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn outcomes_are_posted_signed_and_retried_after_a_500() {
    if !require_tool(PYTHON) {
        return;
    }
    // 500 to the first POST, 200 after: the event must come again.
    let (port, got) = http_receiver(|n| {
        if n == 0 {
            "500 Internal Server Error"
        } else {
            "200 OK"
        }
    });
    let secrets = tempfile::tempdir().expect("tempdir");
    let secret_file = secrets.path().join("hook.secret");
    std::fs::write(&secret_file, "s3cret-shared-with-the-ehr\n").expect("secret");
    let gw = Gateway::start(GwOpts {
        delivery: Some(format!(
            "mode = \"sandbox\"\n\n[[webhook]]\nurl = \"http://127.0.0.1:{port}/hook\"\nsecret_file = \"{}\"\nevents = [\"delivered\"]\n",
            secret_file.display()
        )),
        ..GwOpts::default()
    });
    let canary = "zq7hookcanary";
    let submit = || {
        let t = py(gw.peer(
            "smtps",
            vec![
                send("EHLO ehr.clinic.test\r\n"),
                send_n(
                    &format!(
                        "MAIL FROM:<sender@clinic.test>\r\nRCPT TO:<{canary}@example.net>\r\nDATA\r\n"
                    ),
                    3,
                ),
                send(&format!("Subject: {canary}\r\n\r\nlab result\r\n.\r\n")),
                send("QUIT\r\n"),
            ],
        ));
        t.steps[2].replies[0].queued_id().expect("queued")
    };
    let id = submit();

    // First POST gets 500; the retry comes about a second later.
    let deadline = Instant::now() + Duration::from_secs(20);
    while got.lock().expect("lock").len() < 2 {
        assert!(
            Instant::now() < deadline,
            "expected a retry after the 500; got {:?}\n{}",
            got.lock().expect("lock"),
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The webhook's sender posts one event at a time, in order: a second message's event
    // arrives only once the first is done, so its arrival (not a fixed wait) shows that
    // the 200 stopped the retries.
    let second = submit();
    let deadline = Instant::now() + Duration::from_secs(20);
    while got.lock().expect("lock").len() < 3 {
        assert!(
            Instant::now() < deadline,
            "no event for the second message in 20 s (hang guard)\n{}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut all = got.lock().expect("lock").clone();
    let third: serde_json::Value = serde_json::from_slice(&all[2].body).expect("json payload");
    assert_eq!(
        third["message_id"],
        serde_json::json!(second),
        "a 200 must stop the retries: {all:?}"
    );
    all.truncate(2);
    assert_eq!(all[0].body, all[1].body, "the retry carries the same event");
    assert_eq!(
        all[0].header("X-Phigate-Event-Id"),
        all[1].header("X-Phigate-Event-Id")
    );
    for r in &all {
        let signature = r.header("X-Phigate-Signature").unwrap_or_default();
        assert_eq!(
            py_verify("s3cret-shared-with-the-ehr", &signature, &r.body),
            "ok"
        );
        assert_eq!(py_verify("wrong", &signature, &r.body), "bad");
    }
    let body = String::from_utf8_lossy(&all[0].body).to_string();
    let v: serde_json::Value = serde_json::from_str(&body).expect("json payload");
    assert_eq!(v["message_id"], serde_json::json!(id));
    assert_eq!(v["type"], "message.delivered");
    assert_eq!(v["recipient_index"], 0);
    assert_eq!(
        v["id"].as_str(),
        all[0].header("X-Phigate-Event-Id").as_deref()
    );
    assert!(
        v["created"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{body}"
    );
    assert!(
        !body.contains(canary) && !body.contains('@'),
        "address in payload: {body}"
    );
    assert!(gw.log().contains("webhook POST failed, will retry"));
}
