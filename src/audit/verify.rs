//! Walk the chain and name the first record that is missing, moved, altered or cut off.

use super::record::{self, DecodeError, Hash};
use super::{read_marker, seq_of, KeyCache, ANCHOR_KEY, HEAD_KEY};
use crate::spool::{Keyring, Store, Tree};

/// A chain that checks out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub records: u64,
    /// First seq present (1, or anchor + 1 after a retention purge).
    pub first_seq: u64,
    pub head_seq: u64,
    pub head_hash: String,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ok {} records, head {}", self.records, self.head_hash)
    }
}

/// The first problem found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Broken {
    #[error("record {seq}: missing")]
    Missing { seq: u64 },
    #[error("record {seq}: holds record {claims} (reordered or moved)")]
    Reordered { seq: u64, claims: u64 },
    #[error("record {seq}: altered (HMAC or encryption check failed)")]
    Altered { seq: u64 },
    #[error("record {seq}: unreadable, not an audit record")]
    Malformed { seq: u64 },
    #[error("record {seq}: does not chain to record {prev} (previous-record hash differs)")]
    Link { seq: u64, prev: u64 },
    #[error("record {seq}: needs master key {key}, which is not in the keyring")]
    MissingKey { seq: u64, key: String },
    #[error(
        "record {seq}: missing (the chain ends at {last}, the head marker says {seq}): truncated"
    )]
    Truncated { seq: u64, last: u64 },
    #[error(
        "record {seq}: missing (the chain ends at {last}, the external head says {seq}): truncated"
    )]
    TruncatedExternal { seq: u64, last: u64 },
    #[error("record {seq}: hash differs from the head marker")]
    HeadMismatch { seq: u64 },
    #[error("record {seq}: hash differs from the external head")]
    ExternalMismatch { seq: u64 },
    #[error("head marker missing or altered (records exist up to {last})")]
    HeadMarker { last: u64 },
    #[error("retention anchor altered")]
    Anchor,
    #[error("audit storage: {0}")]
    Io(String),
}

/// Check every record from the anchor (or seq 1) to the head. `external` is a head
/// (seq, hash) copied from outside the store, e.g. from the system log.
pub fn verify(
    store: &dyn Store,
    ring: &Keyring,
    external: Option<(u64, Hash)>,
) -> Result<Report, Broken> {
    let io = |e: std::io::Error| Broken::Io(e.to_string());
    let mut keys = KeyCache::new(ring);
    let marker_ok = |m: &record::Marker, keys: &mut KeyCache| -> bool {
        keys.get(&m.key).is_some_and(|k| m.valid(k))
    };
    let (mut expected, mut prev) = match read_marker(store, ANCHOR_KEY).map_err(io)? {
        Some(a) => {
            let h = record::parse_hash(&a.hash).ok_or(Broken::Anchor)?;
            if !marker_ok(&a, &mut keys) {
                return Err(Broken::Anchor);
            }
            (a.seq + 1, h)
        }
        None => (1, [0u8; 32]),
    };
    let first_seq = expected;
    let mut records = 0u64;
    let mut ext_hash: Option<Hash> = None;
    let mut failure: Option<Broken> = None;
    store
        .scan(Tree::Audit, &[], None, &mut |k, v| {
            let Some(seq) = seq_of(k) else {
                failure = Some(Broken::Malformed { seq: expected });
                return false;
            };
            match check(&mut keys, seq, expected, &prev, v) {
                Ok(h) => {
                    if external.is_some_and(|(s, _)| s == seq) {
                        ext_hash = Some(h);
                    }
                    prev = h;
                    expected = seq + 1;
                    records += 1;
                    true
                }
                Err(b) => {
                    failure = Some(b);
                    false
                }
            }
        })
        .map_err(io)?;
    if let Some(b) = failure {
        return Err(b);
    }
    let last = expected - 1;
    match read_marker(store, HEAD_KEY).map_err(io)? {
        None if records > 0 => return Err(Broken::HeadMarker { last }),
        None => {}
        Some(h) => {
            if !marker_ok(&h, &mut keys) {
                return Err(Broken::HeadMarker { last });
            }
            if h.seq > last {
                return Err(Broken::Truncated {
                    seq: last + 1,
                    last,
                });
            }
            if h.seq < last || record::parse_hash(&h.hash) != Some(prev) {
                return Err(Broken::HeadMismatch { seq: h.seq });
            }
        }
    }
    if let Some((seq, hash)) = external {
        if seq > last {
            return Err(Broken::TruncatedExternal {
                seq: last + 1,
                last,
            });
        }
        // A head from before the retention anchor cannot be checked any more.
        if seq >= first_seq && ext_hash != Some(hash) {
            return Err(Broken::ExternalMismatch { seq });
        }
    }
    Ok(Report {
        records,
        first_seq,
        head_seq: last,
        head_hash: hex::encode(prev),
    })
}

/// Check one stored record found under `seq` where `expected` was due next.
fn check(
    keys: &mut KeyCache,
    seq: u64,
    expected: u64,
    prev: &Hash,
    stored: &[u8],
) -> Result<Hash, Broken> {
    if seq > expected {
        return Err(Broken::Missing { seq: expected });
    }
    let (b, body, mac) = record::parse(stored).map_err(|_| Broken::Malformed { seq })?;
    let k = keys.get(&b.key).ok_or_else(|| Broken::MissingKey {
        seq,
        key: b.key.clone(),
    })?;
    match record::check_mac(k, &b, body, mac) {
        Ok(()) => {}
        Err(DecodeError::Malformed) => return Err(Broken::Malformed { seq }),
        Err(_) => return Err(Broken::Altered { seq }),
    }
    if b.seq != seq || seq < expected {
        return Err(Broken::Reordered { seq, claims: b.seq });
    }
    if record::open_private(k, &b).is_err() {
        return Err(Broken::Altered { seq });
    }
    if record::parse_hash(&b.prev) != Some(*prev) {
        return Err(Broken::Link {
            seq,
            prev: seq.saturating_sub(1),
        });
    }
    Ok(record::hash(stored))
}
