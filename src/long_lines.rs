//! Long lines from legacy senders (L1). phigate accepts lines up to
//! `[server] max_line_length`, but RFC 5321/5322 allow at most 998 octets per line, so
//! before a message is spooled every MIME leaf part with a longer line is re-encoded as
//! quoted-printable (Content-Type, and with it the charset, unchanged). Decoding gives back
//! the original bytes, so the recipient sees exactly what was sent; the next hop (and a
//! DKIM signature made later) sees conformant mail.
//!
//! Parts already in quoted-printable or base64 are left alone (their encoders wrap lines);
//! nested messages are re-encoded inside; header lines are not touched.

use mail_parser::{Encoding, PartType};

/// RFC 5322 §2.1.1: a line is at most 998 octets before CRLF.
pub const MAX_LINE: usize = 998;
/// Quoted-printable lines are at most 76 octets (RFC 2045 §6.7 rule 5), `=` included.
const QP_LINE: usize = 76;
/// Nesting of message/rfc822 parts followed (deeper ones stay as they are).
const MAX_DEPTH: usize = 8;

/// Does any line of `b` exceed 998 octets?
pub fn has_long_line(b: &[u8]) -> bool {
    b.split(|&c| c == b'\n')
        .any(|l| l.strip_suffix(b"\r").unwrap_or(l).len() > MAX_LINE)
}

/// The message with its long-line parts re-encoded, or None if nothing needed it.
pub fn reencode(raw: &[u8]) -> Option<Vec<u8>> {
    reencode_at(raw, 0)
}

fn reencode_at(raw: &[u8], depth: usize) -> Option<Vec<u8>> {
    if depth > MAX_DEPTH || !has_long_line(raw) {
        return None;
    }
    // Unparseable (or tripping the parser): the message goes as it came.
    let msg = crate::message::parse(raw)?;
    // (start, end, replacement) over `raw`; leaf parts never overlap.
    let mut edits: Vec<(usize, usize, Vec<u8>)> = Vec::new();
    for (index, part) in msg.parts.iter().enumerate() {
        let (h, b, e) = (
            part.offset_header as usize,
            part.offset_body as usize,
            (part.offset_end as usize).min(raw.len()),
        );
        if h > b || b > e {
            continue;
        }
        match &part.body {
            PartType::Multipart(_) => {}
            PartType::Message(_) => {
                if let Some(inner) = reencode_at(&raw[b..e], depth + 1) {
                    edits.push((b, e, inner));
                }
            }
            _ if part.encoding == Encoding::None && has_long_line(&raw[b..e]) => {
                let mut out = rewrite_headers(&raw[h..b], index == 0);
                out.extend_from_slice(&quoted_printable(&raw[b..e]));
                edits.push((h, e, out));
            }
            _ => {}
        }
    }
    if edits.is_empty() {
        return None;
    }
    edits.sort_by_key(|x| x.0);
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 8);
    let mut at = 0;
    for (start, end, rep) in edits {
        if start < at {
            continue;
        }
        out.extend_from_slice(&raw[at..start]);
        out.extend_from_slice(&rep);
        at = end;
    }
    out.extend_from_slice(&raw[at..]);
    Some(out)
}

/// The header block without its Content-Transfer-Encoding field(s), with
/// `quoted-printable` instead (and MIME-Version for a top-level part that lacks it),
/// ending in the blank line it had.
fn rewrite_headers(block: &[u8], top: bool) -> Vec<u8> {
    let body_sep = if block.ends_with(b"\r\n\r\n") {
        4
    } else if block.ends_with(b"\r\n") {
        2
    } else {
        0
    };
    let fields = &block[..block.len() - body_sep];
    let mut out = Vec::with_capacity(block.len() + 64);
    let mut has_mime_version = false;
    let mut skipping = false;
    for line in fields.split_inclusive(|&c| c == b'\n') {
        let continuation = line.first().is_some_and(|c| *c == b' ' || *c == b'\t');
        if !continuation {
            let name = line.split(|&c| c == b':').next().unwrap_or_default();
            let name = name.trim_ascii();
            skipping = name.eq_ignore_ascii_case(b"content-transfer-encoding");
            has_mime_version |= name.eq_ignore_ascii_case(b"mime-version");
        }
        if !skipping {
            out.extend_from_slice(line);
        }
    }
    if !out.is_empty() && !out.ends_with(b"\n") {
        out.extend_from_slice(b"\r\n");
    }
    if top && !has_mime_version {
        out.extend_from_slice(b"MIME-Version: 1.0\r\n");
    }
    out.extend_from_slice(b"Content-Transfer-Encoding: quoted-printable\r\n\r\n");
    out
}

/// Quoted-printable (RFC 2045 §6.7) of CRLF text: CRLF stays a hard line break, so
/// decoding returns the input byte for byte; trailing white space is encoded.
fn quoted_printable(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + body.len() / 4);
    for line in body.split_inclusive(|&c| c == b'\n') {
        let (text, eol): (&[u8], &[u8]) = if let Some(t) = line.strip_suffix(b"\r\n") {
            (t, b"\r\n")
        } else {
            (line, b"")
        };
        let mut col = 0;
        for (i, &c) in text.iter().enumerate() {
            let last = i + 1 == text.len();
            let literal =
                (c == b' ' || c == b'\t') && !last || (33..=126).contains(&c) && c != b'=';
            let width = if literal { 1 } else { 3 };
            // Leave room for the soft break's `=`.
            if col + width > QP_LINE - 1 {
                out.extend_from_slice(b"=\r\n");
                col = 0;
            }
            if literal {
                out.push(c);
            } else {
                out.extend_from_slice(format!("={c:02X}").as_bytes());
            }
            col += width;
        }
        out.extend_from_slice(eol);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use mail_parser::MessageParser;

    fn decoded_parts(raw: &[u8]) -> Vec<Vec<u8>> {
        let m = MessageParser::default().parse(raw).expect("parse");
        m.parts
            .iter()
            .filter_map(|p| match &p.body {
                PartType::Text(t) | PartType::Html(t) => Some(t.as_bytes().to_vec()),
                PartType::Binary(b) | PartType::InlineBinary(b) => Some(b.to_vec()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn long_text_and_csv_parts_become_quoted_printable_and_decode_identically() {
        let html = format!("<p>{}</p> \u{e9}t\u{e9} = ok ", "cell ".repeat(5000));
        let csv = format!("id;value\r\n{}\r\n", "x;".repeat(3000));
        let raw = format!(
            "From: a@b.example\r\nTo: c@d.example\r\nSubject: s\r\nMIME-Version: 1.0\r\n\
             Content-Type: multipart/mixed; boundary=\"BB\"\r\n\r\n--BB\r\n\
             Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n\
             {html}\r\n--BB\r\nContent-Type: text/csv; charset=utf-8\r\n\
             Content-Disposition: attachment; filename=a.csv\r\n\r\n{csv}\r\n--BB--\r\n"
        );
        let before = decoded_parts(raw.as_bytes());
        let out = reencode(raw.as_bytes()).expect("re-encoded");
        assert!(!has_long_line(&out), "every line fits now");
        let text = String::from_utf8_lossy(&out);
        assert_eq!(text.matches("quoted-printable").count(), 2, "{text}");
        assert!(!text.contains("8bit"));
        assert!(text.contains("charset=utf-8"));
        assert_eq!(decoded_parts(&out), before, "decoded content is unchanged");
        assert_eq!(reencode(&out), None, "idempotent");
    }

    #[test]
    fn a_plain_top_level_message_gets_mime_headers_and_short_ones_are_untouched() {
        let body = format!("{}\r\nend  \r\n", "a".repeat(2000));
        let raw = format!("From: a@b.example\r\nSubject: s\r\n\r\n{body}");
        let out = reencode(raw.as_bytes()).expect("re-encoded");
        let text = String::from_utf8_lossy(&out);
        assert!(text
            .contains("MIME-Version: 1.0\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"));
        assert!(
            text.contains("end =20\r\n"),
            "trailing space encoded: {text}"
        );
        assert!(!has_long_line(&out));
        let m = MessageParser::default().parse(&out).expect("parse");
        assert_eq!(m.body_text(0).as_deref(), Some(body.as_str()));
        assert_eq!(reencode(b"Subject: x\r\n\r\nshort\r\n"), None);
    }
}
