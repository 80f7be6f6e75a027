//! Wiring: build every service from the configuration, bind the listeners, tell systemd
//! we are ready, and turn signals into reloads and a graceful shutdown.

use crate::auth::{FailureLimiter, Users};
use crate::config::{Config, ConfigError, DeliveryMode};
use crate::delivery::{SandboxTransport, Transport};
use crate::listener::{self, ConnLimits, ListenerCtx};
use crate::metrics::{Gauge, Metrics};
use crate::pipeline::{Handoff, Pipeline};
use crate::policy::Policy;
use crate::queue::{Queue, QueueSettings};
use crate::sandbox::Sandbox;
use crate::services::{Services, SystemClock};
use crate::smtp::session::{ListenerInfo, Shared};
use crate::spool::{Keyring, KeyringError, Spool, SpoolError};
use crate::tls::server::{ensure_self_signed, ServerTls, TlsError};
use crate::webhook::Webhooks;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
    #[error("data_dir {path}: {source}")]
    DataDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("listener `{name}` cannot bind {addr}: {source}")]
    Bind {
        name: String,
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("signals: {0}")]
    Signal(std::io::Error),
    #[error("master key: {0}")]
    Keyring(#[from] KeyringError),
    #[error("spool: {0}")]
    Spool(#[from] SpoolError),
    #[error(transparent)]
    Delivery(#[from] crate::delivery::DeliveryError),
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
    #[error("api.templates_dir: {0}")]
    Templates(#[from] crate::templates::TemplateError),
    #[error("dkim key_file {0}")]
    Dkim(#[from] crate::dkim::DkimError),
    #[error(transparent)]
    Control(#[from] crate::control::ControlError),
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
    #[error(transparent)]
    Metrics(#[from] crate::metrics::http::HttpError),
    #[error(transparent)]
    Webhook(#[from] crate::webhook::WebhookError),
    #[error("portal: {0}")]
    PortalStore(#[from] crate::portal::PortalError),
    #[error("portal: {0}")]
    Portal(String),
}

/// What a signal asks the server to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGHUP: re-read the configuration, certificates and users.
    Reload,
    /// SIGTERM / SIGINT: stop accepting, let sessions finish, exit.
    Shutdown,
}

struct Signals {
    hup: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Self, ServerError> {
        let s = |k| signal(k).map_err(ServerError::Signal);
        Ok(Signals {
            hup: s(SignalKind::hangup())?,
            term: s(SignalKind::terminate())?,
            int: s(SignalKind::interrupt())?,
        })
    }

    async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.hup.recv() => Signal::Reload,
            _ = self.term.recv() => Signal::Shutdown,
            _ = self.int.recv() => Signal::Shutdown,
        }
    }
}

fn create_private_dir(path: &std::path::Path) -> Result<(), ServerError> {
    use std::os::unix::fs::DirBuilderExt;
    let err = |source| ServerError::DataDir {
        path: path.display().to_string(),
        source,
    };
    if !path.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .map_err(err)?;
    }
    Ok(())
}

/// Run until SIGTERM/SIGINT. `config_path` is re-read on SIGHUP (None for the embedded
/// sandbox configuration, which has nothing to re-read but certificates and users).
pub async fn run(cfg: Config, config_path: Option<PathBuf>) -> Result<(), ServerError> {
    create_private_dir(&cfg.server.data_dir)?;
    if ensure_self_signed(&cfg.tls, &cfg.server.hostname)? {
        info!(cert = %cfg.tls.cert.display(), "generated a self-signed certificate");
    }
    cfg.validate()?;
    let tls = ServerTls::new(&cfg.tls)?;
    let keyring = load_keyring(&cfg)?;
    let key_list = keyring.list();
    let spool = Arc::new(Spool::open(&cfg.server.data_dir.join("spool"), keyring)?);
    let pending = spool.recover(crate::types::now_secs()).await?;
    info!(pending = pending.len(), "spool open");
    // TLS-RPT counts only what MX delivery sees; its sender is built once the queue is.
    let tlsrpt_agg = (cfg.delivery.mode == DeliveryMode::Mx
        && cfg.tlsrpt.is_enabled(cfg.delivery.mode))
    .then(|| crate::tlsrpt::Aggregator::new(spool.store().clone(), Arc::new(SystemClock)));
    let mut deliverer = None;
    let transport: Arc<dyn Transport> = match cfg.delivery.mode {
        DeliveryMode::Sandbox => Arc::new(SandboxTransport::new(Sandbox::new(cfg.sandbox_dir()))),
        DeliveryMode::Mx | DeliveryMode::Smarthost => {
            let mut d = crate::delivery::Deliverer::new(&cfg.delivery)
                .await?
                .with_helo_name(&cfg.server.hostname)
                .with_sts_cache(Arc::new(crate::delivery::sts_store::SpoolStsCache::new(
                    spool.clone(),
                )))
                .with_notice_plaintext(cfg.portal.as_ref().is_some_and(|p| p.notify_without_tls));
            if let Some(agg) = &tlsrpt_agg {
                d = d.with_tls_observer(agg.clone());
            }
            let d = Arc::new(d);
            deliverer = Some(d.clone());
            d
        }
    };
    // Sandbox API keys never reach a real MX, whatever the mode.
    let transport: Arc<dyn Transport> = match cfg.delivery.mode {
        DeliveryMode::Sandbox => transport,
        _ => Arc::new(crate::delivery::SandboxKeys {
            real: transport,
            sandbox: SandboxTransport::new(Sandbox::new(cfg.sandbox_dir())),
        }),
    };
    let dkim = Arc::new(crate::dkim::Dkim::new(
        crate::dkim::DkimKeys::load(&cfg.dkim)?,
        Some(cfg.server.data_dir.join("dkim-rotation.json")),
    ));
    dkim.rotation().set_lookup(dkim_lookup(&cfg));
    if !dkim.is_empty() {
        info!(keys = cfg.dkim.len(), "DKIM signing enabled");
    }
    // Always the outermost transport: a reload may add the first key.
    let transport: Arc<dyn Transport> = Arc::new(crate::delivery::DkimSign {
        keys: dkim.clone(),
        inner: transport,
    });
    let audit = crate::audit::Audit::open(spool.clone(), audit_settings(&cfg))?;
    let events = {
        let s = spool.clone();
        crate::events::Events::new(spool.store().clone(), move || s.keyring())
    };
    audit.set_derive(events.clone());
    let metrics = Arc::new(Metrics::new());
    let webhooks = Webhooks::start(
        &cfg.webhooks,
        metrics.clone(),
        events.clone(),
        spool.store().clone(),
    )?;
    if !cfg.webhooks.is_empty() {
        info!(hooks = cfg.webhooks.len(), "delivery webhooks enabled");
    }
    let limits = Arc::new(crate::limits::Limits::new(
        cfg.limits.clone(),
        spool.store().clone(),
    ));
    let freeze =
        Arc::new(crate::freeze::Freeze::open(spool.store().clone()).map_err(SpoolError::Io)?);
    let alerts = Arc::new(crate::alerts::Alerts::new(
        cfg.alerts.clone(),
        audit.clone(),
        metrics.clone(),
    ));
    let services = Services {
        spool: spool.clone(),
        audit,
        events,
        metrics: metrics.clone(),
        webhooks,
        clock: Arc::new(SystemClock),
        limits,
        freeze,
        alerts,
        dkim,
    };
    let queue = Queue::new(services.clone(), transport, queue_settings(&cfg));
    let policy = crate::policy::ActivePolicy::new(load_policy(&cfg)?);
    let portal = match &cfg.portal {
        Some(p) => {
            let portal = crate::portal::Portal::open(
                services.clone(),
                p,
                &cfg.server.hostname,
                policy.clone(),
            )?;
            queue.set_portal(portal.clone());
            Some(portal)
        }
        None => None,
    };
    let pipeline = Arc::new(Pipeline::with_active(
        services.clone(),
        queue.clone(),
        policy,
    ));
    pipeline.set_min_free(cfg.spool.min_free.0);
    let limiter = Arc::new(FailureLimiter::new(
        cfg.auth.max_failures,
        cfg.auth.lockout.duration(),
    ));
    // One token per stage: front ends stop first; the queue and audit trail only after
    // the sessions have drained, so mail accepted during the grace period is still
    // delivered if it can be.
    let shutdown = CancellationToken::new();
    let queue_stop = CancellationToken::new();
    let audit_task = tokio::spawn(services.audit.clone().run(queue_stop.clone()));
    tokio::spawn(services.events.clone().run_retention(
        std::time::Duration::from_secs(cfg.events.retention.0),
        queue_stop.clone(),
    ));
    let queue_task = tokio::spawn(queue.clone().run(queue_stop.clone()));
    spawn_dkim_refresh(&services, queue_stop.clone());
    let tlsrpt = match (tlsrpt_agg, &deliverer) {
        (Some(agg), Some(d)) => {
            let t = crate::tlsrpt::TlsRpt::new(
                agg,
                cfg.tlsrpt.settings(&cfg.server.hostname),
                &cfg.server.hostname,
                d.resolver(),
                d.https_tls_config(),
                services.clone(),
                queue.clone(),
            );
            tokio::spawn(t.clone().run(queue_stop.clone()));
            info!("TLS reporting enabled");
            Some(t)
        }
        _ => None,
    };
    let (reload_tx, mut reload_rx) = tokio::sync::mpsc::channel(4);
    let _control = crate::control::start(
        &cfg,
        crate::control::Parts {
            services: services.clone(),
            queue: queue.clone(),
            tlsrpt,
            keys: key_list,
            portal: portal.clone(),
            reload: reload_tx,
        },
        shutdown.clone(),
    )
    .await?;
    if let Some(mc) = &cfg.metrics {
        let gauges = queue_gauges(spool.clone(), services.webhooks.clone());
        let _metrics_http =
            crate::metrics::http::start(mc.listen, metrics.clone(), gauges, shutdown.clone())
                .await?;
    }
    let api = match &cfg.api {
        Some(api) => Some(start_api(&cfg, api, &services, &pipeline, shutdown.clone()).await?),
        None => None,
    };
    let portal_tls = match (&cfg.portal, &portal) {
        (Some(pc), Some(p)) => {
            Some(start_portal(&cfg, pc, p, queue_stop.clone(), shutdown.clone()).await?)
        }
        _ => None,
    };
    let front = FrontEnd {
        services: services.clone(),
        handoff: pipeline.clone(),
        limiter,
        shutdown: shutdown.clone(),
    };
    let first = build_shared(&cfg, &front)?;
    install_credentials(&services, &cfg, &first);
    let shared = Arc::new(RwLock::new(first));
    let limits = ConnLimits::new(
        cfg.server.max_connections,
        cfg.server.max_connections_per_ip,
    );
    let tracker = TaskTracker::new();
    let mut signals = Signals::new()?;

    // Bind everything before starting anything, so a bad address fails the whole start.
    let mut bound = Vec::new();
    for l in &cfg.listeners {
        let tcp = TcpListener::bind(l.addr)
            .await
            .map_err(|source| ServerError::Bind {
                name: l.name.clone(),
                addr: l.addr.to_string(),
                source,
            })?;
        bound.push((l, tcp));
    }
    let mut accept_tasks = Vec::new();
    for (l, tcp) in bound {
        let ctx = ListenerCtx {
            info: Arc::new(ListenerInfo {
                name: l.name.clone(),
                mode: l.tls,
                auth: l.auth.clone(),
            }),
            shared: shared.clone(),
            tls: tls.clone(),
            limits: limits.clone(),
            handshake_timeout: cfg.server.tls_handshake_timeout.duration(),
            tracker: tracker.clone(),
            metrics: metrics.clone(),
            audit: services.audit.clone(),
        };
        info!(listener = %l.name, addr = %l.addr, tls = ?l.tls, "listening");
        accept_tasks.push(tokio::spawn(listener::run(tcp, ctx, shutdown.clone())));
    }
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    metrics.set_ready(true);
    spawn_watchdog();
    info!(version = env!("CARGO_PKG_VERSION"), "phigate ready");

    let mut current = cfg;
    // SIGHUP and `phigate reload` reload; every other signal means shut down.
    loop {
        let answer = tokio::select! {
            sig = signals.next() => match sig {
                Signal::Reload => None,
                Signal::Shutdown => break,
            },
            Some(answer) = reload_rx.recv() => Some(answer),
        };
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Reloading]);
        let outcome = reload(
            &current,
            config_path.as_deref(),
            &tls,
            HttpFronts {
                api: api.as_ref(),
                portal: portal_tls.as_ref().zip(portal.as_ref()),
            },
            &pipeline,
            &front,
            &shared,
        );
        let reply = match outcome {
            Ok(new) => {
                info!(
                    "configuration reloaded (certificates, users, auth, limits, policy, DKIM keys)"
                );
                current = new;
                let s = services.clone();
                tokio::spawn(async move { s.dkim.refresh(s.now()).await });
                audit_reload(&services, true, &current.source).await;
                Ok(())
            }
            Err(e) => {
                error!(error = %e, "reload refused, previous configuration stays active");
                audit_reload(&services, false, &current.source).await;
                Err(e.to_string())
            }
        };
        if let Some(answer) = answer {
            let _ = answer.send(reply);
        }
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    }

    info!(
        grace_secs = current.server.shutdown_grace.0,
        "shutting down"
    );
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    metrics.set_ready(false);
    shutdown.cancel();
    for t in accept_tasks {
        let _ = t.await;
    }
    tracker.close();
    if tokio::time::timeout(current.server.shutdown_grace.duration(), tracker.wait())
        .await
        .is_err()
    {
        warn!("grace period over, closing remaining sessions");
    }
    queue_stop.cancel();
    let grace = current.server.shutdown_grace.duration();
    if tokio::time::timeout(grace, queue_task).await.is_err() {
        warn!("delivery attempts still running; they will be retried at the next start");
    }
    let _ = audit_task.await;
    info!("stopped");
    Ok(())
}

/// Queue depth and webhook backlog, read at scrape time so they are never stale.
fn queue_gauges(spool: Arc<Spool>, hooks: Arc<Webhooks>) -> crate::metrics::http::GaugeSource {
    Arc::new(move || {
        let Ok(st) = spool.stats(crate::types::now_secs()) else {
            return Vec::new();
        };
        let g = |name, help, labels, value| Gauge {
            name,
            help,
            labels,
            value,
        };
        let backlog = hooks.backlog().into_iter().map(|(i, n)| {
            g(
                "phigate_webhook_backlog_events",
                "Events not yet delivered to a webhook, by its index in [[webhook]].",
                vec![("webhook", i.to_string())],
                n as f64,
            )
        });
        let mut out: Vec<Gauge> = st
            .recipients_by_state
            .iter()
            .map(|(state, n)| {
                let state = format!("{state:?}").to_ascii_lowercase();
                g(
                    "phigate_queue_recipients",
                    "Recipients in the spool by state.",
                    vec![("state", state)],
                    *n as f64,
                )
            })
            .collect();
        out.push(g(
            "phigate_queue_pending_messages",
            "Messages with at least one recipient not yet final.",
            vec![],
            st.pending as f64,
        ));
        out.push(g(
            "phigate_queue_oldest_pending_age_seconds",
            "Age of the oldest pending message (0 when none).",
            vec![],
            st.oldest_pending_age.unwrap_or(0) as f64,
        ));
        out.extend(backlog);
        out
    })
}

/// With `WatchdogSec=` set, ping systemd at half the interval, but only while the
/// runtime still schedules timers on time and the blocking pool answers: a wedged
/// process stops pinging and systemd restarts it.
fn spawn_watchdog() {
    let mut usec = 0u64;
    if !sd_notify::watchdog_enabled(false, &mut usec) {
        return;
    }
    let period =
        std::time::Duration::from_micros(usec / 2).max(std::time::Duration::from_millis(100));
    info!(
        period_ms = period.as_millis() as u64,
        "systemd watchdog enabled"
    );
    tokio::spawn(async move {
        loop {
            let before = std::time::Instant::now();
            tokio::time::sleep(period).await;
            let late = before.elapsed() > period * 2;
            let probe = tokio::time::timeout(period, tokio::task::spawn_blocking(|| ())).await;
            if !late && matches!(probe, Ok(Ok(()))) {
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
            } else {
                warn!("runtime unresponsive, skipping the watchdog ping");
            }
        }
    });
}

fn queue_settings(cfg: &Config) -> QueueSettings {
    QueueSettings {
        hostname: cfg.server.hostname.clone(),
        retry: cfg.queue.retry.iter().map(|s| s.0).collect(),
        expire: cfg.queue.expire.0,
        delay_warning: cfg.queue.delay_warning.0,
        concurrency: cfg.queue.concurrency,
        content_after_delivery: cfg.retention.content_after_delivery.0,
        metadata_retention: cfg.retention.metadata.0,
        portal_after: (cfg.portal.is_some()
            && cfg.delivery.on_tls_failure == crate::config::OnTlsFailure::Portal)
            .then_some(cfg.delivery.portal_after.0),
    }
}

/// The master keyring: the systemd credential when configured and present, else the
/// key file (created first if the configuration says so).
pub fn load_keyring(cfg: &Config) -> Result<Keyring, ServerError> {
    if let Some(name) = &cfg.spool.key_credential {
        if std::env::var_os("CREDENTIALS_DIRECTORY").is_some() {
            return Ok(Keyring::load_credential(name)?);
        }
    }
    if cfg.spool.generate_key && !cfg.spool.key_file.exists() {
        if let Some(dir) = cfg
            .spool
            .key_file
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
        {
            create_private_dir(dir)?;
        }
        let info = crate::spool::keys::generate_file(&cfg.spool.key_file)?;
        info!(key_id = %info.id, "generated a master keyring");
    }
    Ok(Keyring::load(&cfg.spool.key_file)?)
}

fn load_users(cfg: &Config) -> Result<Users, ServerError> {
    Ok(match &cfg.auth.users_file {
        Some(p) => Users::load(p)?,
        None => Users::default(),
    })
}

/// TXT lookups for DKIM rotation: phigate's own validating resolver, built afresh for
/// each lookup so a record just published (or a cached negative answer) is seen now.
fn dkim_lookup(cfg: &Config) -> crate::dkim::rotation::Lookup {
    use crate::dns::{HickoryResolver, Resolver, ResolverSettings};
    let settings = ResolverSettings {
        servers: cfg.delivery.dns_servers.clone(),
        trust_anchor: cfg.delivery.dnssec_trust_anchor.clone(),
        timeout: Some(std::time::Duration::from_secs(5)),
    };
    Arc::new(move |name: String| {
        let settings = settings.clone();
        Box::pin(async move {
            let resolver = HickoryResolver::new(&settings).ok()?;
            resolver.txt(&name).await.ok().map(|a| a.records)
        })
    })
}

/// Check DKIM rotation records now, then hourly, until `stop`.
fn spawn_dkim_refresh(services: &Services, stop: CancellationToken) {
    let services = services.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(3600));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => return,
            }
            services.dkim.refresh(services.now()).await;
        }
    });
}

fn audit_settings(cfg: &Config) -> crate::audit::AuditSettings {
    crate::audit::AuditSettings {
        hostname: cfg.server.hostname.clone(),
        head_log_interval: cfg.audit.head_log_interval.duration(),
        retention: cfg.audit.retention.duration(),
        syslog: cfg.audit.syslog.clone(),
        syslog_include_addresses: cfg.audit.syslog_include_addresses,
    }
}

async fn audit_reload(services: &Services, ok: bool, source: &str) {
    let ev = crate::audit::AuditEvent::config_reload(ok, source);
    if let Err(e) = services.audit.record(vec![ev]).await {
        warn!(error = %e, "audit record of the reload failed");
    }
}

/// What the SMTP sessions share that outlives a reload; the rest of [`Shared`] is
/// rebuilt from the config.
struct FrontEnd {
    services: Services,
    handoff: Arc<dyn Handoff>,
    limiter: Arc<FailureLimiter>,
    shutdown: CancellationToken,
}

fn build_shared(cfg: &Config, front: &FrontEnd) -> Result<Arc<Shared>, ServerError> {
    Ok(Arc::new(Shared {
        hostname: cfg.server.hostname.clone(),
        max_message_size: usize::try_from(cfg.server.max_message_size.0).unwrap_or(usize::MAX),
        max_line_length: usize::try_from(cfg.server.max_line_length.0).unwrap_or(usize::MAX),
        max_recipients: cfg.server.max_recipients,
        command_timeout: cfg.server.command_timeout.duration(),
        data_timeout: cfg.server.data_timeout.duration(),
        users: Arc::new(load_users(cfg)?),
        limiter: front.limiter.clone(),
        allow_networks: cfg.auth.allow_networks.clone(),
        client_cert_allow: cfg.auth.client_cert_allow.clone(),
        handoff: front.handoff.clone(),
        shutdown: front.shutdown.clone(),
        audit: front.services.audit.clone(),
        metrics: front.services.metrics.clone(),
    }))
}

/// Hand the breach-prevention services what a (re)load decided: limits, alert settings
/// and the credentials open sessions are re-checked against (revocation).
fn install_credentials(services: &Services, cfg: &Config, shared: &Shared) {
    services.limits.set_config(cfg.limits.clone());
    services.alerts.set_config(cfg.alerts.clone());
    services.freeze.set_credentials(
        &shared.users,
        &cfg.auth.client_cert_allow,
        &cfg.auth.allow_networks,
    );
}

/// The DLP/recipient policy named by the config, or the permissive built-in one.
pub fn load_policy(cfg: &Config) -> Result<Policy, ServerError> {
    let policy = match &cfg.policy.file {
        Some(p) => Policy::load(p)?,
        None => Policy::permissive()?,
    };
    if let (Some(rule), None) = (policy.uses_portal(), &cfg.portal) {
        return Err(ServerError::Portal(format!(
            "{}: rule `{rule}` has action \"portal\", but {} has no [portal] section",
            cfg.policy
                .file
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            cfg.source
        )));
    }
    Ok(policy)
}

/// The running API, for reloads.
struct ApiHandle {
    tls: ServerTls,
    state: Arc<crate::api::http::ApiState>,
}

/// Start the HTTPS API on the shared pipeline.
async fn start_api(
    cfg: &Config,
    api: &crate::config::ApiConfig,
    services: &Services,
    pipeline: &Arc<Pipeline>,
    shutdown: CancellationToken,
) -> Result<ApiHandle, ServerError> {
    use crate::api::http;
    let tls = ServerTls::new(&http::tls_config(&cfg.tls, api))?;
    let keys = crate::api::keys::KeyStore::new(services.spool.store().clone());
    if let Some(path) = &api.sandbox_key_file {
        http::ensure_sandbox_key(&keys, path, services.now()).map_err(|source| {
            ServerError::Bind {
                name: "api sandbox_key_file".into(),
                addr: path.display().to_string(),
                source,
            }
        })?;
    }
    let state = Arc::new(http::ApiState {
        services: services.clone(),
        pipeline: pipeline.clone(),
        keys,
        cfg: api.clone(),
        hostname: cfg.server.hostname.clone(),
        templates: std::sync::RwLock::new(Arc::new(match &api.templates_dir {
            Some(d) => crate::templates::Templates::load(d)?,
            None => crate::templates::Templates::empty(),
        })),
        idempotency: crate::api::idempotency::Idempotency::new(
            services.spool.store().clone(),
            api.idempotency_ttl.0,
        ),
        portal: cfg.portal.is_some(),
    });
    http::start(state.clone(), tls.clone(), shutdown)
        .await
        .map_err(|source| ServerError::Bind {
            name: "api".into(),
            addr: api.listen.to_string(),
            source,
        })?;
    Ok(ApiHandle { tls, state })
}

/// The HTTPS front ends a reload touches (certificates, templates).
struct HttpFronts<'a> {
    api: Option<&'a ApiHandle>,
    portal: Option<(&'a ServerTls, &'a Arc<crate::portal::Portal>)>,
}

/// Start the portal's pages and its expiry sweep; returns the TLS handle for reloads.
async fn start_portal(
    cfg: &Config,
    pc: &crate::config::PortalConfig,
    portal: &Arc<crate::portal::Portal>,
    queue_stop: CancellationToken,
    shutdown: CancellationToken,
) -> Result<ServerTls, ServerError> {
    let tls = ServerTls::new(&crate::https::tls_config(&cfg.tls, &pc.cert, &pc.key))?;
    let web = crate::portal::web::WebState::new(portal.clone()).map_err(ServerError::Portal)?;
    crate::portal::web::start(web, tls.clone(), shutdown)
        .await
        .map_err(|source| ServerError::Bind {
            name: "portal".into(),
            addr: pc.listen.to_string(),
            source,
        })?;
    // Every 30 s, or more often for short links, so expiry is never late by much.
    let every = (pc.link_ttl.0 / 2).clamp(1, 30);
    tokio::spawn(
        portal
            .clone()
            .run_expiry(std::time::Duration::from_secs(every), queue_stop),
    );
    Ok(tls)
}

/// Re-read what can change without a restart. Everything is built first and swapped
/// only when all of it succeeded, so an error leaves the running config untouched.
fn reload(
    current: &Config,
    path: Option<&std::path::Path>,
    tls: &ServerTls,
    fronts: HttpFronts<'_>,
    pipeline: &Pipeline,
    front: &FrontEnd,
    shared: &RwLock<Arc<Shared>>,
) -> Result<Config, ServerError> {
    let new = match path {
        Some(p) => Config::load(p)?,
        None => current.clone(),
    };
    let new_shared = build_shared(&new, front)?;
    let policy = load_policy(&new)?;
    let dkim = crate::dkim::DkimKeys::load(&new.dkim)?;
    tls.reload(&new.tls)?;
    if let (Some(h), Some(api)) = (fronts.api, &new.api) {
        h.tls.reload(&crate::api::http::tls_config(&new.tls, api))?;
        h.state.reload_templates()?;
    }
    if let (Some((ptls, p)), Some(pc)) = (fronts.portal, &new.portal) {
        ptls.reload(&crate::https::tls_config(&new.tls, &pc.cert, &pc.key))?;
        p.reload()?;
    }
    pipeline.set_policy(policy);
    pipeline.set_min_free(new.spool.min_free.0);
    front.services.dkim.replace(dkim);
    front.services.dkim.rotation().set_lookup(dkim_lookup(&new));
    install_credentials(&front.services, &new, &new_shared);
    *shared.write().unwrap_or_else(|p| p.into_inner()) = new_shared;
    let restart_needed = new.listeners.len() != current.listeners.len()
        || new
            .listeners
            .iter()
            .zip(&current.listeners)
            .any(|(a, b)| a.addr != b.addr || a.tls != b.tls || a.auth != b.auth)
        || new.server.max_connections != current.server.max_connections
        || new.server.max_connections_per_ip != current.server.max_connections_per_ip
        || new.spool.key_file != current.spool.key_file
        || new.server.data_dir != current.server.data_dir;
    if restart_needed {
        warn!(
            "listener, connection-limit, spool and data_dir changes need a restart to take effect"
        );
    }
    Ok(new)
}
