//! Reading and validating the policy file. Errors name the file, the line and, when
//! the problem is inside a `[[rule]]`, the rule's name, so `check-config` can point
//! the admin at it.

use super::{Policy, PolicyFile};
use crate::dlp::{self, DlpError, Scanner};
use std::fmt;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{file}: cannot read policy: {source}")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", Located(.file, .line, .rule, .message))]
    Invalid {
        file: String,
        line: Option<usize>,
        rule: Option<String>,
        message: String,
    },
}

struct Located<'a>(
    &'a String,
    &'a Option<usize>,
    &'a Option<String>,
    &'a String,
);

impl fmt::Display for Located<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        if let Some(l) = self.1 {
            write!(f, ":{l}")?;
        }
        if let Some(r) = self.2 {
            write!(f, ": rule `{r}`")?;
        }
        write!(f, ": {}", self.3)
    }
}

impl Policy {
    /// Load and validate a policy file.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Io {
            file: file.clone(),
            source,
        })?;
        Policy::from_toml_str(&text, &file)
    }

    /// Parse policy text; `origin` names it in errors.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Policy, PolicyError> {
        let invalid =
            |line: Option<usize>, rule: Option<String>, message: String| PolicyError::Invalid {
                file: origin.to_string(),
                line,
                rule,
                message,
            };
        let parsed: PolicyFile = toml::from_str(text).map_err(|e| {
            let offset = e.span().map(|s| s.start);
            let line = offset.map(|o| line_of(text, o));
            let rule = offset.and_then(|o| rule_at(text, o));
            invalid(line, rule, e.message().trim().to_string())
        })?;
        validate(&parsed, text).map_err(|(rule_idx, msg)| {
            let (line, name) = match rule_idx {
                Some(i) => (
                    rule_header_line(text, i),
                    parsed.rules.get(i).map(|r| r.name.clone()),
                ),
                // `[dlp.limits] key: ...`: point at the key's line.
                None => (
                    msg.strip_prefix("[dlp.limits] ")
                        .and_then(|m| m.split(':').next())
                        .and_then(|key| {
                            find_line(text, &format!("{key} ")).or_else(|| find_line(text, key))
                        }),
                    None,
                ),
            };
            invalid(line, name, msg)
        })?;
        let scanner = Scanner::new(&parsed.dlp).map_err(|e| {
            let needle = match &e {
                DlpError::BadPattern { name, .. } | DlpError::DuplicateName(name) => name.clone(),
                DlpError::EmptyDictionary(name) => name.clone(),
                _ => String::new(),
            };
            let line = find_line(text, &needle).or_else(|| find_line(text, "[dlp"));
            invalid(line, None, format!("[dlp] {e}"))
        })?;
        Ok(Policy {
            file: parsed,
            scanner,
        })
    }
}

/// Semantic checks serde cannot do. Errors carry the rule index when there is one.
fn validate(p: &PolicyFile, _text: &str) -> Result<(), (Option<usize>, String)> {
    let mut known: Vec<String> = dlp::names::ALL.iter().map(|s| s.to_string()).collect();
    known.extend(p.dlp.custom.iter().filter_map(|c| c.name.clone()));
    known.extend(p.dlp.dictionary.iter().map(|d| d.name.clone()));
    for name in &known {
        if !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
            || name.is_empty()
        {
            return Err((
                None,
                format!("detector name `{name}` must be lowercase letters, digits, - or _"),
            ));
        }
    }
    for d in &p.dlp.disable {
        if !dlp::names::ALL.contains(&d.as_str()) {
            return Err((
                None,
                format!("[dlp] disable: unknown built-in detector `{d}`"),
            ));
        }
    }
    // Message `[dlp.limits] key: must be in range` names the key for check-config.
    p.dlp.limits.validate().map_err(|m| (None, m))?;
    if p.dlp.custom.iter().any(|c| c.name.is_none()) {
        return Err((None, "every [[dlp.custom]] detector needs a name".into()));
    }
    let mut seen = std::collections::HashSet::new();
    for (i, r) in p.rules.iter().enumerate() {
        if r.name.trim().is_empty() || r.name.contains(['\r', '\n']) {
            return Err((Some(i), "rule name must be a non-empty single line".into()));
        }
        if !seen.insert(r.name.as_str()) {
            return Err((Some(i), "duplicate rule name".into()));
        }
        for d in &r.when.detectors {
            if d.name() == dlp::names::HEALTH_TERM {
                return Err((
                    Some(i),
                    "health terms are not counted as findings; match `hipaa_phi = true` instead"
                        .into(),
                ));
            }
            if !known.iter().any(|k| k == d.name()) {
                return Err((Some(i), format!("unknown detector `{}`", d.name())));
            }
        }
        if let (Some(a), Some(b)) = (r.when.min_size, r.when.max_size) {
            if a > b {
                return Err((Some(i), "min_size is larger than max_size".into()));
            }
        }
        if let Some(s) = &r.redact_subject {
            if s.contains(['\r', '\n']) {
                return Err((Some(i), "redact_subject must be a single line".into()));
            }
        }
    }
    if p.default
        .redact_subject
        .as_deref()
        .is_some_and(|s| s.contains(['\r', '\n']))
    {
        return Err((
            None,
            "[default] redact_subject must be a single line".into(),
        ));
    }
    Ok(())
}

/// 1-based line number of byte `offset`.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// Start offsets of `[[rule]]` headers.
fn rule_headers(text: &str) -> Vec<usize> {
    let mut out = Vec::new();
    let mut off = 0;
    for line in text.split_inclusive('\n') {
        if line.trim_start().starts_with("[[rule]]") {
            out.push(off);
        }
        off += line.len();
    }
    out
}

fn rule_header_line(text: &str, idx: usize) -> Option<usize> {
    rule_headers(text).get(idx).map(|o| line_of(text, *o))
}

/// The name of the `[[rule]]` whose block contains `offset`, if any.
fn rule_at(text: &str, offset: usize) -> Option<String> {
    let headers = rule_headers(text);
    let i = headers.iter().rposition(|h| *h <= offset)?;
    let end = headers.get(i + 1).copied().unwrap_or(text.len());
    let block = &text[headers[i]..end];
    // Only the rule's own table counts: stop at the next top-level table header.
    for line in block.lines().skip(1) {
        let t = line.trim_start();
        if t.starts_with('[') && !t.starts_with("[rule.") {
            break;
        }
        if let Some(rest) = t.strip_prefix("name") {
            let v = rest.trim_start().strip_prefix('=')?.trim();
            return Some(v.trim_matches(|c| c == '"' || c == '\'').to_string());
        }
    }
    Some(format!("#{}", i + 1))
}

fn find_line(text: &str, needle: &str) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    text.find(needle).map(|o| line_of(text, o))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        match Policy::from_toml_str(text, "policy.toml") {
            Err(e) => e.to_string(),
            Ok(_) => panic!("expected an error"),
        }
    }

    #[test]
    fn unknown_field_names_file_line_and_rule() {
        let e = err("internal_domains = [\"a.example\"]\n\n[[rule]]\nname = \"first\"\naction = \"tag\"\n\n[[rule]]\nname = \"second\"\nactoin = \"reject\"\n");
        assert!(e.starts_with("policy.toml:9: rule `second`:"), "{e}");
        assert!(e.contains("actoin"), "{e}");
    }

    #[test]
    fn bad_value_in_match_table() {
        let e =
            err("[[rule]]\nname = \"r1\"\naction = \"reject\"\n[rule.match]\nexternal = \"yes\"\n");
        assert!(e.starts_with("policy.toml:5: rule `r1`:"), "{e}");
    }

    #[test]
    fn unknown_detector_and_duplicate_names() {
        let e = err("[[rule]]\nname = \"x\"\n[rule.match]\ndetectors = [\"sn\"]\n");
        assert_eq!(e, "policy.toml:1: rule `x`: unknown detector `sn`");
        let e = err("[[rule]]\nname = \"x\"\n[[rule]]\nname = \"x\"\n");
        assert!(e.starts_with("policy.toml:3: rule `x`: duplicate"), "{e}");
    }

    #[test]
    fn bad_custom_regex_names_line() {
        let e =
            err("[dlp]\nmode = \"monitor\"\n[[dlp.custom]]\nname = \"acct\"\npattern = \"(\"\n");
        assert!(e.starts_with("policy.toml:4:"), "{e}");
        assert!(e.contains("acct"), "{e}");
    }

    #[test]
    fn disable_and_health_term_checked() {
        let e = err("[dlp]\ndisable = [\"ssnn\"]\n");
        assert!(e.contains("unknown built-in detector `ssnn`"), "{e}");
        let e = err("[[rule]]\nname = \"h\"\n[rule.match]\ndetectors = [\"health-term\"]\n");
        assert!(e.contains("rule `h`") && e.contains("hipaa_phi"), "{e}");
    }

    #[test]
    fn top_level_typo_rejected() {
        let e = err("internal_domain = []\n");
        assert!(e.starts_with("policy.toml:1:"), "{e}");
    }

    #[test]
    fn example_policy_loads() {
        let p = Policy::load(Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/conf/policy.toml"
        )));
        assert!(p.is_ok(), "{:?}", p.err().map(|e| e.to_string()));
    }
}
