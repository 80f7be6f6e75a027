//! Independent oracles for what phigate stores: records written by the running daemon are
//! opened and verified by `tests/peers/oracle_store.py` (Python's `cryptography`, Debian
//! python3-cryptography) from docs/storage-format.md alone: the keyring file, the wrapped
//! data key, the AES-256-GCM sealed content and envelope, and the audit chain's HMACs,
//! hash links, head marker and sealed person fields. phigate reading its own records back
//! would pass even if the format drifted from the documentation; this cannot.

mod common;

use common::*;
use phigate::spool::{Keyring, Spool, Store, Tree};
use phigate::types::MessageId;
use serde_json::{json, Value};
use std::process::{Command, Stdio};
use std::time::Duration;

fn raw(store: &dyn Store, tree: Tree, key: &[u8]) -> String {
    hex::encode(
        store
            .get(tree, key)
            .expect("read store")
            .unwrap_or_else(|| panic!("no {tree:?} row")),
    )
}

#[test]
fn stored_records_open_and_verify_with_an_independent_implementation() {
    if !require_tool(PYTHON) {
        return;
    }
    let have_crypto = Command::new(PYTHON)
        .args(["-c", "import cryptography"])
        .status()
        .is_ok_and(|s| s.success());
    if !have_crypto {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "python3-cryptography is missing (CI=true); run scripts/test.sh"
        );
        eprintln!("SKIP: python3-cryptography not installed; run scripts/test.sh");
        return;
    }
    // Content kept after delivery, so the sealed content row is still there to open.
    let mut gw = Gateway::start(GwOpts::spool().keep_content("1h"));
    let tag = hex::encode(rand::random::<[u8; 6]>());
    // A key rotation between the two messages puts their data keys and audit records under
    // two master keys; the oracle must pick each by the ID the row names.
    let mut ids = vec![gw.send_eml(&simple_message(&format!("oracle 0 {tag}")))];
    gw.cli_ok(&["keys", "rotate"]);
    ids.push(gw.send_eml(&simple_message(&format!("oracle 1 {tag}"))));
    // Large enough for a blob file instead of a record.
    let mut big = simple_message(&format!("oracle 2 {tag}"));
    for _ in 0..400 {
        big.extend_from_slice(&[b'y'; 998]);
        big.extend_from_slice(b"\r\n");
    }
    ids.push(gw.send_eml(&big));
    gw.wait_drained(Duration::from_secs(60));
    gw.stop();

    let ring = Keyring::load(&gw.key_file).expect("load keyring");
    let spool = Spool::open(&gw.data.join("spool"), ring).expect("open spool");
    let store = spool.store().as_ref();
    let mut messages = Vec::new();
    for id in &ids {
        let key = id.parse::<MessageId>().expect("message ID").0.to_bytes();
        let blob = gw
            .data
            .join("spool")
            .join("blobs")
            .join(format!("{id}.blob"));
        messages.push(json!({
            "id": id,
            "wrap": raw(store, Tree::Wraps, &key),
            "content": raw(store, Tree::Messages, &key),
            "envelope": raw(store, Tree::Envelopes, &key),
            "blob": blob.exists().then(|| blob.display().to_string()),
        }));
    }
    let mut audit = Vec::new();
    store
        .scan(Tree::Audit, &[], None, &mut |k, v| {
            audit.push(json!([hex::encode(k), hex::encode(v)]));
            true
        })
        .expect("scan audit");
    let meta = |k: &[u8]| {
        store
            .get(Tree::AuditMeta, k)
            .expect("read audit_meta")
            .map(|v| String::from_utf8(v).expect("marker is JSON text"))
    };
    assert!(
        messages[0]["blob"].is_null() && messages[2]["blob"].is_string(),
        "small content in the store, large in a blob file: {messages:?}"
    );
    let spec = json!({
        "keyring": gw.key_file,
        "messages": messages,
        "audit": audit,
        "head": meta(b"head").expect("head marker"),
        "anchor": meta(b"anchor"),
    });
    // phigate's own reading, to compare with.
    let own: Vec<(phigate::types::Envelope, Vec<u8>)> = ids
        .iter()
        .map(|id| spool.load(&id.parse().expect("id")).expect("phigate loads"))
        .collect();
    drop(spool);

    let mut child = Command::new(PYTHON)
        .arg(peers_dir().join("oracle_store.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run oracle");
    std::io::Write::write_all(
        &mut child.stdin.take().expect("stdin"),
        spec.to_string().as_bytes(),
    )
    .expect("write spec");
    let out = child.wait_with_output().expect("oracle output");
    assert!(
        out.status.success(),
        "the independent oracle rejected phigate's store: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Value = serde_json::from_slice(&out.stdout).expect("oracle JSON");

    for (i, (id, (env, content))) in ids.iter().zip(&own).enumerate() {
        let m = &got["messages"][id];
        let text = m["content"].as_str().expect("content");
        assert_eq!(text.as_bytes(), content.as_slice(), "content of {id}");
        assert!(
            text.contains(&format!("Subject: oracle {i} {tag}")),
            "{text}"
        );
        assert_eq!(m["envelope"]["mail_from"], env.mail_from.as_str(), "{m}");
        assert_eq!(
            m["envelope"]["recipients"][0]["address"], "rcpt@example.net",
            "{m}"
        );
    }
    let a = &got["audit"];
    let kinds: Vec<&str> = a["kinds"]
        .as_array()
        .expect("kinds")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(a["records"].as_u64(), Some(kinds.len() as u64));
    for kind in ["message_received", "spooled", "delivered"] {
        assert!(kinds.contains(&kind), "no {kind} in {kinds:?}");
    }
    // Person fields were sealed in the store and open with the derived key.
    let private = a["private"].to_string();
    assert!(private.contains("rcpt@example.net"), "{private}");
    assert!(private.contains("sender@example.org"), "{private}");
}
