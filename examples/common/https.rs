//! HTTPS client pieces shared by the `apiload` and `portalload` examples: a hyper client
//! over rustls that verifies phigate's certificate against the test CA, the API key file,
//! one request with a timeout, and the loadgen message mix as JSON parts.

use base64::Engine;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::HeaderMap;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::{ClientConfig, RootCertStore};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub type Https = hyper_rustls::HttpsConnector<HttpConnector>;
pub type HttpsClient = Client<Https, Full<Bytes>>;

/// A keep-alive HTTPS/1.1 client (ring provider) trusting only `ca_file`, keeping up to
/// `pool` idle connections per host.
pub fn client(ca_file: &Path, pool: usize) -> Result<HttpsClient, String> {
    let mut roots = RootCertStore::empty();
    for c in phigate::tls::server::load_certs(ca_file).map_err(|e| e.to_string())? {
        roots.add(c).map_err(|e| e.to_string())?;
    }
    let tls =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .build();
    Ok(Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(pool)
        .build(https))
}

/// `Bearer <key>` from the first line of `path`.
pub fn bearer(path: &Path) -> Result<String, String> {
    let key = std::fs::read_to_string(path).map_err(|e| format!("key file: {e}"))?;
    Ok(format!(
        "Bearer {}",
        key.lines().next().unwrap_or("").trim()
    ))
}

/// Status, headers and the whole body of one request, or why there is none.
pub async fn send(
    client: &HttpsClient,
    req: hyper::Request<Full<Bytes>>,
    timeout: Duration,
) -> Result<(u16, HeaderMap, Bytes), String> {
    tokio::time::timeout(timeout, async {
        let resp = client.request(req).await.map_err(|e| format!("{e:?}"))?;
        let status = resp.status().as_u16();
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok((status, parts.headers, bytes))
    })
    .await
    .map_err(|_| format!("timeout after {} s", timeout.as_secs()))?
}

/// The loadgen mix as JSON parts for a message of about `size` bytes: ~30% prose text,
/// ~40% random attachment (base64 in JSON). Deterministic, so runs are comparable.
pub fn body_parts(size: usize) -> (String, String) {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    const WORDS: &[&str] = &[
        "appointment",
        "schedule",
        "clinic",
        "follow-up",
        "review",
        "the",
        "and",
        "results",
        "please",
        "call",
        "office",
        "next",
        "week",
        "report",
        "attached",
        "thank",
        "you",
        "for",
        "your",
        "visit",
        "team",
        "update",
        "regards",
        "reminder",
    ];
    let budget = size.saturating_sub(1100).max(300);
    let mut text = String::new();
    while text.len() < budget * 6 / 10 {
        let start = text.len();
        while text.len() - start < 64 {
            text.push_str(WORDS[(next() % WORDS.len() as u64) as usize]);
            text.push(' ');
        }
        text.push('\n');
    }
    let raw: Vec<u8> = (0..budget * 4 / 10 * 3 / 4).map(|_| next() as u8).collect();
    (text, base64::engine::general_purpose::STANDARD.encode(raw))
}
