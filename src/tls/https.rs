//! The one HTTPS client (hyper-util's pooled client over hyper-rustls) for everything
//! phigate fetches or posts: MTA-STS policies and webhooks. Connections to the same
//! origin are kept and reused; redirects are never followed; every request has a deadline
//! and every response body a size limit.

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::ClientConfig;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

pub type ResolveFuture = Pin<Box<dyn Future<Output = std::io::Result<Vec<IpAddr>>> + Send>>;

/// How host names become addresses: the system resolver, or the caller's (MTA-STS uses
/// phigate's own DNSSEC-aware resolver, so tests and policy hosts see the same DNS).
#[derive(Clone)]
pub enum Resolve {
    System,
    With(Arc<dyn Fn(String) -> ResolveFuture + Send + Sync>),
}

#[derive(Debug, thiserror::Error)]
pub enum HttpsError {
    #[error("timed out")]
    Timeout,
    #[error("response body over {0} bytes")]
    TooLarge(usize),
    #[error("{0}")]
    Request(String),
}

/// A response with its body read in full (within the limit).
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

#[derive(Clone)]
pub struct HttpsClient {
    client: Client<HttpsConnector<HttpConnector<Resolver>>, Full<Bytes>>,
    timeout: Duration,
}

impl HttpsClient {
    /// `allow_http`: plain `http://` URLs are accepted too (webhook receivers on an
    /// internal network); MTA-STS passes false, so its fetches are HTTPS only.
    pub fn new(
        tls: Arc<ClientConfig>,
        resolve: Resolve,
        allow_http: bool,
        timeout: Duration,
    ) -> Self {
        let mut http = HttpConnector::new_with_resolver(Resolver(resolve));
        http.enforce_http(false);
        http.set_connect_timeout(Some(timeout));
        http.set_nodelay(true);
        let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config((*tls).clone());
        let connector = if allow_http {
            builder.https_or_http().enable_http1().wrap_connector(http)
        } else {
            builder.https_only().enable_http1().wrap_connector(http)
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(4)
            .build(connector);
        HttpsClient { client, timeout }
    }

    /// Sends `req` and reads at most `max_body` bytes of the answer, all within the
    /// client's deadline.
    pub async fn send(
        &self,
        req: hyper::Request<Full<Bytes>>,
        max_body: usize,
    ) -> Result<Response, HttpsError> {
        tokio::time::timeout(self.timeout, self.send_inner(req, max_body))
            .await
            .map_err(|_| HttpsError::Timeout)?
    }

    async fn send_inner(
        &self,
        req: hyper::Request<Full<Bytes>>,
        max_body: usize,
    ) -> Result<Response, HttpsError> {
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| HttpsError::Request(describe(&e)))?;
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut body = Vec::new();
        let mut incoming = resp.into_body();
        while let Some(frame) = incoming.frame().await {
            let frame = frame.map_err(|e| HttpsError::Request(e.to_string()))?;
            if let Some(chunk) = frame.data_ref() {
                if body.len().saturating_add(chunk.len()) > max_body {
                    return Err(HttpsError::TooLarge(max_body));
                }
                body.extend_from_slice(chunk);
            }
        }
        Ok(Response {
            status,
            content_type,
            body,
        })
    }
}

/// The error chain in one line ("client error (Connect): tls handshake: ...").
fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// hyper-util's resolver interface over [`Resolve`].
#[derive(Clone)]
struct Resolver(Resolve);

impl tower_service::Service<Name> for Resolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let host = name.as_str().to_string();
        let resolve = self.0.clone();
        Box::pin(async move {
            // The connector puts the URL's port on each address.
            let ips = match resolve {
                Resolve::With(f) => f(host).await?,
                Resolve::System => tokio::net::lookup_host((host.as_str(), 0))
                    .await?
                    .map(|a| a.ip())
                    .collect(),
            };
            Ok(ips
                .into_iter()
                .map(|ip| SocketAddr::new(ip, 0))
                .collect::<Vec<_>>()
                .into_iter())
        })
    }
}
