//! Outbound SMTP client over tokio that can only send mail inside TLS.
//!
//! The type split makes plaintext delivery of content impossible: [`PlainClient`] (before
//! TLS) can read the greeting, say EHLO and STARTTLS, and carry one thing, a portal
//! [`Notice`]; the methods that send arbitrary content and AUTH exist only on
//! [`TlsClient`], which is only built by a completed handshake.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use sha2::{Digest, Sha256};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::notice::Notice;
use crate::tls::rpt::{classify_handshake, ResultType};
use crate::types::{BodyType, DsnRet, Envelope, Reply};

/// Longest reply we accept (RFC 5321 allows 512 octets per line; multi-line EHLO is longer).
const MAX_REPLY_BYTES: usize = 64 * 1024;

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("connect to {0} failed: {1}")]
    Connect(SocketAddr, String),
    #[error("timed out {0}")]
    Timeout(&'static str),
    #[error("connection error: {0}")]
    Io(String),
    #[error("malformed reply from server")]
    BadReply,
    #[error("server refused the session: {0}")]
    Rejected(Reply),
    #[error("STARTTLS not offered")]
    StarttlsNotOffered,
    #[error("STARTTLS refused: {0}")]
    StarttlsRefused(Reply),
    #[error("data sent after the STARTTLS reply (response injection)")]
    Injection,
    /// With the RFC 8460 result type the failure reports as.
    #[error("TLS handshake failed: {0}")]
    Handshake(String, crate::tls::rpt::ResultType),
    #[error("AUTH failed: {0}")]
    Auth(Reply),
    #[error("AUTH PLAIN not offered")]
    AuthNotOffered,
}

impl ClientError {
    /// True for failures of the TLS layer or its authentication (4.7.x when deferring).
    pub fn is_tls(&self) -> bool {
        matches!(
            self,
            ClientError::StarttlsNotOffered
                | ClientError::StarttlsRefused(_)
                | ClientError::Injection
                | ClientError::Handshake(..)
        )
    }
}

/// A buffered SMTP connection: reads whole replies and keeps any extra bytes, which is how
/// STARTTLS response injection is detected.
struct Conn<S> {
    stream: S,
    buf: Vec<u8>,
    timeout: Duration,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    async fn write(&mut self, data: &[u8]) -> Result<(), ClientError> {
        let fut = async {
            self.stream.write_all(data).await?;
            self.stream.flush().await
        };
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| ClientError::Timeout("writing"))?
            .map_err(|e| ClientError::Io(e.to_string()))
    }

    async fn read_reply_within(&mut self, limit: Duration) -> Result<Reply, ClientError> {
        loop {
            if let Some((reply, used)) = parse_reply(&self.buf)? {
                self.buf.drain(..used);
                return Ok(reply);
            }
            if self.buf.len() > MAX_REPLY_BYTES {
                return Err(ClientError::BadReply);
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(limit, self.stream.read(&mut chunk))
                .await
                .map_err(|_| ClientError::Timeout("waiting for a reply"))?
                .map_err(|e| ClientError::Io(e.to_string()))?;
            if n == 0 {
                return Err(ClientError::Io("connection closed by server".into()));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    async fn read_reply(&mut self) -> Result<Reply, ClientError> {
        let t = self.timeout;
        self.read_reply_within(t).await
    }

    async fn command(&mut self, line: &str) -> Result<Reply, ClientError> {
        self.write(format!("{line}\r\n").as_bytes()).await?;
        self.read_reply().await
    }
}

/// The transaction itself, on either kind of connection: [`TlsClient::send`] for any
/// message, [`PlainClient::send_notice`] for a portal notice only.
impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    /// One transaction (MAIL, RCPT, DATA) on this connection.
    async fn transaction(
        &mut self,
        caps: &Capabilities,
        env: &Envelope,
        content: &[u8],
        rcpts: &[usize],
    ) -> Result<TransactionReplies, ClientError> {
        let mail = Self::mail_command(caps, env, content.len());
        let rcpt_lines: Vec<String> = rcpts
            .iter()
            .filter_map(|&i| env.recipients.get(i))
            .map(|r| Self::rcpt_command(caps, r))
            .collect();
        if caps.has("PIPELINING") {
            let mut batch = format!("{mail}\r\n");
            for l in &rcpt_lines {
                batch.push_str(l);
                batch.push_str("\r\n");
            }
            batch.push_str("DATA\r\n");
            self.write(batch.as_bytes()).await?;
            let mail_reply = self.read_reply().await?;
            let mut replies = Vec::new();
            for _ in &rcpt_lines {
                replies.push(self.read_reply().await?);
            }
            let data_go = self.read_reply().await?;
            let accepted = mail_reply.code == 250 && replies.iter().any(|r| r.code / 100 == 2);
            if data_go.code != 354 {
                return Ok(TransactionReplies {
                    mail: mail_reply,
                    rcpts: replies,
                    data: if accepted { Some(data_go) } else { None },
                });
            }
            if !accepted {
                // The server said 354 although nothing was accepted: end the empty message.
                self.write(b".\r\n").await?;
                let _ = self.read_reply().await?;
                return Ok(TransactionReplies {
                    mail: mail_reply,
                    rcpts: replies,
                    data: None,
                });
            }
            let data = self.body(content).await?;
            return Ok(TransactionReplies {
                mail: mail_reply,
                rcpts: replies,
                data: Some(data),
            });
        }
        let mail_reply = self.command(&mail).await?;
        if mail_reply.code != 250 {
            return Ok(TransactionReplies {
                mail: mail_reply,
                rcpts: Vec::new(),
                data: None,
            });
        }
        let mut replies = Vec::new();
        for l in &rcpt_lines {
            replies.push(self.command(l).await?);
        }
        if !replies.iter().any(|r| r.code / 100 == 2) {
            let _ = self.command("RSET").await;
            return Ok(TransactionReplies {
                mail: mail_reply,
                rcpts: replies,
                data: None,
            });
        }
        let go = self.command("DATA").await?;
        if go.code != 354 {
            return Ok(TransactionReplies {
                mail: mail_reply,
                rcpts: replies,
                data: Some(go),
            });
        }
        let data = self.body(content).await?;
        Ok(TransactionReplies {
            mail: mail_reply,
            rcpts: replies,
            data: Some(data),
        })
    }

    async fn body(&mut self, content: &[u8]) -> Result<Reply, ClientError> {
        // Stuffed and written in pieces: a large message is never copied whole.
        let mut stuffer = DotStuffer::default();
        let mut out = Vec::with_capacity(content.len().min(STUFF_CHUNK) + 64);
        let mut pieces = content.chunks(STUFF_CHUNK).peekable();
        loop {
            out.clear();
            if let Some(piece) = pieces.next() {
                stuffer.push(piece, &mut out);
            }
            if pieces.peek().is_none() {
                stuffer.finish(&mut out);
                self.write(&out).await?;
                break;
            }
            self.write(&out).await?;
        }
        // RFC 5321 §4.5.3.2.6: the final reply may take long (10 minutes suggested).
        let t = self.timeout.saturating_mul(2);
        self.read_reply_within(t).await
    }

    fn mail_command(caps: &Capabilities, env: &Envelope, size: usize) -> String {
        let p = &env.params;
        let mut line = format!("MAIL FROM:<{}>", env.mail_from);
        if caps.has("SIZE") {
            line.push_str(&format!(
                " SIZE={}",
                p.size.unwrap_or(size as u64).max(size as u64)
            ));
        }
        if p.body == BodyType::EightBitMime && caps.has("8BITMIME") {
            line.push_str(" BODY=8BITMIME");
        }
        if p.smtputf8 && caps.has("SMTPUTF8") {
            line.push_str(" SMTPUTF8");
        }
        if caps.has("DSN") {
            match p.ret {
                Some(DsnRet::Full) => line.push_str(" RET=FULL"),
                Some(DsnRet::Hdrs) => line.push_str(" RET=HDRS"),
                None => {}
            }
            if let Some(envid) = &p.envid {
                line.push_str(&format!(" ENVID={}", xtext(envid)));
            }
        }
        if p.requiretls && caps.has("REQUIRETLS") {
            line.push_str(" REQUIRETLS");
        }
        line
    }

    fn rcpt_command(caps: &Capabilities, r: &crate::types::Recipient) -> String {
        let mut line = format!("RCPT TO:<{}>", r.address);
        if caps.has("DSN") {
            if let Some(n) = r.notify {
                let words: Vec<&str> = if n.never {
                    vec!["NEVER"]
                } else {
                    [
                        (n.success, "SUCCESS"),
                        (n.failure, "FAILURE"),
                        (n.delay, "DELAY"),
                    ]
                    .iter()
                    .filter(|(on, _)| *on)
                    .map(|(_, w)| *w)
                    .collect()
                };
                if !words.is_empty() {
                    line.push_str(&format!(" NOTIFY={}", words.join(",")));
                }
            }
            if let Some((kind, addr)) = &r.orcpt {
                line.push_str(&format!(" ORCPT={kind};{}", xtext(addr)));
            }
        }
        line
    }
}

/// Parses one complete (possibly multi-line) reply from the front of `buf`.
/// Returns the reply and the number of bytes it used, or None if more input is needed.
pub fn parse_reply(buf: &[u8]) -> Result<Option<(Reply, usize)>, ClientError> {
    let mut pos = 0;
    let mut code: Option<u16> = None;
    let mut texts = Vec::new();
    while let Some(nl) = buf[pos..].iter().position(|&b| b == b'\n') {
        let line = &buf[pos..pos + nl];
        pos += nl + 1;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.len() < 3 || !line[..3].iter().all(u8::is_ascii_digit) {
            return Err(ClientError::BadReply);
        }
        let this: u16 = std::str::from_utf8(&line[..3])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(ClientError::BadReply)?;
        if code.is_some_and(|c| c != this) {
            return Err(ClientError::BadReply);
        }
        code = Some(this);
        let sep = line.get(3).copied();
        texts.push(String::from_utf8_lossy(line.get(4..).unwrap_or_default()).into_owned());
        match sep {
            None | Some(b' ') => {
                let code = code.ok_or(ClientError::BadReply)?;
                return Ok(Some((make_reply(code, &texts), pos)));
            }
            Some(b'-') => {}
            Some(_) => return Err(ClientError::BadReply),
        }
    }
    Ok(None)
}

fn make_reply(code: u16, lines: &[String]) -> Reply {
    let first = lines.first().map(String::as_str).unwrap_or("");
    let (enhanced, rest) = match first.split_once(' ') {
        Some((maybe, rest)) if is_enhanced(maybe, code) => (maybe.to_string(), rest.to_string()),
        _ if is_enhanced(first, code) => (first.to_string(), String::new()),
        _ => (String::new(), first.to_string()),
    };
    let mut text = rest;
    for l in lines.iter().skip(1) {
        text.push_str(" / ");
        text.push_str(l);
    }
    Reply {
        code,
        enhanced,
        text,
    }
}

fn is_enhanced(s: &str, code: u16) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
        && parts[0] == (code / 100).to_string()
}

/// EHLO keywords (upper-case) with their parameters.
#[derive(Debug, Clone, Default)]
pub struct Capabilities(HashMap<String, Vec<String>>);

impl Capabilities {
    fn from_ehlo(reply: &Reply) -> Self {
        // make_reply joined continuation lines with " / "; the first line is the greeting.
        let mut map = HashMap::new();
        for line in reply.text.split(" / ").skip(1) {
            let mut words = line.split_whitespace();
            if let Some(k) = words.next() {
                map.insert(k.to_ascii_uppercase(), words.map(str::to_string).collect());
            }
        }
        Capabilities(map)
    }
    pub fn has(&self, keyword: &str) -> bool {
        self.0.contains_key(keyword)
    }
    pub fn params(&self, keyword: &str) -> &[String] {
        self.0.get(keyword).map(Vec::as_slice).unwrap_or_default()
    }
}

/// Facts about the established TLS session.
#[derive(Debug, Clone, Default)]
pub struct TlsFacts {
    pub version: String,
    pub cipher: String,
    pub peer_cert_sha256: String,
}

/// Connects with a deadline.
pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, ClientError> {
    tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| ClientError::Timeout("connecting"))?
        .map_err(|e| ClientError::Connect(addr, e.to_string()))
}

/// The session before TLS: it can greet and upgrade, nothing else.
pub struct PlainClient {
    conn: Conn<TcpStream>,
    helo: String,
    caps: Capabilities,
}

impl PlainClient {
    /// Reads the greeting and sends EHLO.
    pub async fn start(
        stream: TcpStream,
        helo: &str,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        let mut conn = Conn {
            stream,
            buf: Vec::new(),
            timeout,
        };
        let greeting = conn.read_reply().await?;
        if greeting.code != 220 {
            return Err(ClientError::Rejected(greeting));
        }
        let ehlo = conn.command(&format!("EHLO {helo}")).await?;
        if ehlo.code != 250 {
            return Err(ClientError::Rejected(ehlo));
        }
        Ok(PlainClient {
            conn,
            helo: helo.to_string(),
            caps: Capabilities::from_ehlo(&ehlo),
        })
    }

    /// Whether the server offered STARTTLS.
    pub fn offers_starttls(&self) -> bool {
        self.caps.has("STARTTLS")
    }

    /// The one transaction a plaintext session can carry: a portal [`Notice`], which is
    /// DLP-checked and PHI-free by construction. Message content has no path here.
    pub async fn send_notice(
        &mut self,
        env: &Envelope,
        notice: &Notice,
        rcpts: &[usize],
    ) -> Result<TransactionReplies, ClientError> {
        self.conn
            .transaction(&self.caps, env, notice.as_bytes(), rcpts)
            .await
    }

    pub async fn quit(mut self) {
        let _ = self.conn.command("QUIT").await;
    }

    /// STARTTLS and handshake. Any failure ends the session: there is no plaintext fallback.
    pub async fn starttls(
        mut self,
        config: Arc<ClientConfig>,
        sni: ServerName<'static>,
    ) -> Result<TlsClient, ClientError> {
        if !self.caps.has("STARTTLS") {
            let _ = self.conn.command("QUIT").await;
            return Err(ClientError::StarttlsNotOffered);
        }
        let reply = self.conn.command("STARTTLS").await?;
        if reply.code != 220 {
            let _ = self.conn.command("QUIT").await;
            return Err(ClientError::StarttlsRefused(reply));
        }
        // Bytes already received after the 220 were sent in plaintext by someone who may
        // not be the server (CVE-2011-0411 style injection): abort.
        if !self.conn.buf.is_empty() {
            return Err(ClientError::Injection);
        }
        let timeout = self.conn.timeout;
        handshake(self.conn.stream, config, sni, &self.helo, timeout, false).await
    }
}

/// Connects with TLS from the first byte (RFC 8314 submissions / smarthosts).
pub async fn implicit_tls(
    stream: TcpStream,
    config: Arc<ClientConfig>,
    sni: ServerName<'static>,
    helo: &str,
    timeout: Duration,
) -> Result<TlsClient, ClientError> {
    handshake(stream, config, sni, helo, timeout, true).await
}

async fn handshake(
    stream: TcpStream,
    config: Arc<ClientConfig>,
    sni: ServerName<'static>,
    helo: &str,
    timeout: Duration,
    read_greeting: bool,
) -> Result<TlsClient, ClientError> {
    let connector = TlsConnector::from(config);
    let tls = tokio::time::timeout(timeout, connector.connect(sni, stream))
        .await
        .map_err(|_| ClientError::Timeout("in the TLS handshake"))?
        .map_err(|e| {
            let kind = e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                .map_or(ResultType::ValidationFailure, classify_handshake);
            ClientError::Handshake(e.to_string(), kind)
        })?;
    let facts = tls_facts(&tls);
    let mut conn = Conn {
        stream: tls,
        buf: Vec::new(),
        timeout,
    };
    if read_greeting {
        let greeting = conn.read_reply().await?;
        if greeting.code != 220 {
            return Err(ClientError::Rejected(greeting));
        }
    }
    // RFC 3207 §4.2: forget what was learnt before TLS and ask again.
    let ehlo = conn.command(&format!("EHLO {helo}")).await?;
    if ehlo.code != 250 {
        return Err(ClientError::Rejected(ehlo));
    }
    Ok(TlsClient {
        caps: Capabilities::from_ehlo(&ehlo),
        conn,
        facts,
    })
}

fn tls_facts(tls: &TlsStream<TcpStream>) -> TlsFacts {
    let (_, session) = tls.get_ref();
    TlsFacts {
        // Named as inbound connections are, so one audit query matches both directions.
        version: crate::tls::server::version_name(session.protocol_version()),
        cipher: crate::tls::server::cipher_name(session.negotiated_cipher_suite()),
        peer_cert_sha256: session
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| hex::encode(Sha256::digest(c.as_ref())))
            .unwrap_or_default(),
    }
}

/// Replies to one mail transaction.
#[derive(Debug, Clone)]
pub struct TransactionReplies {
    pub mail: Reply,
    /// One per recipient, in the order given (empty if MAIL failed).
    pub rcpts: Vec<Reply>,
    /// None when MAIL failed or no recipient was accepted.
    pub data: Option<Reply>,
}

/// An SMTP session inside TLS. Only this type can send mail.
pub struct TlsClient {
    conn: Conn<TlsStream<TcpStream>>,
    caps: Capabilities,
    facts: TlsFacts,
}

impl TlsClient {
    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    pub fn tls(&self) -> &TlsFacts {
        &self.facts
    }

    /// AUTH PLAIN (RFC 4616) with the credentials as given.
    pub async fn auth_plain(&mut self, user: &str, password: &str) -> Result<(), ClientError> {
        let offered = self
            .caps
            .params("AUTH")
            .iter()
            .any(|m| m.eq_ignore_ascii_case("PLAIN"));
        if !offered {
            return Err(ClientError::AuthNotOffered);
        }
        let token =
            base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
        let reply = self.conn.command(&format!("AUTH PLAIN {token}")).await?;
        if reply.code != 235 {
            return Err(ClientError::Auth(reply));
        }
        Ok(())
    }

    /// One transaction for `rcpts` (indexes into `env.recipients`). Pipelines when offered.
    pub async fn send(
        &mut self,
        env: &Envelope,
        content: &[u8],
        rcpts: &[usize],
    ) -> Result<TransactionReplies, ClientError> {
        self.conn.transaction(&self.caps, env, content, rcpts).await
    }

    /// RSET after a transaction, before the session is kept for another message.
    pub async fn reset(&mut self) -> Result<(), ClientError> {
        self.expect_250("RSET").await
    }

    /// NOOP before a kept session is reused: finds sessions the server closed while idle.
    pub async fn probe(&mut self) -> Result<(), ClientError> {
        self.expect_250("NOOP").await
    }

    async fn expect_250(&mut self, cmd: &str) -> Result<(), ClientError> {
        let reply = self.conn.command(cmd).await?;
        if reply.code != 250 {
            return Err(ClientError::Rejected(reply));
        }
        Ok(())
    }

    pub async fn quit(mut self) {
        let _ = self.conn.command("QUIT").await;
    }
}

/// RFC 3461 §4 xtext encoding.
pub fn xtext(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (33..=126).contains(&b) && b != b'+' && b != b'=' {
            out.push(b as char);
        } else {
            out.push_str(&format!("+{b:02X}"));
        }
    }
    out
}

/// Bytes of content stuffed and written at a time.
const STUFF_CHUNK: usize = 64 * 1024;

/// Dot-stuffing (RFC 5321 §4.5.2) over content fed in pieces.
struct DotStuffer {
    at_line_start: bool,
    /// The last two bytes fed, to know whether the content ended with CRLF.
    tail: [u8; 2],
    fed: usize,
}

impl Default for DotStuffer {
    fn default() -> Self {
        DotStuffer {
            at_line_start: true,
            tail: [0; 2],
            fed: 0,
        }
    }
}

impl DotStuffer {
    fn push(&mut self, input: &[u8], out: &mut Vec<u8>) {
        for &b in input {
            if self.at_line_start && b == b'.' {
                out.push(b'.');
            }
            out.push(b);
            self.at_line_start = b == b'\n';
            self.tail = [self.tail[1], b];
        }
        self.fed += input.len();
    }

    /// Ends the content with CRLF if needed, then the end-of-data marker.
    fn finish(&self, out: &mut Vec<u8>) {
        if self.fed > 0 && self.tail != *b"\r\n" {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
    }
}

/// Dot-stuffs CRLF content (RFC 5321 §4.5.2) and appends the end-of-data marker.
pub fn dot_stuff(content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 64);
    let mut s = DotStuffer::default();
    s.push(content, &mut out);
    s.finish(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_stuffing() {
        assert_eq!(dot_stuff(b"a\r\n.b\r\n..\r\n"), b"a\r\n..b\r\n...\r\n.\r\n");
        assert_eq!(dot_stuff(b".x"), b"..x\r\n.\r\n");
        assert_eq!(dot_stuff(b""), b".\r\n");
        assert_eq!(dot_stuff(b"mid.dle\r\n"), b"mid.dle\r\n.\r\n");
        assert_eq!(dot_stuff(b"\n"), b"\n\r\n.\r\n");
    }

    #[test]
    fn dot_stuffing_in_pieces_matches_whole() {
        let msg = b"a\r\n.b\r\n..\r\nx.\r\n.\r\nend";
        let whole = dot_stuff(msg);
        for cut in 0..msg.len() {
            for cut2 in cut..msg.len() {
                let mut s = DotStuffer::default();
                let mut out = Vec::new();
                s.push(&msg[..cut], &mut out);
                s.push(&msg[cut..cut2], &mut out);
                s.push(&msg[cut2..], &mut out);
                s.finish(&mut out);
                assert_eq!(out, whole, "cuts at {cut}, {cut2}");
            }
        }
    }

    #[test]
    fn replies_parse() {
        let (r, used) = parse_reply(b"250-mx hi\r\n250-PIPELINING\r\n250 STARTTLS\r\nX")
            .expect("ok")
            .expect("complete");
        assert_eq!(used, 41);
        assert_eq!(r.code, 250);
        let caps = Capabilities::from_ehlo(&r);
        assert!(caps.has("PIPELINING") && caps.has("STARTTLS"));
        let (r, _) = parse_reply(b"550 5.1.1 no such user\r\n")
            .expect("ok")
            .expect("complete");
        assert_eq!(
            (r.code, r.enhanced.as_str(), r.text.as_str()),
            (550, "5.1.1", "no such user")
        );
        assert!(parse_reply(b"250-partial\r\n").expect("ok").is_none());
        assert!(parse_reply(b"25x bad\r\n").is_err());
    }

    #[test]
    fn xtext_encodes() {
        assert_eq!(xtext("a+b=c d"), "a+2Bb+3Dc+20d");
    }
}
