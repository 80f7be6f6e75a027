//! The session state machine over random client bytes, split into random reads, with
//! the driver played here. It must never panic or stall, and no message may reach DATA
//! (a `354`) or the pipeline unless the session is inside TLS and authorised: by its
//! source network, or by an AUTH whose password this harness accepted. STARTTLS starts a
//! fresh session, as the listener does, and forgets any AUTH.
//!
//! Input: byte 0 picks the listener (bit 0 implicit TLS, bit 1 AUTH by password,
//! bit 2 the client's network is allowed, bit 3 end by shutdown rather than timeout);
//! byte 1, when not 0, caps the size of a read; the rest is what the client sends, one
//! read per 0xFF-separated segment (0xFF never occurs in UTF-8, so the fuzzer and the
//! seeds control where reads end, e.g. waiting for the 220 after STARTTLS).
#![no_main]
use libfuzzer_sys::fuzz_target;
use phigate::auth::{FailureLimiter, Users};
use phigate::config::{AuthMethod, Cidr, TlsMode};
use phigate::pipeline::{BoxFuture, Handoff, PipelineError, RcptCheck, Submission};
use phigate::smtp::session::{Action, ConnInfo, ListenerInfo, Session, Shared};
use phigate::types::{Reply, TlsInfo};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

struct Policy;

impl Handoff for Policy {
    fn check_recipient(&self, c: &RcptCheck<'_>) -> Option<Reply> {
        c.recipient
            .starts_with("no")
            .then(|| Reply::new(550, "5.7.1", "refused"))
    }
    fn submit(&self, _: Submission) -> BoxFuture<'_, Result<Reply, PipelineError>> {
        unreachable!("the harness answers Submit itself")
    }
}

/// One real audit trail for the whole run, on a spool whose directory is removed at once
/// (the open store keeps its unlinked files; nothing is left behind).
fn audit() -> Arc<phigate::audit::Audit> {
    static AUDIT: std::sync::OnceLock<Arc<phigate::audit::Audit>> = std::sync::OnceLock::new();
    AUDIT
        .get_or_init(|| {
            let dir = std::env::temp_dir().join(format!("phigate-fuzz-{}", std::process::id()));
            let ring = phigate::spool::Keyring::generate();
            let spool = phigate::spool::Spool::open(&dir, ring).expect("spool");
            let _ = std::fs::remove_dir_all(&dir);
            let settings = phigate::audit::AuditSettings::default();
            phigate::audit::Audit::open(Arc::new(spool), settings).expect("audit trail")
        })
        .clone()
}

fn session(shared: &Arc<Shared>, listener: &Arc<ListenerInfo>, tls: bool) -> Session {
    let conn = ConnInfo {
        id: "fuzz".into(),
        peer: "192.0.2.1:1".parse().expect("address"),
        tls: tls.then(|| TlsInfo {
            version: "TLSv1.3".into(),
            cipher: "TLS13_AES_128_GCM_SHA256".into(),
            client_cert_sha256: None,
        }),
        client_cert: None,
    };
    let mut s = Session::new(shared.clone(), listener.clone(), conn);
    if !tls || listener.mode == TlsMode::Implicit {
        s.greet();
    }
    s
}

fuzz_target!(|data: &[u8]| {
    let [flags, cap, input @ ..] = data else {
        return;
    };
    let implicit = flags & 1 != 0;
    let ip_allowed = flags & 4 != 0;
    let mut auth = vec![AuthMethod::Ip];
    if flags & 2 != 0 {
        auth.push(AuthMethod::Password);
    }
    let shared = Arc::new(Shared {
        hostname: "mx.fuzz".into(),
        max_message_size: 4096,
        max_line_length: 64 * 1024,
        max_recipients: 4,
        command_timeout: Duration::from_secs(1),
        data_timeout: Duration::from_secs(1),
        users: Arc::new(Users::default()),
        limiter: Arc::new(FailureLimiter::new(3, Duration::from_secs(60))),
        allow_networks: if ip_allowed {
            vec![Cidr("192.0.2.0/24".parse().expect("network"))]
        } else {
            Vec::new()
        },
        client_cert_allow: Vec::new(),
        handoff: Arc::new(Policy),
        shutdown: CancellationToken::new(),
        audit: audit(),
        metrics: Arc::new(phigate::metrics::Metrics::new()),
    });
    let listener = Arc::new(ListenerInfo {
        name: "fuzz".into(),
        mode: if implicit {
            TlsMode::Implicit
        } else {
            TlsMode::Starttls
        },
        auth,
    });
    let mut tls = implicit;
    let mut s = session(&shared, &listener, tls);
    // Whether this session may carry mail, as far as the harness knows.
    let mut authed = ip_allowed;
    let mut segments = input.split(|&b| b == 0xFF);
    let mut rest: &[u8] = &[];
    let cap = if *cap == 0 {
        usize::MAX
    } else {
        usize::from(*cap)
    };
    let mut actions = 0usize;
    let mut ended = false;
    loop {
        actions += 1;
        // Every action but a read needs a command, and every read consumes input.
        assert!(actions <= 2 * input.len() + 16, "session makes no progress");
        let action = s.next_action();
        let out = s.output().to_vec();
        s.output_sent();
        assert!(out.is_empty() || out.ends_with(b"\r\n"), "partial reply");
        for line in out.split(|&b| b == b'\n') {
            if line.starts_with(b"354") {
                assert!(tls && authed, "DATA reached without TLS and authorisation");
            }
        }
        match action {
            Action::Read(wait) => {
                if ended {
                    panic!("read after timeout or shutdown");
                }
                while rest.is_empty() {
                    match segments.next() {
                        Some(seg) => rest = seg,
                        None => break,
                    }
                }
                if rest.is_empty() {
                    // Client went quiet: time out, or shut down if that may interrupt.
                    if wait.shutdown && flags & 8 != 0 {
                        s.shutting_down();
                    } else {
                        s.timed_out();
                    }
                    ended = true;
                    continue;
                }
                let n = cap.min(rest.len());
                s.receive(&rest[..n]);
                rest = &rest[n..];
            }
            Action::Submit(sub) => {
                assert!(
                    tls && authed,
                    "message submitted without TLS and authorisation"
                );
                assert!(s.authorised().is_some());
                assert!(!sub.envelope.recipients.is_empty());
                assert!(sub.content.starts_with(b"Received: "));
                s.submitted(Ok(Reply::new(250, "2.0.0", "Ok")));
            }
            Action::Verify(c) => {
                assert!(tls, "AUTH outside TLS");
                let ok = c.user == "good" && c.password == "pw";
                s.verified(ok);
                authed |= ok;
            }
            Action::StartTls => {
                assert!(!tls && !implicit, "STARTTLS accepted inside TLS");
                // What the client pipelined behind STARTTLS was dropped with the old
                // session; the rest arrives over TLS to a session that knows nothing.
                tls = true;
                authed = ip_allowed;
                s = session(&shared, &listener, tls);
            }
            Action::Close => break,
        }
    }
    assert!(
        matches!(s.next_action(), Action::Close),
        "closed stays closed"
    );
});
