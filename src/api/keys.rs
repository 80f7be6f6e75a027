//! API keys: `phigate api-key create|list|revoke`. A key is shown once; the store keeps
//! only its SHA-256 (keys are 256 random bits, so a slow password hash adds nothing)
//! and a record per name, in the spool's store (`Tree::Meta`, clear: no PHI in it).
//! Every request looks its key up in the store, so a revocation is seen by the next one.

use crate::spool::{Op, Store, Tree};
use base64::Engine;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::sync::Arc;

const BY_HASH: &str = "api/key/h/";
const BY_NAME: &str = "api/key/n/";
/// Every key starts with this, so secret scanners can find leaked ones.
pub const KEY_PREFIX: &str = "phg_";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key store: {0}")]
    Io(#[from] std::io::Error),
    #[error("invalid key name `{0}`: use letters, digits, '.', '_' and '-'")]
    BadName(String),
    #[error("an API key named `{0}` already exists (revoke it first)")]
    Exists(String),
    #[error("no API key named `{0}`")]
    NotFound(String),
    #[error("unknown scope `{0}` (scopes: send, read)")]
    BadScope(String),
}

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// `POST /v1/messages`, `POST /v1/messages/batch`.
    Send,
    /// `GET /v1/messages/{id}`.
    Read,
}

impl Scope {
    pub fn parse_list(s: &str) -> Result<Vec<Scope>, KeyError> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let scope = match part {
                "send" => Scope::Send,
                "read" => Scope::Read,
                other => return Err(KeyError::BadScope(other.to_string())),
            };
            if !out.contains(&scope) {
                out.push(scope);
            }
        }
        Ok(out)
    }
}

/// One key's record, by name (the key itself is never stored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub name: String,
    /// Keys of the same owner may read each other's message status.
    pub owner: String,
    pub scopes: Vec<Scope>,
    pub sandbox: bool,
    pub created_at: u64,
    pub expires_at: Option<u64>,
    pub revoked_at: Option<u64>,
    /// SHA-256 of the key, hex (the lookup index).
    pub hash: String,
}

/// What authenticating a bearer token found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyCheck {
    Valid(KeyRecord),
    Unknown,
    Revoked,
    Expired,
}

/// What `create` asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewKey {
    pub name: String,
    pub owner: Option<String>,
    pub scopes: Vec<Scope>,
    pub sandbox: bool,
    /// Seconds from now; none = never expires.
    pub expires_in: Option<u64>,
}

#[derive(Clone)]
pub struct KeyStore {
    store: Arc<dyn Store>,
}

fn hash_hex(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

impl KeyStore {
    pub fn new(store: Arc<dyn Store>) -> Self {
        KeyStore { store }
    }

    /// Create a key; returns the key (shown once) and its record. Durable on return.
    pub fn create(&self, new: &NewKey, now: u64) -> Result<(String, KeyRecord), KeyError> {
        if !valid_name(&new.name) {
            return Err(KeyError::BadName(new.name.clone()));
        }
        if let Some(old) = self.get(&new.name)? {
            if old.revoked_at.is_none() {
                return Err(KeyError::Exists(new.name.clone()));
            }
        }
        let mut raw = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut raw);
        let key = format!(
            "{KEY_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
        );
        let scopes = if new.scopes.is_empty() {
            vec![Scope::Send]
        } else {
            new.scopes.clone()
        };
        let rec = KeyRecord {
            name: new.name.clone(),
            owner: new.owner.clone().unwrap_or_else(|| new.name.clone()),
            scopes,
            sandbox: new.sandbox,
            created_at: now,
            expires_at: new.expires_in.map(|s| now.saturating_add(s)),
            revoked_at: None,
            hash: hash_hex(&key),
        };
        let json = serde_json::to_vec(&rec).map_err(std::io::Error::other)?;
        self.store.commit(&[
            Op::Put(
                Tree::Meta,
                format!("{BY_HASH}{}", rec.hash).into_bytes(),
                rec.name.clone().into_bytes(),
            ),
            Op::Put(
                Tree::Meta,
                format!("{BY_NAME}{}", rec.name).into_bytes(),
                json,
            ),
        ])?;
        self.store.flush()?;
        Ok((key, rec))
    }

    pub fn get(&self, name: &str) -> Result<Option<KeyRecord>, KeyError> {
        let v = self
            .store
            .get(Tree::Meta, format!("{BY_NAME}{name}").as_bytes())?;
        Ok(v.and_then(|v| serde_json::from_slice(&v).ok()))
    }

    /// Every key, by name (revoked ones included: they still own their messages).
    pub fn list(&self) -> Result<Vec<KeyRecord>, KeyError> {
        let mut out = Vec::new();
        let start = BY_NAME.as_bytes();
        let end = format!("{}\u{10FFFF}", BY_NAME);
        self.store
            .scan(Tree::Meta, start, Some(end.as_bytes()), &mut |_, v| {
                if let Ok(r) = serde_json::from_slice::<KeyRecord>(v) {
                    out.push(r);
                }
                true
            })?;
        Ok(out)
    }

    /// Revoke `name`: the next request with it gets 401. Durable on return.
    pub fn revoke(&self, name: &str, now: u64) -> Result<KeyRecord, KeyError> {
        let mut rec = self
            .get(name)?
            .ok_or_else(|| KeyError::NotFound(name.to_string()))?;
        rec.revoked_at.get_or_insert(now);
        let json = serde_json::to_vec(&rec).map_err(std::io::Error::other)?;
        self.store.commit(&[
            Op::Delete(Tree::Meta, format!("{BY_HASH}{}", rec.hash).into_bytes()),
            Op::Put(Tree::Meta, format!("{BY_NAME}{name}").into_bytes(), json),
        ])?;
        self.store.flush()?;
        Ok(rec)
    }

    /// Authenticate a bearer token.
    pub fn check(&self, key: &str, now: u64) -> Result<KeyCheck, KeyError> {
        if !key.starts_with(KEY_PREFIX) || key.len() > 128 {
            return Ok(KeyCheck::Unknown);
        }
        let hash = hash_hex(key);
        let name = match self
            .store
            .get(Tree::Meta, format!("{BY_HASH}{hash}").as_bytes())?
        {
            Some(n) => String::from_utf8_lossy(&n).into_owned(),
            None => {
                // A revoked key's hash index is gone; say "revoked" when its record
                // still matches, so the caller learns why.
                let revoked = self
                    .list()?
                    .into_iter()
                    .any(|r| r.hash == hash && r.revoked_at.is_some());
                return Ok(if revoked {
                    KeyCheck::Revoked
                } else {
                    KeyCheck::Unknown
                });
            }
        };
        let Some(rec) = self.get(&name)? else {
            return Ok(KeyCheck::Unknown);
        };
        if rec.hash != hash {
            return Ok(KeyCheck::Unknown);
        }
        if rec.revoked_at.is_some() {
            return Ok(KeyCheck::Revoked);
        }
        if rec.expires_at.is_some_and(|t| now >= t) {
            return Ok(KeyCheck::Expired);
        }
        Ok(KeyCheck::Valid(rec))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::SledStore;

    #[test]
    fn create_check_revoke_expire() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).expect("open"));
        let ks = KeyStore::new(store.clone());
        let new = NewKey {
            name: "ehr".into(),
            owner: None,
            scopes: vec![Scope::Send, Scope::Read],
            sandbox: false,
            expires_in: Some(100),
        };
        let (key, rec) = ks.create(&new, 1000).expect("create");
        assert!(key.starts_with(KEY_PREFIX) && key.len() > 40);
        assert_eq!(rec.owner, "ehr");
        assert!(matches!(ks.check(&key, 1001), Ok(KeyCheck::Valid(_))));
        assert_eq!(ks.check(&key, 1100).expect("check"), KeyCheck::Expired);
        assert_eq!(
            ks.check("phg_nope", 1001).expect("check"),
            KeyCheck::Unknown
        );
        assert!(matches!(ks.create(&new, 1000), Err(KeyError::Exists(_))));
        ks.revoke("ehr", 1002).expect("revoke");
        assert_eq!(ks.check(&key, 1003).expect("check"), KeyCheck::Revoked);
        // Only the hash is stored.
        store
            .scan(Tree::Meta, b"", None, &mut |k, v| {
                assert!(!String::from_utf8_lossy(k).contains(&key[4..]));
                assert!(!String::from_utf8_lossy(v).contains(&key[4..]));
                true
            })
            .expect("scan");
        assert!(Scope::parse_list("send,bogus").is_err());
        assert!(ks
            .create(
                &NewKey {
                    name: "a b".into(),
                    ..new
                },
                1
            )
            .is_err());
    }
}
