//! Outbound delivery: routes a message to the recipient domain's MX hosts (or a smarthost)
//! and sends it only over TLS authenticated as the domain's DANE / MTA-STS / level demands.
//!
//! Failure policy (like Postfix): TLS, verification and STARTTLS problems try the next MX
//! and then defer with a 4.7.x reply; only the queue bounces, at expiry. Permanent results
//! come from the receiving server's 5xx replies, a null MX (5.1.10) or a REQUIRETLS message
//! that no verified, REQUIRETLS-capable server would take (5.7.30).
//!
//! The path of one [`Job`]: `deliver` groups recipients by domain → `mx` resolves the
//! route and decides each host's [`level::Requirement`] → `attempt` connects (or reuses a
//! pooled session), verifies TLS and runs the transaction. `check` is the same path
//! without sending, for `phigate tls check`.

mod attempt;
mod check;
pub mod client;
pub mod level;
mod mx;
mod notice;
pub mod observe;
mod pool;
pub mod route;
pub mod sts;
pub mod sts_store;
mod transport;
mod verifiers;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use thiserror::Error;
use tokio::sync::Semaphore;

use crate::config::{DeliveryConfig, DeliveryMode, OutboundTls};
use crate::dns::{DnsError, DnssecStatus, HickoryResolver, Resolver, ResolverSettings};
use crate::types::{domain_of, Reply, TlsLevel};
use level::Requirement;
use mx::Plan;
use pool::Pool;
use route::NextHop;
use sts::{MemoryStsCache, StsCache, StsClient};
use verifiers::Verifiers;

pub use check::{HostCheck, TlsCheckReport};
pub use transport::{
    BoxFuture, DkimSign, Job, NoticeJob, SandboxKeys, SandboxTransport, Transport,
};

#[derive(Debug, Error)]
pub enum DeliveryError {
    #[error("delivery configuration: {0}")]
    Config(String),
    #[error("DNSSEC validation does not work ({0}); tls_level {1:?} needs it, refusing to start")]
    DnssecUnavailable(String, TlsLevel),
    #[error("{0}")]
    Dns(#[from] DnsError),
}

pub use crate::types::{AttemptResult, HopInfo, RcptOutcome};

/// Smarthost AUTH credentials.
#[derive(Clone)]
struct Credentials {
    user: String,
    password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials(..)")
    }
}

pub struct Deliverer {
    cfg: DeliveryConfig,
    resolver: Arc<dyn Resolver>,
    sts_cache: Arc<dyn StsCache>,
    sts: StsClient,
    verifiers: Verifiers,
    credentials: Option<Credentials>,
    helo: String,
    global: Arc<Semaphore>,
    per_destination: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// Idle sessions kept for the next message to the same host.
    pool: Pool,
    /// Portal notices may go without TLS when the next hop offers none.
    notice_plaintext: bool,
    /// Told the TLS result of every new MX connection (TLS-RPT).
    observer: Option<Arc<dyn observe::TlsObserver>>,
}

impl Deliverer {
    /// Builds the deliverer with hickory DNS and an in-memory MTA-STS cache. When any
    /// configured level can need DANE (`auto`, `dane-only`), DNSSEC validation is probed
    /// first and start-up fails if it does not work.
    pub async fn new(cfg: &DeliveryConfig) -> Result<Self, DeliveryError> {
        let settings = ResolverSettings {
            servers: cfg.dns_servers.clone(),
            trust_anchor: cfg.dnssec_trust_anchor.clone(),
            timeout: Some(cfg.connect_timeout.duration().min(Duration::from_secs(10))),
        };
        let resolver = HickoryResolver::new(&settings)?;
        if cfg.mode == DeliveryMode::Mx {
            let needs = std::iter::once(cfg.tls_level)
                .chain(cfg.domains.values().filter_map(|d| d.tls_level))
                .find(|l| matches!(l, TlsLevel::Auto | TlsLevel::DaneOnly));
            if let Some(level) = needs {
                let zone = match &cfg.dnssec_trust_anchor {
                    Some(path) => anchor_zone(path)?,
                    None => ".".to_string(),
                };
                let status = resolver.probe(&zone).await;
                if status != Ok(DnssecStatus::Secure) {
                    let why = match status {
                        Ok(s) => format!("zone {zone} validates as {}", s.as_str()),
                        Err(e) => e.to_string(),
                    };
                    return Err(DeliveryError::DnssecUnavailable(why, level));
                }
            }
        }
        Self::with_parts(cfg, Arc::new(resolver), Arc::new(MemoryStsCache::default()))
    }

    /// Builds the deliverer around a given resolver and policy cache (tests, the spool's
    /// persistent cache). No DNSSEC probe.
    pub fn with_parts(
        cfg: &DeliveryConfig,
        resolver: Arc<dyn Resolver>,
        sts_cache: Arc<dyn StsCache>,
    ) -> Result<Self, DeliveryError> {
        let verifiers = Verifiers::new(cfg).map_err(DeliveryError::Config)?;
        let credentials = match cfg
            .smarthost
            .as_ref()
            .and_then(|s| s.credentials_file.as_ref())
        {
            Some(path) => Some(read_credentials(path)?),
            None => None,
        };
        if cfg.mode == DeliveryMode::Smarthost && cfg.smarthost.is_none() {
            return Err(DeliveryError::Config(
                "mode = \"smarthost\" needs a [delivery.smarthost] section".into(),
            ));
        }
        for (domain, o) in &cfg.domains {
            if let Some(r) = &o.route {
                if route::parse_route(r, cfg.mx_port).is_none() {
                    return Err(DeliveryError::Config(format!(
                        "delivery.domains.\"{domain}\".route `{r}` is not host[:port]"
                    )));
                }
            }
        }
        let sts = StsClient::new(verifiers.sts_config(), cfg.sts_fetch_timeout.duration());
        Ok(Deliverer {
            cfg: cfg.clone(),
            resolver,
            sts_cache,
            sts,
            verifiers,
            credentials,
            helo: "localhost".into(),
            global: Arc::new(Semaphore::new(cfg.max_outbound_connections.max(1))),
            per_destination: Mutex::new(HashMap::new()),
            pool: Pool::new(pool::IDLE_TIMEOUT, pool::MAX_USES),
            notice_plaintext: false,
            observer: None,
        })
    }

    /// Let portal notices go without TLS to next hops that offer none
    /// (`[portal] notify_without_tls`).
    pub fn with_notice_plaintext(mut self, allow: bool) -> Self {
        self.notice_plaintext = allow;
        self
    }

    /// The name sent in EHLO (the gateway's `server.hostname`).
    pub fn with_helo_name(mut self, name: &str) -> Self {
        self.helo = name.to_string();
        self
    }

    /// Connection reuse limits: idle sessions close after `idle`, and a session carries at
    /// most `max_uses` transactions (1 turns reuse off).
    pub fn with_connection_reuse(mut self, idle: Duration, max_uses: u32) -> Self {
        self.pool = Pool::new(idle, max_uses);
        self
    }

    /// Idle outbound sessions currently kept for reuse.
    pub fn idle_connections(&self) -> usize {
        self.pool.idle_count()
    }

    /// Port of MTA-STS policy hosts (443; tests use loopback ports).
    pub fn with_sts_port(mut self, port: u16) -> Self {
        self.sts.port = port;
        self
    }

    /// Replaces the MTA-STS policy cache (the server passes the spool's persistent one).
    pub fn with_sts_cache(mut self, cache: Arc<dyn StsCache>) -> Self {
        self.sts_cache = cache;
        self
    }

    /// Reports each MX connection's TLS result to `observer` (TLS-RPT aggregation).
    pub fn with_tls_observer(mut self, observer: Arc<dyn observe::TlsObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// The resolver delivery uses (TLS-RPT looks its records up with the same DNS).
    pub fn resolver(&self) -> Arc<dyn Resolver> {
        self.resolver.clone()
    }

    /// The WebPKI client configuration (with `extra_ca_file`) MTA-STS fetches use; also
    /// right for posting TLS-RPT reports.
    pub fn https_tls_config(&self) -> Arc<rustls::ClientConfig> {
        self.verifiers.sts_config()
    }

    /// The MTA-STS policy cache (for `phigate sts show|refresh|purge`).
    pub fn sts_cache(&self) -> &Arc<dyn StsCache> {
        &self.sts_cache
    }

    /// Fetches `domain`'s MTA-STS policy now and stores it (`phigate sts refresh`).
    pub async fn sts_refresh(&self, domain: &str) -> sts::StsResult {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        self.sts
            .refresh(self.resolver.as_ref(), self.sts_cache.as_ref(), &domain)
            .await
    }

    /// Delivers one message to `rcpts` (indexes into `env.recipients`), grouping them by
    /// domain. Returns one outcome per index given.
    pub async fn deliver(&self, job: Job<'_>) -> Vec<RcptOutcome> {
        let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        let mut out = Vec::new();
        for &i in job.rcpts {
            match job.env.recipients.get(i) {
                Some(r) => {
                    let key = match self.cfg.mode {
                        DeliveryMode::Smarthost => String::new(),
                        _ => domain_of(&r.address),
                    };
                    groups.entry(key).or_default().push(i);
                }
                None => out.push(RcptOutcome {
                    index: i,
                    result: AttemptResult::Permanent(Reply::new(
                        554,
                        "5.3.0",
                        "no such recipient index",
                    )),
                    hop: None,
                }),
            }
        }
        for (domain, idxs) in groups {
            out.extend(self.deliver_group(job.with_rcpts(&idxs), &domain).await);
        }
        out
    }

    fn destination_permit(&self, key: &str) -> Arc<Semaphore> {
        let mut map = self
            .per_destination
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        map.entry(key.to_string())
            .or_insert_with(|| {
                Arc::new(Semaphore::new(self.cfg.per_destination_connections.max(1)))
            })
            .clone()
    }

    fn level_for(&self, domain: &str, floor: Option<TlsLevel>, requiretls: bool) -> TlsLevel {
        let mut level = self.cfg.tls_level;
        if let Some(l) = self.cfg.domains.get(domain).and_then(|o| o.tls_level) {
            level = level.max(l);
        }
        if let Some(f) = floor {
            level = level.max(f);
        }
        if requiretls {
            // RFC 8689 §4.2.1: the server must be authenticated.
            level = level.max(TlsLevel::Verify);
        }
        level
    }

    async fn deliver_group(&self, job: Job<'_>, domain: &str) -> Vec<RcptOutcome> {
        match self.cfg.mode {
            DeliveryMode::Sandbox => job.all(
                AttemptResult::Transient(Reply::new(451, "4.3.0", "delivery mode is sandbox")),
                None,
            ),
            DeliveryMode::Smarthost => self.deliver_smarthost(job).await,
            DeliveryMode::Mx => self.deliver_mx(job, domain).await,
        }
    }

    async fn deliver_smarthost(&self, job: Job<'_>) -> Vec<RcptOutcome> {
        let Some(sh) = &self.cfg.smarthost else {
            return job.all(
                AttemptResult::Transient(Reply::new(451, "4.3.5", "no smarthost configured")),
                None,
            );
        };
        let hop = NextHop {
            name: sh.host.trim_end_matches('.').to_ascii_lowercase(),
            port: sh.port,
            name_secure: false,
        };
        // The smarthost is always verified (WebPKI + its CA file): AUTH credentials must
        // never go to an impostor.
        let plan = Plan {
            requirement: Requirement::Pkix,
            dane: "not applicable (smarthost)".into(),
            policy: observe::TlsPolicy::none(),
        };
        let implicit = sh.tls == OutboundTls::Implicit;
        self.try_hops(
            job,
            "smarthost",
            &[(hop, Ok(plan))],
            "not applicable (smarthost)",
            implicit,
            None,
        )
        .await
    }
}

impl Transport for Deliverer {
    fn deliver<'a>(&'a self, job: Job<'a>) -> BoxFuture<'a, Vec<RcptOutcome>> {
        Box::pin(Deliverer::deliver(self, job))
    }

    fn deliver_notice<'a>(&'a self, job: NoticeJob<'a>) -> BoxFuture<'a, Vec<RcptOutcome>> {
        Box::pin(Deliverer::notify(self, job))
    }
}

fn anchor_zone(path: &std::path::Path) -> Result<String, DeliveryError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| DeliveryError::Config(format!("trust anchor {}: {e}", path.display())))?;
    text.lines()
        .map(|l| l.split(';').next().unwrap_or("").trim())
        .find(|l| !l.is_empty() && !l.starts_with('$'))
        .and_then(|l| l.split_whitespace().next())
        .map(str::to_string)
        .ok_or_else(|| DeliveryError::Config(format!("trust anchor {} is empty", path.display())))
}

fn read_credentials(path: &std::path::Path) -> Result<Credentials, DeliveryError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        DeliveryError::Config(format!("smarthost credentials {}: {e}", path.display()))
    })?;
    let line = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    let (user, password) = line.trim_end().split_once(':').ok_or_else(|| {
        DeliveryError::Config(format!(
            "smarthost credentials {}: expected `user:password`",
            path.display()
        ))
    })?;
    Ok(Credentials {
        user: user.to_string(),
        password: password.to_string(),
    })
}
