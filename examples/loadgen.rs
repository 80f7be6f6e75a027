//! SMTP load generator for `bench/compare.sh`: N concurrent sessions send M messages of a
//! realistic MIME shape (text + HTML alternative, one base64 attachment) over implicit TLS,
//! STARTTLS or plaintext, and report messages/s, accept latency percentiles and errors.
//!
//! ```text
//! cargo run --release --example loadgen -- --target 127.0.0.1:4650 --tls implicit \
//!     --ca-file ca.pem --sni relay.perf.test --sessions 50 --messages 2000 --size 10240 --json
//! ```
//!
//! Each session owns one copy of the message and patches a counter and a send timestamp in
//! place, so the hot loop does not allocate. The run is bounded by `--messages` and
//! `--timeout`; `--idle-secs` instead opens the sessions, says EHLO and holds them open.

#[allow(dead_code)]
mod common;

use clap::{Parser, ValueEnum};
use common::{epoch_secs, pct, read_line, Stream};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
enum TlsMode {
    Implicit,
    Starttls,
    None,
}

/// What the message's `application/pdf` part holds.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
enum Attachment {
    /// Random bytes (what the figures before DLP-inside-attachments used).
    Random,
    /// A real PDF with a text layer, which phigate's DLP extracts and scans.
    Pdf,
}

#[derive(Parser, Debug)]
#[command(about = "SMTP load generator (loopback benchmarks)")]
struct Args {
    /// host:port of the SMTP server under test.
    #[arg(long)]
    target: String,
    #[arg(long, value_enum, default_value = "implicit")]
    tls: TlsMode,
    /// Server name for SNI and certificate checks.
    #[arg(long, default_value = "relay.perf.test")]
    sni: String,
    /// CA bundle that signs the server certificate.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// Do not verify the server certificate.
    #[arg(long)]
    insecure: bool,
    /// Allow TLS session resumption (off: every connection is a full handshake, as a fleet
    /// of independent clients would do).
    #[arg(long)]
    resume: bool,
    /// `user:password` for AUTH PLAIN.
    #[arg(long)]
    auth: Option<String>,
    #[arg(long, default_value_t = 50)]
    sessions: usize,
    #[arg(long, default_value_t = 2000)]
    messages: usize,
    /// Approximate size of each message in bytes (headers + MIME parts).
    #[arg(long, default_value_t = 10240)]
    size: usize,
    /// Send several messages per connection instead of one connection per message.
    #[arg(long)]
    reuse: bool,
    #[arg(long, default_value = "load@client.perf.test")]
    from: String,
    #[arg(long, default_value = "user@sink.perf.test")]
    rcpt: String,
    /// Value of the X-Perf-Run header, so the sink can count this run's messages.
    #[arg(long, default_value = "run")]
    run: String,
    /// Upper bound on the whole run in seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// Hold `--sessions` connections open (after TLS and EHLO) for this many seconds.
    #[arg(long)]
    idle_secs: Option<u64>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Content of the PDF attachment.
    #[arg(long, value_enum, default_value = "random")]
    attachment: Attachment,
    /// Write the message template (dot-stuffed, ending in CRLF.CRLF) to stdout and exit.
    #[arg(long)]
    print_template: bool,
}

/// Per-message I/O bound; a stuck server turns into an error, not a hung run.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);
const MAX_LINE: usize = 4096;

type Conn = BufReader<Stream<TlsStream<TcpStream>>>;

/// Why a message or session failed, by protocol stage (no message content).
#[derive(Debug)]
struct Failure {
    stage: &'static str,
    detail: String,
}

fn fail(stage: &'static str, detail: impl ToString) -> Failure {
    Failure {
        stage,
        detail: detail.to_string(),
    }
}

// ---------------------------------------------------------------- message template

/// The message bytes (already dot-safe and ending in CRLF.CRLF) and where to patch them.
#[derive(Clone)]
struct Template {
    bytes: Vec<u8>,
    counter_at: [usize; 2],
    sent_at: usize,
}

const COUNTER_W: usize = 10;
const SENT_W: usize = 17;

/// Deterministic words and bytes, so every run sends the same mix.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

const WORDS: &[&str] = &[
    "appointment",
    "schedule",
    "clinic",
    "follow-up",
    "review",
    "the",
    "and",
    "results",
    "please",
    "call",
    "office",
    "next",
    "week",
    "report",
    "attached",
    "thank",
    "you",
    "for",
    "your",
    "visit",
    "team",
    "update",
    "regards",
    "reminder",
];

fn prose(rng: &mut Rng, bytes: usize, line_prefix: &str, line_suffix: &str) -> String {
    let mut out = String::with_capacity(bytes + 80);
    while out.len() < bytes {
        out.push_str(line_prefix);
        let start = out.len();
        while out.len() - start < 64 {
            out.push_str(WORDS[(rng.next() % WORDS.len() as u64) as usize]);
            out.push(' ');
        }
        out.pop();
        out.push_str(line_suffix);
        out.push_str("\r\n");
    }
    out
}

fn build_template(a: &Args) -> Template {
    use base64::Engine;
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let budget = a.size.saturating_sub(1100).max(300);
    let text = prose(&mut rng, budget * 3 / 10, "", "");
    let html = prose(&mut rng, budget * 3 / 10, "<p>", "</p>");
    let raw_len = budget * 4 / 10 * 3 / 4;
    let raw: Vec<u8> = match a.attachment {
        Attachment::Random => (0..raw_len).map(|_| rng.next() as u8).collect(),
        Attachment::Pdf => {
            let body = prose(&mut rng, raw_len.saturating_sub(700), "", "");
            text_pdf(&body)
        }
    };
    let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
    let mut attach = String::with_capacity(b64.len() + b64.len() / 76 * 2 + 2);
    for chunk in b64.as_bytes().chunks(76) {
        attach.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        attach.push_str("\r\n");
    }
    let counter = "0".repeat(COUNTER_W);
    let sent = "0".repeat(SENT_W);
    let head = format!(
        "From: Load Generator <{from}>\r\nTo: <{rcpt}>\r\nSubject: Clinic update {counter}\r\n\
         Date: Mon, 23 Nov 2026 09:00:00 +0000\r\nMessage-ID: <{counter}.{run}@client.perf.test>\r\n\
         X-Perf-Run: {run}\r\nX-Perf-Sent: {sent}\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"=_mixed_b1\"\r\n\r\n",
        from = a.from,
        rcpt = a.rcpt,
        run = a.run,
    );
    let body = format!(
        "This is a multi-part message in MIME format.\r\n\r\n--=_mixed_b1\r\n\
         Content-Type: multipart/alternative; boundary=\"=_alt_b2\"\r\n\r\n--=_alt_b2\r\n\
         Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 7bit\r\n\r\n{text}\
         --=_alt_b2\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: 7bit\r\n\r\n\
         <html><body>\r\n{html}</body></html>\r\n--=_alt_b2--\r\n\r\n--=_mixed_b1\r\n\
         Content-Type: application/pdf; name=\"summary.pdf\"\r\n\
         Content-Disposition: attachment; filename=\"summary.pdf\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n{attach}--=_mixed_b1--\r\n.\r\n"
    );
    let bytes = format!("{head}{body}").into_bytes();
    let find = |pat: &str, from: usize| {
        bytes[from..]
            .windows(pat.len())
            .position(|w| w == pat.as_bytes())
            .map(|p| p + from + pat.len())
            .unwrap_or(0)
    };
    let c1 = find("Subject: Clinic update ", 0);
    let c2 = find("Message-ID: <", 0);
    let s = find("X-Perf-Sent: ", 0);
    Template {
        bytes,
        counter_at: [c1, c2],
        sent_at: s,
    }
}

/// Write `v` as fixed-width decimal digits into `dst` (no allocation).
fn put_digits(dst: &mut [u8], mut v: u64) {
    for b in dst.iter_mut().rev() {
        *b = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

impl Template {
    fn stamp(&mut self, n: u64) {
        for at in self.counter_at {
            put_digits(&mut self.bytes[at..at + COUNTER_W], n);
        }
        // Seconds with 6 decimals: "1795000000.123456" is 17 characters.
        let us = (epoch_secs() * 1e6) as u64;
        let s = &mut self.bytes[self.sent_at..self.sent_at + SENT_W];
        put_digits(&mut s[..10], us / 1_000_000);
        s[10] = b'.';
        put_digits(&mut s[11..], us % 1_000_000);
    }
}

// ---------------------------------------------------------------- TLS client configuration

/// Accepts any certificate (`--insecure`), still checking handshake signatures.
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn client_config(a: &Args) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let mut cfg = if a.insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
            .with_no_client_auth()
    } else {
        let path = a
            .ca_file
            .as_ref()
            .ok_or("--ca-file or --insecure is required for TLS")?;
        let mut roots = RootCertStore::empty();
        for c in phigate::tls::server::load_certs(path).map_err(|e| e.to_string())? {
            roots.add(c).map_err(|e| e.to_string())?;
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    if !a.resume {
        cfg.resumption = Resumption::disabled();
    }
    Ok(Arc::new(cfg))
}

// ---------------------------------------------------------------- SMTP client

struct Ctx {
    args: Args,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    auth_line: Option<Vec<u8>>,
    envelope: Vec<u8>,
    next: AtomicUsize,
    deadline: Instant,
}

/// Reads one (possibly multi-line) reply; returns its code. `text` gets every line.
async fn reply(c: &mut Conn, line: &mut Vec<u8>, text: &mut Vec<u8>) -> Result<u16, Failure> {
    text.clear();
    loop {
        read_line(c, line, MAX_LINE)
            .await
            .map_err(|e| fail("read", e))?;
        text.extend_from_slice(line);
        let code = line
            .get(..3)
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| d.parse::<u16>().ok())
            .ok_or_else(|| fail("read", "malformed reply"))?;
        if line.get(3) != Some(&b'-') {
            return Ok(code);
        }
    }
}

async fn expect(
    c: &mut Conn,
    line: &mut Vec<u8>,
    text: &mut Vec<u8>,
    stage: &'static str,
    want: u16,
) -> Result<(), Failure> {
    let code = reply(c, line, text).await?;
    if code / 100 == want / 100 {
        Ok(())
    } else {
        Err(fail(stage, format!("reply {code}")))
    }
}

async fn send(c: &mut Conn, bytes: &[u8], stage: &'static str) -> Result<(), Failure> {
    let w = c.get_mut();
    w.write_all(bytes).await.map_err(|e| fail(stage, e))?;
    w.flush().await.map_err(|e| fail(stage, e))
}

fn has_keyword(ehlo: &[u8], kw: &[u8]) -> bool {
    ehlo.split(|&b| b == b'\n')
        .any(|l| l.len() >= 4 + kw.len() && l[4..4 + kw.len()].eq_ignore_ascii_case(kw))
}

struct Session {
    conn: Conn,
    pipelining: bool,
    resumed: bool,
}

/// Connect, TLS (implicit or STARTTLS), EHLO, AUTH: a session ready for MAIL.
async fn open(ctx: &Ctx, line: &mut Vec<u8>, text: &mut Vec<u8>) -> Result<Session, Failure> {
    let tcp = TcpStream::connect(&ctx.args.target)
        .await
        .map_err(|e| fail("connect", e))?;
    let _ = tcp.set_nodelay(true);
    let tls_handshake = |tcp: TcpStream| async move {
        let (conn, name) = ctx.tls.as_ref().ok_or_else(|| fail("tls", "no config"))?;
        conn.connect(name.clone(), tcp)
            .await
            .map_err(|e| fail("tls", e))
    };
    let mut c: Conn = match ctx.args.tls {
        TlsMode::Implicit => BufReader::new(Stream::Tls(Box::new(tls_handshake(tcp).await?))),
        _ => BufReader::new(Stream::Plain(tcp)),
    };
    expect(&mut c, line, text, "greeting", 220).await?;
    send(&mut c, b"EHLO client.perf.test\r\n", "ehlo").await?;
    expect(&mut c, line, text, "ehlo", 250).await?;
    if ctx.args.tls == TlsMode::Starttls {
        send(&mut c, b"STARTTLS\r\n", "starttls").await?;
        expect(&mut c, line, text, "starttls", 220).await?;
        if !c.buffer().is_empty() {
            return Err(fail("starttls", "data after STARTTLS reply"));
        }
        let Stream::Plain(tcp) = c.into_inner() else {
            return Err(fail("starttls", "already TLS"));
        };
        c = BufReader::new(Stream::Tls(Box::new(tls_handshake(tcp).await?)));
        send(&mut c, b"EHLO client.perf.test\r\n", "ehlo").await?;
        expect(&mut c, line, text, "ehlo", 250).await?;
    }
    let pipelining = has_keyword(text, b"PIPELINING");
    if let Some(auth) = &ctx.auth_line {
        send(&mut c, auth, "auth").await?;
        expect(&mut c, line, text, "auth", 235).await?;
    }
    let resumed = match c.get_ref() {
        Stream::Tls(t) => t.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
        Stream::Plain(_) => false,
    };
    Ok(Session {
        conn: c,
        pipelining,
        resumed,
    })
}

/// MAIL, RCPT, DATA (pipelined when offered), body; returns the DATA-end-to-250 time.
async fn transaction(
    ctx: &Ctx,
    s: &mut Session,
    msg: &[u8],
    line: &mut Vec<u8>,
    text: &mut Vec<u8>,
) -> Result<Duration, Failure> {
    let env = &ctx.envelope;
    let c = &mut s.conn;
    if s.pipelining {
        send(c, env, "mail").await?;
        expect(c, line, text, "mail", 250).await?;
        expect(c, line, text, "rcpt", 250).await?;
        expect(c, line, text, "data", 354).await?;
    } else {
        let split: Vec<&[u8]> = env.split_inclusive(|&b| b == b'\n').collect();
        for (part, (stage, code)) in split
            .iter()
            .zip([("mail", 250), ("rcpt", 250), ("data", 354)])
        {
            send(c, part, stage).await?;
            expect(c, line, text, stage, code).await?;
        }
    }
    send(c, msg, "body").await?;
    let t = Instant::now();
    expect(c, line, text, "accept", 250).await?;
    Ok(t.elapsed())
}

#[derive(Default)]
struct WorkerStats {
    commit_us: Vec<u32>,
    accept_us: Vec<u32>,
    errors: BTreeMap<&'static str, u64>,
    first_error: Option<String>,
    connections: u64,
    resumed: u64,
}

impl WorkerStats {
    fn error(&mut self, f: Failure) {
        *self.errors.entry(f.stage).or_default() += 1;
        if self.first_error.is_none() {
            self.first_error = Some(format!("{}: {}", f.stage, f.detail));
        }
    }
}

async fn worker(ctx: Arc<Ctx>, mut tpl: Template) -> WorkerStats {
    let per = ctx.args.messages / ctx.args.sessions.max(1) + 1;
    let mut st = WorkerStats {
        commit_us: Vec::with_capacity(per),
        accept_us: Vec::with_capacity(per),
        ..Default::default()
    };
    let (mut line, mut text) = (Vec::with_capacity(512), Vec::with_capacity(1024));
    let mut session: Option<Session> = None;
    loop {
        let n = ctx.next.fetch_add(1, Ordering::Relaxed);
        if n >= ctx.args.messages || Instant::now() >= ctx.deadline {
            break;
        }
        let t0 = Instant::now();
        let step = async {
            if session.is_none() {
                let s = open(&ctx, &mut line, &mut text).await?;
                st.connections += 1;
                st.resumed += u64::from(s.resumed);
                session = Some(s);
            }
            let s = session
                .as_mut()
                .ok_or_else(|| fail("connect", "no session"))?;
            tpl.stamp(n as u64);
            transaction(&ctx, s, &tpl.bytes, &mut line, &mut text).await
        };
        match tokio::time::timeout(STEP_TIMEOUT, step).await {
            Ok(Ok(commit)) => {
                st.commit_us
                    .push(commit.as_micros().min(u32::MAX as u128) as u32);
                st.accept_us
                    .push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32);
                if !ctx.args.reuse {
                    if let Some(mut s) = session.take() {
                        // QUIT without waiting long: the message is already accepted.
                        let _ = tokio::time::timeout(Duration::from_secs(5), async {
                            send(&mut s.conn, b"QUIT\r\n", "quit").await?;
                            reply(&mut s.conn, &mut line, &mut text).await
                        })
                        .await;
                    }
                }
            }
            Ok(Err(f)) => {
                st.error(f);
                session = None;
            }
            Err(_) => {
                st.error(fail("timeout", "step exceeded 60 s"));
                session = None;
            }
        }
    }
    if let Some(mut s) = session {
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            send(&mut s.conn, b"QUIT\r\n", "quit"),
        )
        .await;
    }
    st
}

/// `--idle-secs`: open the sessions, hold them, report how many stayed up.
async fn idle(ctx: Arc<Ctx>, secs: u64) -> serde_json::Value {
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let sem = Arc::new(tokio::sync::Semaphore::new(64));
    for _ in 0..ctx.args.sessions {
        let (ctx, sem) = (ctx.clone(), sem.clone());
        tasks.spawn(async move {
            let (mut line, mut text) = (Vec::new(), Vec::new());
            let opened = {
                // Bound concurrent handshakes so the server sees a ramp, not a SYN flood.
                let _permit = sem.acquire().await;
                tokio::time::timeout(STEP_TIMEOUT, open(&ctx, &mut line, &mut text)).await
            };
            match opened {
                Ok(Ok(mut s)) => {
                    tokio::time::sleep_until((start + Duration::from_secs(secs)).into()).await;
                    let ok = tokio::time::timeout(Duration::from_secs(10), async {
                        send(&mut s.conn, b"NOOP\r\n", "noop").await?;
                        expect(&mut s.conn, &mut line, &mut text, "noop", 250).await
                    })
                    .await;
                    matches!(ok, Ok(Ok(())))
                }
                _ => false,
            }
        });
    }
    let (mut alive, mut failed) = (0u64, 0u64);
    while let Some(r) = tasks.join_next().await {
        if matches!(r, Ok(true)) {
            alive += 1;
        } else {
            failed += 1;
        }
    }
    serde_json::json!({
        "mode": "idle", "target": ctx.args.target, "sessions": ctx.args.sessions,
        "held_secs": secs, "alive_after_hold": alive, "failed": failed,
        "elapsed_s": start.elapsed().as_secs_f64(),
    })
}

async fn run(args: Args) -> Result<serde_json::Value, String> {
    use base64::Engine;
    let tls = match args.tls {
        TlsMode::None => None,
        _ => {
            let name = ServerName::try_from(args.sni.clone()).map_err(|e| e.to_string())?;
            Some((TlsConnector::from(client_config(&args)?), name))
        }
    };
    let auth_line = args.auth.as_ref().map(|up| {
        let (u, p) = up.split_once(':').unwrap_or((up, ""));
        let token = base64::engine::general_purpose::STANDARD.encode(format!("\0{u}\0{p}"));
        format!("AUTH PLAIN {token}\r\n").into_bytes()
    });
    let envelope = format!(
        "MAIL FROM:<{}>\r\nRCPT TO:<{}>\r\nDATA\r\n",
        args.from, args.rcpt
    )
    .into_bytes();
    let tpl = build_template(&args);
    let msg_bytes = tpl.bytes.len() - 3;
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let ctx = Arc::new(Ctx {
        args,
        tls,
        auth_line,
        envelope,
        next: AtomicUsize::new(0),
        deadline,
    });
    if let Some(secs) = ctx.args.idle_secs {
        return Ok(idle(ctx, secs).await);
    }
    let start_epoch = epoch_secs();
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..ctx.args.sessions {
        tasks.spawn(worker(ctx.clone(), tpl.clone()));
    }
    let mut all = WorkerStats::default();
    while let Some(r) = tasks.join_next().await {
        let w = r.map_err(|e| e.to_string())?;
        all.commit_us.extend(w.commit_us);
        all.accept_us.extend(w.accept_us);
        for (k, v) in w.errors {
            *all.errors.entry(k).or_default() += v;
        }
        all.first_error = all.first_error.or(w.first_error);
        all.connections += w.connections;
        all.resumed += w.resumed;
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.commit_us.sort_unstable();
    all.accept_us.sort_unstable();
    let ok = all.commit_us.len();
    let a = &ctx.args;
    Ok(serde_json::json!({
        "target": a.target, "tls": format!("{:?}", a.tls).to_lowercase(), "run": a.run,
        "sessions": a.sessions, "messages": a.messages, "size": a.size, "message_bytes": msg_bytes,
        "reuse": a.reuse, "resume": a.resume,
        "accepted": ok, "errors": all.errors.values().sum::<u64>(), "error_stages": all.errors,
        "first_error": all.first_error,
        "connections": all.connections, "tls_resumed": all.resumed,
        "start_epoch": start_epoch, "end_epoch": start_epoch + elapsed, "elapsed_s": elapsed,
        "accept_msgs_per_s": if elapsed > 0.0 { ok as f64 / elapsed } else { 0.0 },
        "commit_ms": {"p50": pct(&all.commit_us, 0.5), "p99": pct(&all.commit_us, 0.99),
                      "max": pct(&all.commit_us, 1.0)},
        "accept_ms": {"p50": pct(&all.accept_us, 0.5), "p99": pct(&all.accept_us, 0.99),
                      "max": pct(&all.accept_us, 1.0)},
    }))
}

fn main() {
    let args = Args::parse();
    if args.print_template {
        use std::io::Write;
        let _ = std::io::stdout().write_all(&build_template(&args).bytes);
        return;
    }
    let json = args.json;
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadgen: runtime: {e}");
            std::process::exit(2);
        }
    };
    match rt.block_on(run(args)) {
        Ok(v) if json => println!("{v}"),
        Ok(v) => {
            if let Some(m) = v.as_object() {
                for (k, v) in m {
                    println!("{k:>18}: {v}");
                }
            }
        }
        Err(e) => {
            eprintln!("loadgen: {e}");
            std::process::exit(2);
        }
    }
}

/// A one-page PDF whose text layer is `text` (one line per `Tj`), with a correct xref.
fn text_pdf(text: &str) -> Vec<u8> {
    let mut content = String::from("BT /F1 9 Tf 40 800 Td 11 TL\n");
    for line in text.lines() {
        let esc = line
            .replace('\\', "\\\\")
            .replace('(', "\\(")
            .replace(')', "\\)");
        content.push_str(&format!("({esc}) Tj T*\n"));
    }
    content.push_str("ET\n");
    let objects = [
        "<< /Type /Catalog /Pages 2 0 R >>".to_string(),
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_string(),
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>".to_string(),
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>".to_string(),
        format!("<< /Length {} >>\nstream\n{content}endstream", content.len()),
    ];
    let mut out = b"%PDF-1.4\n".to_vec();
    let mut offsets = Vec::new();
    for (i, o) in objects.iter().enumerate() {
        offsets.push(out.len());
        out.extend_from_slice(format!("{} 0 obj\n{o}\nendobj\n", i + 1).as_bytes());
    }
    let xref = out.len();
    out.extend_from_slice(
        format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).as_bytes(),
    );
    for off in offsets {
        out.extend_from_slice(format!("{off:010} 00000 n \n").as_bytes());
    }
    out.extend_from_slice(
        format!(
            "trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n",
            objects.len() + 1
        )
        .as_bytes(),
    );
    out
}
