//! Portal notices: first the way any message goes (verified TLS where the domain has
//! DANE or MTA-STS, the configured level otherwise); when that fails for TLS reasons,
//! with the best the next hop offers: unverified TLS, or, when `[portal]
//! notify_without_tls` allows it, none. Only a [`NoticeJob`] reaches this path, and the
//! plaintext session can only carry its [`crate::notice::Notice`].

use std::collections::BTreeMap;
use std::net::SocketAddr;

use rustls::pki_types::ServerName;

use super::attempt::classify;
use super::client::{self, PlainClient};
use super::level::Requirement;
use super::route::{self, NextHop};
use super::{Deliverer, NoticeJob};
use crate::config::DeliveryMode;
use crate::types::{domain_of, AttemptResult, HopInfo, RcptOutcome, Reply};

/// Failures a weaker TLS could get past: TLS not achieved (4.7.x), or a REQUIRETLS-style
/// refusal.
fn tls_failure(o: &RcptOutcome) -> bool {
    match &o.result {
        AttemptResult::Transient(r) => r.enhanced.starts_with("4.7."),
        AttemptResult::Permanent(r) => r.enhanced == "5.7.30",
        AttemptResult::Delivered(_) => false,
    }
}

impl Deliverer {
    pub(super) async fn notify(&self, job: NoticeJob<'_>) -> Vec<RcptOutcome> {
        let first = self.deliver(job.as_message()).await;
        if self.cfg.mode != DeliveryMode::Mx || !first.iter().any(tls_failure) {
            return first;
        }
        let (retry, mut out): (Vec<RcptOutcome>, Vec<RcptOutcome>) =
            first.into_iter().partition(tls_failure);
        let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for o in &retry {
            if let Some(r) = job.env.recipients.get(o.index) {
                groups
                    .entry(domain_of(&r.address))
                    .or_default()
                    .push(o.index);
            }
        }
        for (domain, idxs) in groups {
            let job = NoticeJob {
                rcpts: &idxs,
                ..job
            };
            out.extend(self.notify_fallback(job, &domain).await);
        }
        out
    }

    async fn notify_fallback(&self, job: NoticeJob<'_>, domain: &str) -> Vec<RcptOutcome> {
        let all = |r: AttemptResult, hop: Option<HopInfo>| {
            super::transport::same_for_all(job.rcpts, r, hop)
        };
        let override_route = (self.cfg.domains.get(domain))
            .and_then(|o| o.route.as_deref())
            .and_then(|r| route::parse_route(r, self.cfg.mx_port));
        let hops: Vec<NextHop> = match override_route {
            Some(h) => vec![h],
            None => match route::resolve(self.resolver.as_ref(), domain, self.cfg.mx_port).await {
                Ok(r) => r.hops,
                Err(e) => {
                    let why = format!("notice: no route: {e}");
                    return all(
                        AttemptResult::Transient(Reply::new(451, "4.4.3", why)),
                        None,
                    );
                }
            },
        };
        let mut reasons = Vec::new();
        for hop in &hops {
            let ips = match self.host_ips(hop).await {
                Ok(ips) => ips,
                Err(r) => {
                    reasons.push(format!("{}: {r}", hop.name));
                    continue;
                }
            };
            for ip in ips {
                let mut info = HopInfo {
                    mx_host: hop.name.clone(),
                    ip: ip.to_string(),
                    ..HopInfo::default()
                };
                let addr = SocketAddr::new(ip, hop.port);
                match self.notify_once(addr, hop, job, &mut info).await {
                    Ok(out) => return out,
                    Err(r) => reasons.push(format!("{}[{ip}]: {r}", hop.name)),
                }
            }
        }
        let why = format!("notice not delivered: {}", reasons.join("; "));
        all(
            AttemptResult::Transient(Reply::new(451, "4.4.1", why)),
            None,
        )
    }

    /// One connection: STARTTLS without verification when offered, else (or when the
    /// handshake fails) plaintext if allowed.
    async fn notify_once(
        &self,
        addr: SocketAddr,
        hop: &NextHop,
        job: NoticeJob<'_>,
        info: &mut HopInfo,
    ) -> Result<Vec<RcptOutcome>, String> {
        let timeout = self.cfg.command_timeout.duration();
        let connect = || async {
            let tcp = client::connect(addr, self.cfg.connect_timeout.duration())
                .await
                .map_err(|e| e.to_string())?;
            PlainClient::start(tcp, &self.helo, timeout)
                .await
                .map_err(|e| e.to_string())
        };
        let mut plain = connect().await?;
        if plain.offers_starttls() {
            let built = self
                .verifiers
                .for_requirement(
                    &Requirement::Encrypt { sts_testing: false },
                    &hop.name,
                    false,
                )
                .map_err(|e| e.to_string())?;
            let sni = ServerName::try_from(hop.name.clone()).map_err(|e| e.to_string())?;
            match plain.starttls(built.config.clone(), sni).await {
                Ok(mut tls) => {
                    let facts = tls.tls().clone();
                    info.tls_version = facts.version;
                    info.cipher = facts.cipher;
                    info.peer_cert_sha256 = facts.peer_cert_sha256;
                    info.method = "encrypt-only".into();
                    let replies = tls.send(job.env, job.notice.as_bytes(), job.rcpts).await;
                    tls.quit().await;
                    let replies = replies.map_err(|e| e.to_string())?;
                    return Ok(classify(job.rcpts, &replies, info.clone()));
                }
                Err(e) if !self.notice_plaintext => return Err(e.to_string()),
                // The TLS attempt used the connection up: start again in plaintext.
                Err(_) => plain = connect().await?,
            }
        }
        if !self.notice_plaintext {
            return Err("no STARTTLS, and notify_without_tls is off".into());
        }
        info.method = "plaintext-notice".into();
        let replies = plain.send_notice(job.env, job.notice, job.rcpts).await;
        plain.quit().await;
        let replies = replies.map_err(|e| e.to_string())?;
        Ok(classify(job.rcpts, &replies, info.clone()))
    }
}
