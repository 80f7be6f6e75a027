//! TCP listeners: accept, enforce connection limits, do the TLS handshake (implicit or
//! after STARTTLS) and run sessions.

use crate::audit::AuditEvent;
use crate::config::TlsMode;
use crate::smtp::session::{self, ConnInfo, ListenerInfo, SessionEnd, Shared};
use crate::tls::server::{session_info, ServerTls};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

/// Connection limits shared by all listeners.
pub struct ConnLimits {
    total: Arc<Semaphore>,
    per_ip_max: usize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// Held for the life of a connection; gives its slots back on drop.
pub struct ConnGuard {
    limits: Arc<ConnLimits>,
    ip: IpAddr,
    _permit: OwnedSemaphorePermit,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let mut map = self.limits.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

impl ConnLimits {
    pub fn new(total: usize, per_ip: usize) -> Arc<Self> {
        Arc::new(ConnLimits {
            total: Arc::new(Semaphore::new(total)),
            per_ip_max: per_ip,
            per_ip: Mutex::new(HashMap::new()),
        })
    }

    /// Take a slot for `ip`, or say which limit was hit (metric label, reply text).
    pub fn acquire(
        self: &Arc<Self>,
        ip: IpAddr,
    ) -> Result<ConnGuard, (&'static str, &'static str)> {
        let permit = self
            .total
            .clone()
            .try_acquire_owned()
            .map_err(|_| ("total", "Too many connections, try again later"))?;
        let mut map = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= self.per_ip_max {
            return Err((
                "per_ip",
                "Too many connections from your address, try again later",
            ));
        }
        *n += 1;
        Ok(ConnGuard {
            limits: self.clone(),
            ip,
            _permit: permit,
        })
    }
}

static SESSION_SEQ: AtomicU64 = AtomicU64::new(1);

fn session_id() -> String {
    format!(
        "{:x}-{}",
        std::process::id(),
        SESSION_SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// Everything a listener task needs.
#[derive(Clone)]
pub struct ListenerCtx {
    pub info: Arc<ListenerInfo>,
    /// Swapped on reload; each connection takes the snapshot current when it arrives.
    pub shared: Arc<RwLock<Arc<Shared>>>,
    pub tls: ServerTls,
    pub limits: Arc<ConnLimits>,
    pub handshake_timeout: Duration,
    pub tracker: TaskTracker,
    /// Counts accepted connections per listener.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Records each TLS session opened.
    pub audit: Arc<crate::audit::Audit>,
}

/// Accept connections until `shutdown` turns true.
pub async fn run(listener: TcpListener, ctx: ListenerCtx, shutdown: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.cancelled() => break,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Usually EMFILE: back off instead of spinning.
                warn!(listener = %ctx.info.name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        match ctx.limits.acquire(peer.ip()) {
            Ok(guard) => {
                ctx.metrics.connection(&ctx.info.name);
                let c = ctx.clone();
                ctx.tracker.spawn(async move {
                    handle(tcp, peer, c).await;
                    drop(guard);
                });
            }
            Err((limit, why)) => {
                info!(listener = %ctx.info.name, peer = %peer.ip(), code = 421, limit, "connection refused: limit");
                ctx.metrics.connection_refused(&ctx.info.name, limit);
                let c = ctx.clone();
                tokio::spawn(async move { refuse(tcp, c, why).await });
            }
        }
    }
    info!(listener = %ctx.info.name, "listener stopped");
}

async fn refuse(tcp: TcpStream, ctx: ListenerCtx, why: &'static str) {
    let line = format!("421 4.7.0 {why}\r\n");
    let quick = Duration::from_secs(5);
    let _ = tokio::time::timeout(quick, async {
        match ctx.info.mode {
            TlsMode::Starttls => {
                let mut tcp = tcp;
                let _ = tcp.write_all(line.as_bytes()).await;
            }
            TlsMode::Implicit => {
                if let Ok(mut tls) = ctx.tls.acceptor().accept(tcp).await {
                    let _ = tls.write_all(line.as_bytes()).await;
                    let _ = tls.shutdown().await;
                }
            }
        }
    })
    .await;
}

async fn handle(tcp: TcpStream, peer: SocketAddr, ctx: ListenerCtx) {
    let shared = ctx.shared.read().unwrap_or_else(|p| p.into_inner()).clone();
    let id = session_id();
    let conn = ConnInfo {
        id: id.clone(),
        peer,
        tls: None,
        client_cert: None,
    };
    match ctx.info.mode {
        TlsMode::Implicit => {
            if let Some((tls, conn)) = handshake(tcp, conn, &ctx).await {
                run_session(tls, conn, &ctx, shared.clone(), true).await;
            }
        }
        TlsMode::Starttls => {
            info!(session = %id, peer = %peer.ip(), listener = %ctx.info.name, "session opened");
            if let SessionEnd::StartTls(tcp) =
                session::run(tcp, shared.clone(), ctx.info.clone(), conn.clone(), true).await
            {
                if let Some((tls, conn)) = handshake(tcp, conn, &ctx).await {
                    run_session(tls, conn, &ctx, shared.clone(), false).await;
                }
            }
        }
    }
    debug!(session = %id, "session closed");
}

async fn handshake(
    tcp: TcpStream,
    mut conn: ConnInfo,
    ctx: &ListenerCtx,
) -> Option<(tokio_rustls::server::TlsStream<TcpStream>, ConnInfo)> {
    let accept = ctx.tls.acceptor().accept(tcp);
    match tokio::time::timeout(ctx.handshake_timeout, accept).await {
        Ok(Ok(tls)) => {
            let (info, cert) = session_info(tls.get_ref().1);
            info!(
                session = %conn.id, peer = %conn.peer.ip(), listener = %ctx.info.name,
                tls_version = %info.version, cipher = %info.cipher,
                client_cert = info.client_cert_sha256.as_deref().unwrap_or("-"),
                "TLS established"
            );
            let ip = conn.peer.ip().to_string();
            let ev = AuditEvent::session_opened(&conn.id, &ip, &ctx.info.name, Some(&info));
            ctx.audit.record_now(ev);
            conn.tls = Some(info);
            conn.client_cert = cert;
            Some((tls, conn))
        }
        Ok(Err(e)) => {
            info!(session = %conn.id, peer = %conn.peer.ip(), error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            info!(session = %conn.id, peer = %conn.peer.ip(), "TLS handshake timed out");
            None
        }
    }
}

async fn run_session<S: AsyncRead + AsyncWrite + Unpin + Send>(
    io: S,
    conn: ConnInfo,
    ctx: &ListenerCtx,
    shared: Arc<Shared>,
    greet: bool,
) {
    // A TLS session cannot ask for STARTTLS again (it gets 503), so only Closed is expected.
    let _ = session::run(io, shared, ctx.info.clone(), conn, greet).await;
}
