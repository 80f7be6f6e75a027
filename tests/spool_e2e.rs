//! End-to-end tests of the encrypted spool through the real binary: no plaintext on
//! disk, key rotation through the CLI, queue and quarantine commands over the control
//! socket, and clear errors when the daemon is not running.

mod common;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use common::canary::{contains, forms};
use common::{require_tool, simple_message, Gateway, GwOpts, PYTHON};
use std::path::Path;
use std::time::Duration;

/// Files under `dir` (recursively) holding the canary in any encoding, skipping `except`.
fn scan(dir: &Path, except: &[&Path], canary: &str, hits: &mut Vec<String>, files: &mut usize) {
    let encs = forms(canary);
    for entry in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let p = entry.path();
        if except.iter().any(|e| p == *e) {
            continue;
        }
        if p.is_dir() {
            scan(&p, except, canary, hits, files);
            continue;
        }
        let Ok(bytes) = std::fs::read(&p) else {
            continue;
        };
        *files += 1;
        for (name, e) in &encs {
            if contains(&bytes, e) {
                hits.push(format!("{} ({name})", p.display()));
            }
        }
        // Any mix of case, too.
        if contains(
            &bytes.to_ascii_lowercase(),
            canary.to_ascii_lowercase().as_bytes(),
        ) {
            hits.push(format!("{} (any case)", p.display()));
        }
    }
}

#[test]
fn canary_is_nowhere_on_disk_but_queue_show_body_recovers_it() {
    if !require_tool(PYTHON) {
        return;
    }
    let mut gw = Gateway::configure(GwOpts::spool().keep_content("1h"));
    gw.launch();
    let canary = format!("PhiCanary{}", hex::encode(rand::random::<[u8; 10]>()));
    let attachment = format!("attached lab result {canary} end");
    let eml = format!(
        "From: a@example.org\r\nTo: b@example.net\r\nSubject: report {canary}\r\n\
         MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n\
         --b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nPatient note {canary}\r\n\
         --b1\r\nContent-Type: application/octet-stream; name=\"lab.bin\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n{}\r\n\
         --b1\r\nContent-Type: text/plain; name=\"b.txt\"\r\n\
         Content-Disposition: attachment; filename=\"b.txt\"\r\n\r\nplain attachment {canary}\r\n\
         --b1--\r\n",
        STANDARD.encode(&attachment)
    );
    let id = gw.send_eml(eml.as_bytes());
    gw.wait_drained(Duration::from_secs(20));
    assert!(gw.sandbox_dir().join(format!("{id}.eml")).exists());

    // The decrypted message comes back whole through the control socket.
    let body = gw.cli(&["queue", "show", &id, "--body"]);
    assert!(
        body.status.success(),
        "{}",
        String::from_utf8_lossy(&body.stderr)
    );
    let text = String::from_utf8_lossy(&body.stdout);
    assert!(
        text.contains(&format!("Subject: report {canary}")),
        "{text}"
    );
    assert!(text.contains(&format!("Patient note {canary}")));
    assert!(text.contains(&format!("plain attachment {canary}")));
    assert!(text.contains(&STANDARD.encode(&attachment)));
    let json = gw.cli_json(&["queue", "show", &id, "--body"]);
    let raw = STANDARD
        .decode(json["body_base64"].as_str().expect("body_base64"))
        .expect("base64");
    assert_eq!(
        raw.len() as u64,
        json["summary"]["size"].as_u64().expect("size")
    );
    assert!(gw.log().contains(&format!("msg_id={id}")));
    assert!(gw.log().contains("message content viewed"));

    gw.stop();
    let sandbox = gw.sandbox_dir();
    let own_eml = gw.tmp.path().join("msg.eml");
    let (mut hits, mut files) = (Vec::new(), 0);
    scan(
        gw.tmp.path(),
        &[&sandbox, &own_eml],
        &canary,
        &mut hits,
        &mut files,
    );
    assert!(files >= 5, "scanned only {files} files");
    assert!(hits.is_empty(), "canary found on disk: {hits:?}");
    // Positive control: the scanner does find it in the sandbox output and the
    // base64 attachment is detected through the shifted encodings.
    let (mut control, mut n) = (Vec::new(), 0);
    scan(&sandbox, &[], &canary, &mut control, &mut n);
    assert!(control.iter().any(|h| h.contains("(raw)")), "{control:?}");
    assert!(
        control.iter().any(|h| h.contains("(base64@")),
        "{control:?}"
    );
}

#[test]
fn key_rotation_list_rewrap_and_bad_keyrings_through_the_cli() {
    if !require_tool(PYTHON) {
        return;
    }
    let mut gw = Gateway::configure(
        GwOpts {
            generate_key: false,
            ..GwOpts::spool()
        }
        .keep_content("1h"),
    );
    let out = gw.cli_ok(&["keys", "generate"]);
    assert!(out.contains("generated keyring"), "{out}");
    let again = gw.cli(&["keys", "generate"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("refusing to overwrite"));

    gw.launch();
    let mut ids = vec![gw.send_eml(&simple_message("gen 1"))];
    for n in 2..=3 {
        let out = gw.cli_ok(&["keys", "rotate"]);
        assert!(out.contains("daemon reloaded"), "{out}");
        ids.push(gw.send_eml(&simple_message(&format!("gen {n}"))));
    }
    gw.wait_drained(Duration::from_secs(20));
    let keys = gw.cli_json(&["keys", "list"]);
    let keys = keys.as_array().expect("array");
    assert_eq!(keys.len(), 3, "{keys:?}");
    for k in keys {
        assert_eq!(k["messages"], 1, "{keys:?}");
        assert!(k["events"].as_u64().unwrap_or(0) >= 1, "{keys:?}");
        assert!(k.get("key").is_none());
    }
    let current = keys
        .iter()
        .find(|k| k["current"] == true)
        .and_then(|k| k["id"].as_str())
        .expect("current key")
        .to_string();
    let table = gw.cli_ok(&["keys", "list"]);
    assert!(table.contains(&current));

    let out = gw.cli_ok(&["keys", "rewrap"]);
    assert!(out.starts_with("2 message(s)"), "{out}");
    let keys = gw.cli_json(&["keys", "list"]);
    for k in keys.as_array().expect("array") {
        let want = if k["id"] == current.as_str() { 3 } else { 0 };
        assert_eq!(k["messages"], want, "{keys}");
        // Sealed events (recipient and reply of each delivery) moved with them.
        if k["id"] != current.as_str() {
            assert_eq!(k["events"], 0, "events still under an old key: {keys}");
        } else {
            assert!(k["events"].as_u64().unwrap_or(0) >= 3, "{keys}");
        }
    }
    // The oldest message still opens, now under the current key.
    let body = gw.cli_ok(&["queue", "show", &ids[0], "--body"]);
    assert!(body.contains("Subject: gen 1"));
    gw.stop();

    // Another keyring in place of ours: refused at start-up, naming the missing key.
    let saved = gw.tmp.path().join("saved.keys");
    std::fs::rename(&gw.key_file, &saved).expect("move keyring");
    gw.cli_ok(&["keys", "generate"]);
    let (st, err) = gw.start_fails();
    assert_eq!(st.code(), Some(1), "{err}");
    assert!(
        err.contains("missing from the keyring") && err.contains(&current),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    // Our keyring back, but readable by others: refused, naming the file and mode.
    std::fs::rename(&saved, &gw.key_file).expect("restore keyring");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&gw.key_file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let (st, err) = gw.start_fails();
    assert_eq!(st.code(), Some(1), "{err}");
    assert!(
        err.contains("0644") && err.contains(&gw.key_file.display().to_string()),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    std::fs::set_permissions(&gw.key_file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    gw.launch();
    assert_eq!(
        gw.cli_json(&["keys", "list"]).as_array().map(Vec::len),
        Some(3)
    );
    gw.stop();
}

#[test]
fn queue_and_quarantine_commands_against_the_daemon() {
    if !require_tool(PYTHON) {
        return;
    }
    let mut gw = Gateway::configure(GwOpts::spool());
    // A file where the sandbox directory should be makes every delivery fail
    // transiently, so messages stay deferred in the queue.
    std::fs::create_dir_all(&gw.data).expect("data dir");
    std::fs::write(gw.sandbox_dir(), b"not a directory").expect("block sandbox");
    gw.launch();
    let a = gw.send_eml(&simple_message("first"));
    let b = gw.send_eml(&simple_message("second"));

    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let deferred = loop {
        let list = gw.cli_json(&["queue", "list", "--state", "deferred"]);
        if list.as_array().map(Vec::len) == Some(2) {
            break list;
        }
        assert!(std::time::Instant::now() < deadline, "not deferred: {list}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(deferred.to_string().contains(&a));
    let table = gw.cli_ok(&["queue", "list"]);
    assert!(
        table.starts_with("ID") && table.contains(&b) && table.contains("deferred:1"),
        "{table}"
    );
    assert!(
        !table.contains("rcpt@example.net"),
        "queue list must not show addresses"
    );
    assert_eq!(
        gw.cli_json(&["queue", "list", "--state", "delivered"]),
        serde_json::json!([])
    );
    let bad = gw.cli(&["queue", "list", "--state", "nonsense"]);
    assert!(!bad.status.success());

    let show = gw.cli_ok(&["queue", "show", &a]);
    assert!(
        show.contains("rcpt@example.net") && show.contains("deferred"),
        "{show}"
    );
    assert!(show.contains("sandbox write failed"), "{show}");
    assert!(!show.contains("hello"), "no body without --body: {show}");
    let shown = gw.cli_json(&["queue", "show", &a]);
    assert!(shown["recipients"][0]["attempts"].as_u64() >= Some(1));
    assert!(shown["body_base64"].is_null());

    let stats = gw.cli_json(&["queue", "stats"]);
    assert_eq!(stats["pending"], 2, "{stats}");
    assert!(gw.cli_ok(&["queue", "stats"]).contains("pending         2"));
    assert!(gw.cli_ok(&["status"]).contains("running"));

    assert_eq!(
        gw.cli_ok(&["queue", "retry", &a]).trim(),
        "1 message(s) scheduled for immediate retry"
    );
    let out = gw.cli_ok(&["queue", "delete", &b]);
    assert!(out.contains("crypto-shredded"));
    let gone = gw.cli(&["queue", "show", &b, "--body"]);
    assert!(!gone.status.success());
    assert!(String::from_utf8_lossy(&gone.stderr).contains("shredded"));
    assert_eq!(gw.cli_json(&["queue", "stats"])["pending"], 1);
    let unknown = gw.cli(&["queue", "show", "01ARZ3NDEKTSV4RRFFQ69G5FAV"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("not in the spool"));

    assert_eq!(gw.cli_json(&["quarantine", "list"]), serde_json::json!([]));
    assert!(gw.cli_ok(&["quarantine", "list"]).starts_with("ID"));
    let notq = gw.cli(&["quarantine", "release", &a]);
    assert!(String::from_utf8_lossy(&notq.stderr).contains("is not quarantined"));

    // Unblock the sandbox; retry --all delivers what is left.
    std::fs::remove_file(gw.sandbox_dir()).expect("unblock");
    gw.cli_ok(&["queue", "retry", "--all"]);
    gw.wait_drained(Duration::from_secs(20));
    assert!(gw.sandbox_dir().join(format!("{a}.eml")).exists());
    assert!(!gw.sandbox_dir().join(format!("{b}.eml")).exists());
    gw.stop();

    for args in [vec!["queue", "list"], vec!["keys", "list"], vec!["status"]] {
        let out = gw.cli(&args);
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.starts_with("phigate: daemon not running (control socket "),
            "{err}"
        );
        assert!(err.contains("control.sock"), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
}
