//! Command-line scanning and parsing never panic, and a parsed line never contains CR,
//! LF or NUL.
#![no_main]
use libfuzzer_sys::fuzz_target;
use phigate::smtp::proto::{parse_command, scan_line, LineScan, MAX_COMMAND_LINE};

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while !rest.is_empty() {
        match scan_line(rest, MAX_COMMAND_LINE) {
            LineScan::Line(n) => {
                let line = &rest[..n - 2];
                assert!(!line.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0));
                let _ = parse_command(line);
                rest = &rest[n..];
            }
            LineScan::Bad { consumed, .. } => {
                assert!(consumed > 0 && consumed <= rest.len());
                rest = &rest[consumed..];
            }
            LineScan::Incomplete | LineScan::TooLong => break,
        }
    }
});
