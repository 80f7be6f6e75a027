//! Every refusal phigate's ingress promises, with its exact reply and enhanced code.

mod common;
use common::*;
use std::time::{Duration, Instant};

const STARTTLS_FIRST: &str = "530 5.7.0 Must issue a STARTTLS command first";

#[test]
fn mail_rcpt_data_bdat_auth_before_starttls_are_refused() {
    let gw = Gateway::start(GwOpts {
        users: vec!["alice"],
        ..GwOpts::default()
    });
    let mut c = Plain::connect(gw.port("submission"));
    assert_eq!(c.line(), format!("220 {HOSTNAME} ESMTP phigate"));
    c.write(b"EHLO ehr.clinic.test\r\n");
    let ehlo = c.reply();
    assert!(ehlo.iter().any(|l| l == "250-STARTTLS"), "{ehlo:?}");
    assert!(
        !ehlo.iter().any(|l| l.contains("AUTH")),
        "AUTH offered before TLS: {ehlo:?}"
    );
    assert!(!ehlo.iter().any(|l| l.contains("REQUIRETLS")), "{ehlo:?}");
    assert_eq!(c.cmd(b"MAIL FROM:<sender@clinic.test>\r\n"), STARTTLS_FIRST);
    assert_eq!(c.cmd(b"RCPT TO:<patient@example.net>\r\n"), STARTTLS_FIRST);
    assert_eq!(c.cmd(b"DATA\r\n"), STARTTLS_FIRST);
    assert_eq!(c.cmd(b"BDAT 5 LAST\r\nhello"), STARTTLS_FIRST);
    let plain = auth_plain("alice", PASSWORD);
    assert_eq!(c.cmd(plain.as_bytes()), STARTTLS_FIRST);
    assert_eq!(c.cmd(b"AUTH LOGIN\r\n"), STARTTLS_FIRST);
    // Still a working session: the refusals kept it in sync.
    assert_eq!(c.cmd(b"NOOP\r\n"), "250 2.0.0 Ok");
    assert_eq!(c.cmd(b"QUIT\r\n"), "221 2.0.0 Bye");
    assert!(gw.messages().is_empty());
}

#[test]
fn malformed_commands_get_500_5_5_2() {
    let gw = Gateway::start(GwOpts::default());
    let mut c = Plain::connect(gw.port("submission"));
    c.line();
    assert_eq!(c.cmd(b"FROB\r\n"), "500 5.5.2 Command not recognized");
    assert_eq!(c.cmd(b"NOOP\n"), "500 5.5.2 Bare LF in command refused");
    assert_eq!(c.cmd(b"NO\rOP\r\n"), "500 5.5.2 Bare CR in command refused");
    assert_eq!(
        c.cmd(b"NO\0OP\r\n"),
        "500 5.5.2 NUL byte in command refused"
    );
    // 512 octets including CRLF is the limit (RFC 5321 §4.5.3.1.4).
    let ok = format!("NOOP {}\r\n", "x".repeat(512 - 7));
    assert_eq!(ok.len(), 512);
    assert_eq!(c.cmd(ok.as_bytes()), "250 2.0.0 Ok");
    let long = format!("NOOP {}\r\n", "x".repeat(512 - 6));
    assert_eq!(c.cmd(long.as_bytes()), "500 5.5.2 Line too long");
    let very_long = format!("NOOP {}\r\n", "x".repeat(5000));
    assert_eq!(c.cmd(very_long.as_bytes()), "500 5.5.2 Line too long");
    assert_eq!(c.cmd(b"NOOP\r\n"), "250 2.0.0 Ok", "back in sync");
    // The harmless commands RFC 5321 requires stay available before TLS.
    assert!(c.cmd(b"VRFY someone\r\n").starts_with("252 2.5.0 "));
    assert!(c.cmd(b"HELP\r\n").starts_with("214 2.0.0 "));
    assert_eq!(c.cmd(b"RSET\r\n"), "250 2.0.0 Ok");
}

#[test]
fn bad_sequences_get_503_5_5_1_inside_tls() {
    if !require_tool(PYTHON) {
        return;
    }
    let gw = Gateway::start(GwOpts::default());
    let t = py(gw.peer(
        "smtps",
        vec![
            send("MAIL FROM:<sender@clinic.test>\r\n"),
            send("EHLO ehr.clinic.test\r\n"),
            send("RCPT TO:<patient@example.net>\r\n"),
            send("DATA\r\n"),
            send("BDAT 3 LAST\r\nabc"),
            send("MAIL FROM:<sender@clinic.test>\r\n"),
            send("MAIL FROM:<sender@clinic.test>\r\n"),
            send("DATA\r\n"),
            send("STARTTLS\r\n"),
            send("FROB\r\n"),
        ],
    ));
    assert_eq!(t.line(0), "503 5.5.1 Send EHLO first");
    assert_eq!(t.line(2), "503 5.5.1 Need MAIL before RCPT");
    assert_eq!(t.line(3), "503 5.5.1 Need MAIL command");
    assert_eq!(t.line(4), "503 5.5.1 Need MAIL command");
    assert_eq!(t.line(5), "250 2.1.0 Ok");
    assert_eq!(t.line(6), "503 5.5.1 Nested MAIL command");
    assert_eq!(t.line(7), "554 5.5.1 No valid recipients");
    assert_eq!(t.line(8), "503 5.5.1 TLS already active");
    assert_eq!(t.line(9), "500 5.5.2 Command not recognized");
}

#[test]
fn size_limit_is_enforced_by_parameter_and_while_reading() {
    if !require_tool(PYTHON) {
        return;
    }
    let gw = Gateway::start(GwOpts {
        server_extra: "max_message_size = \"4K\"".into(),
        ..GwOpts::default()
    });
    let big = format!("Subject: big\r\n\r\n{}", "0123456789abcdef\r\n".repeat(400));
    let t = py(gw.peer(
        "smtps",
        vec![
            send("EHLO ehr.clinic.test\r\n"),
            send("MAIL FROM:<sender@clinic.test> SIZE=4097\r\n"),
            send("MAIL FROM:<sender@clinic.test> SIZE=4096\r\n"),
            send_n("RCPT TO:<patient@example.net>\r\nDATA\r\n", 2),
            send(&format!("{big}.\r\n")),
            send("MAIL FROM:<sender@clinic.test>\r\n"),
            send("RCPT TO:<patient@example.net>\r\n"),
            send(&format!("BDAT {} LAST\r\n{big}", big.len())),
            send("NOOP\r\n"),
        ],
    ));
    assert!(t.steps[0].replies[0]
        .lines
        .iter()
        .any(|l| l == "250-SIZE 4096"));
    assert_eq!(
        t.line(1),
        "552 5.3.4 Message size exceeds fixed maximum message size"
    );
    assert_eq!(t.line(2), "250 2.1.0 Ok");
    assert_eq!(t.lines(3)[1], "354 End data with <CR><LF>.<CR><LF>");
    assert_eq!(t.line(4), "552 5.3.4 Message exceeds the size limit");
    assert_eq!(t.line(7), "552 5.3.4 Message exceeds the size limit");
    assert_eq!(t.line(8), "250 2.0.0 Ok");
    assert!(gw.messages().is_empty(), "oversize message stored");
}

#[test]
fn too_many_recipients_get_452_4_5_3() {
    if !require_tool(PYTHON) {
        return;
    }
    let gw = Gateway::start(GwOpts {
        server_extra: "max_recipients = 2".into(),
        ..GwOpts::default()
    });
    let t = py(gw.peer(
        "smtps",
        vec![
            send("EHLO ehr.clinic.test\r\n"),
            send_n(
                "MAIL FROM:<s@clinic.test>\r\nRCPT TO:<a@example.net>\r\nRCPT TO:<b@example.net>\r\nRCPT TO:<c@example.net>\r\nDATA\r\n",
                5,
            ),
            send("Subject: three\r\n\r\nhi\r\n.\r\n"),
        ],
    ));
    assert_eq!(
        t.lines(1),
        [
            "250 2.1.0 Ok",
            "250 2.1.5 Ok",
            "250 2.1.5 Ok",
            "452 4.5.3 Too many recipients",
            "354 End data with <CR><LF>.<CR><LF>"
        ]
    );
    let id = t.steps[2].replies[0].queued_id().expect("queued");
    let (_, env) = gw.message(&id);
    let rcpts: Vec<&str> = env["recipients"]
        .as_array()
        .expect("recipients")
        .iter()
        .filter_map(|r| r["address"].as_str())
        .collect();
    assert_eq!(rcpts, ["a@example.net", "b@example.net"]);
}

#[test]
fn idle_client_times_out_with_421_4_4_2() {
    let gw = Gateway::start(GwOpts {
        server_extra: "command_timeout = \"2s\"".into(),
        ..GwOpts::default()
    });
    let mut c = Plain::connect(gw.port("submission"));
    c.line();
    let t0 = Instant::now();
    let line = c.line();
    let waited = t0.elapsed();
    assert!(
        line.starts_with("421 4.4.2 ") && line.contains("Timeout"),
        "{line}"
    );
    // Not before the timeout; how much later is the machine's business (the client's
    // 15 s read timeout is the hang guard).
    assert!(waited >= Duration::from_millis(1500), "{waited:?}");
    assert!(c.closed(), "connection left open after timeout");
}

#[test]
fn per_ip_connection_limit_gets_421_4_7_0_and_other_ips_still_connect() {
    let gw = Gateway::start(GwOpts {
        server_extra: "max_connections_per_ip = 2".into(),
        ..GwOpts::default()
    });
    let port = gw.port("submission");
    let mut a = Plain::connect(port);
    let mut b = Plain::connect(port);
    assert!(a.line().starts_with("220 "));
    assert!(b.line().starts_with("220 "));
    let mut c = Plain::connect(port);
    assert_eq!(
        c.line(),
        "421 4.7.0 Too many connections from your address, try again later"
    );
    assert!(c.closed());
    let mut other = Plain::connect_from("127.0.0.2", port);
    assert_eq!(other.line(), format!("220 {HOSTNAME} ESMTP phigate"));
    assert_eq!(other.cmd(b"NOOP\r\n"), "250 2.0.0 Ok");
    // A slot freed by QUIT is usable again.
    assert_eq!(a.cmd(b"QUIT\r\n"), "221 2.0.0 Bye");
    assert!(a.closed());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut d = Plain::connect(port);
        let l = d.line();
        if l.starts_with("220 ") {
            break;
        }
        assert!(Instant::now() < deadline, "slot never freed: {l}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn plaintext_pipelined_after_starttls_is_discarded_and_state_resets() {
    if !require_tool(PYTHON) {
        return;
    }
    let gw = Gateway::start(GwOpts::default());
    // CVE-2011-0411: the MAIL written together with STARTTLS must never run.
    let t = py(gw.peer(
        "submission",
        vec![
            send("EHLO ehr.clinic.test\r\n"),
            send("STARTTLS\r\nMAIL FROM:<a@b.example>\r\n"),
            serde_json::json!({"tls": true, "send": "EHLO ehr.clinic.test\r\n", "sentinel": true}),
            send("MAIL FROM:<a@b.example>\r\n"),
        ],
    ));
    assert_eq!(t.line(1), "220 2.0.0 Ready to start TLS");
    assert!(t.tls["version"]
        .as_str()
        .is_some_and(|v| v.starts_with("TLSv1.")));
    let after = &t.steps[2].replies;
    assert_eq!(
        after.len(),
        1,
        "extra replies after the handshake: {after:?}"
    );
    assert_eq!(after[0].code, 250);
    assert_eq!(
        after[0].lines[0],
        format!("250-{HOSTNAME} Hello [127.0.0.1]")
    );
    assert_eq!(t.line(3), "250 2.1.0 Ok");
    assert!(gw
        .log()
        .contains("discarding data pipelined after STARTTLS"));

    // RFC 3207 §4.2: everything from before TLS is forgotten, EHLO included.
    let t = py(gw.peer(
        "submission",
        vec![
            send("EHLO ehr.clinic.test\r\n"),
            send("STARTTLS\r\n"),
            starttls(),
            send("MAIL FROM:<a@b.example>\r\n"),
            send("EHLO ehr.clinic.test\r\n"),
            send("MAIL FROM:<a@b.example>\r\n"),
            send("STARTTLS\r\n"),
        ],
    ));
    assert_eq!(t.line(3), "503 5.5.1 Send EHLO first");
    let ehlo = &t.steps[4].replies[0].lines;
    assert!(!ehlo.iter().any(|l| l.contains("STARTTLS")), "{ehlo:?}");
    assert!(ehlo.iter().any(|l| l == "250-AUTH PLAIN LOGIN"), "{ehlo:?}");
    assert_eq!(t.line(5), "250 2.1.0 Ok");
    assert_eq!(t.line(6), "503 5.5.1 TLS already active");
}

/// A spool file system below `[spool] min_free` refuses the message with 452 4.3.1 at
/// the end of DATA, before anything is written; the session stays usable.
#[test]
fn spool_below_min_free_refuses_with_452_and_writes_nothing() {
    if !require_tool(PYTHON) {
        return;
    }
    let gw = Gateway::start(GwOpts {
        // More than any disk here has free.
        spool_extra: "min_free = \"1000000GB\"\n".into(),
        ..GwOpts::default()
    });
    let t = py(gw.peer(
        "smtps",
        vec![
            send("EHLO ehr.clinic.test\r\n"),
            send_n(
                "MAIL FROM:<sender@clinic.test>\r\nRCPT TO:<patient@example.net>\r\nDATA\r\n",
                3,
            ),
            send("Subject: lab results\r\n\r\nhello\r\n.\r\n"),
            send("NOOP\r\n"),
        ],
    ));
    assert_eq!(
        t.steps[2].replies[0].last(),
        "452 4.3.1 Insufficient system storage, try again later",
        "{:?}",
        t.raw
    );
    assert_eq!(t.line(3), "250 2.0.0 Ok", "{:?}", t.raw);
    // The 452 is the daemon's word that nothing was accepted; messages() waits for any
    // message it did accept.
    assert!(gw.messages().is_empty(), "a refused message was delivered");
    assert!(gw.log().contains("nearly full"), "{}", gw.log());
}
