//! DNS lookups for delivery: MX, A/AAAA, TLSA and TXT answers, each with its DNSSEC status.
//!
//! [`Resolver`] is the seam: [`HickoryResolver`] validates DNSSEC in process (hickory's
//! `DnssecDnsHandle`, trust anchors from a file or hickory's built-in root anchors) and
//! [`StaticResolver`] answers from memory for unit tests.
//!
//! Negative answers (NXDOMAIN / NODATA) come back as an empty record list. A DNSSEC-bogus
//! answer is an error ([`DnsError::Bogus`]), never an empty list, so callers cannot mistake
//! a forged denial for "no TLSA records".

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::dnssec::{Algorithm, Proof, PublicKeyBuf, TrustAnchors};
use hickory_resolver::proto::rr::{RData, Record, RecordType};
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::TokioResolver;
use serde::Serialize;
use thiserror::Error;

use crate::tls::dane::Tlsa;

mod anchor;

/// DNSSEC status of an answer (RFC 4035 §4.3; "indeterminate" is folded into insecure).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DnssecStatus {
    Secure,
    Insecure,
    Bogus,
}

impl DnssecStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DnssecStatus::Secure => "secure",
            DnssecStatus::Insecure => "insecure",
            DnssecStatus::Bogus => "bogus",
        }
    }
}

/// Records of one type for one name, and how well they are authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer<T> {
    pub records: Vec<T>,
    pub status: DnssecStatus,
}

impl<T> Answer<T> {
    pub fn secure(records: Vec<T>) -> Self {
        Answer {
            records,
            status: DnssecStatus::Secure,
        }
    }
    pub fn insecure(records: Vec<T>) -> Self {
        Answer {
            records,
            status: DnssecStatus::Insecure,
        }
    }
}

/// One MX record. `exchange` is lower-case without the trailing dot; "" is the null MX.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mx {
    pub preference: u16,
    pub exchange: String,
}

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum DnsError {
    #[error("DNSSEC validation failed for {0}")]
    Bogus(String),
    #[error("DNS lookup failed for {name}: {reason}")]
    Temporary { name: String, reason: String },
    #[error("DNS resolver setup: {0}")]
    Setup(String),
}

pub type DnsFuture<'a, T> = Pin<Box<dyn Future<Output = Result<Answer<T>, DnsError>> + Send + 'a>>;

/// The lookups delivery needs. Names are absolute or relative to the root (no search list).
pub trait Resolver: Send + Sync {
    fn mx<'a>(&'a self, name: &'a str) -> DnsFuture<'a, Mx>;
    fn ip<'a>(&'a self, name: &'a str) -> DnsFuture<'a, IpAddr>;
    fn tlsa<'a>(&'a self, name: &'a str) -> DnsFuture<'a, Tlsa>;
    fn txt<'a>(&'a self, name: &'a str) -> DnsFuture<'a, String>;
}

fn normalise(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// A name as error messages show it: the root zone is `.`, not an empty string.
fn shown(name: &str) -> String {
    match normalise(name) {
        n if n.is_empty() => ".".to_string(),
        n => n,
    }
}

/// Resolver settings taken from `[delivery]`.
#[derive(Debug, Clone, Default)]
pub struct ResolverSettings {
    /// Empty: use the system's resolv.conf.
    pub servers: Vec<SocketAddr>,
    /// DNSKEY records in zone-file format; none: hickory's built-in root anchors.
    pub trust_anchor: Option<std::path::PathBuf>,
    pub timeout: Option<Duration>,
}

/// hickory-resolver with in-process DNSSEC validation.
pub struct HickoryResolver {
    inner: std::sync::RwLock<TokioResolver>,
    settings: ResolverSettings,
    /// Set when the trust anchor is a zone below the root (see `anchor`).
    anchored: Option<Anchored>,
}

/// A trust anchor below the root: its zone, the keys from the file, and when its DNSKEY
/// set is to be authenticated again (None: not yet).
struct Anchored {
    zone: hickory_resolver::proto::rr::Name,
    base: TrustAnchors,
    next: tokio::sync::Mutex<Option<std::time::Instant>>,
}

fn build(
    settings: &ResolverSettings,
    anchors: Option<TrustAnchors>,
) -> Result<TokioResolver, DnsError> {
    let provider = TokioConnectionProvider::default();
    let mut builder = if settings.servers.is_empty() {
        TokioResolver::builder(provider).map_err(|e| DnsError::Setup(e.to_string()))?
    } else {
        let mut config = ResolverConfig::new();
        for addr in &settings.servers {
            // UDP first, TCP for truncated answers (signed answers are often large).
            config.add_name_server(NameServerConfig::new(*addr, Protocol::Udp));
            config.add_name_server(NameServerConfig::new(*addr, Protocol::Tcp));
        }
        TokioResolver::builder_with_config(config, provider)
    };
    let mut opts = ResolverOpts::default();
    opts.validate = true;
    opts.ndots = 0;
    opts.edns0 = true;
    if let Some(t) = settings.timeout {
        opts.timeout = t;
    }
    // Delivery must see fresh answers in tests and after key rolls; hickory's cache
    // honours TTLs, which is fine for production.
    *builder.options_mut() = opts;
    if let Some(anchors) = anchors {
        builder = builder.with_trust_anchor(Arc::new(anchors));
    }
    Ok(builder.build())
}

/// The owner name of the first DNSKEY line of an anchor file.
fn anchor_owner(text: &str) -> Option<String> {
    text.lines()
        .map(|l| l.split(';').next().unwrap_or(""))
        .find(|l| {
            l.split_whitespace()
                .any(|w| w.eq_ignore_ascii_case("DNSKEY"))
        })
        .and_then(|l| l.split_whitespace().next())
        .map(str::to_string)
}

impl HickoryResolver {
    pub fn new(settings: &ResolverSettings) -> Result<Self, DnsError> {
        let mut anchored = None;
        let anchors = match &settings.trust_anchor {
            Some(path) => {
                let anchors = load_trust_anchors(path)?;
                let owner = std::fs::read_to_string(path)
                    .ok()
                    .and_then(|t| anchor_owner(&t))
                    .and_then(|o| hickory_resolver::proto::rr::Name::from_ascii(o).ok())
                    .filter(|n| !n.is_root());
                anchored = owner.map(|zone| Anchored {
                    zone,
                    base: anchors.clone(),
                    next: tokio::sync::Mutex::new(None),
                });
                Some(anchors)
            }
            None => None,
        };
        Ok(HickoryResolver {
            inner: std::sync::RwLock::new(build(settings, anchors)?),
            settings: settings.clone(),
            anchored,
        })
    }

    /// The servers to ask for an anchored zone's keys: the configured ones, else the
    /// system's.
    fn servers(&self) -> Vec<SocketAddr> {
        if !self.settings.servers.is_empty() {
            return self.settings.servers.clone();
        }
        let mut out: Vec<SocketAddr> = hickory_resolver::system_conf::read_system_conf()
            .map(|(c, _)| c.name_servers().iter().map(|n| n.socket_addr).collect())
            .unwrap_or_default();
        out.dedup();
        out
    }

    /// With an anchor below the root: authenticate the zone's DNSKEY set when due and
    /// rebuild the resolver trusting every zone key in it. A failure keeps the anchors
    /// from the file (answers then validate as before: insecure) and is retried soon.
    async fn refresh_anchor(&self) {
        let Some(a) = &self.anchored else {
            return;
        };
        let mut next = a.next.lock().await;
        let now = std::time::Instant::now();
        if next.is_some_and(|t| now < t) {
            return;
        }
        let timeout = self.settings.timeout.unwrap_or(Duration::from_secs(5));
        let unix = u32::try_from(crate::types::now_secs()).unwrap_or(u32::MAX);
        match anchor::expand(&a.zone, &a.base, &self.servers(), timeout, unix).await {
            Ok(expanded) => {
                let mut anchors = a.base.clone();
                for k in &expanded.keys {
                    anchors.insert(k.public_key());
                }
                match build(&self.settings, Some(anchors)) {
                    Ok(r) => *self.inner.write().unwrap_or_else(|p| p.into_inner()) = r,
                    Err(e) => tracing::warn!(error = %e, "resolver rebuild failed"),
                }
                *next = Some(now + expanded.recheck);
            }
            Err(e) => {
                tracing::warn!(error = %e, "trust anchor zone keys not authenticated");
                *next = Some(now + Duration::from_secs(60));
            }
        }
    }

    /// DNSSEC status of `zone`'s SOA: start-up proof that validation works.
    pub async fn probe(&self, zone: &str) -> Result<DnssecStatus, DnsError> {
        let (records, status) = self.lookup(zone, RecordType::SOA).await?;
        if records.is_empty() {
            return Ok(DnssecStatus::Insecure);
        }
        Ok(status)
    }

    async fn lookup(
        &self,
        name: &str,
        rtype: RecordType,
    ) -> Result<(Vec<Record>, DnssecStatus), DnsError> {
        let fqdn = format!("{}.", normalise(name));
        self.refresh_anchor().await;
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner()).clone();
        match inner.lookup(fqdn.as_str(), rtype).await {
            Ok(lookup) => {
                let records: Vec<Record> = lookup
                    .records()
                    .iter()
                    .filter(|r| r.record_type() == rtype)
                    .cloned()
                    .collect();
                let status = status_of(&records);
                if status == DnssecStatus::Bogus {
                    return Err(DnsError::Bogus(shown(name)));
                }
                Ok((records, status))
            }
            Err(e) if e.is_no_records_found() => Ok((Vec::new(), DnssecStatus::Insecure)),
            Err(e) => {
                let reason = e.to_string();
                // hickory reports validation failures as errors carrying the proof.
                if reason.to_ascii_lowercase().contains("bogus") {
                    Err(DnsError::Bogus(shown(name)))
                } else {
                    Err(DnsError::Temporary {
                        name: shown(name),
                        reason,
                    })
                }
            }
        }
    }
}

/// Reads DNSKEY trust anchors (zone-file lines). Fails on a file without any key, because
/// an empty anchor set would make every answer insecure and silently disable DANE.
pub fn load_trust_anchors(path: &Path) -> Result<TrustAnchors, DnsError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| DnsError::Setup(format!("trust anchor {}: {e}", path.display())))?;
    let anchors = parse_trust_anchors(&text)
        .map_err(|e| DnsError::Setup(format!("trust anchor {}: {e}", path.display())))?;
    if anchors.is_empty() {
        return Err(DnsError::Setup(format!(
            "trust anchor {} holds no DNSKEY",
            path.display()
        )));
    }
    Ok(anchors)
}

/// Parses DNSKEY lines (`owner [ttl] [class] DNSKEY flags protocol algorithm base64...`),
/// ignoring comments and other record types. Only keys with the SEP/zone flags are used.
/// hickory's own `TrustAnchors` parser is not used: it refuses a file that also holds DS
/// lines (what `dig` and key-signing tools write beside the DNSKEY) and accepts keys
/// without the zone-key flag.
pub fn parse_trust_anchors(text: &str) -> Result<TrustAnchors, String> {
    use base64::Engine;
    let mut anchors = TrustAnchors::empty();
    for line in text.lines() {
        let line = line.split(';').next().unwrap_or("");
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some(pos) = words.iter().position(|w| w.eq_ignore_ascii_case("DNSKEY")) else {
            continue;
        };
        let field = |i: usize| {
            words
                .get(pos + i)
                .ok_or_else(|| "truncated DNSKEY line".to_string())
        };
        let flags: u16 = field(1)?
            .parse()
            .map_err(|_| "bad DNSKEY flags".to_string())?;
        let alg: u8 = field(3)?
            .parse()
            .map_err(|_| "bad DNSKEY algorithm".to_string())?;
        if flags & 0x0100 == 0 {
            return Err("DNSKEY without the zone-key flag".into());
        }
        let key_b64: String = words.get(pos + 4..).unwrap_or_default().concat();
        let key = base64::engine::general_purpose::STANDARD
            .decode(key_b64.as_bytes())
            .map_err(|e| format!("bad DNSKEY base64: {e}"))?;
        anchors.insert(&PublicKeyBuf::new(key, Algorithm::from_u8(alg)));
    }
    Ok(anchors)
}

fn status_of(records: &[Record]) -> DnssecStatus {
    if records.is_empty() {
        return DnssecStatus::Insecure;
    }
    if records.iter().any(|r| r.proof() == Proof::Bogus) {
        DnssecStatus::Bogus
    } else if records.iter().all(|r| r.proof() == Proof::Secure) {
        DnssecStatus::Secure
    } else {
        DnssecStatus::Insecure
    }
}

impl Resolver for HickoryResolver {
    fn mx<'a>(&'a self, name: &'a str) -> DnsFuture<'a, Mx> {
        Box::pin(async move {
            let (records, status) = self.lookup(name, RecordType::MX).await?;
            let records = records
                .iter()
                .filter_map(|r| match r.data() {
                    RData::MX(mx) => Some(Mx {
                        preference: mx.preference(),
                        exchange: normalise(&mx.exchange().to_ascii()),
                    }),
                    _ => None,
                })
                .collect();
            Ok(Answer { records, status })
        })
    }

    fn ip<'a>(&'a self, name: &'a str) -> DnsFuture<'a, IpAddr> {
        Box::pin(async move {
            let mut out = Vec::new();
            let mut statuses = Vec::new();
            let mut last_err = None;
            for rtype in [RecordType::AAAA, RecordType::A] {
                match self.lookup(name, rtype).await {
                    Ok((records, status)) => {
                        if !records.is_empty() {
                            statuses.push(status);
                        }
                        out.extend(records.iter().filter_map(|r| match r.data() {
                            RData::A(a) => Some(IpAddr::V4(a.0)),
                            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                            _ => None,
                        }));
                    }
                    Err(e @ DnsError::Bogus(_)) => return Err(e),
                    Err(e) => last_err = Some(e),
                }
            }
            if out.is_empty() {
                if let Some(e) = last_err {
                    return Err(e);
                }
            }
            let status =
                if !statuses.is_empty() && statuses.iter().all(|s| *s == DnssecStatus::Secure) {
                    DnssecStatus::Secure
                } else {
                    DnssecStatus::Insecure
                };
            Ok(Answer {
                records: out,
                status,
            })
        })
    }

    fn tlsa<'a>(&'a self, name: &'a str) -> DnsFuture<'a, Tlsa> {
        Box::pin(async move {
            let (records, status) = self.lookup(name, RecordType::TLSA).await?;
            let records = records
                .iter()
                .filter_map(|r| match r.data() {
                    RData::TLSA(t) => Some(Tlsa {
                        usage: u8::from(t.cert_usage()),
                        selector: u8::from(t.selector()),
                        matching: u8::from(t.matching()),
                        data: t.cert_data().to_vec(),
                    }),
                    _ => None,
                })
                .collect();
            Ok(Answer { records, status })
        })
    }

    fn txt<'a>(&'a self, name: &'a str) -> DnsFuture<'a, String> {
        Box::pin(async move {
            let (records, status) = self.lookup(name, RecordType::TXT).await?;
            let records = records
                .iter()
                .filter_map(|r| match r.data() {
                    // A TXT record's strings are concatenated (RFC 8461 §3.1).
                    RData::TXT(t) => Some(
                        t.txt_data()
                            .iter()
                            .map(|s| String::from_utf8_lossy(s).into_owned())
                            .collect::<String>(),
                    ),
                    _ => None,
                })
                .collect();
            Ok(Answer { records, status })
        })
    }
}

/// In-memory answers for unit tests. Unknown names give an empty insecure answer.
#[derive(Debug, Clone, Default)]
pub struct StaticResolver {
    pub mx: HashMap<String, Result<Answer<Mx>, DnsError>>,
    pub ip: HashMap<String, Result<Answer<IpAddr>, DnsError>>,
    pub tlsa: HashMap<String, Result<Answer<Tlsa>, DnsError>>,
    pub txt: HashMap<String, Result<Answer<String>, DnsError>>,
}

impl StaticResolver {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn with_mx(mut self, name: &str, status: DnssecStatus, mx: &[(u16, &str)]) -> Self {
        let records = mx
            .iter()
            .map(|(p, e)| Mx {
                preference: *p,
                exchange: normalise(e),
            })
            .collect();
        self.mx
            .insert(normalise(name), Ok(Answer { records, status }));
        self
    }
    pub fn with_ip(mut self, name: &str, status: DnssecStatus, ips: &[IpAddr]) -> Self {
        self.ip.insert(
            normalise(name),
            Ok(Answer {
                records: ips.to_vec(),
                status,
            }),
        );
        self
    }
    pub fn with_tlsa(mut self, name: &str, status: DnssecStatus, tlsa: Vec<Tlsa>) -> Self {
        self.tlsa.insert(
            normalise(name),
            Ok(Answer {
                records: tlsa,
                status,
            }),
        );
        self
    }
    pub fn with_txt(mut self, name: &str, status: DnssecStatus, txt: &[&str]) -> Self {
        self.txt.insert(
            normalise(name),
            Ok(Answer {
                records: txt.iter().map(|s| s.to_string()).collect(),
                status,
            }),
        );
        self
    }
}

fn static_get<T: Clone>(
    map: &HashMap<String, Result<Answer<T>, DnsError>>,
    name: &str,
) -> Result<Answer<T>, DnsError> {
    map.get(&normalise(name))
        .cloned()
        .unwrap_or_else(|| Ok(Answer::insecure(Vec::new())))
}

impl Resolver for StaticResolver {
    fn mx<'a>(&'a self, name: &'a str) -> DnsFuture<'a, Mx> {
        Box::pin(async move { static_get(&self.mx, name) })
    }
    fn ip<'a>(&'a self, name: &'a str) -> DnsFuture<'a, IpAddr> {
        Box::pin(async move { static_get(&self.ip, name) })
    }
    fn tlsa<'a>(&'a self, name: &'a str) -> DnsFuture<'a, Tlsa> {
        Box::pin(async move { static_get(&self.tlsa, name) })
    }
    fn txt<'a>(&'a self, name: &'a str) -> DnsFuture<'a, String> {
        Box::pin(async move { static_get(&self.txt, name) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_zone_is_shown_as_dot() {
        assert_eq!(shown("."), ".");
        assert_eq!(shown("Example.ORG."), "example.org");
        assert_eq!(
            DnsError::Bogus(shown(".")).to_string(),
            "DNSSEC validation failed for ."
        );
    }
}
