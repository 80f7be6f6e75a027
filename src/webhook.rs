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
use crate::tls::https::{HttpsClient, Resolve};
use crate::types::MessageId;
use hmac::{Hmac, Mac};
use http_body_util::Full;
use hyper::body::Bytes;
use serde::Serialize;
use sha2::Sha256;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::{info, warn};

/// Events buffered per hook before new ones are dropped.
const CHANNEL: usize = 4096;
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(300);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// A receiver's answer body is read (so the connection can be reused) up to this size.
const RESPONSE_LIMIT: usize = 64 * 1024;

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

/// Where a hook POSTs to: an absolute http(s) URL with a host.
#[derive(Debug, Clone)]
struct Target {
    uri: hyper::Uri,
}

fn parse_url(url: &str) -> Result<Target, String> {
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e: hyper::http::uri::InvalidUri| e.to_string())?;
    if !matches!(uri.scheme_str(), Some("https" | "http")) {
        return Err("scheme must be http or https".into());
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err("no host".into());
    }
    Ok(Target { uri })
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
        let tls = crate::tls::client::with_roots(crate::tls::client::webpki_roots())
            .map_err(|e| WebhookError::Tls(e.to_string()))?;
        let http = HttpsClient::new(tls, Resolve::System, true, REQUEST_TIMEOUT);
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
                http: http.clone(),
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

struct Sender {
    target: Target,
    secret: Vec<u8>,
    include_addresses: bool,
    max_attempts: u32,
    http: HttpsClient,
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
        let req = hyper::Request::post(self.target.uri.clone())
            .header(hyper::header::USER_AGENT, "phigate")
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header("X-Phigate-Signature", sig)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        // The receiver's answer is not used beyond its status.
        match self.http.send(req, RESPONSE_LIMIT).await {
            Ok(resp) => Ok(resp.status),
            Err(e) => Err(e.to_string()),
        }
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
        assert_eq!(t.uri.port_u16(), Some(8080));
        assert_eq!(
            t.uri.path_and_query().map(|p| p.as_str()),
            Some("/hook?x=1")
        );
        assert!(parse_url("https://ehr.example/cb").is_ok());
        assert!(parse_url("ftp://x/").is_err());
        assert!(parse_url("/relative").is_err());
    }
}
