//! Delivery webhooks from the running binary: a loopback HTTP server in this test
//! answers the first POST with 500 and later ones with 200; the event must arrive
//! again (retry), signed with HMAC-SHA256 over the body, without addresses.

mod common;
use common::*;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
struct Received {
    signature: String,
    body: Vec<u8>,
}

/// A minimal HTTP/1.1 server: records each POST, answers 500 to the first, 200 after.
fn hook_server() -> (u16, Arc<Mutex<Vec<Received>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind hook server");
    let port = listener.local_addr().expect("addr").port();
    let got = Arc::new(Mutex::new(Vec::new()));
    let got2 = got.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let (mut len, mut sig) = (0usize, String::new());
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                let lower = line.to_ascii_lowercase();
                if let Some(v) = lower.strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
                if lower.starts_with("x-phigate-signature:") {
                    sig = line["x-phigate-signature:".len()..].trim().to_string();
                }
            }
            let mut body = vec![0; len];
            if reader.read_exact(&mut body).is_err() {
                continue;
            }
            let mut all = got2.lock().expect("lock");
            let status = if all.is_empty() {
                "500 Internal Server Error"
            } else {
                "200 OK"
            };
            all.push(Received {
                signature: sig,
                body,
            });
            drop(all);
            let _ = stream.write_all(
                format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            );
        }
    });
    (port, got)
}

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
    let (port, got) = hook_server();
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
    let id = t.steps[2].replies[0].queued_id().expect("queued");

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
    std::thread::sleep(Duration::from_millis(1500));
    let all = got.lock().expect("lock").clone();
    assert_eq!(all.len(), 2, "a 200 must stop the retries: {all:?}");
    assert_eq!(all[0].body, all[1].body, "the retry carries the same event");
    for r in &all {
        let want = format!(
            "sha256={}",
            hmac_hex(b"s3cret-shared-with-the-ehr", &r.body)
        );
        assert_eq!(r.signature, want, "bad signature");
        assert_ne!(
            r.signature,
            format!("sha256={}", hmac_hex(b"wrong", &r.body))
        );
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
