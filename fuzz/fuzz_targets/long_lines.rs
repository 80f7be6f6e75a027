//! Any message bytes through the long-line re-encoder, and its output through it again:
//! no panic, whatever the MIME structure.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "common/parser_panics.rs"]
mod parser_panics;

fuzz_target!(|data: &[u8]| {
    parser_panics::tolerate_caught_parser_panics();
    if let Some(out) = phigate::long_lines::reencode(data) {
        let _ = phigate::long_lines::reencode(&out);
    }
});
