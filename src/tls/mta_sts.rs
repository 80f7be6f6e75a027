//! MTA-STS (RFC 8461) rules as pure functions.
//!
//! Nothing here does I/O: the delivery layer performs the `_mta-sts` TXT lookup and the
//! HTTPS fetch, then feeds the results to these functions. Keeping the rules pure lets the
//! conformance vectors exercise every decision without a network.
//!
//! Choices where the RFC or public implementations leave room are listed in
//! `docs/conformance.md` ("MTA-STS").

use thiserror::Error;

/// Largest policy body accepted (RFC 8461 §3.3 suggests 64 KiB).
pub const MAX_POLICY_BYTES: usize = 64 * 1024;

/// Largest `max_age` allowed by RFC 8461 §3.2 (about one year).
pub const MAX_MAX_AGE: u64 = 31_557_600;

/// Why an MTA-STS record, policy or fetch result was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StsError {
    #[error("no MTA-STS TXT record")]
    NoTxtRecord,
    #[error("more than one MTA-STS TXT record")]
    MultipleTxtRecords,
    #[error("malformed MTA-STS TXT record")]
    InvalidTxtRecord,
    #[error("policy body is larger than {MAX_POLICY_BYTES} bytes")]
    PolicyTooLarge,
    #[error("policy body is not UTF-8")]
    PolicyNotUtf8,
    #[error("policy line {line} is malformed")]
    MalformedLine { line: usize },
    #[error("policy field `{0}` is missing")]
    MissingField(&'static str),
    #[error("policy field `{0}` has an invalid value")]
    InvalidValue(&'static str),
    #[error("unsupported policy version")]
    UnsupportedVersion,
    #[error("invalid policy domain")]
    InvalidDomain,
    #[error("policy fetch returned HTTP status {0} (only 200 is accepted)")]
    HttpStatus(u16),
    #[error("policy fetch did not return text/plain")]
    ContentType,
}

/// Policy mode (RFC 8461 §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Enforce,
    Testing,
    None,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Testing => "testing",
            Mode::None => "none",
        }
    }
}

/// A parsed, validated MTA-STS policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub mode: Mode,
    /// Seconds; never above [`MAX_MAX_AGE`].
    pub max_age: u64,
    /// Lower-case MX patterns (`host` or `*.domain`), duplicates removed, in policy order.
    pub mx: Vec<String>,
}

impl Policy {
    /// Strict RFC 8461 §3.2 parser.
    ///
    /// Lines end in LF or CRLF. For `version`, `mode` and `max_age` the first occurrence
    /// wins and later ones are ignored; `mx` may repeat. Unknown (extension) fields and
    /// lines without a colon are ignored; a line with a colon but an invalid field name
    /// makes the policy invalid.
    pub fn parse(text: &str) -> Result<Policy, StsError> {
        if text.len() > MAX_POLICY_BYTES {
            return Err(StsError::PolicyTooLarge);
        }
        let mut version: Option<&str> = None;
        let mut mode: Option<Mode> = None;
        let mut max_age: Option<u64> = None;
        let mut mx: Vec<String> = Vec::new();

        for (index, raw) in text.split('\n').enumerate() {
            let line = raw.strip_suffix('\r').unwrap_or(raw);
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            if !is_field_name(name) {
                return Err(StsError::MalformedLine { line: index + 1 });
            }
            // sts-policy-field-delim is ":" *WSP and a field may be followed by *WSP.
            let value = value.trim_matches(is_wsp);
            match name {
                "version" => {
                    version.get_or_insert(value);
                }
                "mode" if mode.is_none() => mode = Some(parse_mode(value)?),
                "max_age" if max_age.is_none() => max_age = Some(parse_max_age(value)?),
                "mx" => {
                    let pattern = parse_mx_pattern(value).ok_or(StsError::InvalidValue("mx"))?;
                    if !mx.contains(&pattern) {
                        mx.push(pattern);
                    }
                }
                _ => {}
            }
        }

        match version {
            None => return Err(StsError::MissingField("version")),
            Some("STSv1") => {}
            Some(_) => return Err(StsError::UnsupportedVersion),
        }
        let mode = mode.ok_or(StsError::MissingField("mode"))?;
        let max_age = max_age.ok_or(StsError::MissingField("max_age"))?;
        if mode != Mode::None && mx.is_empty() {
            return Err(StsError::MissingField("mx"));
        }
        Ok(Policy { mode, max_age, mx })
    }

    /// Whether `host` (an MX host name) matches one of this policy's `mx` patterns.
    pub fn matches_mx(&self, host: &str) -> bool {
        mx_matches_any(&self.mx, host)
    }
}

fn is_wsp(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// sts-policy-ext-name = (ALPHA / DIGIT) *31(ALPHA / DIGIT / "_" / "-" / ".")
/// (the fixed names `version`, `mode`, `max_age`, `mx` fit this too).
fn is_field_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    match bytes.split_first() {
        Some((first, rest)) => {
            first.is_ascii_alphanumeric()
                && rest.len() <= 31
                && rest
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        }
        None => false,
    }
}

fn parse_mode(value: &str) -> Result<Mode, StsError> {
    // Values are case-sensitive (%s"..." in the ABNF).
    match value {
        "enforce" => Ok(Mode::Enforce),
        "testing" => Ok(Mode::Testing),
        "none" => Ok(Mode::None),
        _ => Err(StsError::InvalidValue("mode")),
    }
}

/// max_age = 1*10DIGIT, at most [`MAX_MAX_AGE`]. Larger values are rejected, not clamped.
fn parse_max_age(value: &str) -> Result<u64, StsError> {
    let digits_only = !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit());
    if !digits_only || value.len() > 10 {
        return Err(StsError::InvalidValue("max_age"));
    }
    match value.parse::<u64>() {
        Ok(age) if age <= MAX_MAX_AGE => Ok(age),
        _ => Err(StsError::InvalidValue("max_age")),
    }
}

/// sts-policy-mx-value = ["*."] Domain (RFC 5321 Domain: ASCII LDH labels, no trailing dot).
/// Returns the lower-cased pattern.
fn parse_mx_pattern(value: &str) -> Option<String> {
    let lower = value.to_ascii_lowercase();
    let domain = lower.strip_prefix("*.").unwrap_or(&lower);
    is_ldh_domain(domain).then_some(lower)
}

/// RFC 5321 `Domain`: dot-separated labels of letters, digits and inner hyphens.
fn is_ldh_domain(domain: &str) -> bool {
    !domain.is_empty()
        && domain.len() <= 253
        && domain.split('.').all(|label| {
            let bytes = label.as_bytes();
            !bytes.is_empty()
                && bytes.len() <= 63
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
                && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
                && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
        })
}

/// Brings a host name to its lower-case A-label form without a trailing dot, or `None`
/// if it is not a valid LDH domain afterwards (wildcards, spaces, empty labels...).
fn normalize_host(host: &str) -> Option<String> {
    let host = host.strip_suffix('.').unwrap_or(host);
    let ascii = if host.is_ascii() {
        host.to_ascii_lowercase()
    } else {
        idna::domain_to_ascii(host).ok()?
    };
    is_ldh_domain(&ascii).then_some(ascii)
}

/// RFC 8461 §4.1: a pattern matches the host exactly, or `*.suffix` matches a host with
/// exactly one extra left-most label. Invalid patterns never match; both sides are
/// compared case-insensitively in A-label form.
pub fn mx_pattern_matches(pattern: &str, host: &str) -> bool {
    let Some(host) = normalize_host(host) else {
        return false;
    };
    let (wildcard, base) = match pattern.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, pattern),
    };
    // Trailing dots are not allowed in policy patterns (RFC 5321 Domain).
    if base.ends_with('.') {
        return false;
    }
    let Some(base) = normalize_host(base) else {
        return false;
    };
    if wildcard {
        host.split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == base)
    } else {
        host == base
    }
}

/// Whether any of `patterns` matches `host` (see [`mx_pattern_matches`]).
pub fn mx_matches_any<S: AsRef<str>>(patterns: &[S], host: &str) -> bool {
    patterns
        .iter()
        .any(|pattern| mx_pattern_matches(pattern.as_ref(), host))
}

/// The `id` of the domain's single valid `v=STSv1` TXT record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxtRecord {
    pub id: String,
}

/// Picks the MTA-STS record out of the `_mta-sts.<domain>` TXT records.
///
/// Each element is one TXT record with its character-strings already concatenated
/// (RFC 8461 §3.1). Records that do not begin with `v=STSv1` followed by `;` are
/// discarded first; exactly one must remain and it must be valid.
pub fn parse_txt(records: &[String]) -> Result<TxtRecord, StsError> {
    let mut candidates = records.iter().filter(|r| is_sts_candidate(r));
    match (candidates.next(), candidates.next()) {
        (None, _) => Err(StsError::NoTxtRecord),
        (Some(record), None) => parse_txt_record(record),
        (Some(_), Some(_)) => Err(StsError::MultipleTxtRecords),
    }
}

fn is_sts_candidate(record: &str) -> bool {
    record
        .strip_prefix("v=STSv1")
        .is_some_and(|rest| rest.trim_start_matches(is_wsp).starts_with(';'))
}

/// Strict parser for one record (RFC 8461 §3.1 ABNF). Trailing separators and white space
/// (`id=abc;;; `) are tolerated; an empty field in the middle is not.
pub fn parse_txt_record(record: &str) -> Result<TxtRecord, StsError> {
    let rest = record
        .strip_prefix("v=STSv1")
        .ok_or(StsError::InvalidTxtRecord)?
        .trim_end_matches(|c| is_wsp(c) || c == ';');
    let mut pieces = rest.split(';');
    // Text between the version and the first ';' may only be white space.
    if !pieces.next().is_some_and(|p| p.chars().all(is_wsp)) {
        return Err(StsError::InvalidTxtRecord);
    }
    let mut id: Option<String> = None;
    let mut fields = 0usize;
    for piece in pieces {
        let field = piece.trim_matches(is_wsp);
        let (name, value) = field.split_once('=').ok_or(StsError::InvalidTxtRecord)?;
        if !is_field_name(name) {
            return Err(StsError::InvalidTxtRecord);
        }
        if name == "id" && id.is_none() {
            // The first `id` decides; a later one only needs extension syntax.
            if !is_sts_id(value) {
                return Err(StsError::InvalidTxtRecord);
            }
            id = Some(value.to_string());
        } else if !is_ext_value(value) {
            return Err(StsError::InvalidTxtRecord);
        }
        fields += 1;
    }
    match id {
        Some(id) if fields > 0 => Ok(TxtRecord { id }),
        _ => Err(StsError::InvalidTxtRecord),
    }
}

/// sts-id = 1*32(ALPHA / DIGIT)
fn is_sts_id(value: &str) -> bool {
    (1..=32).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// sts-ext-value = 1*(%x21-3A / %x3C / %x3E-7E): visible ASCII except "=" and ";".
fn is_ext_value(value: &str) -> bool {
    !value.is_empty()
        && value
            .bytes()
            .all(|b| matches!(b, 0x21..=0x3A | 0x3C | 0x3E..=0x7E))
}

fn normalize_policy_domain(domain: &str) -> Result<String, StsError> {
    normalize_host(domain).ok_or(StsError::InvalidDomain)
}

/// `_mta-sts.<domain>`: where the TXT record lives.
pub fn txt_name(domain: &str) -> Result<String, StsError> {
    Ok(format!("_mta-sts.{}", normalize_policy_domain(domain)?))
}

/// `mta-sts.<domain>`: the policy host, also the name its certificate must carry.
pub fn policy_host(domain: &str) -> Result<String, StsError> {
    Ok(format!("mta-sts.{}", normalize_policy_domain(domain)?))
}

/// `https://mta-sts.<domain>/.well-known/mta-sts.txt` (RFC 8461 §3.3). Only HTTPS, and
/// the fetcher must not follow redirects.
pub fn policy_url(domain: &str) -> Result<String, StsError> {
    Ok(format!(
        "https://{}/.well-known/mta-sts.txt",
        policy_host(domain)?
    ))
}

/// Only HTTP 200 is a policy; 3xx redirects must not be followed (RFC 8461 §3.3).
pub fn status_acceptable(status: u16) -> bool {
    status == 200
}

/// The media type must be `text/plain` (any case, any parameters).
pub fn content_type_acceptable(content_type: Option<&str>) -> bool {
    content_type.is_some_and(|ct| {
        let media_type = ct.split(';').next().unwrap_or("");
        media_type.trim().eq_ignore_ascii_case("text/plain")
    })
}

/// Appends a received body chunk, failing as soon as the body exceeds
/// [`MAX_POLICY_BYTES`] so a chunked or lying server cannot make us buffer more.
pub fn append_body_chunk(body: &mut Vec<u8>, chunk: &[u8]) -> Result<(), StsError> {
    if body.len().saturating_add(chunk.len()) > MAX_POLICY_BYTES {
        return Err(StsError::PolicyTooLarge);
    }
    body.extend_from_slice(chunk);
    Ok(())
}

/// Applies the fetch rules (status, content type, size, UTF-8) and parses the body.
pub fn policy_from_response(
    status: u16,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Policy, StsError> {
    if !status_acceptable(status) {
        return Err(StsError::HttpStatus(status));
    }
    if !content_type_acceptable(content_type) {
        return Err(StsError::ContentType);
    }
    if body.len() > MAX_POLICY_BYTES {
        return Err(StsError::PolicyTooLarge);
    }
    let text = std::str::from_utf8(body).map_err(|_| StsError::PolicyNotUtf8)?;
    Policy::parse(text)
}

/// A policy as stored in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedPolicy {
    pub policy: Policy,
    /// TXT `id` that was current when the policy was fetched.
    pub txt_id: String,
    /// Unix seconds.
    pub fetched_at: u64,
}

impl CachedPolicy {
    /// Unix second at which the policy stops applying.
    pub fn expires_at(&self) -> u64 {
        self.fetched_at
            .saturating_add(self.policy.max_age.min(MAX_MAX_AGE))
    }

    pub fn is_fresh(&self, now: u64) -> bool {
        now < self.expires_at()
    }

    /// True within `margin` seconds of expiry: time to refresh proactively (the caller
    /// adds jitter to `margin` so many domains do not refresh at once).
    pub fn refresh_due(&self, now: u64, margin: u64) -> bool {
        now.saturating_add(margin) >= self.expires_at()
    }
}

/// Outcome of the `_mta-sts.<domain>` TXT lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxtLookup {
    /// Exactly one valid record.
    Found(TxtRecord),
    /// NXDOMAIN, NODATA, or no valid `v=STSv1` record.
    Absent,
    /// SERVFAIL or timeout: says nothing about the policy.
    TempFail,
}

impl TxtLookup {
    /// Classifies the records of a successful lookup.
    pub fn from_records(records: &[String]) -> TxtLookup {
        match parse_txt(records) {
            Ok(record) => TxtLookup::Found(record),
            Err(_) => TxtLookup::Absent,
        }
    }
}

/// What to do about a domain's MTA-STS policy before delivering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheDecision {
    /// The cached policy is current: apply it.
    UseCached,
    /// Fetch the policy over HTTPS, then call [`after_fetch`].
    Fetch,
    /// The domain has no MTA-STS policy.
    NoPolicy,
    /// DNS failed temporarily and nothing is cached: defer rather than assume no policy.
    TempFail,
}

/// Decides between the cache and a fetch (RFC 8461 §3.3, §5.1).
///
/// An unexpired cached policy stays in force when the TXT record disappears or cannot be
/// looked up: removing MTA-STS is done by publishing `mode: none`, not by deleting DNS
/// records, so a missing record is no reason to stop enforcing.
pub fn decide(cached: Option<&CachedPolicy>, txt: &TxtLookup, now: u64) -> CacheDecision {
    let fresh = cached.filter(|c| c.is_fresh(now));
    match (fresh, txt) {
        (Some(c), TxtLookup::Found(record)) if c.txt_id == record.id => CacheDecision::UseCached,
        (_, TxtLookup::Found(_)) => CacheDecision::Fetch,
        (Some(_), TxtLookup::Absent | TxtLookup::TempFail) => CacheDecision::UseCached,
        (None, TxtLookup::Absent) => CacheDecision::NoPolicy,
        (None, TxtLookup::TempFail) => CacheDecision::TempFail,
    }
}

/// The cache entry after a fetch attempt triggered by TXT `id`.
///
/// On success the new policy replaces the old one. On failure an unexpired cached policy
/// is kept with its old `id` (so the next delivery tries again): otherwise an attacker who
/// forges the TXT record and blocks HTTPS could switch enforcement off.
pub fn after_fetch(
    cached: Option<CachedPolicy>,
    txt_id: &str,
    fetched: Result<Policy, StsError>,
    now: u64,
) -> Option<CachedPolicy> {
    match fetched {
        Ok(policy) => Some(CachedPolicy {
            policy,
            txt_id: txt_id.to_string(),
            fetched_at: now,
        }),
        Err(_) => cached.filter(|c| c.is_fresh(now)),
    }
}

/// What a policy says about one MX connection (RFC 8461 §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MxVerdict {
    /// Policy satisfied.
    Deliver,
    /// `testing` mode and the policy failed: deliver, but record the failure.
    DeliverAndReport,
    /// `enforce` mode and the policy failed: do not deliver to this MX.
    DoNotDeliver,
    /// `mode: none`: behave as if the domain had no policy.
    NoPolicy,
}

/// Combines the mode with the two checks RFC 8461 §4 requires: the MX host matches a
/// policy pattern, and its certificate is PKIX-valid for the MX name.
pub fn mx_verdict(mode: Mode, mx_matches: bool, certificate_valid: bool) -> MxVerdict {
    let passed = mx_matches && certificate_valid;
    match mode {
        Mode::None => MxVerdict::NoPolicy,
        _ if passed => MxVerdict::Deliver,
        Mode::Testing => MxVerdict::DeliverAndReport,
        Mode::Enforce => MxVerdict::DoNotDeliver,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "version: STSv1\nmode: enforce\nmx: mail.example.com\nmax_age: 600\n";

    fn cached(id: &str, fetched_at: u64) -> CachedPolicy {
        CachedPolicy {
            policy: Policy::parse(GOOD).expect("test policy parses"),
            txt_id: id.to_string(),
            fetched_at,
        }
    }

    fn found(id: &str) -> TxtLookup {
        TxtLookup::Found(TxtRecord { id: id.to_string() })
    }

    #[test]
    fn same_id_and_fresh_uses_cache() {
        assert_eq!(
            decide(Some(&cached("a", 0)), &found("a"), 10),
            CacheDecision::UseCached
        );
    }

    #[test]
    fn changed_id_refetches() {
        assert_eq!(
            decide(Some(&cached("a", 0)), &found("b"), 10),
            CacheDecision::Fetch
        );
    }

    #[test]
    fn expired_cache_refetches_even_with_same_id() {
        assert_eq!(
            decide(Some(&cached("a", 0)), &found("a"), 600),
            CacheDecision::Fetch
        );
        assert_eq!(
            decide(Some(&cached("a", 0)), &TxtLookup::Absent, 600),
            CacheDecision::NoPolicy
        );
    }

    #[test]
    fn failed_fetch_after_id_change_keeps_enforcing() {
        let kept = after_fetch(
            Some(cached("a", 0)),
            "b",
            Err(StsError::HttpStatus(503)),
            10,
        )
        .expect("cached policy kept");
        assert_eq!(kept.txt_id, "a");
        assert_eq!(kept.policy.mode, Mode::Enforce);
        // The next delivery still sees a changed id and retries the fetch.
        assert_eq!(decide(Some(&kept), &found("b"), 11), CacheDecision::Fetch);
    }

    #[test]
    fn failed_fetch_with_expired_cache_drops_it() {
        assert!(after_fetch(Some(cached("a", 0)), "b", Err(StsError::ContentType), 600).is_none());
    }

    #[test]
    fn successful_fetch_replaces_cache() {
        let policy = Policy::parse(GOOD).expect("parses");
        let new = after_fetch(Some(cached("a", 0)), "b", Ok(policy), 50).expect("stored");
        assert_eq!((new.txt_id.as_str(), new.fetched_at), ("b", 50));
    }

    #[test]
    fn refresh_due_near_expiry() {
        let c = cached("a", 0);
        assert!(!c.refresh_due(100, 60));
        assert!(c.refresh_due(560, 60));
    }

    #[test]
    fn max_age_cap_limits_cache_lifetime() {
        let mut c = cached("a", 0);
        c.policy.max_age = u64::MAX;
        assert_eq!(c.expires_at(), MAX_MAX_AGE);
    }

    #[test]
    fn bare_cr_is_not_a_line_end() {
        let text = "version: STSv1\rmode: enforce\nmx: a.example\nmax_age: 60\n";
        assert!(Policy::parse(text).is_err());
    }

    #[test]
    fn mx_with_trailing_dot_pattern_never_matches() {
        assert!(!mx_pattern_matches("mail.example.com.", "mail.example.com"));
        assert!(mx_pattern_matches("*.example.com", "MX1.Example.com."));
    }

    #[test]
    fn chunks_over_limit_rejected() {
        let mut body = Vec::new();
        assert!(append_body_chunk(&mut body, &[b'a'; MAX_POLICY_BYTES]).is_ok());
        assert_eq!(
            append_body_chunk(&mut body, b"x"),
            Err(StsError::PolicyTooLarge)
        );
    }
}
