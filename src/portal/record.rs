//! The portal's clear records (`Tree::Meta`, prefix `portal/`): state, times, counters
//! and hashes only. Addresses and content live in the sealed copy in the spool; tokens,
//! codes and session cookies are stored as hashes, so a copy of the store opens nothing.

use crate::types::MessageId;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub(super) const ENTRY: &str = "portal/e/";
pub(super) const TOKEN: &str = "portal/t/";
pub(super) const BY_MESSAGE: &str = "portal/m/";
pub(super) const SECRET: &str = "portal/secret";

/// Where a portal message is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    /// Notified; the link works.
    Active,
    /// `link_ttl` passed: content shredded.
    Expired,
    /// An administrator revoked it: content shredded.
    Revoked,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Active => "active",
            State::Expired => "expired",
            State::Revoked => "revoked",
        }
    }
}

/// A one-time code waiting to be entered: HMAC-SHA256 of the code under a random salt.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PendingCode {
    pub salt: String,
    pub mac: String,
    pub expires: u64,
}

/// A verified browser session: the hash of its cookie value.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    pub hash: String,
    pub last_seen: u64,
}

/// One portal message (one recipient of one original message).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    pub id: MessageId,
    /// The original message and the recipient's index in it.
    pub msg: MessageId,
    pub rcpt_index: usize,
    /// Why it went to the portal (policy rule, `api`, `tls-failure`, `requiretls`).
    pub reason: String,
    pub created: u64,
    pub expires_at: u64,
    pub state: State,
    pub ended_at: Option<u64>,
    pub picked_up: Option<u64>,
    pub token_hash: String,
    /// Notifications sent (the first and every `resend`).
    pub notices: u32,
    pub code: Option<PendingCode>,
    /// Code mails sent in the current hour window, and when the window started.
    pub codes_sent: u32,
    pub codes_window: u64,
    pub failures: u32,
    pub locked_until: u64,
    pub sessions: Vec<Session>,
    pub views: u32,
    pub downloads: u32,
    pub replies: u32,
    /// Attachments in the message (shown by `portal show`).
    pub attachments: usize,
}

/// Sessions kept per portal message; the oldest goes first.
pub const MAX_SESSIONS: usize = 4;

pub fn entry_key(id: &MessageId) -> Vec<u8> {
    format!("{ENTRY}{id}").into_bytes()
}

pub fn token_key(hash: &str) -> Vec<u8> {
    format!("{TOKEN}{hash}").into_bytes()
}

pub fn by_message_key(msg: &MessageId, index: usize) -> Vec<u8> {
    format!("{BY_MESSAGE}{msg}/{index}").into_bytes()
}

/// A fresh unguessable value (256 bits), URL-safe.
pub fn random_token() -> String {
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// What the store keeps of a token or cookie value.
pub fn hash(value: &str) -> String {
    hex::encode(Sha256::digest(value.as_bytes()))
}

/// A token as it may appear in a URL: 43 URL-safe base64 characters.
pub fn plausible_token(t: &str) -> bool {
    t.len() == 43
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A new six-digit code and what is stored of it.
pub fn new_code(expires: u64) -> (String, PendingCode) {
    let mut rng = rand::thread_rng();
    let code = format!("{:06}", rand::Rng::gen_range(&mut rng, 0..1_000_000u32));
    let mut salt = [0u8; 16];
    rng.fill_bytes(&mut salt);
    let mac = code_mac(&salt, &code);
    (
        code,
        PendingCode {
            salt: hex::encode(salt),
            mac: hex::encode(mac),
            expires,
        },
    )
}

/// HMAC-SHA256 under `key`. HMAC takes keys of any length, so this cannot fail; the one
/// `expect` here states that rather than threading an impossible error through callers.
fn keyed(key: &[u8]) -> Hmac<Sha256> {
    <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts keys of any length")
}

fn code_mac(salt: &[u8], code: &str) -> Vec<u8> {
    let mut m = keyed(salt);
    m.update(code.as_bytes());
    m.finalize().into_bytes().to_vec()
}

/// Does `given` match the pending code? Compared in constant time (HMAC verify).
pub fn code_matches(p: &PendingCode, given: &str) -> bool {
    let (Ok(salt), Ok(mac)) = (hex::decode(&p.salt), hex::decode(&p.mac)) else {
        return false;
    };
    let given: String = given.chars().filter(|c| !c.is_whitespace()).collect();
    if given.len() != 6 || !given.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let mut m = keyed(&salt);
    m.update(given.as_bytes());
    m.verify_slice(&mac).is_ok()
}

/// A value bound to `parts` under the portal's secret (CSRF fields).
pub fn bind(secret: &[u8], parts: &[&str]) -> String {
    let mut m = keyed(secret);
    for p in parts {
        m.update(p.as_bytes());
        m.update(b"\0");
    }
    hex::encode(m.finalize().into_bytes())
}

/// Constant-time check of a value made by [`bind`].
pub fn bound(secret: &[u8], parts: &[&str], given: &str) -> bool {
    let Ok(given) = hex::decode(given) else {
        return false;
    };
    let mut m = keyed(secret);
    for p in parts {
        m.update(p.as_bytes());
        m.update(b"\0");
    }
    m.verify_slice(&given).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_only_themselves() {
        let (code, p) = new_code(10);
        assert_eq!(code.len(), 6);
        assert!(code_matches(&p, &code));
        assert!(code_matches(&p, &format!(" {} {}", &code[..3], &code[3..])));
        let wrong = format!("{:06}", (code.parse::<u32>().unwrap_or(0) + 1) % 1_000_000);
        assert!(!code_matches(&p, &wrong));
        assert!(!code_matches(&p, "abcdef"));
        assert!(!p.mac.contains(&code));
    }

    #[test]
    fn tokens_are_long_and_url_safe() {
        let t = random_token();
        assert!(plausible_token(&t), "{t}");
        assert_ne!(t, random_token());
        assert!(!plausible_token("../../etc/passwd"));
        assert_eq!(hash(&t).len(), 64);
    }

    #[test]
    fn bound_values_check() {
        let s = b"secret";
        let v = bind(s, &["csrf", "a"]);
        assert!(bound(s, &["csrf", "a"], &v));
        assert!(!bound(s, &["csrf", "b"], &v));
        assert!(!bound(b"other", &["csrf", "a"], &v));
        assert!(!bound(s, &["csrf", "a"], "zz"));
    }
}
