//! Anomaly alerts (`[alerts]`): volume far above an identity's own baseline, a burst of
//! DLP findings, repeated AUTH failures or a lockout, a new source IP for an identity,
//! and delivery attempts whose TLS verification failed.
//!
//! An alert is an audit record (`security_alert`, forwarded by the audit trail's syslog
//! mirror when `[audit] syslog` is set), a metric (`phigate_security_alerts_total{kind}`),
//! a log line, and a webhook event `security.alert` (see [`Alerts::raise`]). It carries
//! the kind, the rule that fired, the identity (an account name) or source IP, and
//! counts: never an address, a subject or content.

use crate::audit::{Audit, AuditEvent, Kind};
use crate::config::AlertsConfig;
use crate::metrics::Metrics;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use tracing::warn;

/// What kind of anomaly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AlertKind {
    Volume,
    DlpBurst,
    AuthFailures,
    AuthLockout,
    NewSourceIp,
    TlsVerification,
    /// A portal notification had DLP findings and was not sent (a template leaks PHI).
    PortalNotice,
}

impl AlertKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::Volume => "volume",
            AlertKind::DlpBurst => "dlp_burst",
            AlertKind::AuthFailures => "auth_failures",
            AlertKind::AuthLockout => "auth_lockout",
            AlertKind::NewSourceIp => "new_source_ip",
            AlertKind::TlsVerification => "tls_verification",
            AlertKind::PortalNotice => "portal_notice_refused",
        }
    }
}

/// One alert: no addresses, no content.
#[derive(Debug, Clone)]
pub struct Alert {
    pub kind: AlertKind,
    /// The sending identity (`password:ehr`), when the anomaly belongs to one.
    pub identity: Option<String>,
    /// A source or peer IP, when that is what the anomaly is about.
    pub ip: Option<String>,
    /// The rule that fired, in words (`messages this hour > 10 x baseline`).
    pub rule: String,
    /// Named counts (`observed`, `threshold`, ...).
    pub counts: Vec<(&'static str, u64)>,
}

#[derive(Default)]
struct Windows {
    /// (time, findings) per identity.
    dlp: HashMap<String, VecDeque<(u64, u64)>>,
    /// Failure times per source IP.
    auth: HashMap<String, VecDeque<u64>>,
    /// (identity, hour) already alerted for volume; (identity/ip, window) for bursts.
    fired: HashSet<(AlertKind, String, u64)>,
}

pub struct Alerts {
    cfg: RwLock<AlertsConfig>,
    audit: Arc<Audit>,
    metrics: Arc<Metrics>,
    windows: Mutex<Windows>,
}

impl std::fmt::Debug for Alerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Alerts")
    }
}

/// Bound on remembered keys per map (a distributed attack must not grow memory).
const MAX_KEYS: usize = 50_000;

impl Alerts {
    pub fn new(cfg: AlertsConfig, audit: Arc<Audit>, metrics: Arc<Metrics>) -> Self {
        Alerts {
            cfg: RwLock::new(cfg),
            audit,
            metrics,
            windows: Mutex::new(Windows::default()),
        }
    }

    pub fn set_config(&self, cfg: AlertsConfig) {
        *self.cfg.write().unwrap_or_else(|p| p.into_inner()) = cfg;
    }

    fn cfg(&self) -> AlertsConfig {
        self.cfg.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn windows(&self) -> std::sync::MutexGuard<'_, Windows> {
        self.windows.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The one place an alert leaves phigate: audit record (and through it the syslog
    /// mirror), metric, log line. The webhook event `security.alert` plugs in here once
    /// the durable event store (`src/events/`) exists: publish `alert` as its payload
    /// (the same clear fields as the audit record).
    pub fn raise(&self, alert: Alert) {
        let kind = alert.kind.as_str();
        self.metrics
            .inc(crate::metrics::SECURITY_ALERTS, &[("kind", kind)]);
        let counts: serde_json::Map<String, serde_json::Value> = alert
            .counts
            .iter()
            .map(|(k, v)| (k.to_string(), (*v).into()))
            .collect();
        warn!(
            alert = kind,
            identity = alert.identity.as_deref().unwrap_or("-"),
            ip = alert.ip.as_deref().unwrap_or("-"),
            rule = %alert.rule,
            counts = %serde_json::Value::Object(counts.clone()),
            "security alert"
        );
        // Identity and IP in clear: they are account names and machine addresses, and the
        // SIEM behind the syslog mirror needs them to act.
        let ev = AuditEvent::new(Kind::SecurityAlert)
            .field("alert", kind)
            .field("identity", alert.identity.clone())
            .field("ip", alert.ip.clone())
            .field("rule", alert.rule.as_str())
            .field("counts", serde_json::Value::Object(counts));
        self.audit.record_now(ev);
    }

    /// After a message was admitted: `this_hour` messages now, `baseline` the mean per
    /// hour of the previous day.
    pub fn volume(&self, identity: &str, this_hour: u64, baseline: f64, now: u64) {
        let cfg = self.cfg();
        let Some(factor) = cfg.volume_factor else {
            return;
        };
        let threshold = (baseline * factor).max(cfg.volume_min_messages as f64);
        if (this_hour as f64) <= threshold {
            return;
        }
        let key = (AlertKind::Volume, identity.to_string(), now / 3600);
        if !self.first(key) {
            return;
        }
        self.raise(Alert {
            kind: AlertKind::Volume,
            identity: Some(identity.to_string()),
            ip: None,
            rule: format!(
                "messages this hour > max({factor} x baseline, {})",
                cfg.volume_min_messages
            ),
            counts: vec![
                ("messages_this_hour", this_hour),
                ("baseline_per_hour_x100", (baseline * 100.0) as u64),
                ("threshold", threshold.ceil() as u64),
            ],
        });
    }

    /// Once per key; false when it already fired.
    fn first(&self, key: (AlertKind, String, u64)) -> bool {
        let mut w = self.windows();
        if w.fired.len() > MAX_KEYS {
            w.fired.clear();
        }
        w.fired.insert(key)
    }

    /// A message from `identity` had `findings` distinct DLP identifiers.
    pub fn dlp(&self, identity: &str, findings: u64, now: u64) {
        let cfg = self.cfg();
        let (Some(max), true) = (cfg.dlp_findings, findings > 0) else {
            return;
        };
        let window = cfg.dlp_window.0.max(1);
        let total = {
            let mut w = self.windows();
            if w.dlp.len() > MAX_KEYS {
                w.dlp.clear();
            }
            let q = w.dlp.entry(identity.to_string()).or_default();
            q.push_back((now, findings));
            while q.front().is_some_and(|(t, _)| t + window <= now) {
                q.pop_front();
            }
            q.iter().map(|(_, n)| n).sum::<u64>()
        };
        if total < max || !self.first((AlertKind::DlpBurst, identity.to_string(), now / window)) {
            return;
        }
        self.raise(Alert {
            kind: AlertKind::DlpBurst,
            identity: Some(identity.to_string()),
            ip: None,
            rule: format!("DLP findings within {window} s >= {max}"),
            counts: vec![("findings", total), ("threshold", max)],
        });
    }

    /// An AUTH failure from `ip`; `locked` when the failure limiter cut it off.
    pub fn auth_failure(&self, ip: &str, locked: bool, now: u64) {
        let cfg = self.cfg();
        if locked {
            self.raise(Alert {
                kind: AlertKind::AuthLockout,
                identity: None,
                ip: Some(ip.to_string()),
                rule: "AUTH failure limit reached, source locked out".into(),
                counts: vec![],
            });
        }
        let Some(max) = cfg.auth_failures else {
            return;
        };
        let window = cfg.auth_window.0.max(1);
        let n = {
            let mut w = self.windows();
            if w.auth.len() > MAX_KEYS {
                w.auth.clear();
            }
            let q = w.auth.entry(ip.to_string()).or_default();
            q.push_back(now);
            while q.front().is_some_and(|t| t + window <= now) {
                q.pop_front();
            }
            q.len() as u64
        };
        if n < max || !self.first((AlertKind::AuthFailures, ip.to_string(), now / window)) {
            return;
        }
        self.raise(Alert {
            kind: AlertKind::AuthFailures,
            identity: None,
            ip: Some(ip.to_string()),
            rule: format!("AUTH failures within {window} s >= {max}"),
            counts: vec![("failures", n), ("threshold", max)],
        });
    }

    /// `identity`, which has sent before, sends from `ip` for the first time.
    pub fn new_source(&self, identity: &str, ip: &str) {
        if !self.cfg().new_source_ip {
            return;
        }
        self.raise(Alert {
            kind: AlertKind::NewSourceIp,
            identity: Some(identity.to_string()),
            ip: Some(ip.to_string()),
            rule: "first message from this source IP".into(),
            counts: vec![],
        });
    }

    /// A delivery attempt to `peer_ip` failed TLS verification (possible downgrade).
    /// Once per peer and hour: retries of the same message must not flood the SIEM.
    pub fn tls_failure(&self, identity: Option<&str>, peer_ip: &str, recipients: u64) {
        if !self.cfg().tls_verification_failures {
            return;
        }
        let hour = crate::types::now_secs() / 3600;
        let key = format!("{}|{peer_ip}", identity.unwrap_or(""));
        if !self.first((AlertKind::TlsVerification, key, hour)) {
            return;
        }
        self.raise(Alert {
            kind: AlertKind::TlsVerification,
            identity: identity.map(str::to_string),
            ip: (!peer_ip.is_empty()).then(|| peer_ip.to_string()),
            rule: "delivery attempt failed TLS verification".into(),
            counts: vec![("recipients", recipients)],
        });
    }

    /// A portal notification or code mail had DLP findings and was not sent: the
    /// template (or the organisation name) carries something that looks like PHI. Once
    /// an hour: every retry of the message would repeat it.
    pub fn portal_notice_refused(&self, findings: &str) {
        let hour = crate::types::now_secs() / 3600;
        if !self.first((AlertKind::PortalNotice, String::new(), hour)) {
            return;
        }
        let n = findings
            .split(',')
            .filter_map(|p| p.rsplit('=').next()?.trim().parse::<u64>().ok())
            .sum();
        self.raise(Alert {
            kind: AlertKind::PortalNotice,
            identity: None,
            ip: None,
            rule: "portal notification has DLP findings; not sent".into(),
            counts: vec![("findings", n)],
        });
    }
}
