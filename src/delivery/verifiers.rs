//! rustls client configurations for each [`Requirement`], built from the `tls` verifiers.

use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};

use super::level::Requirement;
use crate::config::DeliveryConfig;
use crate::tls::dane::DaneVerifier;
use crate::tls::peer_verify::{pkix_verifier, EncryptOnlyVerifier};
use crate::tls::rpt::{classify_handshake, ResultType};

/// Long-lived verifiers shared by all connections.
pub(super) struct Verifiers {
    pkix: Arc<WebPkiServerVerifier>,
    /// Configurations for the stateless verifiers, built once so that rustls' in-memory
    /// session cache (keyed by server name) survives between connections and outbound
    /// handshakes can resume. One per verifier: a session established under a weaker
    /// check is never resumed where a stronger one applies.
    pkix_config: Arc<ClientConfig>,
    smarthost_config: Arc<ClientConfig>,
    encrypt_config: Arc<ClientConfig>,
}

/// A configuration for one connection and the verifier state to read afterwards.
pub(super) struct Built {
    pub config: Arc<ClientConfig>,
    kind: Kind,
}

enum Kind {
    Dane(Arc<DaneVerifier>),
    MtaSts,
    Pkix,
    Encrypt,
    Testing(Arc<RecordingVerifier>),
}

impl Built {
    /// The per-hop `method` after a successful handshake.
    pub fn method(&self) -> String {
        match &self.kind {
            Kind::Dane(v) => v
                .matched()
                .map(|m| m.method.as_str().to_string())
                .unwrap_or_else(|| "dane".into()),
            Kind::MtaSts => "mta-sts".into(),
            Kind::Pkix => "pkix".into(),
            Kind::Encrypt | Kind::Testing(_) => "encrypt-only".into(),
        }
    }

    /// For an MTA-STS `testing` policy: whether the certificate would have passed.
    pub fn sts_testing_outcome(&self, _host: &str) -> Option<String> {
        match &self.kind {
            Kind::Testing(v) => Some(match v.result() {
                Some(Ok(())) => "testing: policy satisfied".into(),
                Some(Err((e, _))) => format!("testing: policy failed ({e}), delivered anyway"),
                None => "testing: certificate not checked".into(),
            }),
            _ => None,
        }
    }
}

impl Built {
    /// For an MTA-STS `testing` policy: how TLS-RPT reports a certificate that would have
    /// failed (the session goes ahead, RFC 8461 §5).
    pub fn sts_testing_failure(&self) -> Option<ResultType> {
        match &self.kind {
            Kind::Testing(v) => v.result().and_then(|r| r.err()).map(|(_, t)| t),
            _ => None,
        }
    }
}

fn config_with(verifier: Arc<dyn ServerCertVerifier>) -> Result<Arc<ClientConfig>, String> {
    crate::tls::client::with_verifier(verifier).map_err(|e| e.to_string())
}

impl Verifiers {
    pub fn new(cfg: &DeliveryConfig) -> Result<Self, String> {
        let pkix = pkix_verifier(cfg.extra_ca_file.as_deref()).map_err(|e| e.to_string())?;
        let sh_ca = cfg
            .smarthost
            .as_ref()
            .and_then(|s| s.ca_file.as_deref())
            .or(cfg.extra_ca_file.as_deref());
        let smarthost = pkix_verifier(sh_ca).map_err(|e| e.to_string())?;
        Ok(Verifiers {
            pkix_config: config_with(pkix.clone())?,
            smarthost_config: config_with(smarthost)?,
            encrypt_config: config_with(Arc::new(EncryptOnlyVerifier::new()))?,
            pkix,
        })
    }

    /// Configuration for fetching MTA-STS policies (WebPKI + extra CA).
    pub fn sts_config(&self) -> Arc<ClientConfig> {
        self.pkix_config.clone()
    }

    pub fn for_requirement(
        &self,
        req: &Requirement,
        host: &str,
        smarthost: bool,
    ) -> Result<Built, String> {
        let shared = |config: &Arc<ClientConfig>, kind| {
            Ok(Built {
                config: config.clone(),
                kind,
            })
        };
        // Verifiers that record per-connection results (DANE match, MTA-STS testing) get
        // a fresh configuration, hence no resumption: their result must come from a real
        // certificate check on this connection.
        let (verifier, kind): (Arc<dyn ServerCertVerifier>, Kind) = match req {
            Requirement::Dane(tlsa) => {
                let v = Arc::new(
                    DaneVerifier::new(tlsa.clone(), vec![host.to_string()])
                        .map_err(|e| e.to_string())?,
                );
                (v.clone(), Kind::Dane(v))
            }
            Requirement::MtaSts => return shared(&self.pkix_config, Kind::MtaSts),
            Requirement::Pkix if smarthost => return shared(&self.smarthost_config, Kind::Pkix),
            Requirement::Pkix => return shared(&self.pkix_config, Kind::Pkix),
            Requirement::Encrypt { sts_testing: true } => {
                let v = Arc::new(RecordingVerifier {
                    inner: self.pkix.clone(),
                    result: Mutex::new(None),
                });
                (v.clone(), Kind::Testing(v))
            }
            Requirement::Encrypt { sts_testing: false } => {
                return shared(&self.encrypt_config, Kind::Encrypt)
            }
        };
        Ok(Built {
            config: config_with(verifier)?,
            kind,
        })
    }
}

/// Runs the WebPKI check, records the result and accepts the certificate anyway (MTA-STS
/// `testing`: deliver, report). Handshake signatures are still verified.
#[derive(Debug)]
struct RecordingVerifier {
    inner: Arc<WebPkiServerVerifier>,
    result: Mutex<Option<Result<(), (String, ResultType)>>>,
}

impl RecordingVerifier {
    fn result(&self) -> Option<Result<(), (String, ResultType)>> {
        self.result
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl ServerCertVerifier for RecordingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let r = self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
            .map(|_| ())
            .map_err(|e| (e.to_string(), classify_handshake(&e)));
        *self.result.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DeliveryMode;
    use crate::tls::dane::Tlsa;

    fn verifiers() -> Verifiers {
        Verifiers::new(&DeliveryConfig::with_mode(DeliveryMode::Mx)).expect("verifiers")
    }

    #[test]
    fn stateless_requirements_share_one_config_per_verifier() {
        let v = verifiers();
        let cfg = |req: Requirement, smarthost| {
            v.for_requirement(&req, "mx.example.org", smarthost)
                .expect("config")
                .config
        };
        // Same config twice: its session cache carries over, so handshakes can resume.
        assert!(Arc::ptr_eq(
            &cfg(Requirement::Pkix, false),
            &cfg(Requirement::Pkix, false)
        ));
        let encrypt = Requirement::Encrypt { sts_testing: false };
        assert!(Arc::ptr_eq(&cfg(encrypt, false), &v.encrypt_config));
        // Different checks never share a cache: no resuming across levels.
        assert!(!Arc::ptr_eq(
            &cfg(Requirement::Pkix, false),
            &cfg(Requirement::Encrypt { sts_testing: false }, false)
        ));
        assert!(!Arc::ptr_eq(
            &cfg(Requirement::Pkix, true),
            &cfg(Requirement::Pkix, false)
        ));
    }

    #[test]
    fn recording_verifiers_get_a_fresh_config_each_time() {
        let v = verifiers();
        let tlsa = Tlsa {
            usage: 3,
            selector: 1,
            matching: 1,
            data: vec![0; 32],
        };
        let dane = || {
            v.for_requirement(
                &Requirement::Dane(vec![tlsa.clone()]),
                "mx.example.org",
                false,
            )
            .expect("config")
            .config
        };
        assert!(!Arc::ptr_eq(&dane(), &dane()));
        let testing = || {
            v.for_requirement(
                &Requirement::Encrypt { sts_testing: true },
                "mx.example.org",
                false,
            )
            .expect("config")
            .config
        };
        assert!(!Arc::ptr_eq(&testing(), &testing()));
    }
}
