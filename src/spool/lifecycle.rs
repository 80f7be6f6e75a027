//! What happens to a queued message afterwards: quarantine and release, crypto-shredding
//! and metadata purge, statistics, and rewrapping data keys under a new master key.

use super::*;
use std::collections::BTreeMap;

impl Spool {
    /// Hold a message: every non-final recipient becomes quarantined under `rule`
    /// (a configured rule name, never matched text).
    pub async fn quarantine(&self, id: &MessageId, rule: &str) -> Result<(), SpoolError> {
        self.quarantine_with(id, rule, &NoAttach).await
    }

    /// [`Spool::quarantine`] with `attach` in the same atomic write.
    pub async fn quarantine_with(
        &self,
        id: &MessageId,
        rule: &str,
        attach: &dyn Attach,
    ) -> Result<(), SpoolError> {
        let mut states = self.recipients(id)?;
        for s in states.iter_mut().filter(|s| !s.status.is_final()) {
            s.status = Status::Quarantined {
                rule: rule.to_string(),
            };
        }
        let mut ops = self.state_ops(id, &states)?;
        let entry = QuarantineEntry {
            at: now_secs(),
            rule: rule.to_string(),
        };
        ops.push(Op::Put(
            Tree::Quarantine,
            id_bytes(id).to_vec(),
            serde_json::to_vec(&entry).unwrap_or_default(),
        ));
        self.commit_attached(ops, attach).await
    }

    /// Quarantined messages with their entries.
    pub fn quarantined(&self) -> Result<Vec<(MessageId, QuarantineEntry)>, SpoolError> {
        let mut out = Vec::new();
        self.store.scan(Tree::Quarantine, &[], None, &mut |k, v| {
            if let (Some(id), Ok(e)) = (id_from(k), serde_json::from_slice(v)) {
                out.push((id, e));
            }
            true
        })?;
        Ok(out)
    }

    /// Release a quarantined message: its quarantined recipients are queued, due at `now`.
    pub async fn release(&self, id: &MessageId, now: u64) -> Result<(), SpoolError> {
        self.release_with(id, now, &NoAttach).await
    }

    /// [`Spool::release`] with `attach` in the same atomic write.
    pub async fn release_with(
        &self,
        id: &MessageId,
        now: u64,
        attach: &dyn Attach,
    ) -> Result<(), SpoolError> {
        let key = id_bytes(id);
        if self.store.get(Tree::Quarantine, &key)?.is_none() {
            return Err(SpoolError::NotFound(*id));
        }
        let mut states = self.recipients(id)?;
        for s in states
            .iter_mut()
            .filter(|s| matches!(s.status, Status::Quarantined { .. }))
        {
            s.status = Status::Queued;
            s.next_attempt = now;
        }
        let mut ops = self.state_ops(id, &states)?;
        ops.push(Op::Delete(Tree::Quarantine, key.to_vec()));
        self.commit_attached(ops, attach).await
    }

    /// Crypto-shred: destroy the wrapped data key and remove content, envelope and sealed
    /// state. The clear summary stays (marked shredded) until metadata retention purges it.
    pub async fn shred(&self, id: &MessageId) -> Result<(), SpoolError> {
        self.shred_with(id, &NoAttach).await
    }

    /// [`Spool::shred`] with `attach` in the same atomic write (admin delete).
    pub async fn shred_with(&self, id: &MessageId, attach: &dyn Attach) -> Result<(), SpoolError> {
        let (summary, _) = self.row(id)?;
        self.commit_attached(shred_ops(id, summary, now_secs()), attach)
            .await
    }

    /// Record the final recipient states and crypto-shred the content in one atomic,
    /// durable write (one flush instead of two on the common "delivered" path).
    pub async fn finish_and_shred_with(
        &self,
        id: &MessageId,
        states: &[RecipientState],
        attach: &dyn Attach,
    ) -> Result<(), SpoolError> {
        let (mut summary, _) = self.row(id)?;
        if summary.recipients.len() != states.len() {
            return Err(SpoolError::RecipientCount {
                id: *id,
                expected: summary.recipients.len(),
                got: states.len(),
            });
        }
        let scheduled = summary.scheduled;
        let now = now_secs();
        summary.update_from(states, now);
        if !summary.is_finished() {
            // Not final after all: keep it scheduled and keep the content.
            return self.set_recipients_with(id, states, attach).await;
        }
        // The schedule entry to remove is the one written before this update.
        summary.scheduled = scheduled;
        self.commit_attached(shred_ops(id, summary, now), attach)
            .await
    }

    /// Retention: remove every trace of messages finished before `cutoff` (unix secs),
    /// shredding any content still present. Returns how many were purged.
    pub async fn purge_finished_before(&self, cutoff: u64) -> Result<usize, SpoolError> {
        let old: Vec<(MessageId, QueueSummary)> = self
            .messages()?
            .into_iter()
            .filter(|(_, s)| s.done_at.is_some_and(|d| d < cutoff))
            .collect();
        let mut shredded = Vec::new();
        for (id, s) in &old {
            let key = id_bytes(id).to_vec();
            let mut ops: Vec<Op> = [
                Tree::Wraps,
                Tree::Messages,
                Tree::Envelopes,
                Tree::Quarantine,
                Tree::Queue,
            ]
            .into_iter()
            .map(|t| Op::Delete(t, key.clone()))
            .collect();
            if let Some(at) = s.scheduled {
                ops.push(Op::Delete(Tree::Schedule, schedule_key(at, &id_bytes(id))));
            }
            self.store.commit(&ops)?;
            shredded.extend(ops);
        }
        if !old.is_empty() {
            self.durable().await?;
            self.remove_shredded_blobs(&shredded);
        }
        Ok(old.len())
    }

    /// Counts by state and the age of the oldest pending message.
    pub fn stats(&self, now: u64) -> Result<SpoolStats, SpoolError> {
        let mut st = SpoolStats {
            flushes: self.flush_count(),
            ..SpoolStats::default()
        };
        for (_, s) in self.messages()? {
            st.messages += 1;
            for r in &s.recipients {
                *st.recipients_by_state.entry(r.state).or_default() += 1;
            }
            if !s.is_finished() && s.shredded_at.is_none() {
                st.pending += 1;
                let age = now.saturating_sub(s.received_at);
                st.oldest_pending_age = Some(st.oldest_pending_age.map_or(age, |a| a.max(age)));
            }
        }
        Ok(st)
    }

    /// How many messages each master key ID wraps (for `keys list`).
    pub fn key_usage(&self) -> Result<BTreeMap<String, u64>, SpoolError> {
        key_usage(self.store.as_ref())
    }

    /// Re-wrap every data key not under the current master key (content blobs untouched).
    /// Afterwards older keys wrap nothing and can be removed. Returns how many changed.
    pub async fn rewrap(&self) -> Result<usize, SpoolError> {
        let ring = self.keyring();
        let current = ring.current().id().to_string();
        let mut todo = Vec::new();
        self.store.scan(Tree::Wraps, &[], None, &mut |k, v| {
            if crypto::wrapped_kek_id(v).is_ok_and(|kid| kid != current) {
                if let Some(id) = id_from(k) {
                    todo.push((id, v.to_vec()));
                }
            }
            true
        })?;
        let mut changed = 0;
        for (id, old) in todo {
            let dk = crypto::unwrap(&ring, &id, &old).map_err(|e| match e {
                CryptoError::Auth => SpoolError::Tampered { id },
                CryptoError::MissingKey(k) => SpoolError::MissingKeys(vec![k]),
            })?;
            let new = crypto::wrap(ring.current(), &id, &dk);
            // Compare-and-swap so a concurrent shred is never undone.
            if self
                .store
                .compare_and_swap(Tree::Wraps, &id_bytes(&id), &old, &new)?
            {
                changed += 1;
            }
        }
        if changed > 0 {
            self.durable().await?;
        }
        Ok(changed)
    }
}
