//! The HTTPS listener and the `/v1` handlers. Handlers are thin: authenticate, parse,
//! hand the message to the same pipeline SMTP uses, and map the outcome once to a status
//! code or a problem document.

use super::idempotency::{request_hash, Begin, Idempotency, Outcome};
use super::keys::{KeyCheck, KeyRecord, KeyStore, Scope};
use super::model::{BatchRequest, BatchResponse, BatchSent, SendRequest, SendResponse};
use super::problem::{problem_response, ApiError, Problem};
use super::send::{submit, Mark};
use crate::config::ApiConfig;
use crate::pipeline::Pipeline;
use crate::services::Services;
use crate::templates::Templates;
use crate::tls::server::ServerTls;
use crate::types::Status;
use axum::body::Body;
use axum::extract::{Extension, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How often expired Idempotency-Key records are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(600);

/// What every handler shares.
pub struct ApiState {
    pub services: Services,
    pub pipeline: Arc<Pipeline>,
    pub keys: KeyStore,
    pub cfg: ApiConfig,
    pub hostname: String,
    /// Replaced whole on SIGHUP (`reload_templates`).
    pub templates: RwLock<Arc<Templates>>,
    pub idempotency: Idempotency,
    /// A `[portal]` is configured (`"portal": "always"` is accepted).
    pub portal: bool,
}

impl ApiState {
    pub fn templates(&self) -> Arc<Templates> {
        match self.templates.read() {
            Ok(t) => t.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Load `[api] templates_dir` again (SIGHUP); a broken directory keeps the old set.
    pub fn reload_templates(&self) -> Result<(), crate::templates::TemplateError> {
        let Some(dir) = &self.cfg.templates_dir else {
            return Ok(());
        };
        let t = Arc::new(Templates::load(dir)?);
        match self.templates.write() {
            Ok(mut g) => *g = t,
            Err(p) => *p.into_inner() = t,
        }
        Ok(())
    }
}

pub use crate::https::Conn;

pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/v1/messages", post(send))
        .route("/v1/messages/batch", post(batch))
        .route("/v1/messages/{id}", get(super::status::status))
        .route("/v1/events", get(super::status::events))
        .route("/v1/openapi.json", get(openapi))
        .fallback(|| async { ApiError::NotFound.into_response() })
        .with_state(state)
}

/// The contract, generated from the handlers and types (no key needed).
async fn openapi() -> Response {
    Json(super::openapi::document()).into_response()
}

/// Bind `[api] listen` (so a bad address fails the start) and serve until `shutdown`.
pub async fn start(
    state: Arc<ApiState>,
    tls: ServerTls,
    shutdown: CancellationToken,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let tcp = TcpListener::bind(state.cfg.listen).await?;
    info!(addr = %state.cfg.listen, "api listening");
    let idem = state.idempotency.clone();
    let clock = state.services.clone();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(SWEEP_EVERY) => {}
                _ = stop.cancelled() => return,
            }
            if let Err(e) = idem.sweep(clock.now(), 10_000) {
                warn!(error = %e, "idempotency sweep failed");
            }
        }
    });
    Ok(crate::https::serve(
        tcp,
        tls,
        router(state),
        shutdown,
        "api",
    ))
}

/// The caller's key, checked for `scope`.
pub fn authorize(st: &ApiState, headers: &HeaderMap, scope: Scope) -> Result<KeyRecord, ApiError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(ApiError::BadKey)?;
    let rec = match st.keys.check(token.trim(), st.services.now()) {
        Ok(KeyCheck::Valid(r)) => r,
        Ok(KeyCheck::Unknown) => return Err(ApiError::BadKey),
        Ok(KeyCheck::Revoked) => return Err(ApiError::KeyRevoked),
        Ok(KeyCheck::Expired) => return Err(ApiError::KeyExpired),
        Err(_) => return Err(ApiError::Internal),
    };
    if !rec.scopes.contains(&scope) {
        return Err(ApiError::WrongScope(match scope {
            Scope::Send => "send",
            Scope::Read => "read",
        }));
    }
    Ok(rec)
}

async fn read_body(body: Body, max: u64) -> Result<axum::body::Bytes, ApiError> {
    axum::body::to_bytes(body, max as usize)
        .await
        .map_err(|_| ApiError::TooLarge { max })
}

/// Send one message.
#[utoipa::path(post, path = "/v1/messages", tag = "messages",
    request_body = SendRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Same key and body: the first answer again, for 24 h")),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "Durable: it will be delivered or bounced", body = SendResponse),
        (status = 400, description = "Malformed request", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Bad, revoked or expired key", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The key lacks the send scope", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Idempotency-Key reused or in progress", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over [api] max_body", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Refused by policy, every recipient refused, or a template error", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Sending limit; see Retry-After", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Spool full or sending suspended; see Retry-After", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn send(
    State(st): State<Arc<ApiState>>,
    Extension(conn): Extension<Conn>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    post_messages(&st, &conn, &headers, body, false).await
}

/// Send up to `[api] max_batch` messages; one refusal does not fail the others.
#[utoipa::path(post, path = "/v1/messages/batch", tag = "messages",
    request_body = BatchRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Same key and body: the first answer again, for 24 h")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "One result per message, in order", body = BatchResponse),
        (status = 400, description = "Malformed batch", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Bad, revoked or expired key", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The key lacks the send scope", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Idempotency-Key reused or in progress", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over [api] max_body", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn batch(
    State(st): State<Arc<ApiState>>,
    Extension(conn): Extension<Conn>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    post_messages(&st, &conn, &headers, body, true).await
}

fn parse_one(raw: &[u8]) -> Result<SendRequest, ApiError> {
    serde_json::from_slice(raw).map_err(|e| ApiError::from_json(&e))
}

/// One message of a request: its size in bytes and what parsing it gave.
type Parsed = (usize, Result<SendRequest, ApiError>);

/// The messages of a request: one, or each of a batch parsed on its own.
fn parse_messages(st: &ApiState, bytes: &[u8], batch: bool) -> Result<Vec<Parsed>, ApiError> {
    if !batch {
        return Ok(vec![(bytes.len(), parse_one(bytes))]);
    }
    let b: BatchRequest = serde_json::from_slice(bytes).map_err(|e| ApiError::from_json(&e))?;
    let max = st.cfg.max_batch.min(crate::config::MAX_BATCH_LIMIT);
    if b.messages.len() > max {
        return Err(ApiError::BatchTooLarge { max });
    }
    if b.messages.is_empty() {
        return Err(ApiError::Invalid("`messages` is empty".into()));
    }
    Ok(b.messages
        .iter()
        .map(|m| (m.get().len(), parse_one(m.get().as_bytes())))
        .collect())
}

/// POST of one message or a batch: key, body, Idempotency-Key, then each message.
async fn post_messages(
    st: &ApiState,
    conn: &Conn,
    headers: &HeaderMap,
    body: Body,
    batch: bool,
) -> Response {
    let key = match authorize(st, headers, Scope::Send) {
        Ok(k) => k,
        Err(e) => return e.into_response(),
    };
    let bytes = match read_body(body, st.cfg.max_body.0).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let (sizes, reqs): (Vec<usize>, Vec<_>) = match parse_messages(st, &bytes, batch) {
        Ok(r) => r.into_iter().unzip(),
        Err(e) => return e.into_response(),
    };
    let idem_key = match headers.get("idempotency-key").map(|v| v.to_str()) {
        None => None,
        Some(Ok(k)) if super::idempotency::valid_key(k) => Some(k),
        Some(_) => return ApiError::BadIdempotencyKey.into_response(),
    };
    let route = if batch {
        "/v1/messages/batch"
    } else {
        "/v1/messages"
    };
    let (slot, done) = match idem_key {
        None => (None, Default::default()),
        Some(k) => {
            let hash = request_hash(route, &bytes);
            match st.idempotency.begin(&key.owner, k, hash, st.services.now()) {
                Ok(Begin::Replay(outcomes)) => {
                    let mut r = answer(&reqs, &outcomes, batch);
                    r.headers_mut()
                        .insert("idempotent-replayed", HeaderValue::from_static("true"));
                    return r;
                }
                Ok(Begin::Run { slot, done }) => (Some(slot), done),
                Err(e) => return e.into_response(),
            }
        }
    };
    let mut outcomes = Vec::with_capacity(reqs.len());
    for (index, req) in reqs.iter().enumerate() {
        let outcome = if let Some((id, statuses)) = done.get(&index) {
            // Sent by an earlier attempt with this key: report it, do not send again.
            Outcome::Sent {
                id: id.clone(),
                statuses: current_statuses(st, id, statuses),
            }
        } else {
            let res = match req {
                Ok(req) => {
                    let mark = slot.as_ref().map(|slot| Mark { slot, index });
                    submit(st, conn, &key, req, sizes[index], mark).await
                }
                Err(e) => Err(e.clone()),
            };
            match res {
                Ok(r) => Outcome::Sent {
                    id: r.id,
                    statuses: r.recipients.into_iter().map(|r| r.status).collect(),
                },
                Err(e) => Outcome::Problem {
                    status: e.status().as_u16(),
                    problem: serde_json::to_value(e.problem()).unwrap_or_default(),
                },
            }
        };
        outcomes.push(outcome);
    }
    if let Some(slot) = slot {
        if let Err(e) = st.idempotency.finish(slot, &outcomes, st.services.now()) {
            // The messages are durable; only the replay record is missing (a retry
            // still finds their markers).
            warn!(error = %e, "idempotency answer not stored");
        }
    }
    answer(&reqs, &outcomes, batch)
}

/// The statuses an earlier attempt recorded, with a quarantine since then shown.
fn current_statuses(st: &ApiState, id: &str, recorded: &[String]) -> Vec<String> {
    let held = id
        .parse()
        .ok()
        .and_then(|id| st.services.spool.recipients(&id).ok())
        .is_some_and(|rs| {
            rs.iter()
                .any(|r| matches!(r.status, Status::Quarantined { .. }))
        });
    recorded
        .iter()
        .map(|s| match s.as_str() {
            "queued" if held => "quarantined".to_string(),
            _ => s.clone(),
        })
        .collect()
}

/// The response for `outcomes`, addresses taken from the request itself (the same body
/// on a replay: the hash matched).
fn answer(reqs: &[Result<SendRequest, ApiError>], outcomes: &[Outcome], batch: bool) -> Response {
    let sent = |req: Option<&SendRequest>, id: &str, statuses: &[String]| SendResponse {
        id: id.to_string(),
        recipients: statuses
            .iter()
            .zip(req.into_iter().flat_map(|r| r.recipients()))
            .map(|(s, a)| super::model::RecipientResult {
                address: a.clone(),
                status: s.clone(),
            })
            .collect(),
    };
    if !batch {
        return match outcomes.first() {
            Some(Outcome::Sent { id, statuses }) => {
                let req = reqs.first().and_then(|r| r.as_ref().ok());
                (StatusCode::ACCEPTED, Json(sent(req, id, statuses))).into_response()
            }
            Some(Outcome::Problem { problem, .. }) => problem_response(problem),
            None => ApiError::Internal.into_response(),
        };
    }
    let results = outcomes
        .iter()
        .enumerate()
        .map(|(i, o)| match o {
            Outcome::Sent { id, statuses } => {
                let r = sent(reqs.get(i).and_then(|r| r.as_ref().ok()), id, statuses);
                serde_json::to_value(BatchSent {
                    status: 202,
                    id: r.id,
                    recipients: r.recipients,
                })
                .unwrap_or_default()
            }
            Outcome::Problem { problem, .. } => problem.clone(),
        })
        .collect();
    Json(BatchResponse { results }).into_response()
}
/// The API's TLS settings: its own certificate if `[api]` names one, else `[tls]`'s;
/// never a client-certificate request (keys authenticate API callers).
pub fn tls_config(tls: &crate::config::TlsConfig, api: &ApiConfig) -> crate::config::TlsConfig {
    crate::https::tls_config(tls, &api.cert, &api.key)
}

/// Sandbox convenience (`sandbox_key_file`): make sure the file holds a working
/// `send,read` sandbox key, creating (or replacing a lost) key named `sandbox`.
pub fn ensure_sandbox_key(
    keys: &KeyStore,
    path: &std::path::Path,
    now: u64,
) -> std::io::Result<()> {
    if let Ok(k) = std::fs::read_to_string(path) {
        if matches!(keys.check(k.trim(), now), Ok(KeyCheck::Valid(_))) {
            return Ok(());
        }
    }
    let err = |e: super::keys::KeyError| std::io::Error::other(e.to_string());
    if matches!(keys.get("sandbox"), Ok(Some(r)) if r.revoked_at.is_none()) {
        keys.revoke("sandbox", now).map_err(err)?;
    }
    let new = super::keys::NewKey {
        name: "sandbox".into(),
        owner: None,
        scopes: vec![Scope::Send, Scope::Read],
        sandbox: true,
        expires_in: None,
    };
    let (key, _) = keys.create(&new, now).map_err(err)?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    writeln!(f, "{key}")?;
    f.sync_all()
}
