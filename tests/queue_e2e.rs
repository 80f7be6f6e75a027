//! The queue end to end through the real `phigate serve` binary: Python's smtplib
//! submits, phigate delivers in `mx` mode over verified STARTTLS to receiving SMTP
//! servers started by the test (std threads + rustls), routed with
//! `[delivery.domains."D"] route`. Covers deferral and retry per schedule, per-recipient
//! bounces, DSNs through phigate's own queue (with no content in them), expiry,
//! NOTIFY=NEVER, null senders, a receiver without STARTTLS, crypto-shredding after
//! delivery and a restart between attempts.

mod common;

use common::{free_port, require_tool, Gateway, GwOpts, BIN, PYTHON};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------
// Receiving SMTP server

/// Decides the reply to `RCPT TO:<rcpt>` on the `n`th time (from 0) this address is seen.
type RcptRule = Arc<dyn Fn(&str, usize) -> String + Send + Sync>;

/// Decides the reply to the end of DATA on the `n`th message (from 0) this receiver saw.
type DataRule = Arc<dyn Fn(usize) -> String + Send + Sync>;

/// One message the receiver accepted.
#[derive(Clone)]
struct Received {
    from: String,
    rcpts: Vec<String>,
    /// DATA exactly as on the wire (dot-stuffed), without the final `.` line.
    wire: Vec<u8>,
    at: Instant,
}

impl Received {
    /// The message with dot-stuffing undone (RFC 5321 §4.5.2).
    fn content(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for line in self.wire.split_inclusive(|&b| b == b'\n') {
            out.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
        }
        out
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.content()).into_owned()
    }
}

#[derive(Default)]
struct RxLog {
    /// Commands read before TLS was established.
    plain_cmds: Vec<String>,
    /// Every RCPT: (address, reply code, when).
    rcpts: Vec<(String, u16, Instant)>,
    seen: HashMap<String, usize>,
    /// Messages that reached the end of DATA, accepted or not.
    data_ends: usize,
    messages: Vec<Received>,
}

struct Rx {
    port: u16,
    log: Arc<Mutex<RxLog>>,
}

impl Rx {
    /// Starts a receiver on loopback; `tls` None = it never offers STARTTLS.
    fn start(tls: Option<Arc<rustls::ServerConfig>>, rule: RcptRule) -> Rx {
        Rx::with_data_rule(tls, rule, Arc::new(|_| "250 2.0.0 Ok: stored".into()))
    }

    fn with_data_rule(
        tls: Option<Arc<rustls::ServerConfig>>,
        rule: RcptRule,
        data: DataRule,
    ) -> Rx {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind receiver");
        let port = listener.local_addr().expect("receiver addr").port();
        let log = Arc::new(Mutex::new(RxLog::default()));
        let log2 = log.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let rules = (rule.clone(), data.clone());
                let (tls, log) = (tls.clone(), log2.clone());
                std::thread::spawn(move || serve(stream, tls, rules, log));
            }
        });
        Rx { port, log }
    }

    /// Always `250`.
    fn accept_all(tls: Arc<rustls::ServerConfig>) -> Rx {
        Rx::start(Some(tls), Arc::new(|_, _| "250 2.1.5 Ok".into()))
    }

    fn messages(&self) -> Vec<Received> {
        self.lock().messages.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RxLog> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until at least `n` messages arrived (at most `timeout`).
    fn wait_messages(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let m = self.messages();
            if m.len() >= n || Instant::now() > deadline {
                return m;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

enum Next {
    Done,
    StartTls,
}

fn serve(
    stream: TcpStream,
    tls: Option<Arc<rustls::ServerConfig>>,
    rules: (RcptRule, DataRule),
    log: Arc<Mutex<RxLog>>,
) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut r = BufReader::new(stream);
    if r.get_mut().write_all(b"220 rx.test ESMTP\r\n").is_err() {
        return;
    }
    match converse(&mut r, tls.is_some(), false, &rules, &log) {
        Next::Done => {}
        Next::StartTls => {
            let Some(cfg) = tls else { return };
            let Ok(conn) = rustls::ServerConnection::new(cfg) else {
                return;
            };
            let mut r = BufReader::new(rustls::StreamOwned::new(conn, r.into_inner()));
            converse(&mut r, false, true, &rules, &log);
        }
    }
}

fn converse<S: Read + Write>(
    r: &mut BufReader<S>,
    offer_tls: bool,
    in_tls: bool,
    (rule, data_rule): &(RcptRule, DataRule),
    log: &Arc<Mutex<RxLog>>,
) -> Next {
    let lock = || log.lock().unwrap_or_else(|p| p.into_inner());
    let (mut from, mut rcpts) = (None::<String>, Vec::<String>::new());
    loop {
        let mut line = String::new();
        match r.read_line(&mut line) {
            Ok(0) | Err(_) => return Next::Done,
            Ok(_) => {}
        }
        let line = line.trim_end().to_string();
        if !in_tls {
            lock().plain_cmds.push(line.clone());
        }
        let upper = line.to_ascii_uppercase();
        let reply = if upper.starts_with("EHLO") {
            let starttls = if offer_tls { "250-STARTTLS\r\n" } else { "" };
            format!("250-rx.test\r\n250-PIPELINING\r\n{starttls}250 8BITMIME")
        } else if upper == "STARTTLS" && offer_tls {
            if r.get_mut().write_all(b"220 2.0.0 go ahead\r\n").is_err() {
                return Next::Done;
            }
            return Next::StartTls;
        } else if upper.starts_with("MAIL FROM:") {
            from = Some(angle(&line));
            rcpts.clear();
            "250 2.1.0 Ok".into()
        } else if upper.starts_with("RCPT TO:") {
            let addr = angle(&line);
            let mut l = lock();
            let n = *l.seen.get(&addr).unwrap_or(&0);
            l.seen.insert(addr.clone(), n + 1);
            let reply = rule(&addr, n);
            let code = reply.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
            l.rcpts.push((addr.clone(), code, Instant::now()));
            if code == 250 {
                rcpts.push(addr);
            }
            reply
        } else if upper == "DATA" {
            if from.is_none() || rcpts.is_empty() {
                "554 5.5.1 no valid recipients".into()
            } else {
                if r.get_mut().write_all(b"354 go ahead\r\n").is_err() {
                    return Next::Done;
                }
                let mut wire = Vec::new();
                loop {
                    let mut raw = Vec::new();
                    match r.read_until(b'\n', &mut raw) {
                        Ok(0) | Err(_) => return Next::Done,
                        Ok(_) => {}
                    }
                    if raw == b".\r\n" {
                        break;
                    }
                    wire.extend_from_slice(&raw);
                }
                let mut l = lock();
                let reply = data_rule(l.data_ends);
                l.data_ends += 1;
                let msg = Received {
                    from: from.take().unwrap_or_default(),
                    rcpts: std::mem::take(&mut rcpts),
                    wire,
                    at: Instant::now(),
                };
                if reply.starts_with("250") {
                    l.messages.push(msg);
                }
                reply
            }
        } else if upper == "RSET" {
            from = None;
            rcpts.clear();
            "250 2.0.0 Ok".into()
        } else if upper == "QUIT" {
            let _ = r.get_mut().write_all(b"221 2.0.0 bye\r\n");
            return Next::Done;
        } else {
            "502 5.5.2 not implemented".into()
        };
        if r.get_mut()
            .write_all(format!("{reply}\r\n").as_bytes())
            .is_err()
        {
            return Next::Done;
        }
    }
}

/// The address between `<` and `>`.
fn angle(line: &str) -> String {
    let start = line.find('<').map_or(0, |i| i + 1);
    let end = line[start..].find('>').map_or(line.len(), |i| start + i);
    line[start..end].to_string()
}

/// A test CA (written to `dir/rx-ca.pem`) and a receiver certificate for 127.0.0.1.
fn receiver_tls(dir: &Path) -> (PathBuf, Arc<rustls::ServerConfig>) {
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().expect("ca key");
    let ca = p.self_signed(&ca_key).expect("ca cert");
    let ca_path = dir.join("rx-ca.pem");
    std::fs::write(&ca_path, ca.pem()).expect("write receiver CA");
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string()]).expect("leaf params");
    let key = KeyPair::generate().expect("leaf key");
    let cert = leaf.signed_by(&key, &ca, &ca_key).expect("sign leaf");
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
    (ca_path, Arc::new(cfg))
}

// ---------------------------------------------------------------------------------
// Gateway under test

/// A running phigate with its control socket, in `mx` mode with `routes`.
struct Gw {
    gw: Gateway,
    dir: tempfile::TempDir,
}

/// Queue timing used unless a test says otherwise.
const QUEUE: &str = "retry = [\"1s\", \"2s\"]\nexpire = \"6s\"";

impl Gw {
    /// `routes`: (domain, receiver port). `queue`: the `[queue]` body.
    fn start(dir: tempfile::TempDir, ca: &Path, routes: &[(&str, u16)], queue: &str) -> Gw {
        let mut delivery = format!(
            "mode = \"mx\"\ntls_level = \"verify\"\nextra_ca_file = \"{}\"\n\
             connect_timeout = \"5s\"\ncommand_timeout = \"10s\"\n",
            ca.display()
        );
        for (domain, port) in routes {
            delivery += &format!("[delivery.domains.\"{domain}\"]\nroute = \"127.0.0.1:{port}\"\n");
        }
        let server_extra = format!(
            "control_socket = \"{}\"\n\n[queue]\n{queue}\n\n[retention]\ncontent_after_delivery = \"0s\"\n",
            dir.path().join("control.sock").display()
        );
        let gw = Gateway::start(GwOpts {
            delivery: Some(delivery),
            server_extra,
            ..GwOpts::default()
        });
        Gw { gw, dir }
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("--config")
            .arg(&self.gw.config)
            .args(args)
            .output()
            .expect("run phigate CLI")
    }

    fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "phigate {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.gw.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn show(&self, id: &str) -> Value {
        serde_json::from_str(&self.cli_ok(&["queue", "show", id, "--json"])).expect("show JSON")
    }

    /// Polls `queue show ID` until `pred` holds; panics with the last view after `timeout`.
    fn wait_show(&self, id: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.show(id);
            if pred(&v) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "condition not reached for {id}: {v:#}\n{}",
                self.gw.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Submits `eml` with Python's smtplib over implicit TLS; returns the queue ID.
    fn submit(&self, from: &str, to: &[&str], rcpt_options: &[&str], eml: &str) -> String {
        let msg = self.dir.path().join(format!("msg-{}.eml", free_port()));
        std::fs::write(&msg, eml).expect("write eml");
        let spec = json!({
            "port": self.gw.port("smtps"),
            "mode": "implicit",
            "cafile": self.gw.pki.ca,
            "servername": "localhost",
            "from": from,
            "to": to,
            "rcpt_options": rcpt_options,
            "msg_file": msg,
        });
        let out = Command::new(PYTHON)
            .arg(common::peers_dir().join("smtplib_send.py"))
            .arg(spec.to_string())
            .output()
            .expect("run smtplib peer");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
            panic!(
                "smtplib peer: {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        assert_eq!(v["data"][0], 250, "submission refused: {v}");
        v["data"][1]
            .as_str()
            .and_then(|t| t.split("queued as ").nth(1))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|| panic!("no queue ID in {v}"))
    }
}

/// `recipients[i].status.state` of a `queue show --json` view.
fn state(v: &Value, i: usize) -> &str {
    v["recipients"][i]["status"]["state"]
        .as_str()
        .or_else(|| v["summary"]["recipients"][i]["state"].as_str())
        .unwrap_or("")
}

fn attempts(v: &Value, i: usize) -> u64 {
    v["summary"]["recipients"][i]["attempts"]
        .as_u64()
        .unwrap_or(0)
}

fn message(subject: &str, body: &str) -> String {
    format!(
        "From: ehr@s.test\r\nTo: someone@r.test\r\nSubject: {subject}\r\n\
         Message-ID: <{}@ehr.test>\r\n\r\n{body}\r\n",
        free_port()
    )
}

fn canary(tag: &str) -> String {
    format!("{tag}{}", hex::encode(rand::random::<[u8; 8]>()))
}

/// Checks a DSN as received: RFC 3464 shape, addressed to `to` from the null sender.
fn assert_dsn_shape(dsn: &Received, to: &str) {
    let text = dsn.text();
    assert_eq!(dsn.from, "", "DSNs go out with the null sender");
    assert_eq!(dsn.rcpts, vec![to.to_string()]);
    assert!(common::crlf_only(&dsn.wire), "DSN not CRLF-only");
    assert!(text.contains("multipart/report"), "{text}");
    assert!(
        text.contains("report-type=\"delivery-status\"")
            || text.contains("report-type=delivery-status"),
        "{text}"
    );
    assert!(text.contains("message/delivery-status"), "{text}");
    assert!(text.contains("Auto-Submitted: auto-replied"), "{text}");

    // The same shape as Python's `email` package reads it (not only mail-parser, which
    // phigate itself uses to build and parse mail).
    let mut child = Command::new(PYTHON)
        .arg(common::peers_dir().join("dsn_parse.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run dsn_parse.py");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(&dsn.content())
        .expect("write DSN");
    let out = child.wait_with_output().expect("dsn_parse.py output");
    assert!(
        out.status.success(),
        "Python's email package rejects the DSN: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let p: Value = serde_json::from_slice(&out.stdout).expect("dsn_parse JSON");
    assert_eq!(p["type"], "multipart/report", "{p}");
    assert_eq!(p["report_type"], "delivery-status", "{p}");
    assert_eq!(p["auto_submitted"], "auto-replied", "{p}");
    assert_eq!(p["date_parses"], true, "{p}");
    let parts: Vec<&str> = p["parts"]
        .as_array()
        .expect("parts")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        parts.len() >= 2 && parts[0] == "text/plain" && parts[1] == "message/delivery-status",
        "{p}"
    );
    assert!(
        parts[2..]
            .iter()
            .all(|t| *t == "message/rfc822" || *t == "text/rfc822-headers"),
        "{p}"
    );
    assert!(
        p["per_message"]["reporting-mta"]
            .as_str()
            .is_some_and(|m| m.starts_with("dns;")),
        "{p}"
    );
    let rcpts = p["recipients"].as_array().expect("recipients");
    assert!(!rcpts.is_empty(), "no per-recipient block: {p}");
    for r in rcpts {
        assert!(
            r["final-recipient"]
                .as_str()
                .is_some_and(|f| f.starts_with("rfc822;")),
            "{r}"
        );
        assert!(
            matches!(r["action"].as_str(), Some("failed" | "delayed")),
            "{r}"
        );
        let status = r["status"].as_str().unwrap_or("");
        let st: Vec<&str> = status.split('.').collect();
        assert!(
            st.len() == 3
                && matches!(st[0], "4" | "5")
                && st[1..]
                    .iter()
                    .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())),
            "status {status:?} is not an RFC 3463 code: {r}"
        );
    }
}

/// Is `needle` in the DSN: raw, with quoted-printable soft breaks removed, or in any
/// decoded MIME part?
fn dsn_contains(dsn: &Received, needle: &str) -> bool {
    let raw = dsn.text();
    if raw.replace("=\r\n", "").contains(needle) {
        return true;
    }
    let content = dsn.content();
    let parsed = mail_parser::MessageParser::default()
        .parse(&content)
        .expect("DSN parses as MIME");
    assert!(parsed.parts.len() >= 3, "DSN is not multipart: {raw}");
    parsed
        .parts
        .iter()
        .any(|p| String::from_utf8_lossy(p.contents()).contains(needle))
}

fn setup() -> Option<(tempfile::TempDir, PathBuf, Arc<rustls::ServerConfig>)> {
    if !require_tool(PYTHON) {
        return None;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca, tls) = receiver_tls(dir.path());
    Some((dir, ca, tls))
}

// ---------------------------------------------------------------------------------
// Cases

/// Case 1 + 6: 451 twice, then 250. Deferred with the reason and attempt count, retried
/// per schedule, delivered once with CRLF and dot-stuffing intact; then the content is
/// shredded while the metadata stays.
#[test]
fn deferred_twice_then_delivered_once_and_shredded() {
    let Some((dir, ca, tls)) = setup() else {
        return;
    };
    let rx = Rx::start(
        Some(tls),
        Arc::new(|_, n| {
            if n < 2 {
                "451 4.2.0 mailbox busy, try later".into()
            } else {
                "250 2.1.5 Ok".into()
            }
        }),
    );
    let gw = Gw::start(dir, &ca, &[("r1.test", rx.port)], QUEUE);
    let body = "Line one\r\n.hidden line starts with a dot\r\n..two dots\r\n.\r\nlast line";
    let eml = message("results", body);
    let id = gw.submit("ehr@s.test", &["pat@r1.test"], &[], &eml);

    // First attempt fails: deferred, with the 4xx reason and one attempt recorded.
    let v = gw.wait_show(&id, Duration::from_secs(10), |v| {
        state(v, 0) == "deferred" && attempts(v, 0) >= 1
    });
    let reason = v["recipients"][0]["status"]["reason"]
        .as_str()
        .unwrap_or("");
    assert!(
        reason.contains("451") && reason.contains("4.2.0"),
        "deferral reason: {v:#}"
    );
    assert!(v["recipients"][0]["last_error"]
        .as_str()
        .is_some_and(|e| e.contains("451")));
    let listed = gw.cli_ok(&["queue", "list", "--state", "deferred", "--json"]);
    assert!(listed.contains(&id), "{listed}");
    let human = gw.cli_ok(&["queue", "show", &id]);
    assert!(
        human.contains("deferred") && human.contains("last error: 451"),
        "{human}"
    );

    let got = rx.wait_messages(1, Duration::from_secs(15));
    assert_eq!(got.len(), 1, "not delivered:\n{}", gw.gw.log());
    let v = gw.wait_show(&id, Duration::from_secs(5), |v| {
        v["summary"]["shredded_at"].is_u64()
    });
    assert_eq!(state(&v, 0), "delivered", "{v:#}");
    assert_eq!(attempts(&v, 0), 3, "{v:#}");

    // Retried per schedule (1 s, then 2 s; the scheduler's clock has whole seconds, so allow
    // 1 s of slack). Only "not too early" is a property; how late a slow machine gets
    // there is not (speed belongs in benches).
    let times: Vec<Instant> = rx.lock().rcpts.iter().map(|r| r.2).collect();
    let codes: Vec<u16> = rx.lock().rcpts.iter().map(|r| r.1).collect();
    assert_eq!(codes, vec![451, 451, 250]);
    let second_gap = times[2] - times[1];
    let total = times[2] - times[0];
    assert!(
        second_gap >= Duration::from_millis(900) && total >= Duration::from_millis(1900),
        "retries too early: {:?} {:?}",
        times[1] - times[0],
        second_gap
    );

    // One copy, CRLF only, dot-stuffed on the wire and intact after unstuffing.
    let m = &got[0];
    assert_eq!(m.from, "ehr@s.test");
    assert_eq!(m.rcpts, vec!["pat@r1.test".to_string()]);
    assert!(common::crlf_only(&m.wire), "bare CR/LF on the wire");
    let wire = String::from_utf8_lossy(&m.wire);
    assert!(
        wire.contains("\r\n..hidden line") && wire.contains("\r\n...two dots\r\n"),
        "not dot-stuffed: {wire}"
    );
    let content = m.content();
    assert!(content.starts_with(b"Received: "), "{}", m.text());
    assert!(
        content.ends_with(eml.as_bytes()),
        "content changed in transit:\n{}",
        m.text()
    );
    assert!(m.text().contains("\r\n.\r\nlast line"));
    // The message is final (delivered and shredded, above): no attempt can follow.
    assert_eq!(rx.messages().len(), 1, "delivered more than once");

    // Case 6: content is crypto-shredded, metadata is kept.
    let out = gw.cli(&["queue", "show", &id, "--body"]);
    assert!(!out.status.success(), "body still readable after delivery");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("shredded"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta = gw.cli_ok(&["queue", "show", &id]);
    assert!(
        meta.contains(&id) && meta.contains("delivered") && meta.contains("attempts 3"),
        "{meta}"
    );
    assert!(meta.contains("shredded"), "{meta}");
    assert!(!meta.contains("hidden line"), "{meta}");
}

/// Case 2: one recipient 550 5.1.1, the other 250. Bounce at once, DSN via phigate's own
/// queue to the sender, with no subject or body text in it.
#[test]
fn permanent_failure_bounces_one_recipient_and_dsn_has_no_content() {
    let Some((dir, ca, tls)) = setup() else {
        return;
    };
    let rx = Rx::start(
        Some(tls.clone()),
        Arc::new(|rcpt, n| {
            if rcpt.starts_with("gone@") {
                "550 5.1.1 no such user".into()
            } else if rcpt.starts_with("later@") && n == 0 {
                "451 4.2.0 try later".into()
            } else {
                "250 2.1.5 Ok".into()
            }
        }),
    );
    let sender_rx = Rx::accept_all(tls);
    let gw = Gw::start(
        dir,
        &ca,
        &[("r2.test", rx.port), ("s.test", sender_rx.port)],
        QUEUE,
    );
    let (subj, body) = (canary("SubjCanary"), canary("BodyCanary"));
    let eml = message(&format!("lab {subj}"), &format!("Patient note {body}"));
    let rcpts = ["gone@r2.test", "pat@r2.test", "later@r2.test"];
    let id = gw.submit("ehr@s.test", &rcpts, &[], &eml);

    // First transaction: pat accepted, gone refused, later deferred. The retry carries
    // only `later`: the delivered recipient must not get a second copy.
    let got = rx.wait_messages(2, Duration::from_secs(10));
    assert_eq!(got.len(), 2, "{}", gw.gw.log());
    assert_eq!(got[0].rcpts, vec!["pat@r2.test".to_string()]);
    assert_eq!(got[1].rcpts, vec!["later@r2.test".to_string()]);
    let v = gw.wait_show(&id, Duration::from_secs(5), |v| {
        state(v, 0) == "bounced" && state(v, 1) == "delivered" && state(v, 2) == "delivered"
    });
    assert_eq!(attempts(&v, 0), 1, "a 5xx must not be retried: {v:#}");
    assert_eq!(attempts(&v, 1), 1, "{v:#}");
    assert_eq!(attempts(&v, 2), 2, "{v:#}");

    let dsns = sender_rx.wait_messages(1, Duration::from_secs(10));
    assert_eq!(dsns.len(), 1, "no DSN delivered:\n{}", gw.gw.log());
    let dsn = &dsns[0];
    assert_dsn_shape(dsn, "ehr@s.test");
    let text = dsn.text();
    assert!(text.contains(&id), "DSN lacks the queue ID: {text}");
    assert!(
        text.contains("Final-Recipient: rfc822; gone@r2.test"),
        "{text}"
    );
    assert!(text.contains("Action: failed"), "{text}");
    assert!(text.contains("Status: 5.1.1"), "{text}");
    assert!(text.contains("no such user"), "diagnostic missing: {text}");
    assert!(
        !text.contains("Final-Recipient: rfc822; pat@r2.test"),
        "delivered recipient reported without NOTIFY=SUCCESS: {text}"
    );
    assert!(
        !text.contains("later@r2.test"),
        "deferred-then-delivered recipient reported: {text}"
    );
    for c in [subj.as_str(), body.as_str(), "Patient note", "Subject: lab"] {
        assert!(!dsn_contains(dsn, c), "DSN carries `{c}`: {text}");
    }
    // Positive control for the search: the human-readable (quoted-printable) part
    // names the queue ID across a soft line break.
    assert!(dsn_contains(dsn, &format!("phigate ID {id} could not")));
    // The remote only ever saw the good copy; the bounce was not retried. Once nothing is
    // pending (the message and its DSN are final) no attempt or DSN can follow.
    gw.gw.wait_drained(Duration::from_secs(30));
    let gone_tries = rx
        .lock()
        .rcpts
        .iter()
        .filter(|r| r.0 == "gone@r2.test")
        .count();
    assert_eq!(gone_tries, 1);
    assert_eq!(sender_rx.messages().len(), 1, "more than one DSN");
}

/// A gateway routing `domain` to a receiver that answers every RCPT with 451, and
/// `s.test` (the sender's domain, where DSNs go) to one that accepts everything.
fn always_451(domain: &str, queue: &str) -> Option<(Gw, Rx, Rx)> {
    let (dir, ca, tls) = setup()?;
    let rx = Rx::start(
        Some(tls.clone()),
        Arc::new(|_, _| "451 4.3.2 system not accepting messages".into()),
    );
    let sender_rx = Rx::accept_all(tls);
    let gw = Gw::start(
        dir,
        &ca,
        &[(domain, rx.port), ("s.test", sender_rx.port)],
        queue,
    );
    Some((gw, rx, sender_rx))
}

/// Case 3: always 451. After `expire` both recipients are expired; the default-NOTIFY
/// one gets a 4.4.7 DSN, the NOTIFY=NEVER one gets none.
#[test]
fn always_deferred_expires_with_dsn_unless_notify_never() {
    let Some((gw, _rx, sender_rx)) = always_451("r3.test", QUEUE) else {
        return;
    };
    let a = gw.submit("ehr@s.test", &["a@r3.test"], &[], &message("a", "one"));
    let b = gw.submit(
        "ehr@s.test",
        &["b@r3.test"],
        &["NOTIFY=NEVER"],
        &message("b", "two"),
    );
    let started = Instant::now();
    let v = gw.wait_show(&a, Duration::from_secs(10), |v| state(v, 0) == "deferred");
    assert!(
        v["recipients"][0]["status"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("451 4.3.2")),
        "{v:#}"
    );
    let va = gw.wait_show(&a, Duration::from_secs(15), |v| state(v, 0) == "expired");
    let vb = gw.wait_show(&b, Duration::from_secs(5), |v| state(v, 0) == "expired");
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "expired before `expire`: {:?}",
        started.elapsed()
    );
    for v in [&va, &vb] {
        assert!(
            attempts(v, 0) >= 3,
            "retried fewer times than scheduled: {v:#}"
        );
    }
    // Final: the per-recipient details went with the content; the summary stays.
    assert!(va["summary"]["shredded_at"].is_u64(), "{va:#}");

    let dsns = sender_rx.wait_messages(1, Duration::from_secs(10));
    assert_eq!(
        dsns.len(),
        1,
        "no DSN for the expired message:\n{}",
        gw.gw.log()
    );
    let text = dsns[0].text();
    assert_dsn_shape(&dsns[0], "ehr@s.test");
    assert!(text.contains(&a), "{text}");
    assert!(
        text.contains("Final-Recipient: rfc822; a@r3.test"),
        "{text}"
    );
    assert!(text.contains("Action: failed"), "{text}");
    assert!(text.contains("Status: 4.4.7"), "{text}");
    // NOTIFY=NEVER: nothing about b, now or later. A DSN for b would have been queued
    // with its expiry (above); once nothing is pending, every DSN has been delivered.
    gw.gw.wait_drained(Duration::from_secs(30));
    let all = sender_rx.messages();
    assert_eq!(all.len(), 1, "a DSN was sent despite NOTIFY=NEVER");
    assert!(!all[0].text().contains(&b));
    assert!(!all[0].text().contains("b@r3.test"));
}

/// NOTIFY=DELAY (and no NOTIFY, RFC 3461's default) gets one "delayed" DSN once a
/// message has waited `delay_warning`, with Will-Retry-Until, however many retries follow;
/// NOTIFY=FAILURE gets none. The final "failed" DSN still comes at expiry.
#[test]
fn delay_warning_sends_one_delayed_dsn_unless_notify_excludes_delay() {
    let queue = "retry = [\"1s\"]\nexpire = \"9s\"\ndelay_warning = \"2s\"";
    let Some((gw, _rx, sender_rx)) = always_451("r5.test", queue) else {
        return;
    };
    let a = gw.submit("ehr@s.test", &["a@r5.test"], &[], &message("a", "one"));
    let b = gw.submit(
        "ehr@s.test",
        &["b@r5.test"],
        &["NOTIFY=FAILURE"],
        &message("b", "two"),
    );
    let delayed = sender_rx.wait_messages(1, Duration::from_secs(10));
    assert_eq!(delayed.len(), 1, "no delayed DSN:\n{}", gw.gw.log());
    let text = delayed[0].text();
    assert_dsn_shape(&delayed[0], "ehr@s.test");
    assert!(text.contains(&a), "{text}");
    assert!(
        text.contains("Subject: Delayed Mail (still being retried)"),
        "{text}"
    );
    assert!(text.contains("Action: delayed"), "{text}");
    assert!(text.contains("Status: 4.3.2"), "{text}");
    assert!(text.contains("Will-Retry-Until: "), "{text}");
    assert!(
        !text.contains("b@r5.test"),
        "NOTIFY=FAILURE got a delay notice: {text}"
    );
    // Still retried after the notice, and no second notice.
    let v = gw.wait_show(&a, Duration::from_secs(15), |v| state(v, 0) == "expired");
    assert!(attempts(&v, 0) >= 4, "{v:#}");
    gw.wait_show(&b, Duration::from_secs(5), |v| state(v, 0) == "expired");
    let all = sender_rx.wait_messages(3, Duration::from_secs(10));
    let kinds: Vec<(bool, bool)> = all
        .iter()
        .map(|m| {
            let t = m.text();
            (t.contains("Action: delayed"), t.contains("Action: failed"))
        })
        .collect();
    assert_eq!(
        kinds.iter().filter(|k| k.0).count(),
        1,
        "delayed DSNs: {kinds:?}"
    );
    assert_eq!(
        kinds.iter().filter(|k| k.1).count(),
        2,
        "failed DSNs (a and b): {kinds:?}"
    );
}

/// Case 4: a bounce of a null-sender message generates no DSN (no bounce loops).
#[test]
fn null_sender_bounce_generates_no_dsn() {
    let Some((dir, ca, tls)) = setup() else {
        return;
    };
    let rx = Rx::start(
        Some(tls.clone()),
        Arc::new(|_, _| "550 5.1.1 no such user".into()),
    );
    let sender_rx = Rx::accept_all(tls);
    let gw = Gw::start(
        dir,
        &ca,
        &[("r4.test", rx.port), ("s.test", sender_rx.port)],
        QUEUE,
    );
    let id = gw.submit("", &["gone@r4.test"], &[], &message("bounce", "x"));
    gw.wait_show(&id, Duration::from_secs(10), |v| state(v, 0) == "bounced");
    // Positive control: the same bounce with a sender does produce a DSN, so the
    // absence below is not just slowness.
    let control = gw.submit("ehr@s.test", &["gone@r4.test"], &[], &message("c", "y"));
    gw.wait_show(&control, Duration::from_secs(10), |v| {
        state(v, 0) == "bounced"
    });
    let dsns = sender_rx.wait_messages(1, Duration::from_secs(10));
    // Both bounces are final and any DSN is queued with its bounce; once nothing is
    // pending every DSN has been delivered, so a missing one is missing, not slow.
    gw.gw.wait_drained(Duration::from_secs(30));
    let dsns_after = sender_rx.messages();
    assert_eq!(dsns.len(), 1, "control DSN missing:\n{}", gw.gw.log());
    assert_eq!(
        dsns_after.len(),
        1,
        "a DSN was generated for the null sender"
    );
    assert!(dsns_after[0].text().contains(&control));
    assert!(!dsns_after[0].text().contains(&id));
    // Nothing else was queued: the two messages and the control's DSN.
    let list: Value =
        serde_json::from_str(&gw.cli_ok(&["queue", "list", "--json"])).expect("list JSON");
    assert_eq!(list.as_array().map(Vec::len), Some(3), "{list:#}");
}

/// Case 5: the receiver never offers STARTTLS. Deferred with 4.7.x, never a MAIL FROM
/// in plaintext, expired and bounced at the end.
#[test]
fn no_starttls_defers_never_plaintext_then_expires() {
    let Some((dir, ca, tls)) = setup() else {
        return;
    };
    let plain = Rx::start(None, Arc::new(|_, _| "250 2.1.5 Ok".into()));
    let sender_rx = Rx::accept_all(tls);
    let gw = Gw::start(
        dir,
        &ca,
        &[("r5.test", plain.port), ("s.test", sender_rx.port)],
        QUEUE,
    );
    let id = gw.submit("ehr@s.test", &["pat@r5.test"], &[], &message("p", "z"));
    let v = gw.wait_show(&id, Duration::from_secs(10), |v| {
        state(v, 0) == "deferred" && attempts(v, 0) >= 1
    });
    let reason = v["recipients"][0]["status"]["reason"]
        .as_str()
        .unwrap_or("");
    assert!(reason.contains(" 4.7."), "not a 4.7.x deferral: {reason}");
    assert!(reason.to_ascii_lowercase().contains("starttls"), "{reason}");

    let v = gw.wait_show(&id, Duration::from_secs(15), |v| state(v, 0) == "expired");
    assert!(attempts(&v, 0) >= 3, "{v:#}");
    let cmds = plain.lock().plain_cmds.clone();
    assert!(
        cmds.iter().filter(|c| c.starts_with("EHLO")).count() >= 3,
        "phigate did not connect on every attempt: {cmds:?}"
    );
    for c in &cmds {
        let u = c.to_ascii_uppercase();
        assert!(
            !(u.starts_with("MAIL") || u.starts_with("RCPT") || u.starts_with("DATA")),
            "sent in plaintext: {cmds:?}"
        );
    }
    assert!(plain.messages().is_empty());

    let dsns = sender_rx.wait_messages(1, Duration::from_secs(10));
    assert_eq!(dsns.len(), 1, "no DSN after expiry:\n{}", gw.gw.log());
    let text = dsns[0].text();
    assert!(
        text.contains("Status: 4.4.7") && text.contains(&id),
        "{text}"
    );
    assert!(
        text.contains("Final-Recipient: rfc822; pat@r5.test"),
        "{text}"
    );
}

/// Case 7: phigate stops between attempts; after the restart the deferred message is
/// picked up again and delivered exactly once.
#[test]
fn restart_between_attempts_still_delivers() {
    let Some((dir, ca, tls)) = setup() else {
        return;
    };
    // This time the first attempt fails at the end of DATA, not at RCPT.
    let rx = Rx::with_data_rule(
        Some(tls),
        Arc::new(|_, _| "250 2.1.5 Ok".into()),
        Arc::new(|n| {
            if n == 0 {
                "451 4.3.0 queue file write error".into()
            } else {
                "250 2.0.0 Ok: stored".into()
            }
        }),
    );
    let mut gw = Gw::start(
        dir,
        &ca,
        &[("r7.test", rx.port)],
        "retry = [\"4s\"]\nexpire = \"60s\"",
    );
    let id = gw.submit("ehr@s.test", &["pat@r7.test"], &[], &message("r", "w"));
    let v = gw.wait_show(&id, Duration::from_secs(10), |v| {
        state(v, 0) == "deferred" && attempts(v, 0) == 1
    });
    assert!(
        v["recipients"][0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("451 4.3.0")),
        "{v:#}"
    );
    gw.gw.stop();
    assert!(rx.messages().is_empty());
    assert_eq!(rx.lock().data_ends, 1);
    let restarted = Instant::now();
    gw.gw.restart("info");
    let got = rx.wait_messages(1, Duration::from_secs(15));
    assert_eq!(
        got.len(),
        1,
        "not delivered after restart:\n{}",
        gw.gw.log()
    );
    assert!(got[0].at > restarted);
    let v = gw.wait_show(&id, Duration::from_secs(5), |v| state(v, 0) == "delivered");
    assert_eq!(attempts(&v, 0), 2, "{v:#}");
    assert_eq!(rx.lock().data_ends, 2);
    // Delivered is final: no attempt can follow.
    assert_eq!(rx.messages().len(), 1, "delivered more than once");
}
