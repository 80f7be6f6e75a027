//! Idle outbound TLS sessions kept for the next message to the same destination host
//! (connection reuse, as Postfix's connection cache does).
//!
//! A pooled session keeps the global and per-destination permits it was opened under, so
//! idle connections count against both caps; a caller that finds no permit free evicts an
//! idle session instead of waiting behind it. Sessions are keyed by destination (domain),
//! address, TLS name and TLS mode, and reused only for a requirement the session's own
//! verification satisfies: a DANE-TA check, for example, may depend on the next-hop domain,
//! so a session verified for one domain is never lent to another.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, OwnedSemaphorePermit};

use super::client::TlsClient;
use super::level::Requirement;

/// How long a session may sit idle before it is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Transactions per session before it is closed rather than returned.
pub const MAX_USES: u32 = 100;

/// Where a session goes and how it was set up.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub destination: String,
    pub addr: SocketAddr,
    pub name: String,
    pub implicit: bool,
}

/// The permits that make a connection count against the caps while it exists. Never
/// read: dropping them (with the session) frees the slots.
pub struct Permits {
    pub _global: OwnedSemaphorePermit,
    pub _destination: OwnedSemaphorePermit,
}

/// An open session and what it proved at its handshake.
pub struct Lease {
    pub client: TlsClient,
    pub _permits: Permits,
    /// The requirement the handshake was verified against.
    pub requirement: Requirement,
    /// The recorded verification method (`dane-ee`, `pkix`, ...).
    pub method: String,
    /// MTA-STS `testing` outcome of the handshake, if any.
    pub sts_note: Option<String>,
    /// Transactions sent so far.
    pub uses: u32,
}

struct Idle {
    lease: Lease,
    since: Instant,
}

/// True when a session verified as `have` may carry a message that needs `want`. Only
/// exact matches, plus any session for plain encryption (every session is at least that).
pub fn satisfies(have: &Requirement, want: &Requirement) -> bool {
    have == want || matches!(want, Requirement::Encrypt { sts_testing: false })
}

/// The idle sessions. Cheap to clone (shared).
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Mutex<HashMap<PoolKey, Vec<Idle>>>>,
    /// Wakes callers waiting for a permit when a session comes back.
    pub returned: Arc<Notify>,
    idle_timeout: Duration,
    max_uses: u32,
    /// True while a reaper task is closing expired sessions.
    reaping: Arc<std::sync::atomic::AtomicBool>,
}

impl Pool {
    pub fn new(idle_timeout: Duration, max_uses: u32) -> Self {
        Pool {
            inner: Arc::default(),
            returned: Arc::new(Notify::new()),
            idle_timeout,
            max_uses,
            reaping: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PoolKey, Vec<Idle>>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The most recently returned live session for `key` that satisfies `want`.
    pub fn take(&self, key: &PoolKey, want: &Requirement) -> Option<Lease> {
        let mut map = self.lock();
        let list = map.get_mut(key)?;
        let timeout = self.idle_timeout;
        list.retain(|i| i.since.elapsed() < timeout);
        let pos = list
            .iter()
            .rposition(|i| satisfies(&i.lease.requirement, want))?;
        let idle = list.remove(pos);
        if list.is_empty() {
            map.remove(key);
        }
        Some(idle.lease)
    }

    /// Keeps a session after a clean transaction, unless it has been used enough (then it
    /// is handed back to be closed).
    pub fn put(&self, key: PoolKey, lease: Lease) -> Option<Lease> {
        if lease.uses >= self.max_uses {
            return Some(lease);
        }
        self.lock().entry(key).or_default().push(Idle {
            lease,
            since: Instant::now(),
        });
        self.returned.notify_waiters();
        self.reap_later();
        None
    }

    /// Close sessions that sat idle too long, even if no other message comes. One task
    /// while anything is pooled (not one timer per returned session: under load those
    /// held ~12 KB each for the whole idle timeout).
    fn reap_later(&self) {
        use std::sync::atomic::Ordering;
        if self.reaping.swap(true, Ordering::AcqRel) {
            return;
        }
        let pool = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(pool.idle_timeout / 4 + Duration::from_millis(50)).await;
                for lease in pool.expired() {
                    lease.client.quit().await;
                }
                if !pool.lock().is_empty() {
                    continue;
                }
                pool.reaping.store(false, Ordering::Release);
                // A session returned after the emptiness check is reaped by this task
                // only if no other one took over meanwhile.
                if pool.lock().is_empty() || pool.reaping.swap(true, Ordering::AcqRel) {
                    return;
                }
            }
        });
    }

    fn expired(&self) -> Vec<Lease> {
        let mut map = self.lock();
        let mut out = Vec::new();
        for list in map.values_mut() {
            let (old, keep): (Vec<Idle>, Vec<Idle>) = std::mem::take(list)
                .into_iter()
                .partition(|i| i.since.elapsed() >= self.idle_timeout);
            *list = keep;
            out.extend(old.into_iter().map(|i| i.lease));
        }
        map.retain(|_, l| !l.is_empty());
        out
    }

    /// Closes the longest-idle session (of `destination`, or of any when None), freeing
    /// its permits. False when there was none.
    pub fn evict_one(&self, destination: Option<&str>) -> bool {
        let mut map = self.lock();
        let oldest = map
            .iter()
            .filter(|(k, _)| destination.is_none_or(|d| k.destination == d))
            .flat_map(|(k, l)| l.iter().enumerate().map(move |(n, i)| (k, n, i.since)))
            .min_by_key(|(_, _, since)| *since)
            .map(|(k, n, _)| (k.clone(), n));
        let Some((key, n)) = oldest else {
            return false;
        };
        if let Some(list) = map.get_mut(&key) {
            // Dropped at once (no QUIT) so the permits are free before the caller retries.
            drop(list.remove(n));
            if list.is_empty() {
                map.remove(&key);
            }
        }
        true
    }

    /// Number of idle sessions (for tests and metrics).
    pub fn idle_count(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encrypt_only_never_satisfies_verified() {
        let enc = Requirement::Encrypt { sts_testing: false };
        assert!(satisfies(&Requirement::Pkix, &enc));
        assert!(satisfies(&Requirement::MtaSts, &enc));
        assert!(!satisfies(&enc, &Requirement::Pkix));
        assert!(!satisfies(&enc, &Requirement::MtaSts));
        assert!(!satisfies(&enc, &Requirement::Dane(Vec::new())));
        assert!(!satisfies(&Requirement::Pkix, &Requirement::MtaSts));
        assert!(!satisfies(
            &enc,
            &Requirement::Encrypt { sts_testing: true }
        ));
    }
}
