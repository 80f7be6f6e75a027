//! TLS: the inbound server configuration (with reload) and, for delivery, the outbound
//! certificate verifiers: DANE (RFC 7672), MTA-STS policy handling (RFC 8461), WebPKI and
//! encrypt-only, and the RFC 8460 TLS-RPT vocabulary (`rpt`).

/// The handshake-signature half of a rustls `ServerCertVerifier` is the same for every
/// certificate policy phigate has: check the signature with the crypto provider's
/// algorithms. Expands inside an `impl ServerCertVerifier` whose type has a
/// `provider: Arc<CryptoProvider>` field.
macro_rules! provider_handshake_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &rustls::pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &rustls::pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.provider
                .signature_verification_algorithms
                .supported_schemes()
        }
    };
}
pub(crate) use provider_handshake_signatures;

pub mod client;
pub mod dane;
pub mod https;
pub mod mta_sts;
pub mod peer_verify;
pub mod rpt;
pub mod server;
