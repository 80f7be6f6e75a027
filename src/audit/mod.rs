//! Tamper-evident audit trail.
//!
//! Every hop of a message (and every admin action) appends one record to the `audit`
//! tree of the spool's store, keyed by big-endian sequence number. Records form a hash
//! chain sealed with an HMAC under a key derived from the master key (see [`record`]);
//! person fields are encrypted at rest. The head (seq, hash) is kept, MACed, in
//! `audit_meta` in the same batch as every append, and is logged periodically so a
//! truncated store can be detected against an outside copy.
//!
//! Appends that belong to a message state change go through [`Audit::batch`] and the
//! spool's `*_with` methods, so the state change and its record commit atomically.
//! One mutex covers seq allocation and the commit: seq order is commit order.
//!
//! Retention purges a prefix of the chain. Before deleting, the hash of the last purged
//! record is stored as the MACed `anchor` marker; `verify` then starts from the anchor
//! (first record = anchor.seq + 1, its `prev` = anchor.hash). The purge itself is a
//! record in the chain, committed in the same batch as the deletions.

pub mod event;
pub mod export;
pub mod incident;
pub mod record;
pub mod syslog;
pub mod verify;

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use event::{AuditEvent, Kind};
pub use export::{export, ExportFilter, Format};
use record::{AuditKeys, Hash, Marker};
pub use verify::{verify, Broken, Report};

use crate::spool::{Attach, Keyring, Op, Receipt, Spool, SpoolError, Store, Tree};

pub(crate) const HEAD_KEY: &[u8] = b"head";
pub(crate) const ANCHOR_KEY: &[u8] = b"anchor";

/// Errors at the audit edge. Never carries PHI.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit storage: {0}")]
    Io(#[from] io::Error),
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("audit record {0} is unreadable or fails its HMAC; run `phigate audit verify`")]
    Corrupt(u64),
    #[error("audit record {seq} needs master key {key}, which is not in the keyring")]
    MissingKey { seq: u64, key: String },
    #[error("audit syslog target `{0}`: use udp://HOST:PORT, unix:///PATH or /PATH")]
    SyslogTarget(String),
}

/// Settings from `[audit]`.
#[derive(Debug, Clone)]
pub struct AuditSettings {
    pub hostname: String,
    /// How often the chain head goes to the system log (0 = never).
    pub head_log_interval: Duration,
    /// Records older than this are purged (0 = keep for ever).
    pub retention: Duration,
    /// RFC 5424 forwarding target, if any.
    pub syslog: Option<String>,
    pub syslog_include_addresses: bool,
}

impl Default for AuditSettings {
    fn default() -> Self {
        AuditSettings {
            hostname: "localhost".into(),
            head_log_interval: Duration::from_secs(600),
            retention: Duration::from_secs(6 * 365 * 86400),
            syslog: None,
            syslog_include_addresses: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Head {
    seq: u64,
    hash: Hash,
}

/// Longest a deferred connection event waits for a write to join.
const DEFERRED_FLUSH: Duration = Duration::from_secs(1);
/// Deferred events held at most (a connection flood writes them in batches of this size).
const DEFERRED_MAX: usize = 256;

/// Derives further writes (the event store's records) from each audit event, inside the
/// commit that appends it: an event exists iff its record does. Installed by the server
/// so audit does not depend on the modules that consume it.
pub trait Derive: Send + Sync {
    /// Push the ops for `ev` (chained as `seq` at `ts_ms`) onto `ops`.
    fn derive(
        &self,
        master: &crate::spool::MasterKey,
        seq: u64,
        ts_ms: u64,
        ev: &AuditEvent,
        ops: &mut Vec<Op>,
    );
    /// The commit holding the derived ops is durable.
    fn committed(&self);
}

/// The audit trail service. Share it behind an `Arc`.
pub struct Audit {
    derive: std::sync::OnceLock<Arc<dyn Derive>>,
    spool: Arc<Spool>,
    head: Mutex<Head>,
    /// Writes waiting for the next flush (or [`DEFERRED_FLUSH`]), in arrival order.
    staged: Mutex<Vec<Staged>>,
    syslog: Option<syslog::Syslog>,
    settings: AuditSettings,
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Audit")
    }
}

/// Events to commit with a spool state change; pass to the spool's `*_with` methods.
pub struct Batch<'a> {
    audit: &'a Audit,
    events: Vec<AuditEvent>,
    /// More writes for the same transaction (e.g. sending-limit counters).
    extra: Vec<Op>,
}

impl Batch<'_> {
    /// Commit `ops` in the same transaction as the state change and its records.
    pub fn with_ops(mut self, ops: Vec<Op>) -> Self {
        self.extra.extend(ops);
        self
    }
}

impl Attach for Batch<'_> {
    fn commit(&self, _store: &dyn Store, mut ops: Vec<Op>) -> io::Result<Option<Receipt>> {
        ops.extend(self.extra.iter().cloned());
        let receipt = Receipt::default();
        self.audit.stage(Staged {
            ts: now_ms(),
            ops,
            events: self.events.clone(),
            receipt: Some(receipt.clone()),
        });
        Ok(Some(receipt))
    }
}

/// A state change and its events, waiting to be chained and committed with others.
struct Staged {
    ts: u64,
    ops: Vec<Op>,
    events: Vec<AuditEvent>,
    /// None for connection-level events nobody waits for.
    receipt: Option<Receipt>,
}

pub(crate) fn seq_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

pub(crate) fn seq_of(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.try_into().ok()?))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Derived keys per master key ID, for reading many records.
pub(crate) struct KeyCache<'a> {
    ring: &'a Keyring,
    keys: HashMap<String, AuditKeys>,
}

impl<'a> KeyCache<'a> {
    pub(crate) fn new(ring: &'a Keyring) -> Self {
        KeyCache {
            ring,
            keys: HashMap::new(),
        }
    }

    pub(crate) fn get(&mut self, id: &str) -> Option<&AuditKeys> {
        if !self.keys.contains_key(id) {
            let k = AuditKeys::derive(self.ring.get(id)?);
            self.keys.insert(id.to_string(), k);
        }
        self.keys.get(id)
    }
}

pub(crate) fn read_marker(store: &dyn Store, key: &[u8]) -> io::Result<Option<Marker>> {
    Ok(store
        .get(Tree::AuditMeta, key)?
        .and_then(|v| serde_json::from_slice(&v).ok()))
}

/// The head as recorded, or (if the marker is missing or behind) derived by walking.
fn load_head(store: &dyn Store) -> io::Result<Head> {
    let mut head = Head {
        seq: 0,
        hash: [0u8; 32],
    };
    let start = match read_marker(store, HEAD_KEY)? {
        Some(m) => {
            if let Some(h) = record::parse_hash(&m.hash) {
                head = Head {
                    seq: m.seq,
                    hash: h,
                };
            }
            m.seq.saturating_add(1)
        }
        None => 0,
    };
    store.scan(Tree::Audit, &seq_key(start), None, &mut |k, v| {
        if let Some(seq) = seq_of(k) {
            head = Head {
                seq,
                hash: record::hash(v),
            };
        }
        true
    })?;
    Ok(head)
}

impl Audit {
    /// Open the trail kept in `spool`'s store.
    pub fn open(spool: Arc<Spool>, settings: AuditSettings) -> Result<Arc<Audit>, AuditError> {
        let head = load_head(spool.store().as_ref())?;
        let syslog = match &settings.syslog {
            Some(t) => Some(syslog::Syslog::open(
                t,
                &settings.hostname,
                settings.syslog_include_addresses,
            )?),
            None => None,
        };
        let audit = Arc::new(Audit {
            spool: spool.clone(),
            head: Mutex::new(head),
            derive: std::sync::OnceLock::new(),
            staged: Mutex::new(Vec::new()),
            syslog,
            settings,
        });
        let weak = Arc::downgrade(&audit);
        spool.on_flush(Box::new(move || {
            if let Some(a) = weak.upgrade() {
                a.flush_deferred();
            }
        }));
        Ok(audit)
    }

    /// Install the derive hook (once; later calls are ignored).
    pub fn set_derive(&self, d: Arc<dyn Derive>) {
        let _ = self.derive.set(d);
    }

    /// The chain head: (seq, hex hash). Seq 0 means empty.
    pub fn head(&self) -> (u64, String) {
        self.flush_deferred();
        let h = *self.head.lock().unwrap_or_else(|p| p.into_inner());
        (h.seq, hex::encode(h.hash))
    }

    /// Attach `events` to a spool state change (`spool.enqueue_with(.., &audit.batch(ev))`).
    pub fn batch(&self, events: Vec<AuditEvent>) -> Batch<'_> {
        Batch {
            audit: self,
            events,
            extra: Vec::new(),
        }
    }

    /// Append `events` on their own and wait until they are durable.
    pub async fn record(&self, events: Vec<AuditEvent>) -> Result<(), AuditError> {
        Ok(self
            .spool
            .commit_attached(Vec::new(), &self.batch(events))
            .await?)
    }

    /// Append a connection-level event without a write of its own: it keeps its time and
    /// joins the next spool write (usually the message the connection delivers), or is
    /// written within [`DEFERRED_FLUSH`] by [`Audit::run`]. Every write to the spool
    /// store is a sled transaction with its own log syncs, so one per connection event
    /// would cost more than the message itself.
    pub fn record_now(&self, ev: AuditEvent) {
        let full = self.stage(Staged {
            ts: now_ms(),
            ops: Vec::new(),
            events: vec![ev],
            receipt: None,
        });
        if full {
            self.flush_deferred();
        }
    }

    /// Queue a write for the next flush; true when enough are waiting to write them now.
    fn stage(&self, s: Staged) -> bool {
        let mut q = self.staged.lock().unwrap_or_else(|p| p.into_inner());
        q.push(s);
        q.len() >= DEFERRED_MAX
    }

    /// Write staged records now (before an export or verify, and at exit); the group
    /// commit calls this before each flush.
    pub fn flush_deferred(&self) {
        if let Err(e) = self.commit_staged() {
            warn!(error = %e, "audit append failed");
        }
    }

    /// Chain every staged event after the head and commit them with their state changes
    /// in one store transaction. On failure nothing is written: waiters get the error and
    /// connection events stay staged for the next try.
    fn commit_staged(&self) -> io::Result<()> {
        let mut head = self.head.lock().unwrap_or_else(|p| p.into_inner());
        // Taken under the head lock, so the chain follows staging order.
        let mut staged =
            std::mem::take(&mut *self.staged.lock().unwrap_or_else(|p| p.into_inner()));
        if staged.is_empty() {
            return Ok(());
        }
        let ring = self.spool.keyring();
        let master = ring.current();
        let keys = AuditKeys::derive(master);
        let mut ops = Vec::new();
        let mut next = *head;
        let mut forwarded = Vec::new();
        for st in &mut staged {
            // Moved, not cloned: a staged message's ciphertext is not copied again.
            ops.append(&mut st.ops);
        }
        for st in &staged {
            for ev in &st.events {
                next.seq += 1;
                let stored = record::encode(&keys, master.id(), next.seq, st.ts, &next.hash, ev);
                next.hash = record::hash(&stored);
                ops.push(Op::Put(Tree::Audit, seq_key(next.seq).to_vec(), stored));
                if let Some(d) = self.derive.get() {
                    d.derive(master, next.seq, st.ts, ev, &mut ops);
                }
                forwarded.push((next.seq, next.hash, st.ts, ev));
            }
        }
        let marker = Marker::new(&keys, master.id(), next.seq, &next.hash);
        ops.push(Op::Put(
            Tree::AuditMeta,
            HEAD_KEY.to_vec(),
            serde_json::to_vec(&marker).unwrap_or_default(),
        ));
        if let Err(e) = self.spool.store().commit(&ops) {
            let msg = e.to_string();
            let mut q = self.staged.lock().unwrap_or_else(|p| p.into_inner());
            let later = std::mem::take(&mut *q);
            for st in staged {
                match &st.receipt {
                    Some(r) => r.fill(Err(msg.clone())),
                    None => q.push(st),
                }
            }
            q.extend(later);
            return Err(e);
        }
        *head = next;
        drop(head);
        if let Some(d) = self.derive.get() {
            d.committed();
        }
        for st in &staged {
            if let Some(r) = &st.receipt {
                r.fill(Ok(()));
            }
        }
        if let Some(s) = &self.syslog {
            for (seq, hash, ts, ev) in forwarded {
                s.send(seq, ts, ev, &hash);
            }
        }
        Ok(())
    }

    /// An administrator acted on a message with no spool state change of its own
    /// (e.g. viewed its body). For quarantine / release / delete use
    /// `spool.{quarantine,release,shred}_with(.., &audit.batch(vec![AuditEvent::admin(..)]))`.
    pub async fn admin_action(
        &self,
        kind: Kind,
        admin: &str,
        id: crate::types::MessageId,
    ) -> Result<(), AuditError> {
        self.record(vec![AuditEvent::admin(kind, admin, id)]).await
    }

    /// Verify the chain of the running daemon while no record can be appended, so a record
    /// written mid-walk is never reported as truncation. Appends (and so acceptance of
    /// new mail) wait for the walk: an admin action, not something to run in a loop.
    pub fn verify_quiesced(&self, external: Option<(u64, [u8; 32])>) -> Result<Report, Broken> {
        self.flush_deferred();
        let _hold = self.head.lock().unwrap_or_else(|p| p.into_inner());
        verify(self.spool.store().as_ref(), &self.spool.keyring(), external)
    }

    /// Retention: delete records older than `cutoff_ms` (up to `limit` per call), keep an
    /// anchor marker for the last one deleted, and record the purge. Returns how many.
    pub async fn purge_before(&self, cutoff_ms: u64, limit: usize) -> Result<u64, AuditError> {
        let store = self.spool.store().clone();
        let head_seq = self.head().0;
        let mut last: Option<(u64, Hash)> = None;
        let mut ops = Vec::new();
        store.scan(Tree::Audit, &[], None, &mut |k, v| {
            let (Some(seq), Ok((b, _, _))) = (seq_of(k), record::parse(v)) else {
                return false;
            };
            if b.ts >= cutoff_ms || seq > head_seq || ops.len() >= limit {
                return false;
            }
            ops.push(Op::Delete(Tree::Audit, k.to_vec()));
            last = Some((seq, record::hash(v)));
            true
        })?;
        let Some((seq, hash)) = last else {
            return Ok(0);
        };
        let n = ops.len() as u64;
        let ring = self.spool.keyring();
        let keys = AuditKeys::derive(ring.current());
        let anchor = Marker::new(&keys, ring.current().id(), seq, &hash);
        ops.push(Op::Put(
            Tree::AuditMeta,
            ANCHOR_KEY.to_vec(),
            serde_json::to_vec(&anchor).unwrap_or_default(),
        ));
        let ev = AuditEvent::new(Kind::RetentionPurge)
            .field("purged", n)
            .field("through_seq", seq)
            .field("anchor_hash", hex::encode(hash))
            .field("cutoff_ms", cutoff_ms);
        self.spool
            .commit_attached(ops, &self.batch(vec![ev]))
            .await?;
        Ok(n)
    }

    /// Periodic work until `shutdown`: log the head (seq + hash only) every
    /// `head_log_interval`, and purge past retention once an hour.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let tick = if self.settings.head_log_interval.is_zero() {
            Duration::from_secs(3600)
        } else {
            self.settings.head_log_interval
        };
        let mut last_purge = std::time::Instant::now();
        let mut last_head = std::time::Instant::now();
        self.log_head();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(DEFERRED_FLUSH) => {}
                _ = shutdown.cancelled() => {}
            }
            self.flush_deferred();
            if shutdown.is_cancelled() {
                break;
            }
            if last_head.elapsed() < tick {
                continue;
            }
            last_head = std::time::Instant::now();
            if !self.settings.head_log_interval.is_zero() {
                self.log_head();
            }
            if !self.settings.retention.is_zero()
                && last_purge.elapsed() >= Duration::from_secs(3600)
            {
                last_purge = std::time::Instant::now();
                let cutoff = now_ms().saturating_sub(self.settings.retention.as_millis() as u64);
                match self.purge_before(cutoff, 10_000).await {
                    Ok(0) => {}
                    Ok(n) => info!(purged = n, "audit records past retention purged"),
                    Err(e) => warn!(error = %e, "audit retention purge failed"),
                }
            }
        }
        self.log_head();
    }

    /// Write the head to the system log: an outside copy against truncation.
    pub fn log_head(&self) {
        let (seq, hash) = self.head();
        info!(audit_seq = seq, audit_head = %hash, "audit chain head");
    }
}

#[cfg(test)]
pub(crate) mod tests;
