//! The stored form of an audit record and its cryptography.
//!
//! Stored value: `body_json | hmac(32)`. The body names the master key its keys were
//! derived from, the previous record's hash and the clear fields; person fields are
//! sealed (AES-256-GCM, AAD = tag ++ seq) into `sealed`. The HMAC covers
//! `tag ++ seq ++ prev_hash ++ body_json`. A record's hash is SHA-256 of the whole stored
//! value, which the next record carries as `prev`.
//!
//! Both keys come from HKDF-SHA256 over the master key with distinct `info` labels, so
//! neither reveals the master key or the other.

use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::event::AuditEvent;
use crate::spool::MasterKey;

const VERSION: u8 = 1;
const MAC_LEN: usize = 32;
const SALT: &[u8] = b"phigate-audit-v1";
const SEAL_TAG: &[u8] = b"phigate-audit-seal-v1";
const MAC_TAG: &[u8] = b"phigate-audit-mac-v1";
const HEAD_TAG: &[u8] = b"phigate-audit-head-v1";

pub type Hash = [u8; 32];

/// Keys derived from one master key.
pub struct AuditKeys {
    enc: Zeroizing<[u8; 32]>,
    mac: Zeroizing<[u8; 32]>,
}

impl AuditKeys {
    pub fn derive(master: &MasterKey) -> Self {
        let hk = hkdf::Hkdf::<Sha256>::new(Some(SALT), master.bytes());
        let mut enc = Zeroizing::new([0u8; 32]);
        let mut mac = Zeroizing::new([0u8; 32]);
        // 32 bytes is far below HKDF-SHA256's 8160-byte output limit.
        let _ = hk.expand(b"audit-encryption", enc.as_mut());
        let _ = hk.expand(b"audit-hmac", mac.as_mut());
        AuditKeys { enc, mac }
    }

    fn hmac(&self) -> Hmac<Sha256> {
        <Hmac<Sha256> as Mac>::new_from_slice(self.mac.as_ref())
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"))
    }

    fn record_mac(&self, seq: u64, prev: &Hash, body: &[u8]) -> [u8; MAC_LEN] {
        let mut m = self.hmac();
        m.update(MAC_TAG);
        m.update(&seq.to_be_bytes());
        m.update(prev);
        m.update(body);
        m.finalize().into_bytes().into()
    }

    /// MAC of a head or anchor marker (seq, hash).
    pub fn marker_mac(&self, seq: u64, hash: &Hash) -> String {
        let mut m = self.hmac();
        m.update(HEAD_TAG);
        m.update(&seq.to_be_bytes());
        m.update(hash);
        hex::encode(m.finalize().into_bytes())
    }

    fn seal(&self, seq: u64, plain: &[u8]) -> Vec<u8> {
        crate::spool::crypto::seal_detached(&self.enc, &seal_aad(seq), plain)
    }

    fn open(&self, seq: u64, sealed: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        crate::spool::crypto::open_detached(&self.enc, &seal_aad(seq), sealed)
    }
}

fn seal_aad(seq: u64) -> Vec<u8> {
    let mut aad = SEAL_TAG.to_vec();
    aad.extend_from_slice(&seq.to_be_bytes());
    aad
}

/// The clear JSON body of a stored record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Body {
    pub v: u8,
    pub seq: u64,
    /// Unix milliseconds.
    pub ts: u64,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub msg: Option<String>,
    /// Master key ID the record's keys derive from.
    pub key: String,
    /// Hex SHA-256 of the previous record's stored bytes (all zero for the first).
    pub prev: String,
    pub data: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed: Option<String>,
}

/// Encode one event as record `seq` chained after `prev`.
pub fn encode(
    keys: &AuditKeys,
    key_id: &str,
    seq: u64,
    ts_ms: u64,
    prev: &Hash,
    ev: &AuditEvent,
) -> Vec<u8> {
    let sealed = (!ev.private.is_empty()).then(|| {
        let plain = Zeroizing::new(serde_json::to_vec(&ev.private).unwrap_or_default());
        base64::engine::general_purpose::STANDARD.encode(keys.seal(seq, &plain))
    });
    let body = Body {
        v: VERSION,
        seq,
        ts: ts_ms,
        kind: ev.kind.as_str().to_string(),
        msg: ev.msg.map(|m| m.to_string()),
        key: key_id.to_string(),
        prev: hex::encode(prev),
        data: ev.data.clone(),
        sealed,
    };
    let mut out = serde_json::to_vec(&body).unwrap_or_default();
    let mac = keys.record_mac(seq, prev, &out);
    out.extend_from_slice(&mac);
    out
}

pub fn hash(stored: &[u8]) -> Hash {
    Sha256::digest(stored).into()
}

/// Why a stored record could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// Not a record at all (truncated bytes, bad JSON).
    Malformed,
    /// The named master key is not in the keyring.
    MissingKey(String),
    /// HMAC or decryption failed: altered.
    Auth,
}

/// Split and parse without checking the MAC.
pub fn parse(stored: &[u8]) -> Result<(Body, &[u8], &[u8]), DecodeError> {
    if stored.len() < MAC_LEN {
        return Err(DecodeError::Malformed);
    }
    let (body, mac) = stored.split_at(stored.len() - MAC_LEN);
    let parsed: Body = serde_json::from_slice(body).map_err(|_| DecodeError::Malformed)?;
    if parsed.v != VERSION {
        return Err(DecodeError::Malformed);
    }
    Ok((parsed, body, mac))
}

/// Check the MAC of a parsed record.
pub fn check_mac(keys: &AuditKeys, b: &Body, body: &[u8], mac: &[u8]) -> Result<(), DecodeError> {
    let prev = parse_hash(&b.prev).ok_or(DecodeError::Malformed)?;
    let mut m = keys.hmac();
    m.update(MAC_TAG);
    m.update(&b.seq.to_be_bytes());
    m.update(&prev);
    m.update(body);
    m.verify_slice(mac).map_err(|_| DecodeError::Auth)
}

/// Decrypt the person fields of an authenticated record.
pub fn open_private(keys: &AuditKeys, b: &Body) -> Result<Map<String, Value>, DecodeError> {
    let Some(s) = &b.sealed else {
        return Ok(Map::new());
    };
    let raw = base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|_| DecodeError::Malformed)?;
    let plain = keys.open(b.seq, &raw).ok_or(DecodeError::Auth)?;
    serde_json::from_slice(&plain).map_err(|_| DecodeError::Malformed)
}

pub fn parse_hash(s: &str) -> Option<Hash> {
    hex::decode(s).ok()?.try_into().ok()
}

/// A head or anchor marker in the AuditMeta tree: the last (or last purged) seq and the
/// hash of that record, MACed so it cannot be edited without the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    pub seq: u64,
    pub hash: String,
    pub key: String,
    pub mac: String,
}

impl Marker {
    pub fn new(keys: &AuditKeys, key_id: &str, seq: u64, hash: &Hash) -> Self {
        Marker {
            seq,
            hash: hex::encode(hash),
            key: key_id.to_string(),
            mac: keys.marker_mac(seq, hash),
        }
    }

    pub fn valid(&self, keys: &AuditKeys) -> bool {
        parse_hash(&self.hash).is_some_and(|h| keys.marker_mac(self.seq, &h) == self.mac)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::event::Kind;

    fn keys() -> AuditKeys {
        AuditKeys::derive(&MasterKey::from_bytes("k1", 0, [7u8; 32]))
    }

    #[test]
    fn round_trip_and_person_fields_are_sealed() {
        let k = keys();
        let ev = AuditEvent::new(Kind::Delivered)
            .field("code", 250)
            .person("recipient", "jane.doe@example.org");
        let stored = encode(&k, "k1", 5, 1000, &[1u8; 32], &ev);
        assert!(!String::from_utf8_lossy(&stored).contains("jane.doe"));
        let (b, body, mac) = parse(&stored).expect("parse");
        assert_eq!(b.seq, 5);
        check_mac(&k, &b, body, mac).expect("mac");
        let p = open_private(&k, &b).expect("open");
        assert_eq!(p["recipient"], "jane.doe@example.org");
    }

    #[test]
    fn flipped_byte_or_wrong_key_fails_mac() {
        let k = keys();
        let ev = AuditEvent::new(Kind::Spooled).field("key_id", "k1");
        let mut stored = encode(&k, "k1", 1, 1000, &[0u8; 32], &ev);
        let other = AuditKeys::derive(&MasterKey::from_bytes("k1", 0, [8u8; 32]));
        let (b, body, mac) = parse(&stored).expect("parse");
        assert_eq!(check_mac(&other, &b, body, mac), Err(DecodeError::Auth));
        let pos = stored
            .windows(7)
            .position(|w| w == b"spooled")
            .expect("kind in clear");
        stored[pos] = b'S';
        let (b, body, mac) = parse(&stored).expect("still JSON");
        assert_eq!(check_mac(&k, &b, body, mac), Err(DecodeError::Auth));
    }

    #[test]
    fn sealed_fields_are_bound_to_seq() {
        let k = keys();
        let ev = AuditEvent::new(Kind::AuthFailure).person("identity", "bob");
        let stored = encode(&k, "k1", 9, 1000, &[0u8; 32], &ev);
        let (mut b, _, _) = parse(&stored).expect("parse");
        b.seq = 10;
        assert_eq!(open_private(&k, &b), Err(DecodeError::Auth));
    }

    #[test]
    fn marker_mac_detects_edits() {
        let k = keys();
        let m = Marker::new(&k, "k1", 4, &[3u8; 32]);
        assert!(m.valid(&k));
        let mut bad = m.clone();
        bad.seq = 3;
        assert!(!bad.valid(&k));
    }
}
