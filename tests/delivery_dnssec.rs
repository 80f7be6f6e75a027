//! In-process DNSSEC validation by hickory against a real authoritative server: knotd on
//! 127.0.0.53:<port> serving `lab.test.` signed by ldns-signzone with one CSK, which is
//! also the test's trust anchor (so no DS chain above lab.test is needed).
//! Missing tools skip the test, or fail it when CI=true.

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

/// Builds and serves the zone; returns the server guard, its address and the anchor path.
fn lab(dir: &Path) -> Option<(Knot, SocketAddr, std::path::PathBuf)> {
    for tool in ["ldns-keygen", "ldns-signzone", "knotd", "kdig"] {
        if !have(tool) {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "missing peer tool {tool}"
            );
            eprintln!("skipping: {tool} not installed");
            return None;
        }
    }
    let port = std::net::UdpSocket::bind("127.0.0.53:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let csk = run(dir, "ldns-keygen -a ECDSAP256SHA256 -k lab.test");
    std::fs::write(
        dir.join("lab.test.zone"),
        format!(
            "$ORIGIN lab.test.\n$TTL 300\n@ IN SOA ns hostmaster 1 3600 600 86400 300\n@ IN NS ns\nns IN A 127.0.0.53\n\
             @ IN MX 10 mx\nmx IN A 127.0.0.1\n_25._tcp.mx IN TLSA 3 1 1 {TLSA_HEX}\n\
             badmx IN A 127.0.0.1\n_25._tcp.badmx IN TLSA 3 1 1 {TLSA_HEX}\n\
             _mta-sts IN TXT \"v=STSv1; id=20240101;\"\nnull IN MX 0 .\n"
        ),
    )
    .ok()?;
    run(
        dir,
        &format!("ldns-signzone -o lab.test. -f lab.test.zone.signed lab.test.zone {csk}"),
    );
    // Corrupt one signed RRset after signing: its RRSIG no longer verifies (bogus).
    let signed = std::fs::read_to_string(dir.join("lab.test.zone.signed")).ok()?;
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
    std::fs::write(dir.join("lab.test.zone.signed"), tampered + "\n").ok()?;
    let anchor = dir.join("anchor.dnskey");
    std::fs::copy(dir.join(format!("{csk}.key")), &anchor).ok()?;
    std::fs::create_dir_all(dir.join("db")).ok()?;
    let d = dir.display();
    std::fs::write(
        dir.join("knot.conf"),
        format!(
            "server:\n    rundir: \"{d}\"\n    listen: 127.0.0.53@{port}\ndatabase:\n    storage: \"{d}/db\"\n\
             template:\n  - id: default\n    storage: \"{d}\"\n    zonefile-sync: -1\n    zonefile-load: whole\n    journal-content: none\n\
             zone:\n  - domain: lab.test\n    file: lab.test.zone.signed\n"
        ),
    )
    .ok()?;
    let child = Command::new("knotd")
        .args(["-c", &dir.join("knot.conf").display().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let guard = Knot(child);
    for _ in 0..50 {
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
    // The tampered TLSA RRset must never come back as usable.
    match r.tlsa("_25._tcp.badmx.lab.test").await {
        Err(DnsError::Bogus(_)) | Err(DnsError::Temporary { .. }) => {}
        Ok(a) => assert_ne!(
            a.status,
            DnssecStatus::Secure,
            "tampered TLSA validated as secure"
        ),
        Err(e) => panic!("{e}"),
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
    let other = dir.path().join("other.dnskey");
    let key = run(dir.path(), "ldns-keygen -a ECDSAP256SHA256 -k lab.test");
    std::fs::copy(dir.path().join(format!("{key}.key")), &other).expect("copy");
    cfg.dnssec_trust_anchor = Some(other);
    let err = Deliverer::new(&cfg)
        .await
        .err()
        .expect("must refuse to start");
    assert!(err.to_string().contains("DNSSEC"), "{err}");
}
