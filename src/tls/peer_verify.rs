//! Outbound peer verifiers for the `encrypt` and `verify` TLS levels.
//!
//! - [`EncryptOnlyVerifier`]: accepts any certificate (the `encrypt` level authenticates
//!   nobody) but still checks the handshake signature, so the session keys really belong
//!   to whoever holds the presented certificate's key.
//! - [`pkix_verifier`]: WebPKI chain + name checks against the Mozilla roots from
//!   `webpki-roots`, plus an optional extra CA bundle for tests and private networks.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::RootCertStore;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum PeerVerifyError {
    #[error("cannot read CA bundle {path}: {reason}")]
    CaBundle { path: PathBuf, reason: String },
    #[error("CA bundle {0} contains no certificates")]
    EmptyCaBundle(PathBuf),
    #[error("cannot build the WebPKI verifier: {0}")]
    Verifier(String),
}

/// Verifier for the `encrypt` level: no authentication, sound handshake.
#[derive(Debug)]
pub struct EncryptOnlyVerifier {
    provider: Arc<CryptoProvider>,
}

impl EncryptOnlyVerifier {
    pub fn new() -> Self {
        EncryptOnlyVerifier {
            provider: super::client::provider(),
        }
    }
}

impl Default for EncryptOnlyVerifier {
    fn default() -> Self {
        Self::new()
    }
}

impl ServerCertVerifier for EncryptOnlyVerifier {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    super::provider_handshake_signatures!();
}

/// Reads every certificate from a PEM bundle.
pub fn load_ca_bundle(path: &Path) -> Result<Vec<CertificateDer<'static>>, PeerVerifyError> {
    let bundle_error = |reason: String| PeerVerifyError::CaBundle {
        path: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bundle_error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bundle_error(e.to_string()))?;
    if certs.is_empty() {
        return Err(PeerVerifyError::EmptyCaBundle(path.to_path_buf()));
    }
    Ok(certs)
}

/// WebPKI verifier (chain + name, TLS 1.2+ signatures) trusting the `webpki-roots` set and,
/// if given, every CA in the PEM file `extra_ca`.
pub fn pkix_verifier(
    extra_ca: Option<&Path>,
) -> Result<Arc<WebPkiServerVerifier>, PeerVerifyError> {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = extra_ca {
        for cert in load_ca_bundle(path)? {
            roots.add(cert).map_err(|e| PeerVerifyError::CaBundle {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        }
    }
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), super::client::provider())
        .build()
        .map_err(|e| PeerVerifyError::Verifier(e.to_string()))
}

/// Test support: a real rustls handshake over an in-memory duplex pipe.
#[cfg(test)]
pub(crate) mod test_handshake {
    use std::sync::Arc;

    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use rustls::{ClientConfig, ServerConfig};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use tokio_rustls::{TlsAcceptor, TlsConnector};

    pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    pub(crate) fn server_config(
        chain: Vec<CertificateDer<'static>>,
        key: &rcgen::KeyPair,
    ) -> Arc<ServerConfig> {
        let key = PrivateKeyDer::Pkcs8(key.serialize_der().into());
        let config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server cert");
        Arc::new(config)
    }

    /// Runs a handshake and a one-line exchange; returns the client's error, if any.
    pub(crate) async fn handshake(
        server: Arc<ServerConfig>,
        verifier: Arc<dyn ServerCertVerifier>,
        sni: &str,
    ) -> Result<(), String> {
        let client = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        let sni = ServerName::try_from(sni.to_string()).map_err(|e| e.to_string())?;
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);

        let server_task = tokio::spawn(async move {
            let mut tls = TlsAcceptor::from(server).accept(server_io).await.ok()?;
            let mut buf = [0u8; 4];
            tls.read_exact(&mut buf).await.ok()?;
            Some(buf)
        });
        let connected = TlsConnector::from(Arc::new(client))
            .connect(sni, client_io)
            .await;
        let mut tls = match connected {
            Ok(tls) => tls,
            Err(e) => {
                server_task.abort();
                return Err(e.to_string());
            }
        };
        tls.write_all(b"ping").await.map_err(|e| e.to_string())?;
        tls.flush().await.map_err(|e| e.to_string())?;
        // Keep the client side open until the server has read, so its writes succeed.
        let received = server_task.await.map_err(|e| e.to_string())?;
        drop(tls);
        match received {
            Some(buf) if &buf == b"ping" => Ok(()),
            _ => Err("server did not receive the data".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_handshake::{handshake, provider, server_config};
    use super::*;
    use rustls::server::{ClientHello, ResolvesServerCert};
    use rustls::sign::CertifiedKey;
    use rustls::ServerConfig;
    use std::io::Write;

    fn self_signed(name: &str) -> (CertificateDer<'static>, rcgen::KeyPair) {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec![name.to_string()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        (cert.der().clone(), key)
    }

    struct TestCa {
        cert: rcgen::Certificate,
        key: rcgen::KeyPair,
    }

    fn test_ca() -> TestCa {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "phigate private CA");
        let cert = params.self_signed(&key).expect("CA");
        TestCa { cert, key }
    }

    fn issued(ca: &TestCa, name: &str) -> (CertificateDer<'static>, rcgen::KeyPair) {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec![name.to_string()])
            .expect("params")
            .signed_by(&key, &ca.cert, &ca.key)
            .expect("leaf");
        (cert.der().clone(), key)
    }

    fn ca_file(ca: &TestCa) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().expect("temp");
        file.write_all(ca.cert.pem().as_bytes()).expect("write");
        file
    }

    #[tokio::test]
    async fn encrypt_only_accepts_any_certificate() {
        let (cert, key) = self_signed("whatever.invalid");
        let result = handshake(
            server_config(vec![cert], &key),
            Arc::new(EncryptOnlyVerifier::new()),
            "mx.example.com",
        )
        .await;
        assert_eq!(result, Ok(()));
    }

    /// Presents one certificate but signs the handshake with another key.
    #[derive(Debug)]
    struct MismatchedKey(Arc<CertifiedKey>);

    impl ResolvesServerCert for MismatchedKey {
        fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
            Some(self.0.clone())
        }
    }

    #[tokio::test]
    async fn encrypt_only_still_checks_the_handshake_signature() {
        let (presented, _) = self_signed("mx.example.com");
        let (_, other_key) = self_signed("mx.example.com");
        let signing_key = provider()
            .key_provider
            .load_private_key(rustls::pki_types::PrivateKeyDer::Pkcs8(
                other_key.serialize_der().into(),
            ))
            .expect("signing key");
        let resolver = MismatchedKey(Arc::new(CertifiedKey::new(vec![presented], signing_key)));
        let server = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(resolver));
        let result = handshake(
            Arc::new(server),
            Arc::new(EncryptOnlyVerifier::new()),
            "mx.example.com",
        )
        .await;
        let err = result.expect_err("forged handshake signature must fail");
        assert!(err.contains("BadSignature"), "unexpected error: {err}");
    }

    #[tokio::test]
    async fn pkix_with_extra_ca_accepts_valid_name() {
        let ca = test_ca();
        let file = ca_file(&ca);
        let (cert, key) = issued(&ca, "mx.example.com");
        let verifier = pkix_verifier(Some(file.path())).expect("verifier");
        let result = handshake(server_config(vec![cert], &key), verifier, "mx.example.com").await;
        assert_eq!(result, Ok(()));
    }

    #[tokio::test]
    async fn pkix_rejects_wrong_name() {
        let ca = test_ca();
        let file = ca_file(&ca);
        let (cert, key) = issued(&ca, "mx.example.com");
        let verifier = pkix_verifier(Some(file.path())).expect("verifier");
        let result = handshake(server_config(vec![cert], &key), verifier, "mx.other.org").await;
        assert!(result.is_err());
    }

    #[tokio::test]
    async fn pkix_without_extra_ca_rejects_private_issuer() {
        let ca = test_ca();
        let (cert, key) = issued(&ca, "mx.example.com");
        let verifier = pkix_verifier(None).expect("verifier");
        let result = handshake(server_config(vec![cert], &key), verifier, "mx.example.com").await;
        assert!(result.is_err());
    }

    #[test]
    fn pkix_includes_webpki_roots() {
        // Control for the test above: the bundled roots are really loaded.
        assert!(!webpki_roots::TLS_SERVER_ROOTS.is_empty());
        assert!(pkix_verifier(None).is_ok());
    }

    #[test]
    fn ca_bundle_errors() {
        let empty = tempfile::NamedTempFile::new().expect("temp");
        assert!(matches!(
            pkix_verifier(Some(empty.path())),
            Err(PeerVerifyError::EmptyCaBundle(_))
        ));
        assert!(matches!(
            pkix_verifier(Some(Path::new("/nonexistent/phigate-ca.pem"))),
            Err(PeerVerifyError::CaBundle { .. })
        ));
    }
}
