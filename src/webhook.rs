//! Webhooks: events from the durable event store POSTed as signed JSON to configured URLs.
//!
//! Each hook has a persistent cursor (spool `meta`, keyed by a hash of its URL) and a
//! task that reads the events after it, POSTs the ones the hook subscribes to (one per
//! request, in order), and advances and persists the cursor only after a 2xx. Failures
//! retry with exponential backoff, for ever: nothing is dropped, and after a crash at
//! most the in-flight event is sent again, with the same `X-Phigate-Event-Id`.
//!
//! Signature: `X-Phigate-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, t + "." + raw body)>`.
//! Receivers should reject a `t` more than 5 minutes from their clock (replays).

use crate::config::{WebhookConfig, WebhookEvent};
use crate::events::{Event, Events};
use crate::metrics::{Metrics, WEBHOOK_POSTS};
use crate::spool::{Op, Store, Tree};
use crate::tls::https::{HttpsClient, Resolve};
use hmac::{Hmac, Mac};
use http_body_util::Full;
use hyper::body::Bytes;
use sha2::Sha256;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

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
    #[error("webhook cursor storage: {0}")]
    Store(String),
    #[error("webhook TLS setup: {0}")]
    Tls(String),
}

/// `t=<unix>,v1=<hex HMAC-SHA256(secret, t + "." + body)>`.
pub fn signature(secret: &[u8], t: u64, body: &[u8]) -> String {
    // HMAC accepts keys of any length; new_from_slice cannot fail for it.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// The subscription name an event type answers to (config `events = [...]`).
fn subscription(event_type: &str) -> Option<WebhookEvent> {
    Some(match event_type {
        "message.queued" => WebhookEvent::Queued,
        "message.deferred" => WebhookEvent::Deferred,
        "message.delivered" => WebhookEvent::Delivered,
        "message.bounced" => WebhookEvent::Bounced,
        "message.expired" => WebhookEvent::Expired,
        "message.quarantined" => WebhookEvent::Quarantined,
        "message.released" => WebhookEvent::Released,
        "message.deleted" => WebhookEvent::Deleted,
        "security.alert" => WebhookEvent::SecurityAlert,
        "message.portal" => WebhookEvent::Portal,
        "message.picked_up" => WebhookEvent::PickedUp,
        "message.revoked" => WebhookEvent::Revoked,
        _ => return None,
    })
}

fn cursor_key(url: &str) -> Vec<u8> {
    let h: [u8; 32] = <Sha256 as sha2::Digest>::digest(url.as_bytes()).into();
    format!("webhook_cursor:{}", hex::encode(&h[..16])).into_bytes()
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

/// The configured hooks (their tasks run on their own).
pub struct Webhooks {
    count: usize,
    /// Each hook's persisted cursor, as its task advances it.
    cursors: Vec<Arc<AtomicU64>>,
    events: Option<Arc<Events>>,
}

impl Webhooks {
    /// No hooks.
    pub fn none(_metrics: Arc<Metrics>) -> Arc<Webhooks> {
        Arc::new(Webhooks {
            count: 0,
            cursors: Vec::new(),
            events: None,
        })
    }

    pub fn len(&self) -> usize {
        self.count
    }

    /// Events not yet handed to each hook (by index), for the backlog gauge: a receiver
    /// that is down shows as a growing number long before anyone misses a notification.
    pub fn backlog(&self) -> Vec<(usize, u64)> {
        let Some(events) = &self.events else {
            return Vec::new();
        };
        let newest = *events.subscribe().borrow();
        self.cursors
            .iter()
            .enumerate()
            .map(|(i, c)| (i, newest.saturating_sub(c.load(Ordering::Relaxed))))
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Read the secrets, check the URLs and start one sender task per hook. Must run
    /// inside a tokio runtime. A hook seen for the first time starts at the newest event.
    pub fn start(
        cfgs: &[WebhookConfig],
        metrics: Arc<Metrics>,
        events: Arc<Events>,
        store: Arc<dyn Store>,
    ) -> Result<Arc<Webhooks>, WebhookError> {
        if cfgs.is_empty() {
            return Ok(Self::none(metrics));
        }
        let tls = crate::tls::client::with_roots(crate::tls::client::webpki_roots())
            .map_err(|e| WebhookError::Tls(e.to_string()))?;
        let http = HttpsClient::new(tls, Resolve::System, true, REQUEST_TIMEOUT);
        let mut cursors = Vec::new();
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
            let key = cursor_key(&cfg.url);
            let cursor = match store.get(Tree::Meta, &key) {
                Ok(Some(v)) => <[u8; 8]>::try_from(v.as_slice())
                    .map(u64::from_be_bytes)
                    .ok(),
                Ok(None) => None,
                Err(e) => return Err(WebhookError::Store(e.to_string())),
            };
            let cursor = match cursor {
                Some(c) => c,
                None => {
                    let c = *events.subscribe().borrow();
                    store
                        .commit(&[Op::Put(Tree::Meta, key.clone(), c.to_be_bytes().to_vec())])
                        .map_err(|e| WebhookError::Store(e.to_string()))?;
                    c
                }
            };
            let shared = Arc::new(AtomicU64::new(cursor));
            cursors.push(shared.clone());
            let sender = Sender {
                shared,
                target,
                secret,
                include_addresses: cfg.include_addresses,
                subscribed: cfg.events.clone(),
                http: http.clone(),
                metrics: metrics.clone(),
                index,
                events: events.clone(),
                store: store.clone(),
                key,
            };
            tokio::spawn(sender.run(cursor));
        }
        Ok(Arc::new(Webhooks {
            count: cfgs.len(),
            cursors,
            events: Some(events),
        }))
    }
}

struct Sender {
    /// The cursor as last saved, read by `Webhooks::backlog`.
    shared: Arc<AtomicU64>,
    target: Target,
    secret: Vec<u8>,
    include_addresses: bool,
    subscribed: Vec<WebhookEvent>,
    http: HttpsClient,
    metrics: Arc<Metrics>,
    index: usize,
    events: Arc<Events>,
    store: Arc<dyn Store>,
    key: Vec<u8>,
}

/// Events read per page.
const PAGE: usize = 100;

impl Sender {
    async fn run(self, mut cursor: u64) {
        let mut rx = self.events.subscribe();
        loop {
            let page = match self.events.page(Some(cursor), PAGE, None) {
                Ok(p) => p,
                Err(e) => {
                    warn!(webhook = self.index, error = %e, "webhook: event store unreadable");
                    tokio::time::sleep(MAX_BACKOFF).await;
                    continue;
                }
            };
            if page.events.is_empty() {
                // Wait for a commit (or re-check now and then).
                let _ = tokio::time::timeout(Duration::from_secs(30), rx.changed()).await;
                continue;
            }
            for ev in &page.events {
                if subscription(&ev.kind).is_some_and(|s| self.subscribed.contains(&s)) {
                    self.deliver(ev).await;
                }
                cursor = ev.cursor;
                self.save(cursor);
            }
            if let Some(n) = page.next {
                if n > cursor {
                    cursor = n;
                    self.save(cursor);
                }
            }
        }
    }

    fn save(&self, cursor: u64) {
        let op = Op::Put(Tree::Meta, self.key.clone(), cursor.to_be_bytes().to_vec());
        if let Err(e) = self.store.commit(&[op]) {
            warn!(webhook = self.index, error = %e, "webhook cursor not saved");
        }
        self.shared.store(cursor, Ordering::Relaxed);
    }

    /// POST until a 2xx, doubling the pause after each failure (at most 5 minutes).
    async fn deliver(&self, ev: &Event) {
        let body = match serde_json::to_vec(&ev.to_json(self.include_addresses)) {
            Ok(b) => b,
            Err(e) => {
                warn!(webhook = self.index, error = %e, "webhook payload not serialisable");
                return;
            }
        };
        let id = ev.id();
        let mut backoff = FIRST_BACKOFF;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let sig = signature(&self.secret, crate::types::now_secs(), &body);
            let res =
                tokio::time::timeout(REQUEST_TIMEOUT, self.post(body.clone(), &sig, &id)).await;
            let why = match res {
                Ok(Ok(status)) if (200..300).contains(&status) => {
                    self.count("ok");
                    return;
                }
                Ok(Ok(status)) => format!("HTTP {status}"),
                Ok(Err(e)) => e,
                Err(_) => "timeout".into(),
            };
            info!(webhook = self.index, event_id = %id, attempt, reason = %why, retry_in_secs = backoff.as_secs(), "webhook POST failed, will retry");
            self.count("retry");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    fn count(&self, result: &str) {
        self.metrics.inc(WEBHOOK_POSTS, &[("result", result)]);
    }

    async fn post(&self, body: Vec<u8>, sig: &str, id: &str) -> Result<u16, String> {
        let req = hyper::Request::post(self.target.uri.clone())
            .header(hyper::header::USER_AGENT, "phigate")
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header("X-Phigate-Event-Id", id)
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
    fn signature_is_hmac_over_t_dot_body() {
        let sig = signature(b"Jefe", 1_700_000_000, b"{}");
        let mut mac = Hmac::<Sha256>::new_from_slice(b"Jefe").unwrap_or_else(|_| unreachable!());
        mac.update(b"1700000000.{}");
        let want = hex::encode(mac.finalize().into_bytes());
        assert_eq!(sig, format!("t=1700000000,v1={want}"));
    }

    #[test]
    fn subscriptions_cover_every_type() {
        for t in [
            "message.queued",
            "message.delivered",
            "security.alert",
            "message.deleted",
        ] {
            assert!(subscription(t).is_some(), "{t}");
        }
        assert!(cursor_key("http://a/") != cursor_key("http://b/"));
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
