//! The daemon side of the control socket: the running server owns the spool, so the CLI
//! asks it over a Unix socket (`server.control_socket`, mode 0660) instead of opening
//! the store itself.
//!
//! Protocol: one JSON [`Request`] per line, answered by one JSON [`Response`] per line.
//! Who may connect is decided by the socket's mode and group; the peer's user name
//! (from `SO_PEERCRED`) is logged with every action that reveals or changes content.

use crate::audit::{AuditEvent, Kind};
use crate::config::Config;
use crate::queue::{Queue, QueueError};
use crate::services::Services;
use crate::spool::{
    KeyInfo, Keyring, KeyringError, QuarantineEntry, QueueSummary, RecipientState, SpoolError,
    SpoolStats, StateTag,
};
use crate::types::{Envelope, MessageId, Status};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

mod breach;
mod portal;
pub use breach::{incident_event, BulkAction, Selected};
pub use portal::PortalRow;

/// Longest request line accepted (requests are small; this only bounds memory).
const MAX_REQUEST: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control socket {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("control socket {0}: another phigate is already answering on it")]
    InUse(PathBuf),
}

/// What the CLI can ask.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Request {
    QueueList {
        state: Option<StateTag>,
    },
    QueueShow {
        id: MessageId,
        body: bool,
    },
    /// `None` retries every pending message.
    QueueRetry {
        id: Option<MessageId>,
    },
    QueueDelete {
        id: MessageId,
    },
    QueueStats,
    KeysList,
    KeysReload,
    KeysRewrap,
    QuarantineList,
    QuarantineShow {
        id: MessageId,
    },
    QuarantineRelease {
        id: MessageId,
    },
    QuarantineDelete {
        id: MessageId,
    },
    Status,
    /// Walk the audit chain; `head` is an outside copy as SEQ:HASH.
    AuditVerify {
        head: Option<(u64, String)>,
    },
    /// Stream the audit trail: one `{"line": ...}` per record, then a final Response.
    AuditExport {
        since_ms: Option<u64>,
        until_ms: Option<u64>,
        message: Option<String>,
        recipient: Option<String>,
        csv: bool,
    },
    /// `phigate freeze on|off` (see `control::breach`).
    Freeze {
        on: bool,
        identity: Option<String>,
        all: bool,
        reason: Option<String>,
        refuse_inbound: bool,
    },
    FreezeStatus,
    /// `phigate queue hold|release` by ID, identity or everything pending.
    QueueHold {
        release: bool,
        id: Option<MessageId>,
        identity: Option<String>,
        all: bool,
    },
    /// `phigate quarantine list|add|release|delete` by identity and time (unix seconds,
    /// `until` exclusive): bulk selection.
    QuarantineSelect {
        action: breach::BulkAction,
        identity: Option<String>,
        since: Option<u64>,
        until: Option<u64>,
    },
    /// `phigate audit incident`: the chain is verified first.
    AuditIncident {
        filter: crate::audit::incident::IncidentFilter,
    },
    /// `phigate api-key create|list|revoke` (the daemon holds the store).
    ApiKeyCreate {
        new: crate::api::keys::NewKey,
    },
    ApiKeyList,
    ApiKeyRevoke {
        name: String,
    },
    /// `phigate portal list|show|revoke|extend|resend`.
    PortalList,
    PortalShow {
        id: MessageId,
    },
    PortalRevoke {
        id: MessageId,
    },
    /// `by` in seconds.
    PortalExtend {
        id: MessageId,
        by: u64,
    },
    PortalResend {
        id: MessageId,
    },
    /// `phigate tlsrpt show`: the TLS-RPT aggregates not sent yet.
    TlsrptShow,
    /// `phigate tlsrpt send-now`: send every aggregate, today's so far included.
    TlsrptSendNow,
    /// `phigate reload`: what SIGHUP does, answered with its outcome.
    Reload,
    /// `phigate dkim check`: look rotation records up now; answers each group's signer.
    DkimRefresh,
}

/// How the control socket asks the server's main loop to reload: the loop answers on
/// the enclosed channel with the reload's outcome.
pub type ReloadRequests =
    tokio::sync::mpsc::Sender<tokio::sync::oneshot::Sender<Result<(), String>>>;

/// `api-key create`'s answer: the key, shown once, and what was stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreatedKey {
    pub key: String,
    pub record: crate::api::keys::KeyRecord,
}

/// One exported record on the control socket (before the final [`Response`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExportLine {
    pub line: String,
}

/// A `Write` that hands each completed line to the socket writer through a bounded
/// channel, so an export of any size holds only a few lines in memory.
struct LineSender {
    tx: tokio::sync::mpsc::Sender<String>,
    buf: Vec<u8>,
}

impl std::io::Write for LineSender {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        while let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=nl).collect();
            let text = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
            self.tx
                .blocking_send(text)
                .map_err(|_| std::io::Error::other("client went away"))?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One line back: `{"ok":true,"data":...}` or `{"ok":false,"error":"..."}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A row of `queue list`: clear metadata only.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueueItem {
    pub id: MessageId,
    pub received_at: u64,
    pub size: u64,
    pub recipients: usize,
    /// Recipients per state.
    pub states: BTreeMap<StateTag, u64>,
    pub next_attempt: Option<u64>,
    pub done_at: Option<u64>,
    pub shredded: bool,
}

/// `queue show`: the decrypted envelope and per-recipient states, the body on request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MessageView {
    pub id: MessageId,
    pub summary: QueueSummary,
    /// Absent once the message was shredded.
    pub envelope: Option<Envelope>,
    pub recipients: Option<Vec<RecipientState>>,
    pub quarantine: Option<QuarantineEntry>,
    /// The message exactly as stored, base64 (it need not be UTF-8).
    pub body_base64: Option<String>,
}

/// A row of `keys list`: never key material.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyRow {
    pub id: String,
    pub created: u64,
    pub current: bool,
    /// Messages whose data key this master key wraps.
    pub messages: u64,
    /// Event records (and message origins) whose person fields this key seals.
    #[serde(default)]
    pub events: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QuarantineRow {
    pub id: MessageId,
    pub at: u64,
    pub rule: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusView {
    pub version: String,
    pub pid: u32,
    pub uptime_secs: u64,
    pub hostname: String,
    pub current_key: Option<String>,
    pub stats: Stats,
    /// Listeners as configured: "name addr tls".
    #[serde(default)]
    pub listeners: Vec<String>,
    /// Every master key ID in the keyring (the current one is `current_key`).
    #[serde(default)]
    pub key_ids: Vec<String>,
    /// Recent delivery errors (message ID, recipient index, codes; no addresses).
    #[serde(default)]
    pub last_errors: Vec<String>,
}

/// `queue stats` (the spool's counts, in a form the CLI can read back).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Stats {
    pub messages: u64,
    pub pending: u64,
    pub recipients_by_state: BTreeMap<StateTag, u64>,
    pub oldest_pending_age: Option<u64>,
    pub flushes: u64,
}

impl From<SpoolStats> for Stats {
    fn from(s: SpoolStats) -> Self {
        Stats {
            messages: s.messages,
            pending: s.pending,
            recipients_by_state: s.recipients_by_state,
            oldest_pending_age: s.oldest_pending_age,
            flushes: s.flushes,
        }
    }
}

/// How many messages an action changed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Count {
    pub count: usize,
}

/// Why a request failed; becomes the `error` line the CLI prints.
#[derive(Debug, thiserror::Error)]
enum ActionError {
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Keyring(#[from] KeyringError),
    #[error("message {0} is not quarantined")]
    NotQuarantined(MessageId),
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
    #[error("{0}")]
    Usage(String),
}

/// What the control socket acts on, besides the configuration.
pub struct Parts {
    pub services: Services,
    pub queue: Arc<Queue>,
    /// None when TLS reporting is off.
    pub tlsrpt: Option<Arc<crate::tlsrpt::TlsRpt>>,
    /// The keyring the spool was opened with.
    pub keys: Vec<KeyInfo>,
    pub portal: Option<Arc<crate::portal::Portal>>,
    pub reload: ReloadRequests,
}

struct Control {
    services: Services,
    queue: Arc<Queue>,
    tlsrpt: Option<Arc<crate::tlsrpt::TlsRpt>>,
    cfg: Config,
    keys: Mutex<Vec<KeyInfo>>,
    started: Instant,
    portal: Option<Arc<crate::portal::Portal>>,
    reload: ReloadRequests,
}

/// Bind the control socket (if configured) and serve it until `shutdown` is cancelled.
/// A stale socket left by a crash is replaced; one a live daemon still answers on is an
/// error.
pub async fn start(
    cfg: &Config,
    parts: Parts,
    shutdown: CancellationToken,
) -> Result<Option<JoinHandle<()>>, ControlError> {
    let Some(path) = cfg.server.control_socket.clone() else {
        return Ok(None);
    };
    let listener = bind(&path).await?;
    let ctl = Arc::new(Control {
        services: parts.services,
        queue: parts.queue,
        tlsrpt: parts.tlsrpt,
        cfg: cfg.clone(),
        keys: Mutex::new(parts.keys),
        started: Instant::now(),
        portal: parts.portal,
        reload: parts.reload,
    });
    info!(socket = %path.display(), "control socket listening");
    Ok(Some(tokio::spawn(serve(ctl, listener, path, shutdown))))
}

async fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    let io = |source| ControlError::Io {
        path: path.to_path_buf(),
        source,
    };
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(ControlError::InUse(path.to_path_buf()));
        }
        std::fs::remove_file(path).map_err(io)?;
    }
    let listener = UnixListener::bind(path).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(io)?;
    Ok(listener)
}

async fn serve(
    ctl: Arc<Control>,
    listener: UnixListener,
    path: PathBuf,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            conn = listener.accept() => match conn {
                Ok((stream, _)) => {
                    tokio::spawn(connection(ctl.clone(), stream));
                }
                Err(e) => warn!(error = %e, "control socket accept failed"),
            },
            _ = shutdown.cancelled() => break,
        }
    }
    let _ = std::fs::remove_file(&path);
}

async fn connection(ctl: Arc<Control>, stream: UnixStream) {
    let admin = stream
        .peer_cred()
        .map(|c| user_name(c.uid()))
        .unwrap_or_else(|_| "unknown".into());
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    let mut line = String::new();
    loop {
        line.clear();
        match (&mut lines)
            .take(MAX_REQUEST as u64)
            .read_line(&mut line)
            .await
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if !line.ends_with('\n') && line.len() >= MAX_REQUEST {
            let _ = write
                .write_all(b"{\"ok\":false,\"error\":\"request too long\"}\n")
                .await;
            return;
        }
        let resp = match serde_json::from_str::<Request>(line.trim()) {
            Ok(Request::AuditExport {
                since_ms,
                until_ms,
                message,
                recipient,
                csv,
            }) => {
                let filter = crate::audit::ExportFilter {
                    since_ms,
                    until_ms,
                    message,
                    recipient,
                };
                ctl.export(filter, csv, &admin, &mut write).await
            }
            Ok(req) => ctl.handle(req, &admin).await,
            Err(e) => Response::err(format!("bad request: {e}")),
        };
        let mut out = serde_json::to_vec(&resp).unwrap_or_default();
        out.push(b'\n');
        if write.write_all(&out).await.is_err() {
            return;
        }
    }
}

/// The login name of `uid` from /etc/passwd, or `uid:N` when it has none.
fn user_name(uid: u32) -> String {
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|text| {
            text.lines().find_map(|l| {
                let mut f = l.split(':');
                let name = f.next()?;
                let id: u32 = f.nth(1)?.parse().ok()?;
                (id == uid).then(|| name.to_string())
            })
        })
        .unwrap_or_else(|| format!("uid:{uid}"))
}

impl Response {
    fn ok<T: Serialize>(data: &T) -> Self {
        Response {
            ok: true,
            data: Some(serde_json::to_value(data).unwrap_or_default()),
            error: None,
        }
    }

    fn err(msg: String) -> Self {
        Response {
            ok: false,
            data: None,
            error: Some(msg),
        }
    }
}

impl Control {
    /// Stream an audit export to `write`, then record the export itself in the trail.
    async fn export(
        &self,
        filter: crate::audit::ExportFilter,
        csv: bool,
        admin: &str,
        write: &mut (impl tokio::io::AsyncWrite + Unpin),
    ) -> Response {
        self.services.audit.flush_deferred();
        let spool = self.services.spool.clone();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(256);
        let format = if csv {
            crate::audit::Format::Csv
        } else {
            crate::audit::Format::Jsonl
        };
        let task = tokio::task::spawn_blocking(move || {
            let mut out = LineSender {
                tx,
                buf: Vec::new(),
            };
            crate::audit::export(
                spool.store().as_ref(),
                &spool.keyring(),
                &filter,
                format,
                &mut out,
            )
        });
        while let Some(line) = rx.recv().await {
            let mut out = serde_json::to_vec(&ExportLine { line }).unwrap_or_default();
            out.push(b'\n');
            if write.write_all(&out).await.is_err() {
                break;
            }
        }
        let n = match task.await {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return Response::err(format!("audit export failed: {e}")),
            Err(e) => return Response::err(format!("audit export failed: {e}")),
        };
        let ev = AuditEvent::new(Kind::Export)
            .field("records", n)
            .person("admin", admin);
        if let Err(e) = self.services.audit.record(vec![ev]).await {
            return Response::err(format!("export done but not recorded in the trail: {e}"));
        }
        info!(admin, records = n, "audit trail exported");
        Response::ok(&Count { count: n as usize })
    }

    /// API keys: created, listed and revoked in the daemon's store; a revocation is seen
    /// by the API's next request.
    fn api_keys(&self, req: Request, admin: &str) -> Response {
        let keys = crate::api::keys::KeyStore::new(self.services.spool.store().clone());
        let now = self.services.now();
        let res = match req {
            Request::ApiKeyCreate { new } => keys.create(&new, now).map(|(key, record)| {
                info!(admin, key_name = %record.name, "api key created");
                Response::ok(&CreatedKey { key, record })
            }),
            Request::ApiKeyRevoke { name } => keys.revoke(&name, now).map(|r| {
                info!(admin, key_name = %r.name, "api key revoked");
                Response::ok(&r)
            }),
            _ => keys.list().map(|v| Response::ok(&v)),
        };
        res.unwrap_or_else(|e| Response::err(e.to_string()))
    }

    async fn handle(&self, req: Request, admin: &str) -> Response {
        let result = match req {
            Request::QueueList { state } => self.list(state).map(|v| Response::ok(&v)),
            Request::QueueShow { id, body } => {
                self.show(id, body, admin).await.map(|v| Response::ok(&v))
            }
            Request::QueueRetry { id } => self.retry(id, admin).await.map(|v| Response::ok(&v)),
            Request::QueueDelete { id } => self.delete(id, admin).await.map(|v| Response::ok(&v)),
            Request::QueueStats => self
                .services
                .spool
                .stats(self.services.now())
                .map(|v| Response::ok(&Stats::from(v)))
                .map_err(Into::into),
            Request::KeysList => self.key_rows().map(|v| Response::ok(&v)),
            req @ (Request::ApiKeyCreate { .. }
            | Request::ApiKeyList
            | Request::ApiKeyRevoke { .. }) => return self.api_keys(req, admin),
            req @ (Request::PortalList
            | Request::PortalShow { .. }
            | Request::PortalRevoke { .. }
            | Request::PortalExtend { .. }
            | Request::PortalResend { .. }) => return self.portal(req, admin).await,
            Request::KeysReload => self.reload_keys(admin).map(|v| Response::ok(&v)),
            Request::KeysRewrap => self.rewrap(admin).await.map(|v| Response::ok(&v)),
            Request::QuarantineList => self.quarantine_list().map(|v| Response::ok(&v)),
            Request::QuarantineShow { id } => match self.quarantined(id) {
                Ok(_) => self.show(id, false, admin).await.map(|v| Response::ok(&v)),
                Err(e) => Err(e),
            },
            Request::QuarantineRelease { id } => {
                self.release(id, admin).await.map(|v| Response::ok(&v))
            }
            Request::QuarantineDelete { id } => match self.quarantined(id) {
                Ok(_) => self.delete(id, admin).await.map(|v| Response::ok(&v)),
                Err(e) => Err(e),
            },
            Request::Status => self.status().map(|v| Response::ok(&v)),
            Request::AuditVerify { head } => {
                let external = match head {
                    Some((seq, h)) => match crate::audit::record::parse_hash(&h) {
                        Some(hash) => Some((seq, hash)),
                        None => return Response::err("bad head hash".into()),
                    },
                    None => None,
                };
                let audit = self.services.audit.clone();
                let res = tokio::task::spawn_blocking(move || {
                    audit
                        .verify_quiesced(external)
                        .map(|r| r.to_string())
                        .map_err(|b| b.to_string())
                })
                .await;
                return match res {
                    Ok(Ok(report)) => Response::ok(&report),
                    Ok(Err(broken)) => Response::err(format!("audit verify FAILED: {broken}")),
                    Err(e) => Response::err(e.to_string()),
                };
            }
            // Streamed by `connection`, never reaches here.
            Request::AuditExport { .. } => return Response::err("export must be streamed".into()),
            req @ (Request::Freeze { .. }
            | Request::FreezeStatus
            | Request::QueueHold { .. }
            | Request::QuarantineSelect { .. }
            | Request::AuditIncident { .. }) => return self.breach(req, admin).await,
            req @ (Request::TlsrptShow | Request::TlsrptSendNow) => {
                return self.tlsrpt(req, admin).await
            }
            Request::Reload => return self.reload(admin).await,
            Request::DkimRefresh => {
                let groups = self.services.dkim.refresh(self.services.now()).await;
                Ok(Response::ok(&groups))
            }
        };
        result.unwrap_or_else(|e| Response::err(e.to_string()))
    }

    async fn reload(&self, admin: &str) -> Response {
        info!(admin, "reload requested");
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.reload.send(tx).await.is_err() {
            return Response::err("the daemon is shutting down".into());
        }
        match rx.await {
            Ok(Ok(())) => Response::ok(&"configuration reloaded"),
            Ok(Err(e)) => Response::err(format!(
                "reload refused, previous configuration stays active: {e}"
            )),
            Err(_) => Response::err("the daemon is shutting down".into()),
        }
    }

    async fn tlsrpt(&self, req: Request, admin: &str) -> Response {
        let Some(t) = &self.tlsrpt else {
            return Response::err(
                "TLS reporting is off (needs delivery.mode = \"mx\" and tlsrpt.enabled)".into(),
            );
        };
        let res = match req {
            Request::TlsrptSendNow => {
                info!(admin, "tlsrpt send-now");
                t.send(true).await.map(|v| Response::ok(&v))
            }
            _ => t.show().map(|v| Response::ok(&v)),
        };
        res.unwrap_or_else(|e| Response::err(e.to_string()))
    }

    fn list(&self, state: Option<StateTag>) -> Result<Vec<QueueItem>, ActionError> {
        let mut out = Vec::new();
        for (id, s) in self.services.spool.messages()? {
            if state.is_some_and(|want| !s.recipients.iter().any(|r| r.state == want)) {
                continue;
            }
            let mut states = BTreeMap::new();
            for r in &s.recipients {
                *states.entry(r.state).or_insert(0) += 1;
            }
            out.push(QueueItem {
                id,
                received_at: s.received_at,
                size: s.size,
                recipients: s.recipients.len(),
                states,
                next_attempt: s.scheduled,
                done_at: s.done_at,
                shredded: s.shredded_at.is_some(),
            });
        }
        Ok(out)
    }

    async fn show(
        &self,
        id: MessageId,
        body: bool,
        admin: &str,
    ) -> Result<MessageView, ActionError> {
        let spool = &self.services.spool;
        let summary = spool.summary(&id)?;
        let quarantine = spool
            .quarantined()?
            .into_iter()
            .find(|(q, _)| *q == id)
            .map(|(_, e)| e);
        if summary.shredded_at.is_some() {
            if body {
                return Err(SpoolError::Shredded(id).into());
            }
            return Ok(MessageView {
                id,
                summary,
                envelope: None,
                recipients: None,
                quarantine,
                body_base64: None,
            });
        }
        let (envelope, body_base64) = if body {
            let (env, content) = spool.load(&id)?;
            // Viewing content is an audited action, recorded before the body is returned.
            (self.services.audit)
                .record(vec![AuditEvent::admin(Kind::BodyViewed, admin, id)])
                .await?;
            info!(admin, msg_id = %id, "message content viewed (queue show --body)");
            (env, Some(B64.encode(&content)))
        } else {
            (spool.envelope(&id)?, None)
        };
        Ok(MessageView {
            id,
            summary,
            envelope: Some(envelope),
            recipients: Some(spool.recipients(&id)?),
            quarantine,
            body_base64,
        })
    }

    async fn retry(&self, id: Option<MessageId>, admin: &str) -> Result<Count, ActionError> {
        if let Some(id) = id {
            self.services.spool.summary(&id)?;
        }
        let count = self.queue.retry_now(id).await?;
        match id {
            Some(id) => info!(admin, msg_id = %id, "queue retry"),
            None => info!(admin, count, "queue retry --all"),
        }
        Ok(Count { count })
    }

    /// Delete = every unfinished recipient becomes bounced (so metadata retention will
    /// purge the row later; no DSN is sent), then the content is crypto-shredded.
    async fn delete(&self, id: MessageId, admin: &str) -> Result<Count, ActionError> {
        let spool = &self.services.spool;
        let summary = spool.summary(&id)?;
        if summary.shredded_at.is_none() {
            let mut states = spool.recipients(&id)?;
            if states.iter().any(|s| !s.status.is_final()) {
                for s in states.iter_mut().filter(|s| !s.status.is_final()) {
                    s.status = Status::Bounced {
                        reason: "deleted by operator".into(),
                    };
                }
                spool.set_recipients(&id, &states).await?;
            }
        }
        let batch = (self.services).attach(vec![AuditEvent::admin(Kind::Delete, admin, id)]);
        spool.shred_with(&id, &batch).await?;
        info!(admin, msg_id = %id, "message deleted and crypto-shredded");
        Ok(Count { count: 1 })
    }

    fn key_rows(&self) -> Result<Vec<KeyRow>, ActionError> {
        let usage = self.services.spool.key_usage()?;
        // Unreadable event usage must not hide the key list: counted as 0, logged.
        let events = self.services.events.key_usage().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "event key usage unavailable");
            Default::default()
        });
        let keys = self.keys.lock().unwrap_or_else(|p| p.into_inner()).clone();
        Ok(keys
            .into_iter()
            .map(|k| KeyRow {
                messages: usage.get(&k.id).copied().unwrap_or(0),
                events: events.get(&k.id).copied().unwrap_or(0),
                id: k.id,
                created: k.created,
                current: k.current,
            })
            .collect())
    }

    /// Re-read the keyring (after `phigate keys rotate`) and hand it to the spool, which
    /// refuses one that cannot open what it holds.
    fn reload_keys(&self, admin: &str) -> Result<Vec<KeyRow>, ActionError> {
        let ring = load_ring(&self.cfg)?;
        let list = ring.list();
        let current = ring.current().id().to_string();
        self.services.spool.set_keyring(ring)?;
        *self.keys.lock().unwrap_or_else(|p| p.into_inner()) = list;
        (self.services.audit).record_now(AuditEvent::key(Kind::KeyRotate, admin, &current, None));
        info!(admin, key_id = %current, "keyring reloaded");
        self.key_rows()
    }

    async fn rewrap(&self, admin: &str) -> Result<Count, ActionError> {
        let count = self.services.spool.rewrap().await?;
        // Events hold sealed person fields too: seal them under the current key, so the
        // old key can be removed without losing them.
        let resealed = self.services.events.reseal().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "events not resealed");
            0
        });
        info!(
            admin,
            resealed, "event records resealed under the current master key"
        );
        let current = self.services.spool.keyring().current().id().to_string();
        let ev = AuditEvent::key(Kind::KeyRewrap, admin, &current, Some(count as u64));
        self.services.audit.record(vec![ev]).await?;
        info!(
            admin,
            count, "data keys rewrapped under the current master key"
        );
        Ok(Count { count })
    }

    fn quarantine_list(&self) -> Result<Vec<QuarantineRow>, ActionError> {
        Ok(self
            .services
            .spool
            .quarantined()?
            .into_iter()
            .map(|(id, e)| QuarantineRow {
                id,
                at: e.at,
                rule: e.rule,
            })
            .collect())
    }

    fn quarantined(&self, id: MessageId) -> Result<QuarantineEntry, ActionError> {
        self.services
            .spool
            .quarantined()?
            .into_iter()
            .find(|(q, _)| *q == id)
            .map(|(_, e)| e)
            .ok_or(ActionError::NotQuarantined(id))
    }

    async fn release(&self, id: MessageId, admin: &str) -> Result<Count, ActionError> {
        self.quarantined(id)?;
        let now = self.services.now();
        let batch = (self.services).attach(vec![AuditEvent::admin(Kind::Release, admin, id)]);
        self.services.spool.release_with(&id, now, &batch).await?;
        self.queue.wake();
        let event = crate::config::WebhookEvent::Released;
        self.services.metrics.outcome(event.as_str());
        info!(admin, msg_id = %id, "quarantined message released");
        Ok(Count { count: 1 })
    }

    fn status(&self) -> Result<StatusView, ActionError> {
        let keys = self.keys.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let current_key = keys.iter().find(|k| k.current).map(|k| k.id.clone());
        Ok(StatusView {
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            uptime_secs: self.started.elapsed().as_secs(),
            hostname: self.cfg.server.hostname.clone(),
            current_key,
            stats: self.services.spool.stats(self.services.now())?.into(),
            listeners: self.cfg.listeners.iter().map(|l| l.describe()).collect(),
            key_ids: keys.iter().map(|k| k.id.clone()).collect(),
            last_errors: self.services.metrics.last_errors(),
        })
    }
}

/// The keyring as configured: the systemd credential when set and present, else the file.
/// Unlike start-up, a reload never creates a keyring.
fn load_ring(cfg: &Config) -> Result<Keyring, KeyringError> {
    if let Some(name) = &cfg.spool.key_credential {
        if std::env::var_os("CREDENTIALS_DIRECTORY").is_some() {
            return Keyring::load_credential(name);
        }
    }
    Keyring::load(&cfg.spool.key_file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_as_tagged_json() {
        let id = MessageId::new();
        let req = Request::QueueShow { id, body: true };
        let line = serde_json::to_string(&req).expect("serialize");
        assert!(line.contains("\"cmd\":\"queue-show\""), "{line}");
        assert_eq!(serde_json::from_str::<Request>(&line).expect("parse"), req);
        let list: Request =
            serde_json::from_str(r#"{"cmd":"queue-list","state":"deferred"}"#).expect("parse");
        assert_eq!(
            list,
            Request::QueueList {
                state: Some(StateTag::Deferred)
            }
        );
    }

    #[test]
    fn root_uid_has_a_name() {
        assert_eq!(user_name(0), "root");
        assert_eq!(user_name(4_000_000_000), "uid:4000000000");
    }
}
