//! MTA-STS policy cache kept in the spool's metadata tree, so an `enforce` policy learnt
//! before a restart is still enforced after it (RFC 8461 §3.3: a policy must be cached
//! for `max_age`; forgetting it would let an attacker who blocks the policy host turn
//! enforcement off by restarting us, or by waiting for a crash).
//!
//! Keys are `sts/<domain>`; values are small JSON documents (domain names, MX patterns
//! and times: no PHI). Removal writes an empty value, which reads as "no entry".

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::sts::{CacheEntry, CacheFuture, StsCache, StsCacheError};
use crate::spool::Spool;
use crate::tls::mta_sts::{CachedPolicy, Mode, Policy};

const PREFIX: &str = "sts/";

/// Stored form of a [`CacheEntry`]; `v` lets the format change later.
#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    v: u8,
    mode: String,
    max_age: u64,
    mx: Vec<String>,
    txt_id: String,
    fetched_at: u64,
    refresh_at: u64,
    failures: u32,
    retry_at: u64,
}

fn encode(e: &CacheEntry) -> Vec<u8> {
    let stored = Stored {
        v: 1,
        mode: e.cached.policy.mode.as_str().to_string(),
        max_age: e.cached.policy.max_age,
        mx: e.cached.policy.mx.clone(),
        txt_id: e.cached.txt_id.clone(),
        fetched_at: e.cached.fetched_at,
        refresh_at: e.refresh_at,
        failures: e.failures,
        retry_at: e.retry_at,
    };
    serde_json::to_vec(&stored).unwrap_or_default()
}

/// None for an empty (removed), unreadable or unknown-version value: a damaged entry
/// costs one policy fetch, never a crash.
fn decode(bytes: &[u8]) -> Option<CacheEntry> {
    let s: Stored = serde_json::from_slice(bytes).ok()?;
    if s.v != 1 {
        return None;
    }
    let mode = match s.mode.as_str() {
        "enforce" => Mode::Enforce,
        "testing" => Mode::Testing,
        "none" => Mode::None,
        _ => return None,
    };
    Some(CacheEntry {
        cached: CachedPolicy {
            policy: Policy {
                mode,
                max_age: s.max_age,
                mx: s.mx,
            },
            txt_id: s.txt_id,
            fetched_at: s.fetched_at,
        },
        refresh_at: s.refresh_at,
        failures: s.failures,
        retry_at: s.retry_at,
    })
}

fn key(domain: &str) -> String {
    format!(
        "{PREFIX}{}",
        domain.trim_end_matches('.').to_ascii_lowercase()
    )
}

/// [`StsCache`] over [`Spool::meta_get`] / [`Spool::meta_put`].
pub struct SpoolStsCache {
    spool: Arc<Spool>,
}

impl SpoolStsCache {
    pub fn new(spool: Arc<Spool>) -> Self {
        SpoolStsCache { spool }
    }
}

impl StsCache for SpoolStsCache {
    fn get(&self, domain: &str) -> Option<CacheEntry> {
        match self.spool.meta_get(&key(domain)) {
            Ok(Some(v)) => decode(&v),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %e, "MTA-STS cache read failed");
                None
            }
        }
    }

    fn put<'a>(&'a self, domain: &'a str, entry: CacheEntry) -> CacheFuture<'a> {
        Box::pin(async move {
            self.spool
                .meta_put(&key(domain), &encode(&entry))
                .await
                .map_err(|e| StsCacheError(e.to_string()))
        })
    }

    fn remove<'a>(&'a self, domain: &'a str) -> CacheFuture<'a> {
        Box::pin(async move {
            self.spool
                .meta_put(&key(domain), &[])
                .await
                .map_err(|e| StsCacheError(e.to_string()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::Keyring;

    fn entry() -> CacheEntry {
        let policy =
            Policy::parse("version: STSv1\nmode: enforce\nmx: mx.example.org\nmx: *.example.net\nmax_age: 604800\n")
                .expect("policy");
        CacheEntry {
            cached: CachedPolicy {
                policy,
                txt_id: "20240101".into(),
                fetched_at: 1_700_000_000,
            },
            refresh_at: 1_700_500_000,
            failures: 2,
            retry_at: 1_700_000_300,
        }
    }

    #[tokio::test]
    async fn survives_reopen_and_purge_sticks() {
        let dir = tempfile::tempdir().expect("tmp");
        let keys = dir.path().join("keys");
        Keyring::generate().save_new(&keys).expect("save keyring");
        let ring = || Keyring::load(&keys).expect("keyring");
        {
            let spool = Arc::new(Spool::open(&dir.path().join("spool"), ring()).expect("open"));
            let cache = SpoolStsCache::new(spool);
            assert_eq!(cache.get("example.org"), None);
            cache.put("Example.ORG.", entry()).await.expect("put");
            cache.put("gone.example", entry()).await.expect("put");
            cache.remove("gone.example").await.expect("remove");
        }
        let spool = Arc::new(Spool::open(&dir.path().join("spool"), ring()).expect("reopen"));
        let cache = SpoolStsCache::new(spool);
        assert_eq!(cache.get("example.org"), Some(entry()));
        assert_eq!(cache.get("gone.example"), None);
    }

    #[test]
    fn damaged_values_read_as_absent() {
        assert_eq!(decode(b""), None);
        assert_eq!(decode(b"{not json"), None);
        let mut v: serde_json::Value = serde_json::from_slice(&encode(&entry())).expect("json");
        v["mode"] = "sometimes".into();
        assert_eq!(decode(v.to_string().as_bytes()), None);
        v["mode"] = "enforce".into();
        v["v"] = 9.into();
        assert_eq!(decode(v.to_string().as_bytes()), None);
    }
}
