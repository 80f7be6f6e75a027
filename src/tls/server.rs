//! Inbound TLS: rustls server configuration from the `[tls]` section, first-run
//! self-signed certificates for the sandbox, reload on SIGHUP, and facts about a
//! finished handshake for Received headers and client-certificate authorisation.

use crate::config::{TlsConfig, TlsVersion};
use crate::types::TlsInfo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::{Arc, RwLock};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{file}: {message}")]
    File { file: String, message: String },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client CA: {0}")]
    ClientCa(String),
    #[error("certificate generation: {0}")]
    Generate(String),
}

fn file_err(path: &Path, message: impl Into<String>) -> TlsError {
    TlsError::File {
        file: path.display().to_string(),
        message: message.into(),
    }
}

pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(path, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(path, e.to_string()))?;
    if certs.is_empty() {
        return Err(file_err(path, "no PEM certificate found"));
    }
    Ok(certs)
}

pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_err(path, e.to_string()))
}

/// The crypto provider of the listeners: aws-lc-rs, with only AEAD suites that have
/// forward secrecy (its TLS 1.2 suites are all ECDHE + GCM/ChaCha20, so the default list
/// already qualifies; filtering keeps it that way if the defaults ever grow).
///
/// aws-lc-rs rather than ring (used for outbound connections) because every inbound
/// connection costs one RSA signature, and aws-lc's AVX-512 IFMA RSA code signs about
/// 2.5x faster than ring's on this class of machine: the handshake was a third of
/// phigate's CPU per relayed message (bench/README.md).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    let mut p = rustls::crypto::aws_lc_rs::default_provider();
    p.cipher_suites.retain(|s| {
        let name = format!("{:?}", s.suite());
        name.starts_with("TLS13_")
            || (name.contains("ECDHE") && (name.contains("GCM") || name.contains("CHACHA20")))
    });
    Arc::new(p)
}

fn versions(min: TlsVersion) -> &'static [&'static rustls::SupportedProtocolVersion] {
    static BOTH: [&rustls::SupportedProtocolVersion; 2] =
        [&rustls::version::TLS13, &rustls::version::TLS12];
    static ONLY13: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
    match min {
        TlsVersion::V12 => &BOTH,
        TlsVersion::V13 => &ONLY13,
    }
}

/// Build the server configuration. A client CA makes client certificates optional
/// (password and network clients still connect) but verified when presented.
pub fn build_server_config(cfg: &TlsConfig) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = load_certs(&cfg.cert)?;
    let key = load_key(&cfg.key)?;
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions(cfg.min_version))?;
    let builder = match &cfg.client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in load_certs(ca)? {
                roots
                    .add(c)
                    .map_err(|e| file_err(ca, format!("bad CA certificate: {e}")))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| TlsError::ClientCa(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key)?;
    // Stateless resumption makes reconnecting legacy clients cheap.
    config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()?;
    config.ignore_client_order = true;
    Ok(Arc::new(config))
}

/// Create a self-signed certificate and key for `hostname` if `cfg` asks for it and they
/// are missing. Returns true when files were written.
pub fn ensure_self_signed(cfg: &TlsConfig, hostname: &str) -> Result<bool, TlsError> {
    if !cfg.generate_self_signed || (cfg.cert.exists() && cfg.key.exists()) {
        return Ok(false);
    }
    let names = vec![
        hostname.to_string(),
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    let ck =
        rcgen::generate_simple_self_signed(names).map_err(|e| TlsError::Generate(e.to_string()))?;
    write_private(&cfg.key, ck.key_pair.serialize_pem().as_bytes(), 0o600)?;
    write_private(&cfg.cert, ck.cert.pem().as_bytes(), 0o644)?;
    Ok(true)
}

fn write_private(path: &Path, data: &[u8], mode: u32) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| file_err(dir, e.to_string()))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| file_err(path, e.to_string()))?;
    f.write_all(data)
        .map_err(|e| file_err(path, e.to_string()))?;
    f.sync_all().map_err(|e| file_err(path, e.to_string()))
}

/// The current server configuration, swapped on reload. Sessions keep the config they
/// started with, so a reload never drops a connection.
#[derive(Clone)]
pub struct ServerTls {
    current: Arc<RwLock<Arc<ServerConfig>>>,
}

impl ServerTls {
    pub fn new(cfg: &TlsConfig) -> Result<Self, TlsError> {
        Ok(ServerTls {
            current: Arc::new(RwLock::new(build_server_config(cfg)?)),
        })
    }

    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let cfg = self
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        tokio_rustls::TlsAcceptor::from(cfg)
    }

    /// Rebuild from `cfg`; on error the old configuration stays in use.
    pub fn reload(&self, cfg: &TlsConfig) -> Result<(), TlsError> {
        let new = build_server_config(cfg)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = new;
        Ok(())
    }
}

/// A verified client certificate.
#[derive(Debug, Clone)]
pub struct ClientCert {
    pub cn: Option<String>,
    pub sha256: String,
}

/// The protocol version as logs, Received headers and audit records name it, for
/// inbound and outbound connections alike (`TLSv1.3`, as OpenSSL and Postfix write it).
pub fn version_name(v: Option<rustls::ProtocolVersion>) -> String {
    match v {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
        Some(v) => format!("{v:?}"),
        None => "unknown".to_string(),
    }
}

/// The cipher suite's IANA name (`TLS_AES_256_GCM_SHA384`, not rustls' `TLS13_...`).
pub fn cipher_name(s: Option<rustls::SupportedCipherSuite>) -> String {
    s.map(|s| {
        let name = format!("{:?}", s.suite());
        name.strip_prefix("TLS13_")
            .map(|n| format!("TLS_{n}"))
            .unwrap_or(name)
    })
    .unwrap_or_default()
}

/// Version, cipher and client certificate of a finished server handshake.
pub fn session_info(conn: &ServerConnection) -> (TlsInfo, Option<ClientCert>) {
    let version = version_name(conn.protocol_version());
    let cipher = cipher_name(conn.negotiated_cipher_suite());
    let cert = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|leaf| {
            let sha256 = hex::encode(Sha256::digest(leaf.as_ref()));
            let cn = x509_parser::parse_x509_certificate(leaf.as_ref())
                .ok()
                .and_then(|(_, x)| {
                    x.subject()
                        .iter_common_name()
                        .next()
                        .and_then(|cn| cn.as_str().ok())
                        .map(str::to_string)
                });
            ClientCert { cn, sha256 }
        });
    let info = TlsInfo {
        version,
        cipher,
        client_cert_sha256: cert.as_ref().map(|c| c.sha256.clone()),
    };
    (info, cert)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_then_config_builds() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = TlsConfig {
            cert: dir.path().join("tls/cert.pem"),
            key: dir.path().join("tls/key.pem"),
            client_ca: None,
            min_version: TlsVersion::V12,
            generate_self_signed: true,
        };
        assert!(ensure_self_signed(&cfg, "gw.test").unwrap());
        assert!(!ensure_self_signed(&cfg, "gw.test").unwrap());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&cfg.key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let tls = ServerTls::new(&cfg).unwrap();
        let _ = tls.acceptor();
        tls.reload(&cfg).unwrap();
    }

    #[test]
    fn only_aead_forward_secret_suites() {
        for s in provider().cipher_suites.iter() {
            let n = format!("{:?}", s.suite());
            assert!(n.contains("GCM") || n.contains("CHACHA20"), "{n}");
            assert!(n.starts_with("TLS13_") || n.contains("ECDHE"), "{n}");
        }
    }
}
