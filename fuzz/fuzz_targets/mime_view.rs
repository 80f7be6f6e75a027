//! The MIME -> text view DLP scans: any bytes give a view without panicking, every
//! part is either a text segment, an attachment entry or listed undecodable, and the
//! view always reports the raw size (an unparseable message is scanned as raw text).
#![no_main]
use libfuzzer_sys::fuzz_target;
use phigate::message::TextView;

#[path = "common/parser_panics.rs"]
mod parser_panics;
use parser_panics::tolerate_caught_parser_panics;

fuzz_target!(|data: &[u8]| {
    tolerate_caught_parser_panics();
    let view = TextView::from_bytes(data);
    assert_eq!(view.size, data.len());
    for s in &view.segments {
        // Empty pieces are dropped: a segment always has something to scan.
        assert!(!s.text.trim().is_empty());
    }
    for a in &view.attachments {
        assert!(!a.content_type.is_empty());
    }
});
