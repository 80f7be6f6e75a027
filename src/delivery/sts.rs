//! MTA-STS policy discovery (RFC 8461 §3): `_mta-sts` TXT, HTTPS fetch, cache.
//!
//! The rules (parsing, cache decisions, MX matching) live in `tls::mta_sts`; this module
//! does the I/O. The fetch is a single HTTP/1.1 GET over tokio-rustls with hyper: WebPKI
//! (plus the optional extra CA bundle) for `mta-sts.<domain>`, no redirects followed, body
//! limit checked chunk by chunk, one overall timeout.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use rustls::ClientConfig;

use crate::dns::{DnsError, Resolver};
use crate::tls::https::{HttpsClient, HttpsError, Resolve};
use crate::tls::mta_sts::{
    self, after_fetch, decide, CacheDecision, CachedPolicy, Policy, StsError, TxtLookup,
};
use crate::tls::rpt::ResultType;
use crate::types::now_secs;

/// A cached policy and its refresh bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheEntry {
    pub cached: CachedPolicy,
    /// Unix second from which the policy is re-fetched proactively (before it expires,
    /// jittered so many domains do not refresh at once).
    pub refresh_at: u64,
    /// Failed fetches in a row since the last success.
    pub failures: u32,
    /// No new fetch attempt before this Unix second (backoff after failures).
    pub retry_at: u64,
}

impl CacheEntry {
    /// The entry for a policy fetched successfully at `now`.
    pub fn fetched(cached: CachedPolicy) -> Self {
        let jitter_unit = rand::random::<u64>();
        CacheEntry {
            refresh_at: refresh_at(cached.fetched_at, cached.policy.max_age, jitter_unit),
            cached,
            failures: 0,
            retry_at: 0,
        }
    }

    /// This entry after another failed fetch at `now`.
    pub fn failed(mut self, now: u64) -> Self {
        self.failures = self.failures.saturating_add(1);
        self.retry_at = now.saturating_add(backoff(self.failures, rand::random::<u64>()));
        self
    }
}

/// When to refresh a policy fetched at `fetched_at`: a quarter of `max_age` (at most a
/// day) before expiry, minus up to half that margin of jitter (`jitter` is any random u64).
pub fn refresh_at(fetched_at: u64, max_age: u64, jitter: u64) -> u64 {
    let max_age = max_age.min(mta_sts::MAX_MAX_AGE);
    let margin = (max_age / 4).min(86_400);
    let spread = margin / 2 + 1;
    fetched_at
        .saturating_add(max_age)
        .saturating_sub(margin)
        .saturating_sub(jitter % spread)
}

/// Wait after the `failures`-th failed fetch in a row: 1 min doubling to at most 6 h,
/// plus up to a quarter more of jitter.
pub fn backoff(failures: u32, jitter: u64) -> u64 {
    let base = 60u64
        .saturating_mul(1u64 << failures.saturating_sub(1).min(20))
        .min(6 * 3600);
    base + jitter % (base / 4 + 1)
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("MTA-STS cache: {0}")]
pub struct StsCacheError(pub String);

pub type CacheFuture<'a> = Pin<Box<dyn Future<Output = Result<(), StsCacheError>> + Send + 'a>>;

/// Where cached policies live: memory, or the spool so they survive restarts
/// ([`super::sts_store::SpoolStsCache`]).
pub trait StsCache: Send + Sync {
    fn get(&self, domain: &str) -> Option<CacheEntry>;
    fn put<'a>(&'a self, domain: &'a str, entry: CacheEntry) -> CacheFuture<'a>;
    fn remove<'a>(&'a self, domain: &'a str) -> CacheFuture<'a>;
}

/// Process-lifetime cache.
#[derive(Debug, Default)]
pub struct MemoryStsCache(Mutex<HashMap<String, CacheEntry>>);

impl MemoryStsCache {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, CacheEntry>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl StsCache for MemoryStsCache {
    fn get(&self, domain: &str) -> Option<CacheEntry> {
        self.map().get(domain).cloned()
    }
    fn put<'a>(&'a self, domain: &'a str, entry: CacheEntry) -> CacheFuture<'a> {
        self.map().insert(domain.to_string(), entry);
        Box::pin(async { Ok(()) })
    }
    fn remove<'a>(&'a self, domain: &'a str) -> CacheFuture<'a> {
        self.map().remove(domain);
        Box::pin(async { Ok(()) })
    }
}

/// The policy in force for a domain and how it was obtained (for the per-hop record).
#[derive(Debug, Clone)]
pub struct StsResult {
    /// None: the domain has no policy (or `TempFail` below).
    pub policy: Option<Policy>,
    pub temp_fail: bool,
    pub outcome: String,
    /// The domain publishes a policy but none could be fetched (and none is cached):
    /// how TLS-RPT reports that (delivery goes on as without a policy).
    pub fetch_failure: Option<ResultType>,
}

pub struct StsClient {
    http: HttpsClient,
    /// Policy host → the addresses `fetch` resolved for it, read by the HTTPS client.
    pinned: Arc<Mutex<HashMap<String, Vec<IpAddr>>>>,
    timeout: Duration,
    /// 443 except in tests.
    pub port: u16,
}

impl StsClient {
    pub fn new(tls: Arc<ClientConfig>, timeout: Duration) -> Self {
        let pinned: Arc<Mutex<HashMap<String, Vec<IpAddr>>>> = Arc::default();
        let table = pinned.clone();
        let resolve = Resolve::With(Arc::new(move |host: String| {
            let ips = table
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&host)
                .cloned()
                .unwrap_or_default();
            Box::pin(async move { Ok(ips) })
        }));
        StsClient {
            http: HttpsClient::new(tls, resolve, false, timeout),
            pinned,
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
        let txt = self.txt(resolver, domain).await;
        let entry = cache.get(domain);
        let cached = entry.as_ref().map(|e| e.cached.clone());
        match decide(cached.as_ref(), &txt, now) {
            CacheDecision::UseCached => {
                let due = entry
                    .as_ref()
                    .is_some_and(|e| now >= e.refresh_at && now >= e.retry_at);
                if due {
                    let id = match &txt {
                        TxtLookup::Found(r) => r.id.clone(),
                        _ => cached
                            .as_ref()
                            .map(|c| c.txt_id.clone())
                            .unwrap_or_default(),
                    };
                    return self
                        .fetch_and_store(resolver, cache, domain, entry, &id, now)
                        .await;
                }
                let policy = cached.map(|c| c.policy);
                StsResult {
                    fetch_failure: None,
                    outcome: format!("cached policy ({})", mode_of(policy.as_ref())),
                    policy,
                    temp_fail: false,
                }
            }
            CacheDecision::NoPolicy => StsResult {
                fetch_failure: None,
                policy: None,
                temp_fail: false,
                outcome: "no policy".into(),
            },
            CacheDecision::TempFail => StsResult {
                fetch_failure: None,
                policy: None,
                temp_fail: true,
                outcome: "TXT lookup failed, nothing cached".into(),
            },
            CacheDecision::Fetch => {
                // The TXT id changed, but the last fetch failed recently: keep enforcing
                // the cached policy until the backoff ends rather than fetch every time.
                if let Some(e) = entry
                    .as_ref()
                    .filter(|e| e.cached.is_fresh(now) && now < e.retry_at)
                {
                    return StsResult {
                        fetch_failure: None,
                        policy: Some(e.cached.policy.clone()),
                        temp_fail: false,
                        outcome: format!(
                            "fetch backing off after {} failure(s); cached policy kept ({})",
                            e.failures,
                            e.cached.policy.mode.as_str()
                        ),
                    };
                }
                let id = match &txt {
                    TxtLookup::Found(r) => r.id.clone(),
                    _ => String::new(),
                };
                self.fetch_and_store(resolver, cache, domain, entry, &id, now)
                    .await
            }
        }
    }

    /// Fetches now, whatever the cache says (`phigate sts refresh`). Needs the TXT record.
    pub async fn refresh(
        &self,
        resolver: &dyn Resolver,
        cache: &dyn StsCache,
        domain: &str,
    ) -> StsResult {
        let now = now_secs();
        match self.txt(resolver, domain).await {
            TxtLookup::Found(r) => {
                let entry = cache.get(domain);
                self.fetch_and_store(resolver, cache, domain, entry, &r.id, now)
                    .await
            }
            TxtLookup::Absent => StsResult {
                fetch_failure: None,
                policy: None,
                temp_fail: false,
                outcome: "no valid _mta-sts TXT record; nothing fetched".into(),
            },
            TxtLookup::TempFail => StsResult {
                fetch_failure: None,
                policy: None,
                temp_fail: true,
                outcome: "TXT lookup failed; nothing fetched".into(),
            },
        }
    }

    async fn txt(&self, resolver: &dyn Resolver, domain: &str) -> TxtLookup {
        match mta_sts::txt_name(domain) {
            Ok(name) => match resolver.txt(&name).await {
                Ok(answer) => TxtLookup::from_records(&answer.records),
                Err(_) => TxtLookup::TempFail,
            },
            Err(_) => TxtLookup::Absent,
        }
    }

    async fn fetch_and_store(
        &self,
        resolver: &dyn Resolver,
        cache: &dyn StsCache,
        domain: &str,
        entry: Option<CacheEntry>,
        id: &str,
        now: u64,
    ) -> StsResult {
        let fetched = self.fetch(resolver, domain).await;
        let fetch_error = fetched.as_ref().err().map(ToString::to_string);
        let fetch_kind = fetched.as_ref().err().map(FetchError::result_type);
        // after_fetch only needs to know that the fetch failed, not why.
        let fetched = fetched.map_err(|e| match e {
            FetchError::Policy(p) => p,
            _ => StsError::HttpStatus(0),
        });
        let cached = entry.as_ref().map(|e| e.cached.clone());
        let kept = after_fetch(cached, id, fetched, now);
        let new_entry = match (&fetch_error, kept) {
            (None, Some(c)) => Some(CacheEntry::fetched(c)),
            // Failure: the old policy (if still fresh) stays, with its old id, backing off.
            (Some(_), Some(_)) => entry.map(|e| e.failed(now)),
            (_, None) => None,
        };
        let stored = match &new_entry {
            Some(e) => cache.put(domain, e.clone()).await,
            None => cache.remove(domain).await,
        };
        if let Err(e) = stored {
            tracing::warn!(error = %e, "MTA-STS policy cache not updated");
        }
        let policy = new_entry.map(|e| e.cached.policy);
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
            fetch_failure: if policy.is_none() { fetch_kind } else { None },
            policy,
            temp_fail: false,
            outcome,
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
        // Resolved here, with phigate's own resolver, so a DNS failure is reported as one;
        // the HTTPS client then connects to exactly these addresses.
        let ips = resolver.ip(&host).await?;
        if ips.records.is_empty() {
            return Err(FetchError::NoAddress);
        }
        self.pinned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(host.clone(), ips.records);
        let uri = if self.port == 443 {
            format!("https://{host}/.well-known/mta-sts.txt")
        } else {
            format!("https://{host}:{}/.well-known/mta-sts.txt", self.port)
        };
        let req = hyper::Request::get(uri)
            .header(hyper::header::USER_AGENT, "phigate")
            .body(Full::new(Bytes::new()))
            .map_err(|e| FetchError::Io(e.to_string()))?;
        let resp = match self.http.send(req, mta_sts::MAX_POLICY_BYTES).await {
            Ok(r) => r,
            Err(HttpsError::TooLarge(_)) => return Err(mta_sts::StsError::PolicyTooLarge.into()),
            Err(HttpsError::Timeout) => return Err(FetchError::Timeout),
            Err(HttpsError::Request(e)) => return Err(FetchError::Io(e)),
        };
        Ok(mta_sts::policy_from_response(
            resp.status,
            resp.content_type.as_deref(),
            &resp.body,
        )?)
    }
}

fn mode_of(p: Option<&Policy>) -> &'static str {
    p.map(|p| p.mode.as_str()).unwrap_or("none")
}

impl FetchError {
    /// RFC 8460 §4.3.2.2: a policy that came back but is not valid, a policy host whose
    /// certificate fails WebPKI, or any other failure to fetch.
    pub fn result_type(&self) -> ResultType {
        match self {
            FetchError::Policy(StsError::HttpStatus(_)) => ResultType::StsPolicyFetchError,
            FetchError::Policy(_) => ResultType::StsPolicyInvalid,
            FetchError::Tls(_) => ResultType::StsWebpkiInvalid,
            // The HTTPS client reports a rejected certificate only in its error text.
            FetchError::Io(e) if e.contains("invalid peer certificate") => {
                ResultType::StsWebpkiInvalid
            }
            _ => ResultType::StsPolicyFetchError,
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::mta_sts::Mode;

    #[test]
    fn fetch_errors_as_tlsrpt_results() {
        use crate::tls::rpt::ResultType as R;
        let invalid = FetchError::Policy(StsError::MissingField("mode"));
        assert_eq!(invalid.result_type(), R::StsPolicyInvalid);
        let status = FetchError::Policy(StsError::HttpStatus(404));
        assert_eq!(status.result_type(), R::StsPolicyFetchError);
        assert_eq!(FetchError::Timeout.result_type(), R::StsPolicyFetchError);
        let cert = FetchError::Io(
            "client error (Connect): invalid peer certificate: UnknownIssuer".into(),
        );
        assert_eq!(cert.result_type(), R::StsWebpkiInvalid);
    }

    #[test]
    fn refresh_comes_before_expiry_with_bounded_jitter() {
        let day = 86_400;
        // One week: margin one day, jitter up to half a day.
        for j in [0, 1, 12_345, u64::MAX] {
            let at = refresh_at(1000, 7 * day, j);
            assert!(at <= 1000 + 6 * day, "{at}");
            assert!(at >= 1000 + 6 * day - day / 2, "{at}");
        }
        // Short max_age: still strictly before expiry.
        assert!(refresh_at(1000, 100, 0) < 1100);
        assert_eq!(refresh_at(1000, 0, 7), 1000);
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff(1, 0), 60);
        assert_eq!(backoff(2, 0), 120);
        assert_eq!(backoff(3, 0), 240);
        assert_eq!(backoff(40, 0), 6 * 3600);
        assert!(backoff(1, u64::MAX) <= 75);
        assert!(backoff(40, 12_345) <= 6 * 3600 + 5400);
    }

    #[test]
    fn failed_entry_counts_and_waits() {
        let cached = CachedPolicy {
            policy: Policy::parse(
                "version: STSv1\nmode: enforce\nmx: mx.example\nmax_age: 86400\n",
            )
            .expect("policy"),
            txt_id: "1".into(),
            fetched_at: 1000,
        };
        let e = CacheEntry::fetched(cached);
        assert_eq!(e.failures, 0);
        assert!(e.refresh_at < 1000 + 86_400);
        let e = e.failed(5000).failed(5100);
        assert_eq!(e.failures, 2);
        assert!(e.retry_at >= 5100 + 120 && e.retry_at <= 5100 + 151);
    }

    fn client() -> StsClient {
        let tls = crate::tls::client::with_roots(rustls::RootCertStore::empty()).expect("tls");
        StsClient::new(tls, Duration::from_secs(2))
    }

    fn entry(id: &str, fetched_at: u64, max_age: u64) -> CacheEntry {
        let text = format!("version: STSv1\nmode: enforce\nmx: mx.example\nmax_age: {max_age}\n");
        CacheEntry::fetched(CachedPolicy {
            policy: Policy::parse(&text).expect("policy"),
            txt_id: id.into(),
            fetched_at,
        })
    }

    /// The policy host has no address, so every fetch fails at once.
    fn resolver(id: &str) -> crate::dns::StaticResolver {
        crate::dns::StaticResolver::new().with_txt(
            "_mta-sts.example",
            crate::dns::DnssecStatus::Insecure,
            &[&format!("v=STSv1; id={id};")],
        )
    }

    #[tokio::test]
    async fn failed_fetch_keeps_policy_and_backs_off() {
        let now = now_secs();
        let cache = MemoryStsCache::default();
        cache
            .put("example", entry("old", now - 10, 86_400))
            .await
            .expect("put");
        let r = resolver("new");
        let first = client().policy(&r, &cache, "example").await;
        assert!(
            first.outcome.starts_with("fetch failed"),
            "{}",
            first.outcome
        );
        assert_eq!(first.policy.map(|p| p.mode), Some(Mode::Enforce));
        let e = cache.get("example").expect("entry kept");
        assert_eq!((e.failures, e.cached.txt_id.as_str()), (1, "old"));
        assert!(e.retry_at >= now + 60);
        // Within the backoff no new fetch is made and the policy still applies.
        let second = client().policy(&r, &cache, "example").await;
        assert!(second.outcome.contains("backing off"), "{}", second.outcome);
        assert_eq!(second.policy.map(|p| p.mode), Some(Mode::Enforce));
        assert_eq!(cache.get("example").map(|e| e.failures), Some(1));
    }

    #[tokio::test]
    async fn refresh_is_attempted_before_expiry() {
        let now = now_secs();
        let cache = MemoryStsCache::default();
        // Fetched 23 h ago with a one-day max_age: past its refresh point, not expired.
        let e = entry("same", now - 23 * 3600, 86_400);
        assert!(e.refresh_at <= now && e.cached.is_fresh(now));
        cache.put("example", e).await.expect("put");
        let r = resolver("same");
        let out = client().policy(&r, &cache, "example").await;
        assert!(out.outcome.starts_with("fetch failed"), "{}", out.outcome);
        assert_eq!(out.policy.map(|p| p.mode), Some(Mode::Enforce));
        assert_eq!(cache.get("example").map(|e| e.failures), Some(1));
        // A fresh entry far from its refresh point is used without any fetch.
        cache
            .put("example", entry("same", now, 86_400))
            .await
            .expect("put");
        let out = client().policy(&r, &cache, "example").await;
        assert!(out.outcome.starts_with("cached policy"), "{}", out.outcome);
    }
}
