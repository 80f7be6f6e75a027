//! `phigate tls check DOMAIN`: the delivery path up to the TLS handshake, reported
//! host by host, without sending mail.

use std::net::SocketAddr;

use serde::Serialize;

use super::level::{Requirement, StsState};
use super::route;
use super::Deliverer;
use crate::tls::rpt;
use crate::types::HopInfo;

/// Result of `tls_check` for one MX host.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HostCheck {
    pub host: String,
    pub port: u16,
    pub ips: Vec<String>,
    pub address_dnssec: String,
    pub tlsa: Vec<String>,
    pub dane: String,
    pub requirement: String,
    pub connect: String,
    pub would_deliver: bool,
    pub hop: Option<HopInfo>,
}

/// What `phigate tls check DOMAIN` prints.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TlsCheckReport {
    pub domain: String,
    pub level: String,
    pub mx: Vec<String>,
    pub mx_dnssec: String,
    pub route_error: Option<String>,
    pub mta_sts: String,
    pub mta_sts_mode: Option<String>,
    pub mta_sts_mx: Vec<String>,
    pub hosts: Vec<HostCheck>,
    pub would_deliver: bool,
    /// The domain's TLS-RPT record (`_smtp._tls`, RFC 8460), if it publishes one.
    pub tls_rpt: Option<String>,
    /// Whether a `[[dkim]]` key signs mail From this domain (filled in by the CLI).
    pub dkim_key: bool,
}

impl Deliverer {
    /// Resolves and probes `domain` without sending mail.
    pub async fn tls_check(&self, domain: &str) -> TlsCheckReport {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let level = self.level_for(&domain, None, false);
        let mut report = TlsCheckReport {
            domain: domain.clone(),
            level: format!("{level:?}"),
            ..TlsCheckReport::default()
        };
        if let Ok(a) = self.resolver.txt(&rpt::record_name(&domain)).await {
            report.tls_rpt = rpt::find_record(&a.records).map(str::to_string);
        }
        let route = match route::resolve(self.resolver.as_ref(), &domain, self.cfg.mx_port).await {
            Ok(r) => r,
            Err(e) => {
                report.route_error = Some(e.to_string());
                return report;
            }
        };
        report.mx_dnssec = route.mx_status.as_str().to_string();
        report.mx = route.hops.iter().map(|h| h.name.clone()).collect();
        let sts = self
            .sts
            .policy(self.resolver.as_ref(), self.sts_cache.as_ref(), &domain)
            .await;
        report.mta_sts = sts.outcome.clone();
        report.mta_sts_mode = sts.policy.as_ref().map(|p| p.mode.as_str().to_string());
        report.mta_sts_mx = sts
            .policy
            .as_ref()
            .map(|p| p.mx.clone())
            .unwrap_or_default();
        let sts_state = if sts.temp_fail {
            StsState::TempFail
        } else {
            sts.policy.map(StsState::Policy).unwrap_or(StsState::None)
        };
        for hop in &route.hops {
            let mut check = HostCheck {
                host: hop.name.clone(),
                port: hop.port,
                ..HostCheck::default()
            };
            if let Ok(a) = self.resolver.ip(&hop.name).await {
                check.ips = a.records.iter().map(ToString::to_string).collect();
                check.address_dnssec = a.status.as_str().to_string();
            }
            if let Ok(t) = self
                .resolver
                .tlsa(&format!("_{}._tcp.{}", hop.port, hop.name))
                .await
            {
                check.tlsa = t
                    .records
                    .iter()
                    .map(|r| {
                        format!(
                            "{} {} {} {} ({})",
                            r.usage,
                            r.selector,
                            r.matching,
                            hex::encode(&r.data),
                            t.status.as_str()
                        )
                    })
                    .collect();
            }
            let plan = self.plan_hop(hop, level, &sts_state).await;
            match &plan {
                Ok(p) => {
                    check.dane = p.dane.clone();
                    check.requirement = requirement_name(&p.requirement).into();
                }
                Err(reason) => {
                    check.requirement = format!("refused: {reason}");
                }
            }
            if let (Ok(p), Ok(ips)) = (&plan, self.host_ips(hop).await) {
                for ip in ips {
                    let mut info = HopInfo {
                        mx_host: hop.name.clone(),
                        ip: ip.to_string(),
                        dane: p.dane.clone(),
                        mta_sts: report.mta_sts.clone(),
                        ..HopInfo::default()
                    };
                    match self
                        .open(SocketAddr::new(ip, hop.port), hop, p, false, &mut info)
                        .await
                    {
                        Ok(opened) => {
                            opened.client.quit().await;
                            check.connect = "TLS established".into();
                            check.would_deliver = true;
                            check.hop = Some(info);
                            break;
                        }
                        Err(f) => check.connect = f.reason,
                    }
                }
            }
            report.would_deliver |= check.would_deliver;
            report.hosts.push(check);
        }
        report
    }
}

fn requirement_name(r: &Requirement) -> &'static str {
    match r {
        Requirement::Dane(_) => "dane",
        Requirement::MtaSts => "mta-sts",
        Requirement::Pkix => "pkix",
        Requirement::Encrypt { .. } => "encrypt",
    }
}
