//! `[api]`: the HTTPS submission API (off when absent).

use super::values::ByteSize;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Address of the HTTPS listener.
    pub listen: SocketAddr,
    /// Certificate and key; default to `[tls]` cert and key, like the SMTP listeners.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// Largest request body (a batch included); larger bodies get 413.
    #[serde(default = "default_max_body")]
    pub max_body: ByteSize,
    /// Recipients (to + cc + bcc) per message.
    #[serde(default = "default_max_recipients")]
    pub max_recipients: usize,
    /// Messages per `POST /v1/messages/batch` (at most 500).
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// Directory of admin-managed MiniJinja templates (`NAME.subject`, `NAME.txt`,
    /// `NAME.html`); `template` in a request names one.
    #[serde(default)]
    pub templates_dir: Option<PathBuf>,
    /// Sandbox convenience: on start, create a `send,read` sandbox key named
    /// `sandbox` if none exists and write it to this file (mode 0600).
    #[serde(default)]
    pub sandbox_key_file: Option<PathBuf>,
    /// Seconds an `Idempotency-Key` answer is kept.
    #[serde(default = "default_idempotency_ttl")]
    pub idempotency_ttl: super::Seconds,
}

fn default_max_body() -> ByteSize {
    ByteSize(10 * 1024 * 1024)
}
fn default_max_recipients() -> usize {
    50
}
fn default_max_batch() -> usize {
    500
}
fn default_idempotency_ttl() -> super::Seconds {
    super::Seconds(86400)
}

/// The hard cap on `max_batch` the issue sets.
pub const MAX_BATCH_LIMIT: usize = 500;
