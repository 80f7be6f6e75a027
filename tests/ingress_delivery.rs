//! Accepted mail lands in data_dir/sandbox byte for byte: implicit TLS (swaks),
//! STARTTLS (smtplib, openssl s_client) and BDAT/CHUNKING (raw ssl socket).

mod common;
use common::*;
use serde_json::json;
use std::process::{Command, Stdio};

/// A message with a dot-led line (stuffed by the client, unstuffed by phigate) and
/// 8-bit text; CRLF throughout, as every client sends it on the wire.
const MESSAGE: &[u8] = b"From: <sender@clinic.test>\r\nTo: <patient@example.net>\r\nSubject: lab results\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nLine one\r\n.leading dot line\r\n..two dots\r\n\xc3\xa9t\xc3\xa9\r\nlast line\r\n";

fn check_received(received: &str, tls: &serde_json::Value) {
    let version = tls["version"].as_str().expect("tls.version");
    let cipher = tls["cipher"].as_str().expect("tls.cipher");
    assert!(version.starts_with("TLSv1."), "{tls}");
    assert!(!cipher.is_empty(), "{tls}");
    assert!(
        received.contains(&format!("(using {version} with cipher {cipher})")),
        "Received header lacks TLS facts: {received}"
    );
    assert!(
        received.contains(&format!("by {HOSTNAME} (phigate)")),
        "{received}"
    );
}

#[test]
fn implicit_tls_delivery_with_swaks_is_byte_exact() {
    if !require_tool("swaks") {
        return;
    }
    let gw = Gateway::start(GwOpts::default());
    let file = gw.tmp.path().join("msg.eml");
    // swaks always ends the data with CRLF . CRLF, so the file omits the final CRLF.
    std::fs::write(&file, &MESSAGE[..MESSAGE.len() - 2]).expect("write message");
    let out = Command::new("swaks")
        .args(["--server", "127.0.0.1", "--port"])
        .arg(gw.port("smtps").to_string())
        .args(["--tls-on-connect", "--tls-verify", "--tls-ca-path"])
        .arg(&gw.pki.ca)
        .args(["--ehlo", "ehr.clinic.test", "--from", "sender@clinic.test"])
        .args(["--to", "patient@example.net", "--data"])
        .arg(format!("@{}", file.display()))
        .output()
        .expect("run swaks");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "swaks failed: {text}");
    let id = text
        .lines()
        .find_map(|l| l.split("250 2.0.0 Ok: queued as ").nth(1))
        .unwrap_or_else(|| panic!("no queued reply: {text}"))
        .trim()
        .to_string();
    assert_eq!(id.len(), 26, "ULID expected: {id}");
    let (eml, env) = gw.message(&id);
    let (received, rest) = split_received(&eml);
    assert_eq!(rest, MESSAGE, "stored content differs from what was sent");
    assert!(crlf_only(&eml));
    check_received(&received, &env["tls"]);
    assert!(
        received.contains("from ehr.clinic.test ([127.0.0.1])"),
        "{received}"
    );
    assert!(received.contains(&format!("id {id};")), "{received}");
    assert_eq!(env["mail_from"], "sender@clinic.test");
    assert_eq!(env["recipients"][0]["address"], "patient@example.net");
    assert_eq!(env["listener"], "smtps");
    assert_eq!(env["helo"], "ehr.clinic.test");
    assert_eq!(env["peer_ip"], "127.0.0.1");
    assert_eq!(env["auth"]["method"], "ip");
    assert_eq!(gw.messages().len(), 1);
}

#[test]
fn starttls_delivery_with_smtplib_and_auth_keeps_dsn_parameters() {
    if !require_tool(PYTHON) {
        return;
    }
    let gw = Gateway::start(GwOpts {
        // No network authorisation: the password is what lets this client submit.
        allow_networks: vec!["192.0.2.0/24"],
        users: vec!["alice"],
        ..GwOpts::default()
    });
    let file = gw.tmp.path().join("msg.eml");
    std::fs::write(&file, MESSAGE).expect("write message");
    let args = json!({
        "port": gw.port("submission"), "mode": "starttls", "cafile": gw.pki.ca,
        "from": "sender@clinic.test", "to": ["patient@example.net", "doctor@example.org"],
        "msg_file": file, "user": "alice", "password": PASSWORD,
        "mail_options": ["SIZE=400", "RET=HDRS", "ENVID=case+2B42", "REQUIRETLS"],
        "rcpt_options": ["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;patient@example.net"],
    });
    let out = Command::new(PYTHON)
        .arg(peers_dir().join("smtplib_send.py"))
        .arg(args.to_string())
        .output()
        .expect("run smtplib peer");
    let res: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(res["auth"][0], 235, "{res}");
    assert!(
        res["auth"][1].as_str().unwrap_or("").starts_with("2.7.0"),
        "{res}"
    );
    let ehlo = res["ehlo"][1].as_str().unwrap_or("");
    assert!(
        ehlo.contains("AUTH PLAIN LOGIN") && ehlo.contains("REQUIRETLS"),
        "{ehlo}"
    );
    assert!(
        !ehlo.contains("STARTTLS"),
        "STARTTLS offered inside TLS: {ehlo}"
    );
    assert_eq!(res["data"][0], 250, "{res}");
    let text = res["data"][1].as_str().unwrap_or("");
    let id = text
        .strip_prefix("2.0.0 Ok: queued as ")
        .unwrap_or_else(|| panic!("{text}"));
    let (eml, env) = gw.message(id);
    let (received, rest) = split_received(&eml);
    assert_eq!(rest, MESSAGE);
    check_received(&received, &env["tls"]);
    assert!(received.contains("with ESMTPSA"), "{received}");
    assert_eq!(
        env["auth"],
        json!({"method": "password", "identity": "alice"})
    );
    assert_eq!(env["listener"], "submission");
    assert_eq!(env["params"]["size"], 400);
    assert_eq!(env["params"]["ret"], "hdrs");
    assert_eq!(env["params"]["envid"], "case+42");
    assert_eq!(env["params"]["requiretls"], true);
    let r = &env["recipients"];
    assert_eq!(r.as_array().map(|a| a.len()), Some(2));
    assert_eq!(r[0]["notify"]["success"], true);
    assert_eq!(r[0]["notify"]["failure"], true);
    assert_eq!(r[0]["notify"]["delay"], false);
    assert_eq!(r[0]["orcpt"][1], "patient@example.net");
    assert_eq!(r[1]["address"], "doctor@example.org");
}

#[test]
fn starttls_delivery_with_openssl_s_client() {
    if !require_tool("openssl") {
        return;
    }
    let gw = Gateway::start(GwOpts::default());
    let script = "EHLO ehr.clinic.test\nMAIL FROM:<sender@clinic.test>\nRCPT TO:<patient@example.net>\nDATA\nSubject: s_client\n\nbody via openssl\n.\nQUIT\n";
    let mut child = Command::new("openssl")
        .args([
            "s_client",
            "-starttls",
            "smtp",
            "-crlf",
            "-ign_eof",
            "-brief",
        ])
        .args(["-connect", &format!("127.0.0.1:{}", gw.port("submission"))])
        .args(["-servername", "localhost", "-verify_return_error"])
        .args(["-verify_hostname", "localhost", "-CAfile"])
        .arg(&gw.pki.ca)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run openssl");
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(script.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("openssl output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Verification: OK"), "{stderr}");
    assert!(stdout.contains("250 2.1.0 Ok"), "{stdout}");
    assert!(stdout.contains("250 2.1.5 Ok"), "{stdout}");
    assert!(stdout.contains("354 End data"), "{stdout}");
    assert!(stdout.contains("250 2.0.0 Ok: queued as "), "{stdout}");
    assert!(stdout.contains("221 2.0.0 Bye"), "{stdout}");
    let msgs = gw.messages();
    assert_eq!(msgs.len(), 1);
    let (_, rest) = split_received(&msgs[0].1);
    assert_eq!(rest, b"Subject: s_client\r\n\r\nbody via openssl\r\n");
}

#[test]
fn bdat_chunks_are_stored_byte_exact_and_bare_lf_is_refused() {
    if !require_tool(PYTHON) {
        return;
    }
    let gw = Gateway::start(GwOpts::default());
    let c1 = "Subject: chunked\r\n\r\n.no unstuffing in BDAT\r\n";
    let c2 = "second chunk\r\n";
    let bad = "Subject: bad\r\n\r\nbare\nLF\r\n";
    let t = py(gw.peer(
        "smtps",
        vec![
            send("EHLO ehr.clinic.test\r\n"),
            send("MAIL FROM:<sender@clinic.test>\r\n"),
            send("RCPT TO:<patient@example.net>\r\n"),
            send(&format!("BDAT {}\r\n{c1}", c1.len())),
            send(&format!("BDAT {} LAST\r\n{c2}", c2.len())),
            send("MAIL FROM:<sender@clinic.test>\r\n"),
            send("RCPT TO:<patient@example.net>\r\n"),
            send(&format!("BDAT {} LAST\r\n{bad}", bad.len())),
            send("NOOP\r\n"),
        ],
    ));
    assert!(t.steps[0].replies[0]
        .lines
        .iter()
        .any(|l| l == "250-CHUNKING"));
    assert_eq!(t.line(3), format!("250 2.0.0 {} octets received", c1.len()));
    let id = t.steps[4].replies[0]
        .queued_id()
        .unwrap_or_else(|| panic!("{:?}", t.steps[4]));
    assert_eq!(t.line(5), "250 2.1.0 Ok");
    assert!(t.line(7).starts_with("554 5.5.2 "), "{}", t.line(7));
    assert_eq!(
        t.line(8),
        "250 2.0.0 Ok",
        "session stays in sync after refusal"
    );
    let (eml, _) = gw.message(&id);
    let (_, rest) = split_received(&eml);
    assert_eq!(rest, format!("{c1}{c2}").as_bytes());
    assert_eq!(gw.messages().len(), 1, "refused BDAT message was stored");
}

#[test]
fn data_dot_unstuffing_and_end_detection_are_exact() {
    if !require_tool(PYTHON) {
        return;
    }
    let gw = Gateway::start(GwOpts::default());
    let t = py(gw.peer(
        "smtps",
        vec![
            send("EHLO ehr.clinic.test\r\n"),
            send_n(
                "MAIL FROM:<>\r\nRCPT TO:<patient@example.net>\r\nDATA\r\n",
                3,
            ),
            send("Subject: dots\r\n\r\n..\r\n...x\r\n. \r\n.\r\n"),
        ],
    ));
    assert_eq!(
        t.lines(1),
        [
            "250 2.1.0 Ok",
            "250 2.1.5 Ok",
            "354 End data with <CR><LF>.<CR><LF>"
        ]
    );
    let id = t.steps[2].replies[0].queued_id().expect("queued");
    let (eml, env) = gw.message(&id);
    assert_eq!(
        split_received(&eml).1,
        b"Subject: dots\r\n\r\n.\r\n..x\r\n \r\n"
    );
    assert_eq!(env["mail_from"], "", "null sender kept");
}
