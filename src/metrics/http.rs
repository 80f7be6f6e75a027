//! A tiny HTTP/1.0 responder for `/metrics`, `/healthz` and `/readyz`.
//!
//! Three GET routes on a loopback address do not justify an HTTP server stack: read
//! the request head (bounded in size and time), answer, close.

use super::{Gauge, Metrics};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

/// Largest request head read; anything longer gets 431.
const MAX_HEAD: usize = 8192;
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Gauges computed at scrape time (queue depth from the spool).
pub type GaugeSource = Arc<dyn Fn() -> Vec<Gauge> + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("metrics listener cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Bind `addr` now (so a bad address fails the start) and serve until `shutdown`.
pub async fn start(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    gauges: GaugeSource,
    shutdown: CancellationToken,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), HttpError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| HttpError::Bind { addr, source })?;
    let local = listener.local_addr().unwrap_or(addr);
    info!(addr = %local, "metrics endpoint listening");
    let task = tokio::spawn(async move {
        loop {
            let conn = tokio::select! {
                c = listener.accept() => c,
                _ = shutdown.cancelled() => break,
            };
            match conn {
                Ok((tcp, _)) => {
                    let (m, g) = (metrics.clone(), gauges.clone());
                    tokio::spawn(async move {
                        if let Err(e) = tokio::time::timeout(IO_TIMEOUT, serve(tcp, &m, &g)).await {
                            debug!(error = %e, "metrics request timed out");
                        }
                    });
                }
                Err(e) => {
                    debug!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    Ok((local, task))
}

async fn serve(mut tcp: TcpStream, metrics: &Metrics, gauges: &GaugeSource) {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        match tcp.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > MAX_HEAD {
            let _ = respond(&mut tcp, 431, "text/plain", "request head too large\n").await;
            return;
        }
    }
    let line = String::from_utf8_lossy(&head);
    let mut parts = line.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, ctype, body) = route(method, path, metrics, gauges);
    let _ = respond(&mut tcp, status, ctype, &body).await;
}

/// The response for one request: (status, content type, body).
pub fn route(
    method: &str,
    path: &str,
    metrics: &Metrics,
    gauges: &GaugeSource,
) -> (u16, &'static str, String) {
    if method != "GET" && method != "HEAD" {
        return (405, "text/plain", "only GET\n".into());
    }
    match path {
        "/metrics" => (
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.render(&gauges()),
        ),
        "/healthz" => (200, "text/plain", "ok\n".into()),
        "/readyz" if metrics.is_ready() => (200, "text/plain", "ready\n".into()),
        "/readyz" => (503, "text/plain", "not ready\n".into()),
        _ => (404, "text/plain", "not found\n".into()),
    }
}

async fn respond(tcp: &mut TcpStream, status: u16, ctype: &str, body: &str) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let head = format!(
        "HTTP/1.0 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    );
    tcp.write_all(head.as_bytes()).await?;
    tcp.write_all(body.as_bytes()).await?;
    tcp.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let m = Metrics::new();
        let g: GaugeSource = Arc::new(Vec::new);
        assert_eq!(route("GET", "/healthz", &m, &g).0, 200);
        assert_eq!(route("GET", "/readyz", &m, &g).0, 503);
        m.set_ready(true);
        assert_eq!(route("GET", "/readyz", &m, &g).0, 200);
        let (s, _, body) = route("GET", "/metrics", &m, &g);
        assert_eq!(s, 200);
        assert!(body.contains("phigate_ready 1"));
        assert_eq!(route("POST", "/metrics", &m, &g).0, 405);
        assert_eq!(route("GET", "/nope", &m, &g).0, 404);
    }
}
