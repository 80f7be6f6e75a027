//! Data loss prevention: find PHI and other sensitive identifiers in a message's
//! text view. Values are never kept: a `Finding` carries a masked rendering and a
//! per-process keyed fingerprint (for counting distinct values), nothing else.

mod context;
pub mod eval;
pub mod extract;
pub mod normalize;
pub mod report;
mod scan;
pub mod validators;

use crate::message::Source;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub use scan::Scanner;

/// Names of the built-in detectors, as used in policy rules and reports.
pub mod names {
    pub const SSN: &str = "ssn";
    pub const ITIN: &str = "itin";
    pub const NPI: &str = "npi";
    pub const DEA: &str = "dea";
    pub const MBI: &str = "mbi";
    pub const HICN: &str = "hicn";
    pub const CARD: &str = "card";
    pub const ABA: &str = "aba";
    pub const ICD10: &str = "icd10";
    pub const DOB: &str = "dob";
    pub const PHONE: &str = "phone";
    pub const EMAIL: &str = "email";
    pub const ADDRESS: &str = "address";
    pub const MRN: &str = "mrn";
    pub const HEALTH_TERM: &str = "health-term";
    pub const UNDECODABLE: &str = "undecodable-part";
    /// A patient name read from a known field (HL7 PID-5, CDA, FHIR Patient.name).
    pub const PATIENT_NAME: &str = "patient-name";
    pub const UNSCANNABLE: &str = super::extract::UNSCANNABLE;
    pub const ENCRYPTED: &str = super::extract::ENCRYPTED;
    pub const UNSCANNED_IMAGE: &str = super::extract::IMAGE;
    pub const ALL: [&str; 20] = [
        SSN,
        ITIN,
        NPI,
        DEA,
        MBI,
        HICN,
        CARD,
        ABA,
        ICD10,
        DOB,
        PHONE,
        EMAIL,
        ADDRESS,
        MRN,
        HEALTH_TERM,
        UNDECODABLE,
        PATIENT_NAME,
        UNSCANNABLE,
        ENCRYPTED,
        UNSCANNED_IMAGE,
    ];
}

#[derive(Debug, thiserror::Error)]
pub enum DlpError {
    #[error("detector `{name}`: invalid regular expression: {reason}")]
    BadPattern { name: String, reason: String },
    #[error("detector `{0}`: the name is used by a built-in detector or another custom detector")]
    DuplicateName(String),
    #[error("dictionary `{0}`: no words")]
    EmptyDictionary(String),
    #[error("keyword matcher: {0}")]
    Keywords(String),
    #[error("evaluation corpus: {0}")]
    Corpus(String),
}

/// How sure a detector is. Ordered: `Low < Medium < High`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum Confidence {
    #[default]
    Low,
    Medium,
    High,
}

impl Confidence {
    pub fn as_str(&self) -> &'static str {
        match self {
            Confidence::Low => "low",
            Confidence::Medium => "medium",
            Confidence::High => "high",
        }
    }
}

/// Where a finding is: which kind of text, which MIME part, byte offset in the
/// normalised text of that part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Location {
    pub source: Source,
    pub part: usize,
    pub offset: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub detector: String,
    pub location: Location,
    pub confidence: Confidence,
    /// The value with all but its last few characters masked, e.g. `***-**-1234`.
    pub masked: String,
    /// Keyed hash of the value, only meaningful within one `Scanner`; used to count
    /// distinct values. Never serialised.
    #[serde(skip)]
    pub fingerprint: u64,
    /// Where inside an attachment: `attachment:batch.zip/claims.xlsx sheet 1`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// The same without file names (`attachment:part 2 (zip)/entry 1 (xlsx) sheet 1`),
    /// for the audit record. Never serialised.
    #[serde(skip)]
    pub origin_redacted: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ScanResult {
    pub findings: Vec<Finding>,
    /// Distinct values per detector (all confidences).
    pub counts: BTreeMap<String, usize>,
    /// The default HIPAA rule: an identifier co-occurs with health information.
    pub hipaa_phi: bool,
}

impl ScanResult {
    /// Distinct values found by `detector` at `min` confidence or above.
    pub fn count_at_least(&self, detector: &str, min: Confidence) -> usize {
        let mut seen: Vec<u64> = self
            .findings
            .iter()
            .filter(|f| f.detector == detector && f.confidence >= min)
            .map(|f| f.fingerprint)
            .collect();
        seen.sort_unstable();
        seen.dedup();
        seen.len()
    }

    /// Distinct values per detector per attachment origin (with file names when
    /// `named`, for the operator; without, for the audit record).
    pub fn sources(&self, named: bool) -> BTreeMap<String, BTreeMap<String, usize>> {
        let mut sets: BTreeMap<String, BTreeMap<String, std::collections::HashSet<u64>>> =
            BTreeMap::new();
        for f in &self.findings {
            let o = if named { &f.origin } else { &f.origin_redacted };
            if let Some(o) = o {
                sets.entry(o.clone())
                    .or_default()
                    .entry(f.detector.clone())
                    .or_default()
                    .insert(f.fingerprint);
            }
        }
        sets.into_iter()
            .map(|(o, m)| (o, m.into_iter().map(|(d, s)| (d, s.len())).collect()))
            .collect()
    }

    /// `attachment:r.pdf page 2 (ssn=1); ...`: detectors and counts per origin.
    pub fn sources_summary(&self, named: bool) -> String {
        self.sources(named)
            .iter()
            .map(|(o, m)| {
                let counts: Vec<String> = m.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!("{o} ({})", counts.join(", "))
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// The `X-Phigate-DLP` style summary: `card=1, ssn=2` (names and counts only).
    pub fn summary(&self) -> String {
        self.counts
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Enforce or only observe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Enforce,
    Monitor,
}

/// The `[dlp]` table of the policy file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DlpConfig {
    #[serde(default)]
    pub mode: Mode,
    /// Built-in detectors to switch off, by name.
    #[serde(default)]
    pub disable: Vec<String>,
    /// Organisation medical record number formats; findings are reported as `mrn`.
    #[serde(default)]
    pub mrn: Vec<PatternDetector>,
    /// Admin-defined regular expressions, each reported under its own name.
    #[serde(default)]
    pub custom: Vec<PatternDetector>,
    /// Keyword dictionaries (diagnosis terms, drug names...).
    #[serde(default)]
    pub dictionary: Vec<Dictionary>,
    /// Bounds on attachment extraction (`[dlp.limits]`).
    #[serde(default)]
    pub limits: extract::Limits,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatternDetector {
    /// Required for `custom`; ignored for `mrn` (always reported as `mrn`).
    #[serde(default)]
    pub name: Option<String>,
    pub pattern: String,
    #[serde(default = "high")]
    pub confidence: Confidence,
    /// When non-empty, one of these words must appear near the match.
    #[serde(default)]
    pub context: Vec<String>,
    /// Counts as an identifier for the HIPAA co-occurrence rule.
    #[serde(default)]
    pub identifier: bool,
    /// Counts as health information for the HIPAA co-occurrence rule.
    #[serde(default)]
    pub health: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dictionary {
    pub name: String,
    pub words: Vec<String>,
    #[serde(default = "medium")]
    pub confidence: Confidence,
    /// Counts as health information for the HIPAA co-occurrence rule.
    #[serde(default = "yes")]
    pub health: bool,
}

fn high() -> Confidence {
    Confidence::High
}
fn medium() -> Confidence {
    Confidence::Medium
}
fn yes() -> bool {
    true
}

/// Mask a value: letters and digits become `*` except the last four (last two for
/// short values, none for very short ones); separators stay so the shape is visible.
pub fn mask(value: &str) -> String {
    let alnum = value.chars().filter(|c| c.is_alphanumeric()).count();
    let keep = match alnum {
        0..=3 => 0,
        4..=7 => 2,
        _ => 4,
    };
    let mut seen = 0;
    value
        .chars()
        .map(|c| {
            if c.is_alphanumeric() {
                seen += 1;
                if seen > alnum - keep {
                    c
                } else {
                    '*'
                }
            } else {
                c
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_keep_only_the_tail() {
        assert_eq!(mask("536-22-8901"), "***-**-8901");
        assert_eq!(mask("4111 1111 1111 1111"), "**** **** **** 1111");
        assert_eq!(mask("E11.9"), "**1.9");
        assert_eq!(mask("abc"), "***");
    }

    #[test]
    fn confidence_orders() {
        assert!(Confidence::Low < Confidence::Medium && Confidence::Medium < Confidence::High);
    }
}
