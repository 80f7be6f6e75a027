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
        // Split into two TXT strings at a char boundary near the middle.
        let mut mid = text.len() / 2;
        while !text.is_char_boundary(mid) {
            mid -= 1;
        }
        let (a, b) = text.split_at(mid);
        let _ = parse_txt(&[a.to_string(), b.to_string()]);
    }
});
