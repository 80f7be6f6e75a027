//! What a portal request and a portal message can throw at the pages: form bodies,
//! tokens, codes, attachment names and hostile HTML bodies. Every one must be answered
//! (parsed, refused or cleaned) without a panic, and a cleaned body must not keep a
//! script or a link to a javascript: URL.
#![no_main]
use libfuzzer_sys::fuzz_target;
use phigate::portal::record::{code_matches, new_code, plausible_token};
use phigate::portal::web::{parse_form, safe_filename, sanitize};

fuzz_target!(|data: &[u8]| {
    if let Some(fields) = parse_form(data) {
        if let Some(code) = fields.get("code") {
            let (_, pending) = new_code(0);
            let _ = code_matches(&pending, code);
        }
        for v in fields.values() {
            let _ = plausible_token(v);
        }
    }
    let text = String::from_utf8_lossy(data);
    let name = safe_filename(&text);
    assert!(!name.contains(['/', '"', '\\', '\r', '\n']), "{name:?}");
    if data.len() <= 64 * 1024 {
        let clean = sanitize(&text).to_ascii_lowercase();
        assert!(!clean.contains("<script"), "script survived: {clean}");
        // Text may say "javascript:"; no tag may link there. Ammonia escapes `<` in text,
        // so every literal `<` in its output opens a real tag.
        for tag in clean.split('<').skip(1) {
            let tag = tag.split('>').next().unwrap_or("");
            for attr in ["href=\"", "src=\""] {
                for (i, _) in tag.match_indices(attr) {
                    let value = tag[i + attr.len()..].trim_start();
                    assert!(!value.starts_with("javascript:"), "javascript: URL survived: {clean}");
                }
            }
        }
    }
});
