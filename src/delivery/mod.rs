//! Outbound delivery: routes a message to the recipient domain's MX hosts (or a smarthost)
//! and sends it only over TLS authenticated as the domain's DANE / MTA-STS / level demands.
//!
//! Failure policy (like Postfix): TLS, verification and STARTTLS problems try the next MX
//! and then defer with a 4.7.x reply; only the queue bounces, at expiry. Permanent results
//! come from the receiving server's 5xx replies, a null MX (5.1.10) or a REQUIRETLS message
//! that no verified, REQUIRETLS-capable server would take (5.7.30).

pub mod client;
pub mod level;
mod pool;
pub mod route;
pub mod sts;
pub mod sts_store;
mod verifiers;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::ServerName;
use serde::Serialize;
use thiserror::Error;
use tokio::sync::{Semaphore, TryAcquireError};

use crate::config::{DeliveryConfig, DeliveryMode, OutboundTls};
use crate::dns::{DnsError, DnssecStatus, HickoryResolver, Resolver, ResolverSettings};
use crate::types::{domain_of, Envelope, Reply};
use client::{ClientError, PlainClient, TlsClient};
pub use level::TlsLevel;
use level::{DaneState, Requirement, StsState};
use pool::{Lease, Permits, Pool, PoolKey};
use route::{NextHop, RouteError};
use sts::{MemoryStsCache, StsCache, StsClient};
use verifiers::Verifiers;

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

/// Result of `tls_check` for one MX host.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HostCheck {
    pub host: String,
    pub port: u16,
    pub ips: Vec<String>,
    pub address_dnssec: String,
    pub tlsa: Vec<String>,
    pub dane: String,
    pub requirement: String,
    pub connect: String,
    pub would_deliver: bool,
    pub hop: Option<HopInfo>,
}

/// What `phigate tls check DOMAIN` prints.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TlsCheckReport {
    pub domain: String,
    pub level: String,
    pub mx: Vec<String>,
    pub mx_dnssec: String,
    pub route_error: Option<String>,
    pub mta_sts: String,
    pub mta_sts_mode: Option<String>,
    pub mta_sts_mx: Vec<String>,
    pub hosts: Vec<HostCheck>,
    pub would_deliver: bool,
}

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
}

/// A connection to use for one transaction: a kept session or permits to dial a new one.
enum Checkout {
    Reused(Box<Lease>),
    Fresh(Permits),
}

/// A session `open` established, with what its handshake proved.
struct Opened {
    client: TlsClient,
    sts_note: Option<String>,
}

/// A failed try at one host/IP, kept for the deferral reason.
struct Failure {
    hop: HopInfo,
    reason: String,
    tls: bool,
    /// Verification (not connectivity) failure: what REQUIRETLS turns permanent.
    unverified: bool,
}

/// The requirement for one host plus what to record about it.
struct Plan {
    requirement: Requirement,
    dane: String,
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
        })
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
    pub async fn deliver(
        &self,
        env: &Envelope,
        content: &[u8],
        rcpts: &[usize],
        floor: Option<TlsLevel>,
    ) -> Vec<RcptOutcome> {
        let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        let mut out = Vec::new();
        for &i in rcpts {
            match env.recipients.get(i) {
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
            out.extend(
                self.deliver_group(env, content, &idxs, &domain, floor)
                    .await,
            );
        }
        out
    }

    fn all(idxs: &[usize], result: AttemptResult, hop: Option<HopInfo>) -> Vec<RcptOutcome> {
        idxs.iter()
            .map(|&index| RcptOutcome {
                index,
                result: result.clone(),
                hop: hop.clone(),
            })
            .collect()
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

    async fn deliver_group(
        &self,
        env: &Envelope,
        content: &[u8],
        idxs: &[usize],
        domain: &str,
        floor: Option<TlsLevel>,
    ) -> Vec<RcptOutcome> {
        match self.cfg.mode {
            DeliveryMode::Sandbox => Self::all(
                idxs,
                AttemptResult::Transient(Reply::new(451, "4.3.0", "delivery mode is sandbox")),
                None,
            ),
            DeliveryMode::Smarthost => self.deliver_smarthost(env, content, idxs, floor).await,
            DeliveryMode::Mx => self.deliver_mx(env, content, idxs, domain, floor).await,
        }
    }

    async fn deliver_smarthost(
        &self,
        env: &Envelope,
        content: &[u8],
        idxs: &[usize],
        _floor: Option<TlsLevel>,
    ) -> Vec<RcptOutcome> {
        let Some(sh) = &self.cfg.smarthost else {
            return Self::all(
                idxs,
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
        };
        let implicit = sh.tls == OutboundTls::Implicit;
        self.try_hops(
            env,
            content,
            idxs,
            "smarthost",
            &[(hop, Ok(plan))],
            "not applicable (smarthost)",
            implicit,
        )
        .await
    }

    async fn deliver_mx(
        &self,
        env: &Envelope,
        content: &[u8],
        idxs: &[usize],
        domain: &str,
        floor: Option<TlsLevel>,
    ) -> Vec<RcptOutcome> {
        let level = self.level_for(domain, floor, env.params.requiretls);
        let override_route = self
            .cfg
            .domains
            .get(domain)
            .and_then(|o| o.route.as_deref())
            .and_then(|r| route::parse_route(r, self.cfg.mx_port));
        let (hops, sts_state, sts_outcome) = match override_route {
            Some(hop) => (
                vec![hop],
                StsState::None,
                "not checked (configured route)".to_string(),
            ),
            None => {
                let route =
                    match route::resolve(self.resolver.as_ref(), domain, self.cfg.mx_port).await {
                        Ok(r) => r,
                        Err(RouteError::NullMx) => {
                            return Self::all(
                                idxs,
                                AttemptResult::Permanent(Reply::new(
                                    556,
                                    "5.1.10",
                                    "recipient domain accepts no mail (null MX)",
                                )),
                                None,
                            )
                        }
                        Err(RouteError::Dns(DnsError::Bogus(_))) => {
                            return Self::all(
                                idxs,
                                AttemptResult::Transient(Reply::new(
                                    451,
                                    "4.7.5",
                                    "DNSSEC validation of the MX records failed",
                                )),
                                None,
                            )
                        }
                        Err(RouteError::NoHosts) => {
                            return Self::all(
                                idxs,
                                AttemptResult::Transient(Reply::new(
                                    451,
                                    "4.4.4",
                                    "no MX or address records for the domain",
                                )),
                                None,
                            )
                        }
                        Err(e) => {
                            return Self::all(
                                idxs,
                                AttemptResult::Transient(Reply::new(451, "4.4.3", e.to_string())),
                                None,
                            )
                        }
                    };
                let sts = self
                    .sts
                    .policy(self.resolver.as_ref(), self.sts_cache.as_ref(), domain)
                    .await;
                let state = if sts.temp_fail {
                    StsState::TempFail
                } else {
                    match sts.policy {
                        Some(p) => StsState::Policy(p),
                        None => StsState::None,
                    }
                };
                (route.hops, state, sts.outcome)
            }
        };
        let mut planned = Vec::new();
        for hop in hops {
            let plan = self.plan_hop(&hop, level, &sts_state).await;
            planned.push((hop, plan));
        }
        self.try_hops(env, content, idxs, domain, &planned, &sts_outcome, false)
            .await
    }

    /// DANE state and requirement for one host, or why it cannot be used.
    async fn plan_hop(
        &self,
        hop: &NextHop,
        level: TlsLevel,
        sts: &StsState,
    ) -> Result<Plan, String> {
        let dane = self.dane_state(hop).await;
        let dane_text = match &dane {
            DaneState::Usable(t) => format!(
                "{} usable secure TLSA record(s)",
                t.iter().filter(|r| r.is_usable()).count()
            ),
            DaneState::Unusable => "secure TLSA, none usable".into(),
            DaneState::None => "no secure TLSA".into(),
            DaneState::Bogus => "TLSA lookup bogus or failed".into(),
        };
        match level::decide(level, &dane, sts, &hop.name) {
            Ok(requirement) => Ok(Plan {
                requirement,
                dane: dane_text,
            }),
            Err(r) => Err(r.reason().to_string()),
        }
    }

    async fn dane_state(&self, hop: &NextHop) -> DaneState {
        if !hop.name_secure || hop.name.parse::<IpAddr>().is_ok() {
            return DaneState::None;
        }
        // TLSA only counts when the host's address records are secure (RFC 7672 §2.2.2).
        match self.resolver.ip(&hop.name).await {
            Ok(a) if a.status == DnssecStatus::Secure => {}
            Ok(_) => return DaneState::None,
            Err(DnsError::Bogus(_)) => return DaneState::Bogus,
            Err(_) => return DaneState::None,
        }
        match self
            .resolver
            .tlsa(&format!("_{}._tcp.{}", hop.port, hop.name))
            .await
        {
            Ok(a) if a.status == DnssecStatus::Secure && !a.records.is_empty() => {
                if a.records.iter().any(|t| t.is_usable()) {
                    DaneState::Usable(a.records)
                } else {
                    DaneState::Unusable
                }
            }
            Ok(_) => DaneState::None,
            // RFC 7672 §2.1.1: a failed (not empty) TLSA lookup must not fall back.
            Err(_) => DaneState::Bogus,
        }
    }

    async fn host_ips(&self, hop: &NextHop) -> Result<Vec<IpAddr>, String> {
        if let Ok(ip) = hop.name.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        match self.resolver.ip(&hop.name).await {
            Ok(a) if a.records.is_empty() => Err("no address records".into()),
            Ok(a) => Ok(a.records),
            Err(e) => Err(e.to_string()),
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn try_hops(
        &self,
        env: &Envelope,
        content: &[u8],
        idxs: &[usize],
        destination: &str,
        planned: &[(NextHop, Result<Plan, String>)],
        sts_outcome: &str,
        implicit: bool,
    ) -> Vec<RcptOutcome> {
        let dest_sem = self.destination_permit(destination);
        let mut failures: Vec<Failure> = Vec::new();
        for (hop, plan) in planned {
            let base = HopInfo {
                mx_host: hop.name.clone(),
                mta_sts: sts_outcome.to_string(),
                ..HopInfo::default()
            };
            let plan = match plan {
                Ok(p) => p,
                Err(reason) => {
                    failures.push(Failure {
                        hop: base,
                        reason: reason.clone(),
                        tls: true,
                        unverified: true,
                    });
                    continue;
                }
            };
            let ips = match self.host_ips(hop).await {
                Ok(ips) => ips,
                Err(reason) => {
                    failures.push(Failure {
                        hop: base,
                        reason,
                        tls: false,
                        unverified: false,
                    });
                    continue;
                }
            };
            for ip in ips {
                let mut info = base.clone();
                info.ip = ip.to_string();
                info.dane = plan.dane.clone();
                let addr = SocketAddr::new(ip, hop.port);
                let key = PoolKey {
                    destination: destination.to_string(),
                    addr,
                    name: hop.name.clone(),
                    implicit,
                };
                // RFC 8689 messages get a session of their own (issue: never shared).
                let poolable = !env.params.requiretls;
                let Some(checkout) = self
                    .checkout(&key, &plan.requirement, poolable, &dest_sem)
                    .await
                else {
                    continue;
                };
                let (mut lease, reused) = match checkout {
                    Checkout::Reused(lease) => {
                        let facts = lease.client.tls();
                        info.tls_version = facts.version.clone();
                        info.cipher = facts.cipher.clone();
                        info.peer_cert_sha256 = facts.peer_cert_sha256.clone();
                        info.method = lease.method.clone();
                        if let Some(note) = &lease.sts_note {
                            info.mta_sts = format!("{}; {note}", info.mta_sts);
                        }
                        (*lease, true)
                    }
                    Checkout::Fresh(permits) => {
                        match self.open(addr, hop, plan, implicit, &mut info).await {
                            Ok(opened) => (
                                Lease {
                                    client: opened.client,
                                    _permits: permits,
                                    requirement: plan.requirement.clone(),
                                    method: info.method.clone(),
                                    sts_note: opened.sts_note,
                                    uses: 0,
                                },
                                false,
                            ),
                            Err((reason, tls, unverified)) => {
                                failures.push(Failure {
                                    hop: info,
                                    reason,
                                    tls,
                                    unverified,
                                });
                                continue;
                            }
                        }
                    }
                };
                let (out, clean) = self
                    .transact(&mut lease.client, env, content, idxs, plan, info, reused)
                    .await;
                lease.uses += 1;
                self.release(key, lease, clean && poolable).await;
                return out;
            }
        }
        self.deferral(env, idxs, failures)
    }

    /// A kept session for `key` that satisfies `want` and still answers, or permits for a
    /// new connection. Idle sessions hold permits, so when none is free an idle session
    /// nobody here can use is closed rather than waited for. None if the caps are closed.
    async fn checkout(
        &self,
        key: &PoolKey,
        want: &Requirement,
        poolable: bool,
        dest_sem: &Arc<Semaphore>,
    ) -> Option<Checkout> {
        loop {
            if poolable {
                while let Some(mut lease) = self.pool.take(key, want) {
                    if lease.client.probe().await.is_ok() {
                        return Some(Checkout::Reused(Box::new(lease)));
                    }
                    // The server closed it while idle: drop it and look again.
                }
            }
            let returned = self.pool.returned.clone();
            let notified = returned.notified();
            match dest_sem.clone().try_acquire_owned() {
                Ok(destination) => match self.global.clone().try_acquire_owned() {
                    Ok(global) => {
                        return Some(Checkout::Fresh(Permits {
                            _global: global,
                            _destination: destination,
                        }))
                    }
                    Err(TryAcquireError::Closed) => return None,
                    Err(TryAcquireError::NoPermits) => {
                        drop(destination);
                        if self.pool.evict_one(None) {
                            continue;
                        }
                    }
                },
                Err(TryAcquireError::Closed) => return None,
                Err(TryAcquireError::NoPermits) => {
                    if self.pool.evict_one(Some(&key.destination)) {
                        continue;
                    }
                }
            }
            // Every slot is busy with a transaction: wait for one to end or come back.
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(Duration::from_millis(25)) => {}
            }
        }
    }

    /// After a transaction: RSET and keep the session when it ended cleanly, else close it.
    async fn release(&self, key: PoolKey, mut lease: Lease, keep: bool) {
        if keep && lease.client.reset().await.is_ok() {
            if let Some(done) = self.pool.put(key, lease) {
                done.client.quit().await;
            }
            return;
        }
        lease.client.quit().await;
    }

    fn deferral(&self, env: &Envelope, idxs: &[usize], failures: Vec<Failure>) -> Vec<RcptOutcome> {
        let reason = failures
            .iter()
            .map(|f| {
                if f.hop.ip.is_empty() {
                    format!("{}: {}", f.hop.mx_host, f.reason)
                } else {
                    format!("{}[{}]: {}", f.hop.mx_host, f.hop.ip, f.reason)
                }
            })
            .collect::<Vec<_>>()
            .join("; ");
        let reason = if reason.is_empty() {
            "no usable next hop".to_string()
        } else {
            reason
        };
        let any_tls = failures.iter().any(|f| f.tls);
        let hop = failures.last().map(|f| f.hop.clone());
        let result = if env.params.requiretls
            && !failures.is_empty()
            && failures.iter().all(|f| f.unverified)
        {
            AttemptResult::Permanent(Reply::new(
                550,
                "5.7.30",
                format!("REQUIRETLS: no verified TLS to the next hop: {reason}"),
            ))
        } else if any_tls {
            AttemptResult::Transient(Reply::new(
                451,
                "4.7.5",
                format!("TLS required but not achieved: {reason}"),
            ))
        } else {
            AttemptResult::Transient(Reply::new(
                451,
                "4.4.1",
                format!("no next hop reachable: {reason}"),
            ))
        };
        Self::all(idxs, result, hop)
    }

    /// Connects and establishes TLS as `plan` requires. Errors: (reason, tls?, unverified?).
    async fn open(
        &self,
        addr: SocketAddr,
        hop: &NextHop,
        plan: &Plan,
        implicit: bool,
        info: &mut HopInfo,
    ) -> Result<Opened, (String, bool, bool)> {
        let timeout = self.cfg.command_timeout.duration();
        let tcp = client::connect(addr, self.cfg.connect_timeout.duration())
            .await
            .map_err(|e| (e.to_string(), false, false))?;
        let sni = ServerName::try_from(hop.name.clone())
            .map_err(|e| (format!("bad host name: {e}"), true, true))?;
        let smarthost = implicit || self.cfg.mode == DeliveryMode::Smarthost;
        let built = self
            .verifiers
            .for_requirement(&plan.requirement, &hop.name, smarthost)
            .map_err(|e| (e, true, true))?;
        let result = if implicit {
            client::implicit_tls(tcp, built.config.clone(), sni, &self.helo, timeout).await
        } else {
            match PlainClient::start(tcp, &self.helo, timeout).await {
                Ok(plain) => plain.starttls(built.config.clone(), sni).await,
                Err(e) => Err(e),
            }
        };
        match result {
            Ok(session) => {
                let facts = session.tls();
                info.tls_version = facts.version.clone();
                info.cipher = facts.cipher.clone();
                info.peer_cert_sha256 = facts.peer_cert_sha256.clone();
                info.method = built.method();
                let sts_note = built.sts_testing_outcome(&hop.name);
                if let Some(outcome) = &sts_note {
                    info.mta_sts = format!("{}; {outcome}", info.mta_sts);
                }
                Ok(Opened {
                    client: session,
                    sts_note,
                })
            }
            Err(e) => {
                let tls = e.is_tls();
                let unverified = matches!(e, ClientError::Handshake(_))
                    && plan.requirement.is_verified()
                    || matches!(
                        e,
                        ClientError::StarttlsNotOffered
                            | ClientError::StarttlsRefused(_)
                            | ClientError::Injection
                    );
                Err((e.to_string(), tls, unverified))
            }
        }
    }

    /// One transaction on `session`; the flag says whether the session ended it cleanly
    /// (may be kept). A `reused` session is already authenticated to the smarthost.
    #[allow(clippy::too_many_arguments)]
    async fn transact(
        &self,
        session: &mut TlsClient,
        env: &Envelope,
        content: &[u8],
        idxs: &[usize],
        plan: &Plan,
        hop: HopInfo,
        reused: bool,
    ) -> (Vec<RcptOutcome>, bool) {
        let hop_some = Some(hop.clone());
        if env.params.requiretls
            && (!plan.requirement.is_verified() || !session.capabilities().has("REQUIRETLS"))
        {
            let why = if plan.requirement.is_verified() {
                "next hop does not support REQUIRETLS"
            } else {
                "next hop TLS is not verified"
            };
            return (
                Self::all(
                    idxs,
                    AttemptResult::Permanent(Reply::new(550, "5.7.30", why)),
                    hop_some,
                ),
                false,
            );
        }
        if self.cfg.mode == DeliveryMode::Smarthost && !reused {
            if let Some(c) = &self.credentials {
                if let Err(e) = session.auth_plain(&c.user, &c.password).await {
                    let reply = match e {
                        ClientError::Auth(r) if r.is_permanent() => {
                            return (
                                Self::all(
                                    idxs,
                                    AttemptResult::Transient(Reply::new(
                                        451,
                                        "4.7.8",
                                        format!("smarthost AUTH rejected: {r}"),
                                    )),
                                    hop_some,
                                ),
                                false,
                            )
                        }
                        other => {
                            Reply::new(451, "4.7.0", format!("smarthost AUTH failed: {other}"))
                        }
                    };
                    return (
                        Self::all(idxs, AttemptResult::Transient(reply), hop_some),
                        false,
                    );
                }
            }
        }
        let replies = match session.send(env, content, idxs).await {
            Ok(r) => r,
            Err(e) => {
                return (
                    Self::all(
                        idxs,
                        AttemptResult::Transient(Reply::new(
                            451,
                            "4.4.2",
                            format!("connection lost during transaction: {e}"),
                        )),
                        hop_some,
                    ),
                    false,
                )
            }
        };
        (classify(idxs, &replies, hop), true)
    }

    /// Resolves and probes `domain` without sending mail.
    pub async fn tls_check(&self, domain: &str) -> TlsCheckReport {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let level = self.level_for(&domain, None, false);
        let mut report = TlsCheckReport {
            domain: domain.clone(),
            level: format!("{level:?}"),
            ..TlsCheckReport::default()
        };
        let route = match route::resolve(self.resolver.as_ref(), &domain, self.cfg.mx_port).await {
            Ok(r) => r,
            Err(e) => {
                report.route_error = Some(e.to_string());
                return report;
            }
        };
        report.mx_dnssec = route.mx_status.as_str().to_string();
        report.mx = route.hops.iter().map(|h| h.name.clone()).collect();
        let sts = self
            .sts
            .policy(self.resolver.as_ref(), self.sts_cache.as_ref(), &domain)
            .await;
        report.mta_sts = sts.outcome.clone();
        report.mta_sts_mode = sts.policy.as_ref().map(|p| p.mode.as_str().to_string());
        report.mta_sts_mx = sts
            .policy
            .as_ref()
            .map(|p| p.mx.clone())
            .unwrap_or_default();
        let sts_state = if sts.temp_fail {
            StsState::TempFail
        } else {
            sts.policy.map(StsState::Policy).unwrap_or(StsState::None)
        };
        for hop in &route.hops {
            let mut check = HostCheck {
                host: hop.name.clone(),
                port: hop.port,
                ..HostCheck::default()
            };
            if let Ok(a) = self.resolver.ip(&hop.name).await {
                check.ips = a.records.iter().map(ToString::to_string).collect();
                check.address_dnssec = a.status.as_str().to_string();
            }
            if let Ok(t) = self
                .resolver
                .tlsa(&format!("_{}._tcp.{}", hop.port, hop.name))
                .await
            {
                check.tlsa = t
                    .records
                    .iter()
                    .map(|r| {
                        format!(
                            "{} {} {} {} ({})",
                            r.usage,
                            r.selector,
                            r.matching,
                            hex::encode(&r.data),
                            t.status.as_str()
                        )
                    })
                    .collect();
            }
            let plan = self.plan_hop(hop, level, &sts_state).await;
            match &plan {
                Ok(p) => {
                    check.dane = p.dane.clone();
                    check.requirement = requirement_name(&p.requirement).into();
                }
                Err(reason) => {
                    check.requirement = format!("refused: {reason}");
                }
            }
            if let (Ok(p), Ok(ips)) = (&plan, self.host_ips(hop).await) {
                for ip in ips {
                    let mut info = HopInfo {
                        mx_host: hop.name.clone(),
                        ip: ip.to_string(),
                        dane: p.dane.clone(),
                        mta_sts: report.mta_sts.clone(),
                        ..HopInfo::default()
                    };
                    match self
                        .open(SocketAddr::new(ip, hop.port), hop, p, false, &mut info)
                        .await
                    {
                        Ok(opened) => {
                            opened.client.quit().await;
                            check.connect = "TLS established".into();
                            check.would_deliver = true;
                            check.hop = Some(info);
                            break;
                        }
                        Err((reason, _, _)) => check.connect = reason,
                    }
                }
            }
            report.would_deliver |= check.would_deliver;
            report.hosts.push(check);
        }
        report
    }
}

fn requirement_name(r: &Requirement) -> &'static str {
    match r {
        Requirement::Dane(_) => "dane",
        Requirement::MtaSts => "mta-sts",
        Requirement::Pkix => "pkix",
        Requirement::Encrypt { .. } => "encrypt",
    }
}

/// Maps the server's replies to per-recipient results.
fn classify(
    idxs: &[usize],
    replies: &client::TransactionReplies,
    hop: HopInfo,
) -> Vec<RcptOutcome> {
    let hop = Some(hop);
    let by_code = |r: &Reply| {
        if r.is_permanent() {
            AttemptResult::Permanent(r.clone())
        } else if r.is_transient() || r.code < 200 {
            AttemptResult::Transient(r.clone())
        } else {
            AttemptResult::Delivered(r.clone())
        }
    };
    if replies.mail.code != 250 {
        let result = match by_code(&replies.mail) {
            AttemptResult::Delivered(r) => AttemptResult::Transient(r),
            other => other,
        };
        return Deliverer::all(idxs, result, hop);
    }
    idxs.iter()
        .enumerate()
        .map(|(n, &index)| {
            let result = match replies.rcpts.get(n) {
                None => AttemptResult::Transient(Reply::new(451, "4.4.2", "no reply to RCPT")),
                Some(r) if r.code / 100 != 2 => match by_code(r) {
                    AttemptResult::Delivered(r) => AttemptResult::Transient(r),
                    other => other,
                },
                Some(_) => match &replies.data {
                    Some(d) => match by_code(d) {
                        AttemptResult::Delivered(r) if r.code == 250 => AttemptResult::Delivered(r),
                        AttemptResult::Delivered(r) => AttemptResult::Transient(r),
                        other => other,
                    },
                    None => AttemptResult::Transient(Reply::new(451, "4.4.2", "no reply to DATA")),
                },
            };
            RcptOutcome {
                index,
                result,
                hop: hop.clone(),
            }
        })
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_per_recipient() {
        let ok = Reply::new(250, "2.0.0", "ok");
        let replies = client::TransactionReplies {
            mail: ok.clone(),
            rcpts: vec![
                ok.clone(),
                Reply::new(550, "5.1.1", "unknown"),
                Reply::new(450, "4.2.1", "busy"),
            ],
            data: Some(Reply::new(250, "2.0.0", "queued")),
        };
        let out = classify(&[0, 1, 2], &replies, HopInfo::default());
        assert!(matches!(out[0].result, AttemptResult::Delivered(_)));
        assert!(matches!(out[1].result, AttemptResult::Permanent(_)));
        assert!(matches!(out[2].result, AttemptResult::Transient(_)));
        let bad_mail = client::TransactionReplies {
            mail: Reply::new(553, "5.7.1", "no"),
            rcpts: vec![],
            data: None,
        };
        assert!(classify(&[0, 1], &bad_mail, HopInfo::default())
            .iter()
            .all(|o| matches!(o.result, AttemptResult::Permanent(_))));
    }
}
