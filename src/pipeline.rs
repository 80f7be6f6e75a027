//! What happens to a message between the end of DATA and the `250`: MIME view, DLP scan
//! and policy, then the durable, encrypted handoff to the queue. The SMTP session only
//! sees the [`Handoff`] trait.

use crate::audit::AuditEvent;
use crate::config::WebhookEvent;
use crate::message::TextView;
use crate::metrics::reply_reason;
use crate::policy::{Action, ActivePolicy, MessageContext, Policy, RcptContext, RcptVerdict};
use crate::queue::Queue;
use crate::services::Services;
use crate::spool::{RecipientState, SpoolError};
use crate::types::{AuthIdentity, Envelope, MessageId, Reply};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use tracing::{info, warn};

/// A complete message as received, with the Received header already prepended.
#[derive(Debug)]
pub struct Submission {
    pub id: MessageId,
    pub envelope: Envelope,
    pub content: Vec<u8>,
    /// Set by the HTTPS API: what its submissions add to the audit trail and commit.
    pub api: Option<ApiFacts>,
}

/// What an API submission adds: the key name and the caller's `metadata` (both
/// private fields of `message_received`), and writes committed with the message.
#[derive(Debug, Default)]
pub struct ApiFacts {
    pub key: String,
    pub metadata: std::collections::BTreeMap<String, String>,
    pub ops: Vec<crate::spool::Op>,
}

/// What became of a submission, for front ends that say more than an SMTP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Durable and queued (the enforced action may still be tag, encrypt, ...).
    Queued { rule: String },
    /// Durable and held for review.
    Quarantined { rule: String },
    /// Refused by policy; nothing was spooled.
    Rejected { rule: String, reply: Reply },
    /// Refused at the end of data by a limit, a freeze or a revoked credential.
    Refused(Refusal),
}

/// Why a sender was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Limit(crate::limits::Exceeded),
    Frozen,
    Revoked,
}

impl Refusal {
    /// The SMTP reply for this refusal.
    pub fn reply(&self) -> Reply {
        match self {
            Refusal::Limit(e) => e.reply(),
            Refusal::Frozen => frozen_reply(),
            Refusal::Revoked => revoked_reply(),
        }
    }
}

impl Disposition {
    /// The SMTP reply for this outcome (`id` names the queued message).
    pub fn reply(&self, id: MessageId) -> Reply {
        match self {
            Disposition::Queued { .. } => Reply::new(250, "2.0.0", format!("Ok: queued as {id}")),
            Disposition::Quarantined { rule } => Reply::new(
                250,
                "2.0.0",
                format!("Ok: queued as {id}; held for review by policy {rule}"),
            ),
            Disposition::Rejected { reply, .. } => reply.clone(),
            Disposition::Refused(r) => r.reply(),
        }
    }
}

/// Facts about a recipient offered at RCPT time, for recipient-only policy.
#[derive(Debug)]
pub struct RcptCheck<'a> {
    pub listener: &'a str,
    pub auth: Option<&'a str>,
    pub mail_from: &'a str,
    pub recipient: &'a str,
    pub accepted_so_far: usize,
    /// The recipients accepted so far in this transaction (for per-identity limits).
    pub accepted: &'a [crate::types::Recipient],
}

/// The sender, checked before MAIL is accepted and again at end of data: sending
/// limits, freezes with `--refuse-inbound`, and revoked credentials.
#[derive(Debug)]
pub struct SenderCheck<'a> {
    pub identity: &'a AuthIdentity,
    pub peer: std::net::IpAddr,
    /// The session's verified client certificate: (CN, SHA-256 hex).
    pub client_cert: Option<(Option<&'a str>, &'a str)>,
}

/// What the pipeline says about a sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SenderVerdict {
    Accept,
    /// Refuse this transaction (limit, freeze); the session stays authorised.
    Refuse(Reply),
    /// The credential was revoked: refuse, and the session is no longer authorised.
    Revoked(Reply),
}

/// Security-relevant things a session saw, for the anomaly alerts.
#[derive(Debug, Clone, Copy)]
pub enum SessionEvent {
    /// An AUTH attempt failed; `locked` when the failure limiter cut the source off.
    AuthFailure { ip: std::net::IpAddr, locked: bool },
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("spool: {0}")]
    Spool(#[from] SpoolError),
    /// The spool's file system is below `[spool] min_free`: refused before any write.
    #[error("spool file system below min_free ({free} bytes free)")]
    StorageFull { free: u64 },
    #[error("audit trail: {0}")]
    Audit(#[from] crate::audit::AuditError),
    #[error("policy task failed: {0}")]
    Task(String),
}

impl PipelineError {
    /// The one place pipeline failures become SMTP replies. Nothing was accepted.
    pub fn reply(&self) -> Reply {
        match self {
            PipelineError::Spool(SpoolError::Io(_)) | PipelineError::StorageFull { .. } => {
                Reply::new(452, "4.3.1", "Insufficient system storage, try again later")
            }
            PipelineError::Spool(_) | PipelineError::Audit(_) | PipelineError::Task(_) => {
                Reply::new(451, "4.3.0", "Local error in processing, try again later")
            }
        }
    }
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where the session hands accepted messages. `submit` resolves only once the
/// message is durable (or refused): its reply is what the client hears.
pub trait Handoff: Send + Sync + 'static {
    /// A reply refusing this recipient, or `None` to accept it.
    fn check_recipient(&self, check: &RcptCheck<'_>) -> Option<Reply>;
    fn submit(&self, sub: Submission) -> BoxFuture<'_, Result<Reply, PipelineError>>;
    /// Asked before MAIL is accepted. The default accepts (handoffs without limits).
    fn check_sender(&self, _check: &SenderCheck<'_>) -> SenderVerdict {
        SenderVerdict::Accept
    }
    /// A session reports a security-relevant event. The default ignores it.
    fn session_event(&self, _event: SessionEvent) {}
}

/// The pipeline used by the server.
pub struct Pipeline {
    services: Services,
    queue: Arc<Queue>,
    policy: Arc<ActivePolicy>,
    /// Free bytes the spool's file system must keep after a message (`[spool] min_free`).
    min_free: std::sync::atomic::AtomicU64,
    /// The attachment-extraction worker pool: messages that need extraction are decided
    /// on the blocking pool, at most this many at once (`[dlp.limits] workers`).
    extract_permits: Arc<tokio::sync::Semaphore>,
}

/// What the policy step decided, with the (possibly edited) content.
struct Verdict {
    action: Action,
    rule: String,
    reply: Reply,
    findings: String,
    /// Detectors and counts per attachment origin, without file names (audit).
    sources: String,
    /// Distinct values per DLP detector (names and counts only), for metrics.
    counts: std::collections::BTreeMap<String, usize>,
    /// (action, rule) per recipient, for the audit trail.
    per_rcpt: Vec<(String, String)>,
    received_size: usize,
    content: Vec<u8>,
    envelope: Envelope,
}

impl Pipeline {
    pub fn new(services: Services, queue: Arc<Queue>, policy: Policy) -> Self {
        Self::with_active(services, queue, ActivePolicy::new(policy))
    }

    /// The pipeline on a policy handle shared with others (the portal).
    pub fn with_active(services: Services, queue: Arc<Queue>, policy: Arc<ActivePolicy>) -> Self {
        let workers = policy.get().scanner().limits().worker_count();
        Pipeline {
            services,
            queue,
            policy,
            min_free: std::sync::atomic::AtomicU64::new(0),
            extract_permits: Arc::new(tokio::sync::Semaphore::new(workers)),
        }
    }

    /// Refuse messages (452 4.3.1) that would leave less than `bytes` free on the spool's
    /// file system, before anything is written: a full disk never reaches the store.
    pub fn set_min_free(&self, bytes: u64) {
        self.min_free
            .store(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    fn check_room(&self, size: usize) -> Result<(), PipelineError> {
        let min = self.min_free.load(std::sync::atomic::Ordering::Relaxed);
        match self.services.spool.free_bytes() {
            Some(free) if free < min.saturating_add(size as u64) => {
                warn!(
                    free_mb = free / (1024 * 1024),
                    min_free_mb = min / (1024 * 1024),
                    "spool file system nearly full: refusing mail with 452"
                );
                Err(PipelineError::StorageFull { free })
            }
            _ => Ok(()),
        }
    }

    /// Swap in a reloaded policy; sessions in flight finish with the one they started with.
    pub fn set_policy(&self, policy: Policy) {
        self.policy.set(policy);
    }

    fn policy(&self) -> Arc<Policy> {
        self.policy.get()
    }

    /// Parse, scan and decide. Small messages (the common case: DLP takes ~0.1 ms on
    /// 10 KB) are decided on the session's task; a hand-off to the blocking pool would cost
    /// more than the scan. Large ones go to the blocking pool so they never stall the
    /// runtime's worker threads.
    async fn decide(&self, sub: Submission) -> Result<Verdict, PipelineError> {
        let policy = self.policy();
        let Submission {
            envelope, content, ..
        } = sub;
        let attachments = may_need_extraction(&content);
        if content.len() <= INLINE_DECIDE_MAX && !attachments {
            return Ok(decide_now(&policy, envelope, content));
        }
        // Extraction (PDF, Office, archives) never runs on the reactor, and only
        // `workers` messages extract at once; the rest wait here without a thread.
        let _permit = if attachments {
            Some(
                self.extract_permits
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|e| PipelineError::Task(e.to_string()))?,
            )
        } else {
            None
        };
        tokio::task::spawn_blocking(move || decide_now(&policy, envelope, content))
            .await
            .map_err(|e| PipelineError::Task(e.to_string()))
    }
}

/// Whether a message may carry an attachment for an extractor: any part with a file
/// name or a non-text type. Cheap and conservative (false positives only cost a
/// hand-off to the blocking pool).
fn may_need_extraction(content: &[u8]) -> bool {
    static MARKERS: std::sync::OnceLock<Option<aho_corasick::AhoCorasick>> =
        std::sync::OnceLock::new();
    let markers = MARKERS.get_or_init(|| {
        aho_corasick::AhoCorasick::builder()
            .ascii_case_insensitive(true)
            .build([
                "content-type: application/",
                "content-type:application/",
                "content-type: image/",
                "content-type: message/",
                "name=",
            ])
            .ok()
    });
    // Without the matcher (cannot happen for these fixed patterns) be conservative.
    markers.as_ref().is_none_or(|m| m.is_match(content))
}

/// Largest message decided without leaving the async runtime.
const INLINE_DECIDE_MAX: usize = 256 * 1024;

fn decide_now(policy: &Policy, mut env: Envelope, content: Vec<u8>) -> Verdict {
    let view = TextView::from_bytes(&content);
    let scan = policy.scanner().scan(&view);
    let recipients: Vec<String> = env.recipients.iter().map(|r| r.address.clone()).collect();
    let auth = env.auth.as_ref().map(|a| a.to_string());
    let ctx = MessageContext {
        sender: &env.mail_from,
        recipients: &recipients,
        auth_identity: auth.as_deref(),
        listener: &env.listener,
        size: content.len() as u64,
        requiretls: env.params.requiretls,
    };
    let d = policy.evaluate(&ctx, &scan, &view);
    drop(view);
    let received_size = content.len();
    let per_rcpt = d
        .recipients
        .iter()
        .map(|r| {
            let rule = r.outcome.rule.clone().unwrap_or_else(|| "default".into());
            (r.outcome.action.as_str().to_string(), rule)
        })
        .collect();
    // Always: besides our own edits this drops any X-Phigate-DLP header a
    // sender forged, which must not reach recipients on untagged mail either.
    let content = d.apply_to_owned(content);
    env.tls_floor = env.tls_floor.max(d.enforced.require_tls);
    if d.mode == crate::dlp::Mode::Enforce {
        for (r, rd) in env.recipients.iter_mut().zip(&d.recipients) {
            if rd.outcome.action == Action::Portal {
                r.portal = Some(rd.outcome.rule.clone().unwrap_or_else(|| "default".into()));
            }
        }
    }
    Verdict {
        action: d.enforced.action,
        rule: d.enforced.rule.clone().unwrap_or_else(|| "default".into()),
        reply: d.reply.clone(),
        findings: scan.summary(),
        sources: scan.sources_summary(false),
        counts: scan.counts.clone(),
        per_rcpt,
        received_size,
        content,
        envelope: env,
    }
}

impl Handoff for Pipeline {
    fn check_recipient(&self, check: &RcptCheck<'_>) -> Option<Reply> {
        let ctx = RcptContext {
            sender: check.mail_from,
            auth_identity: check.auth,
            listener: check.listener,
            accepted_so_far: check.accepted_so_far,
        };
        match self.policy().check_recipient(&ctx, check.recipient) {
            RcptVerdict::Accept => {}
            RcptVerdict::Reject(r) => return Some(r),
        }
        let identity = check.auth?;
        let mut domains: Vec<String> = check.accepted.iter().map(|r| r.domain()).collect();
        domains.push(crate::types::domain_of(check.recipient));
        let usage = crate::limits::Usage {
            messages: 1,
            recipients: check.accepted.len() as u64 + 1,
            domains: &domains,
            bytes: 0,
        };
        let limits = &self.services.limits;
        match limits.check(identity, &usage, self.services.now()) {
            Ok(()) => None,
            Err(e) => Some(self.limit_refused(identity, "rcpt", &e)),
        }
    }

    fn check_sender(&self, check: &SenderCheck<'_>) -> SenderVerdict {
        let identity = check.identity.to_string();
        if self
            .services
            .freeze
            .revoked(check.identity, check.peer, check.client_cert)
        {
            info!(peer = %check.peer, "MAIL refused: credential revoked since the session authorised");
            return SenderVerdict::Revoked(revoked_reply());
        }
        if self.services.freeze.refuses(&identity) {
            return SenderVerdict::Refuse(frozen_reply());
        }
        let usage = crate::limits::Usage {
            messages: 1,
            ..Default::default()
        };
        match (self.services.limits).check(&identity, &usage, self.services.now()) {
            Ok(()) => SenderVerdict::Accept,
            Err(e) => SenderVerdict::Refuse(self.limit_refused(&identity, "mail", &e)),
        }
    }

    fn session_event(&self, event: SessionEvent) {
        match event {
            SessionEvent::AuthFailure { ip, locked } => {
                (self.services.alerts).auth_failure(&ip.to_string(), locked, self.services.now())
            }
        }
    }

    fn submit(&self, sub: Submission) -> BoxFuture<'_, Result<Reply, PipelineError>> {
        Box::pin(async move {
            let id = sub.id;
            self.submit_disposition(sub).await.map(|d| d.reply(id))
        })
    }
}

impl Pipeline {
    /// What every front end runs at the end of data (SMTP maps the result to a reply,
    /// the HTTPS API to a status code): the submission, counted in the metrics.
    pub async fn submit_disposition(&self, sub: Submission) -> Result<Disposition, PipelineError> {
        let started = std::time::Instant::now();
        let id = sub.id;
        let res = self.submit_inner(sub).await;
        let (outcome, reason) = match &res {
            Ok((d @ (Disposition::Rejected { .. } | Disposition::Refused(_)), _)) => {
                ("rejected", reply_reason(&d.reply(id)))
            }
            Ok((_, action)) => (
                if *action == Action::Quarantine {
                    "quarantined"
                } else {
                    "accepted"
                },
                action.as_str().to_string(),
            ),
            Err(e) => ("failed", reply_reason(&e.reply())),
        };
        (self.services.metrics).message(outcome, &reason, started.elapsed().as_secs_f64());
        res.map(|(d, _)| d)
    }

    /// The submission proper; also returns the enforced action for metrics.
    async fn submit_inner(
        &self,
        mut sub: Submission,
    ) -> Result<(Disposition, Action), PipelineError> {
        let id = sub.id;
        let api = sub.api.take().unwrap_or_default();
        self.check_room(sub.content.len())?;
        let mut v = self.decide(sub).await?;
        if v.action != Action::Reject && self.policy().file.require_dkim {
            let signed =
                crate::dkim::from_domain(&v.content).is_some_and(|d| self.services.dkim.signs(&d));
            if !signed {
                v.action = Action::Reject;
                v.rule = "require_dkim".into();
                v.reply = Reply::new(
                    550,
                    "5.7.1",
                    "No DKIM key for the From domain: refused by policy (require_dkim)",
                );
            }
        }
        // Handed to the spool by value (encrypted in its own buffer).
        let content = std::mem::take(&mut v.content);
        // After every content change (tags, redaction): lines over 998 octets from
        // legacy senders leave as quoted-printable, so each next hop gets RFC-conformant
        // mail. DLP has already scanned the decoded text.
        let content = crate::long_lines::reencode(&content).unwrap_or(content);
        self.services.metrics.dlp_findings(&v.counts);
        // Detector names and counts only: never values, subjects or addresses.
        info!(msg_id = %id, action = v.action.as_str(), rule = %v.rule, findings = %v.findings, "policy decision");
        let spool = &self.services.spool;
        let mut received = AuditEvent::message_received(id, &v.envelope, v.received_size);
        if !api.key.is_empty() {
            received = received.person("api_key", api.key.as_str()).person(
                "metadata",
                serde_json::to_value(&api.metadata).unwrap_or_default(),
            );
        }
        let mut events = vec![
            received,
            AuditEvent::policy_decision(id, v.action.as_str(), &v.rule, &v.per_rcpt, &v.findings)
                .field("sources", v.sources.as_str()),
        ];
        if v.action == Action::Reject {
            // Nothing is spooled: record what arrived and the refusal on their own.
            self.services.audit.record(events).await?;
            let rejected = Disposition::Rejected {
                rule: v.rule,
                reply: v.reply,
            };
            return Ok((rejected, Action::Reject));
        }
        let mut counters = match self.admit(&v) {
            Ok(ops) => ops,
            Err(refusal) => {
                // Refused as a whole: record what arrived, nothing is spooled or counted.
                self.services.audit.record(events).await?;
                return Ok((Disposition::Refused(refusal), Action::Reject));
            }
        };
        counters.extend(api.ops);
        let key_id = spool.keyring().current().id().to_string();
        let quarantined = v.action == Action::Quarantine;
        events.push(AuditEvent::spooled(id, &key_id, quarantined));
        let attach = self.services.attach(events).with_ops(counters);
        if quarantined {
            spool
                .enqueue_quarantined_with(id, &v.envelope, content, &v.rule, &attach)
                .await?;
            self.notify_quarantined(id, &v.envelope);
            let held = Disposition::Quarantined { rule: v.rule };
            return Ok((held, Action::Quarantine));
        }
        let initial = RecipientState::queued(self.services.now());
        spool
            .enqueue_owned_with(id, &v.envelope, content, initial, &attach)
            .await?;
        self.queue.wake();
        Ok((Disposition::Queued { rule: v.rule }, v.action))
    }

    /// A sending limit refused mail: metric and audit record (identity encrypted, no
    /// addresses), then the 451 4.7.1 reply.
    fn limit_refused(&self, identity: &str, stage: &str, e: &crate::limits::Exceeded) -> Reply {
        self.record_limit_refusal(identity, stage, e);
        e.reply()
    }

    /// Metric, log line and audit record of a limit refusal (any front end).
    pub fn record_limit_refusal(&self, identity: &str, stage: &str, e: &crate::limits::Exceeded) {
        let limit = e.limit.as_str();
        (self.services.metrics).inc(
            crate::metrics::LIMIT_REFUSALS,
            &[("limit", limit), ("stage", stage)],
        );
        info!(
            limit,
            stage,
            retry_after = e.retry_after,
            "mail refused by a sending limit"
        );
        let ev = AuditEvent::new(crate::audit::Kind::LimitExceeded)
            .field("limit", limit)
            .field("max", e.max)
            .field("retry_after", e.retry_after)
            .field("stage", stage)
            .person("identity", identity);
        self.services.audit.record_now(ev);
    }

    /// End of data: the sender checks again (a credential revoked or a freeze set while
    /// the client was sending), then the limits for the whole message, counted at once.
    /// Returns the counter write to commit with the message, or the refusal.
    fn admit(&self, v: &Verdict) -> Result<Vec<crate::spool::Op>, Refusal> {
        let env = &v.envelope;
        let Some(auth) = env.auth.as_ref() else {
            return Ok(Vec::new());
        };
        let identity = auth.to_string();
        let peer: std::net::IpAddr = env
            .peer_ip
            .parse()
            .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        let sha = env
            .tls
            .as_ref()
            .and_then(|t| t.client_cert_sha256.as_deref());
        let cert = match (auth, sha) {
            (AuthIdentity::ClientCert(c), Some(sha)) => Some((
                c.strip_prefix("sha256:").is_none().then_some(c.as_str()),
                sha,
            )),
            _ => None,
        };
        if self.services.freeze.revoked(auth, peer, cert) {
            return Err(Refusal::Revoked);
        }
        if self.services.freeze.refuses(&identity) {
            return Err(Refusal::Frozen);
        }
        let mut domains: Vec<String> = env.recipients.iter().map(|r| r.domain()).collect();
        domains.sort();
        domains.dedup();
        let usage = crate::limits::Usage {
            messages: 1,
            recipients: env.recipients.len() as u64,
            domains: &domains,
            bytes: v.received_size as u64,
        };
        let now = self.services.now();
        let limits = &self.services.limits;
        let new_source = limits.is_new_source(&identity, &env.peer_ip, now);
        let op = limits
            .admit(&identity, &usage, Some(&env.peer_ip), now)
            .map_err(|e| {
                self.record_limit_refusal(&identity, "data", &e);
                Refusal::Limit(e)
            })?;
        let alerts = &self.services.alerts;
        if new_source {
            alerts.new_source(&identity, &env.peer_ip);
        }
        let (this_hour, baseline) = limits.volume(&identity, now);
        alerts.volume(&identity, this_hour, baseline, now);
        alerts.dlp(&identity, v.counts.values().sum::<usize>() as u64, now);
        Ok(vec![op])
    }

    fn notify_quarantined(&self, id: MessageId, env: &Envelope) {
        let event = WebhookEvent::Quarantined;
        // The webhook event comes from the event store (derived from the audit record).
        let _ = (id, env);
        self.services.metrics.outcome(event.as_str());
    }
}

fn revoked_reply() -> Reply {
    Reply::new(535, "5.7.8", "Authentication credentials revoked")
}

fn frozen_reply() -> Reply {
    Reply::new(
        451,
        "4.7.1",
        "Sending suspended by the administrator, try again later",
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn attachments_go_to_the_extraction_pool() {
        assert!(super::may_need_extraction(
            b"Content-Type: APPLICATION/PDF; name=r.pdf\r\n"
        ));
        assert!(super::may_need_extraction(
            b"Content-Disposition: attachment; filename=\"a\""
        ));
        assert!(!super::may_need_extraction(
            b"Subject: hi\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
        ));
    }
}
