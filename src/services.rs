//! The one handle on the stores and outputs every front end and the queue share: spool,
//! audit trail, metrics, webhooks and the clock. Built once in `server::run` and passed
//! down explicitly; nothing in it is optional, so no caller checks whether a service is
//! there (tests open real ones on a temporary directory).

use crate::audit::{Audit, AuditEvent, Batch};
use crate::metrics::Metrics;
use crate::spool::Spool;
use crate::webhook::Webhooks;
use std::sync::Arc;

/// Where "now" comes from (Unix seconds), so time-dependent decisions have one source.
pub trait Clock: Send + Sync + 'static {
    fn now_secs(&self) -> u64;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_secs(&self) -> u64 {
        crate::types::now_secs()
    }
}

#[derive(Clone)]
pub struct Services {
    pub spool: Arc<Spool>,
    pub audit: Arc<Audit>,
    /// Durable event store (GET /v1/events, webhooks), fed by every audit commit.
    pub events: Arc<crate::events::Events>,
    pub metrics: Arc<Metrics>,
    /// Final outcomes and quarantine events; an empty set when no hook is configured.
    pub webhooks: Arc<Webhooks>,
    pub clock: Arc<dyn Clock>,
    /// Per-identity sending limits.
    pub limits: Arc<crate::limits::Limits>,
    /// Freezes, holds and credential revocation.
    pub freeze: Arc<crate::freeze::Freeze>,
    /// Anomaly alerts.
    pub alerts: Arc<crate::alerts::Alerts>,
    /// DKIM signing keys (`[[dkim]]`), for the policy's `require_dkim`.
    pub dkim: Arc<crate::dkim::Dkim>,
}

impl Services {
    pub fn now(&self) -> u64 {
        self.clock.now_secs()
    }

    /// `events` as an attachment for the spool's `*_with` writes: committed in the same
    /// transaction as the state change they describe.
    pub fn attach(&self, events: Vec<AuditEvent>) -> Batch<'_> {
        self.audit.batch(events)
    }
}
