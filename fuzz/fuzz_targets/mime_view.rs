//! The MIME -> text view DLP scans: any bytes give a view without panicking, every
//! part is either a text segment, an attachment entry or listed undecodable, and the
//! view always reports the raw size (an unparseable message is scanned as raw text).
#![no_main]
use libfuzzer_sys::fuzz_target;
use phigate::message::TextView;
use std::sync::Once;

/// libFuzzer's panic hook aborts before unwinding, so even a panic phigate catches is a
/// crash. TextView::from_bytes catches panics from mail-parser's debug assertions (see
/// src/message.rs); let exactly those unwind. Any other panic still aborts.
fn tolerate_caught_parser_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let abort_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info
                .location()
                .is_some_and(|l| l.file().contains("/mail-parser-"))
            {
                return;
            }
            abort_hook(info);
        }));
    });
}

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
