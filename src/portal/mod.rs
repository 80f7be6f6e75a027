//! The secure portal (store and notifier, L2; `web` is its L3 front end). A recipient
//! whose server cannot be reached over the TLS it needs, or whom policy sends here, gets
//! a PHI-free notification with a link; the message waits in a sealed copy of its own
//! (spool data key, envelope, content) until the recipient proves control of the address
//! with a one-time code, an administrator revokes it, or `link_ttl` passes. Ending it
//! crypto-shreds the copy. Every step is an audit record with client facts, never content.

pub mod record;
pub mod web;

pub use record::{Entry, State};

use crate::audit::{AuditEvent, Kind};
use crate::config::PortalConfig;
use crate::notice::{compose, Draft, Notice, NoticeError};
use crate::policy::ActivePolicy;
use crate::services::Services;
use crate::spool::{Op, RecipientState, Spool, SpoolError, StateTag, Tree};
use crate::templates::Templates;
use crate::types::{Envelope, MessageId, Recipient, TlsLevel};
use record::{by_message_key, entry_key, token_key};
use std::sync::{Arc, OnceLock, RwLock};
use tokio::sync::Mutex;
use tracing::{info, warn};

/// The built-in notification text (`[portal] notification_template` replaces it).
const DEFAULT_NOTIFICATION: &str = "\
{{ organization }} has sent you a secure message.

To read it, open this link and ask for a one-time code, which will be sent to this
address:

{{ link }}

The link works until {{ expires }}. If it has expired, please contact the sender.
This notification contains no message content.
";

/// How the sealed copy's envelope carries the link token.
const TOKEN_PREFIX: &str = "portal-token:";

#[derive(Debug, thiserror::Error)]
pub enum PortalError {
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
    #[error(transparent)]
    Notice(#[from] NoticeError),
    #[error("notification template: {0}")]
    Template(String),
    #[error("no portal message {0}")]
    NotFound(MessageId),
    #[error("portal message {0} is {1}")]
    Ended(MessageId, &'static str),
    #[error("portal record {0} is unreadable")]
    Corrupt(String),
    #[error("store: {0}")]
    Io(#[from] std::io::Error),
}

/// A recipient handed to the portal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handoff {
    pub portal: MessageId,
    pub expires_at: u64,
}

/// Who is on the other end of a portal request (audit facts).
#[derive(Debug, Clone, Default)]
pub struct Client {
    pub ip: String,
    pub user_agent: String,
}

/// What a code request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeRequest {
    Sent,
    /// Too many code mails for this link this hour.
    RateLimited,
    Locked {
        until: u64,
    },
}

/// What a code entry did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verified {
    /// The new session's cookie value.
    Session(String),
    Wrong {
        left: u32,
    },
    Locked {
        until: u64,
    },
    /// No code was requested, or it expired.
    NoCode,
}

pub struct Portal {
    services: Services,
    cfg: PortalConfig,
    hostname: String,
    from: String,
    policy: Arc<ActivePolicy>,
    template: RwLock<Arc<Templates>>,
    /// Wakes the queue after a notice is spooled (set by the server once it exists).
    wake: OnceLock<Box<dyn Fn() + Send + Sync>>,
    /// Key of CSRF values; random per store, kept in the store so pages survive a restart.
    secret: Vec<u8>,
    /// Record updates are read-modify-write; portal traffic is small, one lock is enough.
    lock: Mutex<()>,
}

impl Portal {
    pub fn open(
        services: Services,
        cfg: &PortalConfig,
        hostname: &str,
        policy: Arc<ActivePolicy>,
    ) -> Result<Arc<Portal>, PortalError> {
        let store = services.spool.store().clone();
        let secret = match store.get(Tree::Meta, record::SECRET.as_bytes())? {
            Some(s) => s,
            None => {
                let s = record::random_token().into_bytes();
                store.commit(&[Op::Put(
                    Tree::Meta,
                    record::SECRET.as_bytes().to_vec(),
                    s.clone(),
                )])?;
                s
            }
        };
        let template = Arc::new(load_template(cfg)?);
        Ok(Arc::new(Portal {
            services,
            from: cfg
                .from
                .clone()
                .unwrap_or_else(|| format!("portal@{hostname}")),
            cfg: cfg.clone(),
            hostname: hostname.to_string(),
            policy,
            template: RwLock::new(template),
            wake: OnceLock::new(),
            secret,
            lock: Mutex::new(()),
        }))
    }

    pub fn config(&self) -> &PortalConfig {
        &self.cfg
    }

    pub fn services(&self) -> &Services {
        &self.services
    }

    pub fn set_waker(&self, wake: Box<dyn Fn() + Send + Sync>) {
        let _ = self.wake.set(wake);
    }

    fn wake_queue(&self) {
        if let Some(w) = self.wake.get() {
            w();
        }
    }

    /// Reload the notification template (SIGHUP); a broken one keeps the old.
    pub fn reload(&self) -> Result<(), PortalError> {
        let t = Arc::new(load_template(&self.cfg)?);
        *self.template.write().unwrap_or_else(|p| p.into_inner()) = t;
        Ok(())
    }

    /// A spooled notice, checked again by DLP before it may travel (the queue's half of
    /// the guarantee that only a [`Notice`] leaves without TLS).
    pub fn check_notice(&self, bytes: Vec<u8>) -> Result<Notice, NoticeError> {
        Notice::check(bytes, self.policy.get().scanner())
    }

    pub fn link(&self, token: &str) -> String {
        format!("{}/m/{token}", self.cfg.public_url.trim_end_matches('/'))
    }

    pub(crate) fn csrf(&self, parts: &[&str]) -> String {
        record::bind(&self.secret, parts)
    }

    pub(crate) fn csrf_ok(&self, parts: &[&str], given: &str) -> bool {
        record::bound(&self.secret, parts, given)
    }

    // ---- records -------------------------------------------------------------------

    /// The entry, if it is still active (ended ones are an error, answered 410).
    fn active(&self, id: &MessageId) -> Result<Entry, PortalError> {
        let e = self.get(id)?;
        if e.state != State::Active {
            return Err(PortalError::Ended(e.id, e.state.as_str()));
        }
        Ok(e)
    }

    /// The recipient's address, from the sealed copy.
    fn recipient_of(&self, e: &Entry) -> Result<String, PortalError> {
        let (env, _) = self.content(e)?;
        Ok(env
            .recipients
            .first()
            .map(|r| r.address.clone())
            .unwrap_or_default())
    }

    fn count(&self, event: &str) {
        (self.services.metrics).inc(crate::metrics::PORTAL_EVENTS, &[("event", event)]);
    }

    pub fn get(&self, id: &MessageId) -> Result<Entry, PortalError> {
        let raw = self
            .services
            .spool
            .store()
            .get(Tree::Meta, &entry_key(id))?
            .ok_or(PortalError::NotFound(*id))?;
        serde_json::from_slice(&raw).map_err(|_| PortalError::Corrupt(id.to_string()))
    }

    /// The entry a link token names, if any (ended ones included: they answer 410).
    pub fn by_token(&self, token: &str) -> Result<Option<Entry>, PortalError> {
        if !record::plausible_token(token) {
            return Ok(None);
        }
        let store = self.services.spool.store();
        let Some(id) = store.get(Tree::Meta, &token_key(&record::hash(token)))? else {
            return Ok(None);
        };
        let id: MessageId = std::str::from_utf8(&id)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| PortalError::Corrupt("token index".into()))?;
        self.get(&id).map(Some)
    }

    pub fn list(&self) -> Result<Vec<Entry>, PortalError> {
        let mut out = Vec::new();
        let start = record::ENTRY.as_bytes();
        let end = format!("{}\u{7f}", record::ENTRY);
        self.services.spool.store().scan(
            Tree::Meta,
            start,
            Some(end.as_bytes()),
            &mut |_, v| {
                if let Ok(e) = serde_json::from_slice::<Entry>(v) {
                    out.push(e);
                }
                true
            },
        )?;
        Ok(out)
    }

    fn put(e: &Entry) -> Op {
        Op::Put(
            Tree::Meta,
            entry_key(&e.id),
            serde_json::to_vec(e).unwrap_or_default(),
        )
    }

    /// Commit `entry` with `events` (and `ops`) in one durable write.
    async fn save(
        &self,
        entry: &Entry,
        mut ops: Vec<Op>,
        events: Vec<AuditEvent>,
    ) -> Result<(), PortalError> {
        ops.push(Self::put(entry));
        let attach = self.services.attach(events);
        self.services.spool.commit_attached(ops, &attach).await?;
        Ok(())
    }

    /// The sealed copy: envelope (sender, recipient) and content.
    pub fn content(&self, e: &Entry) -> Result<(Envelope, Vec<u8>), PortalError> {
        if e.state != State::Active {
            return Err(PortalError::Ended(e.id, e.state.as_str()));
        }
        Ok(self.services.spool.load(&e.id)?)
    }

    // ---- hand-off and notices ------------------------------------------------------

    /// Hand recipient `index` of message `msg` to the portal: seal a copy, index its
    /// token and queue the notification, in one durable write. Repeating it (a crash
    /// before the queue recorded the result) returns the first hand-off.
    pub async fn hand_off(
        &self,
        msg: MessageId,
        env: &Envelope,
        index: usize,
        content: &[u8],
        reason: &str,
    ) -> Result<Handoff, PortalError> {
        let _g = self.lock.lock().await;
        let store = self.services.spool.store().clone();
        if let Some(id) = store.get(Tree::Meta, &by_message_key(&msg, index))? {
            let id: Option<MessageId> = std::str::from_utf8(&id).ok().and_then(|s| s.parse().ok());
            if let Some(e) = id.and_then(|id| self.get(&id).ok()) {
                return Ok(Handoff {
                    portal: e.id,
                    expires_at: e.expires_at,
                });
            }
        }
        let rcpt = env
            .recipients
            .get(index)
            .cloned()
            .ok_or_else(|| PortalError::Corrupt(format!("{msg} has no recipient {index}")))?;
        let now = self.services.now();
        let id = MessageId::new();
        let token = record::random_token();
        let expires_at = now + self.cfg.link_ttl.0;
        let notice = self.notification(&rcpt.address, &token, expires_at)?;
        // The token rides in the sealed copy's envelope (never in clear), so `resend`
        // can send the same link again; it is shredded with the copy.
        let copy_env = Envelope {
            recipients: vec![Recipient {
                portal: None,
                ..rcpt.clone()
            }],
            session: format!("{TOKEN_PREFIX}{token}"),
            ..env.clone()
        };
        let attachments = crate::message::parse(content)
            .map(|m| m.attachments().count())
            .unwrap_or(0);
        let entry = Entry {
            id,
            msg,
            rcpt_index: index,
            reason: reason.to_string(),
            created: now,
            expires_at,
            state: State::Active,
            ended_at: None,
            picked_up: None,
            token_hash: record::hash(&token),
            notices: 1,
            code: None,
            codes_sent: 0,
            codes_window: now,
            failures: 0,
            locked_until: 0,
            sessions: Vec::new(),
            views: 0,
            downloads: 0,
            replies: 0,
            attachments,
        };
        let spool = &self.services.spool;
        let mut ops = spool.copy_ops(&id, &copy_env, content.to_vec())?;
        ops.push(Op::Put(
            Tree::Meta,
            token_key(&entry.token_hash),
            id.to_string().into_bytes(),
        ));
        ops.push(Op::Put(
            Tree::Meta,
            by_message_key(&msg, index),
            id.to_string().into_bytes(),
        ));
        let (notice_id, notice_ops) = self.notice_ops(&id, &rcpt.address, notice)?;
        ops.extend(notice_ops);
        let event = AuditEvent::new(Kind::PortalNotified)
            .message(msg)
            .field("rcpt_index", index as u64)
            .field("portal_id", id.to_string())
            .field("notice_id", notice_id.to_string())
            .field("reason", reason)
            .field("expires_at", expires_at)
            .person("recipient", rcpt.address.as_str());
        self.save(&entry, ops, vec![event]).await?;
        info!(msg_id = %msg, rcpt_index = index, portal_id = %id, notice_id = %notice_id, reason, "handed to the secure portal");
        self.count("notified");
        self.wake_queue();
        Ok(Handoff {
            portal: id,
            expires_at,
        })
    }

    /// The rendered, DLP-checked notification for one recipient.
    fn notification(&self, to: &str, token: &str, expires_at: u64) -> Result<Notice, PortalError> {
        let expires = time::OffsetDateTime::from_unix_timestamp(expires_at as i64)
            .ok()
            .and_then(|t| {
                t.format(time::macros::format_description!(
                    "[year]-[month]-[day] [hour]:[minute] UTC"
                ))
                .ok()
            })
            .unwrap_or_default();
        let values = serde_json::json!({
            "organization": self.cfg.organization,
            "link": self.link(token),
            "expires": expires,
        });
        let values = values.as_object().cloned().unwrap_or_default();
        let template = self
            .template
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let text = template
            .render("notification", &values, crate::notice::MAX_NOTICE)
            .map_err(|e| PortalError::Template(e.to_string()))?
            .text
            .unwrap_or_default();
        let subject = format!("Secure message from {}", self.cfg.organization);
        self.draft(to, &subject, &text)
    }

    fn draft(&self, to: &str, subject: &str, text: &str) -> Result<Notice, PortalError> {
        let bytes = compose(&Draft {
            from: &self.from,
            to,
            subject,
            text,
            hostname: &self.hostname,
        })?;
        match self.check_notice(bytes) {
            Ok(n) => Ok(n),
            Err(e) => {
                // Never sent: the message stays queued and an administrator must look.
                warn!(error = %e, "portal notification refused by DLP");
                if let NoticeError::NotClean(findings) = &e {
                    self.services.alerts.portal_notice_refused(findings);
                }
                self.count("notice_refused");
                Err(e.into())
            }
        }
    }

    /// Spool writes queueing `notice` to `to` (its envelope names the portal message).
    fn notice_ops(
        &self,
        portal: &MessageId,
        to: &str,
        notice: Notice,
    ) -> Result<(MessageId, Vec<Op>), PortalError> {
        let id = MessageId::new();
        let env = Envelope {
            session: format!("portal:{portal}"),
            ..Envelope::internal(
                &self.from,
                to,
                &self.hostname,
                crate::types::NOTICE_LISTENER,
                self.services.now(),
            )
        };
        let ops = self.services.spool.enqueue_ops(
            id,
            &env,
            notice.as_bytes().to_vec(),
            RecipientState::queued(self.services.now()),
        )?;
        Ok((id, ops))
    }

    /// A notice left (or failed to): the audit record with its TLS facts. Called by the
    /// queue for messages on the notice listener.
    pub async fn notice_outcome(&self, env: &Envelope, outcome: &crate::types::RcptOutcome) {
        let portal = env.session.strip_prefix("portal:").unwrap_or_default();
        let hop = outcome.hop.clone().unwrap_or_default();
        let (result, code) = match &outcome.result {
            crate::types::AttemptResult::Delivered(r) => ("sent", r.code),
            crate::types::AttemptResult::Transient(r) => ("deferred", r.code),
            crate::types::AttemptResult::Permanent(r) => ("failed", r.code),
        };
        let ev = AuditEvent::new(Kind::PortalNoticeSent)
            .field("portal_id", portal)
            .field("result", result)
            .field("code", code)
            .field("mx_host", hop.mx_host)
            .field("ip", hop.ip)
            .field("tls_version", hop.tls_version)
            .field("cipher", hop.cipher)
            .field("method", hop.method);
        if let Err(e) = self.services.audit.record(vec![ev]).await {
            warn!(error = %e, "portal notice audit record failed");
        }
    }

    // ---- the recipient's side ------------------------------------------------------

    /// Mail a new one-time code to the recipient (it replaces any earlier one).
    pub async fn request_code(
        &self,
        id: &MessageId,
        c: &Client,
    ) -> Result<CodeRequest, PortalError> {
        let _g = self.lock.lock().await;
        let mut e = self.active(id)?;
        let now = self.services.now();
        if e.locked_until > now {
            return Ok(CodeRequest::Locked {
                until: e.locked_until,
            });
        }
        if now >= e.codes_window + 3600 {
            e.codes_window = now;
            e.codes_sent = 0;
        }
        if e.codes_sent >= self.cfg.codes_per_hour {
            return Ok(CodeRequest::RateLimited);
        }
        let to = self.recipient_of(&e)?;
        let (code, pending) = record::new_code(now + self.cfg.code_ttl.0);
        let text = format!(
            "Your one-time code for the secure message from {org}:\r\n\r\nCode: {code}\r\n\r\nIt works for {mins} minutes. If you did not ask for it, ignore this mail.\r\n",
            org = self.cfg.organization,
            mins = self.cfg.code_ttl.0.div_ceil(60),
        );
        let subject = format!(
            "Your code for the secure message from {}",
            self.cfg.organization
        );
        let notice = self.draft(&to, &subject, &text)?;
        let (notice_id, ops) = self.notice_ops(&e.id, &to, notice)?;
        e.code = Some(pending);
        e.codes_sent += 1;
        let ev = self
            .event(Kind::PortalCodeRequested, &e, c)
            .field("notice_id", notice_id.to_string());
        self.save(&e, ops, vec![ev]).await?;
        self.count("code_requested");
        self.wake_queue();
        Ok(CodeRequest::Sent)
    }

    /// Check an entered code; on success a new session.
    pub async fn verify(
        &self,
        id: &MessageId,
        given: &str,
        c: &Client,
    ) -> Result<Verified, PortalError> {
        let _g = self.lock.lock().await;
        let mut e = self.active(id)?;
        let now = self.services.now();
        if e.locked_until > now {
            return Ok(Verified::Locked {
                until: e.locked_until,
            });
        }
        let Some(pending) = e.code.clone().filter(|p| p.expires > now) else {
            return Ok(Verified::NoCode);
        };
        if !record::code_matches(&pending, given) {
            e.failures += 1;
            let left = self.cfg.max_code_attempts.saturating_sub(e.failures);
            let mut ev = self
                .event(Kind::PortalCodeFailed, &e, c)
                .field("failures", e.failures);
            let answer = if left == 0 {
                e.locked_until = now + self.cfg.lockout.0;
                e.failures = 0;
                e.code = None;
                ev = ev.field("locked_until", e.locked_until);
                Verified::Locked {
                    until: e.locked_until,
                }
            } else {
                Verified::Wrong { left }
            };
            self.save(&e, Vec::new(), vec![ev]).await?;
            self.count("code_failed");
            return Ok(answer);
        }
        let cookie = record::random_token();
        e.code = None;
        e.failures = 0;
        e.sessions.push(record::Session {
            hash: record::hash(&cookie),
            last_seen: now,
        });
        if e.sessions.len() > record::MAX_SESSIONS {
            e.sessions.remove(0);
        }
        let ev = self.event(Kind::PortalVerified, &e, c);
        self.save(&e, Vec::new(), vec![ev]).await?;
        self.count("verified");
        Ok(Verified::Session(cookie))
    }

    /// Is `cookie` a live session of `e`? A live one is touched (idle timeout restarts).
    pub async fn session(&self, id: &MessageId, cookie: &str) -> Result<bool, PortalError> {
        let _g = self.lock.lock().await;
        let mut e = self.active(id)?;
        let now = self.services.now();
        let h = record::hash(cookie);
        let idle = self.cfg.session_idle.0;
        let before = e.sessions.len();
        e.sessions.retain(|s| s.last_seen + idle > now);
        let live = match e.sessions.iter_mut().find(|s| s.hash == h) {
            Some(s) => {
                // Touch at most once a minute: not every page view is a store write.
                let touch = now >= s.last_seen + 60;
                s.last_seen = now;
                touch
            }
            None => {
                if e.sessions.len() != before {
                    self.services
                        .spool
                        .commit_attached(vec![Self::put(&e)], &crate::spool::NoAttach)
                        .await?;
                }
                return Ok(false);
            }
        };
        if live || e.sessions.len() != before {
            self.services
                .spool
                .commit_attached(vec![Self::put(&e)], &crate::spool::NoAttach)
                .await?;
        }
        Ok(true)
    }

    /// The message page was shown: audit it, and the first time mark it picked up.
    pub async fn viewed(&self, id: &MessageId, c: &Client) -> Result<(), PortalError> {
        let _g = self.lock.lock().await;
        let mut e = self.get(id)?;
        e.views += 1;
        let mut events = vec![self.event(Kind::PortalViewed, &e, c)];
        let mut ops = Vec::new();
        if e.picked_up.is_none() {
            let now = self.services.now();
            e.picked_up = Some(now);
            events.push(
                self.event(Kind::PortalPickedUp, &e, c)
                    .field("rcpt_index", e.rcpt_index as u64)
                    .field("status", "picked-up"),
            );
            ops.extend(self.retag_ops(&e, StateTag::PickedUp));
            self.count("picked_up");
        }
        self.save(&e, ops, events).await
    }

    pub async fn downloaded(
        &self,
        id: &MessageId,
        n: usize,
        c: &Client,
    ) -> Result<(), PortalError> {
        let _g = self.lock.lock().await;
        let mut e = self.get(id)?;
        e.downloads += 1;
        let ev = self
            .event(Kind::PortalDownloaded, &e, c)
            .field("attachment", n as u64);
        self.save(&e, Vec::new(), vec![ev]).await
    }

    /// A secure reply: a new message from the recipient to the original sender through
    /// phigate's own queue, verified TLS only (or the sender's portal when configured).
    pub async fn reply(
        &self,
        id: &MessageId,
        text: &str,
        c: &Client,
    ) -> Result<MessageId, PortalError> {
        let _g = self.lock.lock().await;
        let mut e = self.get(id)?;
        let (env, content) = self.content(&e)?;
        let me = env
            .recipients
            .first()
            .map(|r| r.address.clone())
            .unwrap_or_default();
        if env.mail_from.is_empty() {
            return Err(PortalError::Corrupt(
                "the message has no sender to reply to".into(),
            ));
        }
        let original = crate::message::parse_headers(&content);
        let subject = original
            .as_ref()
            .and_then(|m| m.subject().map(str::to_string))
            .unwrap_or_default();
        let in_reply_to = original
            .as_ref()
            .and_then(|m| m.message_id().map(str::to_string));
        drop(content);
        let reply_id = MessageId::new();
        let mut b = mail_builder::MessageBuilder::new()
            .from(me.as_str())
            .to(env.mail_from.as_str())
            .subject(if subject.to_ascii_lowercase().starts_with("re:") {
                subject
            } else {
                format!("Re: {subject}")
            })
            .message_id(format!("{reply_id}@{}", self.hostname))
            .header(
                "X-Phigate-Portal-Reply",
                mail_builder::headers::raw::Raw::new(e.id.to_string()),
            )
            .text_body(text);
        if let Some(r) = in_reply_to {
            b = b.in_reply_to(r);
        }
        let body = b
            .write_to_vec()
            .map_err(|e| PortalError::Corrupt(format!("building the reply: {e}")))?;
        let now = self.services.now();
        let reply_env = Envelope {
            mail_from: me.clone(),
            params: Default::default(),
            recipients: vec![Recipient::new(env.mail_from.clone())],
            helo: self.hostname.clone(),
            peer_ip: c.ip.clone(),
            listener: crate::types::PORTAL_REPLY_LISTENER.into(),
            auth: None,
            tls: None,
            received_at: now,
            // Whatever the clinic's level is, a patient's reply is PHI: verified TLS.
            tls_floor: Some(TlsLevel::Verify),
            session: format!("portal:{}", e.id),
        };
        let ops = self.services.spool.enqueue_ops(
            reply_id,
            &reply_env,
            body.clone(),
            RecipientState::queued(now),
        )?;
        e.replies += 1;
        let key_id = self.services.spool.keyring().current().id().to_string();
        let events = vec![
            self.event(Kind::PortalReplied, &e, c)
                .field("reply_id", reply_id.to_string()),
            AuditEvent::message_received(reply_id, &reply_env, body.len()),
            AuditEvent::spooled(reply_id, &key_id, false),
        ];
        self.save(&e, ops, events).await?;
        self.count("replied");
        self.wake_queue();
        Ok(reply_id)
    }

    fn event(&self, kind: Kind, e: &Entry, c: &Client) -> AuditEvent {
        let ua: String = c.user_agent.chars().take(200).collect();
        AuditEvent::new(kind)
            .message(e.msg)
            .field("portal_id", e.id.to_string())
            .field("client_ip", c.ip.as_str())
            .field("user_agent", ua)
    }

    // ---- administration and lifetime -----------------------------------------------

    /// End a portal message: shred the copy and tell the sender's side.
    async fn end(
        &self,
        mut e: Entry,
        state: State,
        admin: Option<&str>,
    ) -> Result<Entry, PortalError> {
        if e.state != State::Active {
            return Err(PortalError::Ended(e.id, e.state.as_str()));
        }
        let now = self.services.now();
        e.state = state;
        e.ended_at = Some(now);
        e.sessions.clear();
        e.code = None;
        let (kind, tag, status) = match state {
            State::Revoked => (Kind::PortalRevoked, StateTag::Revoked, "revoked"),
            _ => (Kind::PortalExpired, StateTag::Expired, "expired"),
        };
        let mut ops = Spool::shred_copy_ops(&e.id);
        ops.extend(self.retag_ops(&e, tag));
        let mut ev = AuditEvent::new(kind)
            .message(e.msg)
            .field("portal_id", e.id.to_string())
            .field("rcpt_index", e.rcpt_index as u64)
            .field("status", status);
        if let Some(a) = admin {
            ev = ev.person("admin", a);
        }
        self.save(&e, ops, vec![ev]).await?;
        info!(portal_id = %e.id, msg_id = %e.msg, status, "portal message ended, content shredded");
        self.count(status);
        Ok(e)
    }

    pub async fn revoke(&self, id: &MessageId, admin: &str) -> Result<Entry, PortalError> {
        let _g = self.lock.lock().await;
        let e = self.get(id)?;
        self.end(e, State::Revoked, Some(admin)).await
    }

    pub async fn extend(&self, id: &MessageId, by: u64, admin: &str) -> Result<Entry, PortalError> {
        let _g = self.lock.lock().await;
        let mut e = self.active(id)?;
        e.expires_at += by;
        let ev = AuditEvent::new(Kind::PortalExtended)
            .message(e.msg)
            .field("portal_id", e.id.to_string())
            .field("expires_at", e.expires_at)
            .person("admin", admin);
        self.save(&e, Vec::new(), vec![ev]).await?;
        Ok(e)
    }

    /// A new notification with the same link (its token is read from the sealed copy).
    pub async fn resend(&self, id: &MessageId, admin: &str) -> Result<Entry, PortalError> {
        let _g = self.lock.lock().await;
        let mut e = self.get(id)?;
        let (env, _) = self.content(&e)?;
        let to = env
            .recipients
            .first()
            .map(|r| r.address.clone())
            .unwrap_or_default();
        let token = env
            .session
            .strip_prefix(TOKEN_PREFIX)
            .filter(|t| record::hash(t) == e.token_hash)
            .ok_or_else(|| PortalError::Corrupt(format!("{id}: the sealed link is missing")))?
            .to_string();
        let notice = self.notification(&to, &token, e.expires_at)?;
        let (notice_id, ops) = self.notice_ops(&e.id, &to, notice)?;
        e.notices += 1;
        let ev = AuditEvent::new(Kind::PortalResent)
            .message(e.msg)
            .field("portal_id", e.id.to_string())
            .field("notice_id", notice_id.to_string())
            .person("admin", admin);
        self.save(&e, ops, vec![ev]).await?;
        self.wake_queue();
        Ok(e)
    }

    /// Expire every active entry past its `expires_at`; returns how many ended.
    pub async fn expire_due(&self) -> Result<usize, PortalError> {
        let now = self.services.now();
        let due: Vec<MessageId> = self
            .list()?
            .into_iter()
            .filter(|e| e.state == State::Active && e.expires_at <= now)
            .map(|e| e.id)
            .collect();
        let mut n = 0;
        for id in due {
            let _g = self.lock.lock().await;
            let e = self.get(&id)?;
            if e.state == State::Active && e.expires_at <= now {
                self.end(e, State::Expired, None).await?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Expires links every `every` until `stop`.
    pub async fn run_expiry(
        self: Arc<Self>,
        every: std::time::Duration,
        stop: tokio_util::sync::CancellationToken,
    ) {
        loop {
            if let Err(e) = self.expire_due().await {
                warn!(error = %e, "portal expiry sweep failed");
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    /// Writes updating the original message's clear per-recipient state.
    fn retag_ops(&self, e: &Entry, tag: StateTag) -> Vec<Op> {
        self.services
            .spool
            .retag_ops(&e.msg, e.rcpt_index, tag)
            .unwrap_or_default()
    }
}

/// `check-config`: the notification template compiles.
pub fn check_template(cfg: &PortalConfig) -> Result<(), PortalError> {
    load_template(cfg).map(|_| ())
}

fn load_template(cfg: &PortalConfig) -> Result<Templates, PortalError> {
    let source = match &cfg.notification_template {
        Some(p) => std::fs::read_to_string(p)
            .map_err(|e| PortalError::Template(format!("{}: {e}", p.display())))?,
        None => DEFAULT_NOTIFICATION.to_string(),
    };
    let mut t = Templates::empty();
    t.add("notification", "txt", source)
        .map_err(PortalError::Template)?;
    Ok(t)
}
