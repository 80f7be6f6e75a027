//! The one factory for outbound rustls configurations (SMTP delivery, MTA-STS fetches,
//! webhooks): one crypto provider, TLS 1.2 and 1.3 only, and either WebPKI roots or a
//! caller's certificate verifier. Inbound listeners build theirs in `tls::server`.

use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, RootCertStore};
use std::sync::{Arc, OnceLock};

/// The provider every outbound connection and certificate check uses (ring: the
/// client side does far fewer signatures than the listeners, where aws-lc-rs is faster).
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// The Mozilla root set shipped with webpki-roots.
pub fn webpki_roots() -> RootCertStore {
    RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    }
}

/// A client configuration that checks the server with `verifier`.
pub fn with_verifier(
    verifier: Arc<dyn ServerCertVerifier>,
) -> Result<Arc<ClientConfig>, rustls::Error> {
    // TLS 1.2 and 1.3 only: rustls never offers 1.0/1.1.
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A client configuration that checks the server's chain and name against `roots`.
pub fn with_roots(roots: RootCertStore) -> Result<Arc<ClientConfig>, rustls::Error> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
