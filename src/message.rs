//! The text view of a message that DLP scans: every piece of human-readable text
//! (subject, bodies, attachment names, text-like attachments, nested messages), decoded,
//! each tagged with where it came from. Parsing never panics and never drops a part
//! silently: whatever cannot be decoded is listed in `undecodable`.

use crate::dlp::extract::{self, Blob};
use mail_parser::{decoders::html::html_to_text, Message, MessageParser, MimeHeaders, PartType};
use serde::Serialize;

/// How deep `message/rfc822` attachments are followed before the rest is flagged.
pub const MAX_NESTING: usize = 4;

/// Where a piece of text came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    Subject,
    Body,
    AttachmentName,
    Attachment,
}

impl Source {
    pub fn as_str(&self) -> &'static str {
        match self {
            Source::Subject => "subject",
            Source::Body => "body",
            Source::AttachmentName => "attachment-name",
            Source::Attachment => "attachment",
        }
    }
}

/// One decoded piece of text. `part` numbers parts in walk order across nested
/// messages, so a finding can point at a part without repeating its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub source: Source,
    pub part: usize,
    pub text: String,
}

/// An attachment as policy sees it (names may themselves carry PHI; never log them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AttachmentInfo {
    pub part: usize,
    pub name: Option<String>,
    pub content_type: String,
    pub size: usize,
    /// False for content the scanner cannot read (images, legacy binary formats).
    pub scanned: bool,
}

/// A part whose content could not be decoded; DLP reports it as `undecodable-part`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Undecodable {
    pub part: usize,
    pub reason: &'static str,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TextView {
    pub segments: Vec<Segment>,
    pub attachments: Vec<AttachmentInfo>,
    pub undecodable: Vec<Undecodable>,
    /// Attachments in formats that need an extractor (PDF, Office, HL7, archives,
    /// images...): DLP extracts them within its limits (`crate::dlp::extract`).
    pub blobs: Vec<Blob>,
    /// Size of the raw message in bytes.
    pub size: usize,
}

/// mail-parser has internal debug assertions that hostile MIME trips (found by
/// fuzz/mime_view and fuzz/long_lines): every parse of untrusted mail goes through here,
/// so a panic there is an unparseable message, never an ended session.
pub fn parse(raw: &[u8]) -> Option<Message<'_>> {
    std::panic::catch_unwind(|| MessageParser::default().parse(raw))
        .ok()
        .flatten()
}

/// [`parse`] for the header block only.
pub fn parse_headers(raw: &[u8]) -> Option<Message<'_>> {
    std::panic::catch_unwind(|| MessageParser::default().parse_headers(raw))
        .ok()
        .flatten()
}

impl TextView {
    /// Build the view from a raw RFC 5322 message. Never fails: an unparseable message
    /// is scanned as raw text and flagged undecodable.
    pub fn from_bytes(raw: &[u8]) -> TextView {
        let mut view = TextView {
            size: raw.len(),
            ..TextView::default()
        };
        match parse(raw) {
            Some(msg) => {
                let mut next_part = 0;
                view.walk(&msg, 0, &mut next_part);
            }
            None => {
                view.undecodable.push(Undecodable {
                    part: 0,
                    reason: "message could not be parsed",
                });
                view.push(Source::Body, 0, String::from_utf8_lossy(raw).into_owned());
            }
        }
        view
    }

    /// Build a view of one plain text (for benchmarks and tests).
    pub fn from_text(text: &str) -> TextView {
        TextView {
            segments: vec![Segment {
                source: Source::Body,
                part: 0,
                text: text.to_string(),
            }],
            size: text.len(),
            ..TextView::default()
        }
    }

    /// Text segments from the given source.
    pub fn segments_from(&self, source: Source) -> impl Iterator<Item = &Segment> {
        self.segments.iter().filter(move |s| s.source == source)
    }

    fn push(&mut self, source: Source, part: usize, text: String) {
        if !text.trim().is_empty() {
            self.segments.push(Segment { source, part, text });
        }
    }

    fn walk(&mut self, msg: &Message<'_>, depth: usize, next_part: &mut usize) {
        if let Some(subject) = msg.subject() {
            self.push(Source::Subject, *next_part, subject.to_string());
        }
        for (idx, part) in msg.parts.iter().enumerate() {
            let id = *next_part;
            *next_part += 1;
            let ctype = part
                .content_type()
                .map(|ct| match ct.subtype() {
                    Some(sub) => format!("{}/{}", ct.ctype(), sub),
                    None => ct.ctype().to_string(),
                })
                .unwrap_or_else(|| "text/plain".to_string())
                .to_ascii_lowercase();
            let name = part.attachment_name().map(str::to_string);
            let is_attachment = name.is_some() || msg.attachments.contains(&(idx as u32));
            if part.is_encoding_problem {
                self.undecodable.push(Undecodable {
                    part: id,
                    reason: "malformed part encoding",
                });
            }
            if let Some(n) = &name {
                self.push(Source::AttachmentName, id, n.clone());
            }
            let source = if is_attachment {
                Source::Attachment
            } else {
                Source::Body
            };
            match &part.body {
                PartType::Multipart(_) => continue,
                PartType::Text(t) => {
                    self.note_attachment(is_attachment, id, &name, &ctype, t.len(), true);
                    // A text attachment can still be HL7, CSV, FHIR or CDA: those go to
                    // their extractor, which knows their structure.
                    if is_attachment && extract::wants(name.as_deref(), &ctype, t.as_bytes()) {
                        self.blob(id, &name, &ctype, t.as_bytes());
                    } else {
                        self.push(source, id, t.to_string());
                    }
                }
                PartType::Html(h) => {
                    self.note_attachment(is_attachment, id, &name, &ctype, h.len(), true);
                    self.push(source, id, html_to_text(h));
                }
                PartType::Binary(b) | PartType::InlineBinary(b) => {
                    let textlike = is_text_like(&ctype, name.as_deref());
                    if extract::wants(name.as_deref(), &ctype, b) {
                        let readable = extract::readable(name.as_deref(), &ctype, b);
                        self.note_attachment(true, id, &name, &ctype, b.len(), readable);
                        self.blob(id, &name, &ctype, b);
                        continue;
                    }
                    self.note_attachment(true, id, &name, &ctype, b.len(), textlike);
                    if textlike {
                        match std::str::from_utf8(b) {
                            Ok(s) => self.push(Source::Attachment, id, s.to_string()),
                            Err(_) => {
                                // Still scan what is readable, but let policy know.
                                self.undecodable.push(Undecodable {
                                    part: id,
                                    reason: "text attachment is not valid UTF-8",
                                });
                                self.push(
                                    Source::Attachment,
                                    id,
                                    String::from_utf8_lossy(b).into_owned(),
                                );
                            }
                        }
                    }
                }
                PartType::Message(nested) => {
                    let size = nested.raw_message.len();
                    self.note_attachment(true, id, &name, &ctype, size, depth < MAX_NESTING);
                    if depth < MAX_NESTING {
                        self.walk(nested, depth + 1, next_part);
                    } else {
                        self.undecodable.push(Undecodable {
                            part: id,
                            reason: "nested messages exceed the depth limit",
                        });
                    }
                }
            }
        }
    }

    fn blob(&mut self, part: usize, name: &Option<String>, ctype: &str, bytes: &[u8]) {
        self.blobs.push(Blob {
            part,
            name: name.clone(),
            content_type: ctype.to_string(),
            bytes: bytes.to_vec(),
        });
    }

    fn note_attachment(
        &mut self,
        is_attachment: bool,
        part: usize,
        name: &Option<String>,
        ctype: &str,
        size: usize,
        scanned: bool,
    ) {
        if is_attachment {
            self.attachments.push(AttachmentInfo {
                part,
                name: name.clone(),
                content_type: ctype.to_string(),
                size,
                scanned,
            });
        }
    }
}

/// Attachments whose bytes are text even when the MIME type is not `text/*`.
fn is_text_like(ctype: &str, name: Option<&str>) -> bool {
    const TYPES: [&str; 8] = [
        "application/json",
        "application/xml",
        "application/csv",
        "text/csv",
        "text/calendar",
        "text/vcard",
        "text/x-vcard",
        "application/ics",
    ];
    const EXTS: [&str; 9] = [
        ".txt", ".csv", ".json", ".xml", ".ics", ".vcf", ".tsv", ".hl7", ".log",
    ];
    if ctype.starts_with("text/") || TYPES.contains(&ctype) || ctype.ends_with("+xml") {
        return true;
    }
    let lower = name.map(str::to_ascii_lowercase).unwrap_or_default();
    EXTS.iter().any(|e| lower.ends_with(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// fuzz/mime_view crash: nested message/rfc822 parts with a broken header made
    /// mail-parser's "could not find multipart" debug assertion panic.
    #[test]
    fn parser_assertion_on_hostile_nesting_does_not_panic() {
        let raw = include_bytes!("../tests/data/fuzz/mime_view-crash-a6b58f0.eml");
        let view = TextView::from_bytes(raw);
        assert_eq!(view.size, raw.len());
        assert!(!view.segments.is_empty(), "the text is still scanned");
    }

    fn texts(v: &TextView, s: Source) -> String {
        v.segments_from(s)
            .map(|s| s.text.as_str())
            .collect::<Vec<_>>()
            .join("|")
    }

    #[test]
    fn decodes_encoded_subject_and_qp_body() {
        let raw = b"From: a@b.example\r\nSubject: =?UTF-8?B?SGVsbG8gd8O2cmxk?=\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nSSN 123=2D45=2D6789\r\n";
        let v = TextView::from_bytes(raw);
        assert_eq!(texts(&v, Source::Subject), "Hello w\u{f6}rld");
        assert!(texts(&v, Source::Body).contains("SSN 123-45-6789"));
        assert!(v.undecodable.is_empty());
    }

    #[test]
    fn html_and_base64_csv_attachment_and_nested_message() {
        let raw = concat!(
            "Subject: x\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"B\"\r\n\r\n",
            "--B\r\nContent-Type: text/html\r\n\r\n<p>Patient <b>DOB</b> 01/02/1970</p>\r\n",
            "--B\r\nContent-Type: text/csv; name=\"list.csv\"\r\nContent-Disposition: attachment; filename=\"list.csv\"\r\nContent-Transfer-Encoding: base64\r\n\r\nbmFtZSxzc24KYSwxMjMtNDUtNjc4OQo=\r\n",
            "--B\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\ninner body text\r\n",
            "--B--\r\n"
        );
        let v = TextView::from_bytes(raw.as_bytes());
        assert!(texts(&v, Source::Body).contains("DOB"));
        assert!(!texts(&v, Source::Body).contains("<b>"));
        // CSV goes to its extractor (column headers become context).
        assert!(v.blobs.iter().any(|b| b.name.as_deref() == Some("list.csv")
            && String::from_utf8_lossy(&b.bytes).contains("a,123-45-6789")));
        assert_eq!(texts(&v, Source::AttachmentName), "list.csv");
        assert!(texts(&v, Source::Subject).contains("inner"));
        assert!(texts(&v, Source::Body).contains("inner body text"));
        assert!(v
            .attachments
            .iter()
            .any(|a| a.content_type == "message/rfc822"));
    }

    #[test]
    fn garbage_never_panics_and_is_still_scanned() {
        let inputs: [&[u8]; 4] = [b"", b"\xff\xfe\x00garbage", b"\r\n\r\n", b"Subject:"];
        for raw in inputs {
            let v = TextView::from_bytes(raw);
            assert_eq!(v.size, raw.len());
        }
    }

    #[test]
    fn binary_attachments_go_to_extraction() {
        let raw = concat!(
            "Content-Type: multipart/mixed; boundary=\"B\"\r\n\r\n",
            "--B\r\nContent-Type: text/plain\r\n\r\nhello\r\n",
            "--B\r\nContent-Type: application/pdf; name=\"r.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0=\r\n",
            "--B\r\nContent-Type: image/png; name=\"s.png\"\r\nContent-Transfer-Encoding: base64\r\n\r\niVBORw==\r\n",
            "--B--\r\n"
        );
        let v = TextView::from_bytes(raw.as_bytes());
        let find = |t: &str| v.attachments.iter().find(|a| a.content_type == t);
        assert!(find("application/pdf").is_some_and(|a| a.scanned && a.size == 5));
        assert!(find("image/png").is_some_and(|a| !a.scanned));
        assert_eq!(v.blobs.len(), 2, "both are handed to extraction");
        assert_eq!(v.blobs[0].bytes, b"%PDF-");
    }
}
