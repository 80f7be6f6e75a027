//! Delivery over a real DNSSEC-signed zone: knotd on 127.0.0.53 serves `lab.test.`
//! (ldns-signed, its key is the trust anchor), an unsigned child `insecure.lab.test.`
//! (no DS) and a signed child `bogus.lab.test.` whose parent DS names another key.
//! hickory validates in process; receiving servers are in-test rustls servers on
//! 127.0.0.x:PORT, Postfix (through the real `phigate serve` binary) and a TLS 1.1-only
//! Python server. Missing tools skip, or fail when CI=true.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{deliver, free_port, require_tool, Gateway, GwOpts};
use phigate::config::{DeliveryConfig, DeliveryMode, Seconds};
use phigate::delivery::sts::MemoryStsCache;
use phigate::delivery::{AttemptResult, Deliverer, RcptOutcome};
use phigate::dns::{DnssecStatus, StaticResolver};
use phigate::types::{Envelope, MailParams, Recipient};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

// ---------------------------------------------------------------------------------
// Certificates

struct Cert {
    chain: Vec<CertificateDer<'static>>,
    key_der: Vec<u8>,
    cert_pem: String,
    key_pem: String,
}

impl Cert {
    fn leaf_der(&self) -> &[u8] {
        self.chain[0].as_ref()
    }
    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }
}

fn params(name: &str) -> CertificateParams {
    let mut p = CertificateParams::new(vec![name.to_string()]).expect("params");
    p.distinguished_name.push(DnType::CommonName, name);
    p
}

fn self_signed(name: &str) -> Cert {
    let key = KeyPair::generate().expect("key");
    let cert = params(name).self_signed(&key).expect("self-sign");
    Cert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        chain: vec![cert.der().clone()],
        key_der: key.serialize_der(),
    }
}

/// A private CA and a leaf for `name` it signed; the chain is [leaf, CA].
fn ca_and_leaf(name: &str) -> (Cert, Vec<u8>) {
    let ca_key = KeyPair::generate().expect("ca key");
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name
        .push(DnType::CommonName, "lab private CA");
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = p.self_signed(&ca_key).expect("ca");
    let key = KeyPair::generate().expect("leaf key");
    let leaf = params(name)
        .signed_by(&key, &ca, &ca_key)
        .expect("sign leaf");
    let ca_der = ca.der().to_vec();
    (
        Cert {
            cert_pem: leaf.pem() + &ca.pem(),
            key_pem: key.serialize_pem(),
            chain: vec![leaf.der().clone(), ca.der().clone()],
            key_der: key.serialize_der(),
        },
        ca_der,
    )
}

fn spki_sha256(der: &[u8]) -> String {
    let (_, cert) = x509_parser::parse_x509_certificate(der).expect("parse cert");
    hex::encode(Sha256::digest(cert.tbs_certificate.subject_pki.raw))
}

// ---------------------------------------------------------------------------------
// The DNS lab

struct Knot(Child);
impl Drop for Knot {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sh(dir: &Path, cmd: &str) -> String {
    let out = Command::new("sh")
        .args(["-c", cmd])
        .current_dir(dir)
        .output()
        .expect("run sh");
    assert!(
        out.status.success(),
        "{cmd}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

struct Lab {
    _knot: Knot,
    dns: SocketAddr,
    anchor: PathBuf,
}

fn have_dns_tools() -> bool {
    ["ldns-keygen", "ldns-signzone", "knotd", "kdig"]
        .iter()
        .all(|t| require_tool(t))
}

/// Signs and serves `lab.test` (records `lab_records`, relative names), the unsigned
/// child `insecure.lab.test` and the bogus child `bogus.lab.test` (`child_records` for both).
fn start_lab(dir: &Path, lab_records: &str, child_records: &str) -> Lab {
    let port = std::net::UdpSocket::bind("127.0.0.53:0")
        .and_then(|s| s.local_addr())
        .expect("udp port on 127.0.0.53")
        .port();
    let csk = sh(dir, "ldns-keygen -a ECDSAP256SHA256 -k lab.test");
    let bogus_key = sh(dir, "ldns-keygen -a ECDSAP256SHA256 -k bogus.lab.test");
    // The parent publishes the DS of this key, which signs nothing: bogus.lab.test is bogus.
    let decoy = sh(dir, "ldns-keygen -a ECDSAP256SHA256 -k bogus.lab.test");
    let decoy_ds = std::fs::read_to_string(dir.join(format!("{decoy}.ds"))).expect("decoy ds");
    let soa = "$TTL 300\n@ IN SOA ns.lab.test. hostmaster.lab.test. 1 3600 600 86400 300\n@ IN NS ns.lab.test.\n";
    let w = |name: &str, text: String| std::fs::write(dir.join(name), text).expect("zone");
    w(
        "lab.test.zone",
        format!(
            "$ORIGIN lab.test.\n{soa}ns IN A 127.0.0.53\ninsecure IN NS ns.lab.test.\nbogus IN NS ns.lab.test.\n{decoy_ds}\n{lab_records}"
        ),
    );
    w(
        "insecure.lab.test.zone",
        format!("$ORIGIN insecure.lab.test.\n{soa}{child_records}"),
    );
    w(
        "bogus.lab.test.zone",
        format!("$ORIGIN bogus.lab.test.\n{soa}{child_records}"),
    );
    sh(
        dir,
        &format!("ldns-signzone -o lab.test. -f lab.test.zone.signed lab.test.zone {csk}"),
    );
    sh(
        dir,
        &format!(
            "ldns-signzone -o bogus.lab.test. -f bogus.lab.test.zone.signed bogus.lab.test.zone {bogus_key}"
        ),
    );
    let anchor = dir.join("anchor.dnskey");
    std::fs::copy(dir.join(format!("{csk}.key")), &anchor).expect("anchor");
    std::fs::create_dir_all(dir.join("db")).expect("db dir");
    let d = dir.display();
    w(
        "knot.conf",
        format!(
            "server:\n    rundir: \"{d}\"\n    listen: 127.0.0.53@{port}\ndatabase:\n    storage: \"{d}/db\"\n\
             template:\n  - id: default\n    storage: \"{d}\"\n    zonefile-sync: -1\n    zonefile-load: whole\n    journal-content: none\n\
             zone:\n  - domain: lab.test\n    file: lab.test.zone.signed\n  - domain: insecure.lab.test\n    file: insecure.lab.test.zone\n\
             \x20 - domain: bogus.lab.test\n    file: bogus.lab.test.zone.signed\n"
        ),
    );
    let child = Command::new("knotd")
        .args(["-c", &dir.join("knot.conf").display().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn knotd");
    let knot = Knot(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ok = Command::new("kdig")
            .args(["+short", "+time=1", "+retry=0", "@127.0.0.53", "-p"])
            .arg(port.to_string())
            .args(["SOA", "bogus.lab.test"])
            .output()
            .map(|o| !o.stdout.is_empty())
            .unwrap_or(false);
        if ok {
            break;
        }
        assert!(Instant::now() < deadline, "knotd did not answer");
        std::thread::sleep(Duration::from_millis(100));
    }
    Lab {
        _knot: knot,
        dns: SocketAddr::from(([127, 0, 0, 53], port)),
        anchor,
    }
}

// ---------------------------------------------------------------------------------
// In-test receiving server (STARTTLS only after EHLO; logs what it saw)

#[derive(Default)]
struct Seen {
    connections: usize,
    plaintext: Vec<String>,
    tls: Vec<String>,
    messages: Vec<Vec<u8>>,
    /// Transactions (MAIL to the end-of-DATA reply) in progress, and the most at once.
    active: usize,
    max_active: usize,
    /// Hold the end-of-DATA reply until this many transactions have been in progress at
    /// once, or for at most this long (makes deliveries overlap without betting on timing).
    hold: Option<(usize, Duration)>,
}

type SeenLog = Arc<Mutex<Seen>>;

async fn receiver(addr: SocketAddr, cert: &Cert) -> SeenLog {
    receiver_with(addr, cert, None).await
}

async fn receiver_with(addr: SocketAddr, cert: &Cert, hold: Option<(usize, Duration)>) -> SeenLog {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(cert.chain.clone(), cert.key())
            .expect("server cert"),
    );
    let listener = TcpListener::bind(addr).await.expect("bind receiver");
    let log: SeenLog = Arc::default();
    log.lock().expect("log").hold = hold;
    let log2 = log.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            log2.lock().expect("log").connections += 1;
            let (cfg, log) = (cfg.clone(), log2.clone());
            tokio::spawn(async move { connection(tcp, cfg, &log).await });
        }
    });
    log
}

async fn connection(tcp: tokio::net::TcpStream, cfg: Arc<rustls::ServerConfig>, log: &SeenLog) {
    {
        {
            let mut r = BufReader::new(tcp);
            let _ = r.get_mut().write_all(b"220 mx ESMTP\r\n").await;
            let mut line = String::new();
            while matches!(r.read_line(&mut line).await, Ok(n) if n > 0) {
                let cmd = line.trim_end().to_ascii_uppercase();
                line.clear();
                log.lock().expect("log").plaintext.push(cmd.clone());
                let reply: &[u8] = if cmd.starts_with("EHLO") {
                    b"250-mx\r\n250-PIPELINING\r\n250 STARTTLS\r\n"
                } else if cmd == "STARTTLS" {
                    let _ = r.get_mut().write_all(b"220 2.0.0 go ahead\r\n").await;
                    let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
                    if let Ok(tls) = acceptor.accept(r.into_inner()).await {
                        tls_session(tls, log).await;
                    }
                    return;
                } else {
                    b"530 5.7.0 STARTTLS first\r\n"
                };
                if r.get_mut().write_all(reply).await.is_err() {
                    return;
                }
            }
        }
    }
}

async fn tls_session<S: AsyncRead + AsyncWrite + Unpin>(stream: S, log: &SeenLog) {
    let mut r = BufReader::new(stream);
    let mut body: Option<Vec<u8>> = None;
    loop {
        let mut raw = Vec::new();
        if !matches!(r.read_until(b'\n', &mut raw).await, Ok(n) if n > 0) {
            return;
        }
        if let Some(b) = body.as_mut() {
            if raw == b".\r\n" {
                let msg = body.take().unwrap_or_default();
                let hold = log.lock().expect("log").hold;
                if let Some((want, most)) = hold {
                    let until = tokio::time::Instant::now() + most;
                    // A latch: once `want` were open together, everyone may answer.
                    while log.lock().expect("log").max_active < want
                        && tokio::time::Instant::now() < until
                    {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                {
                    let mut l = log.lock().expect("log");
                    l.messages.push(msg);
                    // Before the reply: the client cannot start another until it has it.
                    l.active = l.active.saturating_sub(1);
                }
                let _ = r.get_mut().write_all(b"250 2.0.0 queued\r\n").await;
            } else {
                b.extend_from_slice(&raw);
            }
            continue;
        }
        let cmd = String::from_utf8_lossy(&raw)
            .trim_end()
            .to_ascii_uppercase();
        {
            let mut l = log.lock().expect("log");
            l.tls.push(cmd.clone());
            if cmd.starts_with("MAIL") {
                l.active += 1;
                l.max_active = l.max_active.max(l.active);
            }
        }
        let reply: &[u8] = if cmd.starts_with("EHLO") {
            b"250-mx\r\n250-PIPELINING\r\n250 8BITMIME\r\n"
        } else if cmd == "DATA" {
            body = Some(Vec::new());
            b"354 go\r\n"
        } else if cmd == "QUIT" {
            let _ = r.get_mut().write_all(b"221 bye\r\n").await;
            return;
        } else {
            b"250 ok\r\n"
        };
        if r.get_mut().write_all(reply).await.is_err() {
            return;
        }
    }
}

fn saw_mail(log: &SeenLog) -> bool {
    let log = log.lock().expect("log");
    !log.messages.is_empty()
        || log
            .plaintext
            .iter()
            .chain(log.tls.iter())
            .any(|c| c.starts_with("MAIL") || c.starts_with("RCPT") || c == "DATA")
}

// ---------------------------------------------------------------------------------
// Deliverer helpers

fn envelope(rcpt: &str) -> Envelope {
    Envelope {
        mail_from: "sender@gw.test".into(),
        params: MailParams::default(),
        recipients: vec![Recipient::new(rcpt)],
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

fn lo(n: u8, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::from([127, 0, 0, n]), port)
}

async fn send(d: &Deliverer, rcpt: &str) -> RcptOutcome {
    let mut out = deliver(
        d,
        &envelope(rcpt),
        b"Subject: t\r\n\r\nhello\r\n",
        &[0],
        None,
    )
    .await;
    assert_eq!(out.len(), 1);
    out.remove(0)
}

fn delivered(o: &RcptOutcome) -> bool {
    matches!(o.result, AttemptResult::Delivered(_))
}

/// Every DANE outcome over the real signed zone, through `Deliverer::new` (hickory, the
/// lab's trust anchor, the start-up DNSSEC probe).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dane_over_a_real_signed_zone() {
    if !have_dns_tools() {
        return;
    }
    let port = free_port();
    let ee = self_signed("mx-ee.lab.test");
    let other = self_signed("mx-bad.lab.test");
    let (ta_chain, ca_der) = ca_and_leaf("mx-ta.lab.test");
    let ta_wrong_name = {
        // Same CA-signed leaf, published under a different TLSA base: name check must fail.
        ca_and_leaf("someone-else.lab.test")
    };
    let insecure = self_signed("mx.insecure.lab.test");
    let ee_tlsa = spki_sha256(ee.leaf_der());
    let ca_tlsa = spki_sha256(&ca_der);
    let wrong_ca_tlsa = spki_sha256(&ta_wrong_name.1);
    let zeros = "0".repeat(64);
    let lab_records = format!(
        "ee IN MX 10 mx-ee\nmx-ee IN A 127.0.0.2\n_{port}._tcp.mx-ee IN TLSA 3 1 1 {ee_tlsa}\n\
         mm IN MX 10 mx-bad\nmm IN MX 20 mx-ee\nmx-bad IN A 127.0.0.3\n_{port}._tcp.mx-bad IN TLSA 3 1 1 {zeros}\n\
         ta IN MX 10 mx-ta\nmx-ta IN A 127.0.0.4\n_{port}._tcp.mx-ta IN TLSA 2 1 1 {ca_tlsa}\n\
         taname IN MX 10 mx-taname\nmx-taname IN A 127.0.0.6\n_{port}._tcp.mx-taname IN TLSA 2 1 1 {wrong_ca_tlsa}\n"
    );
    // Both children: MX on 127.0.0.5 with a TLSA that would match `insecure`'s cert; an
    // MTA-STS TXT whose policy host does not exist.
    let insecure_tlsa = spki_sha256(insecure.leaf_der());
    let child_records = format!(
        "@ IN MX 10 mx\nmx IN A 127.0.0.5\n_{port}._tcp.mx IN TLSA 3 1 1 {insecure_tlsa}\n_mta-sts IN TXT \"v=STSv1; id=1;\"\n"
    );
    let dir = tempfile::tempdir().expect("tmp");
    let lab = start_lab(dir.path(), &lab_records, &child_records);

    let ee_log = receiver(lo(2, port), &ee).await;
    let bad_log = receiver(lo(3, port), &other).await;
    let ta_log = receiver(lo(4, port), &ta_chain).await;
    let child_log = receiver(lo(5, port), &insecure).await;
    let taname_log = receiver(lo(6, port), &ta_wrong_name.0).await;

    let mut cfg = DeliveryConfig::with_mode(DeliveryMode::Mx);
    cfg.mx_port = port;
    cfg.dns_servers = vec![lab.dns];
    cfg.dnssec_trust_anchor = Some(lab.anchor.clone());
    cfg.connect_timeout = Seconds(3);
    cfg.command_timeout = Seconds(5);
    cfg.sts_fetch_timeout = Seconds(3);
    let d = Deliverer::new(&cfg)
        .await
        .expect("DNSSEC probe passes with the lab anchor")
        .with_helo_name("gw.test");

    // DANE-EE match: delivered, method dane-ee, SNI/cert facts recorded.
    let o = send(&d, "a@ee.lab.test").await;
    assert!(delivered(&o), "{o:?}");
    let hop = o.hop.expect("hop");
    assert_eq!(hop.method, "dane-ee");
    assert_eq!(hop.mx_host, "mx-ee.lab.test");
    assert_eq!(hop.ip, "127.0.0.2");
    assert_eq!(
        hop.peer_cert_sha256,
        hex::encode(Sha256::digest(ee.leaf_der()))
    );
    assert_eq!(ee_log.lock().expect("log").messages.len(), 1);

    // DANE-EE mismatch on the first MX: never gets MAIL; the second MX takes the message.
    let o = send(&d, "a@mm.lab.test").await;
    assert!(delivered(&o), "{o:?}");
    let hop = o.hop.expect("hop");
    assert_eq!(hop.mx_host, "mx-ee.lab.test");
    assert_eq!(hop.method, "dane-ee");
    assert!(
        bad_log.lock().expect("log").connections >= 1,
        "first MX was not tried"
    );
    assert!(!saw_mail(&bad_log), "mismatching MX received mail");
    assert_eq!(ee_log.lock().expect("log").messages.len(), 2);

    // DANE-TA: chain [leaf, CA], TLSA 2 1 1 of the CA, leaf name = TLSA base.
    let o = send(&d, "a@ta.lab.test").await;
    assert!(delivered(&o), "{o:?}");
    assert_eq!(o.hop.expect("hop").method, "dane-ta");
    assert_eq!(ta_log.lock().expect("log").messages.len(), 1);

    // DANE-TA whose leaf names another host: name check fails, deferred 4.7.x.
    let o = send(&d, "a@taname.lab.test").await;
    match &o.result {
        AttemptResult::Transient(r) => assert!(r.enhanced.starts_with("4.7."), "{r}"),
        other => panic!("DANE-TA name mismatch must defer: {other:?}"),
    }
    assert!(!saw_mail(&taname_log));

    // Bogus child: MX answer fails validation: deferred, nobody contacted.
    let o = send(&d, "a@bogus.lab.test").await;
    match &o.result {
        AttemptResult::Transient(r) => assert!(
            r.enhanced.starts_with("4.7.") || r.enhanced == "4.4.3",
            "{r}"
        ),
        other => panic!("bogus zone must defer: {other:?}"),
    }
    // Insecure child (no DS): its TLSA does not count; encrypt-only delivery after the
    // MTA-STS lookup found no usable policy.
    assert_eq!(
        child_log.lock().expect("log").connections,
        0,
        "bogus MX was contacted"
    );
    let o = send(&d, "a@insecure.lab.test").await;
    assert!(delivered(&o), "{o:?}");
    let hop = o.hop.expect("hop");
    assert_eq!(hop.method, "encrypt-only");
    assert!(hop.dane.contains("no secure TLSA"), "{}", hop.dane);
    assert!(hop.mta_sts.contains("fetch failed"), "{}", hop.mta_sts);
    assert_eq!(child_log.lock().expect("log").messages.len(), 1);

    // tls check over the same zone (what `phigate tls check` prints).
    let report = d.tls_check("ee.lab.test").await;
    assert_eq!(report.mx_dnssec, "secure");
    assert_eq!(report.hosts[0].requirement, "dane");
    assert!(report.would_deliver, "{report:?}");
    let report = d.tls_check("insecure.lab.test").await;
    assert_eq!(report.mx_dnssec, "insecure");
    assert_eq!(report.hosts[0].requirement, "encrypt");
}

// ---------------------------------------------------------------------------------
// TLS 1.0/1.1 only receiver

const OLD_TLS_SERVER: &str = r#"
import socket, ssl, sys, json
cert, key, port, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.minimum_version = ssl.TLSVersion.TLSv1
ctx.maximum_version = ssl.TLSVersion.TLSv1_1
ctx.set_ciphers("DEFAULT@SECLEVEL=0")
ctx.load_cert_chain(cert, key)
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", port)); srv.listen(5)
print("ready", flush=True)
log = {"plaintext": [], "tls": [], "handshake": []}
srv.settimeout(20)
for _ in range(int(sys.argv[5])):
    try:
        c, _ = srv.accept()
    except socket.timeout:
        break
    c.settimeout(10)
    f = c.makefile("rb")
    c.sendall(b"220 old ESMTP\r\n")
    try:
        while True:
            line = f.readline()
            if not line:
                break
            cmd = line.decode("latin1").strip()
            log["plaintext"].append(cmd)
            u = cmd.upper()
            if u.startswith("EHLO"):
                c.sendall(b"250-old\r\n250 STARTTLS\r\n")
            elif u == "STARTTLS":
                c.sendall(b"220 go ahead\r\n")
                try:
                    t = ctx.wrap_socket(c, server_side=True)
                    log["handshake"].append(t.version())
                    tf = t.makefile("rb")
                    while True:
                        l = tf.readline()
                        if not l:
                            break
                        log["tls"].append(l.decode("latin1").strip())
                        t.sendall(b"250 ok\r\n")
                except Exception as e:
                    log["handshake"].append("failed: " + str(e))
                break
            else:
                c.sendall(b"530 5.7.0 STARTTLS first\r\n")
    except Exception as e:
        log["handshake"].append("error: " + str(e))
    c.close()
with open(out, "w") as fh:
    json.dump(log, fh)
"#;

/// A server that only speaks TLS 1.0/1.1: the handshake fails, the message is deferred
/// with 4.7.x and not a byte of it goes out in plaintext.
#[tokio::test]
async fn tls_1_1_only_server_gets_no_mail() {
    if !require_tool(common::PYTHON) || !require_tool("openssl") {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let cert = self_signed("old.example.test");
    let (cert_path, key_path) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    std::fs::write(&cert_path, &cert.cert_pem).expect("cert");
    std::fs::write(&key_path, &cert.key_pem).expect("key");
    let port = free_port();
    let out = dir.path().join("log.json");
    // Two connections: openssl proving the server really does TLS 1.1, then phigate.
    let mut server = Command::new(common::PYTHON)
        .args(["-c", OLD_TLS_SERVER])
        .arg(&cert_path)
        .arg(&key_path)
        .arg(port.to_string())
        .arg(&out)
        .arg("2")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python server");
    {
        use std::io::BufRead;
        let mut first = String::new();
        let stdout = server.stdout.take().expect("stdout");
        std::io::BufReader::new(stdout)
            .read_line(&mut first)
            .expect("ready line");
        assert_eq!(first.trim(), "ready");
    }
    let probe = Command::new("openssl")
        .args(["s_client", "-starttls", "smtp", "-tls1_1"])
        .args(["-cipher", "DEFAULT@SECLEVEL=0", "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .output()
        .expect("openssl s_client");
    let probe_text = String::from_utf8_lossy(&probe.stdout);
    assert!(
        probe_text.contains("TLSv1.1"),
        "test server does not speak TLS 1.1: {probe_text}"
    );

    let r = StaticResolver::new()
        .with_mx(
            "old.example.test",
            DnssecStatus::Insecure,
            &[(10, "mx.old.example.test")],
        )
        .with_ip(
            "mx.old.example.test",
            DnssecStatus::Insecure,
            &[IpAddr::from([127, 0, 0, 1])],
        );
    let mut cfg = DeliveryConfig::with_mode(DeliveryMode::Mx);
    cfg.mx_port = port;
    cfg.connect_timeout = Seconds(3);
    cfg.command_timeout = Seconds(5);
    let d = Deliverer::with_parts(&cfg, Arc::new(r), Arc::new(MemoryStsCache::default()))
        .expect("deliverer");
    let o = send(&d, "a@old.example.test").await;
    match &o.result {
        AttemptResult::Transient(r) => assert_eq!(r.enhanced, "4.7.5", "{r}"),
        other => panic!("TLS 1.1-only server must defer: {other:?}"),
    }
    let status = server.wait().expect("server exit");
    assert!(status.success());
    let log: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&out).expect("server log")).expect("json");
    let plaintext: Vec<String> = log["plaintext"]
        .as_array()
        .expect("plaintext")
        .iter()
        .filter_map(|v| v.as_str().map(str::to_ascii_uppercase))
        .collect();
    // Both clients (openssl and phigate) reached STARTTLS; phigate's handshake failed.
    assert_eq!(
        plaintext.iter().filter(|c| *c == "STARTTLS").count(),
        2,
        "{log}"
    );
    assert!(
        !plaintext
            .iter()
            .any(|c| c.starts_with("MAIL") || c.starts_with("RCPT") || c == "DATA"),
        "plaintext mail commands: {log}"
    );
    let handshakes = log["handshake"].as_array().expect("handshake");
    assert_eq!(handshakes.len(), 2, "{log}");
    assert_eq!(handshakes[0], "TLSv1.1", "{log}");
    assert!(
        handshakes[1]
            .as_str()
            .is_some_and(|s| s.starts_with("failed")),
        "{log}"
    );
    assert!(log["tls"].as_array().is_some_and(|t| t.iter().all(|c| !c
        .as_str()
        .unwrap_or("")
        .to_ascii_uppercase()
        .starts_with("MAIL"))));
}

// ---------------------------------------------------------------------------------
// `phigate serve` in mode = "mx" delivering to Postfix over DANE-EE

struct Postfix {
    conf: PathBuf,
}
impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = Command::new("postfix")
            .args(["-c"])
            .arg(&self.conf)
            .arg("stop")
            .output();
    }
}

fn start_postfix(lab: &Path, listen: SocketAddr, domain: &str, cert: &Cert) -> Postfix {
    let conf = lab.join("conf");
    for d in ["conf", "queue", "data", "mailboxes"] {
        std::fs::create_dir_all(lab.join(d)).expect("postfix dirs");
    }
    std::fs::write(lab.join("cert.pem"), &cert.cert_pem).expect("cert");
    std::fs::write(lab.join("key.pem"), &cert.key_pem).expect("key");
    sh(
        lab,
        &format!(
            "chown postfix {0}/data && chown nobody:nogroup {0}/mailboxes && chmod 755 {0} && chmod 600 {0}/key.pem && \
             cp /usr/share/postfix/master.cf.dist conf/master.cf && \
             sed -i -E 's/^smtp(\\s+)inet(\\s+)n(\\s+)-(\\s+)y/{1}\\1inet\\2n\\3-\\4n/' conf/master.cf && \
             sed -i -E '/^[a-z0-9.:]+\\s+(unix|inet|fifo|pass)(-dgram)?\\s/ s/^(\\S+\\s+\\S+\\s+\\S+\\s+\\S+\\s+)y(\\s)/\\1n\\2/' conf/master.cf",
            lab.display(),
            listen
        ),
    );
    let l = lab.display();
    let uid = sh(lab, "id -u nobody");
    let gid = sh(lab, "getent group nogroup | cut -d: -f3");
    std::fs::write(
        conf.join("main.cf"),
        format!(
            "compatibility_level = 3.6\nqueue_directory = {l}/queue\ndata_directory = {l}/data\nmail_owner = postfix\n\
             setgid_group = postdrop\nmyhostname = mx.{domain}\nmydomain = {domain}\nmydestination = localhost\n\
             inet_interfaces = loopback-only\ninet_protocols = ipv4\nmynetworks = 127.0.0.0/8\n\
             maillog_file_prefixes = /var, /dev/stdout, {l}\nmaillog_file = {l}/maillog\nalias_maps =\nalias_database =\n\
             smtputf8_enable = no\nvirtual_mailbox_domains = {domain}\nvirtual_mailbox_base = {l}/mailboxes\n\
             virtual_mailbox_maps = static:inbox/\nvirtual_uid_maps = static:{uid}\nvirtual_gid_maps = static:{gid}\n\
             virtual_minimum_uid = 1\nsmtpd_tls_cert_file = {l}/cert.pem\nsmtpd_tls_key_file = {l}/key.pem\n\
             smtpd_tls_security_level = encrypt\nsmtpd_tls_received_header = yes\nsmtpd_tls_loglevel = 1\n"
        ),
    )
    .expect("main.cf");
    sh(
        lab,
        &format!(
            "(postfix -c {0} check && postfix -c {0} start) 2>&1 || {{ cat maillog; exit 1; }}",
            conf.display()
        ),
    );
    let pf = Postfix { conf };
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(listen).is_err() {
        assert!(Instant::now() < deadline, "postfix smtpd did not listen");
        std::thread::sleep(Duration::from_millis(100));
    }
    pf
}

#[test]
fn serve_binary_delivers_to_postfix_over_dane() {
    if !have_dns_tools() || !require_tool("postfix") || !require_tool("swaks") {
        return;
    }
    if !nix_root() {
        // Postfix's master needs root; CI runs as root.
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "postfix test needs root"
        );
        eprintln!("SKIP: postfix needs root");
        return;
    }
    let port = free_port();
    let pf_cert = self_signed("mx-pf.lab.test");
    let tlsa = spki_sha256(pf_cert.leaf_der());
    let dir = tempfile::tempdir().expect("tmp");
    let lab = start_lab(
        dir.path(),
        &format!(
            "pf IN MX 10 mx-pf\nmx-pf IN A 127.0.0.7\n_{port}._tcp.mx-pf IN TLSA 3 1 1 {tlsa}\n"
        ),
        "",
    );
    // Postfix's unprivileged processes must reach their directories under the tempdir.
    sh(dir.path(), "chmod 755 .");
    let pf_dir = dir.path().join("postfix");
    std::fs::create_dir_all(&pf_dir).expect("pf dir");
    let _pf = start_postfix(&pf_dir, lo(7, port), "pf.lab.test", &pf_cert);

    let mut gw = Gateway::start(GwOpts {
        delivery: Some(format!(
            "mode = \"mx\"\nmx_port = {port}\ndns_servers = [\"{}\"]\ndnssec_trust_anchor = \"{}\"\nconnect_timeout = \"3s\"\n",
            lab.dns,
            lab.anchor.display()
        )),
        ..GwOpts::default()
    });
    let out = Command::new("swaks")
        .args(["--server", "127.0.0.1", "--port"])
        .arg(gw.port("smtps").to_string())
        .args(["--tls-on-connect", "--tls-verify", "--tls-ca-path"])
        .arg(&gw.pki.ca)
        .args(["--ehlo", "ehr.clinic.test", "--from", "sender@clinic.test"])
        .args([
            "--to",
            "patient@pf.lab.test",
            "--header",
            "Subject: dane lab",
        ])
        .output()
        .expect("run swaks");
    assert!(
        out.status.success(),
        "swaks: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let maildir = pf_dir.join("mailboxes/inbox/new");
    let deadline = Instant::now() + Duration::from_secs(30);
    let file = loop {
        let found = std::fs::read_dir(&maildir)
            .ok()
            .and_then(|mut d| d.next())
            .and_then(Result::ok)
            .map(|e| e.path());
        if let Some(f) = found {
            break f;
        }
        assert!(
            Instant::now() < deadline,
            "no mail in Postfix's Maildir.\nphigate log:\n{}\nmaillog:\n{}",
            gw.log(),
            std::fs::read_to_string(pf_dir.join("maillog")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let mail = std::fs::read_to_string(file).expect("mail");
    assert!(mail.contains("Subject: dane lab"), "{mail}");
    // Postfix's Received header and log record the TLS phigate negotiated.
    assert!(mail.contains("(using TLSv1.3"), "{mail}");
    let maillog = std::fs::read_to_string(pf_dir.join("maillog")).unwrap_or_default();
    assert!(
        maillog.contains("TLS connection established from") && maillog.contains("TLSv1.3"),
        "{maillog}"
    );
    let log = gw.log();
    assert!(
        log.lines().any(|l| l.contains("delivery attempt")
            && l.contains("delivered")
            && l.contains("dane-ee")
            && l.contains("mx-pf.lab.test")),
        "{log}"
    );

    // `phigate tls check` with the same configuration: DANE required, TLS established.
    let out = Command::new(common::BIN)
        .args(["tls", "check", "pf.lab.test", "--json", "--config"])
        .arg(&gw.config)
        .output()
        .expect("tls check");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["mx_dnssec"], "secure", "{report}");
    assert_eq!(report["hosts"][0]["requirement"], "dane", "{report}");
    assert_eq!(report["hosts"][0]["hop"]["method"], "dane-ee", "{report}");
    assert_eq!(report["would_deliver"], true, "{report}");
    let table = Command::new(common::BIN)
        .args(["tls", "check", "pf.lab.test", "--config"])
        .arg(&gw.config)
        .output()
        .expect("tls check");
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("would deliver    yes"), "{text}");

    // `phigate sts` while the daemon holds the spool: a clear refusal.
    let config = gw.config.clone();
    let sts = |args: &[&str]| {
        let out = Command::new(common::BIN)
            .arg("sts")
            .args(args)
            .arg("--config")
            .arg(&config)
            .output()
            .expect("phigate sts");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (ok, _, err) = sts(&["show", "pf.lab.test"]);
    assert!(!ok && err.contains("in use by a running phigate"), "{err}");
    gw.kill();

    // With the daemon stopped: a policy put in the spool cache is shown, then purged.
    {
        use phigate::delivery::sts::{CacheEntry, StsCache};
        use phigate::delivery::sts_store::SpoolStsCache;
        use phigate::tls::mta_sts::{CachedPolicy, Policy};
        let ring = phigate::spool::Keyring::load(&gw.tmp.path().join("master.keys")).expect("keys");
        let spool = phigate::spool::Spool::open(&gw.data.join("spool"), ring).expect("spool");
        let cache = SpoolStsCache::new(Arc::new(spool));
        let policy =
            Policy::parse("version: STSv1\nmode: enforce\nmx: mx-pf.lab.test\nmax_age: 86400\n")
                .expect("policy");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("rt");
        rt.block_on(cache.put(
            "pf.lab.test",
            CacheEntry::fetched(CachedPolicy {
                policy,
                txt_id: "7".into(),
                fetched_at: phigate::types::now_secs(),
            }),
        ))
        .expect("put");
    }
    let (ok, out, err) = sts(&["show", "pf.lab.test", "--json"]);
    assert!(ok, "{err}");
    let shown: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(shown["mode"], "enforce", "{shown}");
    assert_eq!(shown["mx"][0], "mx-pf.lab.test", "{shown}");
    let (ok, out, _) = sts(&["purge", "pf.lab.test"]);
    assert!(ok && out.contains("purged"), "{out}");
    let (ok, out, _) = sts(&["show", "pf.lab.test"]);
    assert!(ok && out.contains("no cached MTA-STS policy"), "{out}");
}

fn nix_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// `per_destination_connections` caps simultaneous connections to one domain; with a
/// higher cap the same deliveries do overlap (so the first check is not vacuous). The
/// receiver holds each end-of-DATA reply until three transactions are open at once, so
/// under cap 3 all three must overlap (20 s is a hang guard), and under cap 1 a second
/// connection has half a second per message to show up (it must not).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_destination_connection_limit() {
    let port = free_port();
    let cert = self_signed("mx.limit.test");
    let seen = receiver_with(lo(8, port), &cert, None).await;
    let r = StaticResolver::new()
        .with_mx(
            "limit.test",
            DnssecStatus::Insecure,
            &[(10, "mx.limit.test")],
        )
        .with_ip(
            "mx.limit.test",
            DnssecStatus::Insecure,
            &[IpAddr::from([127, 0, 0, 8])],
        );
    for (limit, want_max, most) in [
        (1, 1, Duration::from_secs(1)),
        (3, 3, Duration::from_secs(20)),
    ] {
        seen.lock().expect("log").hold = Some((3, most));
        let mut cfg = DeliveryConfig::with_mode(DeliveryMode::Mx);
        cfg.mx_port = port;
        cfg.per_destination_connections = limit;
        let d = Deliverer::with_parts(
            &cfg,
            Arc::new(r.clone()),
            Arc::new(MemoryStsCache::default()),
        )
        .expect("deliverer");
        seen.lock().expect("log").max_active = 0;
        let outs = futures_join3(&d).await;
        assert!(outs.iter().all(delivered), "{outs:?}");
        let max = seen.lock().expect("log").max_active;
        assert_eq!(max, want_max, "limit {limit}");
    }
}

async fn futures_join3(d: &Deliverer) -> Vec<RcptOutcome> {
    let (a, b, c) = tokio::join!(
        send(d, "a@limit.test"),
        send(d, "b@limit.test"),
        send(d, "c@limit.test")
    );
    vec![a, b, c]
}

// ---------------------------------------------------------------------------------
// MTA-STS over the signed zone

/// A private CA (certificate, key, PEM) for the policy host and MX certificates.
fn private_ca() -> (rcgen::Certificate, KeyPair, String) {
    let key = KeyPair::generate().expect("ca key");
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name
        .push(DnType::CommonName, "lab MTA-STS CA");
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = p.self_signed(&key).expect("ca");
    let pem = ca.pem();
    (ca, key, pem)
}

/// A leaf for `names` signed by `ca`; the chain is [leaf].
fn signed_leaf(ca: &(rcgen::Certificate, KeyPair, String), names: &[&str]) -> Cert {
    let key = KeyPair::generate().expect("leaf key");
    let mut p = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
        .expect("params");
    p.distinguished_name.push(DnType::CommonName, names[0]);
    let leaf = p.signed_by(&key, &ca.0, &ca.1).expect("sign leaf");
    Cert {
        cert_pem: leaf.pem(),
        key_pem: key.serialize_pem(),
        chain: vec![leaf.der().clone()],
        key_der: key.serialize_der(),
    }
}

/// HTTPS server answering every request with `body` as an MTA-STS policy (as in
/// delivery_client.rs), on `addr`.
async fn policy_server(addr: SocketAddr, cert: &Cert, body: &'static str) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(cert.chain.clone(), cert.key())
            .expect("server cert"),
    );
    let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
    let listener = TcpListener::bind(addr).await.expect("bind policy server");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut r = BufReader::new(tls);
                let mut line = String::new();
                while matches!(r.read_line(&mut line).await, Ok(n) if n > 0) {
                    if line.trim_end().is_empty() {
                        break;
                    }
                    line.clear();
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
}

/// MTA-STS with every DNS answer (MX, A, `_mta-sts` TXT, the policy host's A) from the
/// DNSSEC-signed zone through hickory: an `enforce` policy with a matching MX delivers
/// with method mta-sts; an MX outside the policy is deferred and never contacted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mta_sts_over_a_real_signed_zone() {
    if !have_dns_tools() {
        return;
    }
    let port = free_port();
    let sts_port = free_port();
    let ca = private_ca();
    let mx_cert = signed_leaf(&ca, &["mx-sts.lab.test"]);
    let other_cert = signed_leaf(&ca, &["mx-other.lab.test"]);
    let policy_cert = signed_leaf(&ca, &["mta-sts.sts.lab.test", "mta-sts.stsbad.lab.test"]);
    // No TLSA anywhere here: DANE does not apply, MTA-STS decides.
    let lab_records = "sts IN MX 10 mx-sts\nmx-sts IN A 127.0.0.9\n\
         _mta-sts.sts IN TXT \"v=STSv1; id=20240101;\"\nmta-sts.sts IN A 127.0.0.10\n\
         stsbad IN MX 10 mx-other\nmx-other IN A 127.0.0.11\n\
         _mta-sts.stsbad IN TXT \"v=STSv1; id=20240101;\"\nmta-sts.stsbad IN A 127.0.0.10\n";
    let dir = tempfile::tempdir().expect("tmp");
    let lab = start_lab(dir.path(), lab_records, "");
    policy_server(
        lo(10, sts_port),
        &policy_cert,
        "version: STSv1\nmode: enforce\nmx: mx-sts.lab.test\nmax_age: 86400\n",
    )
    .await;
    let sts_log = receiver(lo(9, port), &mx_cert).await;
    let other_log = receiver(lo(11, port), &other_cert).await;

    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.2).expect("ca file");
    let mut cfg = DeliveryConfig::with_mode(DeliveryMode::Mx);
    cfg.mx_port = port;
    cfg.dns_servers = vec![lab.dns];
    cfg.dnssec_trust_anchor = Some(lab.anchor.clone());
    cfg.connect_timeout = Seconds(3);
    cfg.command_timeout = Seconds(5);
    cfg.sts_fetch_timeout = Seconds(3);
    cfg.extra_ca_file = Some(ca_file);
    let d = Deliverer::new(&cfg)
        .await
        .expect("DNSSEC probe passes with the lab anchor")
        .with_helo_name("gw.test")
        .with_sts_port(sts_port);

    let o = send(&d, "a@sts.lab.test").await;
    assert!(delivered(&o), "{o:?}");
    let hop = o.hop.expect("hop");
    assert_eq!(hop.method, "mta-sts");
    assert_eq!(hop.mx_host, "mx-sts.lab.test");
    assert_eq!(hop.ip, "127.0.0.9");
    assert!(hop.dane.contains("no secure TLSA"), "{}", hop.dane);
    assert_eq!(
        hop.peer_cert_sha256,
        hex::encode(Sha256::digest(mx_cert.leaf_der()))
    );
    assert_eq!(sts_log.lock().expect("log").messages.len(), 1);

    let o = send(&d, "a@stsbad.lab.test").await;
    match &o.result {
        AttemptResult::Transient(r) => {
            assert!(r.enhanced.starts_with("4.7."), "{r}");
            assert!(r.text.contains("MTA-STS"), "{r}");
        }
        other => panic!("MX outside the enforce policy must defer: {other:?}"),
    }
    assert_eq!(
        other_log.lock().expect("log").connections,
        0,
        "MX outside the policy was contacted"
    );

    let report = d.tls_check("sts.lab.test").await;
    assert_eq!(
        report.mta_sts_mode.as_deref(),
        Some("enforce"),
        "{report:?}"
    );
    assert_eq!(report.hosts[0].requirement, "mta-sts", "{report:?}");
}
