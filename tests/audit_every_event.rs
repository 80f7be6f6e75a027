//! Issue 6 acceptance: one gateway in `mx` mode (control socket, policy file) and one
//! receiving SMTP server started here. Messages exercise every per-message event kind
//! (accepted and delivered, rejected by policy, quarantined / viewed / released /
//! delivered, deferred then bounced with a DSN), plus AUTH failure and success and a
//! SIGHUP reload. The trail exported through the daemon must show each message's hops in
//! order, with the TLS facts the receiver itself negotiated, and no subject, body,
//! password or DLP value anywhere.

mod common;

use common::*;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------
// Receiving SMTP server (trimmed from tests/queue_e2e.rs): STARTTLS with rustls, and it
// notes the TLS version and cipher it negotiated for every RCPT it answers.

/// What the receiver's own rustls `ServerConnection` negotiated.
#[derive(Clone, Debug, PartialEq)]
struct TlsSeen {
    version: String,
    cipher: String,
}

/// One RCPT the receiver answered: address, reply code, TLS of that connection.
type RcptSeen = (String, u16, TlsSeen);

#[derive(Default)]
struct RxLog {
    rcpts: Vec<RcptSeen>,
    seen: HashMap<String, usize>,
    /// Accepted messages: (MAIL FROM, text as on the wire).
    messages: Vec<(String, String)>,
}

struct Rx {
    port: u16,
    log: Arc<Mutex<RxLog>>,
}

impl Rx {
    /// `flaky@` gets 451 the first time and 550 after; everyone else 250.
    fn start(tls: Arc<rustls::ServerConfig>) -> Rx {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind receiver");
        let port = listener.local_addr().expect("receiver addr").port();
        let log = Arc::new(Mutex::new(RxLog::default()));
        let log2 = log.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (tls, log) = (tls.clone(), log2.clone());
                std::thread::spawn(move || serve(stream, tls, log));
            }
        });
        Rx { port, log }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RxLog> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wait_messages(&self, n: usize, timeout: Duration) -> Vec<(String, String)> {
        let deadline = Instant::now() + timeout;
        loop {
            let m = self.lock().messages.clone();
            if m.len() >= n || Instant::now() > deadline {
                return m;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The RCPTs the receiver answered for `addr`, in order.
    fn rcpts_for(&self, addr: &str) -> Vec<RcptSeen> {
        self.lock()
            .rcpts
            .iter()
            .filter(|r| r.0 == addr)
            .cloned()
            .collect()
    }
}

fn rcpt_reply(addr: &str, n: usize) -> &'static str {
    match (addr.starts_with("flaky@"), n) {
        (true, 0) => "451 4.2.0 try later",
        (true, _) => "550 5.1.1 no such user",
        _ => "250 2.1.5 Ok",
    }
}

fn serve(stream: TcpStream, cfg: Arc<rustls::ServerConfig>, log: Arc<Mutex<RxLog>>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut r = BufReader::new(stream);
    if r.get_mut().write_all(b"220 rx.test ESMTP\r\n").is_err() {
        return;
    }
    // Before TLS: EHLO (offering STARTTLS) until STARTTLS; nothing else is accepted.
    loop {
        let mut line = String::new();
        if matches!(r.read_line(&mut line), Ok(0) | Err(_)) {
            return;
        }
        let upper = line.trim_end().to_ascii_uppercase();
        let reply: &[u8] = if upper.starts_with("EHLO") {
            b"250-rx.test\r\n250-PIPELINING\r\n250 STARTTLS\r\n"
        } else if upper == "STARTTLS" {
            if r.get_mut().write_all(b"220 2.0.0 go ahead\r\n").is_err() {
                return;
            }
            break;
        } else {
            b"530 5.7.0 STARTTLS first\r\n"
        };
        if r.get_mut().write_all(reply).is_err() {
            return;
        }
    }
    let mut tcp = r.into_inner();
    let Ok(mut conn) = rustls::ServerConnection::new(cfg) else {
        return;
    };
    while conn.is_handshaking() {
        if conn.complete_io(&mut tcp).is_err() {
            return;
        }
    }
    // The names phigate records for both directions: `TLSv1.3` and the IANA suite name.
    let seen = TlsSeen {
        version: conn
            .protocol_version()
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .replace("TLSv1_", "TLSv1."),
        cipher: conn
            .negotiated_cipher_suite()
            .and_then(|c| c.suite().as_str())
            .unwrap_or("")
            .replace("TLS13_", "TLS_"),
    };
    let mut r = BufReader::new(rustls::StreamOwned::new(conn, tcp));
    converse(&mut r, &seen, &log);
}

fn converse<S: Read + Write>(r: &mut BufReader<S>, tls: &TlsSeen, log: &Arc<Mutex<RxLog>>) {
    let lock = || log.lock().unwrap_or_else(|p| p.into_inner());
    let (mut from, mut rcpts) = (None::<String>, 0usize);
    loop {
        let mut line = String::new();
        if matches!(r.read_line(&mut line), Ok(0) | Err(_)) {
            return;
        }
        let line = line.trim_end().to_string();
        let upper = line.to_ascii_uppercase();
        let reply = if upper.starts_with("EHLO") {
            "250-rx.test\r\n250-PIPELINING\r\n250 8BITMIME".to_string()
        } else if upper.starts_with("MAIL FROM:") {
            from = Some(angle(&line));
            rcpts = 0;
            "250 2.1.0 Ok".into()
        } else if upper.starts_with("RCPT TO:") {
            let addr = angle(&line);
            let mut l = lock();
            let n = *l.seen.get(&addr).unwrap_or(&0);
            l.seen.insert(addr.clone(), n + 1);
            let reply = rcpt_reply(&addr, n);
            let code = reply.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
            l.rcpts.push((addr, code, tls.clone()));
            rcpts += usize::from(code == 250);
            reply.into()
        } else if upper == "DATA" {
            if from.is_none() || rcpts == 0 {
                "554 5.5.1 no valid recipients".into()
            } else {
                if r.get_mut().write_all(b"354 go ahead\r\n").is_err() {
                    return;
                }
                let mut wire = Vec::new();
                loop {
                    let mut raw = Vec::new();
                    if matches!(r.read_until(b'\n', &mut raw), Ok(0) | Err(_)) {
                        return;
                    }
                    if raw == b".\r\n" {
                        break;
                    }
                    wire.extend_from_slice(&raw);
                }
                let text = String::from_utf8_lossy(&wire).into_owned();
                lock()
                    .messages
                    .push((from.take().unwrap_or_default(), text));
                "250 2.0.0 Ok: stored".into()
            }
        } else if upper == "RSET" {
            from = None;
            rcpts = 0;
            "250 2.0.0 Ok".into()
        } else if upper == "QUIT" {
            let _ = r.get_mut().write_all(b"221 2.0.0 bye\r\n");
            return;
        } else {
            "502 5.5.2 not implemented".into()
        };
        if r.get_mut()
            .write_all(format!("{reply}\r\n").as_bytes())
            .is_err()
        {
            return;
        }
    }
}

/// The address between `<` and `>`.
fn angle(line: &str) -> String {
    let start = line.find('<').map_or(0, |i| i + 1);
    let end = line[start..].find('>').map_or(line.len(), |i| start + i);
    line[start..end].to_string()
}

/// A CA (written to `dir/rx-ca.pem`), the receiver's config for 127.0.0.1, and the
/// SHA-256 of the receiver's certificate.
fn receiver_tls(dir: &Path) -> (PathBuf, Arc<rustls::ServerConfig>, String) {
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().expect("ca key");
    let ca = p.self_signed(&ca_key).expect("ca cert");
    let ca_path = dir.join("rx-ca.pem");
    std::fs::write(&ca_path, ca.pem()).expect("write receiver CA");
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string()]).expect("leaf params");
    let key = KeyPair::generate().expect("leaf key");
    let cert = leaf.signed_by(&key, &ca, &ca_key).expect("sign leaf");
    let sha = hex::encode(Sha256::digest(cert.der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(cert.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .expect("receiver cert");
    (ca_path, Arc::new(cfg), sha)
}

// ---------------------------------------------------------------------------------
// Gateway and CLI

const POLICY: &str = r#"
[dlp]
mode = "enforce"

[default]
action = "accept"

[[rule]]
name = "ssn-refused"
action = "reject"
[rule.match]
detectors = ["ssn"]

[[rule]]
name = "cards-held"
action = "quarantine"
[rule.match]
detectors = ["card"]
"#;

/// Synthetic DLP values (valid format, not real): they must never reach the trail.
const SSN: &str = "536-22-1876";
const CARD: &str = "4111 1111 1111 1111";
const WRONG_PASSWORD: &str = "wrong horse battery";
const SENDER: &str = "ehr@s.test";

fn cli(gw: &Gateway, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&gw.config)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run phigate CLI");
    assert!(
        out.status.success(),
        "phigate {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        gw.log()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `audit verify` through the daemon: (record count, head hash).
fn verify(gw: &Gateway) -> (u64, String) {
    let out = cli(gw, &["audit", "verify"]);
    let mut words = out
        .trim()
        .strip_prefix("ok ")
        .unwrap_or_else(|| panic!("verify not ok: {out}"))
        .split_whitespace();
    let n = words.next().and_then(|n| n.parse().ok());
    let head = out.split("head ").nth(1).map(|h| h.trim().to_string());
    match (n, head) {
        (Some(n), Some(h)) => (n, h),
        _ => panic!("unexpected verify output: {out}"),
    }
}

/// The name the control socket gives the test's own uid (its peer credentials).
fn admin_name() -> String {
    let run = |a: &str| {
        Command::new("id")
            .arg(a)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    run("-un")
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| format!("uid:{}", run("-u").unwrap_or_default()))
}

fn session(rcpt: &str, subject: &str, body: &str) -> Vec<Value> {
    vec![
        send("EHLO ehr.clinic.test\r\n"),
        send(&format!("MAIL FROM:<{SENDER}>\r\n")),
        send(&format!("RCPT TO:<{rcpt}>\r\n")),
        send("DATA\r\n"),
        send(&format!(
            "From: <{SENDER}>\r\nTo: <{rcpt}>\r\nSubject: {subject}\r\n\r\n{body}\r\n.\r\n"
        )),
        send("QUIT\r\n"),
    ]
}

fn queued(t: &Transcript, step: usize) -> String {
    t.line(step)
        .strip_prefix("250 2.0.0 Ok: queued as ")
        .and_then(|s| s.get(..26))
        .unwrap_or_else(|| panic!("not queued: {:?}", t.lines(step)))
        .to_string()
}

// ---------------------------------------------------------------------------------
// The exported trail

struct Trail(Vec<Value>);

impl Trail {
    fn kind(r: &Value) -> &str {
        r["kind"].as_str().unwrap_or("")
    }

    fn seq(r: &Value) -> u64 {
        r["seq"].as_u64().unwrap_or(0)
    }

    /// Records about message `id`, in chain order.
    fn of(&self, id: &str) -> Vec<&Value> {
        self.0.iter().filter(|r| r["message_id"] == id).collect()
    }

    fn kinds(&self, id: &str) -> Vec<&str> {
        self.of(id).into_iter().map(Trail::kind).collect()
    }

    fn all(&self, kind: &str) -> Vec<&Value> {
        self.0.iter().filter(|r| Trail::kind(r) == kind).collect()
    }

    fn first(&self, id: &str, kind: &str) -> &Value {
        self.of(id)
            .into_iter()
            .find(|r| Trail::kind(r) == kind)
            .unwrap_or_else(|| panic!("no {kind} for {id}: {:?}", self.kinds(id)))
    }

    /// The session that carried message `id`, by the session ID its `message_received`
    /// names; that session's `session_opened` must come first in the chain.
    fn session_of(&self, id: &str) -> &Value {
        let received = self.first(id, "message_received");
        let sid = received["session"].as_str().unwrap_or_default();
        assert!(
            !sid.is_empty(),
            "message_received names no session: {received}"
        );
        let opened = self
            .all("session_opened")
            .into_iter()
            .find(|s| s["session"] == sid)
            .unwrap_or_else(|| panic!("no session_opened for {sid} ({id})"));
        assert!(
            Trail::seq(opened) < Trail::seq(received),
            "{opened} after {received}"
        );
        opened
    }

    /// Records of the session's own events (`auth_*`), by session ID.
    fn in_session(&self, session: &Value) -> Vec<&Value> {
        self.0
            .iter()
            .filter(|r| r["session"] == session["session"] && Trail::kind(r).starts_with("auth_"))
            .collect()
    }
}

/// The delivery_attempt records of `id` match, one for one, what the receiver saw for
/// `rcpt`: reply code, negotiated TLS version and cipher, and its certificate.
fn assert_attempts_match(trail: &Trail, id: &str, rcpt: &str, rx: &Rx, cert_sha: &str) {
    let attempts: Vec<&Value> = trail
        .of(id)
        .into_iter()
        .filter(|r| Trail::kind(r) == "delivery_attempt")
        .collect();
    let seen = rx.rcpts_for(rcpt);
    assert_eq!(
        attempts.len(),
        seen.len(),
        "{rcpt}: {attempts:?} vs {seen:?}"
    );
    for (a, (_, code, tls)) in attempts.iter().zip(&seen) {
        assert_eq!(a["recipient"], rcpt, "{a}");
        assert_eq!(a["code"].as_u64(), Some(u64::from(*code)), "{a}");
        assert!(!tls.version.is_empty() && !tls.cipher.is_empty());
        assert_eq!(a["tls_version"], tls.version.as_str(), "{a}");
        assert_eq!(a["cipher"], tls.cipher.as_str(), "{a}");
        assert_eq!(a["peer_cert_sha256"], cert_sha, "{a}");
        assert_eq!(a["ip"], "127.0.0.1", "{a}");
        assert!(a["method"].as_str().is_some_and(|m| !m.is_empty()), "{a}");
    }
}

#[test]
fn every_event_kind_is_exported_in_order_without_phi() {
    if !require_tool(PYTHON) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca, tls, cert_sha) = receiver_tls(dir.path());
    let rx = Rx::start(tls);
    let mut delivery = format!(
        "mode = \"mx\"\ntls_level = \"verify\"\nextra_ca_file = \"{}\"\n\
         connect_timeout = \"5s\"\ncommand_timeout = \"10s\"\n",
        ca.display()
    );
    for domain in ["r1.test", "r2.test", "s.test"] {
        delivery += &format!(
            "[delivery.domains.\"{domain}\"]\nroute = \"127.0.0.1:{}\"\n",
            rx.port
        );
    }
    let gw = Gateway::start(GwOpts {
        // Password and IP: the AUTH session authenticates, the others relay by IP.
        listeners: vec![listener("smtps", "implicit", &["password", "ip"])],
        users: vec!["alice"],
        policy: Some(POLICY.to_string()),
        delivery: Some(delivery),
        server_extra: format!(
            "control_socket = \"{}\"\n\n[queue]\nretry = [\"1s\"]\nexpire = \"30s\"\n",
            dir.path().join("control.sock").display()
        ),
        ..GwOpts::default()
    });
    let tag = hex::encode(rand::random::<[u8; 6]>());
    let (subj, body) = (format!("SubjCanary{tag}"), format!("BodyCanary{tag}"));

    // (5) AUTH failure then success, then (1) a message accepted and delivered.
    let mut auth = vec![
        send("EHLO ehr.clinic.test\r\n"),
        send(&auth_plain("alice", WRONG_PASSWORD)),
        send(&auth_plain("alice", PASSWORD)),
    ];
    auth.extend(session("pat@r1.test", &subj, &body).split_off(1));
    let ts = py_many(vec![
        gw.peer("smtps", auth),
        // (2) rejected by policy, (3) quarantined, (4) deferred then bounced.
        gw.peer(
            "smtps",
            session("rej@r1.test", &subj, &format!("{body} SSN {SSN}")),
        ),
        gw.peer(
            "smtps",
            session("held@r1.test", &subj, &format!("{body} card {CARD}")),
        ),
        gw.peer("smtps", session("flaky@r2.test", &subj, &body)),
    ]);
    assert!(ts[0].line(1).starts_with("535 "), "{:?}", ts[0].lines(1));
    assert!(ts[0].line(2).starts_with("235 "), "{:?}", ts[0].lines(2));
    let delivered = queued(&ts[0], 6);
    assert_eq!(
        ts[1].line(4),
        "550 5.7.1 Message refused by policy ssn-refused"
    );
    let held = queued(&ts[2], 4);
    assert!(ts[2]
        .line(4)
        .ends_with("held for review by policy cards-held"));
    let bounced = queued(&ts[3], 4);

    // (6) an administrator reads the held body, then releases it.
    let shown = cli(&gw, &["queue", "show", &held, "--body"]);
    assert!(shown.contains(&held), "{shown}");
    cli(&gw, &["quarantine", "release", &held]);

    // The receiver gets the delivered, the released message and the DSN (null sender).
    let got = rx.wait_messages(3, Duration::from_secs(15));
    assert_eq!(got.len(), 3, "receiver got {got:?}\n{}", gw.log());
    let dsn = got
        .iter()
        .find(|(from, _)| from.is_empty())
        .expect("a DSN from the null sender");
    assert!(dsn.1.contains(&bounced), "DSN is about another message");
    // Every message is in a final state once nothing is pending; each state change
    // commits with its records, and verify writes any staged connection records first.
    gw.wait_drained(Duration::from_secs(60));
    let (n, _) = verify(&gw);

    // (7) SIGHUP: a reload record appears, and only that one (nothing else is running).
    gw.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut now = n;
    while now <= n {
        assert!(
            Instant::now() < deadline,
            "no record after SIGHUP in 30 s (hang guard)"
        );
        std::thread::sleep(Duration::from_millis(50));
        now = verify(&gw).0;
    }
    assert_eq!(now, n + 1, "SIGHUP added more than one record");

    // Export through the daemon; it is recorded as exactly one more record.
    let (before, head_before) = verify(&gw);
    let out = cli(&gw, &["audit", "export", "--format", "jsonl"]);
    let (after, head_after) = verify(&gw);
    assert_eq!(after, before + 1, "the export was not recorded once");
    assert_ne!(head_before, head_after);
    let trail = Trail(
        out.lines()
            .map(|l| serde_json::from_str(l).expect("JSON line"))
            .collect(),
    );
    assert_eq!(
        trail.0.len() as u64,
        before,
        "export is not the whole chain"
    );
    for (i, r) in trail.0.iter().enumerate() {
        assert_eq!(Trail::seq(r), i as u64 + 1, "sequence gap at {r}");
    }
    let admin = admin_name();

    // Nothing from a subject, a body, a password or a DLP match.
    for secret in [
        subj.as_str(),
        body.as_str(),
        PASSWORD,
        WRONG_PASSWORD,
        &b64(&format!("\0alice\0{PASSWORD}")),
        &b64(&format!("\0alice\0{WRONG_PASSWORD}")),
        SSN,
        "536221876",
        CARD,
        "4111111111111111",
    ] {
        assert!(!out.contains(secret), "`{secret}` in the export");
    }

    // (1) + (5): session -> auth failure -> auth success -> received -> policy ->
    // spooled -> attempt -> delivered.
    assert_eq!(
        trail.kinds(&delivered),
        [
            "message_received",
            "policy_decision",
            "spooled",
            "delivery_attempt",
            "delivered"
        ]
    );
    let s = trail.session_of(&delivered);
    assert_eq!(s["listener"], "smtps", "{s}");
    assert_eq!(s["peer_ip"], "127.0.0.1", "{s}");
    assert_eq!(s["tls_version"], ts[0].tls["version"], "{s}");
    assert_eq!(s["cipher"], ts[0].tls["cipher"], "{s}");
    let auths = trail.in_session(s);
    let auth_kinds: Vec<&str> = auths.iter().map(|r| Trail::kind(r)).collect();
    assert_eq!(auth_kinds, ["auth_failure", "auth_success"], "{auths:?}");
    for a in &auths {
        assert_eq!(a["identity"], "alice", "{a}");
        assert_eq!(a["method"], "password", "{a}");
        assert!(Trail::seq(a) < Trail::seq(trail.first(&delivered, "message_received")));
    }
    let rcv = trail.first(&delivered, "message_received");
    assert_eq!(rcv["sender"], SENDER, "{rcv}");
    assert_eq!(rcv["recipients"][0], "pat@r1.test", "{rcv}");
    assert_eq!(rcv["auth_method"], "password", "{rcv}");
    assert!(rcv["size"].as_u64().is_some_and(|n| n > 0), "{rcv}");
    assert_eq!(
        trail.first(&delivered, "policy_decision")["action"],
        "accept"
    );
    let spooled = trail.first(&delivered, "spooled");
    assert_eq!(spooled["quarantined"], false, "{spooled}");
    assert!(spooled["key_id"].as_str().is_some_and(|k| !k.is_empty()));
    assert_attempts_match(&trail, &delivered, "pat@r1.test", &rx, &cert_sha);
    assert_eq!(
        trail.first(&delivered, "delivered")["recipient"],
        "pat@r1.test"
    );

    // (2) rejected: what arrived and the refusal, nothing spooled or delivered.
    let rejects: Vec<&Value> = trail
        .all("policy_decision")
        .into_iter()
        .filter(|r| r["action"] == "reject")
        .collect();
    assert_eq!(rejects.len(), 1, "{rejects:?}");
    let rejected = rejects[0]["message_id"].as_str().expect("reject has an ID");
    assert_eq!(
        trail.kinds(rejected),
        ["message_received", "policy_decision"]
    );
    assert_eq!(rejects[0]["rule"], "ssn-refused");
    assert!(
        rejects[0]["detectors"]
            .as_str()
            .is_some_and(|d| d.contains("ssn")),
        "{}",
        rejects[0]
    );
    assert_eq!(
        trail.first(rejected, "message_received")["recipients"][0],
        "rej@r1.test"
    );
    assert!(trail.session_of(rejected)["seq"].as_u64() > s["seq"].as_u64());
    assert!(rx.rcpts_for("rej@r1.test").is_empty());

    // (3) + (6): held, body viewed and released by the admin, then delivered.
    assert_eq!(
        trail.kinds(&held),
        [
            "message_received",
            "policy_decision",
            "spooled",
            "body_viewed",
            "release",
            "delivery_attempt",
            "delivered"
        ]
    );
    let decision = trail.first(&held, "policy_decision");
    assert_eq!(decision["action"], "quarantine", "{decision}");
    assert_eq!(decision["rule"], "cards-held", "{decision}");
    assert_eq!(trail.first(&held, "spooled")["quarantined"], true);
    for kind in ["body_viewed", "release"] {
        assert_eq!(trail.first(&held, kind)["admin"], admin.as_str(), "{kind}");
    }
    assert_attempts_match(&trail, &held, "held@r1.test", &rx, &cert_sha);

    // (4) 451 then 550: deferred, bounced, DSN sent; the DSN is delivered in turn.
    // The queue commits the DSN (with `dsn_sent`) just before the bounce's own state
    // change (so a crash can repeat a DSN, never lose one), so in the chain `dsn_sent`
    // directly precedes the final attempt; checked apart from the other hops.
    let hops: Vec<&str> = trail
        .kinds(&bounced)
        .into_iter()
        .filter(|k| *k != "dsn_sent")
        .collect();
    assert_eq!(
        hops,
        [
            "message_received",
            "policy_decision",
            "spooled",
            "delivery_attempt",
            "deferred",
            "delivery_attempt",
            "bounced"
        ]
    );
    let dsn_sent = trail
        .kinds(&bounced)
        .iter()
        .filter(|k| **k == "dsn_sent")
        .count();
    assert_eq!(dsn_sent, 1, "{:?}", trail.kinds(&bounced));
    assert!(
        Trail::seq(trail.first(&bounced, "dsn_sent"))
            > Trail::seq(trail.first(&bounced, "deferred"))
    );
    assert_attempts_match(&trail, &bounced, "flaky@r2.test", &rx, &cert_sha);
    let codes: Vec<u16> = rx.rcpts_for("flaky@r2.test").iter().map(|r| r.1).collect();
    assert_eq!(codes, [451, 550]);
    assert!(trail.first(&bounced, "deferred")["next_attempt"].is_u64());
    let sent = trail.first(&bounced, "dsn_sent");
    assert_eq!(sent["to"], SENDER, "{sent}");
    let dsn_id = sent["dsn_id"].as_str().expect("dsn_id");
    let dsn_kinds = trail.kinds(dsn_id);
    assert!(
        dsn_kinds.ends_with(&["delivery_attempt", "delivered"]),
        "{dsn_kinds:?}"
    );
    assert_attempts_match(&trail, dsn_id, SENDER, &rx, &cert_sha);

    // (7) the reload, after everything above.
    let reloads = trail.all("config_reload");
    assert_eq!(reloads.len(), 1, "{reloads:?}");
    assert_eq!(reloads[0]["ok"], true);
    assert_eq!(Trail::seq(reloads[0]), before);

    // The export itself is the next record, naming the admin and the count.
    let again = cli(&gw, &["audit", "export", "--format", "jsonl"]);
    let last: Value = again
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .expect("last export line");
    assert_eq!(last["kind"], "export", "{last}");
    assert_eq!(Trail::seq(&last), before + 1);
    assert_eq!(last["admin"], admin.as_str(), "{last}");
    assert_eq!(last["records"].as_u64(), Some(before), "{last}");
}

/// `audit verify` through the daemon while clients keep appending: every walk must say
/// `ok` (the daemon holds appends for the walk, so a record written mid-walk is never
/// reported as truncation), and the count never goes back.
#[test]
fn audit_verify_is_ok_every_time_while_the_daemon_appends() {
    if !require_tool(PYTHON) {
        return;
    }
    let gw = Gateway::start(GwOpts::spool());
    const COUNT: usize = 300;
    let mut client = gw.load(COUNT as u32, 2048, 8, 120, &[]);
    let (mut counts, mut under_load) = (Vec::new(), 0);
    loop {
        counts.push(verify(&gw).0);
        if client.try_wait().expect("poll client").is_some() {
            break;
        }
        under_load += 1;
    }
    let (ok, other) = gw.finish_load(client);
    assert_eq!(ok.len(), COUNT, "{other:?}");
    assert!(
        under_load > 0,
        "no verify finished while the client was sending"
    );
    assert!(
        counts.windows(2).all(|w| w[0] <= w[1]),
        "record count went back: {counts:?}"
    );
    gw.wait_drained(Duration::from_secs(60));
    let (last, _) = verify(&gw);
    // At least received + policy + spooled + attempt + delivered per message.
    assert!(
        last >= 5 * COUNT as u64,
        "{last} records for {COUNT} messages"
    );
    assert!(counts.iter().all(|&c| c <= last), "{counts:?} > {last}");
    eprintln!(
        "audit verify: {} walks, {under_load} under load, all ok",
        counts.len()
    );
}
