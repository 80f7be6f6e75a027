//! Every reply the session sends, worded once. Clients, tests and operators' log searches
//! depend on the exact text and enhanced codes, so they live here and nowhere else.
//! (The codec's own errors are worded in `smtp::proto`.)

use crate::types::Reply;

/// A reply whose text never varies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Canned {
    pub code: u16,
    pub enhanced: &'static str,
    pub text: &'static str,
}

impl From<Canned> for Reply {
    fn from(c: Canned) -> Reply {
        Reply::new(c.code, c.enhanced, c.text)
    }
}

const fn canned(code: u16, enhanced: &'static str, text: &'static str) -> Canned {
    Canned {
        code,
        enhanced,
        text,
    }
}

// Session-wide.
pub const OK: Canned = canned(250, "2.0.0", "Ok");
pub const BYE: Canned = canned(221, "2.0.0", "Bye");
pub const VRFY: Canned = canned(
    252,
    "2.5.0",
    "Cannot VRFY user, but will accept message and attempt delivery",
);
pub const EXPN: Canned = canned(502, "5.5.1", "EXPN not available");
pub const HELP: Canned = canned(
    214,
    "2.0.0",
    "See RFC 5321; phigate accepts mail from authorised senders only",
);
pub const TOO_MANY_ERRORS: Canned = canned(421, "4.7.0", "Too many errors, closing connection");

// RFC 3207 STARTTLS.
pub const STARTTLS_READY: Canned = canned(220, "2.0.0", "Ready to start TLS");
pub const TLS_ACTIVE: Canned = canned(503, "5.5.1", "TLS already active");
pub const NEED_STARTTLS: Canned = canned(530, "5.7.0", "Must issue a STARTTLS command first");

// Command order (RFC 5321 §4.1.4).
pub const NEED_EHLO: Canned = canned(503, "5.5.1", "Send EHLO first");
pub const NESTED_MAIL: Canned = canned(503, "5.5.1", "Nested MAIL command");
pub const NEED_MAIL_FOR_RCPT: Canned = canned(503, "5.5.1", "Need MAIL before RCPT");
pub const NEED_MAIL: Canned = canned(503, "5.5.1", "Need MAIL command");
pub const NO_RECIPIENTS: Canned = canned(554, "5.5.1", "No valid recipients");
pub const DATA_AFTER_BDAT: Canned = canned(503, "5.5.1", "DATA not allowed after BDAT");

// MAIL and RCPT.
pub const MAIL_OK: Canned = canned(250, "2.1.0", "Ok");
pub const RCPT_OK: Canned = canned(250, "2.1.5", "Ok");
pub const AUTH_REQUIRED: Canned = canned(530, "5.7.0", "Authentication required");
pub const NEED_SMTPUTF8: Canned = canned(553, "5.6.7", "Non-ASCII address requires SMTPUTF8");
pub const PARAMS_NEED_EHLO: Canned = canned(555, "5.5.4", "Parameters need EHLO");
pub const SIZE_EXCEEDED: Canned = canned(
    552,
    "5.3.4",
    "Message size exceeds fixed maximum message size",
);
pub const UNSUPPORTED_BODY: Canned = canned(555, "5.5.4", "Unsupported BODY type");
pub const TOO_MANY_RECIPIENTS: Canned = canned(452, "4.5.3", "Too many recipients");

// Content.
pub const START_DATA: Canned = canned(354, "", "End data with <CR><LF>.<CR><LF>");
pub const CHUNK_REFUSED: Canned = canned(552, "5.3.4", "Chunk refused, closing connection");

// RFC 4954 AUTH.
pub const AUTH_UNAVAILABLE: Canned = canned(502, "5.5.1", "AUTH not available on this listener");
pub const ALREADY_AUTHENTICATED: Canned = canned(503, "5.5.1", "Already authenticated");
pub const AUTH_IN_TRANSACTION: Canned =
    canned(503, "5.5.1", "AUTH not allowed during a mail transaction");
pub const AUTH_LOCKED_OUT: Canned = canned(
    421,
    "4.7.0",
    "Too many authentication failures, try again later",
);
pub const UNKNOWN_MECHANISM: Canned = canned(504, "5.5.4", "Unrecognized authentication type");
pub const AUTH_OK: Canned = canned(235, "2.7.0", "Authentication successful");
pub const BAD_CREDENTIALS: Canned = canned(535, "5.7.8", "Authentication credentials invalid");
pub const AUTH_CANCELLED: Canned = canned(501, "5.0.0", "Authentication cancelled");
pub const BAD_BASE64: Canned = canned(501, "5.5.2", "Invalid base64 data");
pub const MALFORMED_PLAIN: Canned = canned(501, "5.5.2", "Malformed PLAIN response");
pub const AUTHZ_REFUSED: Canned = canned(535, "5.7.8", "Authorization identity not allowed");

/// SASL challenges (RFC 4954 §4), already base64: PLAIN's empty one and LOGIN's two.
pub const PROMPT_PLAIN: &str = "";
pub const PROMPT_USERNAME: &str = "VXNlcm5hbWU6";
pub const PROMPT_PASSWORD: &str = "UGFzc3dvcmQ6";

pub fn sasl_prompt(challenge: &str) -> Reply {
    Reply::new(334, "", challenge)
}

pub fn greeting(host: &str) -> Reply {
    Reply::new(220, "", format!("{host} ESMTP phigate"))
}

/// The reply to HELO (no extensions).
pub fn helo(host: &str) -> Reply {
    Reply::new(250, "", host)
}

/// The greeting line of the EHLO reply; the keyword lines follow it.
pub fn ehlo_greeting(host: &str, peer_ip: std::net::IpAddr) -> String {
    format!("{host} Hello [{peer_ip}]")
}

pub fn shutting_down(host: &str) -> Reply {
    Reply::new(421, "4.3.2", format!("{host} Service shutting down"))
}

pub fn timeout(host: &str) -> Reply {
    Reply::new(
        421,
        "4.4.2",
        format!("{host} Timeout exceeded, closing connection"),
    )
}

pub fn invalid_param(what: &str) -> Reply {
    Reply::new(501, "5.5.4", format!("Invalid {what} parameter"))
}

pub fn unsupported_param(key: &str) -> Reply {
    Reply::new(555, "5.5.4", format!("Unsupported parameter {key}"))
}

pub fn chunk_received(size: u64) -> Reply {
    Reply::new(250, "2.0.0", format!("{size} octets received"))
}
