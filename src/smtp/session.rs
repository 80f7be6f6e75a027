//! One SMTP server session, generic over the stream so it runs the same over plain TCP,
//! TLS, or an in-memory pipe in tests.
//!
//! STARTTLS ends a session: [`Session::run`] returns the raw stream and the listener
//! starts a fresh session on the TLS stream. Everything learned before TLS (EHLO,
//! MAIL, RCPT, AUTH and any pipelined bytes) is dropped with the old session, as
//! RFC 3207 §4.2 requires and CVE-2011-0411 shows is necessary.

use crate::auth::{client_cert_allowed, FailureLimiter, LimitVerdict, Users};
use crate::config::{AuthMethod, Cidr, TlsMode};
use crate::pipeline::{Handoff, RcptCheck, Submission};
use crate::smtp::proto::{
    self, decode_xtext, format_reply, parse_command, scan_line, Command, DataReader, LineScan,
    Param, ProtoError,
};
use crate::tls::server::ClientCert;
use crate::types::{
    AuthIdentity, BodyType, DsnRet, Envelope, MailParams, MessageId, Notify, Recipient, Reply,
    TlsInfo,
};
use base64::Engine;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Bad commands tolerated before the session is dropped.
const MAX_ERRORS: u32 = 20;

/// Settings and services shared by all sessions. Rebuilt on reload and swapped as a
/// whole: a session keeps the snapshot it started with.
pub struct Shared {
    pub hostname: String,
    pub max_message_size: usize,
    pub max_recipients: usize,
    pub command_timeout: Duration,
    pub data_timeout: Duration,
    pub users: Arc<Users>,
    pub limiter: Arc<FailureLimiter>,
    pub allow_networks: Vec<Cidr>,
    pub client_cert_allow: Vec<String>,
    pub handoff: Arc<dyn Handoff>,
    /// Becomes true when the server is shutting down.
    pub shutdown: CancellationToken,
    /// The audit trail (sessions and AUTH results).
    pub audit: Arc<crate::audit::Audit>,
    /// Counters for AUTH results and RCPT refusals.
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// The listener a session arrived on.
#[derive(Debug, Clone)]
pub struct ListenerInfo {
    pub name: String,
    pub mode: TlsMode,
    pub auth: Vec<AuthMethod>,
}

/// Facts about the connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub id: String,
    pub peer: SocketAddr,
    pub tls: Option<TlsInfo>,
    pub client_cert: Option<ClientCert>,
}

/// How a session ended.
pub enum SessionEnd<S> {
    Closed,
    /// The client asked for STARTTLS and got `220`: hand the stream to the TLS acceptor.
    StartTls(S),
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("connection closed")]
    Eof,
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// A reply has been queued; close after sending it.
    #[error("closing")]
    Close,
}

struct Transaction {
    from: String,
    params: MailParams,
    rcpts: Vec<Recipient>,
    bdat: Option<DataReader>,
}

enum Input {
    Line(Vec<u8>),
    Bad(ProtoError),
}

pub struct Session<S> {
    io: S,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    shared: Arc<Shared>,
    listener: Arc<ListenerInfo>,
    conn: ConnInfo,
    helo: Option<(String, bool)>,
    auth: Option<AuthIdentity>,
    password_authed: bool,
    tx: Option<Transaction>,
    errors: u32,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    pub fn new(io: S, shared: Arc<Shared>, listener: Arc<ListenerInfo>, conn: ConnInfo) -> Self {
        let mut s = Session {
            io,
            rbuf: Vec::with_capacity(4096),
            wbuf: Vec::with_capacity(1024),
            shared,
            listener,
            conn,
            helo: None,
            auth: None,
            password_authed: false,
            tx: None,
            errors: 0,
        };
        s.auth = s.implicit_authorisation();
        s
    }

    fn tls_active(&self) -> bool {
        self.conn.tls.is_some()
    }

    fn allows(&self, m: AuthMethod) -> bool {
        self.listener.auth.contains(&m)
    }

    /// Authorisation that needs no command: a verified client certificate or an allowed
    /// source network.
    fn implicit_authorisation(&self) -> Option<AuthIdentity> {
        if self.allows(AuthMethod::ClientCert) {
            if let Some(c) = &self.conn.client_cert {
                if client_cert_allowed(&self.shared.client_cert_allow, c.cn.as_deref(), &c.sha256) {
                    return Some(AuthIdentity::ClientCert(
                        c.cn.clone()
                            .unwrap_or_else(|| format!("sha256:{}", c.sha256)),
                    ));
                }
            }
        }
        if self.allows(AuthMethod::Ip) {
            let ip = self.conn.peer.ip();
            if self.shared.allow_networks.iter().any(|n| n.contains(ip)) {
                return Some(AuthIdentity::Ip(ip.to_string()));
            }
        }
        None
    }

    /// Run the session. `greet` is false after STARTTLS (the greeting was already sent).
    pub async fn run(mut self, greet: bool) -> SessionEnd<S> {
        if greet {
            let text = format!("{} ESMTP phigate", self.shared.hostname);
            self.send(Reply::new(220, "", text));
        }
        let end = self.command_loop().await;
        let _ = self.flush().await;
        match end {
            Ok(Some(())) => {
                let pending = self.rbuf.len();
                if pending > 0 {
                    // Plaintext pipelined after STARTTLS is never executed.
                    warn!(session = %self.conn.id, peer = %self.conn.peer.ip(), bytes = pending, "discarding data pipelined after STARTTLS");
                }
                SessionEnd::StartTls(self.io)
            }
            Ok(None) | Err(SessionError::Close) | Err(SessionError::Eof) => {
                let _ = self.io.shutdown().await;
                SessionEnd::Closed
            }
            Err(SessionError::Io(e)) => {
                debug!(session = %self.conn.id, error = %e, "session I/O error");
                SessionEnd::Closed
            }
        }
    }

    fn send(&mut self, r: Reply) {
        self.wbuf
            .extend_from_slice(&format_reply(r.code, &r.enhanced, &[&r.text]));
    }

    fn send_lines(&mut self, code: u16, lines: &[&str]) {
        self.wbuf.extend_from_slice(&format_reply(code, "", lines));
    }

    async fn flush(&mut self) -> Result<(), SessionError> {
        if !self.wbuf.is_empty() {
            self.io.write_all(&self.wbuf).await?;
            self.io.flush().await?;
            self.wbuf.clear();
        }
        Ok(())
    }

    /// Read more bytes into `rbuf`, flushing pending replies first (so pipelined
    /// commands get their replies in one batch, RFC 2920).
    async fn fill(&mut self, timeout: Duration, watch_shutdown: bool) -> Result<(), SessionError> {
        self.flush().await?;
        let mut chunk = [0u8; 16 * 1024];
        let shutdown = self.shared.shutdown.clone();
        let read = tokio::time::timeout(timeout, self.io.read(&mut chunk));
        let n = if watch_shutdown {
            tokio::select! {
                r = read => r,
                _ = shutdown.cancelled() => {
                    self.send(Reply::new(421, "4.3.2", format!("{} Service shutting down", self.shared.hostname)));
                    return Err(SessionError::Close);
                }
            }
        } else {
            read.await
        };
        match n {
            Err(_) => {
                info!(session = %self.conn.id, peer = %self.conn.peer.ip(), "timeout");
                self.send(Reply::new(
                    421,
                    "4.4.2",
                    format!(
                        "{} Timeout exceeded, closing connection",
                        self.shared.hostname
                    ),
                ));
                Err(SessionError::Close)
            }
            Ok(Ok(0)) => Err(SessionError::Eof),
            Ok(Ok(n)) => {
                self.rbuf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Ok(Err(e)) => Err(e.into()),
        }
    }

    async fn read_line(
        &mut self,
        limit: usize,
        watch_shutdown: bool,
    ) -> Result<Input, SessionError> {
        loop {
            match scan_line(&self.rbuf, limit) {
                LineScan::Line(n) => {
                    let line = self.rbuf[..n - 2].to_vec();
                    self.rbuf.drain(..n);
                    return Ok(Input::Line(line));
                }
                LineScan::Bad { consumed, error } => {
                    self.rbuf.drain(..consumed);
                    return Ok(Input::Bad(error));
                }
                LineScan::TooLong => {
                    // Skip to the end of this line so the next one parses cleanly.
                    loop {
                        if let Some(p) = self.rbuf.iter().position(|&b| b == b'\n') {
                            self.rbuf.drain(..=p);
                            return Ok(Input::Bad(ProtoError::LineTooLong));
                        }
                        self.rbuf.clear();
                        self.fill(self.shared.command_timeout, false).await?;
                    }
                }
                LineScan::Incomplete => {
                    self.fill(self.shared.command_timeout, watch_shutdown)
                        .await?
                }
            }
        }
    }

    /// Returns `Ok(Some(()))` when STARTTLS was accepted.
    async fn command_loop(&mut self) -> Result<Option<()>, SessionError> {
        loop {
            let line = match self
                .read_line(proto::MAX_COMMAND_LINE, self.tx.is_none())
                .await?
            {
                Input::Line(l) => l,
                Input::Bad(e) => {
                    self.error_reply(e.reply())?;
                    continue;
                }
            };
            let cmd = match parse_command(&line) {
                Ok(c) => c,
                Err(e) => {
                    self.error_reply(e.reply())?;
                    continue;
                }
            };
            match cmd {
                Command::Ehlo(d) => self.ehlo(d, true),
                Command::Helo(d) => self.ehlo(d, false),
                Command::Mail { from, params } => self.mail(from, params),
                Command::Rcpt { to, params } => self.rcpt(to, params),
                Command::Data => self.data().await?,
                Command::Bdat { size, last } => self.bdat(size, last).await?,
                Command::Rset => {
                    self.tx = None;
                    self.send(Reply::new(250, "2.0.0", "Ok"));
                }
                Command::Noop => self.send(Reply::new(250, "2.0.0", "Ok")),
                Command::Quit => {
                    self.send(Reply::new(221, "2.0.0", "Bye"));
                    return Ok(None);
                }
                Command::Vrfy => self.send(Reply::new(
                    252,
                    "2.5.0",
                    "Cannot VRFY user, but will accept message and attempt delivery",
                )),
                Command::Expn => self.send(Reply::new(502, "5.5.1", "EXPN not available")),
                Command::Help => self.send(Reply::new(
                    214,
                    "2.0.0",
                    "See RFC 5321; phigate accepts mail from authorised senders only",
                )),
                Command::StartTls => {
                    if self.listener.mode == TlsMode::Implicit || self.tls_active() {
                        self.error_reply(Reply::new(503, "5.5.1", "TLS already active"))?;
                    } else {
                        self.send(Reply::new(220, "2.0.0", "Ready to start TLS"));
                        return Ok(Some(()));
                    }
                }
                Command::Auth { mechanism, initial } => self.auth(mechanism, initial).await?,
            }
        }
    }

    /// Queue an error reply; too many of them end the session.
    fn error_reply(&mut self, r: Reply) -> Result<(), SessionError> {
        self.errors += 1;
        self.send(r);
        if self.errors >= MAX_ERRORS {
            self.send(Reply::new(
                421,
                "4.7.0",
                "Too many errors, closing connection",
            ));
            return Err(SessionError::Close);
        }
        Ok(())
    }

    /// Common gate for commands that carry mail: TLS first, then order, then authorisation.
    fn gate(&self, need_helo: bool) -> Option<Reply> {
        if !self.tls_active() {
            return Some(Reply::new(
                530,
                "5.7.0",
                "Must issue a STARTTLS command first",
            ));
        }
        if need_helo && self.helo.is_none() {
            return Some(Reply::new(503, "5.5.1", "Send EHLO first"));
        }
        None
    }

    fn ehlo(&mut self, domain: String, esmtp: bool) {
        self.tx = None;
        self.helo = Some((domain, esmtp));
        let host = self.shared.hostname.clone();
        if !esmtp {
            self.send(Reply::new(250, "", host));
            return;
        }
        let mut lines = vec![
            format!("{host} Hello [{}]", self.conn.peer.ip()),
            format!("SIZE {}", self.shared.max_message_size),
            "8BITMIME".into(),
            "SMTPUTF8".into(),
            "PIPELINING".into(),
            "ENHANCEDSTATUSCODES".into(),
            "CHUNKING".into(),
            "DSN".into(),
        ];
        if self.listener.mode == TlsMode::Starttls && !self.tls_active() {
            lines.push("STARTTLS".into());
        }
        if self.tls_active() {
            if self.allows(AuthMethod::Password) {
                lines.push("AUTH PLAIN LOGIN".into());
            }
            lines.push("REQUIRETLS".into());
        }
        lines.push("HELP".into());
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        self.send_lines(250, &refs);
    }

    fn mail(&mut self, from: String, params: Vec<Param>) {
        if let Some(r) = self.gate(true) {
            let _ = self.error_reply(r);
            return;
        }
        if self.tx.is_some() {
            self.send(Reply::new(503, "5.5.1", "Nested MAIL command"));
            return;
        }
        if self.auth.is_none() {
            info!(session = %self.conn.id, peer = %self.conn.peer.ip(), code = 530, "MAIL refused: not authorised");
            self.send(Reply::new(530, "5.7.0", "Authentication required"));
            return;
        }
        let esmtp = self.helo.as_ref().map(|h| h.1).unwrap_or(false);
        match self.mail_params(&params, esmtp) {
            Ok(p) => {
                if !p.smtputf8 && !from.is_ascii() {
                    self.send(Reply::new(
                        553,
                        "5.6.7",
                        "Non-ASCII address requires SMTPUTF8",
                    ));
                    return;
                }
                self.tx = Some(Transaction {
                    from,
                    params: p,
                    rcpts: Vec::new(),
                    bdat: None,
                });
                self.send(Reply::new(250, "2.1.0", "Ok"));
            }
            Err(r) => self.send(r),
        }
    }

    fn mail_params(&self, params: &[Param], esmtp: bool) -> Result<MailParams, Reply> {
        let mut p = MailParams::default();
        if !esmtp && !params.is_empty() {
            return Err(Reply::new(555, "5.5.4", "Parameters need EHLO"));
        }
        let bad = |what: &str| Reply::new(501, "5.5.4", format!("Invalid {what} parameter"));
        for Param { key, value } in params {
            let v = value.as_deref();
            match (key.as_str(), v) {
                ("SIZE", Some(v)) => {
                    let n: u64 = v.parse().map_err(|_| bad("SIZE"))?;
                    if n > self.shared.max_message_size as u64 {
                        return Err(Reply::new(
                            552,
                            "5.3.4",
                            "Message size exceeds fixed maximum message size",
                        ));
                    }
                    p.size = Some(n);
                }
                ("BODY", Some(v)) if v.eq_ignore_ascii_case("7BIT") => p.body = BodyType::SevenBit,
                ("BODY", Some(v)) if v.eq_ignore_ascii_case("8BITMIME") => {
                    p.body = BodyType::EightBitMime
                }
                ("BODY", _) => return Err(Reply::new(555, "5.5.4", "Unsupported BODY type")),
                ("SMTPUTF8", None) => p.smtputf8 = true,
                ("RET", Some(v)) if v.eq_ignore_ascii_case("FULL") => p.ret = Some(DsnRet::Full),
                ("RET", Some(v)) if v.eq_ignore_ascii_case("HDRS") => p.ret = Some(DsnRet::Hdrs),
                ("ENVID", Some(v)) => {
                    let id = decode_xtext(v)
                        .filter(|s| s.len() <= 100)
                        .ok_or_else(|| bad("ENVID"))?;
                    p.envid = Some(id);
                }
                // RFC 8689: only meaningful, and only advertised, inside TLS.
                ("REQUIRETLS", None) if self.tls_active() => p.requiretls = true,
                // RFC 4954 AUTH= on MAIL: accepted and not trusted.
                ("AUTH", Some(_)) => {}
                _ => {
                    return Err(Reply::new(
                        555,
                        "5.5.4",
                        format!("Unsupported parameter {key}"),
                    ))
                }
            }
        }
        Ok(p)
    }

    fn rcpt(&mut self, to: String, params: Vec<Param>) {
        if let Some(r) = self.gate(true) {
            self.shared.metrics.rcpt_refused(&self.listener.name, &r);
            let _ = self.error_reply(r);
            return;
        }
        let Some(tx) = self.tx.as_ref() else {
            self.refuse_rcpt(Reply::new(503, "5.5.1", "Need MAIL before RCPT"));
            return;
        };
        if tx.rcpts.len() >= self.shared.max_recipients {
            self.refuse_rcpt(Reply::new(452, "4.5.3", "Too many recipients"));
            return;
        }
        if !tx.params.smtputf8 && !to.is_ascii() {
            self.refuse_rcpt(Reply::new(
                553,
                "5.6.7",
                "Non-ASCII address requires SMTPUTF8",
            ));
            return;
        }
        let mut rcpt = Recipient::new(to);
        for Param { key, value } in &params {
            match (key.as_str(), value.as_deref()) {
                ("NOTIFY", Some(v)) => match parse_notify(v) {
                    Some(n) => rcpt.notify = Some(n),
                    None => {
                        self.refuse_rcpt(Reply::new(501, "5.5.4", "Invalid NOTIFY parameter"));
                        return;
                    }
                },
                ("ORCPT", Some(v)) => {
                    let parsed = v
                        .split_once(';')
                        .and_then(|(t, a)| decode_xtext(a).map(|a| (t.to_string(), a)));
                    match parsed {
                        Some(o) => rcpt.orcpt = Some(o),
                        None => {
                            self.refuse_rcpt(Reply::new(501, "5.5.4", "Invalid ORCPT parameter"));
                            return;
                        }
                    }
                }
                _ => {
                    self.refuse_rcpt(Reply::new(
                        555,
                        "5.5.4",
                        format!("Unsupported parameter {key}"),
                    ));
                    return;
                }
            }
        }
        let auth = self.auth.as_ref().map(|a| a.to_string());
        let check = RcptCheck {
            listener: &self.listener.name,
            auth: auth.as_deref(),
            mail_from: &tx.from,
            recipient: &rcpt.address,
            accepted_so_far: tx.rcpts.len(),
        };
        if let Some(r) = self.shared.handoff.check_recipient(&check) {
            info!(session = %self.conn.id, code = r.code, "recipient refused by policy");
            self.refuse_rcpt(r);
            return;
        }
        if let Some(tx) = self.tx.as_mut() {
            tx.rcpts.push(rcpt);
        }
        self.send(Reply::new(250, "2.1.5", "Ok"));
    }

    /// Is there a transaction ready for content? Returns the refusal otherwise.
    fn content_gate(&self) -> Option<Reply> {
        if let Some(r) = self.gate(true) {
            return Some(r);
        }
        match &self.tx {
            None => Some(Reply::new(503, "5.5.1", "Need MAIL command")),
            Some(tx) if tx.rcpts.is_empty() => {
                Some(Reply::new(554, "5.5.1", "No valid recipients"))
            }
            Some(_) => None,
        }
    }

    async fn data(&mut self) -> Result<(), SessionError> {
        if let Some(r) = self.content_gate() {
            return self.error_reply(r);
        }
        if self.tx.as_ref().is_some_and(|t| t.bdat.is_some()) {
            return self.error_reply(Reply::new(503, "5.5.1", "DATA not allowed after BDAT"));
        }
        self.send(Reply::new(354, "", "End data with <CR><LF>.<CR><LF>"));
        let mut reader = DataReader::data(self.shared.max_message_size);
        loop {
            if let Some(n) = reader.feed(&self.rbuf) {
                self.rbuf.drain(..n);
                break;
            }
            self.rbuf.clear();
            self.fill(self.shared.data_timeout, false).await?;
        }
        let result = reader.finish();
        self.finish_message(result).await;
        Ok(())
    }

    async fn bdat(&mut self, size: u64, last: bool) -> Result<(), SessionError> {
        let refusal = self.content_gate();
        if refusal.is_some() && size > self.shared.max_message_size as u64 {
            // Cannot stay in sync without reading it all; not worth it for a refused chunk.
            self.send(Reply::new(
                552,
                "5.3.4",
                "Chunk refused, closing connection",
            ));
            return Err(SessionError::Close);
        }
        let max = self.shared.max_message_size;
        let mut reader = match self.tx.as_mut().and_then(|t| t.bdat.take()) {
            Some(r) => r,
            None => DataReader::bdat(max),
        };
        // Read exactly `size` bytes, whatever we then decide about them.
        let mut remaining = size;
        loop {
            let take = remaining.min(self.rbuf.len() as u64) as usize;
            if refusal.is_none() {
                reader.feed(&self.rbuf[..take]);
            }
            self.rbuf.drain(..take);
            remaining -= take as u64;
            if remaining == 0 {
                break;
            }
            self.fill(self.shared.data_timeout, false).await?;
        }
        if let Some(r) = refusal {
            return self.error_reply(r);
        }
        if let Some(e) = reader.error() {
            // Size or line-ending problems are final for this transaction.
            self.tx = None;
            self.send(e.reply());
            return Ok(());
        }
        if last {
            self.finish_message(reader.finish()).await;
        } else {
            if let Some(tx) = self.tx.as_mut() {
                tx.bdat = Some(reader);
            }
            self.send(Reply::new(250, "2.0.0", format!("{size} octets received")));
        }
        Ok(())
    }

    async fn finish_message(&mut self, content: Result<Vec<u8>, proto::DataError>) {
        let Some(tx) = self.tx.take() else {
            return;
        };
        let content = match content {
            Ok(c) => c,
            Err(e) => {
                let r = e.reply();
                info!(session = %self.conn.id, peer = %self.conn.peer.ip(), code = r.code, reason = %e, "message refused");
                self.send(r);
                return;
            }
        };
        let id = MessageId::new();
        let helo = self.helo.as_ref().map(|h| h.0.clone()).unwrap_or_default();
        // Prepended in place (a memmove, usually within spare capacity): a large message
        // is not held twice.
        let mut full = content;
        full.splice(0..0, self.received_header(id, &helo).into_bytes());
        let envelope = Envelope {
            mail_from: tx.from,
            params: tx.params,
            recipients: tx.rcpts,
            helo,
            peer_ip: self.conn.peer.ip().to_string(),
            listener: self.listener.name.clone(),
            auth: self.auth.clone(),
            tls: self.conn.tls.clone(),
            received_at: crate::types::now_secs(),
            tls_floor: None,
            session: self.conn.id.to_string(),
        };
        let rcpts = envelope.recipients.len();
        let size = full.len();
        let sub = Submission {
            id,
            envelope,
            content: full,
        };
        let reply = match self.shared.handoff.submit(sub).await {
            Ok(r) => r,
            Err(e) => {
                warn!(session = %self.conn.id, msg_id = %id, error = %e, "handoff failed, nothing accepted");
                e.reply()
            }
        };
        info!(session = %self.conn.id, peer = %self.conn.peer.ip(), msg_id = %id, size, rcpts, code = reply.code, "end of data");
        self.send(reply);
    }

    fn received_header(&self, id: MessageId, helo: &str) -> String {
        let esmtp = self.helo.as_ref().map(|h| h.1).unwrap_or(false);
        let proto = match (esmtp, self.tls_active(), self.auth.is_some()) {
            (false, _, _) => "SMTP",
            (true, true, true) => "ESMTPSA",
            (true, true, false) => "ESMTPS",
            (true, false, true) => "ESMTPA",
            (true, false, false) => "ESMTP",
        };
        let tls = self
            .conn
            .tls
            .as_ref()
            .map(|t| format!("\r\n\t(using {} with cipher {})", t.version, t.cipher))
            .unwrap_or_default();
        let date = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc2822)
            .unwrap_or_default();
        // The HELO name is client-chosen: keep only harmless characters.
        let helo: String = helo
            .chars()
            .filter(|c| c.is_ascii_graphic() && !"()\\;".contains(*c))
            .take(255)
            .collect();
        format!(
            "Received: from {helo} ([{ip}])\r\n\tby {host} (phigate) with {proto}{tls}\r\n\tid {id};\r\n\t{date}\r\n",
            ip = self.conn.peer.ip(),
            host = self.shared.hostname,
        )
    }

    async fn auth(
        &mut self,
        mechanism: String,
        initial: Option<String>,
    ) -> Result<(), SessionError> {
        if !self.tls_active() {
            return self.error_reply(Reply::new(
                530,
                "5.7.0",
                "Must issue a STARTTLS command first",
            ));
        }
        if !self.allows(AuthMethod::Password) {
            return self.error_reply(Reply::new(
                502,
                "5.5.1",
                "AUTH not available on this listener",
            ));
        }
        if self.helo.is_none() {
            return self.error_reply(Reply::new(503, "5.5.1", "Send EHLO first"));
        }
        if self.password_authed {
            return self.error_reply(Reply::new(503, "5.5.1", "Already authenticated"));
        }
        if self.tx.is_some() {
            return self.error_reply(Reply::new(
                503,
                "5.5.1",
                "AUTH not allowed during a mail transaction",
            ));
        }
        let ip = self.conn.peer.ip();
        let delay = match self.shared.limiter.check(ip) {
            LimitVerdict::Blocked => {
                warn!(session = %self.conn.id, peer = %ip, "AUTH refused: too many failures");
                self.count_auth("blocked");
                self.send(Reply::new(
                    421,
                    "4.7.0",
                    "Too many authentication failures, try again later",
                ));
                return Err(SessionError::Close);
            }
            LimitVerdict::Allow(d) => d,
        };
        let creds = match mechanism.as_str() {
            "PLAIN" => self.auth_plain(initial).await?,
            "LOGIN" => self.auth_login(initial).await?,
            _ => {
                return self.error_reply(Reply::new(
                    504,
                    "5.5.4",
                    "Unrecognized authentication type",
                ));
            }
        };
        let Some((user, password)) = creds else {
            return Ok(());
        };
        tokio::time::sleep(delay).await;
        let users = self.shared.users.clone();
        let u = user.clone();
        let ok = tokio::task::spawn_blocking(move || users.verify(&u, &password))
            .await
            .unwrap_or(false);
        if ok {
            self.shared.limiter.succeed(ip);
            info!(session = %self.conn.id, peer = %ip, user = %user, "AUTH success");
            self.audit_auth(true, &user);
            self.count_auth("success");
            self.auth = Some(AuthIdentity::Password(user));
            self.password_authed = true;
            self.send(Reply::new(235, "2.7.0", "Authentication successful"));
            return Ok(());
        }
        let blocked = self.shared.limiter.fail(ip);
        warn!(session = %self.conn.id, peer = %ip, user = %user, "AUTH failure");
        self.audit_auth(false, &user);
        self.count_auth("failure");
        if blocked {
            self.send(Reply::new(
                421,
                "4.7.0",
                "Too many authentication failures, try again later",
            ));
            return Err(SessionError::Close);
        }
        self.error_reply(Reply::new(
            535,
            "5.7.8",
            "Authentication credentials invalid",
        ))
    }

    fn count_auth(&self, result: &str) {
        self.shared.metrics.auth(&self.listener.name, result);
    }

    /// Send a RCPT refusal and count it.
    fn refuse_rcpt(&mut self, r: Reply) {
        self.shared.metrics.rcpt_refused(&self.listener.name, &r);
        self.send(r);
    }

    fn audit_auth(&self, ok: bool, user: &str) {
        let ip = self.conn.peer.ip().to_string();
        let ev = crate::audit::AuditEvent::auth(ok, &self.conn.id, &ip, "password", user);
        self.shared.audit.record_now(ev);
    }

    /// Read one SASL response line: `None` when the client cancelled or sent garbage
    /// (the reply has been queued).
    async fn sasl_response(&mut self, prompt: &str) -> Result<Option<Vec<u8>>, SessionError> {
        self.send(Reply::new(334, "", prompt));
        let line = match self.read_line(proto::MAX_AUTH_LINE, false).await? {
            Input::Line(l) => l,
            Input::Bad(e) => {
                self.error_reply(e.reply())?;
                return Ok(None);
            }
        };
        self.decode_sasl(&line)
    }

    fn decode_sasl(&mut self, data: &[u8]) -> Result<Option<Vec<u8>>, SessionError> {
        if data == b"*" {
            self.error_reply(Reply::new(501, "5.0.0", "Authentication cancelled"))?;
            return Ok(None);
        }
        if data == b"=" {
            return Ok(Some(Vec::new()));
        }
        match base64::engine::general_purpose::STANDARD.decode(data) {
            Ok(d) => Ok(Some(d)),
            Err(_) => {
                self.error_reply(Reply::new(501, "5.5.2", "Invalid base64 data"))?;
                Ok(None)
            }
        }
    }

    async fn auth_plain(
        &mut self,
        initial: Option<String>,
    ) -> Result<Option<(String, String)>, SessionError> {
        let data = match initial {
            Some(i) => self.decode_sasl(i.as_bytes())?,
            None => self.sasl_response("").await?,
        };
        let Some(data) = data else { return Ok(None) };
        let mut parts = data.split(|&b| b == 0);
        let (Some(authz), Some(user), Some(pass), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            self.error_reply(Reply::new(501, "5.5.2", "Malformed PLAIN response"))?;
            return Ok(None);
        };
        if !authz.is_empty() && authz != user {
            self.error_reply(Reply::new(
                535,
                "5.7.8",
                "Authorization identity not allowed",
            ))?;
            return Ok(None);
        }
        Ok(utf8_pair(user, pass))
    }

    async fn auth_login(
        &mut self,
        initial: Option<String>,
    ) -> Result<Option<(String, String)>, SessionError> {
        let user = match initial {
            Some(i) => self.decode_sasl(i.as_bytes())?,
            None => self.sasl_response("VXNlcm5hbWU6").await?,
        };
        let Some(user) = user else { return Ok(None) };
        let Some(pass) = self.sasl_response("UGFzc3dvcmQ6").await? else {
            return Ok(None);
        };
        Ok(utf8_pair(&user, &pass))
    }
}

fn utf8_pair(user: &[u8], pass: &[u8]) -> Option<(String, String)> {
    Some((
        String::from_utf8(user.to_vec()).ok()?,
        String::from_utf8(pass.to_vec()).ok()?,
    ))
}

fn parse_notify(v: &str) -> Option<Notify> {
    let mut n = Notify::default();
    for item in v.split(',') {
        match item.to_ascii_uppercase().as_str() {
            "NEVER" => n.never = true,
            "SUCCESS" => n.success = true,
            "FAILURE" => n.failure = true,
            "DELAY" => n.delay = true,
            _ => return None,
        }
    }
    // NEVER excludes the others (RFC 3461 §4.1).
    if n.never && (n.success || n.failure || n.delay) {
        return None;
    }
    Some(n)
}
