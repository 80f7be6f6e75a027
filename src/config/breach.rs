//! `[limits]`, `[[limits.identity]]` and `[alerts]`: the breach-prevention settings.
//! Every limit is optional (absent = no limit); an identity override inherits every
//! value it does not set from `[limits]`.

use super::values::{ByteSize, Seconds};
use serde::Deserialize;

/// The numbers one identity is held to. `None` = unlimited.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LimitValues {
    pub messages_per_minute: Option<u64>,
    pub messages_per_hour: Option<u64>,
    pub messages_per_day: Option<u64>,
    pub recipients_per_minute: Option<u64>,
    pub recipients_per_hour: Option<u64>,
    pub recipients_per_day: Option<u64>,
    /// Distinct recipient domains per clock hour.
    pub domains_per_hour: Option<u64>,
    pub bytes_per_day: Option<ByteSize>,
}

impl LimitValues {
    /// `self` with every unset value taken from `base`.
    pub fn or(&self, base: &LimitValues) -> LimitValues {
        LimitValues {
            messages_per_minute: self.messages_per_minute.or(base.messages_per_minute),
            messages_per_hour: self.messages_per_hour.or(base.messages_per_hour),
            messages_per_day: self.messages_per_day.or(base.messages_per_day),
            recipients_per_minute: self.recipients_per_minute.or(base.recipients_per_minute),
            recipients_per_hour: self.recipients_per_hour.or(base.recipients_per_hour),
            recipients_per_day: self.recipients_per_day.or(base.recipients_per_day),
            domains_per_hour: self.domains_per_hour.or(base.domains_per_hour),
            bytes_per_day: self.bytes_per_day.or(base.bytes_per_day),
        }
    }
}

/// One `[[limits.identity]]` override.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityLimits {
    /// The identity string policy rules use (`password:ehr`, `client-cert:CN`,
    /// `ip:192.0.2.7`); `*` and `?` globs allowed. The first matching entry wins.
    pub name: String,
    pub messages_per_minute: Option<u64>,
    pub messages_per_hour: Option<u64>,
    pub messages_per_day: Option<u64>,
    pub recipients_per_minute: Option<u64>,
    pub recipients_per_hour: Option<u64>,
    pub recipients_per_day: Option<u64>,
    pub domains_per_hour: Option<u64>,
    pub bytes_per_day: Option<ByteSize>,
}

impl IdentityLimits {
    pub fn values(&self) -> LimitValues {
        LimitValues {
            messages_per_minute: self.messages_per_minute,
            messages_per_hour: self.messages_per_hour,
            messages_per_day: self.messages_per_day,
            recipients_per_minute: self.recipients_per_minute,
            recipients_per_hour: self.recipients_per_hour,
            recipients_per_day: self.recipients_per_day,
            domains_per_hour: self.domains_per_hour,
            bytes_per_day: self.bytes_per_day,
        }
    }
}

/// `[limits]`: defaults for every identity plus overrides.
// Written out rather than `#[serde(flatten)]`: serde cannot combine flatten with
// `deny_unknown_fields`, and a misspelt limit must be an error, not "unlimited".
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    pub messages_per_minute: Option<u64>,
    pub messages_per_hour: Option<u64>,
    pub messages_per_day: Option<u64>,
    pub recipients_per_minute: Option<u64>,
    pub recipients_per_hour: Option<u64>,
    pub recipients_per_day: Option<u64>,
    pub domains_per_hour: Option<u64>,
    pub bytes_per_day: Option<ByteSize>,
    #[serde(default)]
    pub identity: Vec<IdentityLimits>,
}

impl LimitsConfig {
    pub fn defaults(&self) -> LimitValues {
        LimitValues {
            messages_per_minute: self.messages_per_minute,
            messages_per_hour: self.messages_per_hour,
            messages_per_day: self.messages_per_day,
            recipients_per_minute: self.recipients_per_minute,
            recipients_per_hour: self.recipients_per_hour,
            recipients_per_day: self.recipients_per_day,
            domains_per_hour: self.domains_per_hour,
            bytes_per_day: self.bytes_per_day,
        }
    }
}

/// `[alerts]`: anomaly detection. Each detector is off when its threshold is absent.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    /// Alert when an identity's messages this hour exceed `volume_factor` times its own
    /// mean of the previous (up to 24) hours, and at least `volume_min_messages`.
    pub volume_factor: Option<f64>,
    #[serde(default = "default_volume_min")]
    pub volume_min_messages: u64,
    /// Alert when an identity's DLP findings within `dlp_window` reach this many.
    pub dlp_findings: Option<u64>,
    #[serde(default = "default_window")]
    pub dlp_window: Seconds,
    /// Alert when one source IP fails AUTH this many times within `auth_window`, and
    /// on every lockout.
    pub auth_failures: Option<u64>,
    #[serde(default = "default_window")]
    pub auth_window: Seconds,
    /// Alert the first time an identity that has sent before sends from a new IP.
    #[serde(default)]
    pub new_source_ip: bool,
    /// Alert on every delivery attempt whose TLS verification failed.
    #[serde(default = "yes")]
    pub tls_verification_failures: bool,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            volume_factor: None,
            volume_min_messages: default_volume_min(),
            dlp_findings: None,
            dlp_window: default_window(),
            auth_failures: None,
            auth_window: default_window(),
            new_source_ip: false,
            tls_verification_failures: true,
        }
    }
}

fn default_volume_min() -> u64 {
    50
}

fn default_window() -> Seconds {
    Seconds(600)
}

fn yes() -> bool {
    true
}
