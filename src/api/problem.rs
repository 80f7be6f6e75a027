//! Every API error, mapped once to an RFC 9457 `application/problem+json` document with a
//! stable `type`. Details name fields, limits and rules, never submitted content or
//! addresses.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// Prefix of every problem `type` (stable; the suffixes are listed in the README).
pub const TYPE_BASE: &str = "urn:phigate:problem:";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("the body is not valid JSON (line {line}, column {column})")]
    BadJson { line: usize, column: usize },
    #[error("the body has a field this endpoint does not know (line {line}, column {column})")]
    UnknownField { line: usize, column: usize },
    #[error("the request is invalid: {0}")]
    Invalid(String),
    #[error("the body is larger than the {max} bytes allowed")]
    TooLarge { max: u64 },
    #[error("attachment {index}: content_base64 is not valid base64")]
    BadBase64 { index: usize },
    #[error("at most {max} recipients per message")]
    TooManyRecipients { max: usize },
    #[error("missing, malformed or unknown API key")]
    BadKey,
    #[error("the API key was revoked")]
    KeyRevoked,
    #[error("the API key has expired")]
    KeyExpired,
    #[error("the API key lacks the `{0}` scope")]
    WrongScope(&'static str),
    #[error("no such resource")]
    NotFound,
    #[error("refused by policy rule `{rule}`")]
    Policy { rule: String },
    #[error("every recipient was refused")]
    RecipientsRefused,
    #[error("sending limit {limit} reached")]
    RateLimited { limit: String, retry_after: u64 },
    #[error("sending is suspended by the administrator")]
    Suspended,
    #[error("the spool is full, try again later")]
    StorageFull,
    #[error("the secure portal is not available on this gateway")]
    PortalUnavailable,
    #[error("at most {max} messages per batch")]
    BatchTooLarge { max: usize },
    #[error("Idempotency-Key must be 1 to 255 visible ASCII characters")]
    BadIdempotencyKey,
    #[error("this Idempotency-Key was used with a different request")]
    IdempotencyConflict,
    #[error("a request with this Idempotency-Key is still being processed")]
    IdempotencyInProgress,
    #[error("no template named `{0}`")]
    UnknownTemplate(String),
    /// The reason is the template engine's error kind and line, never a value.
    #[error("template `{name}` could not be rendered: {reason}")]
    Template { name: String, reason: String },
    #[error("internal error, try again later")]
    Internal,
}

/// RFC 9457 problem document.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// (status, type suffix, title, Retry-After seconds).
    fn parts(&self) -> (StatusCode, &'static str, &'static str, Option<u64>) {
        use StatusCode as S;
        match self {
            ApiError::BadJson { .. } => (S::BAD_REQUEST, "bad-json", "Malformed JSON", None),
            ApiError::UnknownField { .. } => {
                (S::BAD_REQUEST, "unknown-field", "Unknown field", None)
            }
            ApiError::Invalid(_) => (S::BAD_REQUEST, "invalid-request", "Invalid request", None),
            ApiError::TooLarge { .. } => (
                S::PAYLOAD_TOO_LARGE,
                "body-too-large",
                "Body too large",
                None,
            ),
            ApiError::BadBase64 { .. } => (S::BAD_REQUEST, "bad-base64", "Bad base64", None),
            ApiError::TooManyRecipients { .. } => (
                S::BAD_REQUEST,
                "too-many-recipients",
                "Too many recipients",
                None,
            ),
            ApiError::BadKey => (S::UNAUTHORIZED, "bad-key", "Unauthorized", None),
            ApiError::KeyRevoked => (S::UNAUTHORIZED, "key-revoked", "Key revoked", None),
            ApiError::KeyExpired => (S::UNAUTHORIZED, "key-expired", "Key expired", None),
            ApiError::WrongScope(_) => (S::FORBIDDEN, "wrong-scope", "Forbidden", None),
            ApiError::NotFound => (S::NOT_FOUND, "not-found", "Not found", None),
            ApiError::Policy { .. } => (
                S::UNPROCESSABLE_ENTITY,
                "policy-rejected",
                "Refused by policy",
                None,
            ),
            ApiError::RecipientsRefused => (
                S::UNPROCESSABLE_ENTITY,
                "recipients-refused",
                "Recipients refused",
                None,
            ),
            ApiError::RateLimited { retry_after, .. } => (
                S::TOO_MANY_REQUESTS,
                "rate-limited",
                "Sending limit reached",
                Some(*retry_after),
            ),
            ApiError::Suspended => (
                S::SERVICE_UNAVAILABLE,
                "sending-suspended",
                "Sending suspended",
                Some(300),
            ),
            ApiError::StorageFull => (
                S::SERVICE_UNAVAILABLE,
                "storage-full",
                "Spool full",
                Some(60),
            ),
            ApiError::PortalUnavailable => (
                S::UNPROCESSABLE_ENTITY,
                "portal-unavailable",
                "Portal unavailable",
                None,
            ),
            ApiError::BatchTooLarge { .. } => {
                (S::BAD_REQUEST, "batch-too-large", "Batch too large", None)
            }
            ApiError::BadIdempotencyKey => (
                S::BAD_REQUEST,
                "bad-idempotency-key",
                "Bad Idempotency-Key",
                None,
            ),
            ApiError::IdempotencyConflict => (
                S::CONFLICT,
                "idempotency-conflict",
                "Idempotency-Key reused",
                None,
            ),
            ApiError::IdempotencyInProgress => (
                S::CONFLICT,
                "idempotency-in-progress",
                "Request in progress",
                Some(1),
            ),
            ApiError::UnknownTemplate(_) => (
                S::UNPROCESSABLE_ENTITY,
                "unknown-template",
                "Unknown template",
                None,
            ),
            ApiError::Template { .. } => (
                S::UNPROCESSABLE_ENTITY,
                "template-error",
                "Template error",
                None,
            ),
            ApiError::Internal => (
                S::SERVICE_UNAVAILABLE,
                "internal",
                "Temporarily unavailable",
                Some(30),
            ),
        }
    }

    pub fn status(&self) -> StatusCode {
        self.parts().0
    }

    pub fn problem(&self) -> Problem {
        let (status, kind, title, retry_after) = self.parts();
        Problem {
            kind: format!("{TYPE_BASE}{kind}"),
            title,
            status: status.as_u16(),
            detail: self.to_string(),
            rule: match self {
                ApiError::Policy { rule } => Some(rule.clone()),
                _ => None,
            },
            retry_after,
        }
    }

    /// A JSON parse failure: unknown fields (deny_unknown_fields) get their own type.
    pub fn from_json(e: &serde_json::Error) -> ApiError {
        let (line, column) = (e.line(), e.column());
        if e.is_data() && e.to_string().starts_with("unknown field") {
            ApiError::UnknownField { line, column }
        } else if e.is_data() {
            // Wrong type or missing field: say where, not what was sent.
            ApiError::Invalid(format!(
                "a field is missing or has the wrong type (line {line}, column {column})"
            ))
        } else {
            ApiError::BadJson { line, column }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        problem_response(&serde_json::to_value(self.problem()).unwrap_or_default())
    }
}

/// A problem document as a response (also for one replayed under an Idempotency-Key):
/// its status, Retry-After from `retry_after`, and the Bearer challenge on 401.
pub fn problem_response(p: &serde_json::Value) -> Response {
    let status = p
        .get("status")
        .and_then(|s| s.as_u64())
        .and_then(|s| StatusCode::from_u16(s as u16).ok())
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::to_vec(p).unwrap_or_default();
    let mut resp = (status, body).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    if let Some(s) = p.get("retry_after").and_then(|s| s.as_u64()) {
        if let Ok(v) = HeaderValue::from_str(&s.to_string()) {
            h.insert(header::RETRY_AFTER, v);
        }
    }
    if status == StatusCode::UNAUTHORIZED {
        h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    resp
}
