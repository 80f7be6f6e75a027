//! Configuration: TOML text → typed structs (`from_str`) → file + path checks (`load`, `validate`).
//!
//! Every error names the file and the key (`listener[0].tls`) so an admin can fix it
//! without reading source code.

use serde::Deserialize;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Where phigate looks for its configuration unless told otherwise.
pub const DEFAULT_PATH: &str = "/etc/phigate/phigate.toml";

/// The sandbox configuration compiled into the binary (`phigate serve --sandbox`).
pub const SANDBOX_TOML: &str = include_str!("../../conf/sandbox.toml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: key `{key}`{line}: {message}")]
    Parse {
        file: String,
        key: String,
        line: LineNo,
        message: String,
    },
    #[error("{file}: key `{key}`: {message}")]
    Invalid {
        file: String,
        key: String,
        message: String,
    },
}

/// Optional " (line N)" suffix for parse errors.
#[derive(Debug, Clone, Copy)]
pub struct LineNo(pub Option<usize>);

impl fmt::Display for LineNo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(n) => write!(f, " (line {n})"),
            None => Ok(()),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    #[serde(rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    pub tls: TlsConfig,
    pub auth: AuthConfig,
    pub delivery: DeliveryConfig,
    #[serde(default)]
    pub policy: PolicyConfig,
    pub spool: SpoolConfig,
    #[serde(default)]
    pub queue: QueueConfig,
    #[serde(default)]
    pub retention: RetentionConfig,
    #[serde(default)]
    pub audit: AuditConfig,
    /// Durable event store (`[events]`).
    #[serde(default)]
    pub events: EventsConfig,
    /// Prometheus metrics and health endpoint; off when absent.
    #[serde(default)]
    pub metrics: Option<MetricsConfig>,
    /// Delivery-outcome webhooks.
    #[serde(default, rename = "webhook")]
    pub webhooks: Vec<WebhookConfig>,
    /// Per-identity sending limits (`[limits]`, `[[limits.identity]]`).
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Anomaly alerts (`[alerts]`).
    #[serde(default)]
    pub alerts: AlertsConfig,
    /// The HTTPS submission API (`[api]`); off when absent.
    #[serde(default)]
    pub api: Option<ApiConfig>,
    /// `[portal]`: the secure pickup portal; off when absent.
    #[serde(default)]
    pub portal: Option<PortalConfig>,
    /// DKIM signing keys (`[[dkim]]`), one per signing domain and selector.
    #[serde(default, rename = "dkim")]
    pub dkim: Vec<DkimConfig>,
    /// `[tlsrpt]`: RFC 8460 TLS reports to recipient domains.
    #[serde(default)]
    pub tlsrpt: TlsRptConfig,
    /// The file this came from, for error messages and relative reloads.
    #[serde(skip)]
    pub source: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of the HTTP endpoint (`/metrics`, `/healthz`, `/readyz`). Keep it on
    /// loopback or a management network: it has no authentication.
    pub listen: SocketAddr,
}

/// A final outcome a webhook can subscribe to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookEvent {
    Queued,
    Deferred,
    Delivered,
    Bounced,
    Expired,
    Quarantined,
    Released,
    Deleted,
    #[serde(rename = "security_alert", alias = "security.alert")]
    SecurityAlert,
    /// Handed to the secure portal and notified.
    Portal,
    #[serde(rename = "picked_up")]
    PickedUp,
    Revoked,
}

impl WebhookEvent {
    pub const ALL: [WebhookEvent; 12] = [
        WebhookEvent::Queued,
        WebhookEvent::Deferred,
        WebhookEvent::Delivered,
        WebhookEvent::Bounced,
        WebhookEvent::Expired,
        WebhookEvent::Quarantined,
        WebhookEvent::Released,
        WebhookEvent::Deleted,
        WebhookEvent::SecurityAlert,
        WebhookEvent::Portal,
        WebhookEvent::PickedUp,
        WebhookEvent::Revoked,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WebhookEvent::Delivered => "delivered",
            WebhookEvent::Bounced => "bounced",
            WebhookEvent::Expired => "expired",
            WebhookEvent::Quarantined => "quarantined",
            WebhookEvent::Released => "released",
            WebhookEvent::Queued => "queued",
            WebhookEvent::Deferred => "deferred",
            WebhookEvent::Deleted => "deleted",
            WebhookEvent::SecurityAlert => "security_alert",
            WebhookEvent::Portal => "portal",
            WebhookEvent::PickedUp => "picked_up",
            WebhookEvent::Revoked => "revoked",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `http://` or `https://` (verified against the WebPKI roots) URL to POST to.
    pub url: String,
    /// File holding the shared HMAC-SHA256 secret (surrounding whitespace ignored).
    pub secret_file: PathBuf,
    /// Put recipient addresses in the payload (off: message ID and recipient index only).
    #[serde(default)]
    pub include_addresses: bool,
    /// Which outcomes to send; default all.
    #[serde(default = "defaults::webhook_events")]
    pub events: Vec<WebhookEvent>,
    /// POST attempts per event before it is dropped (backoff doubles from 1 s, max 5 min).
    #[serde(default = "defaults::webhook_attempts")]
    pub max_attempts: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Name used in the greeting, EHLO and Received headers.
    pub hostname: String,
    pub data_dir: PathBuf,
    #[serde(default = "defaults::max_message_size")]
    pub max_message_size: ByteSize,
    /// Longest message line accepted (CRLF included; at least 1000, RFC 5321's limit).
    /// Longer lines are re-encoded (quoted-printable) before relaying.
    #[serde(default = "defaults::max_line_length")]
    pub max_line_length: ByteSize,
    #[serde(default = "defaults::max_recipients")]
    pub max_recipients: usize,
    #[serde(default = "defaults::max_connections")]
    pub max_connections: usize,
    #[serde(default = "defaults::max_connections_per_ip")]
    pub max_connections_per_ip: usize,
    /// Waiting for the next command (RFC 5321 §4.5.3.2.7: at least 5 minutes).
    #[serde(default = "defaults::command_timeout")]
    pub command_timeout: Seconds,
    /// Waiting for each block of DATA/BDAT content (§4.5.3.2.6: 3 minutes).
    #[serde(default = "defaults::data_timeout")]
    pub data_timeout: Seconds,
    #[serde(default = "defaults::tls_handshake_timeout")]
    pub tls_handshake_timeout: Seconds,
    /// How long sessions in flight may run after SIGTERM before they are cut.
    #[serde(default = "defaults::shutdown_grace")]
    pub shutdown_grace: Seconds,
    /// Unix socket the CLI uses to talk to the running daemon.
    #[serde(default)]
    pub control_socket: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// TLS from the first byte (RFC 8314, port 465 style).
    Implicit,
    /// Plaintext greeting, STARTTLS mandatory before anything that carries data.
    Starttls,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthMethod {
    Password,
    ClientCert,
    Ip,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub name: String,
    pub addr: SocketAddr,
    pub tls: TlsMode,
    pub auth: Vec<AuthMethod>,
}

impl ListenerConfig {
    /// `NAME ADDR MODE`, as `check-config` and `phigate status` print it.
    pub fn describe(&self) -> String {
        let mode = match self.tls {
            TlsMode::Implicit => "implicit-tls",
            TlsMode::Starttls => "starttls",
        };
        format!("{} {} {mode}", self.name, self.addr)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum TlsVersion {
    #[serde(rename = "1.2")]
    V12,
    #[serde(rename = "1.3")]
    V13,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    #[serde(default = "defaults::min_version")]
    pub min_version: TlsVersion,
    /// Create a self-signed certificate at `cert`/`key` when they are missing (sandbox only).
    #[serde(default)]
    pub generate_self_signed: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    #[serde(default)]
    pub users_file: Option<PathBuf>,
    #[serde(default)]
    pub allow_networks: Vec<Cidr>,
    /// Subject CNs or `sha256:<hex>` fingerprints; empty = any cert chaining to `tls.client_ca`.
    #[serde(default)]
    pub client_cert_allow: Vec<String>,
    /// Failed AUTH attempts from one IP before it is cut off.
    #[serde(default = "defaults::max_auth_failures")]
    pub max_failures: u32,
    /// How long an IP stays cut off after too many failures.
    #[serde(default = "defaults::auth_lockout")]
    pub lockout: Seconds,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryMode {
    /// Write each accepted message to `data_dir/sandbox/` and never send it anywhere.
    Sandbox,
    /// Look up the recipient domain's MX records and deliver there over TLS.
    Mx,
    /// Hand everything to one upstream relay over verified TLS.
    Smarthost,
}

use crate::types::TlsLevel;

/// `implicit` (TLS from the first byte) or `starttls` for the smarthost connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutboundTls {
    Implicit,
    #[default]
    Starttls,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryConfig {
    pub mode: DeliveryMode,
    /// Port used for MX hosts (25; tests use loopback ports).
    #[serde(default = "defaults::mx_port")]
    pub mx_port: u16,
    /// DNS servers as `ip:port`; empty = the system's resolv.conf.
    #[serde(default)]
    pub dns_servers: Vec<std::net::SocketAddr>,
    /// DNSKEY trust anchors (zone-file lines); none = hickory's built-in root KSKs.
    #[serde(default)]
    pub dnssec_trust_anchor: Option<PathBuf>,
    /// TLS level for domains without an override.
    #[serde(default = "defaults::tls_level")]
    pub tls_level: TlsLevel,
    /// Extra CAs trusted for the `verify` level and MTA-STS (tests, private networks).
    #[serde(default)]
    pub extra_ca_file: Option<PathBuf>,
    #[serde(default = "defaults::connect_timeout")]
    pub connect_timeout: Seconds,
    /// Per SMTP command (RFC 5321 §4.5.3.2 suggests minutes; DATA end gets 2x).
    #[serde(default = "defaults::command_timeout")]
    pub command_timeout: Seconds,
    #[serde(default = "defaults::sts_fetch_timeout")]
    pub sts_fetch_timeout: Seconds,
    /// Simultaneous connections to one destination (domain or smarthost).
    #[serde(default = "defaults::per_destination_connections")]
    pub per_destination_connections: usize,
    /// Simultaneous outbound connections in total.
    #[serde(default = "defaults::max_outbound_connections")]
    pub max_outbound_connections: usize,
    /// `[delivery.domains."example.org"]`: route or level overrides per recipient domain.
    #[serde(default)]
    pub domains: std::collections::BTreeMap<String, DomainOverride>,
    #[serde(default)]
    pub smarthost: Option<SmarthostConfig>,
    /// No next hop meets the recipient's TLS level: keep deferring, or use the portal.
    #[serde(default)]
    pub on_tls_failure: OnTlsFailure,
    /// With `on_tls_failure = "portal"`: how long to keep retrying verified TLS first
    /// (`0s` = at the first TLS failure).
    #[serde(default = "defaults::portal_after")]
    pub portal_after: Seconds,
}

impl DeliveryConfig {
    /// A delivery section with every default and the given mode (tests, sandbox).
    pub fn with_mode(mode: DeliveryMode) -> Self {
        DeliveryConfig {
            mode,
            mx_port: defaults::mx_port(),
            dns_servers: Vec::new(),
            dnssec_trust_anchor: None,
            tls_level: defaults::tls_level(),
            extra_ca_file: None,
            connect_timeout: defaults::connect_timeout(),
            command_timeout: defaults::command_timeout(),
            sts_fetch_timeout: defaults::sts_fetch_timeout(),
            per_destination_connections: defaults::per_destination_connections(),
            max_outbound_connections: defaults::max_outbound_connections(),
            domains: Default::default(),
            smarthost: None,
            on_tls_failure: OnTlsFailure::Defer,
            portal_after: defaults::portal_after(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainOverride {
    /// Send this domain's mail to `host:port` instead of its MX (the TLS name is `host`).
    #[serde(default)]
    pub route: Option<String>,
    /// Raise the TLS level for this domain (never lowers the global level).
    #[serde(default)]
    pub tls_level: Option<TlsLevel>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmarthostConfig {
    pub host: String,
    #[serde(default = "defaults::smarthost_port")]
    pub port: u16,
    #[serde(default)]
    pub tls: OutboundTls,
    /// File with one line `username:password` for AUTH PLAIN; none = no AUTH.
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
    /// CA bundle for the smarthost certificate, in addition to the WebPKI roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// DLP and recipient policy file; none = accept everything authorised.
    #[serde(default)]
    pub file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolConfig {
    /// Master keyring file (mode 0600 or stricter; phigate refuses anything looser).
    pub key_file: PathBuf,
    /// Name of a systemd credential (`LoadCredential=`) holding the keyring; used instead
    /// of `key_file` when `$CREDENTIALS_DIRECTORY` is set.
    #[serde(default)]
    pub key_credential: Option<String>,
    /// Create the keyring on first start if it is missing (sandbox only).
    #[serde(default)]
    pub generate_key: bool,
    /// Free space the spool's file system must keep: a message that would leave less is
    /// refused with 452 4.3.1 before anything is written (as Postfix's queue_minfree).
    #[serde(default = "defaults::min_free")]
    pub min_free: ByteSize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    /// Delay before each retry; the last one repeats until `expire`.
    #[serde(default = "defaults::retry")]
    pub retry: Vec<Seconds>,
    /// Age at which an undeliverable message bounces.
    #[serde(default = "defaults::expire")]
    pub expire: Seconds,
    /// Delivery attempts running at once.
    #[serde(default = "defaults::concurrency")]
    pub concurrency: usize,
    /// Age of a still-deferred message at which its sender gets one "delayed" DSN
    /// (recipients with NOTIFY=DELAY or no NOTIFY); 0 turns it off.
    #[serde(default = "defaults::delay_warning")]
    pub delay_warning: Seconds,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            retry: defaults::retry(),
            expire: defaults::expire(),
            concurrency: defaults::concurrency(),
            delay_warning: defaults::delay_warning(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// How long content is kept after its last recipient is final (0 = shred at once).
    #[serde(default)]
    pub content_after_delivery: Seconds,
    /// How long queue metadata (IDs, states, times) is kept after that.
    #[serde(default = "defaults::metadata")]
    pub metadata: Seconds,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            content_after_delivery: Seconds(0),
            metadata: defaults::metadata(),
        }
    }
}

/// `[events]`: the durable event store behind GET /v1/events and webhooks.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsConfig {
    /// Events older than this are purged (0 = keep for ever). Default 30 days.
    #[serde(default = "defaults::events_retention")]
    pub retention: Seconds,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            retention: defaults::events_retention(),
        }
    }
}

/// `[audit]`: the tamper-evident audit trail.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// How often the chain head (seq + hash) is logged (0 = never).
    #[serde(default = "defaults::head_log_interval")]
    pub head_log_interval: Seconds,
    /// RFC 5424 forwarding: `udp://HOST:PORT`, `unix:///dev/log` or `/dev/log`.
    #[serde(default)]
    pub syslog: Option<String>,
    #[serde(default)]
    pub syslog_include_addresses: bool,
    /// Records older than this are purged (default six years, the HIPAA period).
    #[serde(default = "defaults::audit_retention")]
    pub retention: Seconds,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            head_log_interval: defaults::head_log_interval(),
            syslog: None,
            syslog_include_addresses: false,
            retention: defaults::audit_retention(),
        }
    }
}

mod api;
mod breach;
mod defaults;
mod portal;
mod tlsrpt;
mod values;

pub use api::{ApiConfig, MAX_BATCH_LIMIT};
pub use portal::{OnTlsFailure, PortalConfig};
pub use tlsrpt::{TlsRptConfig, TlsRptSettings};

/// One `[[dkim]]` signing key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DkimConfig {
    /// The signing domain (`d=`).
    pub domain: String,
    /// The selector (`s=`): the key's record is `<selector>._domainkey.<domain>`.
    pub selector: String,
    /// PEM private key (Ed25519 PKCS#8, or RSA PKCS#1/PKCS#8); mode 0600 or stricter.
    pub key_file: PathBuf,
    /// Header fields to sign; default: a safe set with `From` oversigned.
    #[serde(default)]
    pub headers: Option<Vec<String>>,
    /// From domains this key signs (`clinic.example`, `*.clinic.example`); default:
    /// exactly `domain`.
    #[serde(default)]
    pub match_from: Vec<String>,
}
pub use breach::{AlertsConfig, IdentityLimits, LimitValues, LimitsConfig};
pub use values::{ByteSize, Cidr, Seconds};

impl Config {
    /// Parse TOML text. `file` only labels errors.
    pub fn from_str(text: &str, file: &str) -> Result<Config, ConfigError> {
        let de = toml::Deserializer::new(text);
        let mut cfg: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            let line = inner.span().map(|s| line_of(text, s.start));
            ConfigError::Parse {
                file: file.to_string(),
                key: if key == "." {
                    "(top level)".into()
                } else {
                    key
                },
                line: LineNo(line),
                message: inner.message().to_string(),
            }
        })?;
        cfg.source = file.to_string();
        cfg.check_structure()?;
        Ok(cfg)
    }

    /// Read and parse the file at `path` without checking the files it names: commands
    /// that only need paths or settings from it may run as a user that cannot read the
    /// TLS key.
    pub fn read(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: file.clone(),
            source,
        })?;
        Config::from_str(&text, &file)
    }

    /// Read, parse and validate the file at `path`, including the files it names.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let cfg = Config::read(path)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The embedded sandbox configuration, validated.
    pub fn sandbox() -> Result<Config, ConfigError> {
        let cfg = Config::from_str(SANDBOX_TOML, "(embedded sandbox.toml)")?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn invalid(&self, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            file: self.source.clone(),
            key: key.into(),
            message: message.into(),
        }
    }

    /// Checks that need no file system access.
    fn check_structure(&self) -> Result<(), ConfigError> {
        if self.server.hostname.trim().is_empty() {
            return Err(self.invalid("server.hostname", "must not be empty"));
        }
        if self.listeners.is_empty() {
            return Err(self.invalid("listener", "at least one [[listener]] is required"));
        }
        if self.server.max_recipients == 0 {
            return Err(self.invalid("server.max_recipients", "must be at least 1"));
        }
        if self.server.max_connections == 0 || self.server.max_connections_per_ip == 0 {
            return Err(self.invalid("server.max_connections", "must be at least 1"));
        }
        if self.server.max_line_length.0 < 1000 {
            return Err(self.invalid(
                "server.max_line_length",
                "must be at least 1000 (RFC 5321's line limit)",
            ));
        }
        if self.server.max_message_size.0 < 1024 {
            return Err(self.invalid("server.max_message_size", "must be at least 1K"));
        }
        if self.queue.retry.is_empty() || self.queue.retry.iter().any(|r| r.0 == 0) {
            return Err(self.invalid("queue.retry", "needs at least one delay, none of them 0"));
        }
        if self.queue.concurrency == 0 {
            return Err(self.invalid("queue.concurrency", "must be at least 1"));
        }
        for (i, w) in self.webhooks.iter().enumerate() {
            if !(w.url.starts_with("http://") || w.url.starts_with("https://")) {
                return Err(
                    self.invalid(format!("webhook[{i}].url"), "must be http:// or https://")
                );
            }
            if w.max_attempts == 0 {
                return Err(
                    self.invalid(format!("webhook[{i}].max_attempts"), "must be at least 1")
                );
            }
        }
        if let Some(api) = &self.api {
            if api.max_batch == 0 || api.max_batch > MAX_BATCH_LIMIT {
                return Err(self.invalid("api.max_batch", "must be between 1 and 500"));
            }
            if api.max_recipients == 0 {
                return Err(self.invalid("api.max_recipients", "must be at least 1"));
            }
            if api.max_body.0 < 1024 {
                return Err(self.invalid("api.max_body", "must be at least 1K"));
            }
            if api.cert.is_some() != api.key.is_some() {
                return Err(self.invalid("api.cert", "api.cert and api.key go together"));
            }
            if self.listeners.iter().any(|l| l.addr == api.listen) {
                return Err(self.invalid("api.listen", "is also a [[listener]] address"));
            }
        }
        if let Some(p) = &self.portal {
            self.check_portal(p)?;
        } else if self.delivery.on_tls_failure == OnTlsFailure::Portal {
            return Err(self.invalid(
                "delivery.on_tls_failure",
                "\"portal\" needs a [portal] section",
            ));
        }
        if let Err((key, message)) = self.tlsrpt.check() {
            return Err(self.invalid(key, message));
        }
        if self.tlsrpt.enabled == Some(true) && self.delivery.mode != DeliveryMode::Mx {
            return Err(self.invalid(
                "tlsrpt.enabled",
                "needs delivery.mode = \"mx\" (only MX delivery sees the recipient domains' TLS)",
            ));
        }
        let mut names = std::collections::HashSet::new();
        for (i, l) in self.listeners.iter().enumerate() {
            let key = |k: &str| format!("listener[{i}].{k}");
            if l.name.is_empty() || !names.insert(l.name.clone()) {
                return Err(self.invalid(key("name"), "must be present and unique"));
            }
            if l.auth.is_empty() {
                return Err(self.invalid(
                    key("auth"),
                    "needs at least one of \"password\", \"client-cert\", \"ip\" (phigate is never an open relay)",
                ));
            }
            for m in &l.auth {
                match m {
                    AuthMethod::Password if self.auth.users_file.is_none() => {
                        return Err(self.invalid(key("auth"), "\"password\" needs auth.users_file"))
                    }
                    AuthMethod::ClientCert if self.tls.client_ca.is_none() => {
                        return Err(self.invalid(key("auth"), "\"client-cert\" needs tls.client_ca"))
                    }
                    AuthMethod::Ip if self.auth.allow_networks.is_empty() => {
                        return Err(self.invalid(key("auth"), "\"ip\" needs auth.allow_networks"))
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    fn check_portal(&self, p: &PortalConfig) -> Result<(), ConfigError> {
        let url = p.public_url.trim_end_matches('/');
        let host = url.strip_prefix("https://").unwrap_or("");
        if host.is_empty() || host.contains('/') || host.contains('?') {
            return Err(self.invalid(
                "portal.public_url",
                "must be an https:// origin without a path, e.g. https://secure.clinic.example",
            ));
        }
        if p.cert.is_some() != p.key.is_some() {
            return Err(self.invalid("portal.cert", "portal.cert and portal.key go together"));
        }
        if self.listeners.iter().any(|l| l.addr == p.listen)
            || self.api.as_ref().is_some_and(|a| a.listen == p.listen)
        {
            return Err(self.invalid("portal.listen", "is also a [[listener]] or [api] address"));
        }
        if p.max_code_attempts == 0 {
            return Err(self.invalid("portal.max_code_attempts", "must be at least 1"));
        }
        for (key, v) in [
            ("portal.link_ttl", p.link_ttl.0),
            ("portal.code_ttl", p.code_ttl.0),
            ("portal.session_idle", p.session_idle.0),
        ] {
            if v == 0 {
                return Err(self.invalid(key, "must be more than 0s"));
            }
        }
        if p.requests_per_minute == 0 || p.codes_per_hour == 0 {
            return Err(self.invalid(
                "portal.requests_per_minute",
                "rate limits must be at least 1",
            ));
        }
        if let Some(from) = &p.from {
            if !from.contains('@') || from.contains(|c: char| c.is_whitespace() || c == '<') {
                return Err(self.invalid("portal.from", "must be a bare address, local@domain"));
            }
        }
        if p.organization.trim().is_empty() || p.organization.contains(['\r', '\n']) {
            return Err(self.invalid("portal.organization", "must be one non-empty line"));
        }
        Ok(())
    }

    /// Checks against the file system: certificates, keys and the users file.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check_structure()?;
        let generated = self.tls.generate_self_signed;
        if !generated || self.tls.cert.exists() {
            self.check_pem("tls.cert", &self.tls.cert, "CERTIFICATE")?;
        }
        if !generated || self.tls.key.exists() {
            self.check_pem("tls.key", &self.tls.key, "PRIVATE KEY")?;
        }
        if let Some(ca) = &self.tls.client_ca {
            self.check_pem("tls.client_ca", ca, "CERTIFICATE")?;
        }
        for (i, d) in self.dkim.iter().enumerate() {
            let label = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '.';
            if d.domain.is_empty() || !d.domain.chars().all(label) {
                return Err(self.invalid(format!("dkim[{i}].domain"), "not a domain name"));
            }
            if d.selector.is_empty() || !d.selector.chars().all(label) {
                return Err(self.invalid(format!("dkim[{i}].selector"), "not a selector"));
            }
            let key = format!("dkim[{i}].key_file");
            self.check_pem(&key, &d.key_file, "PRIVATE KEY")?;
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&d.key_file)
                .map(|m| m.permissions().mode() & 0o777)
                .unwrap_or(0);
            if mode & 0o077 != 0 {
                return Err(self.invalid(
                    key,
                    format!(
                        "{} is mode {mode:04o}: a signing key must be 0600 or stricter",
                        d.key_file.display()
                    ),
                ));
            }
        }
        if let Some(users) = &self.auth.users_file {
            // A missing users file is an empty one (created by `phigate user add`), but an
            // unreadable one is a mistake worth stopping for.
            if users.exists() {
                std::fs::read(users).map_err(|e| {
                    self.invalid("auth.users_file", format!("{}: {e}", users.display()))
                })?;
            }
        }
        let cred = self.spool.key_credential.is_some()
            && std::env::var_os("CREDENTIALS_DIRECTORY").is_some();
        if !cred && !self.spool.generate_key && !self.spool.key_file.exists() {
            return Err(self.invalid(
                "spool.key_file",
                format!(
                    "{}: no such file (create it with `phigate keys generate`)",
                    self.spool.key_file.display()
                ),
            ));
        }
        if let Some(api) = &self.api {
            if let (Some(c), Some(k)) = (&api.cert, &api.key) {
                self.check_pem("api.cert", c, "CERTIFICATE")?;
                self.check_pem("api.key", k, "PRIVATE KEY")?;
            }
            if let Some(d) = &api.templates_dir {
                if !d.is_dir() {
                    return Err(self.invalid(
                        "api.templates_dir",
                        format!("{}: not a directory", d.display()),
                    ));
                }
            }
        }
        if let Some(p) = &self.portal {
            if let (Some(c), Some(k)) = (&p.cert, &p.key) {
                self.check_pem("portal.cert", c, "CERTIFICATE")?;
                self.check_pem("portal.key", k, "PRIVATE KEY")?;
            }
            for (key, f) in [
                ("portal.logo_file", &p.logo_file),
                ("portal.notification_template", &p.notification_template),
            ] {
                if let Some(f) = f {
                    std::fs::metadata(f)
                        .map_err(|e| self.invalid(key, format!("{}: {e}", f.display())))?;
                }
            }
        }
        if let Some(p) = &self.policy.file {
            if !p.exists() {
                return Err(self.invalid("policy.file", format!("{}: no such file", p.display())));
            }
        }
        Ok(())
    }

    fn check_pem(&self, key: &str, path: &Path, label: &str) -> Result<(), ConfigError> {
        let text = std::fs::read(path)
            .map_err(|e| self.invalid(key, format!("cannot read {}: {e}", path.display())))?;
        let text = String::from_utf8_lossy(&text);
        if !text.contains(&format!("{label}-----")) {
            return Err(self.invalid(key, format!("{} holds no PEM {label}", path.display())));
        }
        Ok(())
    }

    /// Where sandbox deliveries are written.
    pub fn sandbox_dir(&self) -> PathBuf {
        self.server.data_dir.join("sandbox")
    }

    /// One-line summary for `check-config`.
    pub fn summary(&self) -> String {
        let mut listeners: Vec<String> = self.listeners.iter().map(|l| l.describe()).collect();
        if let Some(api) = &self.api {
            listeners.push(format!("api {} https", api.listen));
        }
        if let Some(p) = &self.portal {
            listeners.push(format!("portal {} https", p.listen));
        }
        format!(
            "{}: ok: hostname {}, {} listener(s) [{}], delivery {:?}, data_dir {}",
            self.source,
            self.server.hostname,
            self.listeners.len(),
            listeners.join(", "),
            self.delivery.mode,
            self.server.data_dir.display()
        )
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()
        .iter()
        .take(offset)
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[server]
hostname = "gw.example.org"
data_dir = "/tmp/x"
[[listener]]
name = "smtps"
addr = "127.0.0.1:4650"
tls = "implicit"
auth = ["ip"]
[tls]
cert = "c.pem"
key = "k.pem"
[auth]
allow_networks = ["127.0.0.0/8", "::1"]
[delivery]
mode = "sandbox"
[spool]
key_file = "/nonexistent/keys"
"#;

    #[test]
    fn minimal_parses_with_defaults() {
        let c = Config::from_str(MINIMAL, "t.toml").expect("parse");
        assert_eq!(c.server.max_recipients, 100);
        assert_eq!(c.server.command_timeout, Seconds(300));
        assert!(c.auth.allow_networks[1].contains("::1".parse().unwrap()));
        assert!(c.auth.allow_networks[0].contains("::ffff:127.0.0.9".parse().unwrap()));
    }

    #[test]
    fn unknown_key_is_named_with_file_and_line() {
        let text = MINIMAL.replace("[delivery]\nmode", "[delivery]\nbogus = 1\nmode");
        let err = Config::from_str(&text, "t.toml").unwrap_err().to_string();
        assert!(err.contains("t.toml"), "{err}");
        assert!(err.contains("delivery"), "{err}");
        assert!(err.contains("bogus"), "{err}");
        assert!(err.contains("line"), "{err}");
    }

    #[test]
    fn bad_cidr_names_the_key() {
        let text = MINIMAL.replace("\"::1\"", "\"10.0.0.0/33\"");
        let err = Config::from_str(&text, "t.toml").unwrap_err().to_string();
        assert!(err.contains("auth.allow_networks[1]"), "{err}");
        assert!(err.contains("CIDR"), "{err}");
    }

    #[test]
    fn listener_without_tls_mode_is_refused() {
        let text = MINIMAL.replace("tls = \"implicit\"\n", "");
        let err = Config::from_str(&text, "t.toml").unwrap_err().to_string();
        assert!(err.contains("listener[0]"), "{err}");
        assert!(err.contains("tls"), "{err}");
    }

    #[test]
    fn plaintext_tls_mode_is_refused() {
        let text = MINIMAL.replace("tls = \"implicit\"", "tls = \"none\"");
        let err = Config::from_str(&text, "t.toml").unwrap_err().to_string();
        assert!(err.contains("listener[0].tls"), "{err}");
    }

    #[test]
    fn password_auth_needs_users_file() {
        let text = MINIMAL.replace("auth = [\"ip\"]", "auth = [\"password\"]");
        let err = Config::from_str(&text, "t.toml").unwrap_err().to_string();
        assert!(err.contains("listener[0].auth"), "{err}");
        assert!(err.contains("users_file"), "{err}");
    }

    #[test]
    fn missing_cert_file_is_named() {
        let c = Config::from_str(MINIMAL, "t.toml").expect("parse");
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("tls.cert") && err.contains("c.pem"), "{err}");
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!("5m".parse::<Seconds>(), Ok(Seconds(300)));
        assert_eq!("2d".parse::<Seconds>(), Ok(Seconds(172800)));
        assert!("5x".parse::<Seconds>().is_err());
        assert_eq!("25M".parse::<ByteSize>(), Ok(ByteSize(25 << 20)));
        assert!("M".parse::<ByteSize>().is_err());
    }

    #[test]
    fn embedded_sandbox_parses() {
        Config::from_str(SANDBOX_TOML, "sandbox").expect("sandbox config parses");
    }
}
