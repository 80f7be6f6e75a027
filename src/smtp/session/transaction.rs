//! The mail transaction (RFC 5321 §3.3, RFC 3030 BDAT): MAIL, RCPT, DATA and BDAT, and
//! the hand-over of a finished message as [`Action::Submit`].

use super::{params, replies, Action, Chunk, Closing, Session, State, Transaction};
use crate::pipeline::{RcptCheck, SenderCheck, SenderVerdict, Submission};
use crate::smtp::proto::{DataError, DataReader, Param};
use crate::types::{Envelope, MessageId, Recipient, Reply};
use tracing::info;

impl Session {
    pub(super) fn mail(&mut self, from: String, params: Vec<Param>) {
        if let Some(r) = self.gate(true) {
            // Counted, but (as before the sans-I/O split) never closes the session.
            let _ = self.error_reply(r);
            return;
        }
        if self.tx.is_some() {
            self.send(replies::NESTED_MAIL);
            return;
        }
        if self.auth.is_none() {
            info!(session = %self.conn.id, peer = %self.conn.peer.ip(), code = 530, "MAIL refused: not authorised");
            self.send(replies::AUTH_REQUIRED);
            return;
        }
        if let Some(r) = self.sender_refusal() {
            info!(session = %self.conn.id, peer = %self.conn.peer.ip(), code = r.code, "MAIL refused");
            self.send(r);
            return;
        }
        let esmtp = self.helo.as_ref().map(|h| h.1).unwrap_or(false);
        let parsed = params::mail_params(
            &params,
            esmtp,
            self.tls_active(),
            self.shared.max_message_size,
        );
        match parsed {
            Ok(p) if !p.smtputf8 && !from.is_ascii() => self.send(replies::NEED_SMTPUTF8),
            Ok(p) => {
                self.tx = Some(Transaction {
                    from,
                    params: p,
                    rcpts: Vec::new(),
                    bdat: None,
                });
                self.send(replies::MAIL_OK);
            }
            Err(r) => self.send(r),
        }
    }

    pub(super) fn rcpt(&mut self, to: String, params: Vec<Param>) {
        if let Some(r) = self.gate(true) {
            self.shared.count_rcpt_refused(&self.listener.name, &r);
            // Counted, but (as before the sans-I/O split) never closes the session.
            let _ = self.error_reply(r);
            return;
        }
        let Some(tx) = self.tx.as_ref() else {
            self.refuse_rcpt(replies::NEED_MAIL_FOR_RCPT.into());
            return;
        };
        if tx.rcpts.len() >= self.shared.max_recipients {
            self.refuse_rcpt(replies::TOO_MANY_RECIPIENTS.into());
            return;
        }
        if !tx.params.smtputf8 && !to.is_ascii() {
            self.refuse_rcpt(replies::NEED_SMTPUTF8.into());
            return;
        }
        let mut rcpt = Recipient::new(to);
        if let Err(r) = params::rcpt_params(&mut rcpt, &params) {
            self.refuse_rcpt(r);
            return;
        }
        let auth = self.auth.as_ref().map(|a| a.to_string());
        let check = RcptCheck {
            listener: &self.listener.name,
            auth: auth.as_deref(),
            mail_from: &tx.from,
            recipient: &rcpt.address,
            accepted_so_far: tx.rcpts.len(),
            accepted: &tx.rcpts,
        };
        if let Some(r) = self.shared.handoff.check_recipient(&check) {
            info!(session = %self.conn.id, code = r.code, "recipient refused by policy");
            self.refuse_rcpt(r);
            return;
        }
        if let Some(tx) = self.tx.as_mut() {
            tx.rcpts.push(rcpt);
        }
        self.send(replies::RCPT_OK);
    }

    /// Limits, freezes and revocation, asked of the pipeline before MAIL. A revoked
    /// credential also ends the session's authorisation.
    fn sender_refusal(&mut self) -> Option<Reply> {
        let auth = self.auth.as_ref()?;
        let cert = self
            .conn
            .client_cert
            .as_ref()
            .map(|c| (c.cn.as_deref(), c.sha256.as_str()));
        let check = SenderCheck {
            identity: auth,
            peer: self.conn.peer.ip(),
            client_cert: cert,
        };
        match self.shared.handoff.check_sender(&check) {
            SenderVerdict::Accept => None,
            SenderVerdict::Refuse(r) => Some(r),
            SenderVerdict::Revoked(r) => {
                self.auth = None;
                self.password_authed = false;
                Some(r)
            }
        }
    }

    /// Send a RCPT refusal and count it.
    fn refuse_rcpt(&mut self, r: Reply) {
        self.shared.count_rcpt_refused(&self.listener.name, &r);
        self.send(r);
    }

    /// Is there a transaction ready for content? Returns the refusal otherwise.
    fn content_gate(&self) -> Option<Reply> {
        if let Some(r) = self.gate(true) {
            return Some(r);
        }
        match &self.tx {
            None => Some(replies::NEED_MAIL.into()),
            Some(tx) if tx.rcpts.is_empty() => Some(replies::NO_RECIPIENTS.into()),
            Some(_) => None,
        }
    }

    pub(super) fn data(&mut self) -> Result<(), Closing> {
        if let Some(r) = self.content_gate() {
            return self.error_reply(r);
        }
        if self.tx.as_ref().is_some_and(|t| t.bdat.is_some()) {
            return self.error_reply(replies::DATA_AFTER_BDAT);
        }
        self.send(replies::START_DATA);
        self.state = State::Data(
            DataReader::data(self.shared.max_message_size)
                .with_max_line(self.shared.max_line_length),
        );
        Ok(())
    }

    pub(super) fn bdat(&mut self, size: u64, last: bool) -> Result<(), Closing> {
        let refusal = self.content_gate();
        if refusal.is_some() && size > self.shared.max_message_size as u64 {
            // Cannot stay in sync without reading it all; not worth it for a refused chunk.
            self.send(replies::CHUNK_REFUSED);
            return Err(Closing);
        }
        let max = self.shared.max_message_size;
        let reader = match self.tx.as_mut().and_then(|t| t.bdat.take()) {
            Some(r) => r,
            None => DataReader::bdat(max).with_max_line(self.shared.max_line_length),
        };
        self.state = State::Bdat(Chunk {
            size,
            last,
            remaining: size,
            refusal,
            reader,
        });
        Ok(())
    }

    /// A whole BDAT chunk has been read.
    pub(super) fn chunk_read(&mut self, chunk: Chunk) -> Result<(), Closing> {
        if let Some(r) = chunk.refusal {
            return self.error_reply(r);
        }
        if let Some(e) = chunk.reader.error() {
            // Size or line-ending problems are final for this transaction.
            self.tx = None;
            self.send(e.reply());
            return Ok(());
        }
        if chunk.last {
            self.finish_message(chunk.reader.finish());
        } else {
            if let Some(tx) = self.tx.as_mut() {
                tx.bdat = Some(chunk.reader);
            }
            self.send(replies::chunk_received(chunk.size));
        }
        Ok(())
    }

    /// The content is complete: refuse it or queue [`Action::Submit`].
    pub(super) fn finish_message(&mut self, content: Result<Vec<u8>, DataError>) {
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
        self.state = State::Submitting {
            id,
            size: full.len(),
            rcpts: envelope.recipients.len(),
        };
        self.queued = Some(Action::Submit(Box::new(Submission {
            id,
            envelope,
            content: full,
            api: None,
        })));
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
}
