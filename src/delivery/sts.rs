//! MTA-STS policy discovery (RFC 8461 §3): `_mta-sts` TXT, HTTPS fetch, cache.
//!
//! The rules (parsing, cache decisions, MX matching) live in `tls::mta_sts`; this module
//! does the I/O. The fetch is a single HTTP/1.1 GET over tokio-rustls with hyper: WebPKI
//! (plus the optional extra CA bundle) for `mta-sts.<domain>`, no redirects followed, body
//! limit checked chunk by chunk, one overall timeout.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::dns::{DnsError, Resolver};
use crate::tls::mta_sts::{
    self, after_fetch, decide, CacheDecision, CachedPolicy, Policy, StsError, TxtLookup,
};
use crate::types::now_secs;

/// Where cached policies live. The spool will implement this so policies survive restarts.
pub trait StsCache: Send + Sync {
    fn get(&self, domain: &str) -> Option<CachedPolicy>;
    fn put(&self, domain: &str, policy: CachedPolicy);
    fn remove(&self, domain: &str);
}

/// Process-lifetime cache.
#[derive(Debug, Default)]
pub struct MemoryStsCache(Mutex<HashMap<String, CachedPolicy>>);

impl StsCache for MemoryStsCache {
    fn get(&self, domain: &str) -> Option<CachedPolicy> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(domain)
            .cloned()
    }
    fn put(&self, domain: &str, policy: CachedPolicy) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(domain.to_string(), policy);
    }
    fn remove(&self, domain: &str) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(domain);
    }
}

/// The policy in force for a domain and how it was obtained (for the per-hop record).
#[derive(Debug, Clone)]
pub struct StsResult {
    /// None: the domain has no policy (or `TempFail` below).
    pub policy: Option<Policy>,
    pub temp_fail: bool,
    pub outcome: String,
}

pub struct StsClient {
    tls: Arc<ClientConfig>,
    timeout: Duration,
    /// 443 except in tests.
    pub port: u16,
}

impl StsClient {
    pub fn new(tls: Arc<ClientConfig>, timeout: Duration) -> Self {
        StsClient {
            tls,
            timeout,
            port: 443,
        }
    }

    /// Finds the policy for `domain`, using and updating `cache`.
    pub async fn policy(
        &self,
        resolver: &dyn Resolver,
        cache: &dyn StsCache,
        domain: &str,
    ) -> StsResult {
        let now = now_secs();
        let txt = match mta_sts::txt_name(domain) {
            Ok(name) => match resolver.txt(&name).await {
                Ok(answer) => TxtLookup::from_records(&answer.records),
                Err(_) => TxtLookup::TempFail,
            },
            Err(_) => TxtLookup::Absent,
        };
        let cached = cache.get(domain);
        match decide(cached.as_ref(), &txt, now) {
            CacheDecision::UseCached => {
                let policy = cached.map(|c| c.policy);
                StsResult {
                    outcome: format!("cached policy ({})", mode_of(policy.as_ref())),
                    policy,
                    temp_fail: false,
                }
            }
            CacheDecision::NoPolicy => StsResult {
                policy: None,
                temp_fail: false,
                outcome: "no policy".into(),
            },
            CacheDecision::TempFail => StsResult {
                policy: None,
                temp_fail: true,
                outcome: "TXT lookup failed, nothing cached".into(),
            },
            CacheDecision::Fetch => {
                let id = match &txt {
                    TxtLookup::Found(r) => r.id.clone(),
                    _ => String::new(),
                };
                let fetched = self.fetch(resolver, domain).await;
                let fetch_error = fetched.as_ref().err().map(ToString::to_string);
                // after_fetch only needs to know that the fetch failed, not why.
                let fetched = fetched.map_err(|e| match e {
                    FetchError::Policy(p) => p,
                    _ => StsError::HttpStatus(0),
                });
                let entry = after_fetch(cached, &id, fetched, now);
                match &entry {
                    Some(e) => cache.put(domain, e.clone()),
                    None => cache.remove(domain),
                }
                let policy = entry.map(|e| e.policy);
                let outcome = match (&fetch_error, &policy) {
                    (None, p) => format!("fetched policy ({})", mode_of(p.as_ref())),
                    (Some(e), Some(p)) => {
                        format!(
                            "fetch failed ({e}); cached policy kept ({})",
                            p.mode.as_str()
                        )
                    }
                    (Some(e), None) => format!("fetch failed ({e}); no policy"),
                };
                StsResult {
                    policy,
                    temp_fail: false,
                    outcome,
                }
            }
        }
    }

    /// Fetches and parses `https://mta-sts.<domain>/.well-known/mta-sts.txt`.
    pub async fn fetch(&self, resolver: &dyn Resolver, domain: &str) -> Result<Policy, FetchError> {
        tokio::time::timeout(self.timeout, self.fetch_inner(resolver, domain))
            .await
            .map_err(|_| FetchError::Timeout)?
    }

    async fn fetch_inner(
        &self,
        resolver: &dyn Resolver,
        domain: &str,
    ) -> Result<Policy, FetchError> {
        let host = mta_sts::policy_host(domain)?;
        let ips = resolver.ip(&host).await?;
        let ip = *ips.records.first().ok_or(FetchError::NoAddress)?;
        let tcp = TcpStream::connect(SocketAddr::new(ip, self.port))
            .await
            .map_err(|e| FetchError::Io(e.to_string()))?;
        let name = ServerName::try_from(host.clone()).map_err(|e| FetchError::Io(e.to_string()))?;
        let tls = TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| FetchError::Tls(e.to_string()))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| FetchError::Io(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = hyper::Request::get("/.well-known/mta-sts.txt")
            .header(hyper::header::HOST, host.as_str())
            .header(hyper::header::USER_AGENT, "phigate")
            .body(Empty::<Bytes>::new())
            .map_err(|e| FetchError::Io(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| FetchError::Io(e.to_string()))?;
        let status = resp.status().as_u16();
        let ctype = resp
            .headers()
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut body = Vec::new();
        let mut incoming = resp.into_body();
        while let Some(frame) = incoming.frame().await {
            let frame = frame.map_err(|e| FetchError::Io(e.to_string()))?;
            if let Some(chunk) = frame.data_ref() {
                mta_sts::append_body_chunk(&mut body, chunk)?;
            }
        }
        Ok(mta_sts::policy_from_response(
            status,
            ctype.as_deref(),
            &body,
        )?)
    }
}

fn mode_of(p: Option<&Policy>) -> &'static str {
    p.map(|p| p.mode.as_str()).unwrap_or("none")
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("policy fetch timed out")]
    Timeout,
    #[error("policy host has no address")]
    NoAddress,
    #[error("{0}")]
    Dns(#[from] DnsError),
    #[error("policy host TLS: {0}")]
    Tls(String),
    #[error("policy fetch: {0}")]
    Io(String),
    #[error("{0}")]
    Policy(#[from] StsError),
}
