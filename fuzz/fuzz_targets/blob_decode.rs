//! Arbitrary bytes as a spool blob file: a forged header must never panic or make the
//! decoder allocate more than the bytes it was given, and nothing unauthenticated opens.
#![no_main]
use libfuzzer_sys::fuzz_target;
use phigate::spool::blob::decode;
use phigate::spool::crypto::DataKey;
use phigate::types::MessageId;

fuzz_target!(|data: &[u8]| {
    let dk = DataKey::generate();
    let opened = decode(data, data.len() as u64, &MessageId::new(), &dk);
    assert!(opened.is_err(), "bytes opened under a fresh random key");
});
