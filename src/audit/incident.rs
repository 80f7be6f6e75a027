//! `phigate audit incident`: what left, to whom and how, from the audit trail alone.
//!
//! One row per message and recipient: time, sending identity, source IP, recipient
//! (decrypted: the compliance officer needs it, and the command is itself audited),
//! DLP detector names and counts, the policy decision, the final state, and the TLS
//! evidence of the delivery (version, verification method, peer certificate hash).
//! Only the trail is read, so the report still works after content was shredded.
//!
//! One pass in chain order: a `message_received` record inside the time window opens a
//! message (the only records whose sealed part is decrypted); later records of that
//! message fill in decision, attempts and outcomes from their clear fields. The caller
//! verifies the chain first (see `verify`).

use super::record::{self, DecodeError};
use super::{seq_of, AuditError, KeyCache};
use crate::spool::{Keyring, Store, Tree};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::{BTreeSet, HashMap};

/// Which messages and rows to report. Times are unix milliseconds (`until` exclusive).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncidentFilter {
    pub since_ms: Option<u64>,
    pub until_ms: Option<u64>,
    /// Sending identity (`password:ehr`); `*` and `?` globs allowed.
    pub identity: Option<String>,
    /// Only recipients in this domain (exact, case-insensitive).
    pub recipient_domain: Option<String>,
    /// Only messages a policy rule of this name decided.
    pub rule: Option<String>,
    /// Only messages with a finding of this DLP detector.
    pub detector: Option<String>,
}

/// One message × recipient.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Row {
    pub time: String,
    pub message_id: String,
    pub identity: String,
    pub source_ip: String,
    pub recipient: String,
    /// `name=count, ...` (detector names and counts, never values).
    pub detectors: String,
    /// The policy action for this recipient and the rule that decided it.
    pub decision: String,
    pub rule: String,
    /// delivered, bounced, expired, deferred, queued, quarantined, held, deleted,
    /// rejected, refused.
    pub state: String,
    pub tls_version: String,
    /// dane-ee, dane-ta, mta-sts, pkix, encrypt-only, sandbox (empty: never connected).
    pub tls_method: String,
    pub peer_cert_sha256: String,
    pub mx_host: String,
    pub verified_tls: bool,
    /// Secure-portal pickups: phigate has no portal yet, so always empty.
    pub portal_pickups: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub messages: u64,
    pub recipients: u64,
    pub recipient_domains: u64,
    /// Distinct recipient addresses.
    pub individuals: u64,
    /// Recipients delivered over verified TLS (DANE, MTA-STS or PKIX).
    pub delivered_verified_tls: u64,
    pub delivered: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incident {
    /// The chain-verification statement the report rests on.
    pub chain: String,
    pub summary: Summary,
    pub rows: Vec<Row>,
}

#[derive(Default)]
struct Rcpt {
    address: String,
    action: String,
    rule: String,
    state: String,
    tls_version: String,
    tls_method: String,
    peer_cert: String,
    mx_host: String,
}

#[derive(Default)]
struct Msg {
    time: String,
    identity: String,
    source_ip: String,
    detectors: String,
    action: String,
    rule: String,
    spooled: bool,
    quarantined: bool,
    deleted: bool,
    held: bool,
    rcpts: Vec<Rcpt>,
}

fn s(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::Bool(b)) => b.to_string(),
        _ => String::new(),
    }
}

/// Methods that authenticate the peer (not `encrypt-only`, not `sandbox`).
pub fn is_verified(method: &str) -> bool {
    matches!(method, "dane-ee" | "dane-ta" | "mta-sts" | "pkix")
}

fn has_detector(summary: &str, name: &str) -> bool {
    summary
        .split(',')
        .filter_map(|p| p.trim().split_once('='))
        .any(|(n, _)| n.eq_ignore_ascii_case(name))
}

/// Verify the chain and build the report at once: `verify` runs on its own thread while
/// this one reads the trail (both only read the store; on two cores the report costs
/// little more than the verification). The report is returned only if the chain checks
/// out; its statement says so. `upto` is the last record to read: a head taken before
/// the verification started, so nothing appended meanwhile is reported unverified.
pub fn verified_incident<V>(
    store: &dyn Store,
    ring: &Keyring,
    filter: &IncidentFilter,
    upto: Option<u64>,
    verify: V,
) -> Result<Incident, String>
where
    V: FnOnce() -> Result<super::Report, super::Broken> + Send,
{
    std::thread::scope(|s| {
        let chain = s.spawn(verify);
        let report = incident(store, ring, filter, upto, String::new());
        let chain = chain
            .join()
            .map_err(|_| "audit chain verification panicked".to_string())?
            .map_err(|b| format!("audit chain verification FAILED, no report: {b}"))?;
        let mut report = report.map_err(|e| e.to_string())?;
        report.chain = format!("verified before reporting: {chain}");
        Ok(report)
    })
}

/// Build the report from the trail (the caller verifies; see [`verified_incident`]).
/// `upto`: the last record seq to read (None: all). `chain` is the verification
/// statement to carry.
pub fn incident(
    store: &dyn Store,
    ring: &Keyring,
    filter: &IncidentFilter,
    upto: Option<u64>,
    chain: String,
) -> Result<Incident, AuditError> {
    let mut keys = KeyCache::new(ring);
    let mut msgs: HashMap<String, Msg> = HashMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut failure: Option<AuditError> = None;
    let end = upto.map(|s| super::seq_key(s.saturating_add(1)));
    store.scan(
        Tree::Audit,
        &[],
        end.as_ref().map(|e| &e[..]),
        &mut |k, v| {
            let seq = seq_of(k).unwrap_or(0);
            let res = (|| -> Result<(), AuditError> {
                let (b, body, mac) = record::parse(v).map_err(|_| AuditError::Corrupt(seq))?;
                let Some(id) = b.msg.clone() else {
                    return Ok(());
                };
                if b.kind == "message_received" {
                    if filter.since_ms.is_some_and(|t| b.ts < t)
                        || filter.until_ms.is_some_and(|t| b.ts >= t)
                    {
                        return Ok(());
                    }
                    let key = keys.get(&b.key).ok_or_else(|| AuditError::MissingKey {
                        seq,
                        key: b.key.clone(),
                    })?;
                    record::check_mac(key, &b, body, mac).map_err(|_| AuditError::Corrupt(seq))?;
                    let private = record::open_private(key, &b).map_err(|e| match e {
                        DecodeError::MissingKey(key) => AuditError::MissingKey { seq, key },
                        _ => AuditError::Corrupt(seq),
                    })?;
                    let identity = s(private.get("auth_identity"));
                    if let Some(want) = &filter.identity {
                        if !crate::policy::glob::glob(want, &identity) {
                            return Ok(());
                        }
                    }
                    let rcpts = match private.get("recipients") {
                        Some(Value::Array(a)) => a
                            .iter()
                            .map(|r| Rcpt {
                                address: s(Some(r)),
                                ..Rcpt::default()
                            })
                            .collect(),
                        _ => Vec::new(),
                    };
                    let m = Msg {
                        time: super::export::rfc3339(b.ts),
                        identity,
                        source_ip: s(b.data.get("peer_ip")),
                        rcpts,
                        ..Msg::default()
                    };
                    order.push(id.clone());
                    msgs.insert(id, m);
                    return Ok(());
                }
                let Some(m) = msgs.get_mut(&id) else {
                    return Ok(());
                };
                apply(m, &b.kind, &b.data);
                Ok(())
            })();
            match res {
                Ok(()) => true,
                Err(e) => {
                    failure = Some(e);
                    false
                }
            }
        },
    )?;
    if let Some(e) = failure {
        return Err(e);
    }
    let mut out = Incident {
        chain,
        ..Incident::default()
    };
    let (mut ids, mut domains, mut people) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    for id in order {
        let Some(m) = msgs.remove(&id) else { continue };
        if filter
            .detector
            .as_ref()
            .is_some_and(|d| !has_detector(&m.detectors, d))
        {
            continue;
        }
        for r in &m.rcpts {
            if filter
                .rule
                .as_ref()
                .is_some_and(|want| r.rule != *want && m.rule != *want)
            {
                continue;
            }
            let domain = crate::types::domain_of(&r.address);
            if filter
                .recipient_domain
                .as_ref()
                .is_some_and(|d| !d.eq_ignore_ascii_case(&domain))
            {
                continue;
            }
            let state = final_state(&m, r);
            let verified = state == "delivered" && is_verified(&r.tls_method);
            out.summary.recipients += 1;
            if state == "delivered" {
                out.summary.delivered += 1;
            }
            if verified {
                out.summary.delivered_verified_tls += 1;
            }
            ids.insert(id.clone());
            domains.insert(domain);
            people.insert(r.address.to_ascii_lowercase());
            out.rows.push(Row {
                time: m.time.clone(),
                message_id: id.clone(),
                identity: m.identity.clone(),
                source_ip: m.source_ip.clone(),
                recipient: r.address.clone(),
                detectors: m.detectors.clone(),
                decision: if r.action.is_empty() {
                    m.action.clone()
                } else {
                    r.action.clone()
                },
                rule: if r.rule.is_empty() {
                    m.rule.clone()
                } else {
                    r.rule.clone()
                },
                state,
                tls_version: r.tls_version.clone(),
                tls_method: r.tls_method.clone(),
                peer_cert_sha256: r.peer_cert.clone(),
                mx_host: r.mx_host.clone(),
                verified_tls: verified,
                portal_pickups: String::new(),
            });
        }
    }
    out.summary.messages = ids.len() as u64;
    out.summary.recipient_domains = domains.len() as u64;
    out.summary.individuals = people.len() as u64;
    Ok(out)
}

/// Fold one later record of a selected message into it (clear fields only).
fn apply(m: &mut Msg, kind: &str, data: &Map<String, Value>) {
    let idx = data
        .get("rcpt_index")
        .and_then(Value::as_u64)
        .and_then(|i| usize::try_from(i).ok());
    match kind {
        "policy_decision" => {
            m.action = s(data.get("action"));
            m.rule = s(data.get("rule"));
            m.detectors = s(data.get("detectors"));
            if let Some(Value::Array(per)) = data.get("per_recipient") {
                for p in per {
                    let i = p.get("index").and_then(Value::as_u64).unwrap_or(u64::MAX);
                    if let Some(r) = usize::try_from(i).ok().and_then(|i| m.rcpts.get_mut(i)) {
                        r.action = s(p.get("action"));
                        r.rule = s(p.get("rule"));
                    }
                }
            }
        }
        "spooled" => {
            m.spooled = true;
            m.quarantined = data.get("quarantined").and_then(Value::as_bool) == Some(true);
        }
        "quarantine" => m.quarantined = true,
        "release" => m.quarantined = false,
        "delete" => m.deleted = true,
        "hold" => m.held = s(data.get("action")) == "hold",
        "delivery_attempt" => {
            if let Some(r) = idx.and_then(|i| m.rcpts.get_mut(i)) {
                r.tls_version = s(data.get("tls_version"));
                r.tls_method = s(data.get("method"));
                r.peer_cert = s(data.get("peer_cert_sha256"));
                r.mx_host = s(data.get("mx_host"));
            }
        }
        "delivered" | "deferred" | "bounced" | "expired" => {
            if let Some(r) = idx.and_then(|i| m.rcpts.get_mut(i)) {
                r.state = kind.to_string();
            }
        }
        _ => {}
    }
}

fn final_state(m: &Msg, r: &Rcpt) -> String {
    if matches!(r.state.as_str(), "delivered" | "bounced" | "expired") {
        if m.deleted && r.state == "bounced" {
            return "deleted".into();
        }
        return r.state.clone();
    }
    if m.deleted {
        return "deleted".into();
    }
    if !m.spooled {
        return if m.action == "reject" {
            "rejected".into()
        } else {
            "refused".into()
        };
    }
    if m.quarantined {
        return "quarantined".into();
    }
    if m.held {
        return "held".into();
    }
    if r.state.is_empty() {
        "queued".into()
    } else {
        r.state.clone()
    }
}

fn csv(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

const COLUMNS: [&str; 15] = [
    "time",
    "message_id",
    "identity",
    "source_ip",
    "recipient",
    "detectors",
    "decision",
    "rule",
    "state",
    "tls_version",
    "tls_method",
    "peer_cert_sha256",
    "mx_host",
    "verified_tls",
    "portal_pickups",
];

fn cells(r: &Row) -> [String; 15] {
    [
        r.time.clone(),
        r.message_id.clone(),
        r.identity.clone(),
        r.source_ip.clone(),
        r.recipient.clone(),
        r.detectors.clone(),
        r.decision.clone(),
        r.rule.clone(),
        r.state.clone(),
        r.tls_version.clone(),
        r.tls_method.clone(),
        r.peer_cert_sha256.clone(),
        r.mx_host.clone(),
        r.verified_tls.to_string(),
        r.portal_pickups.clone(),
    ]
}

impl Incident {
    /// CSV: a header, one line per row; the chain statement and summary go to the
    /// caller's stderr (a CSV file stays one table).
    pub fn to_csv(&self) -> String {
        let mut out = COLUMNS.join(",");
        out.push('\n');
        for r in &self.rows {
            let line: Vec<String> = cells(r).iter().map(|c| csv(c)).collect();
            out.push_str(&line.join(","));
            out.push('\n');
        }
        out
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Markdown for the compliance officer: statement, summary, then the table.
    pub fn to_markdown(&self) -> String {
        let s = &self.summary;
        let mut out = format!(
            "# Incident report\n\nAudit chain: {}\n\n## Summary\n\n- Messages: {}\n- Recipients: {}\n- Recipient domains: {}\n- Individuals (distinct recipients): {}\n- Delivered: {}\n- Delivered over verified TLS: {}\n\n## Recipients\n\n",
            self.chain, s.messages, s.recipients, s.recipient_domains, s.individuals, s.delivered, s.delivered_verified_tls
        );
        out.push_str(&format!("| {} |\n", COLUMNS.join(" | ")));
        out.push_str(&format!("|{}\n", "---|".repeat(COLUMNS.len())));
        for r in &self.rows {
            let c: Vec<String> = cells(r).iter().map(|c| c.replace('|', "\\|")).collect();
            out.push_str(&format!("| {} |\n", c.join(" | ")));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{Audit, AuditEvent, AuditSettings, Kind};
    use crate::spool::{MasterKey, Spool};
    use crate::types::{AuthIdentity, Envelope, HopInfo, MessageId, Recipient, Reply, Status};
    use std::sync::Arc;

    fn env(identity: &str, rcpts: &[&str]) -> Envelope {
        Envelope {
            mail_from: "dr@clinic.test".into(),
            params: Default::default(),
            recipients: rcpts.iter().map(|r| Recipient::new(*r)).collect(),
            helo: "h".into(),
            peer_ip: "192.0.2.7".into(),
            listener: "smtps".into(),
            auth: Some(AuthIdentity::Password(identity.into())),
            tls: None,
            received_at: 0,
            tls_floor: None,
            session: String::new(),
        }
    }

    #[tokio::test]
    async fn rows_states_filters_and_summary() {
        let dir = tempfile::tempdir().expect("tmp");
        let ring = Keyring::from_keys(vec![MasterKey::from_bytes("k1", 0, [9u8; 32])], "k1")
            .expect("ring");
        let spool = Arc::new(Spool::open(dir.path(), ring).expect("spool"));
        let audit = Audit::open(spool.clone(), AuditSettings::default()).expect("audit");
        let (a, b, c) = (MessageId::new(), MessageId::new(), MessageId::new());
        let ea = env("ehr", &["p1@x.test", "P2@y.test"]);
        let hop = HopInfo {
            mx_host: "mx.x.test".into(),
            tls_version: "TLSv1.3".into(),
            peer_cert_sha256: "ab".into(),
            method: "dane-ee".into(),
            ..HopInfo::default()
        };
        let ok = Reply::new(250, "2.0.0", "ok");
        let per = vec![
            ("accept".to_string(), "default".to_string()),
            ("tag".to_string(), "mark".to_string()),
        ];
        let events = vec![
            AuditEvent::message_received(a, &ea, 10),
            AuditEvent::policy_decision(a, "tag", "mark", &per, "ssn=2"),
            AuditEvent::spooled(a, "k1", false),
            AuditEvent::delivery_attempt(a, 0, "p1@x.test", Some(&hop), &ok),
            AuditEvent::outcome(a, 0, "p1@x.test", &Status::Delivered { reply: "ok".into() })
                .expect("delivered"),
            AuditEvent::outcome(
                a,
                1,
                "P2@y.test",
                &Status::Deferred {
                    next_attempt: 5,
                    reason: "x".into(),
                },
            )
            .expect("deferred"),
            AuditEvent::message_received(b, &env("other", &["p3@x.test"]), 10),
            AuditEvent::spooled(b, "k1", true),
            AuditEvent::message_received(c, &env("ehr", &["p1@x.test"]), 10),
            AuditEvent::policy_decision(c, "reject", "no-ssn", &[], "ssn=1"),
            AuditEvent::admin(Kind::Delete, "root", b),
        ];
        audit.record(events).await.expect("record");
        let run = |f: IncidentFilter| {
            incident(
                spool.store().as_ref(),
                &spool.keyring(),
                &f,
                None,
                "ok".into(),
            )
            .expect("report")
        };
        let all = run(IncidentFilter::default());
        let states: Vec<(&str, &str)> = all
            .rows
            .iter()
            .map(|r| (r.recipient.as_str(), r.state.as_str()))
            .collect();
        assert_eq!(
            states,
            [
                ("p1@x.test", "delivered"),
                ("P2@y.test", "deferred"),
                ("p3@x.test", "deleted"),
                ("p1@x.test", "rejected"),
            ]
        );
        let r0 = &all.rows[0];
        assert_eq!(
            (
                r0.identity.as_str(),
                r0.source_ip.as_str(),
                r0.decision.as_str()
            ),
            ("password:ehr", "192.0.2.7", "accept")
        );
        assert_eq!(all.rows[1].decision, "tag");
        assert_eq!(all.rows[1].rule, "mark");
        assert!(r0.verified_tls && r0.peer_cert_sha256 == "ab" && r0.mx_host == "mx.x.test");
        assert_eq!(all.summary.messages, 3);
        assert_eq!(all.summary.recipients, 4);
        assert_eq!(all.summary.individuals, 3, "p1 twice is one person");
        assert_eq!(all.summary.recipient_domains, 2);
        assert_eq!(all.summary.delivered_verified_tls, 1);
        let ehr = run(IncidentFilter {
            identity: Some("password:ehr".into()),
            recipient_domain: Some("X.TEST".into()),
            ..IncidentFilter::default()
        });
        assert_eq!(ehr.rows.len(), 2);
        let rule = run(IncidentFilter {
            rule: Some("no-ssn".into()),
            ..IncidentFilter::default()
        });
        assert_eq!(rule.rows.len(), 1);
        assert_eq!(rule.rows[0].message_id, c.to_string());
        let det = run(IncidentFilter {
            detector: Some("card".into()),
            ..IncidentFilter::default()
        });
        assert!(det.rows.is_empty());
        let md = all.to_markdown();
        assert!(md.contains("Audit chain: ok") && md.contains("| p1@x.test |"));
        assert_eq!(all.to_csv().lines().count(), 5);
    }
}
