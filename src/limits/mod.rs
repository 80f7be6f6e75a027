//! Per-identity sending limits (`[limits]`, `[[limits.identity]]`): messages and
//! recipients per minute, hour and day, distinct recipient domains per hour, bytes per
//! day. The identity is the string policy rules use (`password:ehr`, `client-cert:CN`,
//! `ip:192.0.2.7`; later `api-key:NAME`).
//!
//! Windows are fixed clock windows (UTC minute, hour, day), so "retry after" is simply the
//! end of the window that is full.
//!
//! Hot path: counters live in memory, one small record per identity. Durability: every
//! admitted message returns the identity's new counter record as a spool [`Op`], which
//! the pipeline commits in the *same* store transaction (and fsync) as the message and
//! its audit records. So a counter can never lag a message that was accepted: a restart
//! (even `kill -9`) never resets a quota, and it costs no write of its own. Counters are
//! loaded lazily from the store the first time an identity is seen after a start.
//! Counting happens just before the spool write; if that write fails the message stays
//! counted in memory (conservative: a failure never frees quota).
//!
//! Only submissions through the pipeline are counted. DSNs and bounces phigate
//! generates go from the queue straight into the spool and never pass here.
//!
//! The store key is a hash of the identity, and recipient domains are kept as hashes:
//! the counters tree holds no names.

use crate::config::{LimitValues, LimitsConfig};
use crate::spool::{Op, Store, Tree};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};

const KEY_PREFIX: &str = "limits/";
/// Hours of history kept for the volume baseline (alerts).
const HISTORY_HOURS: u64 = 24;
/// Source IPs remembered per identity (for new-source-IP alerts).
const MAX_IPS: usize = 256;

/// Which limit was hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Limit {
    MessagesPerMinute,
    MessagesPerHour,
    MessagesPerDay,
    RecipientsPerMinute,
    RecipientsPerHour,
    RecipientsPerDay,
    DomainsPerHour,
    BytesPerDay,
}

impl Limit {
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::MessagesPerMinute => "messages_per_minute",
            Limit::MessagesPerHour => "messages_per_hour",
            Limit::MessagesPerDay => "messages_per_day",
            Limit::RecipientsPerMinute => "recipients_per_minute",
            Limit::RecipientsPerHour => "recipients_per_hour",
            Limit::RecipientsPerDay => "recipients_per_day",
            Limit::DomainsPerHour => "domains_per_hour",
            Limit::BytesPerDay => "bytes_per_day",
        }
    }
}

/// A refusal: which limit, its value, and seconds until the window that is full ends
/// (the SMTP front end says 451 4.7.1; the HTTP API says 429 with `Retry-After`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("sending limit {} ({max}) reached, retry in {retry_after} s", limit.as_str())]
pub struct Exceeded {
    pub limit: Limit,
    pub max: u64,
    pub retry_after: u64,
}

impl Exceeded {
    /// The SMTP reply for a refusal (no identity or count in it: the client knows both).
    pub fn reply(&self) -> crate::types::Reply {
        crate::types::Reply::new(
            451,
            "4.7.1",
            format!(
                "Sending limit reached ({}), try again in {} seconds",
                self.limit.as_str(),
                self.retry_after
            ),
        )
    }
}

/// What a submission would add. `domains` are the recipient domains (lowercase).
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage<'a> {
    pub messages: u64,
    pub recipients: u64,
    pub domains: &'a [String],
    pub bytes: u64,
}

/// One identity's counters, as stored.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Counters {
    minute: u64,
    m_msgs: u64,
    m_rcpts: u64,
    hour: u64,
    h_msgs: u64,
    h_rcpts: u64,
    /// Hashes of the recipient domains seen this hour.
    h_domains: BTreeSet<u64>,
    day: u64,
    d_msgs: u64,
    d_rcpts: u64,
    d_bytes: u64,
    /// (hour, messages) of earlier hours with traffic, newest last.
    #[serde(default)]
    history: VecDeque<(u64, u64)>,
    /// Hashes of source IPs this identity has sent from.
    #[serde(default)]
    ips: BTreeSet<u64>,
}

impl Counters {
    /// Start new windows where the clock has moved on.
    fn roll(&mut self, now: u64) {
        let (m, h, d) = (now / 60, now / 3600, now / 86400);
        if self.minute != m {
            self.minute = m;
            self.m_msgs = 0;
            self.m_rcpts = 0;
        }
        if self.hour != h {
            if self.h_msgs > 0 {
                self.history.push_back((self.hour, self.h_msgs));
            }
            self.hour = h;
            self.h_msgs = 0;
            self.h_rcpts = 0;
            self.h_domains.clear();
        }
        while self
            .history
            .front()
            .is_some_and(|(hr, _)| hr + HISTORY_HOURS < h)
        {
            self.history.pop_front();
        }
        if self.day != d {
            self.day = d;
            self.d_msgs = 0;
            self.d_rcpts = 0;
            self.d_bytes = 0;
        }
    }

    /// The first limit `u` would cross, if any.
    fn over(&self, v: &LimitValues, u: &Usage<'_>, now: u64) -> Option<Exceeded> {
        let to_minute = 60 - now % 60;
        let to_hour = 3600 - now % 3600;
        let to_day = 86400 - now % 86400;
        let new_domains = u
            .domains
            .iter()
            .map(|d| hash64(d))
            .collect::<BTreeSet<_>>()
            .difference(&self.h_domains)
            .count() as u64;
        let checks = [
            (
                Limit::MessagesPerMinute,
                v.messages_per_minute,
                self.m_msgs,
                u.messages,
                to_minute,
            ),
            (
                Limit::MessagesPerHour,
                v.messages_per_hour,
                self.h_msgs,
                u.messages,
                to_hour,
            ),
            (
                Limit::MessagesPerDay,
                v.messages_per_day,
                self.d_msgs,
                u.messages,
                to_day,
            ),
            (
                Limit::RecipientsPerMinute,
                v.recipients_per_minute,
                self.m_rcpts,
                u.recipients,
                to_minute,
            ),
            (
                Limit::RecipientsPerHour,
                v.recipients_per_hour,
                self.h_rcpts,
                u.recipients,
                to_hour,
            ),
            (
                Limit::RecipientsPerDay,
                v.recipients_per_day,
                self.d_rcpts,
                u.recipients,
                to_day,
            ),
            (
                Limit::DomainsPerHour,
                v.domains_per_hour,
                self.h_domains.len() as u64,
                new_domains,
                to_hour,
            ),
            (
                Limit::BytesPerDay,
                v.bytes_per_day.map(|b| b.0),
                self.d_bytes,
                u.bytes,
                to_day,
            ),
        ];
        checks
            .into_iter()
            .find_map(|(limit, max, used, add, retry_after)| {
                let max = max?;
                (add > 0 && used.saturating_add(add) > max).then_some(Exceeded {
                    limit,
                    max,
                    retry_after,
                })
            })
    }

    fn add(&mut self, u: &Usage<'_>) {
        self.m_msgs += u.messages;
        self.h_msgs += u.messages;
        self.d_msgs += u.messages;
        self.m_rcpts += u.recipients;
        self.h_rcpts += u.recipients;
        self.d_rcpts += u.recipients;
        self.d_bytes += u.bytes;
        self.h_domains.extend(u.domains.iter().map(|d| hash64(d)));
    }
}

/// A short, stable hash (domains, IPs): enough to count distinct values, not to list them.
fn hash64(s: &str) -> u64 {
    let d = Sha256::digest(s.to_ascii_lowercase().as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_be_bytes(b)
}

fn store_key(identity: &str) -> Vec<u8> {
    let d = Sha256::digest(identity.as_bytes());
    format!("{KEY_PREFIX}{}", hex::encode(&d[..16])).into_bytes()
}

/// The limits service. One per process; share behind an `Arc`.
pub struct Limits {
    cfg: RwLock<Arc<LimitsConfig>>,
    store: Arc<dyn Store>,
    counters: Mutex<HashMap<String, Counters>>,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Limits")
    }
}

impl Limits {
    pub fn new(cfg: LimitsConfig, store: Arc<dyn Store>) -> Self {
        Limits {
            cfg: RwLock::new(Arc::new(cfg)),
            store,
            counters: Mutex::new(HashMap::new()),
        }
    }

    /// Swap in reloaded limits; counters are kept.
    pub fn set_config(&self, cfg: LimitsConfig) {
        *self.cfg.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(cfg);
    }

    /// The limits that apply to `identity`: the first matching override over the defaults.
    pub fn values_for(&self, identity: &str) -> LimitValues {
        let cfg = self.cfg.read().unwrap_or_else(|p| p.into_inner()).clone();
        let base = cfg.defaults();
        match cfg
            .identity
            .iter()
            .find(|o| crate::policy::glob::glob(&o.name, identity))
        {
            Some(o) => o.values().or(&base),
            None => base,
        }
    }

    /// Run `f` on `identity`'s counters, rolled to `now` (loaded from the store first
    /// if this process has not seen the identity yet).
    fn with<R>(&self, identity: &str, now: u64, f: impl FnOnce(&mut Counters) -> R) -> R {
        let mut map = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        if !map.contains_key(identity) {
            let loaded = self
                .store
                .get(Tree::Meta, &store_key(identity))
                .ok()
                .flatten()
                .and_then(|v| serde_json::from_slice::<Counters>(&v).ok())
                .unwrap_or_default();
            map.insert(identity.to_string(), loaded);
        }
        let c = map.entry(identity.to_string()).or_default();
        c.roll(now);
        f(c)
    }

    /// Would `usage` cross one of `identity`'s limits? Changes nothing. The one check
    /// every front end calls (SMTP at MAIL and RCPT, the HTTP API before a submission).
    pub fn check(&self, identity: &str, usage: &Usage<'_>, now: u64) -> Result<(), Exceeded> {
        let v = self.values_for(identity);
        self.with(identity, now, |c| {
            c.over(&v, usage, now).map_or(Ok(()), Err)
        })
    }

    /// Check and count a submission at once. On success returns the write that makes
    /// the new counters durable: commit it with the message (see the module notes).
    pub fn admit(
        &self,
        identity: &str,
        usage: &Usage<'_>,
        source_ip: Option<&str>,
        now: u64,
    ) -> Result<Op, Exceeded> {
        let v = self.values_for(identity);
        self.with(identity, now, |c| {
            if let Some(e) = c.over(&v, usage, now) {
                return Err(e);
            }
            c.add(usage);
            if let Some(ip) = source_ip {
                if c.ips.len() < MAX_IPS {
                    c.ips.insert(hash64(ip));
                }
            }
            let value = serde_json::to_vec(c).unwrap_or_default();
            Ok(Op::Put(Tree::Meta, store_key(identity), value))
        })
    }

    /// (messages this hour, mean messages per hour over the previous day) for the volume
    /// alert.
    pub fn volume(&self, identity: &str, now: u64) -> (u64, f64) {
        self.with(identity, now, |c| {
            let total: u64 = c.history.iter().map(|(_, n)| n).sum();
            (c.h_msgs, total as f64 / HISTORY_HOURS as f64)
        })
    }

    /// Has `identity` sent before, and never from `ip`?
    pub fn is_new_source(&self, identity: &str, ip: &str, now: u64) -> bool {
        self.with(identity, now, |c| {
            !c.ips.is_empty() && c.ips.len() < MAX_IPS && !c.ips.contains(&hash64(ip))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::{SledStore, Store};

    fn limits(toml_text: &str) -> (tempfile::TempDir, Arc<dyn Store>, Limits) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).expect("open"));
        let cfg: LimitsConfig = toml::from_str(toml_text).expect("limits config");
        (dir, store.clone(), Limits::new(cfg, store))
    }

    fn msg(rcpts: u64, domains: &[String]) -> Usage<'_> {
        Usage {
            messages: 1,
            recipients: rcpts,
            domains,
            bytes: 100,
        }
    }

    #[test]
    fn minute_limit_refuses_with_retry_after_then_resets() {
        let (_d, _s, l) = limits("messages_per_minute = 2\n");
        let t = 60 * 20_000 + 20; // 20 s into a minute
        let none: Vec<String> = Vec::new();
        assert!(l.admit("password:a", &msg(1, &none), None, t).is_ok());
        assert!(l.admit("password:a", &msg(1, &none), None, t).is_ok());
        let e = l.check("password:a", &msg(1, &none), t).unwrap_err();
        assert_eq!(e.limit, Limit::MessagesPerMinute);
        assert_eq!(e.retry_after, 40);
        assert_eq!(e.reply().code, 451);
        assert_eq!(e.reply().enhanced, "4.7.1");
        // Another identity has its own counters; the next minute starts afresh.
        assert!(l.check("password:b", &msg(1, &none), t).is_ok());
        assert!(l.check("password:a", &msg(1, &none), t + 40).is_ok());
    }

    #[test]
    fn override_inherits_and_domains_count_distinct() {
        let (_d, _s, l) = limits(
            "messages_per_hour = 100\ndomains_per_hour = 2\n[[identity]]\nname = \"password:ehr*\"\nmessages_per_hour = 1\n",
        );
        let v = l.values_for("password:ehr-1");
        assert_eq!(v.messages_per_hour, Some(1));
        assert_eq!(v.domains_per_hour, Some(2));
        assert_eq!(l.values_for("password:x").messages_per_hour, Some(100));
        let t = 7200 * 1000;
        let ab = vec!["a.example".to_string(), "b.example".to_string()];
        assert!(l.admit("password:x", &msg(2, &ab), None, t).is_ok());
        // Same two domains again: still two distinct.
        assert!(l.check("password:x", &msg(2, &ab), t).is_ok());
        let c = vec!["c.example".to_string()];
        let e = l.check("password:x", &msg(1, &c), t).unwrap_err();
        assert_eq!(e.limit, Limit::DomainsPerHour);
    }

    #[test]
    fn counters_survive_a_new_process_through_the_store() {
        let (_d, store, l) = limits("messages_per_day = 1\n");
        let t = 86400 * 20_000 + 5;
        let none: Vec<String> = Vec::new();
        let op = l
            .admit("ip:192.0.2.1", &msg(1, &none), None, t)
            .expect("admit");
        store.commit(&[op]).expect("commit");
        let again = Limits::new(
            toml::from_str("messages_per_day = 1\n").expect("cfg"),
            store.clone(),
        );
        let e = again
            .check("ip:192.0.2.1", &msg(1, &none), t + 3600)
            .unwrap_err();
        assert_eq!(e.limit, Limit::MessagesPerDay);
        // The stored record names neither the identity nor a domain.
        let mut found = false;
        store
            .scan(Tree::Meta, b"limits/", None, &mut |k, v| {
                found = true;
                assert!(!String::from_utf8_lossy(k).contains("192.0.2.1"));
                assert!(!String::from_utf8_lossy(v).contains("192.0.2.1"));
                true
            })
            .expect("scan");
        assert!(found);
    }

    #[test]
    fn volume_baseline_and_new_source() {
        let (_d, _s, l) = limits("");
        let none: Vec<String> = Vec::new();
        let h0 = 3600 * 500_000;
        for _ in 0..24 {
            l.admit("password:a", &msg(1, &none), Some("192.0.2.1"), h0)
                .expect("admit");
        }
        let (now, mean) = l.volume("password:a", h0 + 3600);
        assert_eq!(now, 0);
        assert!((mean - 1.0).abs() < 1e-9);
        assert!(l.is_new_source("password:a", "192.0.2.2", h0));
        assert!(!l.is_new_source("password:a", "192.0.2.1", h0));
        assert!(!l.is_new_source("password:never", "192.0.2.1", h0));
    }
}
