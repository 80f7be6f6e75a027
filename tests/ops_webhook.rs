//! Delivery webhooks from the running binary: a loopback HTTP server in this test
//! answers the first POST with 500 and later ones with 200; the event must arrive
//! again (retry), signed with HMAC-SHA256 over the body, without addresses.

mod common;
use common::*;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::time::{Duration, Instant};

fn hmac_hex(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("hmac key");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
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
    for r in &all {
        let signature = r.header("X-Phigate-Signature").unwrap_or_default();
        let want = format!(
            "sha256={}",
            hmac_hex(b"s3cret-shared-with-the-ehr", &r.body)
        );
        assert_eq!(signature, want, "bad signature");
        assert_ne!(signature, format!("sha256={}", hmac_hex(b"wrong", &r.body)));
    }
    let body = String::from_utf8_lossy(&all[0].body).to_string();
    let v: serde_json::Value = serde_json::from_str(&body).expect("json payload");
    assert_eq!(v["message_id"], serde_json::json!(id));
    assert_eq!(v["status"], "delivered");
    assert_eq!(v["recipient_index"], 0);
    assert!(
        v["time"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{body}"
    );
    assert!(
        !body.contains(canary) && !body.contains('@'),
        "address in payload: {body}"
    );
    assert!(gw.log().contains("webhook POST failed, will retry"));
}
