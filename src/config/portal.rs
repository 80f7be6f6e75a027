//! `[portal]`: the secure pickup portal (off when absent), and how delivery falls back
//! to it (`[delivery] on_tls_failure`, `portal_after`).

use super::values::{ByteSize, Seconds};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortalConfig {
    /// Address of the HTTPS listener (TLS only).
    pub listen: SocketAddr,
    /// The origin recipients open, e.g. `https://secure.clinic.example`; links are
    /// `{public_url}/m/{token}`.
    pub public_url: String,
    /// Certificate and key; default to `[tls]` cert and key, like the listeners.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// The sending organisation's name, shown on pages and in notifications.
    #[serde(default = "default_organization")]
    pub organization: String,
    /// A PNG or SVG logo shown on every page.
    #[serde(default)]
    pub logo_file: Option<PathBuf>,
    /// Sender address of notifications and code mails; default `portal@{hostname}`.
    #[serde(default)]
    pub from: Option<String>,
    /// MiniJinja text template of the notification (values: organization, link,
    /// expires); the built-in one when absent.
    #[serde(default)]
    pub notification_template: Option<PathBuf>,
    /// How long a link works.
    #[serde(default = "default_link_ttl")]
    pub link_ttl: Seconds,
    /// How long a one-time code works.
    #[serde(default = "default_code_ttl")]
    pub code_ttl: Seconds,
    /// Wrong codes before the link is locked for `lockout`.
    #[serde(default = "default_max_code_attempts")]
    pub max_code_attempts: u32,
    #[serde(default = "default_lockout")]
    pub lockout: Seconds,
    /// A session ends after this long without a request.
    #[serde(default = "default_session_idle")]
    pub session_idle: Seconds,
    /// Notifications (never message content) may go without TLS when the next hop
    /// offers none.
    #[serde(default = "default_true")]
    pub notify_without_tls: bool,
    /// Largest form body (a reply included).
    #[serde(default = "default_max_form")]
    pub max_form: ByteSize,
    /// Requests per minute from one client IP before 429.
    #[serde(default = "default_rate")]
    pub requests_per_minute: u32,
    /// Code mails per link per hour.
    #[serde(default = "default_codes_per_hour")]
    pub codes_per_hour: u32,
}

/// `[delivery] on_tls_failure`: what happens when no next hop meets the recipient's TLS
/// level.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnTlsFailure {
    /// Keep retrying, bounce at expiry (a REQUIRETLS message fails with 5.7.30).
    #[default]
    Defer,
    /// After `portal_after` of failed verified-TLS attempts, hand over to the portal.
    Portal,
}

fn default_organization() -> String {
    "phigate".into()
}
fn default_link_ttl() -> Seconds {
    Seconds(30 * 86400)
}
fn default_code_ttl() -> Seconds {
    Seconds(600)
}
fn default_max_code_attempts() -> u32 {
    5
}
fn default_lockout() -> Seconds {
    Seconds(600)
}
fn default_session_idle() -> Seconds {
    Seconds(900)
}
fn default_true() -> bool {
    true
}
fn default_max_form() -> ByteSize {
    ByteSize(64 * 1024)
}
fn default_rate() -> u32 {
    120
}
fn default_codes_per_hour() -> u32 {
    5
}
