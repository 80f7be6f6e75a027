//! DKIM signing keys (L1): `[[dkim]]` entries loaded once, a message signed by the key
//! whose `match_from` covers its From domain, and key generation for
//! `phigate dkim generate`. Signing is mail-auth's (Apache-2.0/MIT), on ring.
//! Key material never reaches a log line or an error message.

use crate::config::DkimConfig;
use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{DkimSigner, Done};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivateKeyDer;
use std::path::{Path, PathBuf};

/// Signed when present, and `From` twice so another From cannot be added later
/// (oversigning, RFC 6376 §8.15).
pub const DEFAULT_HEADERS: &[&str] = &[
    "From",
    "From",
    "Reply-To",
    "Subject",
    "Date",
    "Message-ID",
    "To",
    "Cc",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
];

#[derive(Debug, thiserror::Error)]
pub enum DkimError {
    #[error("{}: {reason}", path.display())]
    Key { path: PathBuf, reason: String },
    #[error("key generation failed: {0}")]
    Generate(String),
}

enum AnySigner {
    Rsa(DkimSigner<RsaKey<Sha256>, Done>),
    Ed25519(DkimSigner<Ed25519Key, Done>),
}

struct Entry {
    domain: String,
    selector: String,
    patterns: Vec<String>,
    signer: AnySigner,
    /// What `p=` must hold: SubjectPublicKeyInfo for RSA, the raw key for Ed25519.
    public: Vec<u8>,
    /// `k=`: `rsa` or `ed25519`.
    kind: &'static str,
}

/// One key and the record it needs, for `phigate dkim check`.
#[derive(Debug, Clone)]
pub struct KeyRecord {
    pub domain: String,
    pub selector: String,
    pub kind: &'static str,
    public: Vec<u8>,
}

impl KeyRecord {
    /// `<selector>._domainkey.<domain>`.
    pub fn name(&self) -> String {
        format!("{}._domainkey.{}", self.selector, self.domain)
    }

    /// Does a published TXT value carry this key? (`v=DKIM1`, same `k=`, same `p=`;
    /// an RSA key may be published as SubjectPublicKeyInfo or bare RSAPublicKey.)
    pub fn matches(&self, txt: &str) -> bool {
        use base64::Engine;
        let tags: std::collections::HashMap<String, String> = txt
            .split(';')
            .filter_map(|t| t.split_once('='))
            .map(|(k, v)| {
                let v: String = v.chars().filter(|c| !c.is_whitespace()).collect();
                (k.trim().to_ascii_lowercase(), v)
            })
            .collect();
        if tags.get("v").is_some_and(|v| v != "DKIM1") {
            return false;
        }
        if tags.get("k").map(String::as_str).unwrap_or("rsa") != self.kind {
            return false;
        }
        let Some(p) = tags
            .get("p")
            .and_then(|p| base64::engine::general_purpose::STANDARD.decode(p).ok())
        else {
            return false;
        };
        p == self.public || (self.kind == "rsa" && rsa_spki(&p) == self.public)
    }
}

/// The loaded signing keys.
#[derive(Default)]
pub struct DkimKeys {
    entries: Vec<Entry>,
}

impl std::fmt::Debug for DkimKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let domains: Vec<&str> = self.entries.iter().map(|e| e.domain.as_str()).collect();
        f.debug_struct("DkimKeys")
            .field("domains", &domains)
            .finish()
    }
}

/// The key in a PEM file: Ed25519 (PKCS#8) or RSA (PKCS#1 or PKCS#8).
fn load_key(path: &Path) -> Result<KeyKind, DkimError> {
    let err = |reason: &str| DkimError::Key {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    let pem = std::fs::read(path).map_err(|e| err(&e.to_string()))?;
    let der = PrivateKeyDer::from_pem_slice(&pem).map_err(|_| err("no PEM private key"))?;
    if let PrivateKeyDer::Pkcs8(p) = &der {
        if let Ok(k) = Ed25519Key::from_pkcs8_der(p.secret_pkcs8_der()) {
            return Ok(KeyKind::Ed25519(k));
        }
    }
    RsaKey::<Sha256>::from_key_der(der)
        .map(KeyKind::Rsa)
        .map_err(|_| err("not an Ed25519 or RSA private key"))
}

enum KeyKind {
    Rsa(RsaKey<Sha256>),
    Ed25519(Ed25519Key),
}

/// Does `pattern` (`clinic.example` or `*.clinic.example`) cover `domain`?
fn covers(pattern: &str, domain: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => domain
            .strip_suffix(suffix)
            .is_some_and(|head| head.ends_with('.') && head.len() > 1),
        None => pattern.eq_ignore_ascii_case(domain),
    }
}

/// The domain of the message's first From address, lower-cased.
pub fn from_domain(content: &[u8]) -> Option<String> {
    let msg = crate::message::parse_headers(content)?;
    let addr = msg.from()?.first()?.address()?;
    Some(addr.rsplit_once('@')?.1.to_ascii_lowercase())
}

impl DkimKeys {
    pub fn load(cfgs: &[DkimConfig]) -> Result<DkimKeys, DkimError> {
        let mut entries = Vec::new();
        for c in cfgs {
            let headers: Vec<String> = match &c.headers {
                Some(h) => h.clone(),
                None => DEFAULT_HEADERS.iter().map(|h| h.to_string()).collect(),
            };
            let (signer, public, kind) = match load_key(&c.key_file)? {
                KeyKind::Rsa(k) => {
                    let public = rsa_spki(&k.public_key());
                    let s = DkimSigner::from_key(k)
                        .domain(c.domain.clone())
                        .selector(c.selector.clone())
                        .headers(headers);
                    (AnySigner::Rsa(s), public, "rsa")
                }
                KeyKind::Ed25519(k) => {
                    let public = k.public_key();
                    let s = DkimSigner::from_key(k)
                        .domain(c.domain.clone())
                        .selector(c.selector.clone())
                        .headers(headers);
                    (AnySigner::Ed25519(s), public, "ed25519")
                }
            };
            let patterns = if c.match_from.is_empty() {
                vec![c.domain.to_ascii_lowercase()]
            } else {
                c.match_from
                    .iter()
                    .map(|p| p.to_ascii_lowercase())
                    .collect()
            };
            entries.push(Entry {
                domain: c.domain.to_ascii_lowercase(),
                selector: c.selector.clone(),
                patterns,
                signer,
                public,
                kind,
            });
        }
        Ok(DkimKeys { entries })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The records `domain`'s keys need published.
    pub fn records_for(&self, domain: &str) -> Vec<KeyRecord> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        self.entries
            .iter()
            .filter(|e| e.domain == domain)
            .map(|e| KeyRecord {
                domain: e.domain.clone(),
                selector: e.selector.clone(),
                kind: e.kind,
                public: e.public.clone(),
            })
            .collect()
    }

    /// Is there a key for mail From `domain`?
    pub fn signs(&self, domain: &str) -> bool {
        self.entries
            .iter()
            .any(|e| e.patterns.iter().any(|p| covers(p, domain)))
    }

    /// `content` with a DKIM-Signature prepended, if a key covers its From domain. A
    /// signing failure leaves the message unsigned (and says so, without content).
    pub fn sign(&self, content: &[u8]) -> Option<Vec<u8>> {
        let domain = from_domain(content)?;
        let entry = self
            .entries
            .iter()
            .find(|e| e.patterns.iter().any(|p| covers(p, &domain)))?;
        let sig = match &entry.signer {
            AnySigner::Rsa(s) => s.sign(content),
            AnySigner::Ed25519(s) => s.sign(content),
        };
        match sig {
            Ok(sig) => {
                let mut out = sig.to_header().into_bytes();
                out.extend_from_slice(content);
                Some(out)
            }
            Err(e) => {
                tracing::warn!(signing_domain = %entry.domain, error = %e, "DKIM signing failed; sent unsigned");
                None
            }
        }
    }
}

/// Key algorithms `phigate dkim generate` makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Ed25519,
    Rsa2048,
}

/// A new key: its PEM and the `p=`/`k=` of its DNS record.
pub struct Generated {
    pub pem: String,
    pub record: String,
}

fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// DER length octets.
fn der_len(n: usize) -> Vec<u8> {
    match n {
        0..=127 => vec![n as u8],
        128..=255 => vec![0x81, n as u8],
        _ => vec![0x82, (n >> 8) as u8, n as u8],
    }
}

/// SubjectPublicKeyInfo around a PKCS#1 RSAPublicKey: the form `p=` is read as by
/// every verifier (RFC 6376 §3.6.1 via `openssl rsa -pubout`).
fn rsa_spki(pkcs1: &[u8]) -> Vec<u8> {
    // SEQUENCE { OID 1.2.840.113549.1.1.1, NULL }
    let alg: &[u8] = &[
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    let mut bits = vec![0x03];
    bits.extend(der_len(pkcs1.len() + 1));
    bits.push(0);
    bits.extend_from_slice(pkcs1);
    let mut out = vec![0x30];
    out.extend(der_len(alg.len() + bits.len()));
    out.extend_from_slice(alg);
    out.extend(bits);
    out
}

pub fn generate(alg: Algorithm) -> Result<Generated, DkimError> {
    use base64::Engine;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let gen_err = |e: mail_auth::Error| DkimError::Generate(e.to_string());
    match alg {
        Algorithm::Ed25519 => {
            let pair =
                mail_auth::dkim::generate::DkimKeyPair::generate_ed25519().map_err(gen_err)?;
            Ok(Generated {
                pem: pem("PRIVATE KEY", pair.private_key()),
                record: format!("v=DKIM1; k=ed25519; p={}", b64(pair.public_key())),
            })
        }
        Algorithm::Rsa2048 => {
            let pair =
                mail_auth::dkim::generate::DkimKeyPair::generate_rsa(2048).map_err(gen_err)?;
            Ok(Generated {
                pem: pem("RSA PRIVATE KEY", pair.private_key()),
                record: format!("v=DKIM1; k=rsa; p={}", b64(&rsa_spki(pair.public_key()))),
            })
        }
    }
}

/// A TXT record value as zone-file strings of at most 255 octets each.
pub fn txt_strings(record: &str) -> String {
    record
        .as_bytes()
        .chunks(255)
        .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_cover_exact_and_subdomains() {
        assert!(covers("clinic.example", "CLINIC.example"));
        assert!(covers("*.clinic.example", "lab.clinic.example"));
        assert!(!covers("*.clinic.example", "clinic.example"));
        assert!(!covers("*.clinic.example", "evilclinic.example"));
        assert!(!covers("clinic.example", "lab.clinic.example"));
    }

    #[test]
    fn generated_keys_load_and_sign() {
        let dir = tempfile::tempdir().expect("tmp");
        for (alg, k) in [(Algorithm::Ed25519, "ed25519"), (Algorithm::Rsa2048, "rsa")] {
            let g = generate(alg).expect("generate");
            assert!(g.record.starts_with(&format!("v=DKIM1; k={k}; p=")));
            let path = dir.path().join(format!("{k}.key"));
            std::fs::write(&path, &g.pem).expect("write");
            let keys = DkimKeys::load(&[DkimConfig {
                domain: "clinic.example".into(),
                selector: "s1".into(),
                key_file: path,
                headers: None,
                match_from: vec![],
            }])
            .expect("load");
            let msg =
                b"From: Ann <ann@clinic.example>\r\nTo: p@x.example\r\nSubject: hi\r\n\r\nbody\r\n";
            let signed = keys.sign(msg).expect("signed");
            let text = String::from_utf8_lossy(&signed);
            assert!(text.starts_with("DKIM-Signature: "), "{text}");
            assert!(text.contains("d=clinic.example") && text.contains("s=s1"));
            assert!(signed.ends_with(msg));
            assert!(keys.sign(b"From: x@other.example\r\n\r\nb\r\n").is_none());
            let rec = &keys.records_for("Clinic.Example.")[0];
            assert_eq!(rec.name(), "s1._domainkey.clinic.example");
            assert!(
                rec.matches(&g.record),
                "the generated record matches its key"
            );
            let other = generate(alg).expect("generate");
            assert!(!rec.matches(&other.record), "another key's record does not");
            assert!(!rec.matches("v=DKIM1; k=rsa; p="));
        }
    }
}
