//! In-process DNSSEC validation by hickory against a real authoritative server: knotd on
//! 127.0.0.53:<port> serving `lab.test.` signed by ldns-signzone with one CSK, which is
//! also the test's trust anchor (so no DS chain above lab.test is needed).
//! Missing tools, or any failure to set the lab up, skip the test (with a SKIP line) or
//! fail it when CI=true.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use phigate::config::{DeliveryConfig, DeliveryMode, Seconds};
use phigate::delivery::Deliverer;
use phigate::dns::{DnsError, DnssecStatus, HickoryResolver, Resolver, ResolverSettings};

const TLSA_HEX: &str = "8f1a3d5e6b7c9d0e1f2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f80";

struct Knot(Child);
impl Drop for Knot {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn run(dir: &Path, cmd: &str) -> String {
    let out = Command::new("sh")
        .args(["-c", cmd])
        .current_dir(dir)
        .output()
        .expect("sh");
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A lab setup step failed: fatal under CI=true, else a visible skip.
fn setup_failed(what: &str, e: impl std::fmt::Display) {
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "DNSSEC lab setup failed (CI=true): {what}: {e}"
    );
    eprintln!("SKIP: DNSSEC lab setup failed: {what}: {e}");
}

/// `r?` for lab setup: an error fails under CI=true, else skips the test.
macro_rules! step {
    ($what:expr, $r:expr) => {
        match $r {
            Ok(v) => v,
            Err(e) => {
                setup_failed($what, e);
                return None;
            }
        }
    };
}

/// Writes `lab.test.zone` (SOA serial `serial`, `extra` lines appended), signs it with
/// the CSK and corrupts one signed RRset after signing: its RRSIG no longer verifies.
fn sign_zone(dir: &Path, csk: &str, serial: u32, extra: &str) -> Result<(), String> {
    let e = |what: &str, err: std::io::Error| format!("{what}: {err}");
    std::fs::write(
        dir.join("lab.test.zone"),
        format!(
            "$ORIGIN lab.test.\n$TTL 300\n@ IN SOA ns hostmaster {serial} 3600 600 86400 300\n@ IN NS ns\nns IN A 127.0.0.53\n\
             @ IN MX 10 mx\nmx IN A 127.0.0.1\n_25._tcp.mx IN TLSA 3 1 1 {TLSA_HEX}\n\
             badmx IN A 127.0.0.1\n_25._tcp.badmx IN TLSA 3 1 1 {TLSA_HEX}\n\
             _mta-sts IN TXT \"v=STSv1; id=20240101;\"\nnull IN MX 0 .\n{extra}"
        ),
    )
    .map_err(|err| e("write zone", err))?;
    run(
        dir,
        &format!("ldns-signzone -o lab.test. -f lab.test.zone.signed lab.test.zone {csk}"),
    );
    let signed = std::fs::read_to_string(dir.join("lab.test.zone.signed"))
        .map_err(|err| e("read signed zone", err))?;
    let tampered = signed
        .lines()
        .map(|l| {
            if l.starts_with("_25._tcp.badmx.lab.test.") && l.contains("\tTLSA\t") {
                l.replace(&TLSA_HEX[..8], "00000000")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert_ne!(
        signed.trim(),
        tampered.trim(),
        "tampering must change the zone"
    );
    std::fs::write(dir.join("lab.test.zone.signed"), tampered + "\n")
        .map_err(|err| e("write tampered zone", err))
}

/// The running lab zone replaced: re-signed with `extra` at `serial` and reloaded by
/// knotd; returns once `name` answers TXT.
fn resign(dir: &Path, serial: u32, extra: &str, addr: SocketAddr, name: &str) {
    let csk = std::fs::read_to_string(dir.join("csk.name")).expect("csk name");
    sign_zone(dir, csk.trim(), serial, extra).expect("sign zone");
    run(
        dir,
        &format!(
            "knotc -c {} zone-reload lab.test",
            dir.join("knot.conf").display()
        ),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let out = Command::new("kdig")
            .args([
                "+short",
                "+time=1",
                "+retry=0",
                &format!("@{}", addr.ip()),
                "-p",
                &addr.port().to_string(),
                "TXT",
                name,
            ])
            .output()
            .expect("kdig");
        if !out.stdout.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "knotd did not serve {name} after the reload (hang guard)"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Builds and serves the zone; returns the server guard, its address and the anchor path.
/// None (after a SKIP line) when the lab cannot be built outside CI.
fn lab(dir: &Path) -> Option<(Knot, SocketAddr, std::path::PathBuf)> {
    lab_with(dir, "")
}

/// The lab, with `extra` zone-file lines (relative names) signed into the zone.
fn lab_with(dir: &Path, extra: &str) -> Option<(Knot, SocketAddr, std::path::PathBuf)> {
    lab_keys(dir, extra, false)
}

/// The lab; with `split`, signed by a KSK and a separate ZSK and anchored at the KSK
/// only (a private zone as enterprises run them), else by one CSK.
fn lab_keys(
    dir: &Path,
    extra: &str,
    split: bool,
) -> Option<(Knot, SocketAddr, std::path::PathBuf)> {
    for tool in ["ldns-keygen", "ldns-signzone", "knotd", "kdig"] {
        if !have(tool) {
            step!("missing peer tool", Err(tool));
        }
    }
    let port = step!(
        "bind 127.0.0.53",
        std::net::UdpSocket::bind("127.0.0.53:0").and_then(|s| s.local_addr())
    )
    .port();
    let ksk = run(dir, "ldns-keygen -a ECDSAP256SHA256 -k lab.test");
    // ldns-signzone takes the key files to sign with; the first is the anchor.
    let keys = if split {
        format!(
            "{ksk} {}",
            run(dir, "ldns-keygen -a ECDSAP256SHA256 lab.test")
        )
    } else {
        ksk.clone()
    };
    step!(
        "keep key names",
        std::fs::write(dir.join("csk.name"), &keys)
    );
    step!("sign zone", sign_zone(dir, &keys, 1, extra));
    let anchor = dir.join("anchor.dnskey");
    step!(
        "copy anchor",
        std::fs::copy(dir.join(format!("{ksk}.key")), &anchor)
    );
    step!("db dir", std::fs::create_dir_all(dir.join("db")));
    let d = dir.display();
    step!(
        "write knot.conf",
        std::fs::write(
        dir.join("knot.conf"),
        format!(
            "server:\n    rundir: \"{d}\"\n    listen: 127.0.0.53@{port}\ndatabase:\n    storage: \"{d}/db\"\n\
             template:\n  - id: default\n    storage: \"{d}\"\n    zonefile-sync: -1\n    zonefile-load: whole\n    journal-content: none\n\
             zone:\n  - domain: lab.test\n    file: lab.test.zone.signed\n"
        ),
    ));
    let child = step!(
        "spawn knotd",
        Command::new("knotd")
            .args(["-c", &dir.join("knot.conf").display().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
    );
    let mut guard = Knot(child);
    // Ready once it answers for the zone; a knotd that exits or never answers is a setup
    // failure, not a pass. The deadline is a hang guard only.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(st)) = guard.0.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = guard.0.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut err);
            }
            step!("knotd exited", Err(format!("{st}: {err}")));
        }
        if std::time::Instant::now() > deadline {
            step!("knotd readiness", Err("no SOA answer in 30 s (hang guard)"));
        }
        let ok = Command::new("kdig")
            .args([
                "+short",
                "+time=1",
                "+retry=0",
                "@127.0.0.53",
                "-p",
                &port.to_string(),
                "SOA",
                "lab.test",
            ])
            .output()
            .map(|o| !o.stdout.is_empty())
            .unwrap_or(false);
        if ok {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Some((guard, SocketAddr::from(([127, 0, 0, 53], port)), anchor))
}

#[tokio::test]
async fn hickory_validates_the_lab_zone() {
    let dir = tempfile::tempdir().expect("tmp");
    let Some((_knot, addr, anchor)) = lab(dir.path()) else {
        return;
    };
    validates_lab(dir.path(), addr, anchor).await;
}

/// A private zone with a KSK/ZSK split, anchored at its KSK alone (no DS above it):
/// answers signed by the ZSK are secure, tampered ones bogus.
#[tokio::test]
async fn a_private_zone_anchored_at_its_ksk_validates() {
    let dir = tempfile::tempdir().expect("tmp");
    let Some((_knot, addr, anchor)) = lab_keys(dir.path(), "", true) else {
        return;
    };
    let anchor_text = std::fs::read_to_string(&anchor).expect("anchor");
    assert!(
        anchor_text.contains("DNSKEY\t257") || anchor_text.contains("DNSKEY 257"),
        "{anchor_text}"
    );
    let signed = std::fs::read_to_string(dir.path().join("lab.test.zone.signed")).expect("zone");
    assert_eq!(
        signed.lines().filter(|l| l.contains("\tDNSKEY\t")).count(),
        2,
        "KSK and ZSK published: {signed}"
    );
    validates_lab(dir.path(), addr, anchor).await;
}

async fn validates_lab(dir: &Path, addr: SocketAddr, anchor: std::path::PathBuf) {
    let settings = ResolverSettings {
        servers: vec![addr],
        trust_anchor: Some(anchor.clone()),
        timeout: Some(Duration::from_secs(3)),
    };
    let r = HickoryResolver::new(&settings).expect("resolver");
    let mx = r.mx("lab.test").await.expect("mx");
    assert_eq!(mx.status, DnssecStatus::Secure);
    assert_eq!(mx.records[0].exchange, "mx.lab.test");
    let ip = r.ip("mx.lab.test").await.expect("ip");
    assert_eq!(ip.status, DnssecStatus::Secure);
    let tlsa = r.tlsa("_25._tcp.mx.lab.test").await.expect("tlsa");
    assert_eq!(tlsa.status, DnssecStatus::Secure);
    assert_eq!(hex::encode(&tlsa.records[0].data), TLSA_HEX);
    let txt = r.txt("_mta-sts.lab.test").await.expect("txt");
    assert_eq!(txt.records, vec!["v=STSv1; id=20240101;".to_string()]);
    // The tampered TLSA RRset must come back bogus (or as a temporary failure): an
    // answer, even one marked insecure, would let delivery skip DANE for the host.
    match r.tlsa("_25._tcp.badmx.lab.test").await {
        Err(DnsError::Bogus(_)) | Err(DnsError::Temporary { .. }) => {}
        Ok(a) => panic!("tampered TLSA answered ({:?}), not bogus", a.status),
        Err(e) => panic!("tampered TLSA: expected bogus or temporary, got {e}"),
    }

    // Start-up check: validation works with the right anchor...
    let mut cfg = DeliveryConfig::with_mode(DeliveryMode::Mx);
    cfg.dns_servers = vec![addr];
    cfg.dnssec_trust_anchor = Some(anchor);
    cfg.connect_timeout = Seconds(3);
    let d = Deliverer::new(&cfg)
        .await
        .expect("DNSSEC works with the lab anchor");
    // ...and tls_check reports DANE as the requirement for the MX.
    let report = d.tls_check("lab.test").await;
    assert_eq!(report.mx_dnssec, "secure");
    assert_eq!(report.hosts[0].requirement, "dane", "{report:?}");
    assert!(
        !report.hosts[0].would_deliver,
        "nothing listens on 127.0.0.1:25 in the test"
    );
    let null = d.tls_check("null.lab.test").await;
    assert!(null.route_error.is_some_and(|e| e.contains("null MX")));

    // ...and it fails closed with an anchor that does not sign the zone.
    let other = dir.join("other.dnskey");
    let key = run(dir, "ldns-keygen -a ECDSAP256SHA256 -k lab.test");
    std::fs::copy(dir.join(format!("{key}.key")), &other).expect("copy");
    cfg.dnssec_trust_anchor = Some(other);
    let err = Deliverer::new(&cfg)
        .await
        .err()
        .expect("must refuse to start");
    assert!(err.to_string().contains("DNSSEC"), "{err}");
}

/// Fill the lab's server address and anchor into a config written with the
/// `DNSADDR` and `ANCHOR` placeholders.
fn point_at_lab(gw: &common::Gateway, addr: SocketAddr, anchor: &Path) {
    let cfg = std::fs::read_to_string(&gw.config).expect("config");
    std::fs::write(
        &gw.config,
        cfg.replace("DNSADDR", &addr.to_string())
            .replace("ANCHOR", &anchor.display().to_string()),
    )
    .expect("config");
}

/// `phigate dkim check` against the signed lab zone: one selector published with its key
/// (ok, DNSSEC secure), one published with another key (mismatch, exit 1); and dkimpy
/// verifies a signed sandbox copy against the record served by knotd.
#[test]
fn dkim_records_in_the_signed_zone() {
    use common::{Gateway, GwOpts};
    let dir = tempfile::tempdir().expect("tmp");
    let (k1, k2) = (dir.path().join("k1.key"), dir.path().join("k2.key"));
    let mut opts = GwOpts::spool();
    opts.delivery = Some(
        "mode = \"sandbox\"\ndns_servers = [\"DNSADDR\"]\ndnssec_trust_anchor = \"ANCHOR\"\n"
            .into(),
    );
    opts.server_extra += &format!(
        "\n[[dkim]]\ndomain = \"lab.test\"\nselector = \"k1\"\nkey_file = \"{}\"\n\
         \n[[dkim]]\ndomain = \"lab.test\"\nselector = \"k2\"\nkey_file = \"{}\"\nmatch_from = [\"other.lab.test\"]\n",
        k1.display(),
        k2.display()
    );
    let mut gw = Gateway::configure(opts);
    let generate = |sel: &str, path: &Path| {
        let out = gw.cli_ok(&[
            "dkim",
            "generate",
            "lab.test",
            "--selector",
            sel,
            "--algorithm",
            "ed25519",
            "--key-file",
            &path.display().to_string(),
        ]);
        out.split_once(" IN TXT ")
            .expect("record")
            .1
            .trim()
            .to_string()
    };
    let rec1 = generate("k1", &k1);
    let _ = generate("k2", &k2);
    // k2's name carries a different key's record.
    let stray = dir.path().join("stray.key");
    let wrong = generate("stray", &stray);
    let extra = format!(
        "k1._domainkey IN TXT {rec1}\nk2._domainkey IN TXT {wrong}\n\
         _smtp._tls IN TXT \"v=TLSRPTv1; rua=mailto:tlsrpt@lab.test\"\n"
    );
    let Some((_knot, addr, anchor)) = lab_with(dir.path(), &extra) else {
        return;
    };
    point_at_lab(&gw, addr, &anchor);
    let out = gw.cli(&["dkim", "check", "lab.test"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a mismatch fails the check: {stdout}"
    );
    assert!(
        stdout.contains("k1._domainkey.lab.test  ok") && stdout.contains("DNSSEC secure"),
        "{stdout}"
    );
    assert!(
        stdout.contains("k2._domainkey.lab.test  mismatch"),
        "{stdout}"
    );
    // tls check names the domain's TLS-RPT record and whether phigate signs for it.
    let report = gw.cli_ok(&["tls", "check", "lab.test"]);
    assert!(
        report.contains("TLS-RPT          v=TLSRPTv1; rua=mailto:tlsrpt@lab.test"),
        "{report}"
    );
    assert!(report.contains("DKIM key         yes"), "{report}");

    // A signed copy verified by dkimpy against the record knotd serves.
    gw.launch();
    let id = gw.send_eml(
        b"From: <results@lab.test>\r\nTo: <p@example.net>\r\nSubject: r\r\n\r\nlab result\r\n",
    );
    let msgs = gw.wait_messages(1, Duration::from_secs(30));
    let copy = dir.path().join("signed.eml");
    std::fs::write(&copy, &msgs.iter().find(|m| m.0 == id).expect("copy").1).expect("copy");
    let v = common::run_python(
        &common::peers_dir().join("dkim_verify.py"),
        &serde_json::json!({"messages": [copy], "dns": addr.to_string()}),
    );
    assert_eq!(v[0]["ok"], true, "{v}");
    assert_eq!(v[0]["d"], "lab.test");
}

/// A child process killed with the test.
struct Peer(Child);
impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a Python peer whose stdout goes to `log`; waits for its "ready" line.
fn python_peer(script: &str, args: &[String], log: &Path) -> Peer {
    let child = Command::new(common::PYTHON)
        .arg(common::peers_dir().join(script))
        .args(args)
        .stdout(std::fs::File::create(log).expect("peer log"))
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {script}: {e}"));
    let peer = Peer(child);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(log).is_ok_and(|s| s.contains("ready")) {
        assert!(
            std::time::Instant::now() < deadline,
            "{script} {args:?} did not start (hang guard)"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    peer
}

/// A hostile MX: answers EHLO without STARTTLS and nothing else.
fn no_starttls_mx(addr: SocketAddr) {
    let listener = std::net::TcpListener::bind(addr).expect("bind no-STARTTLS MX");
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                use std::io::{BufRead, Write};
                let _ = conn.write_all(b"220 nostls ESMTP\r\n");
                let mut reader = std::io::BufReader::new(conn.try_clone().expect("clone"));
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap_or(0) > 0 {
                    let cmd = line.to_ascii_uppercase();
                    let answer: &[u8] = if cmd.starts_with("EHLO") {
                        b"250-nostls\r\n250 8BITMIME\r\n"
                    } else if cmd.starts_with("QUIT") {
                        let _ = conn.write_all(b"221 bye\r\n");
                        return;
                    } else {
                        b"502 5.5.1 no\r\n"
                    };
                    if conn.write_all(answer).is_err() {
                        return;
                    }
                    line.clear();
                }
            });
        }
    });
}

/// Files named `N.<ext>` in `dir`, by N.
fn numbered(dir: &Path, ext: &str) -> Vec<std::path::PathBuf> {
    let mut v: Vec<(u32, std::path::PathBuf)> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == ext))
                .filter_map(|p| Some((p.file_stem()?.to_str()?.parse().ok()?, p)))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v.into_iter().map(|(_, p)| p).collect()
}

fn wait_files(dir: &Path, ext: &str, n: usize) -> Vec<std::path::PathBuf> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let files = numbered(dir, ext);
        if files.len() >= n {
            return files;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{n} .{ext} file(s) in {} (hang guard), have {}",
            dir.display(),
            files.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A CA and a certificate for `name` (the HTTPS report receiver): (ca, cert, key) paths.
fn report_pki(
    dir: &Path,
    name: &str,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().expect("ca key");
    let ca = p.self_signed(&ca_key).expect("ca");
    let leaf_key = KeyPair::generate().expect("leaf key");
    let leaf = CertificateParams::new(vec![name.to_string()])
        .expect("leaf params")
        .signed_by(&leaf_key, &ca, &ca_key)
        .expect("leaf");
    let w = |file: &str, text: String| {
        let path = dir.join(file);
        std::fs::write(&path, text).expect("write pki");
        path
    };
    (
        w("report-ca.pem", ca.pem()),
        w("reports.pem", leaf.pem()),
        w("reports.key", leaf_key.serialize_pem()),
    )
}

/// RFC 8460 end to end: `rpt.lab.test` (in the signed zone, with a `_smtp._tls` record
/// naming an HTTPS receiver and a mailbox) has three MX hosts on loopback: one without
/// STARTTLS, one whose certificate matches none of its DNSSEC-signed TLSA records, and a
/// good one. One message makes one session of each kind; the counts survive a restart;
/// `tlsrpt send-now` posts the gzipped JSON report to a real HTTPS server and mails it
/// (DKIM-signed) through the queue to a real receiving MTA. Both copies are gunzipped and
/// checked against an RFC 8460 schema by Python, hold the right counts and types and no
/// trace of the recipient, and the report mail's own delivery is never counted.
#[test]
fn tlsrpt_reports_by_https_and_mail() {
    use common::{Gateway, GwOpts};
    if !common::require_tool(common::PYTHON) {
        return;
    }
    let modules = Command::new(common::PYTHON)
        .args(["-c", "import aiosmtpd, jsonschema, dkim"])
        .status()
        .is_ok_and(|s| s.success());
    if !modules && !common::require_tool("python3-aiosmtpd+jsonschema+dkim") {
        return;
    }
    const CANARY: &str = "ZQXcanary4417";
    let dir = tempfile::tempdir().expect("tmp");
    let mx_port = common::free_port();
    let https_port = common::free_port();
    let (ca, rcert, rkey) = report_pki(dir.path(), "reports.lab.test");
    let dkim_key = dir.path().join("r1.key");
    let mut opts = GwOpts::spool();
    opts.delivery = Some(format!(
        "mode = \"mx\"\nmx_port = {mx_port}\ndns_servers = [\"DNSADDR\"]\n\
         dnssec_trust_anchor = \"ANCHOR\"\nextra_ca_file = \"{}\"\nconnect_timeout = \"5s\"\n\
         [delivery.domains.\"vfy.lab.test\"]\ntls_level = \"verify\"\n",
        ca.display()
    ));
    opts.server_extra += &format!(
        "\n[[dkim]]\ndomain = \"lab.test\"\nselector = \"r1\"\nkey_file = \"{}\"\n\
         \n[tlsrpt]\norganization_name = \"Phigate Test Clinic\"\n\
         contact_info = \"mailto:postmaster@lab.test\"\nfrom = \"tlsrpt@lab.test\"\n",
        dkim_key.display()
    );
    let mut gw = Gateway::configure(opts);
    let record = gw.cli_ok(&[
        "dkim",
        "generate",
        "lab.test",
        "--selector",
        "r1",
        "--algorithm",
        "ed25519",
        "--key-file",
        &dkim_key.display().to_string(),
    ]);
    let record = record.split_once(" IN TXT ").expect("record").1.trim();
    let extra = format!(
        "r1._domainkey IN TXT {record}\n\
         rpt IN MX 10 nostls.rpt\nrpt IN MX 20 dane.rpt\nrpt IN MX 30 good.rpt\n\
         nostls.rpt IN A 127.0.0.2\ndane.rpt IN A 127.0.0.3\ngood.rpt IN A 127.0.0.4\n\
         _{mx_port}._tcp.dane.rpt IN TLSA 3 1 1 {TLSA_HEX}\n\
         _smtp._tls.rpt IN TXT \"v=TLSRPTv1; rua=https://reports.lab.test:{https_port}/v1/tlsrpt,mailto:tlsrpt@sink.lab.test\"\n\
         reports IN A 127.0.0.1\n\
         sink IN MX 10 good.rpt\n_smtp._tls.sink IN TXT \"v=TLSRPTv1; rua=mailto:tlsrpt@sink.lab.test\"\n\
         vfy IN MX 10 good.rpt\n_smtp._tls.vfy IN TXT \"v=TLSRPTv1; rua=https://reports.lab.test:{https_port}/v1/vfy\"\n"
    );
    let Some((_knot, addr, anchor)) = lab_with(dir.path(), &extra) else {
        return;
    };
    point_at_lab(&gw, addr, &anchor);

    // The peers: three MX hosts on one port at three loopback addresses, and the HTTPS
    // report receiver.
    no_starttls_mx(SocketAddr::from(([127, 0, 0, 2], mx_port)));
    let (cert, key) = (
        gw.pki.cert.display().to_string(),
        gw.pki.key.display().to_string(),
    );
    let (dane_box, inbox, posts) = (
        dir.path().join("dane-box"),
        dir.path().join("inbox"),
        dir.path().join("posts"),
    );
    for d in [&dane_box, &inbox, &posts] {
        std::fs::create_dir_all(d).expect("peer dir");
    }
    let sink = |host: &str, out: &Path, log: &str| {
        python_peer(
            "tls_sink.py",
            &[
                mx_port.to_string(),
                cert.clone(),
                key.clone(),
                out.display().to_string(),
                host.to_string(),
            ],
            &dir.path().join(log),
        )
    };
    let _dane_mx = sink("127.0.0.3", &dane_box, "dane.log");
    let _good_mx = sink("127.0.0.4", &inbox, "good.log");
    let _https = python_peer(
        "https_sink.py",
        &[
            "127.0.0.1".into(),
            https_port.to_string(),
            rcert.display().to_string(),
            rkey.display().to_string(),
            posts.display().to_string(),
        ],
        &dir.path().join("https.log"),
    );
    gw.launch();

    // One message: the no-STARTTLS and DANE hosts fail, the good one takes it.
    let send = format!(
        "import smtplib, ssl\nctx = ssl.create_default_context()\nctx.check_hostname = False\n\
         ctx.verify_mode = ssl.CERT_NONE\ns = smtplib.SMTP_SSL('127.0.0.1', {}, context=ctx)\n\
         s.sendmail('results@lab.test', ['pt-{CANARY}@rpt.lab.test', 'pt2-{CANARY}@vfy.lab.test'], \
         b'From: <results@lab.test>\\r\\nTo: <pt-{CANARY}@rpt.lab.test>\\r\\n\
         Subject: labs {CANARY}\\r\\n\\r\\nresult {CANARY}\\r\\n')\ns.quit()\n",
        gw.port("smtps")
    );
    let out = Command::new(common::PYTHON)
        .args(["-c", &send])
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_files(&inbox, "eml", 1);
    let domain_row = |rows: &serde_json::Value, d: &str| {
        rows.as_array()
            .expect("rows")
            .iter()
            .find(|r| r["domain"] == d)
            .cloned()
    };
    // vfy.lab.test (level verify) refuses the good host's certificate, from a CA phigate
    // does not trust, and keeps deferring: once that is counted, the message is deleted.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while domain_row(&gw.cli_json(&["tlsrpt", "show"]), "vfy.lab.test").is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "vfy.lab.test not counted (hang guard)"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for m in gw.cli_json(&["queue", "list"]).as_array().expect("queue") {
        let id = m["id"].as_str().expect("id");
        gw.cli_ok(&["queue", "delete", id]);
    }
    gw.wait_drained(Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        numbered(&dane_box, "eml").is_empty(),
        "DANE mismatch got mail"
    );
    let shown = gw.cli_json(&["tlsrpt", "show"]);
    let vfy = domain_row(&shown, "vfy.lab.test").expect("vfy.lab.test counted");
    assert_eq!(vfy["successes"], 0, "{shown}");
    let vfy_failures = vfy["failures"].as_u64().expect("failures");
    assert!(vfy_failures >= 1, "{shown}");
    let row = domain_row(&shown, "rpt.lab.test").expect("rpt.lab.test counted");
    assert_eq!(
        (row["successes"].clone(), row["failures"].clone()),
        (1.into(), 2.into()),
        "{shown}"
    );
    // The counts are in the store: a restart keeps them.
    gw.stop();
    gw.launch();
    let again = gw.cli_json(&["tlsrpt", "show"]);
    assert_eq!(again, shown, "aggregates after a restart");

    let sent = gw.cli_json(&["tlsrpt", "send-now"]);
    let row = domain_row(&sent, "rpt.lab.test").expect("sent row");
    assert_eq!(row["outcome"], "sent", "{sent}");
    assert_eq!(row["delivered"].as_array().map(Vec::len), Some(2), "{sent}");
    assert_eq!(
        domain_row(&sent, "vfy.lab.test").expect("vfy row")["outcome"],
        "sent"
    );
    let bodies = wait_files(&posts, "body", 2);
    let mails = wait_files(&inbox, "eml", 2);
    gw.wait_drained(Duration::from_secs(60));
    let mut post = Vec::new();
    for body in &bodies {
        let head: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(body.with_extension("json")).expect("head"),
        )
        .expect("head json");
        assert_eq!(
            head["headers"]["content-type"], "application/tlsrpt+gzip",
            "{head}"
        );
        post.push((
            head["path"].as_str().expect("path").to_string(),
            body.clone(),
        ));
    }
    post.sort();
    let (vfy_post, post): (Vec<_>, Vec<_>) = post.into_iter().partition(|(p, _)| p == "/v1/vfy");
    assert_eq!(post.len(), 1, "one report per domain");
    let post: Vec<_> = post.into_iter().map(|(_, b)| b).collect();
    let vfy_post = &vfy_post.first().expect("vfy.lab.test report").1;
    let envelope: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(mails[1].with_extension("json")).expect("envelope"),
    )
    .expect("envelope json");
    assert_eq!(envelope["to"], serde_json::json!(["tlsrpt@sink.lab.test"]));
    assert_eq!(envelope["from"], "tlsrpt@lab.test");

    let checked = common::run_python(
        &common::peers_dir().join("tlsrpt_check.py"),
        &serde_json::json!({
            "schema": common::data_dir().join("tlsrpt/report.schema.json"),
            "reports": [
                {"kind": "https", "path": post[0]},
                {"kind": "mail", "path": mails[1]},
                {"kind": "https", "path": vfy_post},
            ],
        }),
    );
    let results = checked.as_array().expect("results");
    let vfy = &results[2];
    assert_eq!(vfy["ok"], true, "schema: {vfy}");
    let p = &vfy["report"]["policies"];
    assert_eq!(p.as_array().map(Vec::len), Some(1), "{vfy}");
    assert_eq!(p[0]["policy"]["policy-type"], "no-policy-found");
    assert_eq!(p[0]["policy"]["policy-domain"], "vfy.lab.test");
    assert_eq!(p[0]["summary"]["total-failure-session-count"], vfy_failures);
    let d = &p[0]["failure-details"][0];
    assert_eq!(d["result-type"], "certificate-not-trusted", "{d}");
    assert_eq!(d["receiving-mx-hostname"], "good.rpt.lab.test");
    assert_eq!(d["receiving-ip"], "127.0.0.4");
    assert!(!vfy.to_string().contains(CANARY));
    for c in &results[..2] {
        assert_eq!(c["ok"], true, "schema: {c}");
        let r = &c["report"];
        assert_eq!(r["organization-name"], "Phigate Test Clinic");
        assert_eq!(r["contact-info"], "mailto:postmaster@lab.test");
        assert!(
            r["date-range"]["start-datetime"].as_str() <= r["date-range"]["end-datetime"].as_str()
        );
        let policies = r["policies"].as_array().expect("policies");
        assert_eq!(policies.len(), 2, "{r}");
        let by = |t: &str| {
            policies
                .iter()
                .find(|p| p["policy"]["policy-type"] == t)
                .unwrap_or_else(|| panic!("no {t} policy in {r}"))
        };
        let dane = by("tlsa");
        assert_eq!(dane["policy"]["policy-domain"], "rpt.lab.test");
        assert_eq!(
            dane["policy"]["policy-string"],
            serde_json::json!([format!("3 1 1 {TLSA_HEX}")])
        );
        assert_eq!(
            dane["policy"]["mx-host"],
            serde_json::json!(["dane.rpt.lab.test"])
        );
        assert_eq!(dane["summary"]["total-successful-session-count"], 0);
        assert_eq!(dane["summary"]["total-failure-session-count"], 1);
        let d = &dane["failure-details"][0];
        assert_eq!(d["result-type"], "tlsa-invalid", "{d}");
        assert_eq!(d["receiving-mx-hostname"], "dane.rpt.lab.test");
        assert_eq!(d["receiving-ip"], "127.0.0.3");
        assert_eq!(d["sending-mta-ip"], "127.0.0.1");
        assert_eq!(d["failed-session-count"], 1);
        let none = by("no-policy-found");
        assert_eq!(none["summary"]["total-successful-session-count"], 1);
        assert_eq!(none["summary"]["total-failure-session-count"], 1);
        let d = &none["failure-details"][0];
        assert_eq!(d["result-type"], "starttls-not-supported", "{d}");
        assert_eq!(d["receiving-mx-hostname"], "nostls.rpt.lab.test");
        assert_eq!(d["receiving-ip"], "127.0.0.2");
        // Names, addresses and counts only: no trace of the recipient or the message.
        let text = r.to_string();
        assert!(!text.contains(CANARY) && !text.contains("pt-"), "{text}");
    }
    let mail = &checked[1];
    assert_eq!(
        mail["headers"]["TLS-Report-Domain"], "rpt.lab.test",
        "{mail}"
    );
    assert!(
        mail["filename"]
            .as_str()
            .is_some_and(|f| f.contains("!rpt.lab.test!") && f.ends_with(".json.gz")),
        "{mail}"
    );
    let raw = std::fs::read(&mails[1]).expect("report mail");
    let gz = std::fs::read(&post[0]).expect("posted report");
    for (form, bytes) in common::canary::forms(CANARY) {
        assert!(
            !common::canary::contains(&raw, &bytes),
            "canary ({form}) in the report mail"
        );
        assert!(
            !common::canary::contains(&gz, &bytes),
            "canary ({form}) in the posted report"
        );
    }
    // The report mail is DKIM-signed for lab.test, verified by dkimpy against knotd.
    let v = common::run_python(
        &common::peers_dir().join("dkim_verify.py"),
        &serde_json::json!({"messages": [mails[1]], "dns": addr.to_string()}),
    );
    assert_eq!(v[0]["ok"], true, "{v}");
    assert_eq!(v[0]["d"], "lab.test");
    // Sent reports are gone, and delivering the report mail (to sink.lab.test, which
    // asks for reports too) was never counted: no report loop.
    let after = gw.cli_json(&["tlsrpt", "show"]);
    assert_eq!(after, serde_json::json!([]), "{after}");
}

/// The selector of a signed copy, verified by dkimpy against the record knotd serves.
fn verified_selector(dir: &Path, name: &str, content: &[u8], dns: SocketAddr) -> String {
    let copy = dir.join(name);
    std::fs::write(&copy, content).expect("copy");
    let v = common::run_python(
        &common::peers_dir().join("dkim_verify.py"),
        &serde_json::json!({"messages": [copy], "dns": dns.to_string()}),
    );
    assert_eq!(v[0]["ok"], true, "dkimpy verifies {name}: {v}");
    assert_eq!(v[0]["d"], "lab.test");
    v[0]["s"].as_str().expect("s=").to_string()
}

/// `phigate dkim rotate` against the signed lab zone: the new key is added to the
/// config and loaded by the running daemon (no restart), but mail keeps being signed
/// with the old key until the new record is published; once knotd serves it the new
/// key signs, `dkim check` gives the old record's grace advice with a date, and both
/// survive a restart. Every copy passes dkimpy after DLP tagging and subject redaction.
#[test]
fn dkim_rotation_switches_once_the_record_is_published() {
    use common::{Gateway, GwOpts};
    let dir = tempfile::tempdir().expect("tmp");
    let k1 = dir.path().join("keys").join("lab.test.k1.key");
    let mut opts = GwOpts::spool();
    opts.delivery = Some(
        "mode = \"sandbox\"\ndns_servers = [\"DNSADDR\"]\ndnssec_trust_anchor = \"ANCHOR\"\n"
            .into(),
    );
    opts.server_extra += &format!(
        "\n[[dkim]]\ndomain = \"lab.test\"\nselector = \"k1\"\nkey_file = \"{}\"\n",
        k1.display()
    );
    opts.policy = Some(
        "[dlp]\nmode = \"enforce\"\n\n[default]\naction = \"accept\"\n\n[[rule]]\n\
         name = \"ssn-tag\"\naction = \"tag\"\nredact_subject = \"[Secure message]\"\n\
         [rule.match]\ndetectors = [\"ssn\"]\n"
            .into(),
    );
    let mut gw = Gateway::configure(opts);
    let out = gw.cli_ok(&[
        "dkim",
        "generate",
        "lab.test",
        "--selector",
        "k1",
        "--algorithm",
        "ed25519",
        "--key-file",
        &k1.display().to_string(),
    ]);
    let rec1 = out
        .split_once(" IN TXT ")
        .expect("record")
        .1
        .trim()
        .to_string();
    let k1_line = format!("k1._domainkey IN TXT {rec1}\n");
    let Some((_knot, addr, anchor)) = lab_with(dir.path(), &k1_line) else {
        return;
    };
    point_at_lab(&gw, addr, &anchor);
    gw.launch();
    let mail = |n: u32| {
        format!(
            "From: Lab <results@lab.test>\r\nTo: <p@example.net>\r\n\
             Subject: Results for SSN 536-22-8901 ({n})\r\nMessage-ID: <r{n}@lab.test>\r\n\
             MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Transfer-Encoding: 8bit\r\n\r\nPatient SSN 536-22-8901, Grüße.\r\n"
        )
        .into_bytes()
    };
    let send = |gw: &Gateway, n: u32, seen: usize| {
        let id = gw.send_eml(&mail(n));
        let msgs = gw.wait_messages(seen, Duration::from_secs(30));
        let copy = msgs.into_iter().find(|m| m.0 == id).expect("copy").1;
        let text = String::from_utf8_lossy(&copy).to_string();
        assert!(
            text.contains("X-Phigate-DLP:") && text.contains("Subject: [Secure message]"),
            "tagged and redacted before signing: {text}"
        );
        verified_selector(dir.path(), &format!("m{n}.eml"), &copy, addr)
    };

    // Rotate: the record alone on stdout, the key private, the entry in the config,
    // the running daemon reloaded.
    let rot = gw.cli(&["dkim", "rotate", "lab.test", "--selector", "k2"]);
    let stdout = String::from_utf8_lossy(&rot.stdout).to_string();
    let stderr = String::from_utf8_lossy(&rot.stderr).to_string();
    assert!(rot.status.success(), "{stdout}{stderr}");
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    let (name, rec2) = stdout.trim().split_once(" IN TXT ").expect("record");
    assert_eq!(name, "k2._domainkey.lab.test.");
    assert!(
        rec2.contains("k=ed25519"),
        "the old key's algorithm: {rec2}"
    );
    assert!(stderr.contains("the running daemon reloaded"), "{stderr}");
    let k2 = dir.path().join("keys").join("lab.test.k2.key");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&k2).expect("k2").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let cfg = std::fs::read_to_string(&gw.config).expect("config");
    assert!(cfg.contains("selector = \"k2\""), "{cfg}");
    gw.cli_ok(&["check-config"]);
    let again = gw.cli(&["dkim", "rotate", "lab.test", "--selector", "k2"]);
    assert!(!again.status.success(), "a selector is never reused");

    // k2's record not published yet: k1 still signs, check says k2 waits (exit 1).
    assert_eq!(
        send(&gw, 1, 1),
        "k1",
        "no signature the receiver cannot verify"
    );
    let check = gw.cli(&["dkim", "check", "lab.test"]);
    let text = String::from_utf8_lossy(&check.stdout).to_string();
    assert_eq!(check.status.code(), Some(1), "{text}");
    assert!(text.contains("k2._domainkey.lab.test  missing"), "{text}");
    assert!(
        text.contains("lab.test: signing with selector k1"),
        "{text}"
    );
    assert!(text.contains("k2: waiting for its record"), "{text}");

    // Published: the daemon switches on the next check, and the old record gets a date.
    resign(
        dir.path(),
        2,
        &format!("{k1_line}k2._domainkey IN TXT {rec2}\n"),
        addr,
        "k2._domainkey.lab.test",
    );
    let text = gw.cli_ok(&["dkim", "check", "lab.test"]);
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    let now = time::OffsetDateTime::now_utc();
    let today = now.format(&fmt).expect("date");
    let until = (now + time::Duration::days(7)).format(&fmt).expect("date");
    assert!(
        text.contains(&format!("lab.test: signing with selector k2 since {today}")),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "k1: replaced; keep its record published until {until}"
        )),
        "{text}"
    );
    assert_eq!(send(&gw, 2, 2), "k2");
    assert!(gw.log().contains("DKIM: the new key's record is published"));

    // After a restart k2 signs at once, and the takeover date is kept.
    gw.stop();
    gw.launch();
    assert_eq!(send(&gw, 3, 3), "k2");
    let text = gw.cli_ok(&["dkim", "check", "lab.test"]);
    assert!(
        text.contains(&format!("signing with selector k2 since {today}")),
        "{text}"
    );
    let secret = std::fs::read_to_string(&k2).expect("key");
    assert!(!gw.log().contains(secret.lines().nth(1).expect("b64")));
    gw.stop();
}
