//! Which authentication one MX connection needs (RFC 7672 DANE > RFC 8461 MTA-STS > level).
//!
//! Pure: the caller looks up TLSA and the MTA-STS policy, this module decides. Levels are
//! floors: a domain's DANE or MTA-STS `enforce` policy applies at every level, and
//! `encrypt` behaves like `auto` (it only says "no WebPKI check required").

use crate::tls::dane::Tlsa;
use crate::tls::mta_sts::{Mode, Policy};
use crate::tls::rpt::ResultType;

use crate::types::TlsLevel;

/// What DNS said about DANE for one MX host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DaneState {
    /// DNSSEC-secure TLSA RRset containing at least one usable record.
    Usable(Vec<Tlsa>),
    /// Secure TLSA records but none usable (RFC 7672 §2.2: TLS mandatory, unauthenticated).
    Unusable,
    /// No secure TLSA (insecure zone, insecure MX/address records, or no records).
    None,
    /// Validation failed: the answer is not trustworthy either way.
    Bogus,
}

/// The domain's MTA-STS policy as it applies to this delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StsState {
    Policy(Policy),
    None,
    /// DNS failed and nothing is cached: defer rather than assume no policy.
    TempFail,
}

/// How the TLS peer will be authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    Dane(Vec<Tlsa>),
    /// MTA-STS `enforce`: the MX matched the policy; the certificate must be PKIX-valid.
    MtaSts,
    /// WebPKI chain and name.
    Pkix,
    /// TLS 1.2+, peer not authenticated. `sts_testing` asks the caller to check PKIX
    /// anyway and record (not enforce) the result for an MTA-STS `testing` policy.
    Encrypt {
        sts_testing: bool,
    },
}

impl Requirement {
    /// True when the peer's identity is checked (what REQUIRETLS demands).
    pub fn is_verified(&self) -> bool {
        !matches!(self, Requirement::Encrypt { .. })
    }
}

/// Why this MX must not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    DaneBogus,
    DaneRequired,
    StsTempFail,
    StsMxMismatch,
}

impl Refusal {
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::DaneBogus => "DNSSEC validation of the TLSA records failed",
            Refusal::DaneRequired => "dane-only: no DNSSEC-secure usable TLSA records",
            Refusal::StsTempFail => "MTA-STS policy lookup failed and no cached policy",
            Refusal::StsMxMismatch => "MX host is not listed in the MTA-STS enforce policy",
        }
    }

    /// How TLS-RPT reports the refusal (RFC 8460 §4.3.2).
    pub fn result_type(&self) -> ResultType {
        match self {
            Refusal::DaneBogus => ResultType::DnssecInvalid,
            Refusal::DaneRequired => ResultType::DaneRequired,
            Refusal::StsTempFail => ResultType::StsPolicyFetchError,
            // RFC 8460 has no type of its own for an MX outside the policy.
            Refusal::StsMxMismatch => ResultType::ValidationFailure,
        }
    }
}

/// Decides the requirement for one MX host. `level` is already the maximum of the global
/// level, the domain override and the message floor.
pub fn decide(
    level: TlsLevel,
    dane: &DaneState,
    sts: &StsState,
    mx_host: &str,
) -> Result<Requirement, Refusal> {
    match dane {
        DaneState::Bogus => return Err(Refusal::DaneBogus),
        DaneState::Usable(tlsa) => return Ok(Requirement::Dane(tlsa.clone())),
        DaneState::Unusable | DaneState::None => {}
    }
    if level == TlsLevel::DaneOnly {
        return Err(Refusal::DaneRequired);
    }
    let testing = match sts {
        StsState::TempFail => return Err(Refusal::StsTempFail),
        StsState::Policy(p) if p.mode == Mode::Enforce => {
            return if p.matches_mx(mx_host) {
                Ok(Requirement::MtaSts)
            } else {
                Err(Refusal::StsMxMismatch)
            };
        }
        StsState::Policy(p) => p.mode == Mode::Testing,
        StsState::None => false,
    };
    Ok(match level {
        TlsLevel::Verify => Requirement::Pkix,
        _ => Requirement::Encrypt {
            sts_testing: testing,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tlsa() -> Vec<Tlsa> {
        vec![Tlsa {
            usage: 3,
            selector: 1,
            matching: 1,
            data: vec![0; 32],
        }]
    }

    fn policy(mode: &str) -> StsState {
        let text = format!("version: STSv1\nmode: {mode}\nmx: mx.example.org\nmax_age: 600\n");
        StsState::Policy(Policy::parse(&text).expect("policy parses"))
    }

    #[test]
    fn decision_table() {
        use TlsLevel::*;
        let mx = "mx.example.org";
        let other = "evil.example.net";
        let dane = DaneState::Usable(tlsa());
        // DANE wins over MTA-STS and every level.
        for level in [Auto, Encrypt, Verify, DaneOnly] {
            assert_eq!(
                decide(level, &dane, &policy("enforce"), other),
                Ok(Requirement::Dane(tlsa()))
            );
        }
        assert_eq!(
            decide(Auto, &DaneState::Bogus, &StsState::None, mx),
            Err(Refusal::DaneBogus)
        );
        assert_eq!(
            decide(DaneOnly, &DaneState::None, &policy("enforce"), mx),
            Err(Refusal::DaneRequired)
        );
        assert_eq!(
            decide(DaneOnly, &DaneState::Unusable, &StsState::None, mx),
            Err(Refusal::DaneRequired)
        );
        assert_eq!(
            decide(Auto, &DaneState::None, &policy("enforce"), mx),
            Ok(Requirement::MtaSts)
        );
        assert_eq!(
            decide(Encrypt, &DaneState::None, &policy("enforce"), mx),
            Ok(Requirement::MtaSts)
        );
        assert_eq!(
            decide(Auto, &DaneState::None, &policy("enforce"), other),
            Err(Refusal::StsMxMismatch)
        );
        assert_eq!(
            decide(Auto, &DaneState::None, &policy("testing"), other),
            Ok(Requirement::Encrypt { sts_testing: true })
        );
        assert_eq!(
            decide(Verify, &DaneState::None, &policy("testing"), mx),
            Ok(Requirement::Pkix)
        );
        assert_eq!(
            decide(Auto, &DaneState::None, &policy("none"), other),
            Ok(Requirement::Encrypt { sts_testing: false })
        );
        assert_eq!(
            decide(Auto, &DaneState::Unusable, &StsState::None, mx),
            Ok(Requirement::Encrypt { sts_testing: false })
        );
        assert_eq!(
            decide(Verify, &DaneState::None, &StsState::None, mx),
            Ok(Requirement::Pkix)
        );
        assert_eq!(
            decide(Auto, &DaneState::None, &StsState::TempFail, mx),
            Err(Refusal::StsTempFail)
        );
        assert!(!Requirement::Encrypt { sts_testing: true }.is_verified());
        assert!(Requirement::Pkix.is_verified());
    }

    #[test]
    fn levels_order_as_floors() {
        assert!(TlsLevel::Verify > TlsLevel::Encrypt);
        assert!(TlsLevel::DaneOnly > TlsLevel::Verify);
        assert_eq!(TlsLevel::Auto.max(TlsLevel::Verify), TlsLevel::Verify);
    }
}
