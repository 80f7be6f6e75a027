//! Portal notifications and code mails (L1): the one kind of mail phigate may send
//! without TLS. A [`Notice`] can only be made by [`Notice::check`], which runs the DLP
//! scanner over it and refuses any finding, and delivery's plaintext path takes nothing
//! else: message content, whatever its type elsewhere, cannot reach a plaintext socket.

use crate::dlp::Scanner;
use crate::message::TextView;
use mail_builder::MessageBuilder;

/// Largest notice: a few lines of admin text and a link.
pub const MAX_NOTICE: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum NoticeError {
    /// Detector names and counts only, never the values.
    #[error("notification has DLP findings ({0}); it is not sent")]
    NotClean(String),
    #[error("notification is {0} bytes, over the {MAX_NOTICE}-byte limit")]
    TooLarge(usize),
    #[error("building the notification: {0}")]
    Build(String),
}

/// A PHI-free notification, checked by DLP. Deliberately not `Clone` from arbitrary
/// bytes and without a public constructor other than [`Notice::check`].
#[derive(Debug)]
pub struct Notice {
    bytes: Vec<u8>,
}

impl Notice {
    /// The only way to make a notice: `bytes` must be small and DLP must find nothing.
    pub fn check(bytes: Vec<u8>, scanner: &Scanner) -> Result<Notice, NoticeError> {
        if bytes.len() > MAX_NOTICE {
            return Err(NoticeError::TooLarge(bytes.len()));
        }
        let view = TextView::from_bytes(&bytes);
        let scan = scanner.scan(&view);
        if !scan.findings.is_empty() {
            return Err(NoticeError::NotClean(scan.summary()));
        }
        Ok(Notice { bytes })
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The notice with header lines added in front (a DKIM signature): accepted only
    /// when `signed` is this notice with a prefix of header fields, nothing else.
    pub fn with_prefix(&self, signed: Vec<u8>) -> Option<Notice> {
        let prefix = signed.strip_suffix(self.bytes.as_slice())?;
        let headers_only = prefix.ends_with(b"\r\n")
            && !prefix.windows(4).any(|w| w == b"\r\n\r\n")
            && prefix.first().is_some_and(|c| c.is_ascii_alphabetic());
        headers_only.then_some(Notice { bytes: signed })
    }
}

/// What a notification or code mail says, before it is checked.
pub struct Draft<'a> {
    pub from: &'a str,
    pub to: &'a str,
    pub subject: &'a str,
    pub text: &'a str,
    pub hostname: &'a str,
}

/// Builds the MIME message of a notice (plain text, auto-submitted, no reply path).
pub fn compose(d: &Draft<'_>) -> Result<Vec<u8>, NoticeError> {
    let id = format!("{}@{}", ulid::Ulid::new(), d.hostname);
    MessageBuilder::new()
        .from(d.from)
        .to(d.to)
        .subject(d.subject)
        .message_id(id)
        .header(
            "Auto-Submitted",
            mail_builder::headers::raw::Raw::new("auto-generated"),
        )
        .text_body(d.text)
        .write_to_vec()
        .map_err(|e| NoticeError::Build(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scanner() -> Scanner {
        Scanner::new(&Default::default()).expect("default scanner")
    }

    fn draft(text: &str) -> Vec<u8> {
        compose(&Draft {
            from: "portal@gw.example",
            to: "pat@example.org",
            subject: "Secure message from Clinic",
            text,
            hostname: "gw.example",
        })
        .expect("compose")
    }

    #[test]
    fn clean_notice_passes_and_phi_is_refused() {
        let ok = Notice::check(draft("Open https://gw.example/m/abc"), &scanner());
        assert!(ok.is_ok());
        let bad = Notice::check(draft("SSN 536-22-8901 for the patient"), &scanner());
        match bad {
            Err(NoticeError::NotClean(s)) => assert!(!s.contains("8901"), "{s}"),
            other => panic!("expected NotClean, got {other:?}"),
        }
    }

    #[test]
    fn only_header_prefixes_are_accepted() {
        let n = Notice::check(draft("hello"), &scanner()).expect("clean");
        let mut signed = b"DKIM-Signature: v=1; a=ed25519-sha256\r\n".to_vec();
        signed.extend_from_slice(n.as_bytes());
        assert!(n.with_prefix(signed).is_some());
        let mut body = b"X: y\r\n\r\nSSN 123-45-6789\r\n".to_vec();
        body.extend_from_slice(n.as_bytes());
        assert!(n.with_prefix(body).is_none());
        assert!(n.with_prefix(b"other".to_vec()).is_none());
    }
}
