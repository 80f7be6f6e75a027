//! Delivery webhooks: final outcomes POSTed as signed JSON to configured URLs.
//!
//! Callers hand events to [`Webhooks::notify`], which never waits: each hook has a
//! bounded channel drained by its own task, which POSTs in order and retries non-2xx
//! answers with exponential backoff. When a hook's channel is full the event is dropped
//! and counted (delivery must never slow down because a receiver is down).
//!
//! Signature: `X-Phigate-Signature: sha256=<hex HMAC-SHA256(secret, raw body)>`.

use crate::config::{WebhookConfig, WebhookEvent};
use crate::metrics::{Metrics, WEBHOOK_POSTS};
use crate::types::MessageId;
use hmac::{Hmac, Mac};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use serde::Serialize;
use sha2::Sha256;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;
use tracing::{info, warn};

/// Events buffered per hook before new ones are dropped.
const CHANNEL: usize = 4096;
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(300);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("webhook[{index}]: secret_file {path}: {source}")]
    Secret {
        index: usize,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("webhook[{index}]: secret_file {path} is empty")]
    EmptySecret { index: usize, path: String },
    #[error("webhook[{index}]: url: {reason}")]
    Url { index: usize, reason: String },
    #[error("webhook TLS setup: {0}")]
    Tls(String),
}

/// One final outcome, as the queue, pipeline or control socket sees it.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub id: MessageId,
    pub event: WebhookEvent,
    /// Index into the envelope's recipients; None for message-level events (quarantine).
    pub rcpt_index: Option<usize>,
    /// Recipient address(es); sent only to hooks with `include_addresses = true`.
    pub addresses: Vec<String>,
    /// Unix seconds.
    pub at: u64,
}

/// The JSON body. Field order is fixed by the struct, so signatures are reproducible.
#[derive(Debug, Serialize)]
pub struct Payload<'a> {
    pub message_id: String,
    pub status: &'static str,
    /// RFC 3339, UTC.
    pub time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recipient_index: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recipients: Option<&'a [String]>,
}

impl Outcome {
    pub fn payload(&self, include_addresses: bool) -> Payload<'_> {
        let time = time::OffsetDateTime::from_unix_timestamp(self.at as i64)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_default();
        Payload {
            message_id: self.id.to_string(),
            status: self.event.as_str(),
            time,
            recipient_index: self.rcpt_index,
            recipients: include_addresses.then_some(self.addresses.as_slice()),
        }
    }
}

/// `sha256=<hex>` of HMAC-SHA256 over `body`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    // HMAC accepts keys of any length; new_from_slice cannot fail for it.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Where a hook POSTs to.
#[derive(Debug, Clone)]
struct Target {
    https: bool,
    host: String,
    port: u16,
    /// Path and query.
    path: String,
    /// Value of the Host header.
    authority: String,
}

fn parse_url(url: &str) -> Result<Target, String> {
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e: hyper::http::uri::InvalidUri| e.to_string())?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err("scheme must be http or https".into()),
    };
    let host = uri
        .host()
        .ok_or("no host")?
        .trim_matches(['[', ']'])
        .to_string();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let authority = uri.authority().map(|a| a.to_string()).unwrap_or_default();
    let path = uri
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_else(|| "/".into());
    Ok(Target {
        https,
        host,
        port,
        path,
        authority,
    })
}

struct Hook {
    tx: mpsc::Sender<Outcome>,
    events: Vec<WebhookEvent>,
    index: usize,
}

/// The configured hooks; cheap to share.
pub struct Webhooks {
    hooks: Vec<Hook>,
    metrics: Arc<Metrics>,
}

impl Webhooks {
    /// No hooks: every `notify` is a no-op.
    pub fn none(metrics: Arc<Metrics>) -> Arc<Webhooks> {
        Arc::new(Webhooks {
            hooks: Vec::new(),
            metrics,
        })
    }

    /// Read the secrets, check the URLs and start one sender task per hook. Must run
    /// inside a tokio runtime. With no hooks configured, the set is empty.
    pub fn start(
        cfgs: &[WebhookConfig],
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Webhooks>, WebhookError> {
        if cfgs.is_empty() {
            return Ok(Self::none(metrics));
        }
        let tls = client_config()?;
        let mut hooks = Vec::new();
        for (index, cfg) in cfgs.iter().enumerate() {
            let path = cfg.secret_file.display().to_string();
            let raw = std::fs::read(&cfg.secret_file).map_err(|source| WebhookError::Secret {
                index,
                path: path.clone(),
                source,
            })?;
            let secret = raw.trim_ascii().to_vec();
            if secret.is_empty() {
                return Err(WebhookError::EmptySecret { index, path });
            }
            let target =
                parse_url(&cfg.url).map_err(|reason| WebhookError::Url { index, reason })?;
            let (tx, rx) = mpsc::channel(CHANNEL);
            let sender = Sender {
                target,
                secret,
                include_addresses: cfg.include_addresses,
                max_attempts: cfg.max_attempts.max(1),
                tls: tls.clone(),
                metrics: metrics.clone(),
                index,
            };
            tokio::spawn(sender.run(rx));
            hooks.push(Hook {
                tx,
                events: cfg.events.clone(),
                index,
            });
        }
        Ok(Arc::new(Webhooks { hooks, metrics }))
    }

    /// Queue `outcome` for every hook subscribed to its event. Never waits.
    pub fn notify(&self, outcome: Outcome) {
        for h in self
            .hooks
            .iter()
            .filter(|h| h.events.contains(&outcome.event))
        {
            if h.tx.try_send(outcome.clone()).is_err() {
                warn!(webhook = h.index, msg_id = %outcome.id, "webhook queue full or closed, event dropped");
                self.metrics.inc(WEBHOOK_POSTS, &[("result", "dropped")]);
            }
        }
    }
}

fn client_config() -> Result<Arc<ClientConfig>, WebhookError> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| WebhookError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

struct Sender {
    target: Target,
    secret: Vec<u8>,
    include_addresses: bool,
    max_attempts: u32,
    tls: Arc<ClientConfig>,
    metrics: Arc<Metrics>,
    index: usize,
}

impl Sender {
    async fn run(self, mut rx: mpsc::Receiver<Outcome>) {
        while let Some(outcome) = rx.recv().await {
            let body = match serde_json::to_vec(&outcome.payload(self.include_addresses)) {
                Ok(b) => b,
                Err(e) => {
                    warn!(webhook = self.index, error = %e, "webhook payload not serialisable");
                    continue;
                }
            };
            let sig = signature(&self.secret, &body);
            self.deliver(&outcome, body, &sig).await;
        }
    }

    /// POST until a 2xx or `max_attempts`, doubling the pause after each failure.
    async fn deliver(&self, outcome: &Outcome, body: Vec<u8>, sig: &str) {
        let mut backoff = FIRST_BACKOFF;
        for attempt in 1..=self.max_attempts {
            let res = tokio::time::timeout(REQUEST_TIMEOUT, self.post(body.clone(), sig)).await;
            let why = match res {
                Ok(Ok(status)) if (200..300).contains(&status) => {
                    self.count("ok");
                    return;
                }
                Ok(Ok(status)) => format!("HTTP {status}"),
                Ok(Err(e)) => e,
                Err(_) => "timeout".into(),
            };
            if attempt == self.max_attempts {
                warn!(webhook = self.index, msg_id = %outcome.id, attempts = attempt, reason = %why, "webhook gave up");
                self.count("gave_up");
                return;
            }
            info!(webhook = self.index, msg_id = %outcome.id, attempt, reason = %why, retry_in_secs = backoff.as_secs(), "webhook POST failed, will retry");
            self.count("retry");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    fn count(&self, result: &str) {
        self.metrics.inc(WEBHOOK_POSTS, &[("result", result)]);
    }

    async fn post(&self, body: Vec<u8>, sig: &str) -> Result<u16, String> {
        let t = &self.target;
        let tcp = TcpStream::connect((t.host.as_str(), t.port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let io: Box<dyn Io> = if t.https {
            let name = ServerName::try_from(t.host.clone()).map_err(|e| e.to_string())?;
            let tls = TlsConnector::from(self.tls.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| format!("tls: {e}"))?;
            Box::new(tls)
        } else {
            Box::new(tcp)
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = hyper::Request::post(t.path.as_str())
            .header(hyper::header::HOST, t.authority.as_str())
            .header(hyper::header::USER_AGENT, "phigate")
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header("X-Phigate-Signature", sig)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        Ok(resp.status().as_u16())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_hex() {
        // RFC 4231 test case 2.
        let sig = signature(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            sig,
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn payload_has_no_addresses_unless_allowed() {
        let o = Outcome {
            id: MessageId::new(),
            event: WebhookEvent::Delivered,
            rcpt_index: Some(0),
            addresses: vec!["pat@example.org".into()],
            at: 1_700_000_000,
        };
        let off = serde_json::to_string(&o.payload(false)).unwrap_or_default();
        assert!(!off.contains("pat@example.org"), "{off}");
        assert!(off.contains("\"status\":\"delivered\""));
        assert!(off.contains("\"time\":\"2023-11-14T22:13:20Z\""));
        let on = serde_json::to_string(&o.payload(true)).unwrap_or_default();
        assert!(on.contains("pat@example.org"));
    }

    #[test]
    fn urls() {
        let t = parse_url("http://127.0.0.1:8080/hook?x=1").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (t.https, t.host.as_str(), t.port),
            (false, "127.0.0.1", 8080)
        );
        assert_eq!(t.path, "/hook?x=1");
        let t = parse_url("https://ehr.example/cb").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((t.https, t.port), (true, 443));
        assert!(parse_url("ftp://x/").is_err());
    }
}
