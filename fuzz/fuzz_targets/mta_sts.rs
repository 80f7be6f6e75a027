//! MTA-STS policy and TXT parsing and MX matching never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use phigate::tls::mta_sts::{parse_txt, Policy};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(p) = Policy::parse(text) {
            for host in ["mx.example.com", "a.b.example.com", "", "."] {
                let _ = p.matches_mx(host);
            }
        }
        let (a, b) = text.split_at(text.len() / 2);
        let _ = parse_txt(&[a.to_string(), b.to_string()]);
    }
});
