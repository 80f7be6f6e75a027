//! MX routing for one domain: the route (MX or a configured override), the domain's
//! MTA-STS policy, and each host's DANE state and TLS requirement.

use std::net::IpAddr;

use super::level::{self, DaneState, Requirement, StsState};
use super::route::{self, NextHop, RouteError};
use super::{Deliverer, Job};
use crate::dns::{DnsError, DnssecStatus};
use crate::types::{AttemptResult, RcptOutcome, Reply, TlsLevel};

/// The requirement for one host plus what to record about it.
pub(super) struct Plan {
    pub(super) requirement: Requirement,
    pub(super) dane: String,
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
        self.try_hops(job, domain, &planned, &sts_outcome, false)
            .await
    }

    /// DANE state and requirement for one host, or why it cannot be used.
    pub(super) async fn plan_hop(
        &self,
        hop: &NextHop,
        level: TlsLevel,
        sts: &StsState,
    ) -> Result<Plan, String> {
        let dane = self.dane_state(hop).await;
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
            }),
            Err(r) => Err(r.reason().to_string()),
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
