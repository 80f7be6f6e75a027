//! Deliverer against in-test SMTP servers (tokio + rustls) on loopback, with the static
//! resolver: hostile servers, certificate checks, MX fallback, null MX, REQUIRETLS,
//! smarthost AUTH, DANE-EE, MTA-STS.

mod common;

use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use common::deliver;
use phigate::config::{DeliveryConfig, DeliveryMode, SmarthostConfig};
use phigate::delivery::observe::{TlsAttempt, TlsObserver, REPORT_LISTENER};
use phigate::delivery::sts::MemoryStsCache;
use phigate::delivery::{AttemptResult, Deliverer, RcptOutcome};
use phigate::dns::{DnssecStatus, StaticResolver};
use phigate::tls::dane::Tlsa;
use phigate::tls::rpt::{PolicyType, ResultType};
use phigate::types::TlsLevel;
use phigate::types::{Envelope, MailParams, Recipient};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

#[derive(Clone, Copy, PartialEq)]
enum Behaviour {
    Normal,
    NoStarttls,
    Refuse454,
    Inject,
}

#[derive(Clone)]
struct ServerOpts {
    behaviour: Behaviour,
    requiretls: bool,
    auth: Option<(&'static str, &'static str)>,
    /// Close the connection (without a word) after answering the RSET that follows this
    /// many transactions: a server dropping an idle kept session.
    close_idle_after: Option<usize>,
}

impl Default for ServerOpts {
    fn default() -> Self {
        ServerOpts {
            behaviour: Behaviour::Normal,
            requiretls: false,
            auth: None,
            close_idle_after: None,
        }
    }
}

/// What the test server saw.
#[derive(Default)]
struct Log {
    plaintext_cmds: Vec<String>,
    tls_cmds: Vec<String>,
    data: Vec<Vec<u8>>,
    /// TCP connections accepted.
    connections: usize,
    /// Sessions closed by `close_idle_after` (counted once the close has gone out).
    idle_closed: usize,
}

struct Pki {
    ca_pem: String,
    ca: rcgen::Certificate,
    ca_key: KeyPair,
}

fn pki() -> Pki {
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let key = KeyPair::generate().expect("key");
    let ca = p.self_signed(&key).expect("ca");
    Pki {
        ca_pem: ca.pem(),
        ca,
        ca_key: key,
    }
}

/// Returns (chain, key, leaf DER).
fn leaf(
    pki: Option<&Pki>,
    name: &str,
    expired: bool,
) -> (
    Vec<CertificateDer<'static>>,
    PrivateKeyDer<'static>,
    Vec<u8>,
) {
    let mut p = CertificateParams::new(vec![name.to_string()]).expect("params");
    if expired {
        p.not_before = rcgen::date_time_ymd(2000, 1, 1);
        p.not_after = rcgen::date_time_ymd(2001, 1, 1);
    }
    let key = KeyPair::generate().expect("key");
    let cert = match pki {
        Some(ca) => p.signed_by(&key, &ca.ca, &ca.ca_key).expect("sign"),
        None => p.self_signed(&key).expect("self-sign"),
    };
    let der = cert.der().to_vec();
    (
        vec![cert.der().clone()],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        der,
    )
}

fn spki_sha256(cert_der: &[u8]) -> Vec<u8> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).expect("parse");
    Sha256::digest(cert.tbs_certificate.subject_pki.raw).to_vec()
}

fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Arc<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server cert"),
    )
}

async fn read_line<R: AsyncRead + Unpin>(r: &mut BufReader<R>) -> Option<String> {
    let mut line = String::new();
    match r.read_line(&mut line).await {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(line.trim_end().to_string()),
    }
}

async fn tls_phase<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    opts: &ServerOpts,
    log: &Arc<Mutex<Log>>,
) {
    let mut r = BufReader::new(stream);
    let mut in_data = false;
    let mut body = Vec::new();
    let mut transactions = 0;
    loop {
        let mut raw = Vec::new();
        match r.read_until(b'\n', &mut raw).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if in_data {
            if raw == b".\r\n" {
                in_data = false;
                log.lock()
                    .expect("log")
                    .data
                    .push(std::mem::take(&mut body));
                transactions += 1;
                let _ = r.get_mut().write_all(b"250 2.0.0 queued\r\n").await;
            } else {
                body.extend_from_slice(&raw);
            }
            continue;
        }
        let line = String::from_utf8_lossy(&raw).trim_end().to_string();
        log.lock().expect("log").tls_cmds.push(line.clone());
        let upper = line.to_ascii_uppercase();
        let reply: String = if upper.starts_with("EHLO") {
            let mut caps =
                String::from("250-mx.test\r\n250-PIPELINING\r\n250-DSN\r\n250-SIZE 1000000\r\n");
            if opts.requiretls {
                caps.push_str("250-REQUIRETLS\r\n");
            }
            if opts.auth.is_some() {
                caps.push_str("250-AUTH PLAIN\r\n");
            }
            caps.push_str("250 8BITMIME\r\n");
            caps
        } else if let Some(tok) = upper.strip_prefix("AUTH PLAIN ") {
            use base64::Engine;
            let want = opts
                .auth
                .map(|(u, p)| format!("\0{u}\0{p}"))
                .unwrap_or_default();
            let got = base64::engine::general_purpose::STANDARD
                .decode(line[11..].trim())
                .unwrap_or_default();
            let _ = tok;
            if got == want.as_bytes() {
                "235 2.7.0 ok\r\n".into()
            } else {
                "535 5.7.8 bad\r\n".into()
            }
        } else if upper.starts_with("MAIL") {
            "250 2.1.0 ok\r\n".into()
        } else if upper.starts_with("RCPT") {
            if upper.contains("REJECT") {
                "550 5.1.1 unknown user\r\n".into()
            } else if upper.contains("LATER") {
                "450 4.2.1 try later\r\n".into()
            } else {
                "250 2.1.5 ok\r\n".into()
            }
        } else if upper == "DATA" {
            in_data = true;
            "354 go\r\n".into()
        } else if upper == "QUIT" {
            let _ = r.get_mut().write_all(b"221 bye\r\n").await;
            return;
        } else {
            "250 ok\r\n".into()
        };
        if r.get_mut().write_all(reply.as_bytes()).await.is_err() {
            return;
        }
        if upper == "RSET" && opts.close_idle_after.is_some_and(|n| transactions >= n) {
            let _ = r.get_mut().shutdown().await;
            drop(r);
            log.lock().expect("log").idle_closed += 1;
            return;
        }
    }
}

/// Starts a receiving server on 127.0.0.1:0 and returns its port.
async fn server(
    cfg: Arc<rustls::ServerConfig>,
    opts: ServerOpts,
    implicit: bool,
) -> (u16, Arc<Mutex<Log>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let log = Arc::new(Mutex::new(Log::default()));
    let log2 = log.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            log2.lock().expect("log").connections += 1;
            let (cfg, opts, log) = (cfg.clone(), opts.clone(), log2.clone());
            tokio::spawn(async move {
                let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
                if implicit {
                    if let Ok(mut tls) = acceptor.accept(tcp).await {
                        let _ = tls.write_all(b"220 mx.test ESMTP\r\n").await;
                        tls_phase(tls, &opts, &log).await;
                    }
                    return;
                }
                let mut r = BufReader::new(tcp);
                let _ = r.get_mut().write_all(b"220 mx.test ESMTP\r\n").await;
                while let Some(line) = read_line(&mut r).await {
                    log.lock().expect("log").plaintext_cmds.push(line.clone());
                    let upper = line.to_ascii_uppercase();
                    if upper.starts_with("EHLO") {
                        let caps = if opts.behaviour == Behaviour::NoStarttls {
                            "250-mx.test\r\n250 PIPELINING\r\n"
                        } else {
                            "250-mx.test\r\n250-PIPELINING\r\n250 STARTTLS\r\n"
                        };
                        let _ = r.get_mut().write_all(caps.as_bytes()).await;
                    } else if upper == "STARTTLS" {
                        match opts.behaviour {
                            Behaviour::Refuse454 => {
                                let _ = r
                                    .get_mut()
                                    .write_all(b"454 4.7.0 TLS not available\r\n")
                                    .await;
                            }
                            Behaviour::Inject => {
                                let _ = r
                                    .get_mut()
                                    .write_all(b"220 go ahead\r\n250 injected\r\n")
                                    .await;
                                let _ = acceptor.accept(r.into_inner()).await;
                                return;
                            }
                            _ => {
                                let _ = r.get_mut().write_all(b"220 2.0.0 go ahead\r\n").await;
                                if let Ok(tls) = acceptor.accept(r.into_inner()).await {
                                    tls_phase(tls, &opts, &log).await;
                                }
                                return;
                            }
                        }
                    } else if upper == "QUIT" {
                        let _ = r.get_mut().write_all(b"221 bye\r\n").await;
                        return;
                    } else {
                        // Plaintext MAIL/RCPT/DATA would be logged above: the tests assert none came.
                        let _ = r.get_mut().write_all(b"530 5.7.0 STARTTLS first\r\n").await;
                    }
                }
            });
        }
    });
    (port, log)
}

fn envelope(rcpts: &[&str], requiretls: bool) -> Envelope {
    Envelope {
        mail_from: "sender@gw.test".into(),
        params: MailParams {
            requiretls,
            ..MailParams::default()
        },
        recipients: rcpts.iter().map(|r| Recipient::new(*r)).collect(),
        helo: "client".into(),
        peer_ip: "127.0.0.1".into(),
        listener: "test".into(),
        auth: None,
        tls: None,
        received_at: 0,
        tls_floor: None,
        session: String::new(),
    }
}

fn lo(n: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, n])
}

fn resolver_one_mx() -> StaticResolver {
    StaticResolver::new()
        .with_mx(
            "example.test",
            DnssecStatus::Insecure,
            &[(10, "mx1.example.test")],
        )
        .with_ip("mx1.example.test", DnssecStatus::Insecure, &[lo(1)])
}

fn deliverer(
    port: u16,
    resolver: StaticResolver,
    ca: Option<&Pki>,
) -> (Deliverer, Option<tempfile::NamedTempFile>) {
    let mut cfg = DeliveryConfig::with_mode(DeliveryMode::Mx);
    cfg.mx_port = port;
    cfg.connect_timeout = phigate::config::Seconds(3);
    cfg.command_timeout = phigate::config::Seconds(5);
    let file = ca.map(|p| {
        let f = tempfile::NamedTempFile::new().expect("tmp");
        std::fs::write(f.path(), &p.ca_pem).expect("write ca");
        f
    });
    cfg.extra_ca_file = file.as_ref().map(|f| f.path().to_path_buf());
    let d = Deliverer::with_parts(
        &cfg,
        Arc::new(resolver),
        Arc::new(MemoryStsCache::default()),
    )
    .expect("deliverer")
    .with_helo_name("gw.test");
    (d, file)
}

fn assert_transient_47(out: &[RcptOutcome]) -> String {
    match &out[0].result {
        AttemptResult::Transient(r) => {
            assert_eq!(r.enhanced, "4.7.5", "{r}");
            r.text.clone()
        }
        other => panic!("expected a 4.7.5 deferral, got {other:?}"),
    }
}

fn no_mail_sent(log: &Arc<Mutex<Log>>) {
    let log = log.lock().expect("log");
    let all = log.plaintext_cmds.iter().chain(log.tls_cmds.iter());
    for c in all {
        let u = c.to_ascii_uppercase();
        assert!(
            !u.starts_with("MAIL") && !u.starts_with("RCPT") && u != "DATA",
            "server received {c}"
        );
    }
    assert!(log.data.is_empty());
}

#[tokio::test]
async fn hostile_servers_get_nothing() {
    let (chain, key, _) = leaf(None, "mx1.example.test", false);
    let cfg = server_config(chain, key);
    for (behaviour, needle) in [
        (Behaviour::NoStarttls, "STARTTLS not offered"),
        (Behaviour::Refuse454, "454"),
        (Behaviour::Inject, "injection"),
    ] {
        let (port, log) = server(
            cfg.clone(),
            ServerOpts {
                behaviour,
                ..ServerOpts::default()
            },
            false,
        )
        .await;
        let (d, _f) = deliverer(port, resolver_one_mx(), None);
        let out = deliver(
            &d,
            &envelope(&["a@example.test"], false),
            b"Subject: x\r\n\r\nhi\r\n",
            &[0],
            None,
        )
        .await;
        let text = assert_transient_47(&out);
        assert!(text.contains(needle), "{text}");
        no_mail_sent(&log);
    }
}

#[tokio::test]
async fn encrypt_delivers_with_dot_stuffing_and_per_recipient_replies() {
    let (chain, key, der) = leaf(None, "whatever.invalid", false);
    let (port, log) = server(server_config(chain, key), ServerOpts::default(), false).await;
    let (d, _f) = deliverer(port, resolver_one_mx(), None);
    let env = envelope(
        &[
            "a@example.test",
            "reject@example.test",
            "later@example.test",
        ],
        false,
    );
    let out = deliver(
        &d,
        &env,
        b"Subject: x\r\n\r\n.dot line\r\nend\r\n",
        &[0, 1, 2],
        None,
    )
    .await;
    assert!(
        matches!(out[0].result, AttemptResult::Delivered(_)),
        "{:?}",
        out[0]
    );
    assert!(matches!(out[1].result, AttemptResult::Permanent(_)));
    assert!(matches!(out[2].result, AttemptResult::Transient(_)));
    let hop = out[0].hop.clone().expect("hop");
    assert_eq!(hop.method, "encrypt-only");
    assert_eq!(hop.ip, "127.0.0.1");
    assert_eq!(hop.peer_cert_sha256, hex::encode(Sha256::digest(&der)));
    assert!(hop.tls_version.starts_with("TLSv1."), "{}", hop.tls_version);
    let log = log.lock().expect("log");
    assert_eq!(log.data.len(), 1);
    assert_eq!(log.data[0], b"Subject: x\r\n\r\n..dot line\r\nend\r\n");
}

#[tokio::test]
async fn verify_level_checks_chain_name_and_dates() {
    let ca = pki();
    let cases: [(Option<&Pki>, &str, bool, bool); 4] = [
        (Some(&ca), "mx1.example.test", false, true),
        (Some(&ca), "wrong.example.test", false, false),
        (Some(&ca), "mx1.example.test", true, false),
        (None, "mx1.example.test", false, false),
    ];
    for (issuer, name, expired, ok) in cases {
        let (chain, key, _) = leaf(issuer, name, expired);
        let (port, log) = server(server_config(chain, key), ServerOpts::default(), false).await;
        let (d, _f) = deliverer(port, resolver_one_mx(), Some(&ca));
        let out = deliver(
            &d,
            &envelope(&["a@example.test"], false),
            b"x\r\n",
            &[0],
            Some(TlsLevel::Verify),
        )
        .await;
        if ok {
            assert!(
                matches!(out[0].result, AttemptResult::Delivered(_)),
                "{name}: {:?}",
                out[0]
            );
            assert_eq!(out[0].hop.as_ref().map(|h| h.method.as_str()), Some("pkix"));
        } else {
            assert_transient_47(&out);
            no_mail_sent(&log);
        }
    }
}

#[tokio::test]
async fn first_mx_down_second_used_and_null_mx_bounces() {
    let (chain, key, _) = leaf(None, "mx2.example.test", false);
    let (port, _log) = server(server_config(chain, key), ServerOpts::default(), false).await;
    let r = StaticResolver::new()
        .with_mx(
            "example.test",
            DnssecStatus::Insecure,
            &[(10, "mx1.example.test"), (20, "mx2.example.test")],
        )
        .with_ip("mx1.example.test", DnssecStatus::Insecure, &[lo(2)]) // nothing listens there
        .with_ip("mx2.example.test", DnssecStatus::Insecure, &[lo(1)])
        .with_mx("null.test", DnssecStatus::Insecure, &[(0, ".")]);
    let (d, _f) = deliverer(port, r, None);
    let env = envelope(&["a@example.test", "b@null.test"], false);
    let out = deliver(&d, &env, b"x\r\n", &[0, 1], None).await;
    let a = out.iter().find(|o| o.index == 0).expect("a");
    let b = out.iter().find(|o| o.index == 1).expect("b");
    assert!(matches!(a.result, AttemptResult::Delivered(_)), "{a:?}");
    assert_eq!(
        a.hop.as_ref().map(|h| h.mx_host.as_str()),
        Some("mx2.example.test")
    );
    match &b.result {
        AttemptResult::Permanent(r) => assert_eq!(r.enhanced, "5.1.10"),
        other => panic!("null MX must bounce: {other:?}"),
    }
}

#[tokio::test]
async fn requiretls_needs_verified_tls_and_server_support() {
    let ca = pki();
    let (chain, key, _) = leaf(Some(&ca), "mx1.example.test", false);
    let cfg = server_config(chain, key);
    let (port, log) = server(cfg.clone(), ServerOpts::default(), false).await;
    let (d, _f) = deliverer(port, resolver_one_mx(), Some(&ca));
    let out = deliver(
        &d,
        &envelope(&["a@example.test"], true),
        b"x\r\n",
        &[0],
        None,
    )
    .await;
    match &out[0].result {
        AttemptResult::Permanent(r) => assert_eq!(r.enhanced, "5.7.30"),
        other => panic!("{other:?}"),
    }
    no_mail_sent(&log);
    let (port, log) = server(
        cfg,
        ServerOpts {
            requiretls: true,
            ..ServerOpts::default()
        },
        false,
    )
    .await;
    let (d, _f) = deliverer(port, resolver_one_mx(), Some(&ca));
    let out = deliver(
        &d,
        &envelope(&["a@example.test"], true),
        b"x\r\n",
        &[0],
        None,
    )
    .await;
    assert!(
        matches!(out[0].result, AttemptResult::Delivered(_)),
        "{:?}",
        out[0]
    );
    let log = log.lock().expect("log");
    assert!(log
        .tls_cmds
        .iter()
        .any(|c| c.starts_with("MAIL") && c.contains("REQUIRETLS")));
}

#[tokio::test]
async fn smarthost_with_auth_starttls_and_implicit() {
    let ca = pki();
    let (chain, key, _) = leaf(Some(&ca), "relay.test", false);
    let cfg = server_config(chain, key);
    let creds = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(creds.path(), "gwuser:s3cret\n").expect("write");
    let ca_file = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(ca_file.path(), &ca.ca_pem).expect("write");
    for implicit in [false, true] {
        let opts = ServerOpts {
            auth: Some(("gwuser", "s3cret")),
            ..ServerOpts::default()
        };
        let (port, log) = server(cfg.clone(), opts, implicit).await;
        let mut dc = DeliveryConfig::with_mode(DeliveryMode::Smarthost);
        dc.smarthost = Some(SmarthostConfig {
            host: "relay.test".into(),
            port,
            tls: if implicit {
                phigate::config::OutboundTls::Implicit
            } else {
                phigate::config::OutboundTls::Starttls
            },
            credentials_file: Some(creds.path().to_path_buf()),
            ca_file: Some(ca_file.path().to_path_buf()),
        });
        // relay.test resolves to loopback through the static resolver.
        let r = StaticResolver::new().with_ip("relay.test", DnssecStatus::Insecure, &[lo(1)]);
        let d = Deliverer::with_parts(&dc, Arc::new(r), Arc::new(MemoryStsCache::default()))
            .expect("deliverer");
        let out = deliver(
            &d,
            &envelope(&["a@one.test", "b@two.test"], false),
            b"x\r\n",
            &[0, 1],
            None,
        )
        .await;
        assert!(
            out.iter()
                .all(|o| matches!(o.result, AttemptResult::Delivered(_))),
            "{out:?}"
        );
        assert_eq!(out[0].hop.as_ref().map(|h| h.method.as_str()), Some("pkix"));
        let log = log.lock().expect("log");
        assert!(log.tls_cmds.iter().any(|c| c.starts_with("AUTH PLAIN")));
        assert_eq!(
            log.data.len(),
            1,
            "both domains in one transaction via the smarthost"
        );
    }
}

#[tokio::test]
async fn dane_ee_match_and_mismatch_falls_to_next_mx() {
    let (chain, key, der) = leaf(None, "not-checked.invalid", false);
    let (port, _log) = server(server_config(chain, key), ServerOpts::default(), false).await;
    let good = Tlsa {
        usage: 3,
        selector: 1,
        matching: 1,
        data: spki_sha256(&der),
    };
    let bad = Tlsa {
        data: vec![0; 32],
        ..good.clone()
    };
    let r = StaticResolver::new()
        .with_mx(
            "example.test",
            DnssecStatus::Secure,
            &[(10, "mx1.example.test"), (20, "mx2.example.test")],
        )
        .with_ip("mx1.example.test", DnssecStatus::Secure, &[lo(1)])
        .with_ip("mx2.example.test", DnssecStatus::Secure, &[lo(1)])
        .with_tlsa(
            &format!("_{port}._tcp.mx1.example.test"),
            DnssecStatus::Secure,
            vec![bad],
        )
        .with_tlsa(
            &format!("_{port}._tcp.mx2.example.test"),
            DnssecStatus::Secure,
            vec![good],
        );
    let (d, _f) = deliverer(port, r, None);
    let out = deliver(
        &d,
        &envelope(&["a@example.test"], false),
        b"x\r\n",
        &[0],
        None,
    )
    .await;
    assert!(
        matches!(out[0].result, AttemptResult::Delivered(_)),
        "{:?}",
        out[0]
    );
    let hop = out[0].hop.clone().expect("hop");
    assert_eq!(hop.mx_host, "mx2.example.test");
    assert_eq!(hop.method, "dane-ee");
}

/// HTTPS policy server for `mta-sts.example.test`; returns its port.
async fn policy_server(ca: &Pki, body: &'static str) -> u16 {
    let (chain, key, _) = leaf(Some(ca), "mta-sts.example.test", false);
    let acceptor = tokio_rustls::TlsAcceptor::from(server_config(chain, key));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut r = BufReader::new(tls);
                while let Some(line) = read_line(&mut r).await {
                    if line.is_empty() {
                        break;
                    }
                }
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = r.get_mut().write_all(resp.as_bytes()).await;
                let _ = r.get_mut().shutdown().await;
            });
        }
    });
    port
}

fn sts_resolver(txt_id: &str, mx: &str) -> StaticResolver {
    StaticResolver::new()
        .with_mx("example.test", DnssecStatus::Insecure, &[(10, mx)])
        .with_ip(mx, DnssecStatus::Insecure, &[lo(1)])
        .with_ip("mta-sts.example.test", DnssecStatus::Insecure, &[lo(1)])
        .with_txt(
            "_mta-sts.example.test",
            DnssecStatus::Insecure,
            &[&format!("v=STSv1; id={txt_id};")],
        )
}

fn sts_deliverer(
    smtp_port: u16,
    sts_port: u16,
    r: StaticResolver,
    ca: &Pki,
    cache: Arc<MemoryStsCache>,
) -> (Deliverer, tempfile::NamedTempFile) {
    let mut cfg = DeliveryConfig::with_mode(DeliveryMode::Mx);
    cfg.mx_port = smtp_port;
    cfg.sts_fetch_timeout = phigate::config::Seconds(3);
    let f = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(f.path(), &ca.ca_pem).expect("write ca");
    cfg.extra_ca_file = Some(f.path().to_path_buf());
    let d = Deliverer::with_parts(&cfg, Arc::new(r), cache)
        .expect("deliverer")
        .with_sts_port(sts_port);
    (d, f)
}

const ENFORCE: &str = "version: STSv1\nmode: enforce\nmx: *.example.test\nmax_age: 86400\n";
const TESTING: &str = "version: STSv1\nmode: testing\nmx: *.example.test\nmax_age: 86400\n";

#[tokio::test]
async fn mta_sts_enforce_testing_and_cache() {
    let ca = pki();
    let good = {
        let (chain, key, _) = leaf(Some(&ca), "mx1.example.test", false);
        server_config(chain, key)
    };
    let (smtp_port, _log) = server(good, ServerOpts::default(), false).await;
    let enforce_port = policy_server(&ca, ENFORCE).await;
    let env = envelope(&["a@example.test"], false);

    // enforce, MX matches, valid certificate -> mta-sts
    let cache = Arc::new(MemoryStsCache::default());
    let (d, _f) = sts_deliverer(
        smtp_port,
        enforce_port,
        sts_resolver("1", "mx1.example.test"),
        &ca,
        cache.clone(),
    );
    let out = deliver(&d, &env, b"x\r\n", &[0], None).await;
    assert!(
        matches!(out[0].result, AttemptResult::Delivered(_)),
        "{:?}",
        out[0]
    );
    assert_eq!(
        out[0].hop.as_ref().map(|h| h.method.as_str()),
        Some("mta-sts")
    );

    // TXT id changed, policy host unreachable: the cached enforce policy still applies,
    // so an MX outside the policy is refused.
    let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let dead_port = closed.local_addr().expect("addr").port();
    drop(closed);
    let (d, _f) = sts_deliverer(
        smtp_port,
        dead_port,
        sts_resolver("2", "evil.attacker.test"),
        &ca,
        cache.clone(),
    );
    let out = deliver(&d, &env, b"x\r\n", &[0], None).await;
    let text = assert_transient_47(&out);
    assert!(text.contains("MTA-STS"), "{text}");
    assert!(out[0]
        .hop
        .as_ref()
        .is_some_and(|h| h.mta_sts.contains("cached policy kept")));

    // enforce with an MX outside the policy (fresh cache) -> deferred
    let (d, _f) = sts_deliverer(
        smtp_port,
        enforce_port,
        sts_resolver("1", "mx.other.test"),
        &ca,
        Arc::default(),
    );
    assert_transient_47(&deliver(&d, &env, b"x\r\n", &[0], None).await);

    // enforce with an MX certificate that does not verify -> deferred
    let (bad_chain, bad_key, _) = leaf(None, "mx1.example.test", false);
    let (bad_port, bad_log) = server(
        server_config(bad_chain, bad_key),
        ServerOpts::default(),
        false,
    )
    .await;
    let (d, _f) = sts_deliverer(
        bad_port,
        enforce_port,
        sts_resolver("1", "mx1.example.test"),
        &ca,
        Arc::default(),
    );
    assert_transient_47(&deliver(&d, &env, b"x\r\n", &[0], None).await);
    no_mail_sent(&bad_log);

    // testing mode with the same bad certificate -> delivered, failure recorded
    let testing_port = policy_server(&ca, TESTING).await;
    let (d, _f) = sts_deliverer(
        bad_port,
        testing_port,
        sts_resolver("1", "mx1.example.test"),
        &ca,
        Arc::default(),
    );
    let out = deliver(&d, &env, b"x\r\n", &[0], None).await;
    assert!(
        matches!(out[0].result, AttemptResult::Delivered(_)),
        "{:?}",
        out[0]
    );
    let hop = out[0].hop.clone().expect("hop");
    assert_eq!(hop.method, "encrypt-only");
    assert!(
        hop.mta_sts.contains("testing: policy failed"),
        "{}",
        hop.mta_sts
    );
}

/// What a TLS-RPT observer was told: (policy type, policy mx-host, MX, failure).
type Seen = (PolicyType, Vec<String>, String, Option<ResultType>);

#[derive(Default)]
struct Recorder(Mutex<Vec<Seen>>);

impl TlsObserver for Recorder {
    fn observe(&self, a: &TlsAttempt<'_>) {
        assert_eq!(a.domain, "example.test");
        assert!(a.sending_ip.is_some() || a.receiving_ip.is_none());
        self.0.lock().expect("seen").push((
            a.policy.kind,
            a.policy.mx_host.clone(),
            a.mx_host.to_string(),
            a.failure,
        ));
    }
}

impl Recorder {
    fn take(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.0.lock().expect("seen"))
    }
}

/// The TLS result the delivery engine reports for TLS-RPT, one per new connection (or
/// per host refused before connecting): MTA-STS enforce success and certificate
/// failure, an MX outside the policy, `testing` failures (delivered, still reported),
/// no STARTTLS; report mail itself is never observed.
#[tokio::test]
async fn tls_results_for_tlsrpt() {
    use PolicyType::{NoPolicyFound, Sts};
    let ca = pki();
    let good = {
        let (chain, key, _) = leaf(Some(&ca), "mx1.example.test", false);
        server_config(chain, key)
    };
    let (good_port, _log) = server(good, ServerOpts::default(), false).await;
    let (bad_chain, bad_key, _) = leaf(None, "mx1.example.test", false);
    let (bad_port, _bad) = server(
        server_config(bad_chain, bad_key),
        ServerOpts::default(),
        false,
    )
    .await;
    let enforce = policy_server(&ca, ENFORCE).await;
    let testing = policy_server(&ca, TESTING).await;
    let env = envelope(&["a@example.test"], false);
    let pattern = vec!["*.example.test".to_string()];
    let mx1 = "mx1.example.test".to_string();
    let run = |smtp: u16, sts: u16, mx: &'static str| {
        let rec = Arc::new(Recorder::default());
        let (d, f) = sts_deliverer(smtp, sts, sts_resolver("1", mx), &ca, Arc::default());
        (d.with_tls_observer(rec.clone()), f, rec)
    };

    let (d, _f, rec) = run(good_port, enforce, "mx1.example.test");
    deliver(&d, &env, b"x\r\n", &[0], None).await;
    assert_eq!(rec.take(), vec![(Sts, pattern.clone(), mx1.clone(), None)]);

    let (d, _f, rec) = run(bad_port, enforce, "mx1.example.test");
    assert_transient_47(&deliver(&d, &env, b"x\r\n", &[0], None).await);
    let bad = Some(ResultType::CertificateNotTrusted);
    assert_eq!(rec.take(), vec![(Sts, pattern.clone(), mx1.clone(), bad)]);

    let (d, _f, rec) = run(good_port, enforce, "mx.other.test");
    assert_transient_47(&deliver(&d, &env, b"x\r\n", &[0], None).await);
    let mismatch = Some(ResultType::ValidationFailure);
    assert_eq!(
        rec.take(),
        vec![(Sts, pattern.clone(), "mx.other.test".into(), mismatch)]
    );

    let (d, _f, rec) = run(bad_port, testing, "mx1.example.test");
    let out = deliver(&d, &env, b"x\r\n", &[0], None).await;
    assert!(matches!(out[0].result, AttemptResult::Delivered(_)));
    assert_eq!(rec.take(), vec![(Sts, pattern.clone(), mx1.clone(), bad)]);

    // A published policy that does not parse: one sts-policy-invalid under `sts`, about
    // no host, and the session itself under no policy.
    let broken = policy_server(&ca, "version: STSv1\nmode: sometimes\n").await;
    let (d, _f, rec) = run(good_port, broken, "mx1.example.test");
    let out = deliver(&d, &env, b"x\r\n", &[0], None).await;
    assert!(matches!(out[0].result, AttemptResult::Delivered(_)));
    let invalid = Some(ResultType::StsPolicyInvalid);
    assert_eq!(
        rec.take(),
        vec![
            (Sts, vec![], String::new(), invalid),
            (NoPolicyFound, vec![], mx1.clone(), None)
        ]
    );

    // Report mail (the TLS-RPT module's own envelopes) is not observed: no loops.
    let (d, _f, rec) = run(bad_port, testing, "mx1.example.test");
    let mut report = env.clone();
    report.listener = REPORT_LISTENER.into();
    deliver(&d, &report, b"x\r\n", &[0], None).await;
    assert!(rec.take().is_empty());

    let (chain, key, _) = leaf(None, "mx1.example.test", false);
    let (port, _log) = server(
        server_config(chain, key),
        ServerOpts {
            behaviour: Behaviour::NoStarttls,
            ..ServerOpts::default()
        },
        false,
    )
    .await;
    let rec = Arc::new(Recorder::default());
    let (d, _f) = deliverer(port, resolver_one_mx(), None);
    let d = d.with_tls_observer(rec.clone());
    assert_transient_47(&deliver(&d, &env, b"x\r\n", &[0], None).await);
    let none = Some(ResultType::StarttlsNotSupported);
    assert_eq!(rec.take(), vec![(NoPolicyFound, vec![], mx1, none)]);
}

// ---------------------------------------------------------------------------------
// Connection reuse

/// Deliverer for `example.test` -> 127.0.0.1:`port` with the given caps.
fn reuse_deliverer(
    port: u16,
    ca: &Pki,
    per_destination: usize,
    global: usize,
) -> (Deliverer, tempfile::NamedTempFile) {
    let mut cfg = DeliveryConfig::with_mode(DeliveryMode::Mx);
    cfg.mx_port = port;
    cfg.connect_timeout = phigate::config::Seconds(3);
    cfg.command_timeout = phigate::config::Seconds(5);
    cfg.per_destination_connections = per_destination;
    cfg.max_outbound_connections = global;
    let f = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(f.path(), &ca.ca_pem).expect("write ca");
    cfg.extra_ca_file = Some(f.path().to_path_buf());
    let d = Deliverer::with_parts(
        &cfg,
        Arc::new(resolver_one_mx()),
        Arc::new(MemoryStsCache::default()),
    )
    .expect("deliverer")
    .with_helo_name("gw.test");
    (d, f)
}

/// Sends message number `n` (its body names it) and returns the one outcome.
async fn send_nth(
    d: &Deliverer,
    n: usize,
    requiretls: bool,
    floor: Option<TlsLevel>,
) -> RcptOutcome {
    let body = format!("Subject: m{n}\r\n\r\nmessage {n}\r\n");
    let mut out = deliver(
        d,
        &envelope(&["a@example.test"], requiretls),
        body.as_bytes(),
        &[0],
        floor,
    )
    .await;
    assert_eq!(out.len(), 1);
    let o = out.remove(0);
    assert!(
        matches!(o.result, AttemptResult::Delivered(_)),
        "m{n}: {o:?}"
    );
    o
}

fn connections(log: &Arc<Mutex<Log>>) -> usize {
    log.lock().expect("log").connections
}

/// Each message body arrived exactly once.
fn each_once(log: &Arc<Mutex<Log>>, n: usize) {
    let log = log.lock().expect("log");
    assert_eq!(log.data.len(), n, "transactions");
    for i in 0..n {
        let want = format!("Subject: m{i}\r\n\r\nmessage {i}\r\n");
        let count = log.data.iter().filter(|b| *b == want.as_bytes()).count();
        assert_eq!(count, 1, "message {i} delivered {count} times");
    }
}

fn signed_server_cfg(ca: &Pki) -> Arc<rustls::ServerConfig> {
    let (chain, key, _) = leaf(Some(ca), "mx1.example.test", false);
    server_config(chain, key)
}

#[tokio::test]
async fn several_messages_share_one_connection_with_rset_between() {
    let ca = pki();
    let (port, log) = server(signed_server_cfg(&ca), ServerOpts::default(), false).await;
    let (d, _f) = reuse_deliverer(port, &ca, 2, 10);
    let n = 5;
    for i in 0..n {
        let o = send_nth(&d, i, false, None).await;
        assert_eq!(
            o.hop.as_ref().map(|h| h.method.as_str()),
            Some("encrypt-only")
        );
    }
    assert_eq!(
        connections(&log),
        1,
        "{n} messages should share one connection"
    );
    each_once(&log, n);
    let rsets = log
        .lock()
        .expect("log")
        .tls_cmds
        .iter()
        .filter(|c| c.as_str() == "RSET")
        .count();
    assert_eq!(rsets, n, "one RSET after each transaction");
    assert_eq!(d.idle_connections(), 1);
}

#[tokio::test]
async fn max_uses_cap_closes_the_session() {
    let ca = pki();
    let (port, log) = server(signed_server_cfg(&ca), ServerOpts::default(), false).await;
    let (d, _f) = reuse_deliverer(port, &ca, 2, 10);
    let d = d.with_connection_reuse(std::time::Duration::from_secs(10), 2);
    for i in 0..5 {
        send_nth(&d, i, false, None).await;
    }
    // Two transactions per connection: 5 messages need 3 connections.
    assert_eq!(connections(&log), 3);
    each_once(&log, 5);
}

#[tokio::test]
async fn requiretls_message_gets_its_own_connection() {
    let ca = pki();
    let opts = ServerOpts {
        requiretls: true,
        ..ServerOpts::default()
    };
    let (port, log) = server(signed_server_cfg(&ca), opts, false).await;
    let (d, _f) = reuse_deliverer(port, &ca, 2, 10);
    // A verified (pkix) session is pooled; the REQUIRETLS message, which needs exactly
    // that verification, still must not use it.
    send_nth(&d, 0, false, Some(TlsLevel::Verify)).await;
    assert_eq!(d.idle_connections(), 1);
    let o = send_nth(&d, 1, true, None).await;
    assert_eq!(o.hop.as_ref().map(|h| h.method.as_str()), Some("pkix"));
    assert_eq!(
        connections(&log),
        2,
        "REQUIRETLS reused a pooled connection"
    );
    // ...nor return its session to the pool.
    assert_eq!(d.idle_connections(), 1);
    // The pooled verified session is still good for the next ordinary message.
    send_nth(&d, 2, false, Some(TlsLevel::Verify)).await;
    assert_eq!(connections(&log), 2);
    each_once(&log, 3);
    let l = log.lock().expect("log");
    let mails: Vec<&String> = l
        .tls_cmds
        .iter()
        .filter(|c| c.starts_with("MAIL"))
        .collect();
    assert_eq!(mails.len(), 3);
    assert!(mails[1].contains("REQUIRETLS") && !mails[2].contains("REQUIRETLS"));
}

#[tokio::test]
async fn session_closed_by_server_while_idle_is_replaced() {
    let ca = pki();
    let opts = ServerOpts {
        close_idle_after: Some(1),
        ..ServerOpts::default()
    };
    let (port, log) = server(signed_server_cfg(&ca), opts, false).await;
    let (d, _f) = reuse_deliverer(port, &ca, 1, 1);
    send_nth(&d, 0, false, None).await;
    assert_eq!(d.idle_connections(), 1);
    // The server has closed the idle session (on loopback its FIN is then already in our
    // receive queue); the deadline is a hang guard.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while log.lock().expect("log").idle_closed == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "server never closed the idle session (hang guard)"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // With one permit each (held by the dead idle session), this would hang if the dead
    // session were not found and dropped.
    let o = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        send_nth(&d, 1, false, None),
    )
    .await
    .expect("delivery did not hang");
    assert!(o.hop.is_some());
    assert_eq!(
        connections(&log),
        2,
        "a new connection for the second message"
    );
    each_once(&log, 2);
    // The probe found the dead session: no MAIL was sent into it.
    let l = log.lock().expect("log");
    assert_eq!(
        l.tls_cmds.iter().filter(|c| c.starts_with("MAIL")).count(),
        2
    );
}

#[tokio::test]
async fn encrypt_only_session_not_used_for_verify_message() {
    let ca = pki();
    let (port, log) = server(signed_server_cfg(&ca), ServerOpts::default(), false).await;
    // One permit per destination and globally: the idle encrypt-only session holds it, so
    // the verify message must close that session, not wait behind it.
    let (d, _f) = reuse_deliverer(port, &ca, 1, 1);
    let o = send_nth(&d, 0, false, None).await;
    assert_eq!(
        o.hop.as_ref().map(|h| h.method.as_str()),
        Some("encrypt-only")
    );
    let o = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        send_nth(&d, 1, false, Some(TlsLevel::Verify)),
    )
    .await
    .expect("verify message waited behind an idle session");
    assert_eq!(o.hop.as_ref().map(|h| h.method.as_str()), Some("pkix"));
    assert_eq!(
        connections(&log),
        2,
        "encrypt-only session reused for verify"
    );
    // A pkix session is good enough for an encrypt-level message: reused.
    let o = send_nth(&d, 2, false, None).await;
    assert_eq!(o.hop.as_ref().map(|h| h.method.as_str()), Some("pkix"));
    assert_eq!(connections(&log), 2);
    each_once(&log, 3);
}

#[tokio::test]
async fn concurrent_messages_respect_the_destination_cap_with_pooling() {
    let ca = pki();
    let (port, log) = server(signed_server_cfg(&ca), ServerOpts::default(), false).await;
    let (d, _f) = reuse_deliverer(port, &ca, 2, 10);
    let outs = tokio::join!(
        send_nth(&d, 0, false, None),
        send_nth(&d, 1, false, None),
        send_nth(&d, 2, false, None),
        send_nth(&d, 3, false, None),
        send_nth(&d, 4, false, None),
        send_nth(&d, 5, false, None),
    );
    assert!(outs.5.hop.is_some());
    let c = connections(&log);
    assert!((1..=2).contains(&c), "{c} connections with a cap of 2");
    each_once(&log, 6);
    assert!(d.idle_connections() <= 2);
}
