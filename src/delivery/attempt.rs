//! One attempt at a planned list of hosts: take a pooled session or connect, establish
//! and verify TLS as the plan requires, run the transaction, classify the replies, and
//! turn the failures into one deferral (or a REQUIRETLS bounce).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::sync::{Semaphore, TryAcquireError};

use super::client::{self, ClientError, PlainClient, TlsClient};
use super::level::Requirement;
use super::mx::{Plan, Refused};
use super::observe::{TlsAttempt, TlsPolicy, REPORT_LISTENER};
use super::pool::{Lease, Permits, PoolKey};
use super::route::NextHop;
use super::transport::same_for_all;
use super::{Deliverer, Job};
use crate::config::DeliveryMode;
use crate::tls::rpt::ResultType;
use crate::types::{AttemptResult, HopInfo, RcptOutcome, Reply};

/// A connection to use for one transaction: a kept session or permits to dial a new one.
enum Checkout {
    Reused(Box<Lease>),
    Fresh(Permits),
}

/// A session `open` established, with what its handshake proved.
pub(super) struct Opened {
    pub(super) client: TlsClient,
    sts_note: Option<String>,
    /// Our end of the connection (TLS-RPT `sending-mta-ip`).
    local_ip: Option<std::net::IpAddr>,
    /// MTA-STS `testing`: the certificate failed the policy (reported, not enforced).
    testing_failure: Option<ResultType>,
}

/// Why `open` failed.
pub(super) struct OpenFailure {
    pub(super) reason: String,
    /// A TLS (not connectivity) failure: deferred with 4.7.x.
    tls: bool,
    /// Verification failure: what REQUIRETLS turns permanent.
    unverified: bool,
    /// What TLS-RPT reports; None for failures before TLS (TCP, greeting, EHLO).
    report: Option<ResultType>,
    local_ip: Option<std::net::IpAddr>,
}

impl OpenFailure {
    fn new(reason: String, tls: bool, unverified: bool) -> Self {
        OpenFailure {
            reason,
            tls,
            unverified,
            report: None,
            local_ip: None,
        }
    }
}

/// A failed try at one host/IP, kept for the deferral reason.
struct Failure {
    hop: HopInfo,
    reason: String,
    tls: bool,
    /// Verification (not connectivity) failure: what REQUIRETLS turns permanent.
    unverified: bool,
}

impl Deliverer {
    pub(super) async fn try_hops(
        &self,
        job: Job<'_>,
        destination: &str,
        planned: &[(NextHop, Result<Plan, Refused>)],
        sts_outcome: &str,
        implicit: bool,
        report_domain: Option<&str>,
    ) -> Vec<RcptOutcome> {
        // TLS-RPT sees the recipient domain's own MX sessions, never report deliveries.
        let report_domain = report_domain.filter(|_| job.env.listener != REPORT_LISTENER);
        let observe = |policy: &TlsPolicy,
                       hop: &NextHop,
                       ip: Option<std::net::IpAddr>,
                       local: Option<std::net::IpAddr>,
                       failure: Option<ResultType>| {
            if let (Some(domain), Some(observer)) = (report_domain, &self.observer) {
                observer.observe(&TlsAttempt {
                    domain,
                    policy,
                    mx_host: &hop.name,
                    receiving_ip: ip,
                    sending_ip: local,
                    failure,
                });
            }
        };
        let dest_sem = self.destination_permit(destination);
        let mut failures: Vec<Failure> = Vec::new();
        for (hop, plan) in planned {
            let base = HopInfo {
                mx_host: hop.name.clone(),
                mta_sts: sts_outcome.to_string(),
                ..HopInfo::default()
            };
            let plan = match plan {
                Ok(p) => p,
                Err(refused) => {
                    let result = refused.refusal.result_type();
                    observe(&refused.policy, hop, None, None, Some(result));
                    failures.push(Failure {
                        hop: base,
                        reason: refused.to_string(),
                        tls: true,
                        unverified: true,
                    });
                    continue;
                }
            };
            let ips = match self.host_ips(hop).await {
                Ok(ips) => ips,
                Err(reason) => {
                    failures.push(Failure {
                        hop: base,
                        reason,
                        tls: false,
                        unverified: false,
                    });
                    continue;
                }
            };
            for ip in ips {
                let mut info = base.clone();
                info.ip = ip.to_string();
                info.dane = plan.dane.clone();
                let addr = SocketAddr::new(ip, hop.port);
                let key = PoolKey {
                    destination: destination.to_string(),
                    addr,
                    name: hop.name.clone(),
                    implicit,
                };
                // RFC 8689 messages get a session of their own (issue: never shared).
                let poolable = !job.env.params.requiretls;
                let Some(checkout) = self
                    .checkout(&key, &plan.requirement, poolable, &dest_sem)
                    .await
                else {
                    continue;
                };
                let (mut lease, reused) = match checkout {
                    Checkout::Reused(lease) => {
                        let facts = lease.client.tls();
                        info.tls_version = facts.version.clone();
                        info.cipher = facts.cipher.clone();
                        info.peer_cert_sha256 = facts.peer_cert_sha256.clone();
                        info.method = lease.method.clone();
                        if let Some(note) = &lease.sts_note {
                            info.mta_sts = format!("{}; {note}", info.mta_sts);
                        }
                        (*lease, true)
                    }
                    Checkout::Fresh(permits) => {
                        match self.open(addr, hop, plan, implicit, &mut info).await {
                            Ok(opened) => {
                                observe(
                                    &plan.policy,
                                    hop,
                                    Some(ip),
                                    opened.local_ip,
                                    opened.testing_failure,
                                );
                                (
                                    Lease {
                                        client: opened.client,
                                        _permits: permits,
                                        requirement: plan.requirement.clone(),
                                        method: info.method.clone(),
                                        sts_note: opened.sts_note,
                                        uses: 0,
                                    },
                                    false,
                                )
                            }
                            Err(f) => {
                                if f.report.is_some() {
                                    observe(&plan.policy, hop, Some(ip), f.local_ip, f.report);
                                }
                                failures.push(Failure {
                                    hop: info,
                                    reason: f.reason,
                                    tls: f.tls,
                                    unverified: f.unverified,
                                });
                                continue;
                            }
                        }
                    }
                };
                let (out, clean) = self
                    .transact(&mut lease.client, job, plan, info, reused)
                    .await;
                lease.uses += 1;
                self.release(key, lease, clean && poolable).await;
                return out;
            }
        }
        self.deferral(job, failures)
    }

    /// A kept session for `key` that satisfies `want` and still answers, or permits for a
    /// new connection. Idle sessions hold permits, so when none is free an idle session
    /// nobody here can use is closed rather than waited for. None if the caps are closed.
    async fn checkout(
        &self,
        key: &PoolKey,
        want: &Requirement,
        poolable: bool,
        dest_sem: &Arc<Semaphore>,
    ) -> Option<Checkout> {
        loop {
            if poolable {
                while let Some(mut lease) = self.pool.take(key, want) {
                    if lease.client.probe().await.is_ok() {
                        return Some(Checkout::Reused(Box::new(lease)));
                    }
                    // The server closed it while idle: drop it and look again.
                }
            }
            let returned = self.pool.returned.clone();
            let notified = returned.notified();
            match dest_sem.clone().try_acquire_owned() {
                Ok(destination) => match self.global.clone().try_acquire_owned() {
                    Ok(global) => {
                        return Some(Checkout::Fresh(Permits {
                            _global: global,
                            _destination: destination,
                        }))
                    }
                    Err(TryAcquireError::Closed) => return None,
                    Err(TryAcquireError::NoPermits) => {
                        drop(destination);
                        if self.pool.evict_one(None) {
                            continue;
                        }
                    }
                },
                Err(TryAcquireError::Closed) => return None,
                Err(TryAcquireError::NoPermits) => {
                    if self.pool.evict_one(Some(&key.destination)) {
                        continue;
                    }
                }
            }
            // Every slot is busy with a transaction: wait for one to end or come back.
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(Duration::from_millis(25)) => {}
            }
        }
    }

    /// After a transaction: RSET and keep the session when it ended cleanly, else close it.
    async fn release(&self, key: PoolKey, mut lease: Lease, keep: bool) {
        if keep && lease.client.reset().await.is_ok() {
            if let Some(done) = self.pool.put(key, lease) {
                done.client.quit().await;
            }
            return;
        }
        lease.client.quit().await;
    }

    fn deferral(&self, job: Job<'_>, failures: Vec<Failure>) -> Vec<RcptOutcome> {
        let reason = failures
            .iter()
            .map(|f| {
                if f.hop.ip.is_empty() {
                    format!("{}: {}", f.hop.mx_host, f.reason)
                } else {
                    format!("{}[{}]: {}", f.hop.mx_host, f.hop.ip, f.reason)
                }
            })
            .collect::<Vec<_>>()
            .join("; ");
        let reason = if reason.is_empty() {
            "no usable next hop".to_string()
        } else {
            reason
        };
        let any_tls = failures.iter().any(|f| f.tls);
        let hop = failures.last().map(|f| f.hop.clone());
        let result = if job.env.params.requiretls
            && !failures.is_empty()
            && failures.iter().all(|f| f.unverified)
        {
            AttemptResult::Permanent(Reply::new(
                550,
                "5.7.30",
                format!("REQUIRETLS: no verified TLS to the next hop: {reason}"),
            ))
        } else if any_tls {
            AttemptResult::Transient(Reply::new(
                451,
                "4.7.5",
                format!("TLS required but not achieved: {reason}"),
            ))
        } else {
            AttemptResult::Transient(Reply::new(
                451,
                "4.4.1",
                format!("no next hop reachable: {reason}"),
            ))
        };
        job.all(result, hop)
    }

    /// Connects and establishes TLS as `plan` requires.
    pub(super) async fn open(
        &self,
        addr: SocketAddr,
        hop: &NextHop,
        plan: &Plan,
        implicit: bool,
        info: &mut HopInfo,
    ) -> Result<Opened, OpenFailure> {
        let timeout = self.cfg.command_timeout.duration();
        let tcp = client::connect(addr, self.cfg.connect_timeout.duration())
            .await
            .map_err(|e| OpenFailure::new(e.to_string(), false, false))?;
        let local_ip = tcp.local_addr().ok().map(|a| a.ip());
        let sni = ServerName::try_from(hop.name.clone())
            .map_err(|e| OpenFailure::new(format!("bad host name: {e}"), true, true))?;
        let smarthost = implicit || self.cfg.mode == DeliveryMode::Smarthost;
        let built = self
            .verifiers
            .for_requirement(&plan.requirement, &hop.name, smarthost)
            .map_err(|e| OpenFailure::new(e, true, true))?;
        let result = if implicit {
            client::implicit_tls(tcp, built.config.clone(), sni, &self.helo, timeout).await
        } else {
            match PlainClient::start(tcp, &self.helo, timeout).await {
                Ok(plain) => plain.starttls(built.config.clone(), sni).await,
                Err(e) => Err(e),
            }
        };
        match result {
            Ok(session) => {
                let facts = session.tls();
                info.tls_version = facts.version.clone();
                info.cipher = facts.cipher.clone();
                info.peer_cert_sha256 = facts.peer_cert_sha256.clone();
                info.method = built.method();
                let sts_note = built.sts_testing_outcome(&hop.name);
                if let Some(outcome) = &sts_note {
                    info.mta_sts = format!("{}; {outcome}", info.mta_sts);
                }
                Ok(Opened {
                    client: session,
                    sts_note,
                    local_ip,
                    testing_failure: built.sts_testing_failure(),
                })
            }
            Err(e) => {
                let tls = e.is_tls();
                let unverified = matches!(e, ClientError::Handshake(..))
                    && plan.requirement.is_verified()
                    || matches!(
                        e,
                        ClientError::StarttlsNotOffered
                            | ClientError::StarttlsRefused(_)
                            | ClientError::Injection
                    );
                let report = match &e {
                    ClientError::StarttlsNotOffered | ClientError::StarttlsRefused(_) => {
                        Some(ResultType::StarttlsNotSupported)
                    }
                    ClientError::Handshake(_, kind) => Some(*kind),
                    ClientError::Injection => Some(ResultType::ValidationFailure),
                    _ => None,
                };
                Err(OpenFailure {
                    reason: e.to_string(),
                    tls,
                    unverified,
                    report,
                    local_ip,
                })
            }
        }
    }

    /// One transaction on `session`; the flag says whether the session ended it cleanly
    /// (may be kept). A `reused` session is already authenticated to the smarthost.
    async fn transact(
        &self,
        session: &mut TlsClient,
        job: Job<'_>,
        plan: &Plan,
        hop: HopInfo,
        reused: bool,
    ) -> (Vec<RcptOutcome>, bool) {
        let hop_some = Some(hop.clone());
        if job.env.params.requiretls
            && (!plan.requirement.is_verified() || !session.capabilities().has("REQUIRETLS"))
        {
            let why = if plan.requirement.is_verified() {
                "next hop does not support REQUIRETLS"
            } else {
                "next hop TLS is not verified"
            };
            return (
                job.all(
                    AttemptResult::Permanent(Reply::new(550, "5.7.30", why)),
                    hop_some,
                ),
                false,
            );
        }
        if self.cfg.mode == DeliveryMode::Smarthost && !reused {
            if let Some(c) = &self.credentials {
                if let Err(e) = session.auth_plain(&c.user, &c.password).await {
                    let reply = match e {
                        ClientError::Auth(r) if r.is_permanent() => {
                            return (
                                job.all(
                                    AttemptResult::Transient(Reply::new(
                                        451,
                                        "4.7.8",
                                        format!("smarthost AUTH rejected: {r}"),
                                    )),
                                    hop_some,
                                ),
                                false,
                            )
                        }
                        other => {
                            Reply::new(451, "4.7.0", format!("smarthost AUTH failed: {other}"))
                        }
                    };
                    return (job.all(AttemptResult::Transient(reply), hop_some), false);
                }
            }
        }
        let replies = match session.send(job.env, job.content, job.rcpts).await {
            Ok(r) => r,
            Err(e) => {
                return (
                    job.all(
                        AttemptResult::Transient(Reply::new(
                            451,
                            "4.4.2",
                            format!("connection lost during transaction: {e}"),
                        )),
                        hop_some,
                    ),
                    false,
                )
            }
        };
        (classify(job.rcpts, &replies, hop), true)
    }
}

/// Maps the server's replies to per-recipient results.
pub(super) fn classify(
    idxs: &[usize],
    replies: &client::TransactionReplies,
    hop: HopInfo,
) -> Vec<RcptOutcome> {
    let hop = Some(hop);
    let by_code = |r: &Reply| {
        if r.is_permanent() {
            AttemptResult::Permanent(r.clone())
        } else if r.is_transient() || r.code < 200 {
            AttemptResult::Transient(r.clone())
        } else {
            AttemptResult::Delivered(r.clone())
        }
    };
    if replies.mail.code != 250 {
        let result = match by_code(&replies.mail) {
            AttemptResult::Delivered(r) => AttemptResult::Transient(r),
            other => other,
        };
        return same_for_all(idxs, result, hop);
    }
    idxs.iter()
        .enumerate()
        .map(|(n, &index)| {
            let result = match replies.rcpts.get(n) {
                None => AttemptResult::Transient(Reply::new(451, "4.4.2", "no reply to RCPT")),
                Some(r) if r.code / 100 != 2 => match by_code(r) {
                    AttemptResult::Delivered(r) => AttemptResult::Transient(r),
                    other => other,
                },
                Some(_) => match &replies.data {
                    Some(d) => match by_code(d) {
                        AttemptResult::Delivered(r) if r.code == 250 => AttemptResult::Delivered(r),
                        AttemptResult::Delivered(r) => AttemptResult::Transient(r),
                        other => other,
                    },
                    None => AttemptResult::Transient(Reply::new(451, "4.4.2", "no reply to DATA")),
                },
            };
            RcptOutcome {
                index,
                result,
                hop: hop.clone(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_per_recipient() {
        let ok = Reply::new(250, "2.0.0", "ok");
        let replies = client::TransactionReplies {
            mail: ok.clone(),
            rcpts: vec![
                ok.clone(),
                Reply::new(550, "5.1.1", "unknown"),
                Reply::new(450, "4.2.1", "busy"),
            ],
            data: Some(Reply::new(250, "2.0.0", "queued")),
        };
        let out = classify(&[0, 1, 2], &replies, HopInfo::default());
        assert!(matches!(out[0].result, AttemptResult::Delivered(_)));
        assert!(matches!(out[1].result, AttemptResult::Permanent(_)));
        assert!(matches!(out[2].result, AttemptResult::Transient(_)));
        let bad_mail = client::TransactionReplies {
            mail: Reply::new(553, "5.7.1", "no"),
            rcpts: vec![],
            data: None,
        };
        assert!(classify(&[0, 1], &bad_mail, HopInfo::default())
            .iter()
            .all(|o| matches!(o.result, AttemptResult::Permanent(_))));
    }
}
