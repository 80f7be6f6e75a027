//! Durable event store: one record per message state change (and per security alert),
//! derived from the audit record inside the same store commit (see
//! [`crate::audit::Derive`]), so an event exists iff its state change committed.
//!
//! Key = cursor (the audit seq, u64 BE, strictly increasing); value = JSON with the clear
//! facts (type, time, message id, recipient index, codes, TLS facts, owner identity)
//! and the person fields (recipient, remote reply text, submission metadata) sealed
//! under a key derived from the master key named in the record.

mod map;
mod seal;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::watch;

pub use map::event_type;
use seal::EventKey;

use crate::audit::{AuditEvent, Derive, Kind};
use crate::spool::{Keyring, MasterKey, Op, Store, Tree};
use crate::types::MessageId;

/// Errors at the events edge. Never carries PHI.
#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    #[error("event storage: {0}")]
    Io(#[from] std::io::Error),
    #[error("event {0} is unreadable")]
    Corrupt(u64),
    #[error("event {cursor} needs master key {key}, which is not in the keyring")]
    MissingKey { cursor: u64, key: String },
}

/// Stored form of one event.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    v: u8,
    key: String,
    ts: u64,
    #[serde(rename = "type")]
    kind: String,
    msg: Option<String>,
    rcpt: Option<u64>,
    owner: Option<String>,
    data: Map<String, Value>,
    sealed: Option<String>,
}

/// One event as read back (person fields decrypted, in memory only).
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub cursor: u64,
    pub kind: String,
    pub created_ms: u64,
    pub message_id: Option<String>,
    pub recipient_index: Option<u64>,
    /// Submitting identity of the message (`password:ehr`, `api:NAME`).
    pub owner: Option<String>,
    pub data: Map<String, Value>,
    pub metadata: Map<String, Value>,
    recipient: Option<String>,
}

impl Event {
    /// Stable ID, the same on every redelivery.
    pub fn id(&self) -> String {
        format!("evt_{}", self.cursor)
    }

    /// The recipient address (only for callers allowed to see addresses).
    pub fn recipient(&self) -> Option<&str> {
        self.recipient.as_deref()
    }

    /// The JSON GET /v1/events and webhooks send. The recipient address only when
    /// `include_addresses`; remote reply text (which can echo addresses) never.
    pub fn to_json(&self, include_addresses: bool) -> Value {
        let created =
            time::OffsetDateTime::from_unix_timestamp_nanos(self.created_ms as i128 * 1_000_000)
                .ok()
                .and_then(|t| {
                    t.format(&time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .unwrap_or_default();
        let mut o = serde_json::json!({
            "id": self.id(),
            "type": self.kind,
            "created": created,
            "message_id": self.message_id,
            "recipient_index": self.recipient_index,
            "data": self.data,
            "metadata": self.metadata,
        });
        if include_addresses {
            o["recipient"] = self.recipient.clone().into();
        }
        o
    }
}

impl Serialize for Event {
    /// Without addresses: the safe default.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_json(false).serialize(s)
    }
}

/// A page of events; pass `next` as `after` for the following page.
#[derive(Debug, Clone, Serialize)]
pub struct Page {
    pub events: Vec<Event>,
    pub next: Option<u64>,
}

/// Per-message facts later events of the message inherit.
#[derive(Debug, Clone, Default)]
struct Origin {
    owner: Option<String>,
    metadata: Map<String, Value>,
}

/// The event store. Share it behind an `Arc`; install with [`Audit::set_derive`](crate::audit::Audit::set_derive).
pub struct Events {
    store: Arc<dyn Store>,
    keyring: Box<dyn Fn() -> Arc<Keyring> + Send + Sync>,
    /// Origins by message id (owner + metadata), from MessageReceived. Kept in memory and
    /// in `Meta` under `evorigin:<id>` (sealed) so a restart still knows them.
    origins: Mutex<HashMap<String, Origin>>,
    /// TLS facts of the latest attempt per (message, recipient index): the delivered
    /// event that follows it (usually in the same commit) carries them.
    attempts: Mutex<HashMap<(String, u64), Map<String, Value>>>,
    tx: watch::Sender<u64>,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Events")
    }
}

fn origin_key(id: &str) -> Vec<u8> {
    format!("evorigin:{id}").into_bytes()
}

/// `evmsg:<id>:` ++ cursor (u64 BE) -> empty: a message's events without a full scan.
fn by_message_prefix(id: &str) -> Vec<u8> {
    format!("evmsg:{id}:").into_bytes()
}

fn by_message_key(id: &str, cursor: u64) -> Vec<u8> {
    let mut k = by_message_prefix(id);
    k.extend_from_slice(&cursor.to_be_bytes());
    k
}

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

impl Events {
    pub fn new(
        store: Arc<dyn Store>,
        keyring: impl Fn() -> Arc<Keyring> + Send + Sync + 'static,
    ) -> Arc<Events> {
        let mut last = 0;
        let _ = store.scan(Tree::Events, &[], None, &mut |k, _| {
            if let Ok(b) = <[u8; 8]>::try_from(k) {
                last = u64::from_be_bytes(b);
            }
            true
        });
        let (tx, _) = watch::channel(last);
        Arc::new(Events {
            store,
            keyring: Box::new(keyring),
            origins: Mutex::new(HashMap::new()),
            attempts: Mutex::new(HashMap::new()),
            tx,
        })
    }

    /// A receiver whose value is the newest committed cursor; `changed()` wakes after
    /// each commit.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.tx.subscribe()
    }

    /// Events after `after` (oldest first), at most `limit`, only of `owner` if given.
    pub fn page(
        &self,
        after: Option<u64>,
        limit: usize,
        owner: Option<&str>,
    ) -> Result<Page, EventsError> {
        let start = after.map(|a| a.saturating_add(1)).unwrap_or(0);
        let mut raw = Vec::new();
        let mut last_seen = None;
        self.store
            .scan(Tree::Events, &start.to_be_bytes(), None, &mut |k, v| {
                let Ok(b) = <[u8; 8]>::try_from(k) else {
                    return true;
                };
                let c = u64::from_be_bytes(b);
                last_seen = Some(c);
                match serde_json::from_slice::<Stored>(v) {
                    Ok(s) if owner.is_none() || s.owner.as_deref() == owner => raw.push((c, s)),
                    Ok(_) => {}
                    // A damaged record must not stall every reader and webhook at this
                    // cursor for ever: skip it, and say so.
                    Err(_) => tracing::warn!(cursor = c, "unreadable event record skipped"),
                }
                raw.len() < limit
            })?;
        let events = raw
            .into_iter()
            .filter_map(|(c, s)| match self.open(c, s) {
                Ok(e) => Some(e),
                Err(e) => {
                    tracing::warn!(cursor = c, error = %e, "unreadable event record skipped");
                    None
                }
            })
            .collect::<Vec<_>>();
        let next = events.last().map(|e| e.cursor).or(last_seen).or(after);
        Ok(Page { events, next })
    }

    /// Every event of message `id`, oldest first (through the per-message index).
    pub fn for_message(&self, id: &MessageId) -> Result<Vec<Event>, EventsError> {
        let want = id.to_string();
        let prefix = by_message_prefix(&want);
        let mut end = prefix.clone();
        end.push(0xff);
        let mut cursors = Vec::new();
        self.store
            .scan(Tree::Meta, &prefix, Some(&end), &mut |k, _| {
                if let Ok(b) = <[u8; 8]>::try_from(&k[prefix.len()..]) {
                    cursors.push(u64::from_be_bytes(b));
                }
                true
            })?;
        let mut out = Vec::new();
        for c in cursors {
            let Some(v) = self.store.get(Tree::Events, &c.to_be_bytes())? else {
                continue;
            };
            if let Ok(s) = serde_json::from_slice::<Stored>(&v) {
                if s.msg.as_deref() == Some(want.as_str()) {
                    out.push(self.open(c, s)?);
                }
            }
        }
        Ok(out)
    }

    /// How many sealed event records (and message origins) each master key ID seals,
    /// for `keys list`: a key still sealing events should not be removed.
    pub fn key_usage(&self) -> Result<std::collections::BTreeMap<String, u64>, EventsError> {
        let mut usage = std::collections::BTreeMap::new();
        let mut count = |v: &[u8]| {
            if let Ok(s) = serde_json::from_slice::<Stored>(v) {
                if s.sealed.is_some() {
                    *usage.entry(s.key).or_insert(0u64) += 1;
                }
            }
            true
        };
        self.store
            .scan(Tree::Events, &[], None, &mut |_, v| count(v))?;
        let (start, end) = (b"evorigin:".to_vec(), b"evorigin;".to_vec());
        self.store
            .scan(Tree::Meta, &start, Some(&end), &mut |_, v| count(v))?;
        Ok(usage)
    }

    /// Seal again under the current master key every event (and origin) sealed under an
    /// older one, so `keys rewrap` leaves old keys sealing nothing. Compare-and-swap: a
    /// record purged meanwhile stays purged. Returns how many changed.
    pub fn reseal(&self) -> Result<u64, EventsError> {
        let ring = (self.keyring)();
        let current = ring.current();
        let new_key = EventKey::derive(current);
        let mut todo: Vec<(Tree, Vec<u8>, Vec<u8>, u64)> = Vec::new();
        let mut collect = |tree: Tree, k: &[u8], v: &[u8], aad: u64| {
            if let Ok(s) = serde_json::from_slice::<Stored>(v) {
                if s.sealed.is_some() && s.key != current.id() {
                    todo.push((tree, k.to_vec(), v.to_vec(), aad));
                }
            }
        };
        self.store.scan(Tree::Events, &[], None, &mut |k, v| {
            if let Ok(b) = <[u8; 8]>::try_from(k) {
                collect(Tree::Events, k, v, u64::from_be_bytes(b));
            }
            true
        })?;
        let (start, end) = (b"evorigin:".to_vec(), b"evorigin;".to_vec());
        self.store
            .scan(Tree::Meta, &start, Some(&end), &mut |k, v| {
                // Origins are sealed with AAD cursor 0 (they have no cursor of their own).
                collect(Tree::Meta, k, v, 0);
                true
            })?;
        let mut changed = 0;
        for (tree, k, old, aad) in todo {
            let Ok(mut s) = serde_json::from_slice::<Stored>(&old) else {
                continue;
            };
            let (Some(master), Some(b)) = (ring.get(&s.key), &s.sealed) else {
                continue;
            };
            let Some(plain) = B64
                .decode(b)
                .ok()
                .and_then(|raw| EventKey::derive(master).open(aad, &raw))
            else {
                tracing::warn!(tree = ?tree, "event record not resealed: unreadable");
                continue;
            };
            s.key = current.id().to_string();
            s.sealed = Some(B64.encode(new_key.seal(aad, &plain)));
            let new = serde_json::to_vec(&s).map_err(|_| EventsError::Corrupt(aad))?;
            if self.store.compare_and_swap(tree, &k, &old, &new)? {
                changed += 1;
            }
        }
        Ok(changed)
    }

    /// Delete events older than `cutoff_ms` (at most `limit`). Returns how many.
    pub fn purge_before(&self, cutoff_ms: u64, limit: usize) -> Result<u64, EventsError> {
        let mut ops = Vec::new();
        self.store.scan(Tree::Events, &[], None, &mut |k, v| {
            let old = serde_json::from_slice::<Stored>(v)
                .map(|s| s.ts < cutoff_ms)
                .unwrap_or(true);
            if !old || ops.len() >= limit {
                return false;
            }
            ops.push(Op::Delete(Tree::Events, k.to_vec()));
            let stored = serde_json::from_slice::<Stored>(v).ok();
            if let (Some(m), Ok(c)) = (stored.and_then(|s| s.msg), <[u8; 8]>::try_from(k)) {
                ops.push(Op::Delete(
                    Tree::Meta,
                    by_message_key(&m, u64::from_be_bytes(c)),
                ));
            }
            true
        })?;
        let n = ops
            .iter()
            .filter(|o| matches!(o, Op::Delete(Tree::Events, _)))
            .count() as u64;
        if n > 0 {
            self.store.commit(&ops)?;
        }
        Ok(n)
    }

    /// Retention until `shutdown`: purge events older than `retention` once an hour
    /// (0 = keep for ever).
    pub async fn run_retention(
        self: Arc<Self>,
        retention: std::time::Duration,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        if retention.is_zero() {
            return;
        }
        loop {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            let cutoff = now.saturating_sub(retention.as_millis() as u64);
            match self.purge_before(cutoff, 10_000) {
                Ok(0) => {}
                Ok(n) => tracing::info!(purged = n, "events past retention purged"),
                Err(e) => tracing::warn!(error = %e, "event retention purge failed"),
            }
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_secs(3600)) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    fn open_sealed(&self, cursor: u64, s: &Stored) -> Result<Map<String, Value>, EventsError> {
        let Some(b) = &s.sealed else {
            return Ok(Map::new());
        };
        let ring = (self.keyring)();
        let master = ring.get(&s.key).ok_or_else(|| EventsError::MissingKey {
            cursor,
            key: s.key.clone(),
        })?;
        let raw = B64.decode(b).map_err(|_| EventsError::Corrupt(cursor))?;
        let plain = EventKey::derive(master)
            .open(cursor, &raw)
            .ok_or(EventsError::Corrupt(cursor))?;
        serde_json::from_slice(&plain).map_err(|_| EventsError::Corrupt(cursor))
    }

    fn open(&self, cursor: u64, s: Stored) -> Result<Event, EventsError> {
        if s.v == 0 {
            return Err(EventsError::Corrupt(cursor));
        }
        // A sealed part that cannot be opened (its master key removed, or damage) must
        // not stall readers and webhooks: the event keeps its clear facts.
        let mut private = self.open_sealed(cursor, &s).unwrap_or_else(|e| {
            tracing::warn!(cursor, error = %e, "event person fields unreadable; sent without them");
            Map::new()
        });
        let metadata = match private.remove("metadata") {
            Some(Value::Object(m)) => m,
            _ => Map::new(),
        };
        Ok(Event {
            cursor,
            kind: s.kind,
            created_ms: s.ts,
            message_id: s.msg,
            recipient_index: s.rcpt,
            owner: s.owner,
            data: s.data,
            metadata,
            recipient: private
                .get("recipient")
                .and_then(Value::as_str)
                .map(str::to_string),
        })
    }

    fn origin(&self, id: &str, master: &MasterKey) -> Origin {
        let mut m = self.origins.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(o) = m.get(id) {
            return o.clone();
        }
        let o = self.load_origin(id, master).unwrap_or_default();
        if m.len() > 100_000 {
            m.clear();
        }
        m.insert(id.to_string(), o.clone());
        o
    }

    fn load_origin(&self, id: &str, _master: &MasterKey) -> Option<Origin> {
        let v = self.store.get(Tree::Meta, &origin_key(id)).ok()??;
        let s: Stored = serde_json::from_slice(&v).ok()?;
        let ring = (self.keyring)();
        let mut metadata = Map::new();
        if let Some(b) = &s.sealed {
            let raw = B64.decode(b).ok()?;
            let plain = EventKey::derive(ring.get(&s.key)?).open(0, &raw)?;
            metadata = serde_json::from_slice(&plain).ok()?;
        }
        Some(Origin {
            owner: s.owner,
            metadata,
        })
    }
}

impl Derive for Events {
    fn derive(&self, master: &MasterKey, seq: u64, ts_ms: u64, ev: &AuditEvent, ops: &mut Vec<Op>) {
        let key = EventKey::derive(master);
        if ev.kind == Kind::MessageReceived {
            if let Some(id) = ev.msg {
                let owner = ev
                    .private
                    .get("auth_identity")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                let metadata = match ev.private.get("metadata") {
                    Some(Value::Object(m)) => m.clone(),
                    _ => Map::new(),
                };
                let sealed = (!metadata.is_empty()).then(|| {
                    B64.encode(key.seal(0, &serde_json::to_vec(&metadata).unwrap_or_default()))
                });
                let s = Stored {
                    v: 1,
                    key: master.id().to_string(),
                    ts: ts_ms,
                    kind: String::new(),
                    msg: Some(id.to_string()),
                    rcpt: None,
                    owner: owner.clone(),
                    data: Map::new(),
                    sealed,
                };
                ops.push(Op::Put(
                    Tree::Meta,
                    origin_key(&id.to_string()),
                    serde_json::to_vec(&s).unwrap_or_default(),
                ));
                self.origins
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(id.to_string(), Origin { owner, metadata });
            }
            return;
        }
        let msg = ev.msg.map(|m| m.to_string());
        let rcpt = ev.data.get("rcpt_index").and_then(Value::as_u64);
        let mut attempts = self.attempts.lock().unwrap_or_else(|p| p.into_inner());
        if let (Kind::PolicyDecision, Some(m)) = (ev.kind, &msg) {
            if let Some(rule) = ev.data.get("rule").filter(|r| !r.is_null()) {
                attempts.insert(
                    (m.clone(), u64::MAX),
                    Map::from_iter([("rule".to_string(), rule.clone())]),
                );
            }
            return;
        }
        if let (Kind::DeliveryAttempt, Some(m), Some(r)) = (ev.kind, &msg, rcpt) {
            if attempts.len() > 10_000 {
                attempts.clear();
            }
            attempts.insert((m.clone(), r), map::clear_data(ev));
            return;
        }
        let Some(kind) = map::event_type(ev) else {
            return;
        };
        let mut data = map::clear_data(ev);
        if let (Some(m), Some(r)) = (&msg, rcpt) {
            if let Some(tls) = attempts.remove(&(m.clone(), r)) {
                if matches!(ev.kind, Kind::Delivered | Kind::Deferred | Kind::Bounced) {
                    for (k, v) in tls {
                        data.entry(k).or_insert(v);
                    }
                }
            }
        }
        if let Some(m) = &msg {
            // The policy rule that quarantined the message at acceptance.
            if let Some(rule) = attempts.remove(&(m.clone(), u64::MAX)) {
                if kind == "message.quarantined" {
                    data.extend(rule);
                }
            }
        }
        drop(attempts);
        let origin = msg
            .as_deref()
            .map(|m| self.origin(m, master))
            .unwrap_or_default();
        let mut private = map::private_data(ev);
        if !origin.metadata.is_empty() {
            private.insert("metadata".into(), Value::Object(origin.metadata));
        }
        let sealed = (!private.is_empty())
            .then(|| B64.encode(key.seal(seq, &serde_json::to_vec(&private).unwrap_or_default())));
        let s = Stored {
            v: 1,
            key: master.id().to_string(),
            ts: ts_ms,
            kind: kind.to_string(),
            msg,
            rcpt,
            owner: origin.owner,
            data,
            sealed,
        };
        if let Some(m) = &s.msg {
            ops.push(Op::Put(Tree::Meta, by_message_key(m, seq), Vec::new()));
        }
        ops.push(Op::Put(
            Tree::Events,
            seq.to_be_bytes().to_vec(),
            serde_json::to_vec(&s).unwrap_or_default(),
        ));
    }

    fn committed(&self) {
        let mut last = 0;
        let _ = self.store.scan(
            Tree::Events,
            &self.tx.borrow().saturating_add(1).to_be_bytes(),
            None,
            &mut |k, _| {
                if let Ok(b) = <[u8; 8]>::try_from(k) {
                    last = u64::from_be_bytes(b);
                }
                true
            },
        );
        if last > 0 {
            self.tx.send_replace(last);
        }
    }
}

#[cfg(test)]
mod tests;
