//! TLS configuration audit of both listener kinds with an independent scanner: testssl
//! (Debian `testssl.sh`) runs against the implicit-TLS and the STARTTLS listener in
//! parallel, and its JSON must show: no SSLv2/SSLv3/TLS 1.0/TLS 1.1; TLS 1.2 and 1.3
//! offered; only AEAD suites (no CBC), none NULL, anonymous, export, RC4 or 3DES;
//! forward secrecy for every suite; no client-initiated renegotiation; the configured
//! certificate served with a chain that verifies against the test CA. Findings and
//! severities are recorded in docs/tls-audit.md.

mod common;
use common::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

/// id -> (severity, finding) from a `--jsonfile-pretty` report.
type Findings = BTreeMap<String, (String, String)>;

fn testssl(port: u16, starttls: bool, ca: &Path, out: &Path) -> Findings {
    let mut cmd = Command::new("testssl");
    cmd.args(["--quiet", "--color", "0", "--warnings", "batch"])
        // Protocols, cipher categories, forward secrecy, server defaults (certificate
        // and chain), renegotiation, and every cipher per protocol.
        .args(["-p", "-s", "-f", "-S", "-R", "-E"])
        .arg("--jsonfile-pretty")
        .arg(out)
        .arg("--add-ca")
        .arg(ca);
    if starttls {
        cmd.args(["--starttls", "smtp"]);
    }
    let run = cmd
        .arg(format!("127.0.0.1:{port}"))
        .output()
        .expect("run testssl");
    // testssl's exit code is not pass/fail; the JSON is.
    let text = std::fs::read_to_string(out).unwrap_or_else(|e| {
        panic!(
            "testssl wrote no JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&run.stdout),
            String::from_utf8_lossy(&run.stderr)
        )
    });
    let json: Value = serde_json::from_str(&text).expect("testssl JSON");
    let scan = &json["scanResult"][0];
    let mut findings = Findings::new();
    if let Some(sections) = scan.as_object() {
        for section in sections.values().filter_map(Value::as_array) {
            for f in section {
                let s = |k: &str| f[k].as_str().unwrap_or("").to_string();
                findings.insert(s("id"), (s("severity"), s("finding")));
            }
        }
    }
    assert!(
        findings.contains_key("TLS1_2"),
        "testssl did not reach the server: {text}"
    );
    findings
}

fn finding<'a>(f: &'a Findings, id: &str) -> &'a str {
    f.get(id)
        .map(|(_, text)| text.as_str())
        .unwrap_or_else(|| panic!("testssl reported no `{id}`: {f:#?}"))
}

fn audit(kind: &str, f: &Findings, cert_sha256: &str) {
    for p in ["SSLv2", "SSLv3", "TLS1", "TLS1_1"] {
        assert_eq!(finding(f, p), "not offered", "{kind}: {p}");
    }
    assert!(
        finding(f, "TLS1_2").starts_with("offered"),
        "{kind}: TLS 1.2"
    );
    assert!(
        finding(f, "TLS1_3").starts_with("offered"),
        "{kind}: TLS 1.3"
    );
    for c in [
        "cipherlist_NULL",
        "cipherlist_aNULL",
        "cipherlist_EXPORT",
        "cipherlist_LOW",
        "cipherlist_3DES_IDEA",
        // AVERAGE is testssl's category for the CBC (non-AEAD) suites.
        "cipherlist_AVERAGE",
    ] {
        assert_eq!(finding(f, c), "not offered", "{kind}: {c}");
    }
    assert!(finding(f, "cipherlist_STRONG").starts_with("offered"));
    // Every cipher offered, per protocol (-E): AEAD and ECDHE (TLS 1.3 is always both).
    let ciphers: Vec<&String> = f
        .iter()
        .filter(|(id, _)| id.starts_with("cipher-tls") || id.starts_with("cipher_x"))
        .map(|(_, (_, text))| text)
        .collect();
    assert!(!ciphers.is_empty(), "{kind}: no per-cipher results");
    for c in &ciphers {
        assert!(
            ["GCM", "CHACHA20", "CCM"].iter().any(|a| c.contains(a)),
            "{kind}: non-AEAD suite offered: {c}"
        );
        for bad in ["NULL", "EXP", "RC4", "DES", "anon", "CBC", "ADH", "AECDH"] {
            assert!(!c.contains(bad), "{kind}: weak suite offered: {c}");
        }
        // The key-exchange column: ECDH/DH are ephemeral here; plain RSA would not be.
        assert!(
            c.contains(" ECDH ") || c.contains(" DH "),
            "{kind}: suite without forward secrecy: {c}"
        );
    }
    assert!(finding(f, "PFS").starts_with("offered"), "{kind}: PFS");
    // Renegotiation: client-initiated refused; RFC 5746 signalling is harmless.
    assert!(
        finding(f, "secure_client_renego").contains("not vulnerable"),
        "{kind}: client renegotiation: {}",
        finding(f, "secure_client_renego")
    );
    let (sev, _) = &f["secure_renego"];
    assert!(
        sev == "OK" || sev == "INFO",
        "{kind}: insecure renegotiation: {:?}",
        f["secure_renego"]
    );
    // The configured certificate, verified against the test CA, for the right names.
    assert_eq!(
        finding(f, "cert_fingerprintSHA256").to_ascii_lowercase(),
        cert_sha256,
        "{kind}: a different certificate is served"
    );
    assert_eq!(
        finding(f, "cert_chain_of_trust"),
        "passed.",
        "{kind}: chain"
    );
    assert!(finding(f, "cert_trust").starts_with("Ok"), "{kind}: name");
    // Nothing critical; HIGH only for properties of the generated test certificate (no
    // CRL/OCSP URI; rcgen's default validity to 4096), not of phigate's TLS stack.
    for (id, (sev, text)) in f {
        let allowed_high = id.starts_with("cert_revocation") || id == "cert_validityPeriod";
        assert!(
            sev != "CRITICAL" && (sev != "HIGH" || allowed_high),
            "{kind}: {sev} {id}: {text}"
        );
    }
}

#[test]
fn both_listener_kinds_pass_the_testssl_audit() {
    if !require_tool("testssl") || !require_tool("openssl") {
        return;
    }
    let gw = Gateway::start(GwOpts::default());
    let out = gw.tmp.path();
    let ca = gw.pki.ca.clone();
    let (implicit, starttls) = (gw.port("smtps"), gw.port("submission"));
    // ~1 minute each: run both at once.
    let (ca2, out2) = (ca.clone(), out.join("starttls.json"));
    let stls = std::thread::spawn(move || testssl(starttls, true, &ca2, &out2));
    let imp = testssl(implicit, false, &ca, &out.join("implicit.json"));
    let stls = stls.join().expect("testssl STARTTLS thread");
    let fp = pem_fingerprint(&gw.pki.cert);
    for (kind, f) in [("implicit", &imp), ("starttls", &stls)] {
        // Printed for docs/tls-audit.md (shown with --nocapture).
        for (id, (sev, text)) in f {
            if (sev != "OK" && sev != "INFO") || id.starts_with("cipher-") || id.contains("renego")
            {
                println!("{kind}: {sev} {id}: {text}");
            }
        }
        audit(kind, f, &fp);
    }
}
