//! libFuzzer's panic hook aborts before unwinding, so even a panic phigate catches is a
//! crash. phigate catches panics from mail-parser's debug assertions (src/message.rs,
//! src/long_lines.rs); let exactly those unwind. Any other panic still aborts.

use std::sync::Once;

pub fn tolerate_caught_parser_panics() {
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
