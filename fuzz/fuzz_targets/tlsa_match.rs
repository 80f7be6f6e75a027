//! TLSA matching against arbitrary certificate bytes never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;
use phigate::tls::dane::{match_chain, Tlsa};
use rustls_pki_types::{CertificateDer, UnixTime};

fuzz_target!(|input: (u8, u8, u8, &[u8], &[u8])| {
    let (usage, selector, matching, record, cert) = input;
    let tlsa = Tlsa {
        usage: usage % 4,
        selector: selector % 2,
        matching: matching % 3,
        data: record.to_vec(),
    };
    let chain = vec![CertificateDer::from(cert.to_vec())];
    let _ = match_chain(&[tlsa], &chain, &["mx.example.com".to_string()], UnixTime::now());
});
