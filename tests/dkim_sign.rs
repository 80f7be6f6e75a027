//! DKIM signing verified by an independent verifier (Python dkimpy): keys made with
//! `phigate dkim generate` (Ed25519 and RSA-2048), mail through the real binary, the
//! delivered copies checked against the TXT records the command printed. The body has a
//! long line (re-encoded by phigate before signing) and 8-bit text.

mod common;
use common::*;
use serde_json::{json, Value};
use std::time::Duration;

/// The record value from `NAME. IN TXT "a" "b"`: the quoted strings joined.
fn record_of(line: &str) -> (String, String) {
    let (name, rest) = line.split_once(" IN TXT ").expect("TXT line");
    let value: String = rest
        .split('"')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, s)| s)
        .collect();
    (name.trim_end_matches('.').to_string(), value)
}

#[test]
fn signatures_verify_with_dkimpy_for_both_algorithms() {
    if !require_tool(PYTHON) {
        return;
    }
    let keys = tempfile::tempdir().expect("tempdir");
    let ed = keys.path().join("clinic.ed1.key");
    let rsa = keys.path().join("lab.rsa1.key");
    let mut opts = GwOpts::spool();
    opts.server_extra += &format!(
        "\n[[dkim]]\ndomain = \"clinic.test\"\nselector = \"ed1\"\nkey_file = \"{}\"\n\
         \n[[dkim]]\ndomain = \"lab.test\"\nselector = \"rsa1\"\nkey_file = \"{}\"\nmatch_from = [\"lab.test\", \"*.lab.test\"]\n",
        ed.display(),
        rsa.display()
    );
    let mut gw = Gateway::configure(opts);
    let mut records = serde_json::Map::new();
    for (domain, sel, alg, path) in [
        ("clinic.test", "ed1", "ed25519", &ed),
        ("lab.test", "rsa1", "rsa", &rsa),
    ] {
        let out = gw.cli_ok(&[
            "dkim",
            "generate",
            domain,
            "--selector",
            sel,
            "--algorithm",
            alg,
            "--key-file",
            &path.display().to_string(),
        ]);
        assert_eq!(out.lines().count(), 1, "the record alone on stdout: {out}");
        let (name, value) = record_of(out.trim());
        assert_eq!(name, format!("{sel}._domainkey.{domain}"));
        assert!(
            value.starts_with(&format!("v=DKIM1; k={alg}; p=")),
            "{value}"
        );
        records.insert(name, json!(value));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).expect("key").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "a signing key is private");
        let again = gw.cli(&[
            "dkim",
            "generate",
            domain,
            "--selector",
            sel,
            "--key-file",
            &path.display().to_string(),
        ]);
        assert!(
            !again.status.success(),
            "an existing key is never overwritten"
        );
    }
    gw.launch();

    let long = "lab;".repeat(600);
    let body = format!("Grüße, Ihr Labor.\r\n{long}\r\nEnde.\r\n");
    let mail = |from: &str| {
        format!(
            "From: Clinic <{from}>\r\nTo: <rcpt@example.net>\r\nSubject: Results\r\n\
             Date: Thu, 03 Dec 2026 10:00:00 +0000\r\nMessage-ID: <m-{from}>\r\n\
             MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Transfer-Encoding: 8bit\r\n\r\n{body}"
        )
        .into_bytes()
    };
    let ids = [
        gw.send_eml(&mail("results@clinic.test")),
        gw.send_eml(&mail("ehr@north.lab.test")),
        gw.send_eml(&mail("someone@other.test")),
    ];
    let msgs = gw.wait_messages(3, Duration::from_secs(30));
    let path_of = |id: &str| {
        let m = msgs.iter().find(|m| m.0 == id).expect("delivered");
        let p = gw.tmp.path().join(format!("{id}.check.eml"));
        std::fs::write(&p, &m.1).expect("copy");
        p
    };
    let paths: Vec<String> = ids
        .iter()
        .map(|i| path_of(i).display().to_string())
        .collect();
    // A tampered copy: the verifier must be able to fail.
    let tampered = gw.tmp.path().join("tampered.eml");
    let mut t = std::fs::read(&paths[0]).expect("copy");
    let at = t.len() - 4;
    t[at] = b'X';
    std::fs::write(&tampered, t).expect("tampered");
    let mut all = paths.clone();
    all.push(tampered.display().to_string());
    let out = run_python(
        &peers_dir().join("dkim_verify.py"),
        &json!({"messages": all, "records": Value::Object(records)}),
    );
    let r = out.as_array().expect("results");
    assert_eq!(
        (r[0]["ok"].clone(), r[0]["a"].clone(), r[0]["d"].clone()),
        (json!(true), json!("ed25519-sha256"), json!("clinic.test")),
        "{out}"
    );
    assert_eq!(
        (r[1]["ok"].clone(), r[1]["a"].clone(), r[1]["d"].clone()),
        (json!(true), json!("rsa-sha256"), json!("lab.test")),
        "a *.lab.test From is signed by lab.test: {out}"
    );
    assert_eq!(r[2]["signed"], false, "no key for other.test: {out}");
    assert_eq!(
        (r[3]["signed"].clone(), r[3]["ok"].clone()),
        (json!(true), json!(false))
    );
    // Signed after the long line was re-encoded: the signed copy is conformant.
    let signed = std::fs::read_to_string(&paths[0]).expect("copy");
    assert!(signed.contains("quoted-printable") && signed.lines().all(|l| l.len() <= 998));
    // No key material in the log.
    let pem = std::fs::read_to_string(&ed).expect("key");
    let secret = pem.lines().nth(1).expect("base64 line");
    assert!(!gw.log().contains(secret));
    gw.stop();
}

#[test]
fn require_dkim_refuses_mail_for_a_domain_without_a_key() {
    if !require_tool(PYTHON) {
        return;
    }
    let keys = tempfile::tempdir().expect("tempdir");
    let ed = keys.path().join("clinic.key");
    let mut opts = GwOpts::spool();
    opts.policy = Some("require_dkim = true\n".into());
    opts.server_extra += &format!(
        "\n[[dkim]]\ndomain = \"clinic.test\"\nselector = \"s\"\nkey_file = \"{}\"\n",
        ed.display()
    );
    let mut gw = Gateway::configure(opts);
    gw.cli_ok(&[
        "dkim",
        "generate",
        "clinic.test",
        "--selector",
        "s",
        "--algorithm",
        "ed25519",
        "--key-file",
        &ed.display().to_string(),
    ]);
    gw.launch();
    let send_from = |from: &str| {
        py(gw.peer(
            "smtps",
            vec![
                send("EHLO ehr.clinic.test\r\n"),
                send_n(
                    &format!("MAIL FROM:<{from}>\r\nRCPT TO:<p@example.net>\r\nDATA\r\n"),
                    3,
                ),
                send(&format!(
                    "From: <{from}>\r\nSubject: r\r\n\r\nlab result\r\n.\r\n"
                )),
                send("QUIT\r\n"),
            ],
        ))
    };
    let ok = send_from("results@clinic.test");
    assert!(ok.line(2).starts_with("250"), "{:?}", ok.lines(2));
    let refused = send_from("results@unsigned.test");
    let reply = refused.line(2);
    assert!(reply.starts_with("550 5.7.1"), "{reply}");
    assert!(reply.contains("require_dkim"), "{reply}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(gw.messages_now().len(), 1, "nothing half-accepted");
    gw.stop();
}
