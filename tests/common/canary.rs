//! Every form a planted canary could take in a log, file or capture, for the leak checks
//! (`phi_leak.rs` through `common`, `spool_e2e.rs` by path).

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;

/// Raw, lower and upper case, hex, quoted-printable, UTF-16LE, and base64 / base64url at
/// the three byte alignments the canary can have inside a larger encoded blob (only the
/// characters that depend on the canary alone).
pub fn forms(canary: &str) -> Vec<(String, Vec<u8>)> {
    let raw = canary.as_bytes();
    let mut out = vec![
        ("raw".to_string(), raw.to_vec()),
        ("lower".into(), canary.to_lowercase().into_bytes()),
        ("upper".into(), canary.to_uppercase().into_bytes()),
        ("hex".into(), hex::encode(raw).into_bytes()),
        ("HEX".into(), hex::encode_upper(raw).into_bytes()),
        ("qp".into(), quoted_printable(raw).into_bytes()),
        (
            "utf-16le".into(),
            raw.iter().flat_map(|&b| [b, 0]).collect(),
        ),
    ];
    for k in 0..3 {
        let mut padded = vec![b'\0'; k];
        padded.extend_from_slice(raw);
        // The first group mixes in what came before (k > 0); groups past the last full
        // one mix in what comes after.
        let start = if k == 0 { 0 } else { 4 };
        let end = padded.len() / 3 * 4;
        for (name, enc) in [
            ("base64", STANDARD.encode(&padded)),
            ("base64url", URL_SAFE_NO_PAD.encode(&padded)),
        ] {
            out.push((format!("{name}@{k}"), enc.as_bytes()[start..end].to_vec()));
        }
    }
    out
}

/// Quoted-printable as an encoder that escapes everything but letters, digits and `-`.
pub fn quoted_printable(b: &[u8]) -> String {
    b.iter()
        .map(|&c| {
            if c.is_ascii_alphanumeric() || c == b'-' {
                (c as char).to_string()
            } else {
                format!("={c:02X}")
            }
        })
        .collect()
}

pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}
