//! The admin's policy file: DLP settings, internal domains, recipient limits checked at
//! RCPT time, and ordered content rules (first match wins, then the default) checked
//! at the end of DATA for each recipient.
//!
//! Only plain values come in (sender, recipients, identity, listener, size, REQUIRETLS):
//! this module knows nothing about sessions or the server configuration.

mod apply;
mod decide;
mod explain;
pub mod glob;
mod load;

use crate::dlp::{Confidence, DlpConfig, Mode, Scanner};
use serde::{Deserialize, Serialize};

pub use decide::{Decision, MessageContext, Outcome, RcptContext, RcptVerdict, RecipientDecision};
pub use explain::explain;
pub use load::PolicyError;

/// What happens to a message (ordered from least to most strict).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    #[default]
    Accept,
    Tag,
    /// Deliver through the secure portal (a PHI-free notification, pickup over HTTPS).
    Portal,
    Quarantine,
    Reject,
}

impl Action {
    pub fn as_str(&self) -> &'static str {
        match self {
            Action::Accept => "accept",
            Action::Tag => "tag",
            Action::Portal => "portal",
            Action::Quarantine => "quarantine",
            Action::Reject => "reject",
        }
    }
}

use crate::types::TlsLevel;

/// A rule's consequence, also used for the `[default]` table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionSpec {
    #[serde(default)]
    pub action: Action,
    /// Add the `X-Phigate-DLP` header even when the action is not `tag`.
    #[serde(default)]
    pub tag: bool,
    #[serde(default)]
    pub require_tls: Option<TlsLevel>,
    /// Replace the subject with this text.
    #[serde(default)]
    pub redact_subject: Option<String>,
}

/// `[recipients]`: checked per recipient at RCPT time, in every mode.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecipientLimits {
    /// When non-empty, only these domains (and internal ones) may receive mail.
    #[serde(default)]
    pub allowed_domains: Vec<String>,
    #[serde(default)]
    pub blocked_domains: Vec<String>,
    #[serde(default)]
    pub max_recipients: Option<usize>,
    #[serde(default)]
    pub deny_external: bool,
}

/// A detector condition: a bare name, or a table with thresholds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DetectorCond {
    Name(String),
    Detailed {
        name: String,
        #[serde(default = "one")]
        min_count: usize,
        #[serde(default)]
        min_confidence: Option<Confidence>,
    },
}

fn one() -> usize {
    1
}

impl DetectorCond {
    pub fn name(&self) -> &str {
        match self {
            DetectorCond::Name(n) | DetectorCond::Detailed { name: n, .. } => n,
        }
    }
    fn min_count(&self) -> usize {
        match self {
            DetectorCond::Name(_) => 1,
            DetectorCond::Detailed { min_count, .. } => *min_count,
        }
    }
    fn min_confidence(&self, default: Confidence) -> Confidence {
        match self {
            DetectorCond::Detailed {
                min_confidence: Some(c),
                ..
            } => *c,
            _ => default,
        }
    }
}

/// Match conditions of a rule; all given conditions must hold (lists match if any
/// entry matches). An empty `match` matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Match {
    /// Authenticated identity patterns (glob, `*` = anyone authenticated).
    #[serde(default)]
    pub auth: Vec<String>,
    /// `true`: only unauthenticated sessions; `false`: only authenticated ones.
    #[serde(default)]
    pub unauthenticated: Option<bool>,
    #[serde(default)]
    pub listener: Vec<String>,
    /// Envelope sender patterns: `user@domain` globs, or a bare domain glob.
    #[serde(default)]
    pub sender: Vec<String>,
    /// Recipient patterns: `user@domain` globs, or a bare domain glob.
    #[serde(default)]
    pub recipient: Vec<String>,
    /// `true`: recipient outside `internal_domains`; `false`: inside.
    #[serde(default)]
    pub external: Option<bool>,
    /// Any of these detectors at or above its thresholds.
    #[serde(default)]
    pub detectors: Vec<DetectorCond>,
    /// Default minimum confidence for `detectors` entries (default: medium).
    #[serde(default)]
    pub min_confidence: Option<Confidence>,
    /// The HIPAA co-occurrence rule fired (or did not).
    #[serde(default)]
    pub hipaa_phi: Option<bool>,
    /// A qualifying finding is (or is not) in the subject line.
    #[serde(default)]
    pub in_subject: Option<bool>,
    /// Attachment content type globs, e.g. `application/pdf`, `image/*`.
    #[serde(default)]
    pub attachment_type: Vec<String>,
    /// Attachment file name globs, e.g. `*.xlsx`.
    #[serde(default)]
    pub attachment_name: Vec<String>,
    #[serde(default)]
    pub min_size: Option<u64>,
    #[serde(default)]
    pub max_size: Option<u64>,
    /// The sender asked for REQUIRETLS (or did not).
    #[serde(default)]
    pub requiretls: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub name: String,
    #[serde(default, rename = "match")]
    pub when: Match,
    #[serde(default)]
    pub action: Action,
    #[serde(default)]
    pub tag: bool,
    #[serde(default)]
    pub require_tls: Option<TlsLevel>,
    #[serde(default)]
    pub redact_subject: Option<String>,
}

impl Rule {
    fn spec(&self) -> ActionSpec {
        ActionSpec {
            action: self.action,
            tag: self.tag,
            require_tls: self.require_tls,
            redact_subject: self.redact_subject.clone(),
        }
    }
}

/// The file as written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    #[serde(default)]
    pub dlp: DlpConfig,
    #[serde(default)]
    pub internal_domains: Vec<String>,
    #[serde(default)]
    pub recipients: RecipientLimits,
    #[serde(default)]
    pub default: ActionSpec,
    #[serde(default, rename = "rule")]
    pub rules: Vec<Rule>,
    /// Refuse (550 5.7.1 at the end of DATA) mail whose From domain no `[[dkim]]` key
    /// signs, so phigate never relays unaligned mail for a domain it does not sign.
    #[serde(default)]
    pub require_dkim: bool,
}

/// A loaded, validated policy with its compiled scanner.
pub struct Policy {
    pub file: PolicyFile,
    scanner: Scanner,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy").field("file", &self.file).finish()
    }
}

impl Policy {
    /// The scanner built from `[dlp]`.
    /// The first rule (or `[default]`) whose action is `portal`, by name.
    pub fn uses_portal(&self) -> Option<String> {
        if self.file.default.action == Action::Portal {
            return Some("default".into());
        }
        (self.file.rules.iter())
            .find(|r| r.spec().action == Action::Portal)
            .map(|r| r.name.clone())
    }

    pub fn scanner(&self) -> &Scanner {
        &self.scanner
    }

    pub fn mode(&self) -> Mode {
        self.file.dlp.mode
    }

    /// A policy that accepts everything (no file configured).
    pub fn permissive() -> Result<Policy, PolicyError> {
        Policy::from_toml_str("", "<built-in>")
    }
}

/// The policy in force, replaced whole on SIGHUP: shared by the pipeline and the
/// portal (whose notifications pass the same DLP scanner).
#[derive(Debug)]
pub struct ActivePolicy(std::sync::RwLock<std::sync::Arc<Policy>>);

impl ActivePolicy {
    pub fn new(policy: Policy) -> std::sync::Arc<ActivePolicy> {
        std::sync::Arc::new(ActivePolicy(std::sync::RwLock::new(std::sync::Arc::new(
            policy,
        ))))
    }

    pub fn get(&self) -> std::sync::Arc<Policy> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set(&self, policy: Policy) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = std::sync::Arc::new(policy);
    }
}
