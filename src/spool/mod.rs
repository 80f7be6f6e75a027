//! Encrypted, durable message spool.
//!
//! Every accepted message is sealed under its own data key (see [`crypto`]), the data key
//! is wrapped by the keyring's current master key (see [`keys`]), and the rows are written
//! atomically to a [`Store`] and flushed with group commit before `enqueue` returns.
//! In clear on disk: message IDs, state tags, times, counters and key IDs. Nothing else.

pub mod blob;
pub mod crypto;
pub mod group_commit;
pub mod keys;
mod lifecycle;
pub mod records;
pub mod store;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, RwLock};

use serde::Serialize;
use zeroize::Zeroizing;

use crate::types::{now_secs, Envelope, MessageId, Status};
use crypto::{CryptoError, DataKey, RecordKind};
use group_commit::GroupCommit;
pub use keys::{KeyInfo, Keyring, KeyringError, MasterKey};
use records::{decode_queue_row, encode_queue_row, schedule_key};
pub use records::{
    Attempt, QuarantineEntry, QueueSummary, RecipientState, RecipientSummary, StateTag,
};
pub use store::{Op, SledStore, Store, Tree};

/// Errors at the spool's edge. Messages carry IDs only, never PHI.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The store could not read or write (disk full, I/O error). Ingress answers `452 4.3.1`.
    #[error("spool storage error: {0}")]
    Io(#[from] std::io::Error),
    #[error(
        "message {id}: stored data failed authentication (tampered or corrupt); not delivered"
    )]
    Tampered { id: MessageId },
    #[error("message {0} is not in the spool")]
    NotFound(MessageId),
    #[error("message {0} is already in the spool")]
    Exists(MessageId),
    #[error("message {0} was crypto-shredded; its content is gone")]
    Shredded(MessageId),
    #[error("the spool holds messages wrapped by master keys missing from the keyring: {}", .0.join(", "))]
    MissingKeys(Vec<String>),
    #[error("master key {id} in the keyring is not the key that wrapped stored messages (same ID, wrong key bytes)")]
    WrongKey { id: String },
    #[error("message {id}: expected {expected} recipient states, got {got}")]
    RecipientCount {
        id: MessageId,
        expected: usize,
        got: usize,
    },
    #[error("message {0}: queue record is corrupt")]
    Corrupt(MessageId),
    #[error(transparent)]
    Keyring(#[from] KeyringError),
}

/// Counts for `queue stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SpoolStats {
    /// Messages with a queue row (including finished ones still within metadata retention).
    pub messages: u64,
    /// Messages with at least one recipient not yet final.
    pub pending: u64,
    /// Recipients per state.
    pub recipients_by_state: BTreeMap<StateTag, u64>,
    /// Age in seconds of the oldest pending message.
    pub oldest_pending_age: Option<u64>,
    /// Flushes performed by group commit since open.
    pub flushes: u64,
}

/// Writes that must land in the same atomic batch as a spool state change (the audit
/// chain). `commit` either commits `ops` with its own writes in one `store.commit`, or
/// stages them (returning a [`Receipt`]) for a flush hook (see [`Spool::on_flush`]) that
/// commits everything staged in one batch right before the group-commit flush. Either
/// way the state change and its record are written together or not at all.
pub trait Attach: Send + Sync {
    fn commit(&self, store: &dyn Store, ops: Vec<Op>) -> std::io::Result<Option<Receipt>>;
}

/// Nothing attached: a plain commit.
pub struct NoAttach;

impl Attach for NoAttach {
    fn commit(&self, store: &dyn Store, ops: Vec<Op>) -> std::io::Result<Option<Receipt>> {
        store.commit(&ops).map(|()| None)
    }
}

/// The outcome of a staged write, filled in by whoever commits it.
#[derive(Clone, Default)]
pub struct Receipt(Arc<std::sync::Mutex<Option<Result<(), String>>>>);

impl Receipt {
    pub fn fill(&self, res: Result<(), String>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(res);
    }

    fn take(&self) -> Option<Result<(), String>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

const KCV_PREFIX: &str = "kcv/";
const META_PREFIX: &str = "m/";

/// The spool. Cheap to share behind an `Arc`; all methods take `&self`.
pub struct Spool {
    store: Arc<dyn Store>,
    keyring: RwLock<Arc<Keyring>>,
    commit: GroupCommit,
    /// The directory on disk, for free-space checks (None for other stores).
    dir: Option<std::path::PathBuf>,
    /// Files for content over `blob::INLINE_MAX` (None for other stores: all inline).
    blobs: Option<blob::Blobs>,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Spool")
    }
}

fn id_bytes(id: &MessageId) -> [u8; 16] {
    id.0.to_bytes()
}

fn id_from(bytes: &[u8]) -> Option<MessageId> {
    let arr: [u8; 16] = bytes.get(..16)?.try_into().ok()?;
    Some(MessageId(ulid::Ulid::from_bytes(arr)))
}

impl Spool {
    /// Open (or create) the sled spool in `dir` with `keyring`. Fails clearly if stored
    /// messages need keys the keyring lacks, or a key's bytes differ from the one used.
    pub fn open(dir: &Path, keyring: Keyring) -> Result<Spool, SpoolError> {
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir)?);
        let mut spool = Self::with_store(store, keyring)?;
        spool.dir = Some(dir.to_path_buf());
        let blobs = blob::Blobs::open(dir)?;
        // A crash between a blob write and its records' commit leaves an orphan; a
        // shredded message's file may have outlived its key. Neither is readable.
        let store = spool.store.clone();
        let removed = blobs.sweep(|id| {
            store
                .get(Tree::Wraps, &id_bytes(id))
                .map_or(true, |w| w.is_some())
        })?;
        if removed > 0 {
            tracing::info!(files = removed, "removed unreferenced blob files");
        }
        spool.blobs = Some(blobs);
        Ok(spool)
    }

    /// Bytes available to phigate on the spool's file system (None if unknown).
    pub fn free_bytes(&self) -> Option<u64> {
        free_bytes(self.dir.as_deref()?)
    }

    /// Open over any storage engine.
    pub fn with_store(store: Arc<dyn Store>, keyring: Keyring) -> Result<Spool, SpoolError> {
        check_keyring(store.as_ref(), &keyring)?;
        store.flush()?;
        Ok(Spool {
            store,
            keyring: RwLock::new(Arc::new(keyring)),
            commit: GroupCommit::default(),
            dir: None,
            blobs: None,
        })
    }

    /// Swap in a reloaded keyring (after `keys rotate`), with the same checks as `open`.
    pub fn set_keyring(&self, keyring: Keyring) -> Result<(), SpoolError> {
        check_keyring(self.store.as_ref(), &keyring)?;
        *self.keyring.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keyring);
        Ok(())
    }

    /// The keyring in use (the audit trail derives its keys from it).
    pub fn keyring(&self) -> Arc<Keyring> {
        Arc::clone(&self.keyring.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// The storage engine (the audit trail keeps its chain in the same store).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Commit `ops` together with `attach`'s writes in one atomic batch; durable on return.
    pub async fn commit_attached(
        &self,
        ops: Vec<Op>,
        attach: &dyn Attach,
    ) -> Result<(), SpoolError> {
        let shreds: Vec<Op> = ops
            .iter()
            .filter(|op| matches!(op, Op::Delete(Tree::Wraps, _)))
            .cloned()
            .collect();
        let res = self.commit_attached_inner(ops, attach).await;
        if res.is_ok() {
            self.remove_shredded_blobs(&shreds);
        }
        res
    }

    async fn commit_attached_inner(
        &self,
        ops: Vec<Op>,
        attach: &dyn Attach,
    ) -> Result<(), SpoolError> {
        let Some(receipt) = attach.commit(self.store.as_ref(), ops)? else {
            return self.durable().await;
        };
        self.durable().await?;
        let res = match receipt.take() {
            Some(r) => r,
            None => {
                // Staged by an attachment whose hook is not registered here: commit now.
                self.commit.run_hooks();
                self.durable().await?;
                receipt
                    .take()
                    .unwrap_or_else(|| Err("staged write was never committed".into()))
            }
        };
        res.map_err(|e| SpoolError::Io(std::io::Error::other(e)))
    }

    /// Run `hook` right before every group-commit flush: it commits writes staged through
    /// [`Attach`], so concurrent messages share one store transaction as well as one fsync
    /// (each sled transaction writes and syncs the log on its own).
    pub fn on_flush(&self, hook: Box<dyn Fn() + Send + Sync>) {
        self.commit.add_hook(hook);
    }

    /// Number of store flushes so far (group commit makes this less than the write count).
    pub fn flush_count(&self) -> u64 {
        self.commit.flush_count()
    }

    async fn durable(&self) -> Result<(), SpoolError> {
        Ok(self.commit.durable(&self.store).await?)
    }

    /// Store a newly accepted message. Returns only once it is durable; on error nothing
    /// of it is visible. `initial` is the starting state of every recipient.
    pub async fn enqueue(
        &self,
        id: MessageId,
        env: &Envelope,
        content: &[u8],
        initial: RecipientState,
    ) -> Result<(), SpoolError> {
        self.enqueue_with(id, env, content, initial, &NoAttach)
            .await
    }

    /// [`Spool::enqueue`] with `attach` (audit records) in the same atomic write.
    pub async fn enqueue_with(
        &self,
        id: MessageId,
        env: &Envelope,
        content: &[u8],
        initial: RecipientState,
        attach: &dyn Attach,
    ) -> Result<(), SpoolError> {
        self.enqueue_owned_with(id, env, content.to_vec(), initial, attach)
            .await
    }

    /// [`Spool::enqueue_with`] taking the content by value: it is encrypted in its own
    /// buffer, so a large message is not held as plaintext and ciphertext at once.
    pub async fn enqueue_owned_with(
        &self,
        id: MessageId,
        env: &Envelope,
        content: Vec<u8>,
        initial: RecipientState,
        attach: &dyn Attach,
    ) -> Result<(), SpoolError> {
        let ops = self.enqueue_ops(id, env, content, initial)?;
        self.commit_attached(ops, attach).await
    }

    /// Store a newly accepted message already held in quarantine under `rule`, in the
    /// same atomic write, so a crash can never leave it queued for delivery instead.
    pub async fn enqueue_quarantined(
        &self,
        id: MessageId,
        env: &Envelope,
        content: &[u8],
        rule: &str,
    ) -> Result<(), SpoolError> {
        self.enqueue_quarantined_with(id, env, content.to_vec(), rule, &NoAttach)
            .await
    }

    /// [`Spool::enqueue_quarantined`] with `attach` in the same atomic write.
    pub async fn enqueue_quarantined_with(
        &self,
        id: MessageId,
        env: &Envelope,
        content: Vec<u8>,
        rule: &str,
        attach: &dyn Attach,
    ) -> Result<(), SpoolError> {
        let mut held = RecipientState::queued(now_secs());
        held.status = Status::Quarantined {
            rule: rule.to_string(),
        };
        let mut ops = self.enqueue_ops(id, env, content, held)?;
        let entry = QuarantineEntry {
            at: now_secs(),
            rule: rule.to_string(),
        };
        ops.push(Op::Put(
            Tree::Quarantine,
            id_bytes(&id).to_vec(),
            serde_json::to_vec(&entry).unwrap_or_default(),
        ));
        self.commit_attached(ops, attach).await
    }

    /// The writes that store a sealed copy of a message (its own data key, envelope and
    /// content) under `id` with no queue row: the portal's copy, which the scheduler
    /// never sees. `keys list` counts it and `keys rewrap` rewraps it like any message.
    pub fn copy_ops(
        &self,
        id: &MessageId,
        env: &Envelope,
        content: Vec<u8>,
    ) -> Result<Vec<Op>, SpoolError> {
        let env_json = Zeroizing::new(serde_json::to_vec(env).unwrap_or_default());
        self.sealed_ops(
            &self.keyring(),
            &DataKey::generate(),
            id,
            &env_json,
            content,
        )
    }

    /// The writes that crypto-shred a copy made with [`Spool::copy_ops`].
    pub fn shred_copy_ops(id: &MessageId) -> Vec<Op> {
        let key = id_bytes(id);
        [Tree::Wraps, Tree::Messages, Tree::Envelopes]
            .into_iter()
            .map(|t| Op::Delete(t, key.to_vec()))
            .collect()
    }

    /// The writes that set recipient `index`'s clear state to `tag` (the portal tells a
    /// finished, possibly shredded message what became of a recipient afterwards).
    pub fn retag_ops(
        &self,
        id: &MessageId,
        index: usize,
        tag: StateTag,
    ) -> Result<Vec<Op>, SpoolError> {
        let (mut summary, sealed) = self.row(id)?;
        let Some(r) = summary.recipients.get_mut(index) else {
            return Ok(Vec::new());
        };
        r.state = tag;
        summary.updated_at = now_secs();
        Ok(vec![Op::Put(
            Tree::Queue,
            id_bytes(id).to_vec(),
            encode_queue_row(&summary, &sealed),
        )])
    }

    /// Does `id` still have a data key (a copy not yet shredded)?
    pub fn has_key(&self, id: &MessageId) -> Result<bool, SpoolError> {
        Ok(self.store.get(Tree::Wraps, &id_bytes(id))?.is_some())
    }

    /// The writes of [`Spool::enqueue_owned_with`], for callers that commit them with
    /// other records in one transaction (the portal: its entry and the notification).
    pub fn enqueue_ops(
        &self,
        id: MessageId,
        env: &Envelope,
        content: Vec<u8>,
        initial: RecipientState,
    ) -> Result<Vec<Op>, SpoolError> {
        let key = id_bytes(&id);
        if self.store.get(Tree::Queue, &key)?.is_some() {
            return Err(SpoolError::Exists(id));
        }
        let ring = self.keyring();
        let dk = DataKey::generate();
        let env_json = Zeroizing::new(serde_json::to_vec(env).unwrap_or_default());
        let states = vec![initial; env.recipients.len()];
        let now = now_secs();
        let mut summary = QueueSummary {
            received_at: env.received_at,
            updated_at: now,
            size: content.len() as u64,
            recipients: Vec::new(),
            scheduled: None,
            done_at: None,
            shredded_at: None,
        };
        summary.update_from(&states, now);
        let states_json = Zeroizing::new(serde_json::to_vec(&states).unwrap_or_default());
        let mut ops = self.sealed_ops(&ring, &dk, &id, &env_json, content)?;
        ops.push(Op::Put(
            Tree::Queue,
            key.to_vec(),
            encode_queue_row(
                &summary,
                &crypto::seal(&dk, &id, RecordKind::State, &states_json),
            ),
        ));
        if let Some(at) = summary.scheduled {
            ops.push(Op::Put(Tree::Schedule, schedule_key(at, &key), Vec::new()));
        }
        Ok(ops)
    }

    fn data_key(&self, id: &MessageId) -> Result<DataKey, SpoolError> {
        let key = id_bytes(id);
        let Some(wrapped) = self.store.get(Tree::Wraps, &key)? else {
            return match self.summary(id) {
                Ok(s) if s.shredded_at.is_some() => Err(SpoolError::Shredded(*id)),
                Ok(_) => Err(SpoolError::Tampered { id: *id }),
                Err(e) => Err(e),
            };
        };
        crypto::unwrap(&self.keyring(), id, &wrapped).map_err(|e| match e {
            CryptoError::Auth => SpoolError::Tampered { id: *id },
            CryptoError::MissingKey(k) => SpoolError::MissingKeys(vec![k]),
        })
    }

    fn open_record(
        &self,
        dk: &DataKey,
        id: &MessageId,
        tree: Tree,
        kind: RecordKind,
    ) -> Result<Zeroizing<Vec<u8>>, SpoolError> {
        let blob = self
            .store
            .get(tree, &id_bytes(id))?
            .ok_or(SpoolError::Tampered { id: *id })?;
        crypto::open(dk, id, kind, &blob).map_err(|_| SpoolError::Tampered { id: *id })
    }

    fn decode_envelope(id: &MessageId, json: &[u8]) -> Result<Envelope, SpoolError> {
        // Authenticated but unparsable means a bug or a format change, not tampering.
        serde_json::from_slice(json).map_err(|_| SpoolError::Corrupt(*id))
    }

    /// Decrypt a message's envelope and content.
    pub fn load(&self, id: &MessageId) -> Result<(Envelope, Vec<u8>), SpoolError> {
        let dk = self.data_key(id)?;
        let env = self.open_record(&dk, id, Tree::Envelopes, RecordKind::Envelope)?;
        let env = Self::decode_envelope(id, &env)?;
        let record = self
            .store
            .get(Tree::Messages, &id_bytes(id))?
            .ok_or(SpoolError::Tampered { id: *id })?;
        if record.is_empty() {
            // The content is in its blob file (a sealed record is never empty).
            let blobs = self
                .blobs
                .as_ref()
                .ok_or(SpoolError::Tampered { id: *id })?;
            return match blobs.read(id, &dk) {
                Ok(content) => Ok((env, content)),
                Err(blob::BlobError::Io(e)) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(SpoolError::Io(e))
                }
                Err(_) => Err(SpoolError::Tampered { id: *id }),
            };
        }
        // Decrypted in the buffer read from the store: one copy of the content, not three.
        let mut content = crypto::open_owned(&dk, id, RecordKind::Content, record)
            .map_err(|_| SpoolError::Tampered { id: *id })?;
        Ok((env, std::mem::take(&mut *content)))
    }

    /// Decrypt only the envelope.
    pub fn envelope(&self, id: &MessageId) -> Result<Envelope, SpoolError> {
        let dk = self.data_key(id)?;
        let env = self.open_record(&dk, id, Tree::Envelopes, RecordKind::Envelope)?;
        Self::decode_envelope(id, &env)
    }

    fn row(&self, id: &MessageId) -> Result<(QueueSummary, Vec<u8>), SpoolError> {
        let row = self
            .store
            .get(Tree::Queue, &id_bytes(id))?
            .ok_or(SpoolError::NotFound(*id))?;
        let (summary, sealed) = decode_queue_row(&row).ok_or(SpoolError::Corrupt(*id))?;
        Ok((summary, sealed.to_vec()))
    }

    /// Clear metadata of one message (no decryption).
    pub fn summary(&self, id: &MessageId) -> Result<QueueSummary, SpoolError> {
        Ok(self.row(id)?.0)
    }

    /// Decrypt the per-recipient states, in envelope recipient order.
    pub fn recipients(&self, id: &MessageId) -> Result<Vec<RecipientState>, SpoolError> {
        let (_, sealed) = self.row(id)?;
        let dk = self.data_key(id)?;
        let json = crypto::open(&dk, id, RecordKind::State, &sealed)
            .map_err(|_| SpoolError::Tampered { id: *id })?;
        serde_json::from_slice(&json).map_err(|_| SpoolError::Corrupt(*id))
    }

    /// Replace the per-recipient states (same length and order as the envelope's
    /// recipients) and reschedule. Durable on return. One owner per message at a time:
    /// concurrent updates of the same message are last-writer-wins.
    pub async fn set_recipients(
        &self,
        id: &MessageId,
        states: &[RecipientState],
    ) -> Result<(), SpoolError> {
        self.set_recipients_with(id, states, &NoAttach).await
    }

    /// [`Spool::set_recipients`] with `attach` (audit records) in the same atomic write.
    pub async fn set_recipients_with(
        &self,
        id: &MessageId,
        states: &[RecipientState],
        attach: &dyn Attach,
    ) -> Result<(), SpoolError> {
        let ops = self.state_ops(id, states)?;
        self.commit_attached(ops, attach).await
    }

    fn state_ops(&self, id: &MessageId, states: &[RecipientState]) -> Result<Vec<Op>, SpoolError> {
        let key = id_bytes(id);
        let (mut summary, _) = self.row(id)?;
        if summary.recipients.len() != states.len() {
            return Err(SpoolError::RecipientCount {
                id: *id,
                expected: summary.recipients.len(),
                got: states.len(),
            });
        }
        let dk = self.data_key(id)?;
        let mut ops = Vec::with_capacity(3);
        if let Some(at) = summary.scheduled {
            ops.push(Op::Delete(Tree::Schedule, schedule_key(at, &key)));
        }
        summary.update_from(states, now_secs());
        if let Some(at) = summary.scheduled {
            ops.push(Op::Put(Tree::Schedule, schedule_key(at, &key), Vec::new()));
        }
        let json = Zeroizing::new(serde_json::to_vec(states).unwrap_or_default());
        let sealed = crypto::seal(&dk, id, RecordKind::State, &json);
        ops.push(Op::Put(
            Tree::Queue,
            key.to_vec(),
            encode_queue_row(&summary, &sealed),
        ));
        Ok(ops)
    }

    /// Messages with a recipient due at or before `now`, oldest schedule first.
    pub fn due(&self, now: u64) -> Result<Vec<MessageId>, SpoolError> {
        let end = schedule_key(now.saturating_add(1), &[0u8; 16]);
        let mut out = Vec::new();
        self.store
            .scan(Tree::Schedule, &[], Some(&end), &mut |k, _| {
                if let Some(id) = k.get(8..).and_then(id_from) {
                    out.push(id);
                }
                true
            })?;
        Ok(out)
    }

    /// Every message (with its clear summary) in ID order, finished ones included.
    pub fn messages(&self) -> Result<Vec<(MessageId, QueueSummary)>, SpoolError> {
        let mut out = Vec::new();
        self.store.scan(Tree::Queue, &[], None, &mut |k, v| {
            if let (Some(id), Some((s, _))) = (id_from(k), decode_queue_row(v)) {
                out.push((id, s));
            }
            true
        })?;
        Ok(out)
    }

    /// Messages accepted and not finished (including quarantined ones).
    pub fn pending(&self) -> Result<Vec<MessageId>, SpoolError> {
        Ok(self
            .messages()?
            .into_iter()
            .filter(|(_, s)| !s.is_finished() && s.shredded_at.is_none())
            .map(|(id, _)| id)
            .collect())
    }

    /// Start-up recovery: recipients left in flight by a crash are queued again, due at
    /// `now` (delivery is at-least-once). Returns all pending messages.
    pub async fn recover(&self, now: u64) -> Result<Vec<MessageId>, SpoolError> {
        let pending = self.pending()?;
        let mut changed = false;
        for id in &pending {
            let summary = self.summary(id)?;
            if !summary
                .recipients
                .iter()
                .any(|r| r.state == StateTag::InFlight)
            {
                continue;
            }
            let mut states = self.recipients(id)?;
            for s in states.iter_mut().filter(|s| s.status == Status::InFlight) {
                s.status = Status::Queued;
                s.next_attempt = now;
            }
            let ops = self.state_ops(id, &states)?;
            self.store.commit(&ops)?;
            changed = true;
        }
        if changed {
            self.durable().await?;
        }
        Ok(pending)
    }

    /// Read a metadata value (e.g. MTA-STS cache). Stored in clear: never put PHI here.
    pub fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>, SpoolError> {
        Ok(self
            .store
            .get(Tree::Meta, format!("{META_PREFIX}{key}").as_bytes())?)
    }

    /// Write a metadata value; durable on return.
    pub async fn meta_put(&self, key: &str, value: &[u8]) -> Result<(), SpoolError> {
        self.store.commit(&[Op::Put(
            Tree::Meta,
            format!("{META_PREFIX}{key}").into_bytes(),
            value.to_vec(),
        )])?;
        self.durable().await
    }
}

/// The writes that crypto-shred `id`: its data key, content, envelope, quarantine entry
/// and schedule entry go; its clear summary stays, marked shredded at `now`.
impl Spool {
    /// Data key, content and envelope of one message, sealed under `dk`. Content over
    /// `blob::INLINE_MAX` is written (durably) to its blob file first and its record in
    /// the store is left empty.
    fn sealed_ops(
        &self,
        ring: &Keyring,
        dk: &DataKey,
        id: &MessageId,
        env_json: &[u8],
        content: Vec<u8>,
    ) -> Result<Vec<Op>, SpoolError> {
        let key = id_bytes(id);
        let record = match &self.blobs {
            Some(blobs) if content.len() > blob::INLINE_MAX => {
                // Wiped when dropped: the plaintext does not linger in freed memory.
                let content = Zeroizing::new(content);
                blobs.write(id, dk, &content)?;
                Vec::new()
            }
            _ => crypto::seal_owned(dk, id, RecordKind::Content, content),
        };
        Ok(vec![
            Op::Put(
                Tree::Wraps,
                key.to_vec(),
                crypto::wrap(ring.current(), id, dk),
            ),
            Op::Put(Tree::Messages, key.to_vec(), record),
            Op::Put(
                Tree::Envelopes,
                key.to_vec(),
                crypto::seal(dk, id, RecordKind::Envelope, env_json),
            ),
        ])
    }

    /// After a commit: blob files of messages whose data key `ops` deleted (shredded).
    fn remove_shredded_blobs(&self, ops: &[Op]) {
        let Some(blobs) = &self.blobs else {
            return;
        };
        for op in ops {
            if let Op::Delete(Tree::Wraps, key) = op {
                if let Some(id) = id_from(key) {
                    blobs.remove(&id);
                }
            }
        }
    }
}

fn shred_ops(id: &MessageId, mut summary: QueueSummary, now: u64) -> Vec<Op> {
    let key = id_bytes(id);
    let mut ops: Vec<Op> = [
        Tree::Wraps,
        Tree::Messages,
        Tree::Envelopes,
        Tree::Quarantine,
    ]
    .into_iter()
    .map(|t| Op::Delete(t, key.to_vec()))
    .collect();
    if let Some(at) = summary.scheduled.take() {
        ops.push(Op::Delete(Tree::Schedule, schedule_key(at, &key)));
    }
    summary.shredded_at.get_or_insert(now);
    ops.push(Op::Put(
        Tree::Queue,
        key.to_vec(),
        encode_queue_row(&summary, &[]),
    ));
    ops
}

/// statvfs(2): blocks available to unprivileged users times the fragment size.
// The fields are u32 on some targets, u64 on this one.
#[allow(clippy::useless_conversion)]
fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `path` is NUL-terminated and `st` is a valid out-pointer for one statvfs.
    let rc = unsafe { libc::statvfs(path.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it filled `st`.
    let st = unsafe { st.assume_init() };
    Some(u64::from(st.f_bavail).saturating_mul(u64::from(st.f_frsize)))
}

fn key_usage(store: &dyn Store) -> Result<BTreeMap<String, u64>, SpoolError> {
    let mut usage = BTreeMap::new();
    store.scan(Tree::Wraps, &[], None, &mut |_, v| {
        let kid = crypto::wrapped_kek_id(v).unwrap_or("<corrupt>");
        *usage.entry(kid.to_string()).or_insert(0u64) += 1;
        true
    })?;
    Ok(usage)
}

/// Refuse a keyring that cannot open what the store holds; remember check values of
/// keys seen for the first time.
fn check_keyring(store: &dyn Store, ring: &Keyring) -> Result<(), SpoolError> {
    let missing: BTreeSet<String> = key_usage(store)?
        .into_keys()
        .filter(|kid| ring.get(kid).is_none())
        .collect();
    if !missing.is_empty() {
        return Err(SpoolError::MissingKeys(missing.into_iter().collect()));
    }
    let mut ops = Vec::new();
    for k in ring.keys() {
        let name = format!("{KCV_PREFIX}{}", k.id());
        match store.get(Tree::Meta, name.as_bytes())? {
            Some(kcv) if kcv != k.check_value() => {
                return Err(SpoolError::WrongKey {
                    id: k.id().to_string(),
                })
            }
            Some(_) => {}
            None => ops.push(Op::Put(Tree::Meta, name.into_bytes(), k.check_value())),
        }
    }
    if !ops.is_empty() {
        store.commit(&ops)?;
    }
    Ok(())
}
