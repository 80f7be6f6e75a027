//! What delivery tells a TLS-RPT observer: one [`TlsAttempt`] per new connection to a
//! recipient domain's MX host (or per host refused before connecting). The observer is
//! a trait so delivery does not depend on the layer that aggregates and sends reports.
//! Only names, addresses and result types: never a recipient, subject or content.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::tls::rpt::{PolicyType, ResultType};

/// The `listener` of the envelopes the TLS-RPT module queues: their deliveries are never
/// observed (RFC 8460 §5.4: no reports about report delivery, no loops).
pub const REPORT_LISTENER: &str = "tlsrpt";

/// The policy that applied to one host (RFC 8460 §4.4 `policy`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TlsPolicy {
    pub kind: PolicyType,
    /// TLSA records as presentation text, or the MTA-STS policy's lines.
    pub strings: Vec<String>,
    /// The MTA-STS policy's `mx` patterns, or the DANE host.
    pub mx_host: Vec<String>,
}

impl TlsPolicy {
    pub fn none() -> Self {
        TlsPolicy {
            kind: PolicyType::NoPolicyFound,
            strings: Vec::new(),
            mx_host: Vec::new(),
        }
    }
}

/// One connection attempt's TLS result.
#[derive(Debug, Clone)]
pub struct TlsAttempt<'a> {
    /// The recipient (policy) domain.
    pub domain: &'a str,
    pub policy: &'a TlsPolicy,
    pub mx_host: &'a str,
    pub receiving_ip: Option<IpAddr>,
    pub sending_ip: Option<IpAddr>,
    /// None: the session was established as the policy requires.
    pub failure: Option<ResultType>,
}

pub trait TlsObserver: Send + Sync + 'static {
    /// Called on the delivery path: must be quick and must not block on I/O for long.
    fn observe(&self, attempt: &TlsAttempt<'_>);
}
