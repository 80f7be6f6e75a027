//! `Idempotency-Key` on POST: the same key with the same body gets the first answer back
//! for `[api] idempotency_ttl`; with another body, 409; while the first is still running,
//! 409 (never a second message).
//!
//! Durable without a write before the work: each message a keyed request sends commits a
//! *marker* (request hash, message id, per-recipient statuses) in the same store commit
//! as the message itself, so after kill -9 a retry finds exactly the messages that landed
//! and sends only the others. The final *answer* replaces the markers once the request is
//! done. Neither holds an address or content: a replay rebuilds the addresses from its
//! own (identical) body.

use super::problem::ApiError;
use crate::spool::{Op, Store, Tree};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

const PREFIX: &str = "api/idem/";
/// Longest accepted `Idempotency-Key` (UUIDs and ULIDs fit many times over).
const MAX_KEY: usize = 255;

/// What one message of a request came to, as kept for a replay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Outcome {
    /// Durable: its id and one status per recipient (in request order).
    Sent { id: String, statuses: Vec<String> },
    /// Refused: the problem document (no content, no addresses by construction).
    Problem {
        status: u16,
        problem: serde_json::Value,
    },
}

impl Outcome {
    /// Would a retry of this outcome go differently (a limit window, a full spool)?
    fn retryable(&self) -> bool {
        matches!(self, Outcome::Problem { status, .. } if *status == 429 || *status >= 500)
    }
}

#[derive(Serialize, Deserialize)]
struct Marker {
    hash: String,
    at: u64,
    id: String,
    statuses: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct Answer {
    hash: String,
    at: u64,
    outcomes: Vec<Outcome>,
}

/// What `begin` found for a keyed request.
pub enum Begin {
    /// The first answer, to send again.
    Replay(Vec<Outcome>),
    /// Run the request; `done` are messages (by index) a crashed or partly refused
    /// earlier attempt already sent.
    Run {
        slot: Slot,
        done: BTreeMap<usize, (String, Vec<String>)>,
    },
}

/// A keyed request in progress in this process (dropping it lets a retry in).
pub struct Slot {
    id: String,
    hash: String,
    inflight: Arc<Mutex<HashSet<String>>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut set) = self.inflight.lock() {
            set.remove(&self.id);
        }
    }
}

impl Slot {
    fn marker_key(&self, index: usize) -> Vec<u8> {
        let mut k = format!("{PREFIX}{}/m/", self.id).into_bytes();
        k.extend_from_slice(&(index as u32).to_be_bytes());
        k
    }

    /// The store write that records message `index` as sent, to commit with the message.
    pub fn marker(&self, index: usize, id: &str, statuses: &[&str], now: u64) -> Op {
        let m = Marker {
            hash: self.hash.clone(),
            at: now,
            id: id.to_string(),
            statuses: statuses.iter().map(|s| s.to_string()).collect(),
        };
        Op::Put(
            Tree::Meta,
            self.marker_key(index),
            serde_json::to_vec(&m).unwrap_or_default(),
        )
    }
}

#[derive(Clone)]
pub struct Idempotency {
    store: Arc<dyn Store>,
    ttl: u64,
    inflight: Arc<Mutex<HashSet<String>>>,
}

/// The request fingerprint: route and exact body.
pub fn request_hash(route: &str, body: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(route.as_bytes());
    h.update([0]);
    h.update(body);
    hex::encode(h.finalize())
}

/// A header value that can serve as a key: 1..=255 visible ASCII characters.
pub fn valid_key(k: &str) -> bool {
    !k.is_empty() && k.len() <= MAX_KEY && k.bytes().all(|b| b.is_ascii_graphic())
}

impl Idempotency {
    pub fn new(store: Arc<dyn Store>, ttl: u64) -> Idempotency {
        Idempotency {
            store,
            ttl,
            inflight: Arc::default(),
        }
    }

    fn answer_key(id: &str) -> Vec<u8> {
        format!("{PREFIX}{id}/a").into_bytes()
    }

    fn fresh(&self, at: u64, now: u64) -> bool {
        at.saturating_add(self.ttl) > now
    }

    /// Look the key up for `owner` (keys are per owner: two customers may pick the same).
    pub fn begin(&self, owner: &str, key: &str, hash: String, now: u64) -> Result<Begin, ApiError> {
        let id = {
            let mut h = Sha256::new();
            h.update(owner.as_bytes());
            h.update([0]);
            h.update(key.as_bytes());
            hex::encode(&h.finalize()[..16])
        };
        {
            let mut set = self.inflight.lock().map_err(|_| ApiError::Internal)?;
            if !set.insert(id.clone()) {
                return Err(ApiError::IdempotencyInProgress);
            }
        }
        // From here on the slot's drop releases the key, whatever is returned.
        let slot = Slot {
            id,
            hash,
            inflight: self.inflight.clone(),
        };
        let io = |_| ApiError::Internal;
        if let Some(raw) = self
            .store
            .get(Tree::Meta, &Self::answer_key(&slot.id))
            .map_err(io)?
        {
            if let Ok(a) = serde_json::from_slice::<Answer>(&raw) {
                if self.fresh(a.at, now) {
                    if a.hash != slot.hash {
                        return Err(ApiError::IdempotencyConflict);
                    }
                    return Ok(Begin::Replay(a.outcomes));
                }
            }
        }
        let mut done = BTreeMap::new();
        let mut conflict = false;
        let start = format!("{PREFIX}{}/m/", slot.id).into_bytes();
        let mut end = start.clone();
        end.push(0xff);
        self.store
            .scan(Tree::Meta, &start, Some(&end), &mut |k, v| {
                let (Ok(m), Ok(ix)) = (
                    serde_json::from_slice::<Marker>(v),
                    <[u8; 4]>::try_from(&k[start.len()..]),
                ) else {
                    return true;
                };
                if !self.fresh(m.at, now) {
                    return true;
                }
                if m.hash != slot.hash {
                    conflict = true;
                    return false;
                }
                done.insert(u32::from_be_bytes(ix) as usize, (m.id, m.statuses));
                true
            })
            .map_err(io)?;
        if conflict {
            return Err(ApiError::IdempotencyConflict);
        }
        Ok(Begin::Run { slot, done })
    }

    /// Keep the answer (unless part of it is worth retrying: then the markers stay, and a
    /// retry sends only what did not land) and release the key.
    pub fn finish(&self, slot: Slot, outcomes: &[Outcome], now: u64) -> std::io::Result<()> {
        if outcomes.iter().any(Outcome::retryable) {
            return Ok(());
        }
        let answer = Answer {
            hash: slot.hash.clone(),
            at: now,
            outcomes: outcomes.to_vec(),
        };
        let mut ops = vec![Op::Put(
            Tree::Meta,
            Self::answer_key(&slot.id),
            serde_json::to_vec(&answer).map_err(std::io::Error::other)?,
        )];
        ops.extend((0..outcomes.len()).map(|i| Op::Delete(Tree::Meta, slot.marker_key(i))));
        self.store.commit(&ops)
    }

    /// Delete answers and markers older than the TTL (at most `limit`); returns how many.
    pub fn sweep(&self, now: u64, limit: usize) -> std::io::Result<usize> {
        #[derive(Deserialize)]
        struct At {
            at: u64,
        }
        let start = PREFIX.as_bytes().to_vec();
        let mut end = start.clone();
        end.push(0xff);
        let mut ops = Vec::new();
        self.store
            .scan(Tree::Meta, &start, Some(&end), &mut |k, v| {
                let old = serde_json::from_slice::<At>(v)
                    .map(|a| !self.fresh(a.at, now))
                    .unwrap_or(true);
                if old {
                    ops.push(Op::Delete(Tree::Meta, k.to_vec()));
                }
                ops.len() < limit
            })?;
        if !ops.is_empty() {
            self.store.commit(&ops)?;
        }
        Ok(ops.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idem() -> (tempfile::TempDir, Idempotency) {
        let d = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn Store> =
            Arc::new(crate::spool::SledStore::open(d.path()).expect("store"));
        (d, Idempotency::new(store, 100))
    }

    fn sent(id: &str) -> Outcome {
        Outcome::Sent {
            id: id.into(),
            statuses: vec!["queued".into()],
        }
    }

    #[test]
    fn replay_conflict_in_progress_and_expiry() {
        let (_d, i) = idem();
        let h = request_hash("/v1/messages", b"{}");
        let Ok(Begin::Run { slot, done }) = i.begin("o", "k1", h.clone(), 10) else {
            panic!("fresh key must run");
        };
        assert!(done.is_empty());
        assert!(matches!(
            i.begin("o", "k1", h.clone(), 10),
            Err(ApiError::IdempotencyInProgress)
        ));
        i.finish(slot, &[sent("A")], 10).expect("finish");
        assert!(
            matches!(i.begin("o", "k1", h.clone(), 20), Ok(Begin::Replay(o)) if o == [sent("A")])
        );
        let other = request_hash("/v1/messages", b"{ }");
        assert!(matches!(
            i.begin("o", "k1", other, 20),
            Err(ApiError::IdempotencyConflict)
        ));
        // Another owner's same key is another key.
        assert!(matches!(
            i.begin("p", "k1", h.clone(), 20),
            Ok(Begin::Run { .. })
        ));
        // After the TTL the key is free again, and the sweep removes the record.
        assert!(matches!(i.begin("o", "k1", h, 111), Ok(Begin::Run { .. })));
        assert_eq!(i.sweep(111, 100).expect("sweep"), 1);
    }

    #[test]
    fn markers_resume_and_retryable_answers_are_not_kept() {
        let (_d, i) = idem();
        let h = request_hash("/v1/messages/batch", b"[1,2]");
        let Ok(Begin::Run { slot, .. }) = i.begin("o", "k", h.clone(), 5) else {
            panic!("run");
        };
        // Message 0 landed (its marker committed with it), message 1 hit a limit.
        i.store
            .commit(&[slot.marker(0, "A", &["queued"], 5)])
            .expect("marker");
        let limited = Outcome::Problem {
            status: 429,
            problem: serde_json::json!({"status": 429}),
        };
        i.finish(slot, &[sent("A"), limited], 5).expect("finish");
        let Ok(Begin::Run { done, .. }) = i.begin("o", "k", h, 6) else {
            panic!("a retryable answer is not replayed");
        };
        assert_eq!(
            done.get(&0),
            Some(&("A".to_string(), vec!["queued".to_string()]))
        );
        assert!(!done.contains_key(&1));
        let other = request_hash("/v1/messages/batch", b"[3]");
        assert!(matches!(
            i.begin("o", "k", other, 6),
            Err(ApiError::IdempotencyConflict)
        ));
    }
}
