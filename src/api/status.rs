//! `GET /v1/messages/{id}` and `GET /v1/events`: what became of a key owner's messages.

use super::http::{authorize, ApiState};
use super::keys::{KeyRecord, Scope};
use super::model::{AttemptView, EventsPage, RecipientStatus, StatusResponse};
use super::problem::{ApiError, Problem};
use crate::types::{AuthIdentity, Envelope, MessageId, Status};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use std::sync::Arc;

/// Events per `GET /v1/events` page at most (and by default).
const MAX_PAGE: usize = 500;
const DEFAULT_PAGE: usize = 100;

/// Per-recipient state, attempts with their TLS facts, timestamps.
#[utoipa::path(get, path = "/v1/messages/{id}", tag = "messages",
    params(("id" = String, Path, description = "The id from the 202 answer")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Where the message is", body = StatusResponse),
        (status = 401, description = "Bad, revoked or expired key", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The key lacks the read scope", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such message for this key's owner", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn status(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    match status_inner(&st, &headers, &id) {
        Ok(r) => Json(r).into_response(),
        Err(e) => e.into_response(),
    }
}

/// Does `key` belong to the owner of the key that sent `env`?
fn same_owner(st: &ApiState, key: &KeyRecord, env: &Envelope) -> bool {
    let Some(AuthIdentity::ApiKey(sender)) = &env.auth else {
        return false;
    };
    owner_matches(st, key, sender)
}

fn owner_matches(st: &ApiState, key: &KeyRecord, sender: &str) -> bool {
    sender == key.name || matches!(st.keys.get(sender), Ok(Some(k)) if k.owner == key.owner)
}

/// Status of a message whose content is gone, from its events (no addresses left).
fn status_from_events(
    st: &ApiState,
    key: &KeyRecord,
    id: MessageId,
) -> Result<StatusResponse, ApiError> {
    let events = st
        .services
        .events
        .for_message(&id)
        .map_err(|_| ApiError::Internal)?;
    let sender = events
        .iter()
        .find_map(|e| e.owner.as_deref()?.strip_prefix("api:"))
        .ok_or(ApiError::NotFound)?;
    if !owner_matches(st, key, sender) {
        return Err(ApiError::NotFound);
    }
    let secs = |ms: u64| ms / 1000;
    let received = events.first().map(|e| secs(e.created_ms)).unwrap_or(0);
    let updated = events.last().map(|e| secs(e.created_ms)).unwrap_or(0);
    let mut recipients: Vec<RecipientStatus> = Vec::new();
    for e in &events {
        let Some(index) = e.recipient_index.map(|i| i as usize) else {
            continue;
        };
        while recipients.len() <= index {
            recipients.push(RecipientStatus {
                index: recipients.len(),
                address: None,
                state: "queued".into(),
                reason: None,
                attempts: 0,
                next_attempt: None,
                history: Vec::new(),
            });
        }
        let r = &mut recipients[index];
        r.state = e
            .kind
            .strip_prefix("message.")
            .unwrap_or(&e.kind)
            .to_string();
        let text = |k: &str| {
            e.data
                .get(k)
                .and_then(|v| v.as_str())
                .filter(|v| !v.is_empty())
        };
        if matches!(r.state.as_str(), "delivered" | "deferred" | "bounced") {
            r.attempts += 1;
            r.history.push(AttemptView {
                at: secs(e.created_ms),
                outcome: e
                    .data
                    .get("code")
                    .map(|c| c.to_string())
                    .unwrap_or_default(),
                host: text("mx_host").map(str::to_string),
                tls_version: text("tls_version").map(str::to_string),
                verification: text("method").map(str::to_string),
            });
        }
    }
    let done = !recipients.is_empty()
        && recipients
            .iter()
            .all(|r| matches!(r.state.as_str(), "delivered" | "bounced" | "expired"));
    Ok(StatusResponse {
        id: id.to_string(),
        received_at: received,
        updated_at: updated,
        done_at: done.then_some(updated),
        recipients,
    })
}

fn status_inner(st: &ApiState, headers: &HeaderMap, id: &str) -> Result<StatusResponse, ApiError> {
    let key = authorize(st, headers, Scope::Read)?;
    let id: MessageId = id.parse().map_err(|_| ApiError::NotFound)?;
    let spool = &st.services.spool;
    // Another owner's message answers like a missing one: no existence oracle.
    let Ok(env) = spool.envelope(&id) else {
        // Content (and with it the envelope) is shredded once every recipient is
        // final: the durable events still tell what happened.
        return status_from_events(st, &key, id);
    };
    if !same_owner(st, &key, &env) {
        return Err(ApiError::NotFound);
    }
    let states = spool.recipients(&id).map_err(|_| ApiError::NotFound)?;
    let mut updated = env.received_at;
    let mut recipients = Vec::new();
    for (index, s) in states.iter().enumerate() {
        let (state, reason, next) = match &s.status {
            Status::Queued => ("queued", None, Some(s.next_attempt)),
            Status::InFlight => ("queued", None, None),
            Status::Deferred {
                next_attempt,
                reason,
            } => ("deferred", Some(reason.clone()), Some(*next_attempt)),
            Status::Delivered { .. } => ("delivered", None, None),
            Status::Bounced { reason } => ("bounced", Some(reason.clone()), None),
            Status::Expired { reason } => ("expired", Some(reason.clone()), None),
            Status::Quarantined { rule } => ("quarantined", Some(rule.clone()), None),
            Status::Portal { expires_at, .. } => ("portal", None, Some(*expires_at)),
            Status::PickedUp { .. } => ("picked-up", None, None),
            Status::Revoked { .. } => ("revoked", None, None),
        };
        let history: Vec<AttemptView> = s
            .history
            .iter()
            .map(|a| {
                updated = updated.max(a.at);
                AttemptView {
                    at: a.at,
                    outcome: a.outcome.clone(),
                    host: a.host.clone(),
                    tls_version: a.tls_version.clone(),
                    verification: a.method.clone(),
                }
            })
            .collect();
        recipients.push(RecipientStatus {
            index,
            address: env.recipients.get(index).map(|r| r.address.clone()),
            state: state.to_string(),
            reason,
            attempts: s.attempts,
            next_attempt: next,
            history,
        });
    }
    let done = states.iter().all(|s| s.status.is_final());
    Ok(StatusResponse {
        id: id.to_string(),
        received_at: env.received_at,
        updated_at: updated,
        done_at: done.then_some(updated),
        recipients,
    })
}

/// The key's events in order; pass `next` as `after` for the following page.
#[utoipa::path(get, path = "/v1/events", tag = "events",
    params(
        ("after" = Option<String>, Query, description = "`next` of the previous page"),
        ("limit" = Option<u32>, Query, description = "1..=500, default 100"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of events", body = EventsPage),
        (status = 400, description = "Bad cursor or limit", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Bad, revoked or expired key", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The key lacks the read scope", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn events(State(st): State<Arc<ApiState>>, headers: HeaderMap, uri: Uri) -> Response {
    match events_inner(&st, &headers, &uri) {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

fn events_inner(st: &ApiState, headers: &HeaderMap, uri: &Uri) -> Result<EventsPage, ApiError> {
    let key = authorize(st, headers, Scope::Read)?;
    let mut after = None;
    let mut limit = DEFAULT_PAGE;
    for pair in uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "after" if !v.is_empty() => {
                after = Some(v.parse::<u64>().map_err(|_| {
                    ApiError::Invalid("`after` must be a cursor from an earlier page".into())
                })?)
            }
            "after" => {}
            "limit" => {
                limit = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_PAGE).contains(n))
                    .ok_or_else(|| ApiError::Invalid(format!("`limit` must be 1..={MAX_PAGE}")))?
            }
            _ => return Err(ApiError::Invalid("unknown query parameter".into())),
        }
    }
    let owner = AuthIdentity::ApiKey(key.name.clone()).to_string();
    let page = st
        .services
        .events
        .page(after, limit, Some(&owner))
        .map_err(|_| ApiError::Internal)?;
    // Addresses stay out of event pages (as out of webhooks without include_addresses).
    let list: Vec<serde_json::Value> = page.events.iter().map(|e| e.to_json(false)).collect();
    Ok(EventsPage {
        events: list,
        next: page.next.map(|c| c.to_string()),
    })
}
