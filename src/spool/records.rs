//! Record types kept in the spool and their byte encodings.
//!
//! Per-recipient state can name people (delivery errors often echo the address), so the
//! full [`RecipientState`] list is sealed; the clear [`QueueSummary`] holds only state
//! tags, counters and times, indexed by recipient position.

use serde::{Deserialize, Serialize};

use crate::types::Status;

/// One delivery attempt for one recipient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// Unix seconds.
    pub at: u64,
    /// Remote MX host tried, if any.
    pub host: Option<String>,
    /// The reply or local error text.
    pub outcome: String,
    /// TLS version of the hop (`TLSv1.3`), when a session was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_version: Option<String>,
    /// How the peer was authenticated (`dane-ee`, `mta-sts`, `pkix`, ..., `sandbox`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

/// Delivery state of one recipient (sealed at rest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipientState {
    pub status: Status,
    pub attempts: u32,
    pub last_error: Option<String>,
    /// Unix seconds of the next attempt; only meaningful while queued or deferred.
    pub next_attempt: u64,
    pub history: Vec<Attempt>,
    /// A "delayed" DSN (RFC 3464) went out for this recipient: it is sent once.
    #[serde(default)]
    pub delay_notified: bool,
}

impl RecipientState {
    /// Freshly accepted: queued, due at `next_attempt` (use now for "immediately").
    pub fn queued(next_attempt: u64) -> Self {
        RecipientState {
            status: Status::Queued,
            attempts: 0,
            last_error: None,
            next_attempt,
            history: Vec::new(),
            delay_notified: false,
        }
    }

    /// The time this recipient wants to be tried, if it is waiting for the scheduler.
    fn wants_attempt_at(&self) -> Option<u64> {
        match &self.status {
            Status::Queued => Some(self.next_attempt),
            Status::Deferred { next_attempt, .. } => Some(*next_attempt),
            _ => None,
        }
    }
}

/// A status without its (possibly person-naming) detail text: safe in clear.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StateTag {
    Queued,
    InFlight,
    Deferred,
    Delivered,
    Bounced,
    Expired,
    Quarantined,
    Portal,
    PickedUp,
    Revoked,
}

impl StateTag {
    pub fn of(s: &Status) -> Self {
        match s {
            Status::Queued => StateTag::Queued,
            Status::InFlight => StateTag::InFlight,
            Status::Deferred { .. } => StateTag::Deferred,
            Status::Delivered { .. } => StateTag::Delivered,
            Status::Bounced { .. } => StateTag::Bounced,
            Status::Expired { .. } => StateTag::Expired,
            Status::Quarantined { .. } => StateTag::Quarantined,
            Status::Portal { .. } => StateTag::Portal,
            Status::PickedUp { .. } => StateTag::PickedUp,
            Status::Revoked { .. } => StateTag::Revoked,
        }
    }

    pub fn is_final(self) -> bool {
        matches!(
            self,
            StateTag::Delivered
                | StateTag::Bounced
                | StateTag::Expired
                | StateTag::Portal
                | StateTag::PickedUp
                | StateTag::Revoked
        )
    }
}

/// Clear per-recipient summary (by index, no address).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipientSummary {
    pub state: StateTag,
    pub attempts: u32,
    pub next_attempt: u64,
}

/// Clear metadata for one message: enough for `queue list`, stats and scheduling.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSummary {
    /// Unix seconds of acceptance.
    pub received_at: u64,
    /// Unix seconds of the last state change.
    pub updated_at: u64,
    /// Size of the content in bytes.
    pub size: u64,
    pub recipients: Vec<RecipientSummary>,
    /// Schedule index entry currently held by this message.
    pub scheduled: Option<u64>,
    /// Set when every recipient reached a final state.
    pub done_at: Option<u64>,
    /// Set when content and keys were destroyed.
    pub shredded_at: Option<u64>,
}

impl QueueSummary {
    pub(crate) fn update_from(&mut self, states: &[RecipientState], now: u64) {
        self.recipients = states
            .iter()
            .map(|s| RecipientSummary {
                state: StateTag::of(&s.status),
                attempts: s.attempts,
                next_attempt: s.next_attempt,
            })
            .collect();
        self.scheduled = states.iter().filter_map(|s| s.wants_attempt_at()).min();
        self.updated_at = now;
        if self.is_finished() {
            self.done_at.get_or_insert(now);
        } else {
            self.done_at = None;
        }
    }

    /// Every recipient is delivered, bounced or expired.
    pub fn is_finished(&self) -> bool {
        self.recipients.iter().all(|r| r.state.is_final())
    }
}

/// Why and when a message was quarantined (rule names come from config, never match values).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantineEntry {
    pub at: u64,
    pub rule: String,
}

/// Queue row: `u32 BE summary length | summary JSON | sealed recipient states`.
pub(crate) fn encode_queue_row(summary: &QueueSummary, sealed_states: &[u8]) -> Vec<u8> {
    let json = serde_json::to_vec(summary).unwrap_or_default();
    let mut out = Vec::with_capacity(4 + json.len() + sealed_states.len());
    out.extend_from_slice(&(json.len() as u32).to_be_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(sealed_states);
    out
}

pub(crate) fn decode_queue_row(row: &[u8]) -> Option<(QueueSummary, &[u8])> {
    let len = u32::from_be_bytes(row.get(..4)?.try_into().ok()?) as usize;
    let json = row.get(4..4 + len)?;
    let summary = serde_json::from_slice(json).ok()?;
    Some((summary, &row[4 + len..]))
}

pub(crate) fn schedule_key(at: u64, id: &[u8; 16]) -> Vec<u8> {
    let mut k = Vec::with_capacity(24);
    k.extend_from_slice(&at.to_be_bytes());
    k.extend_from_slice(id);
    k
}
