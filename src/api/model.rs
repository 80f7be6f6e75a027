//! Request and response bodies of `/v1` (the JSON contract).

use crate::types::TlsLevel;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attachment {
    pub filename: String,
    pub content_type: String,
    pub content_base64: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PortalMode {
    #[default]
    Auto,
    Never,
    Always,
}

/// `POST /v1/messages`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendRequest {
    pub from: String,
    #[serde(default)]
    pub to: Vec<String>,
    #[serde(default)]
    pub cc: Vec<String>,
    #[serde(default)]
    pub bcc: Vec<String>,
    #[serde(default)]
    pub reply_to: Option<String>,
    #[serde(default)]
    pub subject: Option<String>,
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub html: Option<String>,
    #[serde(default)]
    pub attachments: Vec<Attachment>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// `auto` or a higher floor (`encrypt`, `verify`, `dane-only`).
    #[serde(default)]
    pub tls: Option<TlsLevel>,
    #[serde(default)]
    pub portal: PortalMode,
}

impl SendRequest {
    /// Envelope recipients in order: to, cc, bcc.
    pub fn recipients(&self) -> impl Iterator<Item = &String> {
        self.to.iter().chain(&self.cc).chain(&self.bcc)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RecipientResult {
    pub address: String,
    /// `queued`, `quarantined` or `rejected`.
    pub status: &'static str,
}

/// The `202` answer.
#[derive(Debug, Clone, Serialize)]
pub struct SendResponse {
    pub id: String,
    pub recipients: Vec<RecipientResult>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AttemptView {
    pub at: u64,
    pub outcome: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verification: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RecipientStatus {
    pub index: usize,
    /// Absent once the content was crypto-shredded (the address went with it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt: Option<u64>,
    pub history: Vec<AttemptView>,
}

/// `GET /v1/messages/{id}`.
#[derive(Debug, Clone, Serialize)]
pub struct StatusResponse {
    pub id: String,
    pub received_at: u64,
    pub updated_at: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub done_at: Option<u64>,
    pub recipients: Vec<RecipientStatus>,
}
