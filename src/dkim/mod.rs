//! DKIM signing (L1): the `[[dkim]]` keys, swapped whole on reload, and a message
//! signed by the key whose `match_from` covers its From domain. Signing is mail-auth's
//! (Apache-2.0/MIT), on ring. Key material never reaches a log line or an error message.
//!
//! Rotation without a gap: when several entries share a signing domain and `match_from`
//! (a rotation group, in config order, oldest first), mail is signed with the newest key
//! whose TXT record has been seen published, and with the first one until then. Which
//! records are published is learnt through a lookup the server supplies (`rotation`).

mod generate;
pub mod rotation;

use generate::rsa_spki;
pub use generate::{generate, txt_strings, Algorithm, Generated};

use crate::config::DkimConfig;
use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{DkimSigner, Done};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivateKeyDer;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

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
    /// Index of the first entry of this entry's rotation group.
    group: usize,
    /// Its record was seen published by the last check (rotation groups only).
    published: AtomicBool,
}

impl Entry {
    fn covers(&self, domain: &str) -> bool {
        self.patterns.iter().any(|p| covers(p, domain))
    }

    fn name(&self) -> String {
        format!("{}._domainkey.{}", self.selector, self.domain)
    }

    fn record(&self) -> KeyRecord {
        KeyRecord {
            domain: self.domain.clone(),
            selector: self.selector.clone(),
            kind: self.kind,
            public: self.public.clone(),
            group: self.group,
        }
    }
}

/// One key and the record it needs, for `phigate dkim check`.
#[derive(Debug, Clone)]
pub struct KeyRecord {
    pub domain: String,
    pub selector: String,
    pub kind: &'static str,
    public: Vec<u8>,
    /// Records with the same `group` rotate: the newest published one signs.
    pub group: usize,
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
            let domain = c.domain.to_ascii_lowercase();
            let group = entries
                .iter()
                .position(|e: &Entry| e.domain == domain && e.patterns == patterns)
                .unwrap_or(entries.len());
            entries.push(Entry {
                domain,
                selector: c.selector.clone(),
                patterns,
                signer,
                public,
                kind,
                group,
                published: AtomicBool::new(false),
            });
        }
        Ok(DkimKeys { entries })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The records `domain`'s keys need published, in config order.
    pub fn records_for(&self, domain: &str) -> Vec<KeyRecord> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        self.entries
            .iter()
            .filter(|e| e.domain == domain)
            .map(Entry::record)
            .collect()
    }

    /// Is there a key for mail From `domain`?
    pub fn signs(&self, domain: &str) -> bool {
        self.entries.iter().any(|e| e.covers(domain))
    }

    fn rotating(&self, e: &Entry) -> bool {
        self.entries.iter().filter(|o| o.group == e.group).count() > 1
    }

    /// May `e` sign? A key alone in its group always; in a rotation, once its record
    /// has been seen published.
    fn live(&self, e: &Entry) -> bool {
        !self.rotating(e) || e.published.load(Ordering::Relaxed)
    }

    /// The key for mail From `domain`: the first entry covering it, or rather the
    /// newest live key of that entry's rotation group (the first while none is live).
    fn signer(&self, domain: &str) -> Option<&Entry> {
        let first = self.entries.iter().find(|e| e.covers(domain))?;
        let newest_live = self
            .entries
            .iter()
            .rev()
            .filter(|e| e.group == first.group)
            .find(|e| self.live(e));
        Some(newest_live.unwrap_or(first))
    }

    /// Each rotation group's members, oldest first, and the index of the one that signs.
    fn groups(&self) -> Vec<(Vec<KeyRecord>, usize)> {
        let mut out = Vec::new();
        for (i, e) in self.entries.iter().enumerate() {
            if e.group != i || !self.rotating(e) {
                continue;
            }
            let members: Vec<&Entry> = self.entries.iter().filter(|o| o.group == i).collect();
            let signer = members.iter().rposition(|o| self.live(o)).unwrap_or(0);
            out.push((members.iter().map(|m| m.record()).collect(), signer));
        }
        out
    }

    /// Records whose publication decides which key signs: those of rotation groups.
    pub fn to_check(&self) -> Vec<KeyRecord> {
        self.entries
            .iter()
            .filter(|e| self.rotating(e))
            .map(Entry::record)
            .collect()
    }

    /// Record whether `record` was found published.
    pub fn mark_published(&self, record: &KeyRecord, published: bool) {
        for e in &self.entries {
            if e.name() == record.name() && e.public == record.public {
                e.published.store(published, Ordering::Relaxed);
            }
        }
    }

    /// `content` with a DKIM-Signature prepended, if a key covers its From domain. A
    /// signing failure leaves the message unsigned (and says so, without content).
    pub fn sign(&self, content: &[u8]) -> Option<Vec<u8>> {
        // Without keys there is nothing to look up: skip parsing the From header.
        if self.entries.is_empty() {
            return None;
        }
        let domain = from_domain(content)?;
        let entry = self.signer(&domain)?;
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

/// The running signer: the loaded keys, replaced whole on reload (publication marks
/// carried over), and the rotation state.
pub struct Dkim {
    keys: RwLock<Arc<DkimKeys>>,
    rotation: rotation::Rotation,
}

impl std::fmt::Debug for Dkim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.keys().fmt(f)
    }
}

impl Dkim {
    /// `state` is where rotation switch times are kept (None: not kept, e.g. tests).
    pub fn new(keys: DkimKeys, state: Option<PathBuf>) -> Dkim {
        let rotation = rotation::Rotation::new(state);
        // A key that had taken over before a restart signs from the start (the first
        // check corrects this if its record has gone since).
        let since = rotation.state().since;
        for e in &keys.entries {
            if since.contains_key(&e.name()) {
                e.published.store(true, Ordering::Relaxed);
            }
        }
        Dkim {
            keys: RwLock::new(Arc::new(keys)),
            rotation,
        }
    }

    pub fn keys(&self) -> Arc<DkimKeys> {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Swap in reloaded keys; a record known to be published stays known.
    pub fn replace(&self, new: DkimKeys) {
        let old = self.keys();
        for e in &new.entries {
            let was = old.entries.iter().any(|o| {
                o.name() == e.name() && o.public == e.public && o.published.load(Ordering::Relaxed)
            });
            e.published.store(was, Ordering::Relaxed);
        }
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(new);
    }

    pub fn sign(&self, content: &[u8]) -> Option<Vec<u8>> {
        self.keys().sign(content)
    }

    pub fn signs(&self, domain: &str) -> bool {
        self.keys().signs(domain)
    }

    pub fn is_empty(&self) -> bool {
        self.keys().is_empty()
    }

    pub fn rotation(&self) -> &rotation::Rotation {
        &self.rotation
    }
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
