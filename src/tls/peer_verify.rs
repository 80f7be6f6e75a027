//! Outbound peer verifiers for the `encrypt` and `verify` TLS levels.
//!
//! - [`EncryptOnlyVerifier`]: accepts any certificate (the `encrypt` level authenticates
//!   nobody) but still checks the handshake signature, so the session keys really belong
//!   to whoever holds the presented certificate's key.
//! - [`pkix_verifier`]: WebPKI chain + name checks against the Mozilla roots from
//!   `webpki-roots`, plus an optional extra CA bundle for tests and private networks.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
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
            provider: Arc::new(rustls::crypto::ring::default_provider()),
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

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
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
    WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .map_err(|e| PeerVerifyError::Verifier(e.to_string()))
}
