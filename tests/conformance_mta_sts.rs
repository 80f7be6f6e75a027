//! Runs every vector in tests/data/conformance/mta-sts/mta-sts-vectors.json (185 cases)
//! against phigate's pure MTA-STS rules.
//!
//! Disputed cases: phigate follows the vector's `expect` (the strict RFC 8461 reading) for
//! all of them except those in `PHIGATE_DIFFERS`, where it deliberately goes the other way.
//! The choices, with reasons, are in docs/conformance.md ("MTA-STS"):
//! - policy: `mode: none` with mx lines is valid; max_age > 31557600 rejected (not clamped);
//!   max_age must be 1*10DIGIT (no default when missing); colon-less lines ignored; first
//!   `version`/`mode`/`max_age` wins; field names and mode values case-sensitive; no space
//!   before ':'; a BOM invalidates the first field; invalid/U-label/partial-wildcard mx rejected.
//! - TXT: trailing white space and trailing ';' tolerated; record must start with v=STSv1;
//!   everything else strict (case, leading space, id charset/length, empty middle fields).
//! - MX match: U-label hosts and patterns compared in A-label form (match); a host padded
//!   with white space is NOT trimmed and never matches (PHIGATE_DIFFERS); partial-label
//!   wildcards never match.

use std::io::Write;
use std::path::PathBuf;

use phigate::tls::mta_sts::{
    self, append_body_chunk, decide, mx_matches_any, mx_verdict, parse_txt, policy_from_response,
    policy_url, CacheDecision, CachedPolicy, Mode, MxVerdict, Policy, StsError, TxtLookup,
    TxtRecord, MAX_POLICY_BYTES,
};
use phigate::tls::peer_verify::pkix_verifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use serde_json::Value;

/// Disputed vectors where phigate deliberately disagrees with `expect`.
const PHIGATE_DIFFERS: &[&str] = &["mailauth:whitespace-padded"];

const VALID_BODY: &str = "version: STSv1\nmode: enforce\nmx: mail.loc\nmax_age: 86400";

fn vectors() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/conformance/mta-sts/mta-sts-vectors.json");
    let text = std::fs::read_to_string(&path).expect("vector file readable");
    serde_json::from_str(&text).expect("vector file is JSON")
}

fn section<'a>(v: &'a Value, name: &str) -> &'a Vec<Value> {
    v[name].as_array().expect("section is an array")
}

fn id(case: &Value) -> &str {
    case["id"].as_str().expect("case id")
}

fn str_list(v: &Value) -> Vec<String> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|s| s.as_str().expect("string").to_string())
        .collect()
}

fn report(failures: Vec<String>, ran: usize, expected: usize) {
    assert_eq!(ran, expected, "number of vectors run");
    assert!(
        failures.is_empty(),
        "failing vectors:\n{}",
        failures.join("\n")
    );
}

/// Builds the input of a policy vector; object inputs describe a generator.
fn policy_input(case: &Value) -> String {
    match &case["input"] {
        Value::String(s) => s.clone(),
        Value::Object(gen) => {
            let base = gen["BASE"].as_str().expect("BASE");
            assert_eq!(
                gen["generator"].as_str(),
                Some("BASE + 'x-pad: ' + 'a'*70000 + '\\r\\n'"),
                "unknown generator"
            );
            format!("{base}x-pad: {}\r\n", "a".repeat(70000))
        }
        other => panic!("unexpected input {other}"),
    }
}

#[test]
fn policy_parse_vectors() {
    let v = vectors();
    let mut failures = Vec::new();
    let cases = section(&v, "policy_parse");
    for case in cases {
        let parsed = Policy::parse(&policy_input(case));
        let expect = &case["expect"];
        let want_valid = expect["valid"].as_bool().expect("valid flag");
        match (&parsed, want_valid) {
            (Ok(policy), true) => {
                let mode_ok = expect["mode"].as_str() == Some(policy.mode.as_str());
                let age_ok = expect["max_age"].as_u64() == Some(policy.max_age);
                // Vectors without an mx list leave it unspecified.
                let mx_ok = expect.get("mx").is_none_or(|mx| str_list(mx) == policy.mx);
                if !(mode_ok && age_ok && mx_ok) {
                    failures.push(format!(
                        "{}: parsed {policy:?}, expected {expect}",
                        id(case)
                    ));
                }
            }
            (Err(_), false) => {}
            (got, _) => failures.push(format!("{}: got {got:?}, expected {expect}", id(case))),
        }
    }
    report(failures, cases.len(), 62);
}

#[test]
fn txt_record_vectors() {
    let v = vectors();
    let mut failures = Vec::new();
    let cases = section(&v, "txt_record");
    for case in cases {
        // Each TXT record's character-strings are concatenated without separator.
        let records: Vec<String> = case["txt_records"]
            .as_array()
            .expect("records")
            .iter()
            .map(|strings| str_list(strings).concat())
            .collect();
        let got = parse_txt(&records);
        let ok = match &case["expect_id"] {
            Value::String(want) => got.as_ref().is_ok_and(|r| &r.id == want),
            Value::Null => got.is_err(),
            Value::Object(_) => got == Err(StsError::MultipleTxtRecords),
            other => panic!("unexpected expect_id {other}"),
        };
        if !ok {
            failures.push(format!(
                "{}: got {got:?}, expected {}",
                id(case),
                case["expect_id"]
            ));
        }
    }
    report(failures, cases.len(), 57);
}

#[test]
fn txt_dns_error_vectors() {
    let v = vectors();
    let cases = section(&v, "txt_dns_errors");
    let cached = CachedPolicy {
        policy: Policy::parse(VALID_BODY).expect("valid"),
        txt_id: "a".into(),
        fetched_at: 1_000,
    };
    for case in cases {
        let dns = case["dns"].as_str().expect("dns");
        let lookup = if dns.starts_with("SERVFAIL") {
            TxtLookup::TempFail
        } else {
            assert!(dns.starts_with("NXDOMAIN") || dns.starts_with("NOERROR/NODATA"));
            TxtLookup::from_records(&[])
        };
        let without_cache = decide(None, &lookup, 2_000);
        let with_cache = decide(Some(&cached), &lookup, 2_000);
        match id(case) {
            "nxdomain" | "nodata" => assert_eq!(without_cache, CacheDecision::NoPolicy),
            "servfail" => assert_eq!(without_cache, CacheDecision::TempFail),
            other => panic!("unknown case {other}"),
        }
        // A fresh cached policy survives every DNS failure.
        assert_eq!(with_cache, CacheDecision::UseCached, "{}", id(case));
    }
    assert_eq!(cases.len(), 3);
}

#[test]
fn mx_match_vectors() {
    let v = vectors();
    let mut failures = Vec::new();
    let cases = section(&v, "mx_match");
    for case in cases {
        let patterns = str_list(&case["patterns"]);
        let host = case["mx_host"].as_str().expect("host");
        let mut want = case["expect_match"].as_bool().expect("expect_match");
        if PHIGATE_DIFFERS.contains(&id(case)) {
            assert!(
                case.get("disputed").is_some(),
                "only disputed cases may differ"
            );
            want = !want;
        }
        let got = mx_matches_any(&patterns, host);
        if got != want {
            failures.push(format!("{}: got {got}, expected {want}", id(case)));
        }
    }
    report(failures, cases.len(), 35);
}

#[test]
fn mode_semantics_vectors() {
    let v = vectors();
    let cases = section(&v, "mode_semantics");
    for case in cases {
        let mode = match case["policy_mode"].as_str() {
            Some("enforce") => Mode::Enforce,
            Some("testing") => Mode::Testing,
            Some("none") => Mode::None,
            other => panic!("mode {other:?}"),
        };
        let matches = case["mx_matches"].as_bool().expect("mx_matches");
        let expect = case["expect"].as_str().expect("expect");
        if expect.starts_with("do not deliver") {
            assert_eq!(mx_verdict(mode, matches, true), MxVerdict::DoNotDeliver);
        } else if expect.starts_with("deliver anyway") {
            assert_eq!(mx_verdict(mode, matches, true), MxVerdict::DeliverAndReport);
        } else if expect.starts_with("treat as no policy") {
            assert_eq!(mx_verdict(mode, matches, false), MxVerdict::NoPolicy);
        } else if expect.starts_with("MX certificate must be PKIX-valid") {
            assert_eq!(mx_verdict(mode, matches, false), MxVerdict::DoNotDeliver);
            assert_eq!(mx_verdict(mode, matches, true), MxVerdict::Deliver);
        } else {
            panic!("unknown expectation {expect}");
        }
    }
    assert_eq!(cases.len(), 4);
}

/// A test CA and a policy-host certificate, for the TLS fetch vectors.
struct PolicyHostPki {
    ca_file: tempfile::NamedTempFile,
    trusted_leaf: CertificateDer<'static>,
    wrong_name_leaf: CertificateDer<'static>,
    untrusted_leaf: CertificateDer<'static>,
}

fn policy_host_pki() -> PolicyHostPki {
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "phigate test CA");
    let ca = ca_params.self_signed(&ca_key).expect("CA");

    let leaf = |name: &str| {
        let key = rcgen::KeyPair::generate().expect("key");
        let params = rcgen::CertificateParams::new(vec![name.to_string()]).expect("params");
        let cert = params.signed_by(&key, &ca, &ca_key).expect("leaf");
        cert.der().clone()
    };
    let untrusted_key = rcgen::KeyPair::generate().expect("key");
    let untrusted = rcgen::CertificateParams::new(vec!["mta-sts.good.loc".to_string()])
        .expect("params")
        .self_signed(&untrusted_key)
        .expect("self-signed");

    let mut ca_file = tempfile::NamedTempFile::new().expect("temp file");
    ca_file.write_all(ca.pem().as_bytes()).expect("write CA");
    PolicyHostPki {
        trusted_leaf: leaf("mta-sts.good.loc"),
        wrong_name_leaf: leaf("www.good.loc"),
        untrusted_leaf: untrusted.der().clone(),
        ca_file,
    }
}

#[test]
fn fetch_vectors() {
    let v = vectors();
    let cases = section(&v, "fetch");
    let pki = policy_host_pki();
    let verifier = pkix_verifier(Some(pki.ca_file.path())).expect("verifier");
    let host = ServerName::try_from(mta_sts::policy_host("good.loc").expect("policy host"))
        .expect("server name");
    let verify = |leaf: &CertificateDer<'_>| {
        verifier
            .verify_server_cert(leaf, &[], &host, &[], UnixTime::now())
            .is_ok()
    };
    // Control: the well-formed certificate is accepted, so rejections below mean something.
    assert!(verify(&pki.trusted_leaf));

    let mut failures = Vec::new();
    for case in cases {
        let case_id = id(case);
        let body = case["body"].as_str().unwrap_or(VALID_BODY);
        let accepted = if let Some(ct) = case.get("content_type") {
            policy_from_response(200, ct.as_str(), body.as_bytes()).is_ok()
        } else if let Some(status) = case["http_status"].as_u64() {
            let status = u16::try_from(status).expect("status");
            policy_from_response(status, Some("text/plain"), body.as_bytes()).is_ok()
        } else if case_id == "untrusted-cert" {
            verify(&pki.untrusted_leaf)
        } else if case_id == "wrong-name-cert" {
            verify(&pki.wrong_name_leaf)
        } else if case_id == "oversize-static" {
            let mut big = VALID_BODY.as_bytes().to_vec();
            big.resize(MAX_POLICY_BYTES + 1, b'\n');
            policy_from_response(200, Some("text/plain"), &big).is_ok()
        } else if case_id == "oversize-chunked" {
            let mut body = Vec::new();
            let chunk = [b'\n'; 4096];
            (0..17).all(|_| append_body_chunk(&mut body, &chunk).is_ok())
        } else if case_id == "leading-dot-domain" {
            let bad = case["domain"].as_str().expect("domain");
            assert!(policy_url(bad).is_err(), "{case_id}");
            continue;
        } else if case_id == "trailing-dot-domain" {
            let dotted = case["domain"].as_str().expect("domain");
            assert_eq!(policy_url(dotted), policy_url("good.loc"));
            assert_eq!(
                policy_url("good.loc").as_deref(),
                Ok("https://mta-sts.good.loc/.well-known/mta-sts.txt")
            );
            continue;
        } else {
            panic!("unhandled fetch vector {case_id}");
        };
        let want = case["expect_accept"].as_bool().expect("expect_accept");
        if accepted != want {
            failures.push(format!("{case_id}: accepted={accepted}, expected {want}"));
        }
    }
    report(failures, cases.len(), 24);
}

#[test]
fn all_185_vectors_present() {
    let v = vectors();
    let total: usize = [
        "policy_parse",
        "txt_record",
        "txt_dns_errors",
        "mx_match",
        "mode_semantics",
        "fetch",
    ]
    .iter()
    .map(|name| section(&v, name).len())
    .sum();
    assert_eq!(total, 185);
}

#[test]
fn txt_id_change_with_unreachable_policy_host_keeps_enforcing() {
    // The end-to-end scenario from issue 4, in pure form.
    let old = CachedPolicy {
        policy: Policy::parse(VALID_BODY).expect("valid"),
        txt_id: "old".into(),
        fetched_at: 0,
    };
    let lookup = TxtLookup::Found(TxtRecord { id: "new".into() });
    assert_eq!(decide(Some(&old), &lookup, 100), CacheDecision::Fetch);
    let kept = mta_sts::after_fetch(Some(old), "new", Err(StsError::HttpStatus(503)), 100)
        .expect("still cached");
    assert_eq!(kept.policy.mode, Mode::Enforce);
    assert!(kept.policy.matches_mx("mail.loc"));
    assert!(!kept.policy.matches_mx("evil.example"));
}
