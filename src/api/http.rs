//! The HTTPS listener and the `/v1` handlers. Handlers are thin: authenticate, parse,
//! hand the message to the same pipeline SMTP uses, and map the outcome once to a status
//! code or a problem document.

use super::keys::{KeyCheck, KeyRecord, KeyStore, Scope};
use super::model::{
    AttemptView, RecipientResult, RecipientStatus, SendRequest, SendResponse, StatusResponse,
};
use super::problem::ApiError;
use crate::config::ApiConfig;
use crate::pipeline::{
    ApiFacts, Disposition, Handoff, Pipeline, PipelineError, RcptCheck, Refusal, SenderCheck,
    SenderVerdict, Submission,
};
use crate::services::Services;
use crate::tls::server::ServerTls;
use crate::types::{AuthIdentity, Envelope, MessageId, Recipient, Status, TlsInfo};
use axum::body::Body;
use axum::extract::{Extension, Path, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Events per `GET /v1/events` page at most (and by default).
const MAX_PAGE: usize = 500;
const DEFAULT_PAGE: usize = 100;

/// What every handler shares.
pub struct ApiState {
    pub services: Services,
    pub pipeline: Arc<Pipeline>,
    pub keys: KeyStore,
    pub cfg: ApiConfig,
    pub hostname: String,
}

/// Facts of one HTTPS connection, for the audit trail and the envelope.
#[derive(Clone)]
struct Conn {
    peer: IpAddr,
    tls: TlsInfo,
}

pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/v1/messages", post(send))
        .route("/v1/messages/{id}", get(status))
        .route("/v1/events", get(events))
        .fallback(|| async { ApiError::NotFound.into_response() })
        .with_state(state)
}

/// Bind `[api] listen` (so a bad address fails the start) and serve until `shutdown`.
pub async fn start(
    state: Arc<ApiState>,
    tls: ServerTls,
    shutdown: CancellationToken,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let tcp = TcpListener::bind(state.cfg.listen).await?;
    info!(addr = %state.cfg.listen, "api listening");
    let app = router(state);
    Ok(tokio::spawn(async move {
        loop {
            let (sock, peer) = tokio::select! {
                r = tcp.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        debug!(error = %e, "api accept failed");
                        continue;
                    }
                },
                _ = shutdown.cancelled() => return,
            };
            // The acceptor is fetched per connection so a SIGHUP certificate reload applies.
            let acceptor = tls.acceptor();
            let app = app.clone();
            let stop = shutdown.clone();
            tokio::spawn(async move { serve_conn(sock, peer, acceptor, app, stop).await });
        }
    }))
}

async fn serve_conn(
    sock: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: tokio_rustls::TlsAcceptor,
    app: Router,
    stop: CancellationToken,
) {
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(sock)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return debug!(peer = %peer.ip(), error = %e, "api TLS handshake failed"),
        Err(_) => return debug!(peer = %peer.ip(), "api TLS handshake timed out"),
    };
    let (_, session) = stream.get_ref();
    let conn = Conn {
        peer: peer.ip(),
        tls: TlsInfo {
            version: session
                .protocol_version()
                .and_then(|v| v.as_str())
                .unwrap_or("unknown")
                .to_string(),
            cipher: session
                .negotiated_cipher_suite()
                .and_then(|c| c.suite().as_str())
                .unwrap_or("unknown")
                .to_string(),
            client_cert_sha256: None,
        },
    };
    let svc = hyper_util::service::TowerToHyperService::new(app.layer(Extension(conn)));
    let http = hyper::server::conn::http1::Builder::new()
        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
    tokio::pin!(http);
    tokio::select! {
        r = &mut http => if let Err(e) = r { debug!(error = %e, "api connection ended") },
        _ = stop.cancelled() => {
            http.as_mut().graceful_shutdown();
            let _ = http.await;
        }
    }
}

/// The caller's key, checked for `scope`.
fn authorize(st: &ApiState, headers: &HeaderMap, scope: Scope) -> Result<KeyRecord, ApiError> {
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

async fn send(
    State(st): State<Arc<ApiState>>,
    Extension(conn): Extension<Conn>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match send_inner(&st, &conn, &headers, body).await {
        Ok(r) => (StatusCode::ACCEPTED, Json(r)).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn send_inner(
    st: &ApiState,
    conn: &Conn,
    headers: &HeaderMap,
    body: Body,
) -> Result<SendResponse, ApiError> {
    let key = authorize(st, headers, Scope::Send)?;
    let bytes = read_body(body, st.cfg.max_body.0).await?;
    let req: SendRequest = serde_json::from_slice(&bytes).map_err(|e| ApiError::from_json(&e))?;
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
        bytes: bytes.len() as u64,
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
            accepted.push(Recipient::new(addr.as_str()));
        }
        results.push(RecipientResult {
            address: addr.clone(),
            status: if refused.is_none() {
                "queued"
            } else {
                "rejected"
            },
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
    let sub = Submission {
        id,
        envelope,
        content,
        api: Some(ApiFacts {
            key: key.name.clone(),
            metadata: req.metadata.clone(),
            ops: Vec::new(),
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
            r.status = "quarantined";
        }
    }
    Ok(SendResponse {
        id: id.to_string(),
        recipients: results,
    })
}

async fn status(
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

async fn events(State(st): State<Arc<ApiState>>, headers: HeaderMap, uri: Uri) -> Response {
    match events_inner(&st, &headers, &uri) {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

fn events_inner(
    st: &ApiState,
    headers: &HeaderMap,
    uri: &Uri,
) -> Result<serde_json::Value, ApiError> {
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
    Ok(serde_json::json!({
        "events": list,
        "next": page.next.map(|c| c.to_string()),
    }))
}

/// The API's TLS settings: its own certificate if `[api]` names one, else `[tls]`'s;
/// never a client-certificate request (keys authenticate API callers).
pub fn tls_config(tls: &crate::config::TlsConfig, api: &ApiConfig) -> crate::config::TlsConfig {
    crate::config::TlsConfig {
        cert: api.cert.clone().unwrap_or_else(|| tls.cert.clone()),
        key: api.key.clone().unwrap_or_else(|| tls.key.clone()),
        client_ca: None,
        ..tls.clone()
    }
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
