//! The one HTTPS server stack (L1) under the API and the portal: TLS (rustls, the
//! listeners' certificate handling, reloaded on SIGHUP), then hyper serving an axum
//! router, with the connection's facts attached to every request.

use crate::tls::server::ServerTls;
use crate::types::TlsInfo;
use axum::extract::Extension;
use axum::Router;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::debug;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Facts of one HTTPS connection, for the audit trail and the envelope.
#[derive(Clone)]
pub struct Conn {
    pub peer: IpAddr,
    pub tls: TlsInfo,
}

/// `[tls]` with a front end's own certificate and key when it names them (no client
/// certificates on HTTPS front ends).
pub fn tls_config(
    tls: &crate::config::TlsConfig,
    cert: &Option<PathBuf>,
    key: &Option<PathBuf>,
) -> crate::config::TlsConfig {
    crate::config::TlsConfig {
        cert: cert.clone().unwrap_or_else(|| tls.cert.clone()),
        key: key.clone().unwrap_or_else(|| tls.key.clone()),
        client_ca: None,
        ..tls.clone()
    }
}

/// Serve `app` on `tcp` over TLS until `shutdown`; `name` labels the debug logs.
pub fn serve(
    tcp: TcpListener,
    tls: ServerTls,
    app: Router,
    shutdown: CancellationToken,
    name: &'static str,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let (sock, peer) = tokio::select! {
                r = tcp.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        debug!(front = name, error = %e, "accept failed");
                        continue;
                    }
                },
                _ = shutdown.cancelled() => return,
            };
            // The acceptor is fetched per connection so a SIGHUP certificate reload applies.
            let acceptor = tls.acceptor();
            let app = app.clone();
            let stop = shutdown.clone();
            tokio::spawn(async move { serve_conn(sock, peer, acceptor, app, stop, name).await });
        }
    })
}

async fn serve_conn(
    sock: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: tokio_rustls::TlsAcceptor,
    app: Router,
    stop: CancellationToken,
    name: &'static str,
) {
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(sock)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return debug!(front = name, peer = %peer.ip(), error = %e, "TLS handshake failed")
        }
        Err(_) => return debug!(front = name, peer = %peer.ip(), "TLS handshake timed out"),
    };
    let (_, session) = stream.get_ref();
    // Named as for SMTP sessions (TLSv1.3, IANA cipher names), so the audit trail and
    // policy see one vocabulary whatever the front end.
    let conn = Conn {
        peer: peer.ip(),
        tls: crate::tls::server::session_info(session).0,
    };
    let svc = hyper_util::service::TowerToHyperService::new(app.layer(Extension(conn)));
    let http = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
    tokio::pin!(http);
    tokio::select! {
        r = &mut http => if let Err(e) = r { debug!(front = name, error = %e, "connection ended") },
        _ = stop.cancelled() => {
            http.as_mut().graceful_shutdown();
            let _ = http.await;
        }
    }
}
