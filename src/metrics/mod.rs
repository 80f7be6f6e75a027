//! Operational metrics: counters and latency histograms kept in memory and written out
//! in the Prometheus text format (version 0.0.4) by [`http`].
//!
//! Hand-written rather than a metrics crate: the set is small and fixed, and keeping the
//! registry here lets us enforce the one rule that matters for PHI: every label value is
//! a fixed vocabulary word (listener name, policy action, status code, detector name,
//! verification method) and passes [`label_value`], which would mangle an address.

pub mod http;

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// Upper bounds (seconds) of the latency histogram buckets.
const BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// Metric families: name, type, help. Rendering walks this table, so a family shows up
/// (with HELP/TYPE) even before its first sample.
const FAMILIES: &[(&str, &str, &str)] = &[
    (
        CONNECTIONS,
        "counter",
        "SMTP connections accepted, by listener.",
    ),
    (
        MESSAGES,
        "counter",
        "Messages at end of data, by outcome and reason (policy action or enhanced status code).",
    ),
    (
        DLP_FINDINGS,
        "counter",
        "Distinct DLP findings in accepted or refused messages, by detector.",
    ),
    (
        EOD_LATENCY,
        "histogram",
        "Seconds from end of data to the final reply (scan, policy, durable spool write).",
    ),
    (
        DELIVERY_ATTEMPTS,
        "counter",
        "Per-recipient delivery attempts, by TLS verification method and result.",
    ),
    (
        DELIVERY_DURATION,
        "histogram",
        "Seconds per delivery attempt to one destination, by TLS verification method.",
    ),
    (
        DANE_LOOKUPS,
        "counter",
        "DANE TLSA lookup outcomes seen by delivery attempts.",
    ),
    (
        MTA_STS_LOOKUPS,
        "counter",
        "MTA-STS policy outcomes seen by delivery attempts.",
    ),
    (
        OUTCOMES,
        "counter",
        "Final per-recipient outcomes (delivered, bounced, expired) and quarantine events.",
    ),
    (
        WEBHOOK_POSTS,
        "counter",
        "Webhook POSTs, by result (ok, retry, dropped, gave_up).",
    ),
    (
        CONNECTIONS_REFUSED,
        "counter",
        "Connections refused with 421 at accept, by limit hit (per_ip, total).",
    ),
    (
        AUTH_RESULTS,
        "counter",
        "SMTP AUTH attempts, by result (success, failure, blocked).",
    ),
    (
        RCPT_REFUSED,
        "counter",
        "RCPT commands refused, by enhanced status code.",
    ),
    (
        LIMIT_REFUSALS,
        "counter",
        "Mail refused by a per-identity sending limit, by limit and SMTP stage.",
    ),
    (
        SECURITY_ALERTS,
        "counter",
        "Anomaly alerts raised, by kind.",
    ),
    (
        ADMIN_ACTIONS,
        "counter",
        "Containment actions (freeze, hold, release), by action.",
    ),
    (
        PORTAL_EVENTS,
        "counter",
        "Secure portal events (notified, code_requested, code_failed, verified, picked_up, replied, expired, revoked, notice_refused).",
    ),
    (
        PORTAL_REQUESTS,
        "counter",
        "Secure portal HTTP responses, by status code.",
    ),
];

pub const CONNECTIONS: &str = "phigate_connections_total";
pub const MESSAGES: &str = "phigate_messages_total";
pub const DLP_FINDINGS: &str = "phigate_dlp_findings_total";
pub const EOD_LATENCY: &str = "phigate_eod_to_reply_seconds";
pub const DELIVERY_ATTEMPTS: &str = "phigate_delivery_attempts_total";
pub const DELIVERY_DURATION: &str = "phigate_delivery_attempt_duration_seconds";
pub const DANE_LOOKUPS: &str = "phigate_dane_lookups_total";
pub const MTA_STS_LOOKUPS: &str = "phigate_mta_sts_lookups_total";
pub const OUTCOMES: &str = "phigate_outcomes_total";
pub const WEBHOOK_POSTS: &str = "phigate_webhook_posts_total";
pub const CONNECTIONS_REFUSED: &str = "phigate_connections_refused_total";
pub const AUTH_RESULTS: &str = "phigate_auth_total";
pub const RCPT_REFUSED: &str = "phigate_rcpt_refused_total";
pub const LIMIT_REFUSALS: &str = "phigate_limit_refusals_total";
pub const SECURITY_ALERTS: &str = "phigate_security_alerts_total";
pub const ADMIN_ACTIONS: &str = "phigate_admin_actions_total";
pub const PORTAL_EVENTS: &str = "phigate_portal_events_total";
pub const PORTAL_REQUESTS: &str = "phigate_portal_requests_total";

/// A sample computed at scrape time (queue depth and the like).
#[derive(Debug, Clone)]
pub struct Gauge {
    pub name: &'static str,
    pub help: &'static str,
    pub labels: Vec<(&'static str, String)>,
    pub value: f64,
}

#[derive(Debug, Default, Clone)]
struct Histogram {
    /// Non-cumulative count per bucket; the last slot is +Inf.
    buckets: [u64; BUCKETS.len() + 1],
    sum: f64,
    count: u64,
}

/// Label set rendered once, e.g. `listener="submission"`, so the map key is cheap.
type Key = (&'static str, String);

/// The registry. One mutex per kind: updates are a map lookup and an add, far below
/// the cost of the SMTP or TLS work around them.
pub struct Metrics {
    counters: Mutex<BTreeMap<Key, u64>>,
    histograms: Mutex<BTreeMap<Key, Histogram>>,
    ready: AtomicBool,
    started: Instant,
    /// Recent delivery errors for `phigate status`: ID, index and codes, never reply text.
    last_errors: Mutex<VecDeque<String>>,
}

/// Delivery errors kept for `phigate status`.
const LAST_ERRORS: usize = 10;

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Metrics {
            counters: Mutex::new(BTreeMap::new()),
            histograms: Mutex::new(BTreeMap::new()),
            ready: AtomicBool::new(false),
            started: Instant::now(),
            last_errors: Mutex::new(VecDeque::new()),
        }
    }

    /// Listeners bound and spool open (for `/readyz`).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    pub fn add(&self, name: &'static str, labels: &[(&str, &str)], n: u64) {
        let key = (name, render_labels(labels));
        *self
            .counters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key)
            .or_default() += n;
    }

    pub fn inc(&self, name: &'static str, labels: &[(&str, &str)]) {
        self.add(name, labels, 1);
    }

    pub fn observe(&self, name: &'static str, labels: &[(&str, &str)], secs: f64) {
        let key = (name, render_labels(labels));
        let mut map = self.histograms.lock().unwrap_or_else(|p| p.into_inner());
        let h = map.entry(key).or_default();
        let slot = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        h.buckets[slot] += 1;
        h.sum += secs;
        h.count += 1;
    }

    /// Remember a failed attempt (newest last, bounded). `line` must hold no PHI.
    pub fn note_error(&self, line: String) {
        let mut q = self.last_errors.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() == LAST_ERRORS {
            q.pop_front();
        }
        q.push_back(line);
    }

    pub fn last_errors(&self) -> Vec<String> {
        self.last_errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// The current value of one counter (tests and `phigate status`).
    pub fn counter(&self, name: &'static str, labels: &[(&str, &str)]) -> u64 {
        let key = (name, render_labels(labels));
        self.counters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .copied()
            .unwrap_or(0)
    }

    // Typed recorders: the call sites stay one line and the vocabulary stays here.

    pub fn connection(&self, listener: &str) {
        self.inc(CONNECTIONS, &[("listener", listener)]);
    }

    /// `limit`: `per_ip` or `total`.
    pub fn connection_refused(&self, listener: &str, limit: &str) {
        self.inc(
            CONNECTIONS_REFUSED,
            &[("listener", listener), ("limit", limit)],
        );
    }

    /// `result`: success, failure, or blocked (refused by the failure limiter).
    pub fn auth(&self, listener: &str, result: &str) {
        self.inc(AUTH_RESULTS, &[("listener", listener), ("result", result)]);
    }

    /// Codes only: the refused address never becomes a label.
    pub fn rcpt_refused(&self, listener: &str, r: &crate::types::Reply) {
        let code = reply_reason(r);
        self.inc(RCPT_REFUSED, &[("listener", listener), ("code", &code)]);
    }

    /// `outcome`: accepted, rejected, quarantined or failed; `reason`: the policy
    /// action or the reply's enhanced status code.
    pub fn message(&self, outcome: &str, reason: &str, eod_secs: f64) {
        self.inc(MESSAGES, &[("outcome", outcome), ("reason", reason)]);
        self.observe(EOD_LATENCY, &[("outcome", outcome)], eod_secs);
    }

    /// Distinct-value counts per detector from one scan.
    pub fn dlp_findings<'a>(&self, counts: impl IntoIterator<Item = (&'a String, &'a usize)>) {
        for (detector, n) in counts {
            if *n > 0 {
                self.add(DLP_FINDINGS, &[("detector", detector.as_str())], *n as u64);
            }
        }
    }

    /// One recipient's attempt. `result`: delivered, deferred or bounced.
    pub fn delivery_attempt(&self, hop: Option<&crate::types::HopInfo>, result: &str) {
        let method = hop
            .map(|h| h.method.as_str())
            .filter(|m| !m.is_empty())
            .unwrap_or("none");
        self.inc(DELIVERY_ATTEMPTS, &[("method", method), ("result", result)]);
        if let Some(h) = hop {
            if let Some(d) = dane_outcome(&h.dane) {
                self.inc(DANE_LOOKUPS, &[("outcome", d)]);
            }
            if let Some(s) = sts_outcome(&h.mta_sts) {
                self.inc(MTA_STS_LOOKUPS, &[("outcome", s)]);
            }
        }
    }

    pub fn delivery_duration(&self, method: &str, secs: f64) {
        let method = if method.is_empty() { "none" } else { method };
        self.observe(DELIVERY_DURATION, &[("method", method)], secs);
    }

    /// A final outcome (delivered, bounced, expired, quarantined, released).
    pub fn outcome(&self, event: &str) {
        self.inc(OUTCOMES, &[("event", event)]);
    }

    /// The Prometheus text exposition of everything recorded plus `gauges`.
    pub fn render(&self, gauges: &[Gauge]) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP phigate_build_info Version of the running phigate.\n# TYPE phigate_build_info gauge\nphigate_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        let _ = writeln!(
            out,
            "# HELP phigate_uptime_seconds Seconds since start.\n# TYPE phigate_uptime_seconds gauge\nphigate_uptime_seconds {}",
            self.started.elapsed().as_secs()
        );
        let _ = writeln!(
            out,
            "# HELP phigate_ready 1 once listeners are bound and the spool is open.\n# TYPE phigate_ready gauge\nphigate_ready {}",
            u8::from(self.is_ready())
        );
        let counters = self
            .counters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let histograms = self
            .histograms
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for (family, kind, help) in FAMILIES {
            let _ = writeln!(out, "# HELP {family} {help}\n# TYPE {family} {kind}");
            for ((name, labels), v) in counters.range((*family, String::new())..) {
                if name != family {
                    break;
                }
                let _ = writeln!(out, "{name}{} {v}", braces(labels));
            }
            for ((name, labels), h) in histograms.range((*family, String::new())..) {
                if name != family {
                    break;
                }
                write_histogram(&mut out, name, labels, h);
            }
        }
        let mut last = "";
        for g in gauges {
            if g.name != last {
                let _ = writeln!(out, "# HELP {} {}\n# TYPE {} gauge", g.name, g.help, g.name);
                last = g.name;
            }
            let labels: Vec<(&str, &str)> =
                g.labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let _ = writeln!(
                out,
                "{}{} {}",
                g.name,
                braces(&render_labels(&labels)),
                g.value
            );
        }
        out
    }
}

fn write_histogram(out: &mut String, name: &str, labels: &str, h: &Histogram) {
    let sep = if labels.is_empty() { "" } else { "," };
    let mut cumulative = 0;
    for (i, n) in h.buckets.iter().enumerate() {
        cumulative += n;
        let le = BUCKETS
            .get(i)
            .map_or_else(|| "+Inf".to_string(), |b| b.to_string());
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}"
        );
    }
    let _ = writeln!(out, "{name}_sum{} {}", braces(labels), h.sum);
    let _ = writeln!(out, "{name}_count{} {}", braces(labels), h.count);
}

fn braces(labels: &str) -> String {
    if labels.is_empty() {
        String::new()
    } else {
        format!("{{{labels}}}")
    }
}

fn render_labels(labels: &[(&str, &str)]) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", label_value(v)))
        .collect::<Vec<_>>()
        .join(",")
}

/// Label values are vocabulary words. Anything outside `[A-Za-z0-9_.:-]` becomes `_` and
/// the value is cut at 64 characters, so even a mistaken call site cannot put an address
/// (`@` is replaced) or free text into the exposition, and no escaping is ever needed.
pub fn label_value(v: &str) -> String {
    v.chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Coarse DANE outcome from the delivery hop's description (which may name hosts).
fn dane_outcome(text: &str) -> Option<&'static str> {
    let t = text.to_ascii_lowercase();
    Some(if t.is_empty() {
        return None;
    } else if t.contains("not applicable") {
        "not_applicable"
    } else if t.contains("bogus") || t.contains("failed") {
        "bogus"
    } else if t.contains("none usable") {
        "unusable"
    } else if t.contains("no secure") {
        "none"
    } else if t.contains("usable") {
        "usable"
    } else {
        "other"
    })
}

/// Coarse MTA-STS outcome from the delivery hop's description.
fn sts_outcome(text: &str) -> Option<&'static str> {
    let t = text.to_ascii_lowercase();
    Some(if t.is_empty() {
        return None;
    } else if t.contains("not checked") {
        "not_checked"
    } else if t.contains("fail") || t.contains("error") || t.contains("timeout") {
        "failed"
    } else if t.contains("enforce") {
        "enforce"
    } else if t.contains("testing") {
        "testing"
    } else if t.contains("none") || t.contains("no policy") {
        "none"
    } else {
        "other"
    })
}

/// The enhanced status code of a reply ("5.7.1"), or its basic code: a reason label
/// that says why without saying who.
pub fn reply_reason(r: &crate::types::Reply) -> String {
    if r.enhanced.is_empty() {
        r.code.to_string()
    } else {
        label_value(&r.enhanced)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_histograms_render_in_text_format() {
        let m = Metrics::new();
        m.connection("submission");
        m.connection("submission");
        m.message("accepted", "accept", 0.02);
        m.message("accepted", "accept", 3.0);
        let out = m.render(&[Gauge {
            name: "phigate_queue_recipients",
            help: "Recipients by state.",
            labels: vec![("state", "queued".into())],
            value: 4.0,
        }]);
        assert!(out.contains("phigate_connections_total{listener=\"submission\"} 2\n"));
        assert!(out.contains("phigate_messages_total{outcome=\"accepted\",reason=\"accept\"} 2\n"));
        assert!(out.contains(
            "phigate_eod_to_reply_seconds_bucket{outcome=\"accepted\",le=\"0.025\"} 1\n"
        ));
        assert!(out
            .contains("phigate_eod_to_reply_seconds_bucket{outcome=\"accepted\",le=\"+Inf\"} 2\n"));
        assert!(out.contains("phigate_eod_to_reply_seconds_count{outcome=\"accepted\"} 2\n"));
        assert!(out.contains("# TYPE phigate_queue_recipients gauge\n"));
        assert!(out.contains("phigate_queue_recipients{state=\"queued\"} 4\n"));
    }

    #[test]
    fn label_values_cannot_carry_addresses() {
        let m = Metrics::new();
        m.connection("bob@example.org \"x\"\n");
        let out = m.render(&[]);
        assert!(!out.contains('@'));
        assert!(out.contains("listener=\"bob_example.org__x__\""));
    }

    #[test]
    fn hop_descriptions_become_coarse_outcomes() {
        assert_eq!(
            dane_outcome("2 usable secure TLSA record(s)"),
            Some("usable")
        );
        assert_eq!(dane_outcome("secure TLSA, none usable"), Some("unusable"));
        assert_eq!(dane_outcome("no secure TLSA"), Some("none"));
        assert_eq!(dane_outcome(""), None);
        assert_eq!(
            sts_outcome("not checked (configured route)"),
            Some("not_checked")
        );
        assert_eq!(sts_outcome("policy mode enforce (cached)"), Some("enforce"));
    }

    #[test]
    fn reply_reason_is_the_enhanced_code() {
        let r = crate::types::Reply::new(550, "5.7.1", "refused for alice@example.org");
        assert_eq!(reply_reason(&r), "5.7.1");
    }
}
