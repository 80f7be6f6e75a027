//! One SMTP server session as an I/O-free state machine, and the driver that runs it.
//!
//! [`Session`] takes the bytes the client sent ([`Session::receive`]) and answers with
//! reply bytes ([`Session::output`]) and the next thing the driver must do
//! ([`Session::next_action`]): read more, hand a message to the pipeline, verify a
//! password, start TLS or close. It never touches a socket, a timer or a task, so every
//! transition is unit-tested directly and fuzzed (`fuzz/fuzz_targets/smtp_session.rs`).
//! [`driver::run`] does the reads, writes, timeouts and shutdown for it.
//!
//! Replies are buffered until the session needs input, so pipelined commands get their
//! replies in one batch (RFC 2920).
//!
//! STARTTLS ends a session: the driver returns the raw stream and the listener starts a
//! fresh session on the TLS stream. Everything learned before TLS (EHLO, MAIL, RCPT, AUTH
//! and any pipelined bytes) is dropped with the old session, as RFC 3207 §4.2 requires
//! and CVE-2011-0411 shows is necessary.

mod auth;
pub mod driver;
mod params;
pub mod replies;
#[cfg(test)]
mod tests;
mod transaction;

pub use driver::run;

use crate::auth::{client_cert_allowed, FailureLimiter, Users};
use crate::config::{AuthMethod, Cidr, TlsMode};
use crate::pipeline::{Handoff, PipelineError, Submission};
use crate::smtp::proto::{
    self, format_reply, parse_command, scan_line, Command, DataReader, LineScan, ProtoError,
};
use crate::tls::server::ClientCert;
use crate::types::{AuthIdentity, MailParams, MessageId, Recipient, Reply, TlsInfo};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Bad commands tolerated before the session is dropped.
const MAX_ERRORS: u32 = 20;

/// Settings and services shared by all sessions. Rebuilt on reload and swapped as a
/// whole: a session keeps the snapshot it started with.
pub struct Shared {
    pub hostname: String,
    pub max_message_size: usize,
    /// Longest DATA/BDAT line accepted (`[server] max_line_length`).
    pub max_line_length: usize,
    pub max_recipients: usize,
    pub command_timeout: Duration,
    pub data_timeout: Duration,
    pub users: Arc<Users>,
    pub limiter: Arc<FailureLimiter>,
    pub allow_networks: Vec<Cidr>,
    pub client_cert_allow: Vec<String>,
    pub handoff: Arc<dyn Handoff>,
    /// Cancelled when the server is shutting down.
    pub shutdown: CancellationToken,
    /// The audit trail (AUTH results).
    pub audit: Arc<crate::audit::Audit>,
    /// Counters for AUTH results and RCPT refusals.
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// Every audit record and metric a session produces goes through here.
impl Shared {
    fn audit_auth(&self, ok: bool, session: &str, peer: SocketAddr, user: &str) {
        let ip = peer.ip().to_string();
        let ev = crate::audit::AuditEvent::auth(ok, session, &ip, "password", user);
        self.audit.record_now(ev);
    }

    fn count_auth(&self, listener: &str, result: &str) {
        self.metrics.auth(listener, result);
    }

    fn count_rcpt_refused(&self, listener: &str, r: &Reply) {
        self.metrics.rcpt_refused(listener, r);
    }
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

/// What the driver must do next.
#[derive(Debug)]
pub enum Action {
    /// Send [`Session::output`], then read and pass the bytes to [`Session::receive`]
    /// (or call [`Session::timed_out`] / [`Session::shutting_down`]).
    Read(Wait),
    /// Hand the message to the pipeline and pass its answer to [`Session::submitted`].
    Submit(Box<Submission>),
    /// Wait `delay`, check the password and pass the result to [`Session::verified`].
    Verify(Credentials),
    /// Send the output (it ends with `220`), then start TLS on the raw stream.
    StartTls,
    /// Send the output, then close.
    Close,
}

/// How long a read may take, and whether a shutdown interrupts it (only between
/// transactions, so a message being received is not cut off).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wait {
    pub timeout: Duration,
    pub shutdown: bool,
}

/// A completed AUTH exchange, waiting for the (slow, argon2id) password check.
pub struct Credentials {
    pub user: String,
    pub password: String,
    /// Failure-limiter back-off to wait before checking.
    pub delay: Duration,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("delay", &self.delay)
            .finish_non_exhaustive()
    }
}

/// An error reply took the session over [`MAX_ERRORS`]: it must close.
#[derive(Debug)]
struct Closing;

/// One line (without CRLF), or what was wrong with it.
enum Input {
    Line(Vec<u8>),
    Bad(ProtoError),
}

struct Transaction {
    from: String,
    params: MailParams,
    rcpts: Vec<Recipient>,
    bdat: Option<DataReader>,
}

/// A BDAT chunk being read: exactly `remaining` more bytes, whatever is decided about them.
struct Chunk {
    size: u64,
    last: bool,
    remaining: u64,
    /// Why the chunk will be refused once read; it is not fed to the reader.
    refusal: Option<Reply>,
    reader: DataReader,
}

enum State {
    /// Waiting for a command line.
    Command,
    /// Waiting for a SASL response line.
    Sasl(auth::Exchange),
    /// Reading DATA content up to the end-of-data line.
    Data(DataReader),
    Bdat(Chunk),
    /// [`Action::Submit`] was returned; waiting for [`Session::submitted`].
    Submitting {
        id: MessageId,
        size: usize,
        rcpts: usize,
    },
    /// [`Action::Verify`] was returned; waiting for [`Session::verified`].
    Verifying {
        user: String,
    },
    StartTls,
    Closed,
}

pub struct Session {
    shared: Arc<Shared>,
    listener: Arc<ListenerInfo>,
    conn: ConnInfo,
    rbuf: Vec<u8>,
    out: Vec<u8>,
    /// Discarding the rest of an over-long line.
    skipping: bool,
    state: State,
    /// An action to return before looking at the state again.
    queued: Option<Action>,
    helo: Option<(String, bool)>,
    auth: Option<AuthIdentity>,
    password_authed: bool,
    tx: Option<Transaction>,
    errors: u32,
}

impl Session {
    pub fn new(shared: Arc<Shared>, listener: Arc<ListenerInfo>, conn: ConnInfo) -> Self {
        let mut s = Session {
            shared,
            listener,
            conn,
            rbuf: Vec::with_capacity(4096),
            out: Vec::with_capacity(1024),
            skipping: false,
            state: State::Command,
            queued: None,
            helo: None,
            auth: None,
            password_authed: false,
            tx: None,
            errors: 0,
        };
        s.auth = s.implicit_authorisation();
        s
    }

    /// Queue the `220` greeting (not after STARTTLS: it was sent before).
    pub fn greet(&mut self) {
        self.send(replies::greeting(&self.shared.hostname));
    }

    /// Bytes from the client.
    pub fn receive(&mut self, bytes: &[u8]) {
        self.rbuf.extend_from_slice(bytes);
    }

    /// Replies not yet sent.
    pub fn output(&self) -> &[u8] {
        &self.out
    }

    /// The driver has written [`Session::output`].
    pub fn output_sent(&mut self) {
        self.out.clear();
    }

    /// Who the client is authorised as, if anyone.
    pub fn authorised(&self) -> Option<&AuthIdentity> {
        self.auth.as_ref()
    }

    /// The read for [`Action::Read`] timed out.
    pub fn timed_out(&mut self) {
        info!(session = %self.conn.id, peer = %self.conn.peer.ip(), "timeout");
        self.send(replies::timeout(&self.shared.hostname));
        self.state = State::Closed;
    }

    /// The server is shutting down (only asked when [`Wait::shutdown`] was set).
    pub fn shutting_down(&mut self) {
        self.send(replies::shutting_down(&self.shared.hostname));
        self.state = State::Closed;
    }

    /// Process buffered input until the session needs the driver.
    pub fn next_action(&mut self) -> Action {
        loop {
            if let Some(a) = self.queued.take() {
                return a;
            }
            let flow = match std::mem::replace(&mut self.state, State::Closed) {
                State::Command => {
                    self.state = State::Command;
                    match self.take_line(proto::MAX_COMMAND_LINE) {
                        None => return Action::Read(self.command_wait()),
                        Some(Input::Bad(e)) => self.error_reply(e.reply()),
                        Some(Input::Line(l)) => match parse_command(&l) {
                            Ok(c) => self.command(c),
                            Err(e) => self.error_reply(e.reply()),
                        },
                    }
                }
                State::Sasl(x) => match self.take_line(proto::MAX_AUTH_LINE) {
                    None => {
                        self.state = State::Sasl(x);
                        return Action::Read(self.line_wait());
                    }
                    Some(input) => {
                        self.state = State::Command;
                        self.sasl_input(x, input)
                    }
                },
                State::Data(mut reader) => match reader.feed(&self.rbuf) {
                    Some(n) => {
                        self.rbuf.drain(..n);
                        self.state = State::Command;
                        self.finish_message(reader.finish());
                        Ok(())
                    }
                    None => {
                        self.rbuf.clear();
                        self.state = State::Data(reader);
                        return Action::Read(self.data_wait());
                    }
                },
                State::Bdat(mut chunk) => {
                    let take = chunk.remaining.min(self.rbuf.len() as u64) as usize;
                    if chunk.refusal.is_none() {
                        chunk.reader.feed(&self.rbuf[..take]);
                    }
                    self.rbuf.drain(..take);
                    chunk.remaining -= take as u64;
                    if chunk.remaining > 0 {
                        self.state = State::Bdat(chunk);
                        return Action::Read(self.data_wait());
                    }
                    self.state = State::Command;
                    self.chunk_read(chunk)
                }
                s @ (State::Submitting { .. } | State::Verifying { .. }) => {
                    // The driver must answer first; asking again is a driver bug.
                    warn!(session = %self.conn.id, "session polled while waiting for the driver");
                    drop(s);
                    return Action::Close;
                }
                State::StartTls => {
                    self.state = State::StartTls;
                    return Action::StartTls;
                }
                State::Closed => return Action::Close,
            };
            if flow.is_err() {
                self.state = State::Closed;
            }
        }
    }

    /// The pipeline's answer to [`Action::Submit`].
    pub fn submitted(&mut self, result: Result<Reply, PipelineError>) {
        let State::Submitting { id, size, rcpts } = self.state else {
            return;
        };
        self.state = State::Command;
        let reply = match result {
            Ok(r) => r,
            Err(e) => {
                warn!(session = %self.conn.id, msg_id = %id, error = %e, "handoff failed, nothing accepted");
                e.reply()
            }
        };
        info!(session = %self.conn.id, peer = %self.conn.peer.ip(), msg_id = %id, size, rcpts, code = reply.code, "end of data");
        self.send(reply);
    }

    fn command_wait(&self) -> Wait {
        Wait {
            timeout: self.shared.command_timeout,
            shutdown: self.tx.is_none() && !self.skipping,
        }
    }

    fn line_wait(&self) -> Wait {
        Wait {
            timeout: self.shared.command_timeout,
            shutdown: false,
        }
    }

    fn data_wait(&self) -> Wait {
        Wait {
            timeout: self.shared.data_timeout,
            shutdown: false,
        }
    }

    /// The next line of at most `limit` bytes, or `None` when more input is needed.
    fn take_line(&mut self, limit: usize) -> Option<Input> {
        if self.skipping {
            // Skip to the end of the over-long line so the next one parses cleanly.
            let Some(p) = self.rbuf.iter().position(|&b| b == b'\n') else {
                self.rbuf.clear();
                return None;
            };
            self.rbuf.drain(..=p);
            self.skipping = false;
            return Some(Input::Bad(ProtoError::LineTooLong));
        }
        match scan_line(&self.rbuf, limit) {
            LineScan::Line(n) => {
                let line = self.rbuf[..n - 2].to_vec();
                self.rbuf.drain(..n);
                Some(Input::Line(line))
            }
            LineScan::Bad { consumed, error } => {
                self.rbuf.drain(..consumed);
                Some(Input::Bad(error))
            }
            LineScan::TooLong => {
                self.rbuf.clear();
                self.skipping = true;
                None
            }
            LineScan::Incomplete => None,
        }
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

    fn send(&mut self, r: impl Into<Reply>) {
        let r = r.into();
        self.out
            .extend_from_slice(&format_reply(r.code, &r.enhanced, &[&r.text]));
    }

    /// Queue an error reply; too many of them end the session.
    fn error_reply(&mut self, r: impl Into<Reply>) -> Result<(), Closing> {
        self.errors += 1;
        self.send(r);
        if self.errors >= MAX_ERRORS {
            self.send(replies::TOO_MANY_ERRORS);
            return Err(Closing);
        }
        Ok(())
    }

    fn command(&mut self, cmd: Command) -> Result<(), Closing> {
        match cmd {
            Command::Ehlo(d) => self.ehlo(d, true),
            Command::Helo(d) => self.ehlo(d, false),
            Command::Mail { from, params } => self.mail(from, params),
            Command::Rcpt { to, params } => self.rcpt(to, params),
            Command::Data => return self.data(),
            Command::Bdat { size, last } => return self.bdat(size, last),
            Command::Rset => {
                self.tx = None;
                self.send(replies::OK);
            }
            Command::Noop => self.send(replies::OK),
            Command::Quit => {
                self.send(replies::BYE);
                self.state = State::Closed;
            }
            Command::Vrfy => self.send(replies::VRFY),
            Command::Expn => self.send(replies::EXPN),
            Command::Help => self.send(replies::HELP),
            Command::StartTls => {
                if self.listener.mode == TlsMode::Implicit || self.tls_active() {
                    return self.error_reply(replies::TLS_ACTIVE);
                }
                self.send(replies::STARTTLS_READY);
                if !self.rbuf.is_empty() {
                    // Plaintext pipelined after STARTTLS is never executed.
                    warn!(session = %self.conn.id, peer = %self.conn.peer.ip(), bytes = self.rbuf.len(), "discarding data pipelined after STARTTLS");
                    self.rbuf.clear();
                }
                self.state = State::StartTls;
            }
            Command::Auth { mechanism, initial } => return self.auth_command(mechanism, initial),
        }
        Ok(())
    }

    /// Common gate for commands that carry mail: TLS first, then order.
    fn gate(&self, need_helo: bool) -> Option<Reply> {
        if !self.tls_active() {
            return Some(replies::NEED_STARTTLS.into());
        }
        if need_helo && self.helo.is_none() {
            return Some(replies::NEED_EHLO.into());
        }
        None
    }

    fn ehlo(&mut self, domain: String, esmtp: bool) {
        self.tx = None;
        self.helo = Some((domain, esmtp));
        let host = &self.shared.hostname;
        if !esmtp {
            self.send(replies::helo(host));
            return;
        }
        let mut lines = vec![
            replies::ehlo_greeting(host, self.conn.peer.ip()),
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
        self.out.extend_from_slice(&format_reply(250, "", &refs));
    }
}
