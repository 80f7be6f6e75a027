//! One recipient domain's TLS results for one UTC day, as stored and as counted: per
//! policy, the successful sessions and the failures by result type, host and addresses.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::delivery::observe::{TlsAttempt, TlsPolicy};
use crate::tls::rpt::ResultType;

/// Distinct failure-detail rows kept per policy; further failures are still counted in
/// the total (a hostile domain with many MX addresses cannot grow the record unbounded).
pub const MAX_DETAILS: usize = 100;
/// Distinct policies kept per domain and day (one per DANE host, plus MTA-STS or none).
pub const MAX_POLICIES: usize = 50;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Aggregate {
    pub domain: String,
    /// `YYYY-MM-DD`, UTC.
    pub day: String,
    /// Unix seconds the window starts at: the day's midnight, or when the last report for
    /// the domain (`tlsrpt send-now`) ended.
    pub start: u64,
    pub policies: Vec<PolicyCounts>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyCounts {
    pub policy: TlsPolicy,
    pub successes: u64,
    /// All failed sessions, including any beyond the detail rows.
    pub failures: u64,
    pub details: Vec<FailureCount>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureCount {
    pub result: ResultType,
    pub sending_ip: Option<IpAddr>,
    pub mx_host: String,
    pub receiving_ip: Option<IpAddr>,
    pub count: u64,
}

impl Aggregate {
    pub fn new(domain: &str, day: &str, start: u64) -> Self {
        Aggregate {
            domain: domain.to_string(),
            day: day.to_string(),
            start,
            policies: Vec::new(),
        }
    }

    /// Counts one connection attempt.
    pub fn add(&mut self, a: &TlsAttempt<'_>) {
        let at = match self.policies.iter().position(|p| &p.policy == a.policy) {
            Some(i) => i,
            None if self.policies.len() < MAX_POLICIES => {
                self.policies.push(PolicyCounts {
                    policy: a.policy.clone(),
                    successes: 0,
                    failures: 0,
                    details: Vec::new(),
                });
                self.policies.len() - 1
            }
            None => return,
        };
        let p = &mut self.policies[at];
        let Some(result) = a.failure else {
            p.successes += 1;
            return;
        };
        p.failures += 1;
        let same = |d: &&mut FailureCount| {
            d.result == result
                && d.sending_ip == a.sending_ip
                && d.mx_host == a.mx_host
                && d.receiving_ip == a.receiving_ip
        };
        if let Some(d) = p.details.iter_mut().find(same) {
            d.count += 1;
        } else if p.details.len() < MAX_DETAILS {
            p.details.push(FailureCount {
                result,
                sending_ip: a.sending_ip,
                mx_host: a.mx_host.to_string(),
                receiving_ip: a.receiving_ip,
                count: 1,
            });
        }
    }

    /// Adds `other`'s counts (a report that could not be sent, put back in front of what
    /// was counted meanwhile).
    pub fn merge(&mut self, other: &Aggregate) {
        self.start = self.start.min(other.start);
        for theirs in &other.policies {
            let at = match self.policies.iter().position(|p| p.policy == theirs.policy) {
                Some(i) => i,
                None if self.policies.len() < MAX_POLICIES => {
                    self.policies.push(PolicyCounts {
                        policy: theirs.policy.clone(),
                        successes: 0,
                        failures: 0,
                        details: Vec::new(),
                    });
                    self.policies.len() - 1
                }
                None => continue,
            };
            let mine = &mut self.policies[at];
            mine.successes += theirs.successes;
            mine.failures += theirs.failures;
            for d in &theirs.details {
                let same = |m: &&mut FailureCount| {
                    m.result == d.result
                        && m.sending_ip == d.sending_ip
                        && m.mx_host == d.mx_host
                        && m.receiving_ip == d.receiving_ip
                };
                if let Some(m) = mine.details.iter_mut().find(same) {
                    m.count += d.count;
                } else if mine.details.len() < MAX_DETAILS {
                    mine.details.push(d.clone());
                }
            }
        }
    }

    pub fn successes(&self) -> u64 {
        self.policies.iter().map(|p| p.successes).sum()
    }

    pub fn failures(&self) -> u64 {
        self.policies.iter().map(|p| p.failures).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::rpt::PolicyType;

    fn attempt<'a>(
        policy: &'a TlsPolicy,
        mx: &'a str,
        failure: Option<ResultType>,
    ) -> TlsAttempt<'a> {
        TlsAttempt {
            domain: "example.org",
            policy,
            mx_host: mx,
            receiving_ip: Some([192, 0, 2, 1].into()),
            sending_ip: Some([198, 51, 100, 7].into()),
            failure,
        }
    }

    #[test]
    fn counts_per_policy_and_failure_detail() {
        let none = TlsPolicy::none();
        let dane = TlsPolicy {
            kind: PolicyType::Tlsa,
            strings: vec!["3 1 1 00".into()],
            mx_host: vec!["mx2.example.org".into()],
        };
        let mut a = Aggregate::new("example.org", "2026-12-03", 0);
        a.add(&attempt(&none, "mx1.example.org", None));
        a.add(&attempt(&none, "mx1.example.org", None));
        for _ in 0..3 {
            a.add(&attempt(
                &none,
                "mx1.example.org",
                Some(ResultType::StarttlsNotSupported),
            ));
        }
        a.add(&attempt(
            &dane,
            "mx2.example.org",
            Some(ResultType::TlsaInvalid),
        ));
        assert_eq!(a.policies.len(), 2);
        assert_eq!((a.successes(), a.failures()), (2, 4));
        let p = &a.policies[0];
        assert_eq!((p.successes, p.failures), (2, 3));
        assert_eq!(p.details.len(), 1);
        assert_eq!(p.details[0].count, 3);
        assert_eq!(p.details[0].result, ResultType::StarttlsNotSupported);
        assert_eq!(a.policies[1].details[0].result, ResultType::TlsaInvalid);
        // Merging a copy doubles every count and keeps one row per detail.
        let mut twice = a.clone();
        twice.merge(&a);
        assert_eq!((twice.successes(), twice.failures()), (4, 8));
        assert_eq!(twice.policies[0].details[0].count, 6);
        assert_eq!(twice.policies.len(), 2);
        // Survives a round trip through the store's JSON.
        let back: Aggregate =
            serde_json::from_slice(&serde_json::to_vec(&a).expect("json")).expect("parse");
        assert_eq!(back, a);
    }

    #[test]
    fn detail_rows_are_bounded_but_every_failure_counts() {
        let none = TlsPolicy::none();
        let mut a = Aggregate::new("example.org", "2026-12-03", 0);
        let names: Vec<String> = (0..MAX_DETAILS + 20)
            .map(|i| format!("mx{i}.example.org"))
            .collect();
        for n in &names {
            a.add(&attempt(&none, n, Some(ResultType::ValidationFailure)));
        }
        assert_eq!(a.policies[0].details.len(), MAX_DETAILS);
        assert_eq!(a.failures(), (MAX_DETAILS + 20) as u64);
    }
}
