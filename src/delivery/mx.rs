//! MX routing for one domain: the route (MX or a configured override), the domain's
//! MTA-STS policy, and each host's DANE state and TLS requirement.

use std::net::IpAddr;

use super::level::{self, DaneState, Refusal, Requirement, StsState};
use super::observe::{TlsAttempt, TlsPolicy, REPORT_LISTENER};
use super::route::{self, NextHop, RouteError};
use super::{Deliverer, Job};
use crate::dns::{DnsError, DnssecStatus};
use crate::tls::mta_sts::Mode;
use crate::tls::rpt::{PolicyType, ResultType};
use crate::types::{AttemptResult, RcptOutcome, Reply, TlsLevel};

/// The requirement for one host plus what to record about it.
pub(super) struct Plan {
    pub(super) requirement: Requirement,
    pub(super) dane: String,
    /// The policy TLS-RPT reports this host's sessions under.
    pub(super) policy: TlsPolicy,
}

/// Why a host is not used, and under which policy that is reported.
pub(super) struct Refused {
    pub(super) refusal: Refusal,
    pub(super) policy: TlsPolicy,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.refusal.reason())
    }
}

/// The RFC 8460 policy for a host: DANE when its TLSA records count (or failed to
/// validate), else the domain's MTA-STS policy, else none.
fn report_policy(hop: &NextHop, dane: &DaneState, sts: &StsState) -> TlsPolicy {
    let tlsa = |strings| TlsPolicy {
        kind: PolicyType::Tlsa,
        strings,
        mx_host: vec![hop.name.clone()],
    };
    match (dane, sts) {
        (DaneState::Usable(t), _) => tlsa(
            t.iter()
                .map(|r| {
                    format!(
                        "{} {} {} {}",
                        r.usage,
                        r.selector,
                        r.matching,
                        hex::encode(&r.data)
                    )
                })
                .collect(),
        ),
        (DaneState::Bogus, _) => tlsa(Vec::new()),
        (_, StsState::Policy(p)) if p.mode != Mode::None => {
            let mut strings = vec![
                "version: STSv1".to_string(),
                format!("mode: {}", p.mode.as_str()),
            ];
            strings.extend(p.mx.iter().map(|m| format!("mx: {m}")));
            strings.push(format!("max_age: {}", p.max_age));
            TlsPolicy {
                kind: PolicyType::Sts,
                strings,
                mx_host: p.mx.clone(),
            }
        }
        (_, StsState::TempFail) => TlsPolicy {
            kind: PolicyType::Sts,
            strings: Vec::new(),
            mx_host: Vec::new(),
        },
        _ => TlsPolicy::none(),
    }
}

impl Deliverer {
    pub(super) async fn deliver_mx(&self, job: Job<'_>, domain: &str) -> Vec<RcptOutcome> {
        let level = self.level_for(domain, job.env.tls_floor, job.env.params.requiretls);
        let override_route = self
            .cfg
            .domains
            .get(domain)
            .and_then(|o| o.route.as_deref())
            .and_then(|r| route::parse_route(r, self.cfg.mx_port));
        let routed = override_route.is_some();
        let (hops, sts_state, sts_outcome) = match override_route {
            Some(hop) => (
                vec![hop],
                StsState::None,
                "not checked (configured route)".to_string(),
            ),
            None => {
                let route =
                    match route::resolve(self.resolver.as_ref(), domain, self.cfg.mx_port).await {
                        Ok(r) => r,
                        Err(RouteError::NullMx) => {
                            return job.all(
                                AttemptResult::Permanent(Reply::new(
                                    556,
                                    "5.1.10",
                                    "recipient domain accepts no mail (null MX)",
                                )),
                                None,
                            )
                        }
                        Err(RouteError::Dns(DnsError::Bogus(_))) => {
                            return job.all(
                                AttemptResult::Transient(Reply::new(
                                    451,
                                    "4.7.5",
                                    "DNSSEC validation of the MX records failed",
                                )),
                                None,
                            )
                        }
                        Err(RouteError::NoHosts) => {
                            return job.all(
                                AttemptResult::Transient(Reply::new(
                                    451,
                                    "4.4.4",
                                    "no MX or address records for the domain",
                                )),
                                None,
                            )
                        }
                        Err(e) => {
                            return job.all(
                                AttemptResult::Transient(Reply::new(451, "4.4.3", e.to_string())),
                                None,
                            )
                        }
                    };
                let sts = self
                    .sts
                    .policy(self.resolver.as_ref(), self.sts_cache.as_ref(), domain)
                    .await;
                if let Some(failure) = sts.fetch_failure {
                    self.observe_sts_fetch(job, domain, failure);
                }
                let state = if sts.temp_fail {
                    StsState::TempFail
                } else {
                    match sts.policy {
                        Some(p) => StsState::Policy(p),
                        None => StsState::None,
                    }
                };
                (route.hops, state, sts.outcome)
            }
        };
        let mut planned = Vec::new();
        for hop in hops {
            let plan = self.plan_hop(&hop, level, &sts_state).await;
            planned.push((hop, plan));
        }
        // Only the domain's own MX hosts are reported to it, not a configured route.
        let report = (!routed).then_some(domain);
        self.try_hops(job, domain, &planned, &sts_outcome, false, report)
            .await
    }

    /// A published MTA-STS policy that could not be fetched: one TLS-RPT failure under
    /// the `sts` policy, about no particular MX host (delivery goes on without it).
    fn observe_sts_fetch(&self, job: Job<'_>, domain: &str, failure: ResultType) {
        let Some(observer) = &self.observer else {
            return;
        };
        if job.env.listener == REPORT_LISTENER {
            return;
        }
        observer.observe(&TlsAttempt {
            domain,
            policy: &TlsPolicy {
                kind: PolicyType::Sts,
                strings: Vec::new(),
                mx_host: Vec::new(),
            },
            mx_host: "",
            receiving_ip: None,
            sending_ip: None,
            failure: Some(failure),
        });
    }

    /// DANE state and requirement for one host, or why it cannot be used.
    pub(super) async fn plan_hop(
        &self,
        hop: &NextHop,
        level: TlsLevel,
        sts: &StsState,
    ) -> Result<Plan, Refused> {
        let dane = self.dane_state(hop).await;
        let policy = report_policy(hop, &dane, sts);
        let dane_text = match &dane {
            DaneState::Usable(t) => format!(
                "{} usable secure TLSA record(s)",
                t.iter().filter(|r| r.is_usable()).count()
            ),
            DaneState::Unusable => "secure TLSA, none usable".into(),
            DaneState::None => "no secure TLSA".into(),
            DaneState::Bogus => "TLSA lookup bogus or failed".into(),
        };
        match level::decide(level, &dane, sts, &hop.name) {
            Ok(requirement) => Ok(Plan {
                requirement,
                dane: dane_text,
                policy,
            }),
            Err(refusal) => Err(Refused { refusal, policy }),
        }
    }

    pub(super) async fn dane_state(&self, hop: &NextHop) -> DaneState {
        if !hop.name_secure || hop.name.parse::<IpAddr>().is_ok() {
            return DaneState::None;
        }
        // TLSA only counts when the host's address records are secure (RFC 7672 §2.2.2).
        match self.resolver.ip(&hop.name).await {
            Ok(a) if a.status == DnssecStatus::Secure => {}
            Ok(_) => return DaneState::None,
            Err(DnsError::Bogus(_)) => return DaneState::Bogus,
            Err(_) => return DaneState::None,
        }
        match self
            .resolver
            .tlsa(&format!("_{}._tcp.{}", hop.port, hop.name))
            .await
        {
            Ok(a) if a.status == DnssecStatus::Secure && !a.records.is_empty() => {
                if a.records.iter().any(|t| t.is_usable()) {
                    DaneState::Usable(a.records)
                } else {
                    DaneState::Unusable
                }
            }
            Ok(_) => DaneState::None,
            // RFC 7672 §2.1.1: a failed (not empty) TLSA lookup must not fall back.
            Err(_) => DaneState::Bogus,
        }
    }

    pub(super) async fn host_ips(&self, hop: &NextHop) -> Result<Vec<IpAddr>, String> {
        if let Ok(ip) = hop.name.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        match self.resolver.ip(&hop.name).await {
            Ok(a) if a.records.is_empty() => Err("no address records".into()),
            Ok(a) => Ok(a.records),
            Err(e) => Err(e.to_string()),
        }
    }
}
