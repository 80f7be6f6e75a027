//! The queue: a scheduler over the spool that hands due recipients to a [`Transport`],
//! records per-recipient outcomes, retries with backoff and jitter, expires, sends DSNs
//! through its own spool, and crypto-shreds content once every recipient is final.

pub mod dsn;

use crate::audit::AuditEvent;
use crate::config::WebhookEvent;
use crate::delivery::{Job, Transport};
use crate::portal::Portal;
use crate::services::Services;
use crate::spool::{Attempt, RecipientState, SpoolError};
use crate::types::{
    AttemptResult, Envelope, MessageId, Notify, RcptOutcome, Recipient, Reply, Status,
};
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify as Wake, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// Timing and retention settings.
#[derive(Debug, Clone)]
pub struct QueueSettings {
    pub hostname: String,
    /// Delay before the 1st, 2nd, ... retry; the last one repeats.
    pub retry: Vec<u64>,
    /// Seconds after acceptance at which a deferred recipient expires and bounces.
    pub expire: u64,
    /// Seconds after acceptance at which a still-deferred recipient's sender is told
    /// once (a "delayed" DSN); 0 = never.
    pub delay_warning: u64,
    /// Concurrent delivery attempts.
    pub concurrency: usize,
    /// Seconds after the last recipient is final before content is crypto-shredded.
    pub content_after_delivery: u64,
    /// Seconds to keep queue metadata of finished messages.
    pub metadata_retention: u64,
    /// Hand recipients whose TLS cannot be met to the portal (`[delivery]
    /// on_tls_failure = "portal"`) after this many seconds since acceptance.
    pub portal_after: Option<u64>,
}

impl QueueSettings {
    /// Next attempt after `attempts` tries, with ±10% jitter (at least ±1 s once the delay
    /// is 2 s or more) so retries do not stampede.
    pub fn next_attempt(&self, attempts: u32, now: u64) -> u64 {
        let i = (attempts.max(1) as usize - 1).min(self.retry.len().saturating_sub(1));
        let base = self.retry.get(i).copied().unwrap_or(300).max(1);
        let spread = if base >= 2 { (base / 10).max(1) } else { 0 };
        let jitter = if spread > 0 {
            rand::Rng::gen_range(&mut rand::thread_rng(), 0..=2 * spread) as i64 - spread as i64
        } else {
            0
        };
        now + (base as i64 + jitter).max(1) as u64
    }
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("building DSN: {0}")]
    Dsn(std::io::Error),
}

pub struct Queue {
    services: Services,
    transport: Arc<dyn Transport>,
    settings: QueueSettings,
    wake: Wake,
    inflight: Mutex<HashSet<MessageId>>,
    /// Messages whose stored data failed authentication: reported once, never delivered.
    broken: Mutex<HashSet<MessageId>>,
    slots: Arc<Semaphore>,
    /// The secure portal, when configured.
    portal: std::sync::OnceLock<Arc<Portal>>,
}

impl Queue {
    pub fn new(
        services: Services,
        transport: Arc<dyn Transport>,
        settings: QueueSettings,
    ) -> Arc<Self> {
        let slots = Arc::new(Semaphore::new(settings.concurrency.max(1)));
        Arc::new(Queue {
            services,
            transport,
            settings,
            wake: Wake::new(),
            inflight: Mutex::new(HashSet::new()),
            broken: Mutex::new(HashSet::new()),
            slots,
            portal: std::sync::OnceLock::new(),
        })
    }

    /// Use `portal` for portal-bound recipients and TLS fallback; it wakes this queue
    /// when it spools a notice.
    pub fn set_portal(self: &Arc<Self>, portal: Arc<Portal>) {
        let weak = Arc::downgrade(self);
        portal.set_waker(Box::new(move || {
            if let Some(q) = weak.upgrade() {
                q.wake();
            }
        }));
        let _ = self.portal.set(portal);
    }

    /// Why recipient `rcpt` should now go to the portal instead of being retried, if it
    /// should: policy sent it there, or TLS failed and the fallback applies.
    fn portal_reason(
        &self,
        env: &Envelope,
        rcpt: &Recipient,
        o: Option<&RcptOutcome>,
        now: u64,
    ) -> Option<String> {
        self.portal.get()?;
        if let Some(why) = &rcpt.portal {
            return Some(why.clone());
        }
        if rcpt.no_portal {
            return None;
        }
        let after = self.settings.portal_after?;
        // Notices and TLS reports carry no PHI: they never need the portal.
        if env.listener == crate::types::NOTICE_LISTENER
            || env.listener == crate::delivery::observe::REPORT_LISTENER
        {
            return None;
        }
        match &o?.result {
            AttemptResult::Permanent(r) if r.enhanced == "5.7.30" => Some("requiretls".into()),
            AttemptResult::Transient(r)
                if r.enhanced.starts_with("4.7.") && now >= env.received_at + after =>
            {
                Some("tls-failure".into())
            }
            _ => None,
        }
    }

    /// Something new is due: look now rather than at the next tick.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Make every recipient of `id` (or of all messages) due now.
    pub async fn retry_now(&self, id: Option<MessageId>) -> Result<usize, QueueError> {
        let ids = match id {
            Some(id) => vec![id],
            None => self.services.spool.pending()?,
        };
        let now = self.services.now();
        let mut n = 0;
        for id in ids {
            let mut states = self.services.spool.recipients(&id)?;
            let mut changed = false;
            for s in states.iter_mut() {
                if let Status::Deferred { .. } | Status::Queued = s.status {
                    s.status = Status::Queued;
                    s.next_attempt = now;
                    changed = true;
                }
            }
            if changed {
                self.services.spool.set_recipients(&id, &states).await?;
                n += 1;
            }
        }
        self.wake();
        Ok(n)
    }

    /// Scheduler loop: runs until `shutdown` is cancelled, then makes one last pass over
    /// what is due and waits for attempts in progress. Anything not finished stays queued
    /// on disk and is retried at the next start (delivery is at-least-once).
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut last_sweep = 0u64;
        loop {
            let stopping = shutdown.is_cancelled();
            let now = self.services.now();
            self.dispatch_due(now).await;
            if stopping {
                break;
            }
            if now >= last_sweep + 60 {
                last_sweep = now;
                self.sweep(now).await;
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.cancelled() => {}
            }
        }
        let all = u32::try_from(self.settings.concurrency.max(1)).unwrap_or(u32::MAX);
        let _ = self.slots.acquire_many(all).await;
    }

    async fn dispatch_due(self: &Arc<Self>, now: u64) {
        let due = match self.services.spool.due(now) {
            Ok(d) => d,
            Err(e) => {
                error!(error = %e, "cannot read the queue schedule");
                return;
            }
        };
        for id in due {
            if self
                .broken
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&id)
            {
                continue;
            }
            if !self
                .inflight
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id)
            {
                continue;
            }
            let Ok(permit) = self.slots.clone().acquire_owned().await else {
                return;
            };
            let q = self.clone();
            tokio::spawn(async move {
                if let Err(e) = q.attempt(id).await {
                    q.report_failure(id, &e);
                }
                q.inflight
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&id);
                drop(permit);
            });
        }
    }

    fn report_failure(&self, id: MessageId, e: &QueueError) {
        match e {
            QueueError::Spool(SpoolError::Tampered { .. })
            | QueueError::Spool(SpoolError::Corrupt(_)) => {
                error!(msg_id = %id, error = %e, "stored message failed its integrity check; it will not be delivered");
                self.broken
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(id);
            }
            _ => warn!(msg_id = %id, error = %e, "delivery attempt failed"),
        }
    }

    /// Retention: shred content of finished messages and purge old metadata.
    async fn sweep(&self, now: u64) {
        if self.settings.content_after_delivery > 0 {
            if let Ok(msgs) = self.services.spool.messages() {
                for (id, s) in msgs {
                    let due = s
                        .done_at
                        .is_some_and(|d| d + self.settings.content_after_delivery <= now);
                    if due && s.shredded_at.is_none() {
                        if let Err(e) = self.services.spool.shred(&id).await {
                            warn!(msg_id = %id, error = %e, "shred failed");
                        }
                    }
                }
            }
        }
        let cutoff = now.saturating_sub(self.settings.metadata_retention);
        match self.services.spool.purge_finished_before(cutoff).await {
            Ok(0) => {}
            Ok(n) => info!(purged = n, "queue metadata past retention purged"),
            Err(e) => warn!(error = %e, "metadata purge failed"),
        }
    }

    /// Is `id` frozen or held (`phigate freeze`, `queue hold`)? Then it stays queued,
    /// untouched, until released.
    fn held(&self, id: MessageId) -> bool {
        let freeze = &self.services.freeze;
        if !freeze.active() {
            return false;
        }
        let identity = freeze.identity_of(id, || {
            let env = self.services.spool.envelope(&id).ok()?;
            Some(env.auth.map(|a| a.to_string()))
        });
        let Some(identity) = identity else {
            return false;
        };
        let Some(why) = freeze.holds(&id, identity.as_deref()) else {
            return false;
        };
        if freeze.first_hold(id) {
            info!(msg_id = %id, why, "delivery held");
        }
        true
    }

    /// Delivery attempts that failed TLS verification (4.7.5, or 5.7.30 under
    /// REQUIRETLS) raise an alert: a downgrade attack looks like this.
    fn alert_tls(&self, env: &Envelope, got: &[RcptOutcome]) {
        let failed: Vec<&RcptOutcome> = got
            .iter()
            .filter(|o| match &o.result {
                AttemptResult::Transient(r) | AttemptResult::Permanent(r) => {
                    r.enhanced == "4.7.5" || r.enhanced == "5.7.30"
                }
                AttemptResult::Delivered(_) => false,
            })
            .collect();
        let Some(first) = failed.first() else {
            return;
        };
        let ip = first.hop.as_ref().map(|h| h.ip.as_str()).unwrap_or("");
        let identity = env.auth.as_ref().map(|a| a.to_string());
        (self.services.alerts).tls_failure(identity.as_deref(), ip, failed.len() as u64);
    }

    /// One delivery attempt for the due recipients of `id`.
    pub async fn attempt(&self, id: MessageId) -> Result<(), QueueError> {
        let now = self.services.now();
        let mut states = match self.services.spool.recipients(&id) {
            Ok(s) => s,
            // Finished and shredded while this attempt was being scheduled: nothing to do.
            Err(SpoolError::Shredded(_)) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let due: Vec<usize> = states
            .iter()
            .enumerate()
            .filter(|(_, s)| match s.status {
                Status::Queued | Status::Deferred { .. } => s.next_attempt <= now,
                _ => false,
            })
            .map(|(i, _)| i)
            .collect();
        if due.is_empty() || self.held(id) {
            return Ok(());
        }
        let (env, content) = self.services.spool.load(&id)?;
        // A notice travels as a `Notice` (checked by DLP again here), so it may use the
        // plaintext fallback; without a portal it is delivered like any message.
        let portal = self.portal.get().cloned();
        let is_notice = env.listener == crate::types::NOTICE_LISTENER;
        let notice = match (&portal, is_notice) {
            (Some(p), true) => match p.check_notice(content.clone()) {
                Ok(n) => Some(n),
                Err(e) => {
                    error!(msg_id = %id, error = %e, "spooled portal notice failed its DLP check; not sent");
                    return Ok(());
                }
            },
            _ => None,
        };
        let mut by_domain: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for &i in &due {
            let Some(r) = env.recipients.get(i) else {
                continue;
            };
            if r.portal.is_some() && portal.is_some() {
                continue;
            }
            by_domain.entry(r.domain()).or_default().push(i);
        }
        let mut outcomes: Vec<RcptOutcome> = Vec::new();
        for idxs in by_domain.values() {
            let started = std::time::Instant::now();
            let job = Job {
                id,
                env: &env,
                content: &content,
                rcpts: idxs,
            };
            let got = match &notice {
                Some(notice) => {
                    let job = crate::delivery::NoticeJob {
                        id,
                        env: &env,
                        notice,
                        rcpts: idxs,
                    };
                    self.transport.deliver_notice(job).await
                }
                None => self.transport.deliver(job).await,
            };
            if let (Some(p), true) = (&portal, is_notice) {
                for o in &got {
                    p.notice_outcome(&env, o).await;
                }
            } else {
                self.alert_tls(&env, &got);
            }
            let method = got.first().and_then(|o| o.hop.as_ref());
            let method = method.map(|h| h.method.as_str()).unwrap_or("");
            (self.services.metrics).delivery_duration(method, started.elapsed().as_secs_f64());
            outcomes.extend(got);
        }
        let mut dsn_rcpts = Vec::new();
        let mut events = Vec::new();
        for &i in &due {
            let Some(rcpt) = env.recipients.get(i) else {
                continue;
            };
            let got = outcomes.iter().find(|o| o.index == i);
            if let (Some(p), Some(why)) = (&portal, self.portal_reason(&env, rcpt, got, now)) {
                let Some(s) = states.get_mut(i) else { continue };
                match p.hand_off(id, &env, i, &content, &why).await {
                    Ok(h) => {
                        s.attempts += 1;
                        s.history.push(Attempt {
                            at: now,
                            host: None,
                            outcome: format!("handed to the secure portal ({why})"),
                            tls_version: None,
                            method: Some("portal".into()),
                        });
                        s.status = Status::Portal {
                            portal: h.portal.to_string(),
                            expires_at: h.expires_at,
                        };
                        s.last_error = None;
                        continue;
                    }
                    Err(e) => {
                        warn!(msg_id = %id, rcpt_index = i, error = %e, "portal hand-off failed; retrying later");
                        outcomes.retain(|o| o.index != i);
                        outcomes.push(RcptOutcome {
                            index: i,
                            result: AttemptResult::Transient(Reply::new(
                                451,
                                "4.3.0",
                                "secure portal hand-off failed",
                            )),
                            hop: None,
                        });
                    }
                }
            }
            let outcome = outcomes
                .iter()
                .find(|o| o.index == i)
                .cloned()
                .unwrap_or(RcptOutcome {
                    index: i,
                    result: AttemptResult::Transient(Reply::new(
                        451,
                        "4.3.0",
                        "no result from transport",
                    )),
                    hop: None,
                });
            let Some(s) = states.get_mut(i) else { continue };
            if let Some(d) = self.apply(s, &outcome, env.received_at, now, rcpt) {
                dsn_rcpts.push(d);
            }
            log_outcome(id, &outcome);
            self.observe(id, &outcome, &s.status, rcpt, now);
            let reply = match &outcome.result {
                AttemptResult::Delivered(r)
                | AttemptResult::Transient(r)
                | AttemptResult::Permanent(r) => r,
            };
            events.push(AuditEvent::delivery_attempt(
                id,
                i,
                &rcpt.address,
                outcome.hop.as_ref(),
                reply,
            ));
            events.extend(AuditEvent::outcome(id, i, &rcpt.address, &s.status));
        }
        drop(content);
        // The DSN is queued before the state change, so a crash in between can only
        // repeat a notification, never lose one.
        if !dsn_rcpts.is_empty() && !env.mail_from.is_empty() {
            self.send_dsn(id, &env, &dsn_rcpts).await?;
        }
        let attach = self.services.attach(events);
        let spool = &self.services.spool;
        if states.iter().all(|s| s.status.is_final()) && self.settings.content_after_delivery == 0 {
            spool.finish_and_shred_with(&id, &states, &attach).await?;
        } else {
            spool.set_recipients_with(&id, &states, &attach).await?;
        }
        Ok(())
    }

    /// Metrics for one attempt and, when the recipient is now final, the webhook event.
    fn observe(
        &self,
        id: MessageId,
        o: &RcptOutcome,
        status: &Status,
        _rcpt: &Recipient,
        now: u64,
    ) {
        let result = match &o.result {
            AttemptResult::Delivered(_) => "delivered",
            AttemptResult::Transient(_) => "deferred",
            AttemptResult::Permanent(_) => "bounced",
        };
        let event = match status {
            Status::Delivered { .. } => Some(WebhookEvent::Delivered),
            Status::Bounced { .. } => Some(WebhookEvent::Bounced),
            Status::Expired { .. } => Some(WebhookEvent::Expired),
            _ => None,
        };
        let m = &self.services.metrics;
        m.delivery_attempt(o.hop.as_ref(), result);
        if let AttemptResult::Transient(r) | AttemptResult::Permanent(r) = &o.result {
            // Codes only: remote reply text often echoes the recipient address.
            let t = time::OffsetDateTime::from_unix_timestamp(now as i64)
                .ok()
                .and_then(|t| {
                    t.format(&time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .unwrap_or_default();
            m.note_error(format!(
                "{t} {id} rcpt {}: {result} {} {}",
                o.index, r.code, r.enhanced
            ));
        }
        if let Some(event) = event {
            // The webhook event comes from the event store (derived from the audit record).
            m.outcome(event.as_str());
        }
    }

    /// Update one recipient's state; returns what to report in a DSN, if anything.
    fn apply(
        &self,
        s: &mut RecipientState,
        o: &RcptOutcome,
        received_at: u64,
        now: u64,
        rcpt: &Recipient,
    ) -> Option<dsn::DsnRecipient> {
        s.attempts += 1;
        let (reply, kind) = match &o.result {
            AttemptResult::Delivered(r) => (r, 0),
            AttemptResult::Transient(r) => (r, 1),
            AttemptResult::Permanent(r) => (r, 2),
        };
        let text = reply.to_string();
        s.history.push(Attempt {
            at: now,
            host: o
                .hop
                .as_ref()
                .map(|h| h.mx_host.clone())
                .filter(|h| !h.is_empty()),
            outcome: text.clone(),
            tls_version: (o.hop.as_ref())
                .map(|h| h.tls_version.clone())
                .filter(|v| !v.is_empty()),
            method: (o.hop.as_ref())
                .map(|h| h.method.clone())
                .filter(|v| !v.is_empty()),
        });
        let notify = rcpt.notify.unwrap_or_else(Notify::default_when_absent);
        let report = |action: &'static str, status: String| dsn::DsnRecipient {
            address: rcpt.address.clone(),
            orcpt: rcpt.orcpt.clone(),
            action,
            status,
            diagnostic: text.clone(),
            retry_until: (action == "delayed").then_some(received_at + self.settings.expire),
        };
        match kind {
            0 => {
                s.status = Status::Delivered {
                    reply: text.clone(),
                };
                s.last_error = None;
                notify
                    .success
                    .then(|| report("delivered", dsn::status_of(&text, "2.0.0")))
            }
            2 => {
                s.status = Status::Bounced {
                    reason: text.clone(),
                };
                s.last_error = Some(text.clone());
                notify
                    .failure
                    .then(|| report("failed", dsn::status_of(&text, "5.0.0")))
            }
            _ if now >= received_at + self.settings.expire => {
                s.status = Status::Expired {
                    reason: text.clone(),
                };
                s.last_error = Some(text.clone());
                notify
                    .failure
                    .then(|| report("failed", "4.4.7".to_string()))
            }
            _ => {
                let next = self.settings.next_attempt(s.attempts, now);
                s.next_attempt = next;
                s.status = Status::Deferred {
                    next_attempt: next,
                    reason: text.clone(),
                };
                let warn = self.settings.delay_warning > 0
                    && !s.delay_notified
                    && notify.delay
                    && !notify.never
                    && now >= received_at + self.settings.delay_warning;
                let delayed = warn.then(|| report("delayed", dsn::status_of(&text, "4.0.0")));
                s.delay_notified |= warn;
                s.last_error = Some(text);
                delayed
            }
        }
    }

    async fn send_dsn(
        &self,
        id: MessageId,
        env: &Envelope,
        rcpts: &[dsn::DsnRecipient],
    ) -> Result<(), QueueError> {
        let dsn_id = MessageId::new();
        let body = dsn::build(&self.settings.hostname, id, env, rcpts).map_err(QueueError::Dsn)?;
        let date = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc2822)
            .unwrap_or_default();
        let mut content = format!(
            "Received: from localhost\r\n\tby {} (phigate) with DSN\r\n\tid {dsn_id};\r\n\t{date}\r\n",
            self.settings.hostname
        )
        .into_bytes();
        content.extend_from_slice(&body);
        let dsn_env = Envelope {
            tls_floor: env.tls_floor,
            ..Envelope::internal(
                "",
                &env.mail_from,
                &self.settings.hostname,
                "dsn",
                self.services.now(),
            )
        };
        let event = AuditEvent::dsn_sent(id, dsn_id, &env.mail_from, rcpts.len());
        self.services
            .spool
            .enqueue_with(
                dsn_id,
                &dsn_env,
                &content,
                RecipientState::queued(self.services.now()),
                &self.services.attach(vec![event]),
            )
            .await?;
        info!(msg_id = %id, dsn_id = %dsn_id, recipients = rcpts.len(), "DSN queued");
        self.wake();
        Ok(())
    }
}

fn log_outcome(id: MessageId, o: &RcptOutcome) {
    let (result, code) = match &o.result {
        AttemptResult::Delivered(r) => ("delivered", r.code),
        AttemptResult::Transient(r) => ("deferred", r.code),
        AttemptResult::Permanent(r) => ("bounced", r.code),
    };
    let hop = o.hop.clone().unwrap_or_default();
    info!(
        msg_id = %id, rcpt_index = o.index, result, code,
        mx = %hop.mx_host, ip = %hop.ip, tls = %hop.tls_version, method = %hop.method,
        "delivery attempt"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_schedule_with_jitter() {
        let s = QueueSettings {
            hostname: "h".into(),
            retry: vec![300, 600, 3600],
            expire: 5 * 86400,
            delay_warning: 0,
            concurrency: 1,
            content_after_delivery: 0,
            metadata_retention: 0,
            portal_after: None,
        };
        for _ in 0..50 {
            let n = s.next_attempt(1, 1000) - 1000;
            assert!((270..=330).contains(&n), "{n}");
            let n = s.next_attempt(9, 1000) - 1000;
            assert!((3240..=3960).contains(&n), "{n}");
        }
        // Short delays (tests, aggressive configs) still spread by a second.
        let short = QueueSettings {
            retry: vec![5],
            ..s
        };
        let seen: std::collections::BTreeSet<u64> = (0..200)
            .map(|_| short.next_attempt(1, 1000) - 1000)
            .collect();
        assert_eq!(seen, [4, 5, 6].into_iter().collect());
    }
}
