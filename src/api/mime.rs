//! A request becomes a MIME message (mail-builder), checked first: addresses and header
//! names/values without CR/LF, reserved headers left to phigate, attachments decoded.

use super::model::SendRequest;
use super::problem::ApiError;
use base64::Engine;
use mail_builder::headers::raw::Raw;
use mail_builder::MessageBuilder;

/// Headers a caller may not set: the builder writes them from the fields.
const RESERVED: &[&str] = &[
    "from",
    "to",
    "cc",
    "bcc",
    "reply-to",
    "subject",
    "date",
    "message-id",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "received",
    "sender",
    "return-path",
];

/// Loose address check: one `@`, no spaces, controls or brackets (the pipeline and the
/// next hop check the rest).
pub fn valid_address(a: &str) -> bool {
    a.len() <= 254
        && a.split('@').count() == 2
        && !a.starts_with('@')
        && !a.ends_with('@')
        && !a
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || "<>,;\"".contains(c))
}

/// Validate `req` and write its message; `hostname` names the Message-ID's domain.
pub fn build(
    req: &SendRequest,
    max_recipients: usize,
    hostname: &str,
    id: &str,
) -> Result<Vec<u8>, ApiError> {
    if !valid_address(&req.from) {
        return Err(ApiError::Invalid("`from` is not an address".into()));
    }
    let n = req.recipients().count();
    if n == 0 {
        return Err(ApiError::Invalid("no recipient in to, cc or bcc".into()));
    }
    if n > max_recipients {
        return Err(ApiError::TooManyRecipients {
            max: max_recipients,
        });
    }
    if let Some((i, _)) = req
        .recipients()
        .enumerate()
        .find(|(_, a)| !valid_address(a))
    {
        return Err(ApiError::Invalid(format!(
            "recipient {i} is not an address"
        )));
    }
    if req.reply_to.as_deref().is_some_and(|a| !valid_address(a)) {
        return Err(ApiError::Invalid("`reply_to` is not an address".into()));
    }
    if req.text.is_none() && req.html.is_none() {
        return Err(ApiError::Invalid("needs `text` or `html`".into()));
    }
    if req.metadata.len() > 20
        || req
            .metadata
            .iter()
            .any(|(k, v)| k.len() > 40 || v.len() > 500)
    {
        return Err(ApiError::Invalid(
            "`metadata`: at most 20 keys of 40 bytes, values of 500".into(),
        ));
    }
    let mut mb = MessageBuilder::new()
        .from(req.from.as_str())
        .message_id(format!("{id}@{hostname}"));
    if !req.to.is_empty() {
        mb = mb.to(req.to.iter().map(String::as_str).collect::<Vec<_>>());
    }
    if !req.cc.is_empty() {
        mb = mb.cc(req.cc.iter().map(String::as_str).collect::<Vec<_>>());
    }
    // Bcc stays in the envelope only.
    if let Some(r) = &req.reply_to {
        mb = mb.reply_to(r.as_str());
    }
    if let Some(s) = &req.subject {
        if s.contains(['\r', '\n']) {
            return Err(ApiError::Invalid("`subject` has a line break".into()));
        }
        mb = mb.subject(s.as_str());
    }
    for (i, (name, value)) in req.headers.iter().enumerate() {
        let lower = name.to_ascii_lowercase();
        let token = !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic() && b != b':');
        if !token
            || RESERVED.contains(&lower.as_str())
            || lower.starts_with("content-")
            || lower.starts_with("x-phigate")
            || value.contains(['\r', '\n'])
        {
            return Err(ApiError::Invalid(format!(
                "header {i}: reserved name or line break"
            )));
        }
        mb = mb.header(name.as_str(), Raw::new(value.as_str()));
    }
    if let Some(t) = &req.text {
        mb = mb.text_body(t.as_str());
    }
    if let Some(h) = &req.html {
        mb = mb.html_body(h.as_str());
    }
    for (index, a) in req.attachments.iter().enumerate() {
        let data = base64::engine::general_purpose::STANDARD
            .decode(a.content_base64.as_bytes())
            .map_err(|_| ApiError::BadBase64 { index })?;
        if a.content_type.contains(['\r', '\n']) || a.filename.contains(['\r', '\n']) {
            return Err(ApiError::Invalid(format!("attachment {index}: line break")));
        }
        mb = mb.attachment(a.content_type.clone(), a.filename.clone(), data);
    }
    mb.write_to_vec().map_err(|_| ApiError::Internal)
}
