//! Plain data shared by every layer: message IDs, the SMTP envelope, per-recipient
//! delivery status and SMTP replies. No I/O and no policy here.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Unique, time-sortable message identifier (a ULID). Safe to log: it names no person.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MessageId(pub ulid::Ulid);

impl MessageId {
    pub fn new() -> Self {
        MessageId(ulid::Ulid::new())
    }
    /// Milliseconds since the Unix epoch at which the ID was minted.
    pub fn timestamp_ms(&self) -> u64 {
        self.0.timestamp_ms()
    }
}

impl Default for MessageId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for MessageId {
    type Err = ulid::DecodeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ulid::Ulid::from_string(s).map(MessageId)
    }
}

/// RFC 3461 `RET` parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DsnRet {
    Full,
    Hdrs,
}

/// RFC 6152 / RFC 1652 `BODY` parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BodyType {
    #[default]
    SevenBit,
    EightBitMime,
}

/// Parameters given on `MAIL FROM`, kept with the envelope for delivery and DSNs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailParams {
    pub size: Option<u64>,
    pub body: BodyType,
    pub smtputf8: bool,
    pub ret: Option<DsnRet>,
    /// RFC 3461 ENVID, decoded from xtext.
    pub envid: Option<String>,
    /// RFC 8689: the sender demands verified TLS on every onward hop.
    pub requiretls: bool,
}

/// RFC 3461 `NOTIFY` parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Notify {
    pub never: bool,
    pub success: bool,
    pub failure: bool,
    pub delay: bool,
}

impl Notify {
    /// What applies when the client gave no NOTIFY (RFC 3461 §4.1: failure and, at the
    /// MTA's choice, delay).
    pub fn default_when_absent() -> Self {
        Notify {
            never: false,
            success: false,
            failure: true,
            delay: true,
        }
    }
}

/// One envelope recipient with its RFC 3461 parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipient {
    pub address: String,
    pub notify: Option<Notify>,
    /// RFC 3461 ORCPT as (address type, decoded address).
    pub orcpt: Option<(String, String)>,
    /// Why this recipient goes to the secure portal instead of SMTP delivery (a policy
    /// rule's name, or `api`); `None` for normal delivery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub portal: Option<String>,
    /// The sender ruled the portal out (API `"portal": "never"`): a TLS failure defers
    /// and bounces as if no portal existed. A policy `portal` rule still applies.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_portal: bool,
}

impl Recipient {
    pub fn new(address: impl Into<String>) -> Self {
        Recipient {
            address: address.into(),
            notify: None,
            orcpt: None,
            portal: None,
            no_portal: false,
        }
    }

    /// The domain part, lower-cased; empty for an address without one.
    pub fn domain(&self) -> String {
        domain_of(&self.address)
    }
}

/// Lower-cased domain of `local@domain`, or an empty string.
pub fn domain_of(address: &str) -> String {
    address
        .rsplit_once('@')
        .map(|(_, d)| d.to_ascii_lowercase())
        .unwrap_or_default()
}

/// How the submitting client was authorised to relay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "method", content = "identity", rename_all = "kebab-case")]
pub enum AuthIdentity {
    /// SMTP AUTH with the users file.
    Password(String),
    /// A verified TLS client certificate: subject CN (or fingerprint when no CN).
    ClientCert(String),
    /// Source address in `auth.allow_networks`.
    Ip(String),
    /// An HTTPS API key, by its name (`phigate api-key create NAME`).
    ApiKey(String),
}

/// The listener name API submissions carry (policy rules can match it).
pub const API_LISTENER: &str = "api";
/// The listener name of sandbox-key submissions: the queue delivers these to
/// `data_dir/sandbox/` whatever the delivery mode.
pub const API_SANDBOX_LISTENER: &str = "api-sandbox";
/// The listener name of portal notifications and code mails (PHI-free; the only mail
/// that may leave without TLS, as a `notice::Notice`).
pub const NOTICE_LISTENER: &str = "portal-notice";
/// The listener name of secure replies written on the portal.
pub const PORTAL_REPLY_LISTENER: &str = "portal-reply";

impl fmt::Display for AuthIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthIdentity::Password(u) => write!(f, "password:{u}"),
            AuthIdentity::ClientCert(c) => write!(f, "client-cert:{c}"),
            AuthIdentity::Ip(ip) => write!(f, "ip:{ip}"),
            AuthIdentity::ApiKey(k) => write!(f, "api:{k}"),
        }
    }
}

/// Facts about the inbound TLS session, for the Received header and the audit trail.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsInfo {
    pub version: String,
    pub cipher: String,
    /// SHA-256 of the client certificate, hex, if one was presented and verified.
    pub client_cert_sha256: Option<String>,
}

/// The SMTP envelope of one accepted message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Reverse path; empty string is the null sender `<>`.
    pub mail_from: String,
    pub params: MailParams,
    pub recipients: Vec<Recipient>,
    pub helo: String,
    pub peer_ip: String,
    pub listener: String,
    pub auth: Option<AuthIdentity>,
    pub tls: Option<TlsInfo>,
    /// Unix seconds at which the message was received.
    pub received_at: u64,
    /// Minimum TLS for the next hop, set by policy (`require_tls`).
    #[serde(default)]
    pub tls_floor: Option<TlsLevel>,
    /// The inbound SMTP session that carried the message (links it to `session_opened`).
    #[serde(default)]
    pub session: String,
}

impl Envelope {
    /// Mail phigate writes itself (DSNs, portal notices, TLS reports): one recipient, no
    /// DSN about it (NOTIFY=NEVER: no bounce loops), from loopback on `listener`.
    pub fn internal(mail_from: &str, to: &str, helo: &str, listener: &str, now: u64) -> Self {
        let mut rcpt = Recipient::new(to);
        rcpt.notify = Some(Notify {
            never: true,
            ..Notify::default()
        });
        Envelope {
            mail_from: mail_from.to_string(),
            params: Default::default(),
            recipients: vec![rcpt],
            helo: helo.to_string(),
            peer_ip: "127.0.0.1".into(),
            listener: listener.to_string(),
            auth: None,
            tls: None,
            received_at: now,
            tls_floor: None,
            session: String::new(),
        }
    }
}

/// Per-recipient delivery state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum Status {
    Queued,
    InFlight,
    Deferred {
        next_attempt: u64,
        reason: String,
    },
    Delivered {
        reply: String,
    },
    Bounced {
        reason: String,
    },
    Expired {
        reason: String,
    },
    Quarantined {
        rule: String,
    },
    /// Handed to the secure portal (`portal` is the portal message ID) and notified;
    /// the link works until `expires_at`.
    Portal {
        portal: String,
        expires_at: u64,
    },
    /// The recipient verified and opened the portal message.
    PickedUp {
        portal: String,
        at: u64,
    },
    /// An administrator revoked the portal link; the content is shredded.
    Revoked {
        portal: String,
    },
}

impl Status {
    /// True when the queue has nothing more to do for this recipient (portal states
    /// are final for the queue: the portal keeps its own copy).
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            Status::Delivered { .. }
                | Status::Bounced { .. }
                | Status::Expired { .. }
                | Status::Portal { .. }
                | Status::PickedUp { .. }
                | Status::Revoked { .. }
        )
    }
}

/// An SMTP reply: code, RFC 3463 enhanced status code, and text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    pub code: u16,
    pub enhanced: String,
    pub text: String,
}

impl Reply {
    pub fn new(code: u16, enhanced: &str, text: impl Into<String>) -> Self {
        Reply {
            code,
            enhanced: enhanced.to_string(),
            text: text.into(),
        }
    }

    pub fn is_positive(&self) -> bool {
        self.code < 400
    }

    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.enhanced.is_empty() {
            write!(f, "{} {}", self.code, self.text)
        } else {
            write!(f, "{} {} {}", self.code, self.enhanced, self.text)
        }
    }
}

/// What one delivery attempt did for one recipient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", content = "reply", rename_all = "kebab-case")]
pub enum AttemptResult {
    Delivered(Reply),
    /// Try again later (4xx, connection or TLS failure).
    Transient(Reply),
    /// Give up on this recipient (5xx, null MX, REQUIRETLS impossible).
    Permanent(Reply),
}

/// Facts about the next hop of one attempt, for the queue history and the audit trail.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HopInfo {
    pub mx_host: String,
    pub ip: String,
    pub tls_version: String,
    pub cipher: String,
    pub peer_cert_sha256: String,
    /// `dane-ee`, `dane-ta`, `mta-sts`, `pkix`, `encrypt-only`, or `sandbox`.
    pub method: String,
    pub dane: String,
    pub mta_sts: String,
}

/// The outcome for one recipient (by its index in the envelope).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RcptOutcome {
    pub index: usize,
    pub result: AttemptResult,
    pub hop: Option<HopInfo>,
}

/// Outbound TLS requirement: the one type for the configured level, a domain override,
/// a policy rule's `require_tls` and a message's own floor. TLS itself is never optional;
/// the levels differ in how the peer is authenticated. Ordered from weakest to strongest,
/// so "raise to at least" is `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsLevel {
    /// DANE if the domain has DNSSEC-secure TLSA, else MTA-STS enforce, else `encrypt`.
    Auto,
    /// TLS 1.2+, certificate not authenticated.
    Encrypt,
    /// WebPKI chain and name (or DANE/MTA-STS when they apply).
    Verify,
    /// Only DANE-authenticated TLS.
    DaneOnly,
}

impl TlsLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            TlsLevel::Auto => "auto",
            TlsLevel::Encrypt => "encrypt",
            TlsLevel::Verify => "verify",
            TlsLevel::DaneOnly => "dane-only",
        }
    }
}

/// Current Unix time in seconds.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_id_round_trips_and_sorts() {
        let a = MessageId::new();
        let b: MessageId = a.to_string().parse().expect("parse");
        assert_eq!(a, b);
        assert_eq!(a.to_string().len(), 26);
    }

    #[test]
    fn domain_is_lowercased() {
        assert_eq!(domain_of("Jo@Example.ORG"), "example.org");
        assert_eq!(domain_of("nodomain"), "");
    }

    #[test]
    fn reply_display() {
        let r = Reply::new(250, "2.0.0", "Ok");
        assert_eq!(r.to_string(), "250 2.0.0 Ok");
        assert!(r.is_positive() && !r.is_transient());
    }
}
