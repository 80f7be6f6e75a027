//! What an audit record says. Every event has clear fields (machine facts: IPs, TLS
//! parameters, codes, rule and detector names) and person fields (addresses, identities,
//! remote reply text) that are encrypted at rest. Nothing here ever takes a body, a
//! subject, an attachment or a DLP match value.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::types::{Envelope, HopInfo, MessageId, Reply, Status, TlsInfo};

/// The kinds of audited event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    SessionOpened,
    AuthSuccess,
    AuthFailure,
    MessageReceived,
    PolicyDecision,
    Spooled,
    DeliveryAttempt,
    Delivered,
    Deferred,
    Bounced,
    Expired,
    DsnSent,
    Quarantine,
    Release,
    Delete,
    BodyViewed,
    KeyGenerate,
    KeyRotate,
    KeyRewrap,
    ConfigReload,
    RetentionPurge,
    Export,
    /// A sending limit refused mail (`[limits]`).
    LimitExceeded,
    /// An anomaly alert (`[alerts]`).
    SecurityAlert,
    /// `phigate freeze on|off`.
    Freeze,
    /// `phigate queue hold|release`.
    Hold,
    /// `phigate audit incident` was run.
    IncidentReport,
    /// A recipient was handed to the secure portal and a notification queued.
    PortalNotified,
    /// A portal notification or code mail left (with its TLS facts).
    PortalNoticeSent,
    PortalCodeRequested,
    PortalCodeFailed,
    PortalVerified,
    /// The message page was shown; the first time also means picked up.
    PortalViewed,
    PortalPickedUp,
    PortalDownloaded,
    PortalReplied,
    PortalExpired,
    PortalRevoked,
    PortalExtended,
    PortalResent,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::SessionOpened => "session_opened",
            Kind::AuthSuccess => "auth_success",
            Kind::AuthFailure => "auth_failure",
            Kind::MessageReceived => "message_received",
            Kind::PolicyDecision => "policy_decision",
            Kind::Spooled => "spooled",
            Kind::DeliveryAttempt => "delivery_attempt",
            Kind::Delivered => "delivered",
            Kind::Deferred => "deferred",
            Kind::Bounced => "bounced",
            Kind::Expired => "expired",
            Kind::DsnSent => "dsn_sent",
            Kind::Quarantine => "quarantine",
            Kind::Release => "release",
            Kind::Delete => "delete",
            Kind::BodyViewed => "body_viewed",
            Kind::KeyGenerate => "key_generate",
            Kind::KeyRotate => "key_rotate",
            Kind::KeyRewrap => "key_rewrap",
            Kind::ConfigReload => "config_reload",
            Kind::RetentionPurge => "retention_purge",
            Kind::Export => "export",
            Kind::LimitExceeded => "limit_exceeded",
            Kind::SecurityAlert => "security_alert",
            Kind::Freeze => "freeze",
            Kind::Hold => "hold",
            Kind::IncidentReport => "incident_report",
            Kind::PortalNotified => "portal_notified",
            Kind::PortalNoticeSent => "portal_notice_sent",
            Kind::PortalCodeRequested => "portal_code_requested",
            Kind::PortalCodeFailed => "portal_code_failed",
            Kind::PortalVerified => "portal_verified",
            Kind::PortalViewed => "portal_viewed",
            Kind::PortalPickedUp => "portal_picked_up",
            Kind::PortalDownloaded => "portal_downloaded",
            Kind::PortalReplied => "portal_replied",
            Kind::PortalExpired => "portal_expired",
            Kind::PortalRevoked => "portal_revoked",
            Kind::PortalExtended => "portal_extended",
            Kind::PortalResent => "portal_resent",
        }
    }
}

/// One event to append. Build it with the constructors below, or with
/// [`AuditEvent::new`] plus [`field`](AuditEvent::field) / [`person`](AuditEvent::person).
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEvent {
    pub kind: Kind,
    pub msg: Option<MessageId>,
    /// Stored in clear: no names or addresses.
    pub data: Map<String, Value>,
    /// Encrypted at rest: anything that names a person.
    pub private: Map<String, Value>,
}

impl AuditEvent {
    pub fn new(kind: Kind) -> Self {
        AuditEvent {
            kind,
            msg: None,
            data: Map::new(),
            private: Map::new(),
        }
    }

    pub fn message(mut self, id: MessageId) -> Self {
        self.msg = Some(id);
        self
    }

    /// A clear field. Never pass an address, a name or message text here.
    pub fn field(mut self, k: &str, v: impl Into<Value>) -> Self {
        self.data.insert(k.to_string(), v.into());
        self
    }

    /// A field that names a person: encrypted at rest.
    pub fn person(mut self, k: &str, v: impl Into<Value>) -> Self {
        self.private.insert(k.to_string(), v.into());
        self
    }

    /// A TLS session was established on `listener` (session ID is the listener's).
    pub fn session_opened(
        session: &str,
        peer_ip: &str,
        listener: &str,
        tls: Option<&TlsInfo>,
    ) -> Self {
        let mut e = AuditEvent::new(Kind::SessionOpened)
            .field("session", session)
            .field("peer_ip", peer_ip)
            .field("listener", listener);
        if let Some(t) = tls {
            e = e
                .field("tls_version", t.version.as_str())
                .field("cipher", t.cipher.as_str())
                .field("client_cert_sha256", t.client_cert_sha256.clone());
        }
        e
    }

    /// SMTP AUTH result. Never the password.
    pub fn auth(success: bool, session: &str, peer_ip: &str, method: &str, identity: &str) -> Self {
        let kind = if success {
            Kind::AuthSuccess
        } else {
            Kind::AuthFailure
        };
        AuditEvent::new(kind)
            .field("session", session)
            .field("peer_ip", peer_ip)
            .field("method", method)
            .person("identity", identity)
    }

    /// End of DATA: what arrived, before policy.
    pub fn message_received(id: MessageId, env: &Envelope, size: usize) -> Self {
        let rcpts: Vec<Value> = env
            .recipients
            .iter()
            .map(|r| Value::from(r.address.as_str()))
            .collect();
        let notify: Vec<Value> = env
            .recipients
            .iter()
            .map(|r| match r.notify {
                None => Value::Null,
                Some(n) => Value::from(notify_str(n)),
            })
            .collect();
        AuditEvent::new(Kind::MessageReceived)
            .message(id)
            .field("session", env.session.as_str())
            .field("size", size as u64)
            .field("listener", env.listener.as_str())
            .field("peer_ip", env.peer_ip.as_str())
            .field("recipient_count", env.recipients.len() as u64)
            .field("requiretls", env.params.requiretls)
            .field(
                "ret",
                env.params
                    .ret
                    .map(|r| format!("{r:?}").to_ascii_lowercase()),
            )
            .field("envid_present", env.params.envid.is_some())
            .field("notify", notify)
            .field("tls_version", env.tls.as_ref().map(|t| t.version.clone()))
            .field("tls_cipher", env.tls.as_ref().map(|t| t.cipher.clone()))
            .field(
                "auth_method",
                env.auth.as_ref().map(|a| {
                    a.to_string()
                        .split(':')
                        .next()
                        .unwrap_or_default()
                        .to_string()
                }),
            )
            .person("sender", env.mail_from.as_str())
            .person("recipients", rcpts)
            .person("auth_identity", env.auth.as_ref().map(|a| a.to_string()))
    }

    /// The policy verdict. `per_recipient` is (action, rule) in envelope order; `findings`
    /// is the DLP summary (`name=count, ...`): detector names and counts, never values.
    pub fn policy_decision(
        id: MessageId,
        action: &str,
        rule: &str,
        per_recipient: &[(String, String)],
        findings: &str,
    ) -> Self {
        let per: Vec<Value> = per_recipient
            .iter()
            .enumerate()
            .map(|(i, (a, r))| serde_json::json!({ "index": i, "action": a, "rule": r }))
            .collect();
        AuditEvent::new(Kind::PolicyDecision)
            .message(id)
            .field("action", action)
            .field("rule", rule)
            .field("per_recipient", per)
            .field("detectors", findings)
    }

    /// Durably in the spool, wrapped under master key `key_id`.
    pub fn spooled(id: MessageId, key_id: &str, quarantined: bool) -> Self {
        AuditEvent::new(Kind::Spooled)
            .message(id)
            .field("key_id", key_id)
            .field("quarantined", quarantined)
    }

    /// One delivery attempt for one recipient.
    pub fn delivery_attempt(
        id: MessageId,
        rcpt_index: usize,
        rcpt: &str,
        hop: Option<&HopInfo>,
        reply: &Reply,
    ) -> Self {
        let h = hop.cloned().unwrap_or_default();
        AuditEvent::new(Kind::DeliveryAttempt)
            .message(id)
            .field("rcpt_index", rcpt_index as u64)
            .field("mx_host", h.mx_host)
            .field("ip", h.ip)
            .field("tls_version", h.tls_version)
            .field("cipher", h.cipher)
            .field("peer_cert_sha256", h.peer_cert_sha256)
            .field("method", h.method)
            .field("dane", h.dane)
            .field("mta_sts", h.mta_sts)
            .field("code", reply.code)
            .field("enhanced", reply.enhanced.as_str())
            .person("recipient", rcpt)
            // Remote reply text often echoes the address.
            .person("reply", reply.text.as_str())
    }

    /// The recipient's state after an attempt, if it is one of delivered / deferred /
    /// bounced / expired.
    pub fn outcome(id: MessageId, rcpt_index: usize, rcpt: &str, status: &Status) -> Option<Self> {
        let (kind, next) = match status {
            Status::Delivered { .. } => (Kind::Delivered, None),
            Status::Deferred { next_attempt, .. } => (Kind::Deferred, Some(*next_attempt)),
            Status::Bounced { .. } => (Kind::Bounced, None),
            Status::Expired { .. } => (Kind::Expired, None),
            _ => return None,
        };
        let mut e = AuditEvent::new(kind)
            .message(id)
            .field("rcpt_index", rcpt_index as u64)
            .person("recipient", rcpt);
        if let Some(n) = next {
            e = e.field("next_attempt", n);
        }
        Some(e)
    }

    /// A DSN about `id` was queued as `dsn_id` to the original sender.
    pub fn dsn_sent(id: MessageId, dsn_id: MessageId, to: &str, recipients: usize) -> Self {
        AuditEvent::new(Kind::DsnSent)
            .message(id)
            .field("dsn_id", dsn_id.to_string())
            .field("recipients", recipients as u64)
            .person("to", to)
    }

    /// An administrator acted on a message: quarantine, release, delete, body viewed.
    pub fn admin(kind: Kind, admin: &str, id: MessageId) -> Self {
        AuditEvent::new(kind).message(id).person("admin", admin)
    }

    /// Key management: generate, rotate, rewrap (`count` = data keys rewrapped).
    pub fn key(kind: Kind, admin: &str, key_id: &str, count: Option<u64>) -> Self {
        AuditEvent::new(kind)
            .field("key_id", key_id)
            .field("count", count)
            .person("admin", admin)
    }

    /// A configuration reload was applied (`ok`) or refused.
    pub fn config_reload(ok: bool, source: &str) -> Self {
        AuditEvent::new(Kind::ConfigReload)
            .field("ok", ok)
            .field("source", source)
    }
}

fn notify_str(n: crate::types::Notify) -> String {
    if n.never {
        return "never".into();
    }
    let mut v = Vec::new();
    if n.success {
        v.push("success");
    }
    if n.failure {
        v.push("failure");
    }
    if n.delay {
        v.push("delay");
    }
    v.join(",")
}
