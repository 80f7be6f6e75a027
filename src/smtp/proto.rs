//! SMTP command parsing, reply formatting and the DATA/BDAT readers. No I/O here, so
//! every rule can be unit-tested and fuzzed byte by byte.
//!
//! Strictness is deliberate: bare CR, bare LF and NUL are refused in commands and in
//! message content for every client (SMTP smuggling, CVE-2023-51764 class), and only the
//! exact bytes `CRLF . CRLF` end DATA.

use crate::types::Reply;

/// RFC 5321 §4.5.3.1.4: command line limit including CRLF.
pub const MAX_COMMAND_LINE: usize = 512;
/// RFC 5321 §4.5.3.1.6: text line limit including CRLF.
pub const MAX_TEXT_LINE: usize = 1000;
/// AUTH continuation lines may be longer than commands (RFC 4954 §4 allows 12288).
pub const MAX_AUTH_LINE: usize = 12288;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Ehlo(String),
    Helo(String),
    Mail {
        from: String,
        params: Vec<Param>,
    },
    Rcpt {
        to: String,
        params: Vec<Param>,
    },
    Data,
    Bdat {
        size: u64,
        last: bool,
    },
    Rset,
    Noop,
    Quit,
    Vrfy,
    Expn,
    Help,
    StartTls,
    Auth {
        mechanism: String,
        initial: Option<String>,
    },
}

/// An ESMTP parameter `KEYWORD[=value]`, keyword upper-cased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    pub key: String,
    pub value: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    #[error("line too long")]
    LineTooLong,
    #[error("bare LF")]
    BareLf,
    #[error("bare CR")]
    BareCr,
    #[error("NUL byte")]
    Nul,
    #[error("unknown command")]
    UnknownCommand,
    #[error("syntax error: {0}")]
    Syntax(&'static str),
    #[error("bad address: {0}")]
    BadAddress(&'static str),
    #[error("source route")]
    SourceRoute,
}

impl ProtoError {
    /// The one place protocol errors become SMTP replies.
    pub fn reply(&self) -> Reply {
        match self {
            ProtoError::LineTooLong => Reply::new(500, "5.5.2", "Line too long"),
            ProtoError::BareLf => Reply::new(500, "5.5.2", "Bare LF in command refused"),
            ProtoError::BareCr => Reply::new(500, "5.5.2", "Bare CR in command refused"),
            ProtoError::Nul => Reply::new(500, "5.5.2", "NUL byte in command refused"),
            ProtoError::UnknownCommand => Reply::new(500, "5.5.2", "Command not recognized"),
            ProtoError::Syntax(what) => Reply::new(501, "5.5.4", format!("Syntax error: {what}")),
            ProtoError::BadAddress(what) => {
                Reply::new(553, "5.1.3", format!("Bad address syntax: {what}"))
            }
            ProtoError::SourceRoute => Reply::new(553, "5.1.3", "Source routes are not accepted"),
        }
    }
}

/// Result of looking for one command line at the front of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum LineScan {
    /// A CRLF-terminated line; the length includes CRLF.
    Line(usize),
    /// No line end yet and still under the limit.
    Incomplete,
    /// A malformed line ending at `consumed` bytes (bare LF/CR or NUL); discard them.
    Bad { consumed: usize, error: ProtoError },
    /// Over the limit without a line end: discard the buffer and skip to the next LF.
    TooLong,
}

/// Find the next command line in `buf`, enforcing `limit` (including CRLF).
pub fn scan_line(buf: &[u8], limit: usize) -> LineScan {
    let Some(lf) = buf.iter().position(|&b| b == b'\n') else {
        if let Some(cr) = buf.iter().position(|&b| b == b'\r') {
            if cr + 1 < buf.len() {
                // A CR followed by anything but LF is a bare CR.
                return LineScan::Bad {
                    consumed: cr + 1,
                    error: ProtoError::BareCr,
                };
            }
        }
        return if buf.len() >= limit {
            LineScan::TooLong
        } else {
            LineScan::Incomplete
        };
    };
    let consumed = lf + 1;
    if consumed > limit {
        return LineScan::Bad {
            consumed,
            error: ProtoError::LineTooLong,
        };
    }
    if lf == 0 || buf[lf - 1] != b'\r' {
        return LineScan::Bad {
            consumed,
            error: ProtoError::BareLf,
        };
    }
    let body = &buf[..lf - 1];
    if body.contains(&b'\r') {
        return LineScan::Bad {
            consumed,
            error: ProtoError::BareCr,
        };
    }
    if body.contains(&0) {
        return LineScan::Bad {
            consumed,
            error: ProtoError::Nul,
        };
    }
    LineScan::Line(consumed)
}

/// Parse one command line (without CRLF).
pub fn parse_command(line: &[u8]) -> Result<Command, ProtoError> {
    let line = std::str::from_utf8(line).map_err(|_| ProtoError::Syntax("invalid UTF-8"))?;
    let (verb, rest) = match line.find(' ') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, ""),
    };
    let verb = verb.to_ascii_uppercase();
    let no_args = |cmd: Command| {
        if rest.trim().is_empty() {
            Ok(cmd)
        } else {
            Err(ProtoError::Syntax("no parameters allowed"))
        }
    };
    match verb.as_str() {
        "EHLO" | "HELO" => {
            let domain = rest.trim();
            if domain.is_empty() || domain.contains(char::is_whitespace) {
                return Err(ProtoError::Syntax(
                    "EHLO/HELO needs one domain or address literal",
                ));
            }
            let d = domain.to_string();
            Ok(if verb == "EHLO" {
                Command::Ehlo(d)
            } else {
                Command::Helo(d)
            })
        }
        "MAIL" => {
            let arg = strip_prefix_ci(rest, "FROM:")
                .ok_or(ProtoError::Syntax("expected MAIL FROM:<address>"))?;
            let (path, params) = split_path(arg)?;
            let from = if path.is_empty() {
                String::new()
            } else {
                parse_mailbox(path)?
            };
            Ok(Command::Mail {
                from,
                params: parse_params(params)?,
            })
        }
        "RCPT" => {
            let arg = strip_prefix_ci(rest, "TO:")
                .ok_or(ProtoError::Syntax("expected RCPT TO:<address>"))?;
            let (path, params) = split_path(arg)?;
            if path.is_empty() {
                return Err(ProtoError::BadAddress("empty recipient"));
            }
            Ok(Command::Rcpt {
                to: parse_mailbox(path)?,
                params: parse_params(params)?,
            })
        }
        "DATA" => no_args(Command::Data),
        "BDAT" => {
            let mut it = rest.split_ascii_whitespace();
            let size = it
                .next()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or(ProtoError::Syntax("BDAT needs a chunk size"))?;
            let last = match it.next() {
                None => false,
                Some(s) if s.eq_ignore_ascii_case("LAST") => true,
                Some(_) => return Err(ProtoError::Syntax("BDAT size [LAST]")),
            };
            if it.next().is_some() {
                return Err(ProtoError::Syntax("BDAT size [LAST]"));
            }
            Ok(Command::Bdat { size, last })
        }
        "RSET" => no_args(Command::Rset),
        "NOOP" => Ok(Command::Noop),
        "QUIT" => no_args(Command::Quit),
        "VRFY" => Ok(Command::Vrfy),
        "EXPN" => Ok(Command::Expn),
        "HELP" => Ok(Command::Help),
        "STARTTLS" => no_args(Command::StartTls),
        "AUTH" => {
            let mut it = rest.split_ascii_whitespace();
            let mechanism = it
                .next()
                .ok_or(ProtoError::Syntax("AUTH needs a mechanism"))?
                .to_ascii_uppercase();
            let initial = it.next().map(str::to_string);
            if it.next().is_some() {
                return Err(ProtoError::Syntax("AUTH mechanism [initial-response]"));
            }
            Ok(Command::Auth { mechanism, initial })
        }
        _ => Err(ProtoError::UnknownCommand),
    }
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    // `get`, not indexing: the line may be UTF-8 (SMTPUTF8) with a multi-byte char
    // straddling the prefix length (found by fuzz/smtp_command).
    if s.get(..prefix.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(prefix))
    {
        Some(s[prefix.len()..].trim_start())
    } else {
        None
    }
}

/// Split `<path> params...` into the inside of the brackets and the parameter text.
fn split_path(arg: &str) -> Result<(&str, &str), ProtoError> {
    let arg = arg.trim_start();
    if !arg.starts_with('<') {
        return Err(ProtoError::Syntax("address must be in angle brackets"));
    }
    // Find the closing bracket outside a quoted local part.
    let mut in_quote = false;
    let mut escaped = false;
    for (i, c) in arg.char_indices().skip(1) {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_quote => escaped = true,
            '"' => in_quote = !in_quote,
            '>' if !in_quote => {
                let rest = &arg[i + 1..];
                if !rest.is_empty() && !rest.starts_with(' ') {
                    return Err(ProtoError::Syntax("space expected after address"));
                }
                return Ok((&arg[1..i], rest.trim()));
            }
            '<' if !in_quote => return Err(ProtoError::BadAddress("nested angle brackets")),
            _ => {}
        }
    }
    Err(ProtoError::Syntax("missing closing angle bracket"))
}

/// Validate `local@domain` (RFC 5321 §4.1.2 Mailbox) and return it unchanged.
///
/// Refused on purpose even though some are legal syntax: source routes, `%` and `!`
/// relay hacks in the local part, and addresses without a domain. A HIPAA relay has no
/// business forwarding to addresses whose routing is hidden in the local part.
pub fn parse_mailbox(path: &str) -> Result<String, ProtoError> {
    if path.starts_with('@') {
        return Err(ProtoError::SourceRoute);
    }
    if path.len() > 254 {
        return Err(ProtoError::BadAddress("address too long"));
    }
    let at = if path.starts_with('"') {
        let end =
            quoted_end(path).ok_or(ProtoError::BadAddress("unterminated quoted local part"))?;
        if path.as_bytes().get(end + 1) != Some(&b'@') {
            return Err(ProtoError::BadAddress("missing domain"));
        }
        end + 1
    } else {
        let at = path
            .rfind('@')
            .ok_or(ProtoError::BadAddress("missing domain"))?;
        let local = &path[..at];
        if local.is_empty() {
            return Err(ProtoError::BadAddress("empty local part"));
        }
        if local.contains('@') {
            return Err(ProtoError::BadAddress("more than one @"));
        }
        if local.contains('%') || local.contains('!') {
            return Err(ProtoError::BadAddress("relay routing in local part"));
        }
        if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
            return Err(ProtoError::BadAddress("bad dots in local part"));
        }
        if !local.chars().all(|c| is_atext(c) || c == '.') {
            return Err(ProtoError::BadAddress("invalid character in local part"));
        }
        at
    };
    if at > 64 {
        return Err(ProtoError::BadAddress("local part too long"));
    }
    check_domain(&path[at + 1..])?;
    Ok(path.to_string())
}

fn quoted_end(s: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in s.char_indices().skip(1) {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => return Some(i),
            c if c.is_control() => return None,
            _ => {}
        }
    }
    None
}

fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii()
}

fn check_domain(d: &str) -> Result<(), ProtoError> {
    if d.is_empty() {
        return Err(ProtoError::BadAddress("empty domain"));
    }
    if let Some(lit) = d.strip_prefix('[') {
        let lit = lit
            .strip_suffix(']')
            .ok_or(ProtoError::BadAddress("bad address literal"))?;
        let ok = match lit.strip_prefix("IPv6:") {
            Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
            None => lit.parse::<std::net::Ipv4Addr>().is_ok(),
        };
        return if ok {
            Ok(())
        } else {
            Err(ProtoError::BadAddress("bad address literal"))
        };
    }
    if d.len() > 253 {
        return Err(ProtoError::BadAddress("domain too long"));
    }
    for label in d.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || !c.is_ascii());
        if !ok {
            return Err(ProtoError::BadAddress("invalid domain"));
        }
    }
    Ok(())
}

fn parse_params(s: &str) -> Result<Vec<Param>, ProtoError> {
    s.split_ascii_whitespace()
        .map(|p| {
            let (k, v) = match p.split_once('=') {
                Some((k, v)) => (k, Some(v.to_string())),
                None => (p, None),
            };
            if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
                return Err(ProtoError::Syntax("bad parameter"));
            }
            Ok(Param {
                key: k.to_ascii_uppercase(),
                value: v,
            })
        })
        .collect()
}

/// Decode RFC 3461 xtext (`+XX` hex escapes).
pub fn decode_xtext(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            c @ 33..=126 if c != b'=' => {
                out.push(c);
                i += 1;
            }
            _ => return None,
        }
    }
    String::from_utf8(out).ok()
}

/// Format a (possibly multi-line) reply with enhanced status codes on each line.
pub fn format_reply(code: u16, enhanced: &str, lines: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    let n = lines.len().max(1);
    for i in 0..n {
        let text = lines.get(i).copied().unwrap_or("");
        let sep = if i + 1 == n { ' ' } else { '-' };
        let line = if enhanced.is_empty() {
            format!("{code}{sep}{text}\r\n")
        } else {
            format!("{code}{sep}{enhanced} {text}\r\n")
        };
        out.extend_from_slice(line.as_bytes());
    }
    out
}

/// Why message content was refused. Reported after the whole DATA/BDAT is read, so the
/// session never loses sync with the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DataError {
    #[error("bare LF in message data")]
    BareLf,
    #[error("bare CR in message data")]
    BareCr,
    #[error("NUL byte in message data")]
    Nul,
    #[error("line longer than the configured maximum")]
    LineTooLong,
    #[error("message exceeds the size limit")]
    TooBig,
}

impl DataError {
    pub fn reply(&self) -> Reply {
        match self {
            DataError::BareLf | DataError::BareCr => Reply::new(
                554,
                "5.5.2",
                "Bare CR or LF in message data refused; lines must end with CRLF",
            ),
            DataError::Nul => Reply::new(554, "5.6.0", "NUL byte in message data refused"),
            DataError::LineTooLong => Reply::new(
                554,
                "5.6.0",
                "Message line longer than this gateway's limit refused",
            ),
            DataError::TooBig => Reply::new(552, "5.3.4", "Message exceeds the size limit"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DState {
    LineStart,
    Dot,
    DotCr,
    Text,
    Cr,
}

/// Incremental reader for DATA (dot-terminated, dot-stuffed) and BDAT (raw chunks)
/// content. Output keeps CRLF line ends byte for byte; anything that is not clean CRLF
/// text is remembered as an error and the content is dropped, but reading goes on to the
/// real end so the next command is parsed where the client meant it.
#[derive(Debug)]
pub struct DataReader {
    state: DState,
    dot_mode: bool,
    out: Vec<u8>,
    max_size: usize,
    line_len: usize,
    /// Longest line accepted, CRLF included (`[server] max_line_length`).
    max_line: usize,
    error: Option<DataError>,
}

impl DataReader {
    /// For DATA: dot-unstuffing and `CRLF.CRLF` end detection.
    pub fn data(max_size: usize) -> Self {
        Self::new(max_size, true)
    }

    /// For BDAT: content is taken as is; chunks are fed until LAST.
    pub fn bdat(max_size: usize) -> Self {
        Self::new(max_size, false)
    }

    fn new(max_size: usize, dot_mode: bool) -> Self {
        DataReader {
            state: DState::LineStart,
            dot_mode,
            out: Vec::with_capacity(max_size.min(64 * 1024)),
            max_size,
            line_len: 0,
            max_line: MAX_TEXT_LINE,
            error: None,
        }
    }

    /// Accept lines up to `n` octets (CRLF included) instead of RFC 5321's 1000: legacy
    /// senders write long HTML and CSV lines, which are re-encoded before relaying.
    pub fn with_max_line(mut self, n: usize) -> Self {
        self.max_line = n.max(MAX_TEXT_LINE);
        self
    }

    /// Feed bytes. Returns `Some(n)` when end-of-data was found after consuming `n`
    /// bytes (DATA only); the rest of `input` belongs to the next command.
    pub fn feed(&mut self, input: &[u8]) -> Option<usize> {
        self.feed_with(input, true)
    }

    /// `runs`: copy the middle of a line (up to the next CR, LF or NUL) in one go instead
    /// of byte by byte. Off only in tests, as the reference the fast path must match.
    fn feed_with(&mut self, input: &[u8], runs: bool) -> Option<usize> {
        let mut i = 0;
        while i < input.len() {
            if runs && self.state == DState::Text && self.error.is_none() {
                let rest = &input[i..];
                let run = memchr::memchr3(b'\r', b'\n', 0, rest).unwrap_or(rest.len());
                if run > 0 {
                    self.emit_run(&rest[..run]);
                    i += run;
                    continue;
                }
            }
            let b = input[i];
            i += 1;
            if b == 0 {
                self.fail(DataError::Nul);
            }
            match self.state {
                DState::LineStart if self.dot_mode && b == b'.' => self.state = DState::Dot,
                DState::LineStart | DState::Text => self.text(b),
                DState::Dot => {
                    if b == b'\r' {
                        self.state = DState::DotCr;
                    } else {
                        // A stuffed dot: drop it and keep what follows (RFC 5321 §4.5.2).
                        self.text(b);
                    }
                }
                DState::DotCr => {
                    if b == b'\n' {
                        self.state = DState::LineStart;
                        return Some(i);
                    }
                    self.fail(DataError::BareCr);
                    self.text(b);
                }
                DState::Cr => {
                    if b == b'\n' {
                        self.emit(b'\r');
                        self.emit(b'\n');
                        self.state = DState::LineStart;
                    } else {
                        self.fail(DataError::BareCr);
                        self.emit(b'\r');
                        self.text(b);
                    }
                }
            }
        }
        None
    }

    fn text(&mut self, b: u8) {
        match b {
            b'\r' => self.state = DState::Cr,
            b'\n' => {
                // Never treat a bare LF as a line start: `\n.\r\n` must not end DATA.
                self.fail(DataError::BareLf);
                self.emit(b);
                self.state = DState::Text;
            }
            _ => {
                self.emit(b);
                self.state = DState::Text;
            }
        }
    }

    /// `emit` for a run of bytes that holds no CR, LF or NUL, in the middle of a line.
    fn emit_run(&mut self, run: &[u8]) {
        let line_room = (self.max_line - 2).saturating_sub(self.line_len);
        let size_room = self.max_size.saturating_sub(self.out.len());
        if run.len() <= line_room && run.len() <= size_room {
            self.line_len += run.len();
            self.out.extend_from_slice(run);
        } else {
            // A limit is crossed inside this run: byte by byte finds the same place.
            for &b in run {
                self.emit(b);
            }
        }
    }

    fn emit(&mut self, b: u8) {
        if b == b'\n' {
            self.line_len = 0;
        } else if b != b'\r' {
            self.line_len += 1;
            if self.line_len > self.max_line - 2 {
                self.fail(DataError::LineTooLong);
            }
        }
        if self.error.is_some() {
            return;
        }
        if self.out.len() >= self.max_size {
            self.fail(DataError::TooBig);
            return;
        }
        self.out.push(b);
    }

    fn fail(&mut self, e: DataError) {
        if self.error.is_none() {
            self.error = Some(e);
            // Stop holding content we will refuse anyway: memory stays bounded.
            self.out = Vec::new();
        }
    }

    /// The first problem seen so far, if any.
    pub fn error(&self) -> Option<DataError> {
        self.error
    }

    /// Bytes stored so far (for progress and limits).
    pub fn len(&self) -> usize {
        self.out.len()
    }

    pub fn is_empty(&self) -> bool {
        self.out.is_empty()
    }

    /// Finish the message: the content, or why it is refused. For BDAT, content that
    /// ends in the middle of a line is refused (the onward hop needs CRLF-terminated lines).
    pub fn finish(mut self) -> Result<Vec<u8>, DataError> {
        if !self.dot_mode && self.error.is_none() {
            match self.state {
                DState::Cr => self.fail(DataError::BareCr),
                DState::Text => {
                    // A final line without CRLF: complete it, as Postfix does.
                    self.out.extend_from_slice(b"\r\n");
                }
                _ => {}
            }
        }
        match self.error {
            Some(e) => Err(e),
            None => Ok(self.out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Run `input` through a reader in `step`-byte pieces; the end offset and the result.
    fn read_all(
        mut r: DataReader,
        input: &[u8],
        step: usize,
        runs: bool,
    ) -> (Option<usize>, Result<Vec<u8>, DataError>) {
        let mut off = 0;
        while off < input.len() {
            let to = (off + step).min(input.len());
            if let Some(n) = r.feed_with(&input[off..to], runs) {
                return (Some(off + n), r.finish());
            }
            off = to;
        }
        (None, r.finish())
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        /// The run-copying fast path gives exactly what byte-by-byte reading gives:
        /// same end, same content, same error, also where a size or line limit is crossed.
        #[test]
        fn copying_runs_matches_reading_byte_by_byte(
            parts in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::string::bytes_regex("[a-z.]{0,40}").unwrap(),
                    proptest::string::bytes_regex("\\x00|\r|\n|\r\n|\r\n\\.|\r\n\\.\r\n").unwrap(),
                    proptest::string::bytes_regex("x{990,1010}").unwrap(),
                ],
                0..40,
            ),
            max_size in 1usize..4000,
            dot in proptest::bool::ANY,
            step in 1usize..64,
        ) {
            let input = parts.concat();
            let make = || if dot { DataReader::data(max_size) } else { DataReader::bdat(max_size) };
            let reference = read_all(make(), &input, input.len().max(1), false);
            proptest::prop_assert_eq!(&read_all(make(), &input, input.len().max(1), true), &reference);
            proptest::prop_assert_eq!(&read_all(make(), &input, step, true), &reference);
        }
    }

    fn cmd(s: &str) -> Result<Command, ProtoError> {
        parse_command(s.as_bytes())
    }

    /// fuzz/smtp_command crash: a multi-byte char across the `TO:`/`FROM:` prefix
    /// length made the prefix check slice inside it and panic the session.
    #[test]
    fn multibyte_char_at_the_prefix_boundary_is_a_syntax_error() {
        for line in [
            "RCPT TO\u{1bc}c@d>",
            "MAIL FRO\u{1bc}<a@b>",
            "RCPT T\u{e9}:<a@b>",
        ] {
            assert!(
                matches!(parse_command(line.as_bytes()), Err(ProtoError::Syntax(_))),
                "{line}"
            );
        }
    }

    #[test]
    fn parses_mail_with_params() {
        let c = cmd("MAIL FROM:<a@example.org> SIZE=1000 BODY=8BITMIME RET=HDRS").unwrap();
        match c {
            Command::Mail { from, params } => {
                assert_eq!(from, "a@example.org");
                assert_eq!(params.len(), 3);
                assert_eq!(params[0].key, "SIZE");
                assert_eq!(params[0].value.as_deref(), Some("1000"));
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(cmd("mail from: <>").unwrap(), Command::Mail { from, .. } if from.is_empty())
        );
    }

    #[test]
    fn refuses_relay_tricks() {
        for bad in [
            "RCPT TO:<@relay.example:victim@example.org>",
            "RCPT TO:<victim%example.org@relay.example>",
            "RCPT TO:<a@b@example.org>",
            "RCPT TO:<host!victim@example.org>",
            "RCPT TO:<postmaster>",
            "RCPT TO:<>",
            "RCPT TO:victim@example.org",
            "RCPT TO:<a@-bad.example>",
        ] {
            let e = cmd(bad).unwrap_err();
            let r = e.reply();
            assert!(r.code == 553 || r.code == 501, "{bad}: {r}");
        }
    }

    #[test]
    fn accepts_quoted_and_literal() {
        assert!(cmd("RCPT TO:<\"john doe\"@example.org>").is_ok());
        assert!(cmd("RCPT TO:<x@[192.0.2.1]>").is_ok());
        assert!(cmd("RCPT TO:<x@[IPv6:2001:db8::1]>").is_ok());
        assert!(cmd("RCPT TO:<x@[300.1.1.1]>").is_err());
    }

    #[test]
    fn unknown_and_bdat() {
        assert_eq!(cmd("FOO").unwrap_err(), ProtoError::UnknownCommand);
        assert_eq!(
            cmd("BDAT 10 LAST").unwrap(),
            Command::Bdat {
                size: 10,
                last: true
            }
        );
        assert!(cmd("BDAT x").is_err());
        assert!(cmd("DATA x").is_err());
    }

    #[test]
    fn scan_line_rules() {
        assert_eq!(scan_line(b"NOOP\r\nQUIT", 512), LineScan::Line(6));
        assert_eq!(scan_line(b"NOOP", 512), LineScan::Incomplete);
        assert_eq!(scan_line(b"NOOP\r", 512), LineScan::Incomplete);
        assert!(matches!(
            scan_line(b"NOOP\nX", 512),
            LineScan::Bad {
                consumed: 5,
                error: ProtoError::BareLf
            }
        ));
        assert!(matches!(
            scan_line(b"NO\rOP\r\n", 512),
            LineScan::Bad {
                error: ProtoError::BareCr,
                ..
            }
        ));
        assert!(matches!(
            scan_line(b"NO\rOP", 512),
            LineScan::Bad {
                error: ProtoError::BareCr,
                ..
            }
        ));
        assert!(matches!(
            scan_line(b"NO\0OP\r\n", 512),
            LineScan::Bad {
                error: ProtoError::Nul,
                ..
            }
        ));
        assert_eq!(scan_line(&[b'a'; 600], 512), LineScan::TooLong);
        let mut long = vec![b'a'; 520];
        long.extend_from_slice(b"\r\n");
        assert!(matches!(
            scan_line(&long, 512),
            LineScan::Bad {
                error: ProtoError::LineTooLong,
                ..
            }
        ));
    }

    fn read_data(input: &[u8]) -> (Option<usize>, Result<Vec<u8>, DataError>) {
        let mut r = DataReader::data(1 << 20);
        let end = r.feed(input);
        (end, r.finish())
    }

    #[test]
    fn data_unstuffs_and_ends_only_on_crlf_dot_crlf() {
        let (end, out) = read_data(b"a\r\n..b\r\n.\r\nQUIT\r\n");
        assert_eq!(end, Some(11));
        assert_eq!(out.unwrap(), b"a\r\n.b\r\n");
        // Empty message.
        let (end, out) = read_data(b".\r\n");
        assert_eq!(end, Some(3));
        assert_eq!(out.unwrap(), b"");
    }

    #[test]
    fn data_byte_at_a_time_matches() {
        let input = b"x\r\n..\r\ny\r\n.\r\n";
        let mut r = DataReader::data(1000);
        let mut end = None;
        for (i, b) in input.iter().enumerate() {
            if r.feed(std::slice::from_ref(b)).is_some() {
                end = Some(i + 1);
                break;
            }
        }
        assert_eq!(end, Some(input.len()));
        assert_eq!(r.finish().unwrap(), b"x\r\n.\r\ny\r\n");
    }

    #[test]
    fn smuggling_sequences_never_end_data_and_are_refused() {
        let seqs: [&[u8]; 12] = [
            b"\n.\n",
            b"\n.\r",
            b"\r.\n",
            b"\r.\r",
            b"\n.\r\n",
            b"\r\n.\n",
            b"\r.\r\n",
            b"\r\n.\r",
            b"\r\n.\r\r\n",
            b"\r\r\n.\r\r\n",
            b"\r\n\x00.\r\n",
            b"\r\n.\x00\r\n",
        ];
        for s in seqs {
            let mut msg = b"Subject: t\r\n\r\nbody".to_vec();
            msg.extend_from_slice(s);
            msg.extend_from_slice(b"MAIL FROM:<x@y.example>\r\n");
            let stop = msg.len();
            msg.extend_from_slice(b"more\r\n.\r\n");
            let mut r = DataReader::data(1 << 20);
            let end = r.feed(&msg);
            assert_eq!(end, Some(msg.len()), "{s:?} ended early");
            assert!(stop < msg.len());
            assert!(r.finish().is_err(), "{s:?} was accepted");
        }
    }

    #[test]
    fn dotdot_is_content() {
        let (end, out) = read_data(b"body\r\n..\r\nMAIL\r\n.\r\n");
        assert!(end.is_some());
        assert_eq!(out.unwrap(), b"body\r\n.\r\nMAIL\r\n");
    }

    #[test]
    fn size_and_line_limits() {
        let long = format!("{}\r\n.\r\n", "x".repeat(5000));
        let mut r = DataReader::data(1 << 20);
        r.feed(long.as_bytes());
        assert_eq!(
            r.error(),
            Some(DataError::LineTooLong),
            "RFC limit by default"
        );
        let mut r = DataReader::data(1 << 20).with_max_line(64 * 1024);
        assert!(r.feed(long.as_bytes()).is_some());
        assert_eq!(r.error(), None, "accepted up to max_line_length");
        let mut r = DataReader::data(1 << 20).with_max_line(4096);
        r.feed(long.as_bytes());
        assert_eq!(r.error(), Some(DataError::LineTooLong));
        let mut r = DataReader::data(10);
        assert!(r.feed(b"0123456789abc\r\n.\r\n").is_some());
        assert_eq!(r.finish(), Err(DataError::TooBig));
        let mut long = vec![b'a'; 1001];
        long.extend_from_slice(b"\r\n.\r\n");
        let (_, out) = read_data(&long);
        assert_eq!(out, Err(DataError::LineTooLong));
        let mut ok = vec![b'a'; 998];
        ok.extend_from_slice(b"\r\n.\r\n");
        assert!(read_data(&ok).1.is_ok());
    }

    #[test]
    fn bdat_checks_line_ends() {
        let mut r = DataReader::bdat(100);
        assert_eq!(r.feed(b"a\r"), None);
        r.feed(b"\nb\r\n");
        assert_eq!(r.finish().unwrap(), b"a\r\nb\r\n");
        let mut r = DataReader::bdat(100);
        r.feed(b"a\nb\r\n");
        assert_eq!(r.finish(), Err(DataError::BareLf));
        let mut r = DataReader::bdat(100);
        r.feed(b"a\r\n.\r\n");
        assert_eq!(r.finish().unwrap(), b"a\r\n.\r\n");
    }

    #[test]
    fn xtext() {
        assert_eq!(decode_xtext("a+2Bb").as_deref(), Some("a+b"));
        assert_eq!(decode_xtext("a+2").as_deref(), None);
    }

    #[test]
    fn multiline_reply() {
        assert_eq!(
            format_reply(250, "", &["a", "b"]),
            b"250-a\r\n250 b\r\n".to_vec()
        );
    }
}
