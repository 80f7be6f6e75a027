//! Request and response bodies of `/v1` (the JSON contract).

//! The types carry their OpenAPI schemas (`utoipa::ToSchema`): `GET /v1/openapi.json` is
//! generated from them, so the document cannot drift from what the handlers accept.

use crate::types::TlsLevel;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Attachment {
    pub filename: String,
    pub content_type: String,
    pub content_base64: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PortalMode {
    #[default]
    Auto,
    Never,
    Always,
}

/// `POST /v1/messages`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
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
    #[schema(value_type = Option<String>, example = "verify")]
    pub tls: Option<TlsLevel>,
    /// `always`: every recipient gets the message through the secure portal (422
    /// portal-unavailable without a `[portal]`); `auto` (default): SMTP, with the
    /// gateway's `on_tls_failure` fallback; `never`: SMTP only, a TLS failure defers
    /// and bounces (a policy `portal` rule still applies).
    #[serde(default)]
    pub portal: PortalMode,
    /// An admin template (`[api] templates_dir`) for subject, text and html.
    #[serde(default)]
    pub template: Option<String>,
    /// Values the template sees.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub template_values: serde_json::Map<String, serde_json::Value>,
}

impl SendRequest {
    /// Envelope recipients in order: to, cc, bcc.
    pub fn recipients(&self) -> impl Iterator<Item = &String> {
        self.to.iter().chain(&self.cc).chain(&self.bcc)
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RecipientResult {
    pub address: String,
    /// `queued`, `quarantined` or `rejected`.
    pub status: String,
}

/// The `202` answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SendResponse {
    pub id: String,
    pub recipients: Vec<RecipientResult>,
}

/// `POST /v1/messages/batch`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// Each one parsed on its own, so one bad message fails alone.
    #[schema(value_type = Vec<SendRequest>)]
    pub messages: Vec<Box<serde_json::value::RawValue>>,
}

/// One message of a batch that was accepted: the `202` answer with its status.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BatchSent {
    /// Always 202.
    pub status: u16,
    pub id: String,
    pub recipients: Vec<RecipientResult>,
}

/// One message of a batch: accepted, or the problem document it would have had alone.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(untagged)]
pub enum BatchResult {
    Sent(BatchSent),
    Refused(super::problem::Problem),
}

/// The batch answer (`200`): one result per message, in order.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BatchResponse {
    #[schema(value_type = Vec<BatchResult>)]
    pub results: Vec<serde_json::Value>,
}

/// One event, as `GET /v1/events` and webhooks show it (without addresses).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EventView {
    /// `evt_<cursor>`: the same event always has the same id.
    pub id: String,
    /// `message.queued`, `message.deferred`, `message.delivered`, `message.bounced`,
    /// `message.expired`, `message.quarantined`, `message.released`, `message.deleted`,
    /// `security.alert`.
    #[serde(rename = "type")]
    pub kind: String,
    /// RFC 3339.
    pub created: String,
    pub message_id: Option<String>,
    pub recipient_index: Option<u32>,
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
}

/// `GET /v1/events`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EventsPage {
    #[schema(value_type = Vec<EventView>)]
    pub events: Vec<serde_json::Value>,
    /// Pass as `after` for the next page; null when there is nothing newer yet.
    pub next: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
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

#[derive(Debug, Clone, Serialize, ToSchema)]
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
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct StatusResponse {
    pub id: String,
    pub received_at: u64,
    pub updated_at: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub done_at: Option<u64>,
    pub recipients: Vec<RecipientStatus>,
}
