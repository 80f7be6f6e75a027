//! Rendering scan results for `phigate dlp scan`: a masked table or JSON.
//! Only detector names, locations, confidences and masked values appear.

use super::ScanResult;
use serde::Serialize;

/// A fixed-width table, one finding per line, then counts and the HIPAA flag.
pub fn table(result: &ScanResult) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "{:<18} {:<16} {:>5} {:>7} {:<7} {}\n",
        "DETECTOR", "SOURCE", "PART", "OFFSET", "CONF", "VALUE (MASKED)"
    ));
    for f in &result.findings {
        out.push_str(&format!(
            "{:<18} {:<16} {:>5} {:>7} {:<7} {}",
            f.detector,
            f.location.source.as_str(),
            f.location.part,
            f.location.offset,
            f.confidence.as_str(),
            f.masked
        ));
        if let Some(o) = &f.origin {
            out.push_str(&format!("  [{o}]"));
        }
        out.push('\n');
    }
    if result.findings.is_empty() {
        out.push_str("(no findings)\n");
    }
    out.push_str(&format!(
        "distinct values: {}\nhipaa-phi: {}\n",
        if result.counts.is_empty() {
            "none".to_string()
        } else {
            result.summary()
        },
        if result.hipaa_phi { "yes" } else { "no" }
    ));
    for (origin, counts) in result.sources(true) {
        let c: Vec<String> = counts.iter().map(|(k, v)| format!("{k}={v}")).collect();
        out.push_str(&format!("source {origin}: {}\n", c.join(", ")));
    }
    out
}

#[derive(Serialize)]
struct JsonReport<'a> {
    findings: &'a [super::Finding],
    counts: &'a std::collections::BTreeMap<String, usize>,
    hipaa_phi: bool,
    /// Distinct values per detector per attachment origin.
    sources: std::collections::BTreeMap<String, std::collections::BTreeMap<String, usize>>,
}

/// Pretty JSON: `{findings: [...], counts: {...}, hipaa_phi}`; fingerprints are omitted.
pub fn json(result: &ScanResult) -> String {
    let r = JsonReport {
        findings: &result.findings,
        counts: &result.counts,
        hipaa_phi: result.hipaa_phi,
        sources: result.sources(true),
    };
    serde_json::to_string_pretty(&r).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

#[cfg(test)]
mod tests {
    use crate::dlp::{DlpConfig, Scanner};

    #[test]
    fn reports_never_show_values() {
        let s = Scanner::new(&DlpConfig::default()).unwrap();
        let r = s.scan_text("SSN 536-22-8901 card 4111 1111 1111 1111");
        for out in [super::table(&r), super::json(&r)] {
            assert!(!out.contains("536-22"), "{out}");
            assert!(!out.contains("4111 1111 1111 1111"));
            assert!(out.contains("8901"));
        }
        let v: serde_json::Value = serde_json::from_str(&super::json(&r)).unwrap();
        assert_eq!(v["counts"]["ssn"], 1);
        assert!(v["findings"][0].get("fingerprint").is_none());
    }
}
