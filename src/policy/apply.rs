//! Header edits the decision asks for: the `X-Phigate-DLP` tag and subject redaction.
//! Edits touch only the header block, keep the message's line endings, and remove any
//! `X-Phigate-DLP` a sender tried to smuggle in.

use super::Decision;
use base64::Engine;

pub const TAG_HEADER: &str = "X-Phigate-DLP";

impl Decision {
    /// The message with the enforced header edits applied (unchanged if there are none,
    /// apart from dropping inbound `X-Phigate-DLP` fields).
    /// [`Decision::apply_to_message`] without copying a message that needs no edit (no
    /// tag, no redaction, no inbound tag field to drop) - the common case.
    pub fn apply_to_owned(&self, raw: Vec<u8>) -> Vec<u8> {
        if self.tag_header.is_none()
            && self.enforced.redact_subject.is_none()
            && !has_field(&raw, TAG_HEADER)
        {
            return raw;
        }
        self.apply_to_message(&raw)
    }

    pub fn apply_to_message(&self, raw: &[u8]) -> Vec<u8> {
        edit_headers(
            raw,
            self.tag_header.as_deref(),
            self.enforced.redact_subject.as_deref(),
        )
    }
}

/// Rewrite the header block: drop inbound tag fields, prepend `tag`, replace the
/// subject with `subject` (added if the message had none).
pub fn edit_headers(raw: &[u8], tag: Option<&str>, subject: Option<&str>) -> Vec<u8> {
    let crlf = raw
        .iter()
        .position(|b| *b == b'\n')
        .is_none_or(|i| i > 0 && raw[i - 1] == b'\r');
    let eol: &[u8] = if crlf { b"\r\n" } else { b"\n" };
    let (head, body) = split_header_block(raw);
    let mut fields: Vec<&[u8]> = Vec::new();
    let mut start = 0;
    // Each field is its first line plus continuation lines beginning with SP or HTAB.
    let mut i = 0;
    while i < head.len() {
        let line_end = head[i..]
            .iter()
            .position(|b| *b == b'\n')
            .map_or(head.len(), |p| i + p + 1);
        let next_is_continuation = matches!(head.get(line_end), Some(b' ' | b'\t'));
        if !next_is_continuation {
            fields.push(&head[start..line_end]);
            start = line_end;
        }
        i = line_end;
    }
    let mut out = Vec::with_capacity(raw.len() + 128);
    if let Some(t) = tag {
        out.extend_from_slice(format!("{TAG_HEADER}: {}", one_line(t)).as_bytes());
        out.extend_from_slice(eol);
    }
    let mut subject_done = false;
    for f in fields {
        if has_name(f, TAG_HEADER) {
            continue;
        }
        if let Some(s) = subject {
            if has_name(f, "Subject") {
                if !subject_done {
                    out.extend_from_slice(format!("Subject: {}", encode_word(s)).as_bytes());
                    out.extend_from_slice(eol);
                    subject_done = true;
                }
                continue;
            }
        }
        out.extend_from_slice(f);
    }
    if let (Some(s), false) = (subject, subject_done) {
        out.extend_from_slice(format!("Subject: {}", encode_word(s)).as_bytes());
        out.extend_from_slice(eol);
    }
    out.extend_from_slice(body);
    out
}

/// True if the header block has a field called `name`.
fn has_field(raw: &[u8], name: &str) -> bool {
    let (head, _) = split_header_block(raw);
    head.split(|b| *b == b'\n').any(|line| has_name(line, name))
}

/// Header block (including the final line break of the last field) and the rest
/// (starting with the empty separator line).
fn split_header_block(raw: &[u8]) -> (&[u8], &[u8]) {
    let mut i = 0;
    while i < raw.len() {
        let rest = &raw[i..];
        if rest.starts_with(b"\r\n") || rest.starts_with(b"\n") {
            return raw.split_at(i);
        }
        match rest.iter().position(|b| *b == b'\n') {
            Some(p) => i += p + 1,
            None => return (raw, &[]),
        }
    }
    (raw, &[])
}

fn has_name(field: &[u8], name: &str) -> bool {
    field.iter().position(|b| *b == b':').is_some_and(|c| {
        field[..c]
            .trim_ascii()
            .eq_ignore_ascii_case(name.as_bytes())
    })
}

fn one_line(s: &str) -> String {
    s.chars().filter(|c| *c != '\r' && *c != '\n').collect()
}

/// RFC 2047 encoded word for non-ASCII text; ASCII is used as is.
fn encode_word(s: &str) -> String {
    let s = one_line(s);
    if s.is_ascii() {
        s
    } else {
        format!(
            "=?UTF-8?B?{}?=",
            base64::engine::general_purpose::STANDARD.encode(s.as_bytes())
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_and_redact_keep_crlf_and_folding() {
        let raw = b"From: a@b\r\nSubject: SSN 536-22-8901\r\n  continued\r\nX-Phigate-DLP: forged\r\nTo: c@d\r\n\r\nbody\r\n";
        let out = edit_headers(raw, Some("ssn=1"), Some("[redacted]"));
        let s = String::from_utf8(out).unwrap();
        assert_eq!(
            s,
            "X-Phigate-DLP: ssn=1\r\nFrom: a@b\r\nSubject: [redacted]\r\nTo: c@d\r\n\r\nbody\r\n"
        );
    }

    #[test]
    fn lf_messages_and_missing_subject() {
        let out = edit_headers(b"From: a@b\n\nhi\n", None, Some("h\u{e9}"));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "From: a@b\nSubject: =?UTF-8?B?aMOp?=\n\nhi\n"
        );
    }

    #[test]
    fn forged_tag_removed_even_without_edits() {
        let out = edit_headers(b"x-phigate-dlp: ssn=0\r\nA: b\r\n\r\n", None, None);
        assert_eq!(out, b"A: b\r\n\r\n");
    }

    #[test]
    fn body_is_untouched() {
        let raw = b"A: b\r\n\r\nSubject: not a header\r\n";
        let out = edit_headers(raw, None, Some("x"));
        assert!(out.ends_with(b"\r\n\r\nSubject: not a header\r\n"));
    }
}
