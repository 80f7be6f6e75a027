//! The session state machine, driven directly: bytes in, replies and actions out.

use super::*;
use crate::pipeline::{BoxFuture, RcptCheck};
use crate::types::TlsInfo;
use base64::Engine;

const HOST: &str = "mx.test";
const MAX_SIZE: usize = 1000;
const MAX_RCPTS: usize = 3;
const PEER: &str = "192.0.2.7:40000";

/// Refuses one recipient by policy; `submit` is never reached (it is the driver's job).
struct Policy;

impl Handoff for Policy {
    fn check_recipient(&self, c: &RcptCheck<'_>) -> Option<Reply> {
        (c.recipient == "refused@example.org")
            .then(|| Reply::new(550, "5.7.1", "Recipient refused by policy"))
    }
    fn submit(&self, _: Submission) -> BoxFuture<'_, Result<Reply, PipelineError>> {
        unreachable!("the state machine never submits by itself")
    }
}

/// Says every sender's credential was revoked (the pipeline's answer after a reload).
struct Revoking;

impl Handoff for Revoking {
    fn check_recipient(&self, _: &RcptCheck<'_>) -> Option<Reply> {
        None
    }
    fn submit(&self, _: Submission) -> BoxFuture<'_, Result<Reply, PipelineError>> {
        unreachable!("the state machine never submits by itself")
    }
    fn check_sender(&self, _: &crate::pipeline::SenderCheck<'_>) -> crate::pipeline::SenderVerdict {
        crate::pipeline::SenderVerdict::Revoked(Reply::new(535, "5.7.8", "revoked"))
    }
}

struct Setup {
    handoff: Option<Arc<dyn Handoff>>,
    mode: TlsMode,
    tls: bool,
    auth: Vec<AuthMethod>,
    allow_networks: Vec<Cidr>,
    client_cert: Option<ClientCert>,
    client_cert_allow: Vec<String>,
    max_failures: u32,
    /// Shared with an earlier session, as all sessions share one.
    limiter: Option<Arc<FailureLimiter>>,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            handoff: None,
            mode: TlsMode::Starttls,
            tls: true,
            auth: vec![AuthMethod::Password],
            allow_networks: Vec::new(),
            client_cert: None,
            client_cert_allow: Vec::new(),
            max_failures: 3,
            limiter: None,
        }
    }
}

impl Setup {
    fn start(self) -> Session {
        let shared = Arc::new(Shared {
            hostname: HOST.into(),
            max_message_size: MAX_SIZE,
            max_line_length: 64 * 1024,
            max_recipients: MAX_RCPTS,
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(600),
            users: Arc::new(Users::default()),
            limiter: self.limiter.unwrap_or_else(|| {
                Arc::new(FailureLimiter::new(
                    self.max_failures,
                    Duration::from_secs(3600),
                ))
            }),
            allow_networks: self.allow_networks,
            client_cert_allow: self.client_cert_allow,
            handoff: self.handoff.unwrap_or_else(|| Arc::new(Policy)),
            shutdown: CancellationToken::new(),
            audit: test_audit(),
            metrics: Arc::new(crate::metrics::Metrics::new()),
        });
        let listener = Arc::new(ListenerInfo {
            name: "in".into(),
            mode: self.mode,
            auth: self.auth,
        });
        let conn = ConnInfo {
            id: "t-1".into(),
            peer: PEER.parse().expect("peer address"),
            tls: self.tls.then(|| TlsInfo {
                version: "TLSv1.3".into(),
                cipher: "TLS13_AES_256_GCM_SHA384".into(),
                client_cert_sha256: None,
            }),
            client_cert: self.client_cert,
        };
        Session::new(shared, listener, conn)
    }
}

fn tls_session() -> Session {
    Setup::default().start()
}

/// A TLS session authorised by its source network, so mail commands go through.
fn ip_session() -> Session {
    Setup {
        auth: vec![AuthMethod::Ip, AuthMethod::Password],
        allow_networks: vec![Cidr("192.0.2.0/24".parse().expect("network"))],
        ..Setup::default()
    }
    .start()
}

/// Feed `input`, run until the session needs the driver; the replies sent and the action.
fn step(s: &mut Session, input: &str) -> (String, Action) {
    s.receive(input.as_bytes());
    let action = s.next_action();
    let out = String::from_utf8(s.output().to_vec()).expect("replies are UTF-8");
    s.output_sent();
    (out, action)
}

/// Like [`step`], for input that must leave the session waiting for more.
fn say(s: &mut Session, input: &str) -> String {
    let (out, action) = step(s, input);
    assert!(matches!(action, Action::Read(_)), "{input:?} → {action:?}");
    out
}

/// Reply lines as sent, CRLF removed.
fn lines(out: &str) -> Vec<&str> {
    out.split_terminator("\r\n").collect()
}

fn one(out: &str) -> &str {
    let l = lines(out);
    assert_eq!(l.len(), 1, "expected one reply line, got {l:?}");
    l[0]
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn ehlo(s: &mut Session) -> String {
    say(s, "EHLO client.test\r\n")
}

/// A transaction up to the 354, through an IP-authorised session.
fn open_data(s: &mut Session) {
    ehlo(s);
    let out = say(
        s,
        "MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n",
    );
    assert_eq!(
        lines(&out),
        [
            "250 2.1.0 Ok",
            "250 2.1.5 Ok",
            "354 End data with <CR><LF>.<CR><LF>"
        ]
    );
}

fn expect_submit(a: Action) -> Submission {
    match a {
        Action::Submit(sub) => *sub,
        other => panic!("expected Submit, got {other:?}"),
    }
}

fn expect_verify(a: Action) -> Credentials {
    match a {
        Action::Verify(c) => c,
        other => panic!("expected Verify, got {other:?}"),
    }
}

// Greeting, EHLO/HELO and the simple commands (RFC 5321 §4.1).

#[test]
fn greeting_names_the_host() {
    let mut s = tls_session();
    s.greet();
    assert_eq!(one(&say(&mut s, "")), "220 mx.test ESMTP phigate");
}

#[test]
fn ehlo_on_plaintext_offers_starttls_and_no_auth() {
    let mut s = Setup {
        tls: false,
        ..Setup::default()
    }
    .start();
    let out = ehlo(&mut s);
    assert_eq!(
        lines(&out),
        [
            "250-mx.test Hello [192.0.2.7]",
            "250-SIZE 1000",
            "250-8BITMIME",
            "250-SMTPUTF8",
            "250-PIPELINING",
            "250-ENHANCEDSTATUSCODES",
            "250-CHUNKING",
            "250-DSN",
            "250-STARTTLS",
            "250 HELP"
        ]
    );
}

#[test]
fn ehlo_inside_tls_offers_auth_and_requiretls_not_starttls() {
    let mut s = tls_session();
    let out = ehlo(&mut s);
    assert!(!out.contains("STARTTLS"), "{out}");
    assert!(out.contains("250-AUTH PLAIN LOGIN\r\n250-REQUIRETLS\r\n250 HELP\r\n"));
    // No password AUTH on the listener: not advertised.
    let mut s = ip_session();
    let mut s2 = Setup {
        auth: vec![AuthMethod::Ip],
        ..Setup::default()
    }
    .start();
    assert!(ehlo(&mut s).contains("AUTH PLAIN LOGIN"));
    assert!(!ehlo(&mut s2).contains("AUTH"));
}

#[test]
fn helo_gets_the_bare_hostname_and_mail_parameters_need_ehlo() {
    let mut s = ip_session();
    assert_eq!(one(&say(&mut s, "HELO client.test\r\n")), "250 mx.test");
    assert_eq!(
        one(&say(&mut s, "MAIL FROM:<a@example.com> SIZE=10\r\n")),
        "555 5.5.4 Parameters need EHLO"
    );
    assert_eq!(
        one(&say(&mut s, "MAIL FROM:<a@example.com>\r\n")),
        "250 2.1.0 Ok"
    );
}

#[test]
fn simple_commands() {
    let mut s = tls_session();
    assert_eq!(one(&say(&mut s, "NOOP\r\n")), "250 2.0.0 Ok");
    assert_eq!(
        one(&say(&mut s, "VRFY someone\r\n")),
        "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery"
    );
    assert_eq!(
        one(&say(&mut s, "EXPN list\r\n")),
        "502 5.5.1 EXPN not available"
    );
    assert_eq!(
        one(&say(&mut s, "HELP\r\n")),
        "214 2.0.0 See RFC 5321; phigate accepts mail from authorised senders only"
    );
    let (out, action) = step(&mut s, "QUIT\r\nNOOP\r\n");
    assert_eq!(one(&out), "221 2.0.0 Bye");
    assert!(matches!(action, Action::Close));
    // Closed stays closed; what followed QUIT is not executed.
    assert!(matches!(s.next_action(), Action::Close));
    assert!(s.output().is_empty());
}

#[test]
fn syntax_errors_use_the_codec_wording() {
    let mut s = tls_session();
    assert_eq!(
        one(&say(&mut s, "FROB\r\n")),
        "500 5.5.2 Command not recognized"
    );
    assert_eq!(
        one(&say(&mut s, "NOOP\n")),
        "500 5.5.2 Bare LF in command refused"
    );
}

#[test]
fn an_over_long_line_is_skipped_to_its_end() {
    let mut s = tls_session();
    let (out, action) = step(&mut s, &"X".repeat(proto::MAX_COMMAND_LINE + 10));
    assert!(out.is_empty());
    // Skipping: a shutdown must not cut in half-way through a line.
    let Action::Read(w) = action else {
        panic!("{action:?}")
    };
    assert!(!w.shutdown);
    assert!(say(&mut s, &"Y".repeat(5000)).is_empty());
    let out = say(&mut s, "tail\r\nNOOP\r\n");
    assert_eq!(lines(&out), ["500 5.5.2 Line too long", "250 2.0.0 Ok"]);
}

#[test]
fn twenty_errors_close_the_session() {
    let mut s = tls_session();
    for _ in 0..MAX_ERRORS - 1 {
        say(&mut s, "FROB\r\n");
    }
    let (out, action) = step(&mut s, "FROB\r\nNOOP\r\n");
    assert_eq!(
        lines(&out),
        [
            "500 5.5.2 Command not recognized",
            "421 4.7.0 Too many errors, closing connection"
        ]
    );
    assert!(matches!(action, Action::Close));
}

// Reads: what they wait for.

#[test]
fn reads_wait_for_shutdown_only_between_transactions() {
    let mut s = ip_session();
    let Action::Read(w) = s.next_action() else {
        panic!("expected a read")
    };
    assert_eq!(
        w,
        Wait {
            timeout: Duration::from_secs(300),
            shutdown: true
        }
    );
    ehlo(&mut s);
    say(&mut s, "MAIL FROM:<a@example.com>\r\n");
    let Action::Read(w) = s.next_action() else {
        panic!("expected a read")
    };
    assert!(!w.shutdown, "inside a transaction");
    let (out, action) = step(&mut s, "RCPT TO:<b@example.org>\r\nDATA\r\n");
    assert!(out.ends_with("354 End data with <CR><LF>.<CR><LF>\r\n"));
    assert_eq!(
        action_wait(action),
        Wait {
            timeout: Duration::from_secs(600),
            shutdown: false
        }
    );
}

fn action_wait(a: Action) -> Wait {
    match a {
        Action::Read(w) => w,
        other => panic!("expected Read, got {other:?}"),
    }
}

#[test]
fn shutdown_and_timeout_replies_then_close() {
    let mut s = tls_session();
    s.shutting_down();
    assert!(matches!(s.next_action(), Action::Close));
    assert_eq!(
        one(std::str::from_utf8(s.output()).expect("utf8")),
        "421 4.3.2 mx.test Service shutting down"
    );
    let mut s = tls_session();
    s.timed_out();
    assert!(matches!(s.next_action(), Action::Close));
    assert_eq!(
        one(std::str::from_utf8(s.output()).expect("utf8")),
        "421 4.4.2 mx.test Timeout exceeded, closing connection"
    );
}

// RFC 3207 STARTTLS.

#[test]
fn mail_commands_need_tls_first() {
    let mut s = Setup {
        tls: false,
        auth: vec![AuthMethod::Ip, AuthMethod::Password],
        allow_networks: vec![Cidr("192.0.2.0/24".parse().expect("network"))],
        ..Setup::default()
    }
    .start();
    ehlo(&mut s);
    let out = say(
        &mut s,
        "MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nDATA\r\nBDAT 0 LAST\r\nAUTH PLAIN\r\n",
    );
    assert_eq!(
        lines(&out),
        ["530 5.7.0 Must issue a STARTTLS command first"; 5]
    );
}

#[test]
fn starttls_discards_pipelined_plaintext() {
    let mut s = Setup {
        tls: false,
        ..Setup::default()
    }
    .start();
    ehlo(&mut s);
    let (out, action) = step(&mut s, "STARTTLS\r\nMAIL FROM:<evil@example.com>\r\n");
    assert_eq!(one(&out), "220 2.0.0 Ready to start TLS");
    assert!(matches!(action, Action::StartTls));
    // The pipelined MAIL is gone, never executed, even if more arrives.
    s.receive(b"RCPT TO:<x@example.org>\r\n");
    assert!(matches!(s.next_action(), Action::StartTls));
    assert!(s.output().is_empty());
}

#[test]
fn the_session_after_starttls_starts_from_nothing() {
    // The listener starts a fresh session on the TLS stream: no EHLO, no transaction,
    // no AUTH carried over.
    let mut s = ip_session();
    assert_eq!(
        one(&say(&mut s, "MAIL FROM:<a@example.com>\r\n")),
        "503 5.5.1 Send EHLO first"
    );
    assert_eq!(
        one(&say(&mut s, "AUTH PLAIN\r\n")),
        "503 5.5.1 Send EHLO first"
    );
    assert_eq!(
        one(&say(&mut s, "STARTTLS\r\n")),
        "503 5.5.1 TLS already active"
    );
}

#[test]
fn starttls_on_an_implicit_tls_listener_is_refused() {
    let mut s = Setup {
        mode: TlsMode::Implicit,
        ..Setup::default()
    }
    .start();
    assert!(!ehlo(&mut s).contains("STARTTLS"));
    assert_eq!(
        one(&say(&mut s, "STARTTLS\r\n")),
        "503 5.5.1 TLS already active"
    );
}

// RFC 5321 transaction order.

#[test]
fn mail_needs_authorisation() {
    let mut s = tls_session();
    ehlo(&mut s);
    assert_eq!(
        one(&say(&mut s, "MAIL FROM:<a@example.com>\r\n")),
        "530 5.7.0 Authentication required"
    );
    assert_eq!(
        one(&say(&mut s, "RCPT TO:<b@example.org>\r\n")),
        "503 5.5.1 Need MAIL before RCPT"
    );
    assert_eq!(one(&say(&mut s, "DATA\r\n")), "503 5.5.1 Need MAIL command");
}

#[test]
fn transaction_order_is_enforced() {
    let mut s = ip_session();
    ehlo(&mut s);
    let out = say(
        &mut s,
        "RCPT TO:<b@example.org>\r\nDATA\r\nMAIL FROM:<a@example.com>\r\nMAIL FROM:<a@example.com>\r\nDATA\r\n",
    );
    assert_eq!(
        lines(&out),
        [
            "503 5.5.1 Need MAIL before RCPT",
            "503 5.5.1 Need MAIL command",
            "250 2.1.0 Ok",
            "503 5.5.1 Nested MAIL command",
            "554 5.5.1 No valid recipients"
        ]
    );
}

#[test]
fn rset_and_ehlo_end_the_transaction() {
    let mut s = ip_session();
    ehlo(&mut s);
    let out = say(
        &mut s,
        "MAIL FROM:<a@example.com>\r\nRSET\r\nRCPT TO:<b@example.org>\r\nMAIL FROM:<a@example.com>\r\nEHLO again\r\nRCPT TO:<b@example.org>\r\n",
    );
    let l = lines(&out);
    assert_eq!(
        l[..3],
        [
            "250 2.1.0 Ok",
            "250 2.0.0 Ok",
            "503 5.5.1 Need MAIL before RCPT"
        ]
    );
    assert_eq!(l[3], "250 2.1.0 Ok");
    assert_eq!(l.last(), Some(&"503 5.5.1 Need MAIL before RCPT"));
}

#[test]
fn recipients_refused_by_policy_limit_or_charset() {
    let mut s = ip_session();
    ehlo(&mut s);
    let out = say(
        &mut s,
        "MAIL FROM:<a@example.com>\r\nRCPT TO:<refused@example.org>\r\nRCPT TO:<ü@example.org>\r\nRCPT TO:<b@example.org> FOO=1\r\nDATA\r\n",
    );
    assert_eq!(
        lines(&out),
        [
            "250 2.1.0 Ok",
            "550 5.7.1 Recipient refused by policy",
            "553 5.6.7 Non-ASCII address requires SMTPUTF8",
            "555 5.5.4 Unsupported parameter FOO",
            "554 5.5.1 No valid recipients"
        ]
    );
    for i in 0..MAX_RCPTS {
        assert_eq!(
            one(&say(&mut s, &format!("RCPT TO:<r{i}@example.org>\r\n"))),
            "250 2.1.5 Ok"
        );
    }
    assert_eq!(
        one(&say(&mut s, "RCPT TO:<one-more@example.org>\r\n")),
        "452 4.5.3 Too many recipients"
    );
}

#[test]
fn non_ascii_sender_needs_smtputf8() {
    let mut s = ip_session();
    ehlo(&mut s);
    assert_eq!(
        one(&say(&mut s, "MAIL FROM:<ü@example.com>\r\n")),
        "553 5.6.7 Non-ASCII address requires SMTPUTF8"
    );
    assert_eq!(
        one(&say(&mut s, "MAIL FROM:<ü@example.com> SMTPUTF8\r\n")),
        "250 2.1.0 Ok"
    );
    assert_eq!(
        one(&say(&mut s, "RCPT TO:<ö@example.org>\r\n")),
        "250 2.1.5 Ok"
    );
}

#[test]
fn mail_size_over_the_limit_is_refused_up_front() {
    let mut s = ip_session();
    ehlo(&mut s);
    assert_eq!(
        one(&say(&mut s, "MAIL FROM:<a@example.com> SIZE=1001\r\n")),
        "552 5.3.4 Message size exceeds fixed maximum message size"
    );
}

// DATA.

#[test]
fn data_hands_the_message_over_with_a_received_header() {
    let mut s = ip_session();
    open_data(&mut s);
    // Split across reads, as a slow client sends it.
    assert!(say(&mut s, "Subject: x\r\n\r\nhel").is_empty());
    let (out, action) = step(&mut s, "lo\r\n..dot\r\n.\r\n");
    assert!(out.is_empty(), "the final reply waits for the pipeline");
    let sub = expect_submit(action);
    assert_eq!(sub.envelope.mail_from, "a@example.com");
    assert_eq!(sub.envelope.recipients.len(), 1);
    assert_eq!(sub.envelope.recipients[0].address, "b@example.org");
    assert_eq!(sub.envelope.helo, "client.test");
    assert_eq!(sub.envelope.peer_ip, "192.0.2.7");
    assert_eq!(sub.envelope.listener, "in");
    assert_eq!(sub.envelope.session, "t-1");
    assert_eq!(
        sub.envelope.auth,
        Some(AuthIdentity::Ip("192.0.2.7".into()))
    );
    let text = String::from_utf8(sub.content).expect("utf8");
    assert!(
        text.starts_with("Received: from client.test ([192.0.2.7])\r\n\tby mx.test (phigate) with ESMTPSA\r\n\t(using TLSv1.3 with cipher TLS13_AES_256_GCM_SHA384)\r\n\tid "),
        "{text}"
    );
    assert!(
        text.ends_with("\r\nSubject: x\r\n\r\nhello\r\n.dot\r\n"),
        "{text}"
    );
    s.submitted(Ok(Reply::new(250, "2.0.0", "Ok: queued as X")));
    let out = say(&mut s, "");
    assert_eq!(one(&out), "250 2.0.0 Ok: queued as X");
    // The transaction is over.
    assert_eq!(one(&say(&mut s, "DATA\r\n")), "503 5.5.1 Need MAIL command");
}

#[test]
fn a_failed_handoff_answers_with_the_pipeline_error() {
    let mut s = ip_session();
    open_data(&mut s);
    expect_submit(step(&mut s, "x\r\n.\r\n").1);
    let err = PipelineError::Spool(crate::spool::SpoolError::Io(std::io::Error::other("disk")));
    let want = err.reply();
    s.submitted(Err(err));
    let out = say(&mut s, "");
    assert_eq!(
        one(&out),
        format!("{} {} {}", want.code, want.enhanced, want.text)
    );
}

#[test]
fn commands_pipelined_behind_the_message_run_after_the_handoff() {
    let mut s = ip_session();
    open_data(&mut s);
    let (_, action) = step(&mut s, "x\r\n.\r\nNOOP\r\n");
    expect_submit(action);
    s.submitted(Ok(Reply::new(250, "2.0.0", "Ok")));
    let out = say(&mut s, "");
    assert_eq!(lines(&out), ["250 2.0.0 Ok", "250 2.0.0 Ok"]);
}

#[test]
fn polling_while_the_driver_owes_an_answer_closes() {
    let mut s = ip_session();
    open_data(&mut s);
    expect_submit(step(&mut s, "x\r\n.\r\n").1);
    assert!(matches!(s.next_action(), Action::Close));
}

#[test]
fn bad_content_is_refused_and_never_handed_over() {
    let mut s = ip_session();
    open_data(&mut s);
    let out = say(&mut s, "bare\nlf\r\n.\r\n");
    assert_eq!(
        one(&out),
        "554 5.5.2 Bare CR or LF in message data refused; lines must end with CRLF"
    );
    let mut s = ip_session();
    open_data(&mut s);
    let body = format!("{}\r\n", "y".repeat(98)).repeat(11);
    let out = say(&mut s, &format!("{body}.\r\n"));
    assert_eq!(one(&out), "552 5.3.4 Message exceeds the size limit");
}

// RFC 3030 BDAT.

#[test]
fn bdat_chunks_then_last_hand_over() {
    let mut s = ip_session();
    ehlo(&mut s);
    say(
        &mut s,
        "MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\n",
    );
    // A chunk split across reads; its bytes are content, not commands.
    let (out, action) = step(&mut s, "BDAT 12\r\nQUIT\r\n");
    assert!(out.is_empty());
    assert_eq!(action_wait(action).timeout, Duration::from_secs(600));
    assert_eq!(
        one(&say(&mut s, "NOOP\r\n")),
        "250 2.0.0 12 octets received"
    );
    assert_eq!(
        one(&say(&mut s, "DATA\r\n")),
        "503 5.5.1 DATA not allowed after BDAT"
    );
    let sub = expect_submit(step(&mut s, "BDAT 5 LAST\r\nend\r\n").1);
    let text = String::from_utf8(sub.content).expect("utf8");
    assert!(text.starts_with("Received: "), "{text}");
    assert!(text.ends_with("\r\nQUIT\r\nNOOP\r\nend\r\n"), "{text}");
}

#[test]
fn bdat_with_bad_line_endings_ends_the_transaction() {
    let mut s = ip_session();
    ehlo(&mut s);
    say(
        &mut s,
        "MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\n",
    );
    let out = say(&mut s, "BDAT 4\r\nend\nNOOP\r\n");
    assert_eq!(
        lines(&out),
        [
            "554 5.5.2 Bare CR or LF in message data refused; lines must end with CRLF",
            "250 2.0.0 Ok"
        ]
    );
    assert_eq!(
        one(&say(&mut s, "BDAT 0 LAST\r\n")),
        "503 5.5.1 Need MAIL command"
    );
}

#[test]
fn bdat_without_a_transaction_is_read_and_refused() {
    let mut s = ip_session();
    ehlo(&mut s);
    let out = say(&mut s, "BDAT 6\r\nQUIT\r\nNOOP\r\n");
    assert_eq!(lines(&out), ["503 5.5.1 Need MAIL command", "250 2.0.0 Ok"]);
    // Too big to skip: the session closes instead of reading it.
    let (out, action) = step(&mut s, &format!("BDAT {}\r\n", MAX_SIZE + 1));
    assert_eq!(one(&out), "552 5.3.4 Chunk refused, closing connection");
    assert!(matches!(action, Action::Close));
}

// RFC 4954 AUTH.

#[test]
fn auth_plain_with_initial_response() {
    let mut s = tls_session();
    ehlo(&mut s);
    let ir = b64("\0alice\0secret");
    let (out, action) = step(&mut s, &format!("AUTH PLAIN {ir}\r\n"));
    assert!(out.is_empty());
    let c = expect_verify(action);
    assert_eq!((c.user.as_str(), c.password.as_str()), ("alice", "secret"));
    assert_eq!(c.delay, Duration::ZERO);
    assert!(
        !format!("{c:?}").contains("secret"),
        "Debug must not show the password"
    );
    s.verified(true);
    assert_eq!(one(&say(&mut s, "")), "235 2.7.0 Authentication successful");
    assert_eq!(
        s.authorised(),
        Some(&AuthIdentity::Password("alice".into()))
    );
    assert_eq!(
        one(&say(&mut s, "AUTH PLAIN\r\n")),
        "503 5.5.1 Already authenticated"
    );
    assert_eq!(
        one(&say(&mut s, "MAIL FROM:<a@example.com>\r\n")),
        "250 2.1.0 Ok"
    );
}

#[test]
fn auth_plain_challenge_and_authorisation_identity() {
    let mut s = tls_session();
    ehlo(&mut s);
    let out = say(&mut s, "AUTH PLAIN\r\n");
    assert_eq!(out, "334 \r\n");
    let c = expect_verify(step(&mut s, &format!("{}\r\n", b64("alice\0alice\0pw"))).1);
    assert_eq!(c.user, "alice");
    s.verified(false);
    assert_eq!(
        one(&say(&mut s, "")),
        "535 5.7.8 Authentication credentials invalid"
    );
    assert_eq!(
        one(&say(
            &mut s,
            &format!("AUTH PLAIN {}\r\n", b64("bob\0alice\0pw"))
        )),
        "535 5.7.8 Authorization identity not allowed"
    );
    assert_eq!(
        one(&say(
            &mut s,
            &format!("AUTH PLAIN {}\r\n", b64("alice\0pw"))
        )),
        "501 5.5.2 Malformed PLAIN response"
    );
    assert_eq!(s.authorised(), None);
    assert_eq!(
        one(&say(&mut s, "MAIL FROM:<a@example.com>\r\n")),
        "530 5.7.0 Authentication required"
    );
}

#[test]
fn auth_login_both_prompts_and_with_initial_response() {
    let mut s = tls_session();
    ehlo(&mut s);
    assert_eq!(one(&say(&mut s, "AUTH LOGIN\r\n")), "334 VXNlcm5hbWU6");
    // A SASL line is not a command, and waits without shutdown interruption.
    let (out, action) = step(&mut s, &format!("{}\r\n", b64("alice")));
    assert_eq!(one(&out), "334 UGFzc3dvcmQ6");
    assert!(!action_wait(action).shutdown);
    let c = expect_verify(step(&mut s, &format!("{}\r\n", b64("pw"))).1);
    assert_eq!((c.user.as_str(), c.password.as_str()), ("alice", "pw"));
    s.verified(true);
    say(&mut s, "");

    let mut s = tls_session();
    ehlo(&mut s);
    assert_eq!(
        one(&say(&mut s, &format!("AUTH LOGIN {}\r\n", b64("alice")))),
        "334 UGFzc3dvcmQ6"
    );
    let c = expect_verify(step(&mut s, &format!("{}\r\n", b64("pw"))).1);
    assert_eq!(c.user, "alice");
}

#[test]
fn auth_cancel_bad_base64_and_unknown_mechanism() {
    let mut s = tls_session();
    ehlo(&mut s);
    say(&mut s, "AUTH LOGIN\r\n");
    assert_eq!(
        one(&say(&mut s, "*\r\n")),
        "501 5.0.0 Authentication cancelled"
    );
    // Back to commands.
    assert_eq!(one(&say(&mut s, "NOOP\r\n")), "250 2.0.0 Ok");
    assert_eq!(
        one(&say(&mut s, "AUTH PLAIN !!!\r\n")),
        "501 5.5.2 Invalid base64 data"
    );
    assert_eq!(
        one(&say(&mut s, "AUTH CRAM-MD5\r\n")),
        "504 5.5.4 Unrecognized authentication type"
    );
    // A malformed SASL line ends the exchange with the codec's reply.
    say(&mut s, "AUTH PLAIN\r\n");
    assert_eq!(
        one(&say(&mut s, "abc\n")),
        "500 5.5.2 Bare LF in command refused"
    );
    assert_eq!(one(&say(&mut s, "NOOP\r\n")), "250 2.0.0 Ok");
}

#[test]
fn auth_not_offered_or_out_of_order() {
    let mut s = Setup {
        auth: vec![AuthMethod::Ip],
        ..Setup::default()
    }
    .start();
    ehlo(&mut s);
    assert_eq!(
        one(&say(&mut s, "AUTH PLAIN\r\n")),
        "502 5.5.1 AUTH not available on this listener"
    );
    let mut s = ip_session();
    ehlo(&mut s);
    say(&mut s, "MAIL FROM:<a@example.com>\r\n");
    assert_eq!(
        one(&say(&mut s, "AUTH PLAIN\r\n")),
        "503 5.5.1 AUTH not allowed during a mail transaction"
    );
}

#[test]
fn auth_failures_lock_the_address_out() {
    let mut s = Setup {
        max_failures: 2,
        ..Setup::default()
    }
    .start();
    ehlo(&mut s);
    let bad = format!("AUTH PLAIN {}\r\n", b64("\0alice\0wrong"));
    expect_verify(step(&mut s, &bad).1);
    s.verified(false);
    say(&mut s, "");
    // The second try waits out a back-off first, then its failure cuts the address off.
    let c = expect_verify(step(&mut s, &bad).1);
    assert_eq!(c.delay, Duration::from_secs(1));
    s.verified(false);
    assert!(matches!(s.next_action(), Action::Close));
    assert_eq!(
        one(std::str::from_utf8(s.output()).expect("utf8")),
        "421 4.7.0 Too many authentication failures, try again later"
    );
    // A new session from the same address (same limiter) is refused at AUTH.
    let mut s = Setup {
        limiter: Some(s.shared.limiter.clone()),
        ..Setup::default()
    }
    .start();
    ehlo(&mut s);
    let (out, action) = step(&mut s, &bad);
    assert_eq!(
        one(&out),
        "421 4.7.0 Too many authentication failures, try again later"
    );
    assert!(matches!(action, Action::Close));
}

#[test]
fn non_utf8_credentials_end_the_exchange() {
    let mut s = tls_session();
    ehlo(&mut s);
    let ir = base64::engine::general_purpose::STANDARD.encode(b"\0al\xffice\0pw");
    // Unchanged behaviour, kept for now: no reply at all (the client must time out or go on).
    assert_eq!(say(&mut s, &format!("AUTH PLAIN {ir}\r\n")), "");
    assert_eq!(one(&say(&mut s, "NOOP\r\n")), "250 2.0.0 Ok");
}

// Implicit authorisation.

#[test]
fn client_certificate_on_the_allow_list_authorises() {
    let cert = ClientCert {
        cn: Some("relay.example".into()),
        sha256: "ab".repeat(32),
    };
    let s = Setup {
        auth: vec![AuthMethod::ClientCert],
        client_cert: Some(cert.clone()),
        client_cert_allow: vec!["relay.example".into()],
        ..Setup::default()
    }
    .start();
    assert_eq!(
        s.authorised(),
        Some(&AuthIdentity::ClientCert("relay.example".into()))
    );
    let s = Setup {
        auth: vec![AuthMethod::ClientCert],
        client_cert: Some(cert.clone()),
        client_cert_allow: vec!["other.example".into()],
        ..Setup::default()
    }
    .start();
    assert_eq!(s.authorised(), None);
    // Not a method of this listener: the certificate counts for nothing.
    let s = Setup {
        client_cert: Some(cert),
        ..Setup::default()
    }
    .start();
    assert_eq!(s.authorised(), None);
}

#[test]
fn source_network_outside_the_list_does_not_authorise() {
    let s = Setup {
        auth: vec![AuthMethod::Ip],
        allow_networks: vec![Cidr("198.51.100.0/24".parse().expect("network"))],
        ..Setup::default()
    }
    .start();
    assert_eq!(s.authorised(), None);
}

/// A real audit trail on a spool in a directory that is removed at once (the open
/// store keeps working on the unlinked files).
fn test_audit() -> Arc<crate::audit::Audit> {
    let dir = tempfile::tempdir().expect("temporary directory");
    let spool =
        crate::spool::Spool::open(dir.path(), crate::spool::Keyring::generate()).expect("spool");
    crate::audit::Audit::open(Arc::new(spool), crate::audit::AuditSettings::default())
        .expect("audit trail")
}

#[test]
fn a_revoked_credential_ends_the_sessions_authorisation() {
    let mut s = Setup {
        handoff: Some(Arc::new(Revoking)),
        auth: vec![AuthMethod::Ip, AuthMethod::Password],
        allow_networks: vec![Cidr("192.0.2.0/24".parse().expect("network"))],
        ..Setup::default()
    }
    .start();
    assert!(s.authorised().is_some());
    say(&mut s, "EHLO c.test\r\n");
    let out = say(&mut s, "MAIL FROM:<a@b.test>\r\n");
    assert!(out.starts_with("535 5.7.8"), "{out}");
    assert!(s.authorised().is_none());
    let out = say(&mut s, "MAIL FROM:<a@b.test>\r\n");
    assert!(out.starts_with("530"), "{out}");
}
