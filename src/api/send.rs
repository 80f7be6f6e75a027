//! One message of a `POST /v1/messages` or a batch, from parsed request to durable:
//! template, limits, per-recipient checks, MIME, then the pipeline SMTP uses. The answer
//! is the `202` body or one `ApiError`.

use super::http::{ApiState, Conn};
use super::idempotency::Slot;
use super::keys::KeyRecord;
use super::model::{PortalMode, RecipientResult, SendRequest, SendResponse};
use super::problem::ApiError;
use crate::pipeline::{
    ApiFacts, Disposition, Handoff, PipelineError, RcptCheck, Refusal, SenderCheck, SenderVerdict,
    Submission,
};
use crate::templates::TemplateError;
use crate::types::{AuthIdentity, Envelope, MessageId, Recipient};
use std::borrow::Cow;

/// Where a keyed request records the message it sends (see `idempotency`).
pub struct Mark<'a> {
    pub slot: &'a Slot,
    pub index: usize,
}

/// Fill subject/text/html from the named template; a request that names one may not
/// also set them (which would win would be a guess).
fn apply_template<'r>(
    st: &ApiState,
    req: &'r SendRequest,
) -> Result<Cow<'r, SendRequest>, ApiError> {
    let Some(name) = &req.template else {
        if !req.template_values.is_empty() {
            return Err(ApiError::Invalid(
                "`template_values` needs `template`".into(),
            ));
        }
        return Ok(Cow::Borrowed(req));
    };
    if req.subject.is_some() || req.text.is_some() || req.html.is_some() {
        return Err(ApiError::Invalid(
            "`template` replaces `subject`, `text` and `html`: send one or the other".into(),
        ));
    }
    let templates = st.templates();
    let r = templates
        .render(name, &req.template_values, st.cfg.max_body.0 as usize)
        .map_err(|e| match e {
            TemplateError::Unknown(n) => ApiError::UnknownTemplate(n),
            TemplateError::Render { name, reason, .. } => ApiError::Template { name, reason },
            TemplateError::TooLarge { name, max } => ApiError::Template {
                name,
                reason: format!("renders more than {max} bytes"),
            },
            TemplateError::Load { .. } => ApiError::Internal,
        })?;
    let mut out = req.clone();
    out.subject = r.subject;
    out.text = r.text;
    out.html = r.html;
    Ok(Cow::Owned(out))
}

/// Limits, checks, MIME and the pipeline for one message; `size` is the request body's.
pub async fn submit(
    st: &ApiState,
    conn: &Conn,
    key: &KeyRecord,
    req: &SendRequest,
    size: usize,
    mark: Option<Mark<'_>>,
) -> Result<SendResponse, ApiError> {
    if req.portal == PortalMode::Always && !st.portal {
        return Err(ApiError::PortalUnavailable);
    }
    let req = apply_template(st, req)?;
    let identity = AuthIdentity::ApiKey(key.name.clone());
    let ident = identity.to_string();
    match st.pipeline.check_sender(&SenderCheck {
        identity: &identity,
        peer: conn.peer,
        client_cert: None,
    }) {
        // Limits and freezes are decided again, with their retry time, when the
        // message is submitted (the Refused disposition below).
        SenderVerdict::Accept | SenderVerdict::Refuse(_) => {}
        SenderVerdict::Revoked(_) => return Err(ApiError::KeyRevoked),
    }
    // The whole message against the identity's limits first, so a full window is a
    // 429 with its retry time rather than per-recipient refusals.
    let mut domains: Vec<String> = req
        .recipients()
        .filter_map(|a| a.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase()))
        .collect();
    domains.sort();
    domains.dedup();
    let usage = crate::limits::Usage {
        messages: 1,
        recipients: req.recipients().count() as u64,
        domains: &domains,
        bytes: size as u64,
    };
    if let Err(e) = st.services.limits.check(&ident, &usage, st.services.now()) {
        st.pipeline.record_limit_refusal(&ident, "api", &e);
        return Err(ApiError::RateLimited {
            limit: e.limit.as_str().to_string(),
            retry_after: e.retry_after,
        });
    }
    let id = MessageId::new();
    let built = super::mime::build(&req, st.cfg.max_recipients, &st.hostname, &id.to_string())?;
    let listener = if key.sandbox {
        crate::types::API_SANDBOX_LISTENER
    } else {
        crate::types::API_LISTENER
    };
    // Recipients go through the same per-recipient checks as SMTP RCPT TO.
    let mut accepted: Vec<Recipient> = Vec::new();
    let mut results = Vec::new();
    for addr in req.recipients() {
        let refused = st.pipeline.check_recipient(&RcptCheck {
            listener,
            auth: Some(&ident),
            mail_from: &req.from,
            recipient: addr,
            accepted_so_far: accepted.len(),
            accepted: &accepted,
        });
        if refused.is_none() {
            let mut r = Recipient::new(addr.as_str());
            match req.portal {
                PortalMode::Always => r.portal = Some("api".into()),
                PortalMode::Never => r.no_portal = true,
                PortalMode::Auto => {}
            }
            accepted.push(r);
        }
        results.push(RecipientResult {
            address: addr.clone(),
            status: if refused.is_none() {
                "queued"
            } else {
                "rejected"
            }
            .into(),
        });
    }
    if accepted.is_empty() {
        return Err(ApiError::RecipientsRefused);
    }
    let now = st.services.now();
    let mut content = format!(
        "Received: from api ([{}]) by {} with HTTPS ({}) id {id};\r\n\t{}\r\n",
        conn.peer,
        st.hostname,
        conn.tls.version,
        time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc2822)
            .unwrap_or_default()
    )
    .into_bytes();
    content.extend_from_slice(&built);
    let envelope = Envelope {
        mail_from: req.from.clone(),
        params: Default::default(),
        recipients: accepted,
        helo: "api".into(),
        peer_ip: conn.peer.to_string(),
        listener: listener.to_string(),
        auth: Some(identity),
        tls: Some(conn.tls.clone()),
        received_at: now,
        tls_floor: req.tls.filter(|t| *t != crate::types::TlsLevel::Auto),
        session: String::new(),
    };
    // A keyed request's marker commits with the message: after a crash its retry knows
    // this one landed.
    let statuses: Vec<&str> = results.iter().map(|r| r.status.as_str()).collect();
    let ops = mark
        .map(|m| vec![m.slot.marker(m.index, &id.to_string(), &statuses, now)])
        .unwrap_or_default();
    let sub = Submission {
        id,
        envelope,
        content,
        api: Some(ApiFacts {
            key: key.name.clone(),
            metadata: req.metadata.clone(),
            ops,
        }),
    };
    let quarantined = match st.pipeline.submit_disposition(sub).await {
        Ok(Disposition::Queued { .. }) => false,
        Ok(Disposition::Quarantined { .. }) => true,
        Ok(Disposition::Rejected { rule, .. }) => return Err(ApiError::Policy { rule }),
        Ok(Disposition::Refused(Refusal::Limit(e))) => {
            return Err(ApiError::RateLimited {
                limit: e.limit.as_str().to_string(),
                retry_after: e.retry_after,
            })
        }
        Ok(Disposition::Refused(Refusal::Frozen)) => return Err(ApiError::Suspended),
        Ok(Disposition::Refused(Refusal::Revoked)) => return Err(ApiError::KeyRevoked),
        Err(PipelineError::StorageFull { .. } | PipelineError::Spool(_)) => {
            return Err(ApiError::StorageFull)
        }
        Err(_) => return Err(ApiError::Internal),
    };
    if quarantined {
        for r in results.iter_mut().filter(|r| r.status == "queued") {
            r.status = "quarantined".into();
        }
    }
    Ok(SendResponse {
        id: id.to_string(),
        recipients: results,
    })
}
