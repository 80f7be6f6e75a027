//! RFC 4954 AUTH: the PLAIN (RFC 4616) and LOGIN exchanges as session states. The
//! password check itself is [`Action::Verify`], done by the driver off the async runtime.

use super::{replies, Action, Closing, Credentials, Input, Session, State};
use crate::auth::LimitVerdict;
use crate::config::AuthMethod;
use crate::types::AuthIdentity;
use base64::Engine;
use std::time::Duration;
use tracing::{info, warn};

/// An AUTH exchange waiting for the client's next SASL response.
pub(super) struct Exchange {
    step: Step,
    /// The failure limiter's back-off, decided when AUTH was issued.
    delay: Duration,
}

enum Step {
    /// PLAIN without an initial response: `authzid NUL authcid NUL password`.
    Plain,
    LoginUser,
    LoginPassword(Vec<u8>),
}

impl Session {
    pub(super) fn auth_command(
        &mut self,
        mechanism: String,
        initial: Option<String>,
    ) -> Result<(), Closing> {
        if !self.tls_active() {
            return self.error_reply(replies::NEED_STARTTLS);
        }
        if !self.allows(AuthMethod::Password) {
            return self.error_reply(replies::AUTH_UNAVAILABLE);
        }
        if self.helo.is_none() {
            return self.error_reply(replies::NEED_EHLO);
        }
        if self.password_authed {
            return self.error_reply(replies::ALREADY_AUTHENTICATED);
        }
        if self.tx.is_some() {
            return self.error_reply(replies::AUTH_IN_TRANSACTION);
        }
        let ip = self.conn.peer.ip();
        let delay = match self.shared.limiter.check(ip) {
            LimitVerdict::Blocked => {
                warn!(session = %self.conn.id, peer = %ip, "AUTH refused: too many failures");
                self.shared.count_auth(&self.listener.name, "blocked");
                self.send(replies::AUTH_LOCKED_OUT);
                return Err(Closing);
            }
            LimitVerdict::Allow(d) => d,
        };
        let (step, prompt) = match mechanism.as_str() {
            "PLAIN" => (Step::Plain, replies::PROMPT_PLAIN),
            "LOGIN" => (Step::LoginUser, replies::PROMPT_USERNAME),
            _ => return self.error_reply(replies::UNKNOWN_MECHANISM),
        };
        let x = Exchange { step, delay };
        match initial {
            // RFC 4954 §4: the initial response stands for the first challenge's answer.
            Some(i) => match self.decode_sasl(i.as_bytes())? {
                Some(data) => self.sasl_step(x, data),
                None => Ok(()),
            },
            None => {
                self.prompt(x, prompt);
                Ok(())
            }
        }
    }

    /// A SASL response line (or a malformed one) while in [`State::Sasl`].
    pub(super) fn sasl_input(&mut self, x: Exchange, input: Input) -> Result<(), Closing> {
        let line = match input {
            Input::Line(l) => l,
            Input::Bad(e) => return self.error_reply(e.reply()),
        };
        match self.decode_sasl(&line)? {
            Some(data) => self.sasl_step(x, data),
            None => Ok(()),
        }
    }

    /// The result of [`Action::Verify`].
    pub fn verified(&mut self, ok: bool) {
        let State::Verifying { user } = std::mem::replace(&mut self.state, State::Command) else {
            return;
        };
        let ip = self.conn.peer.ip();
        if ok {
            self.shared.limiter.succeed(ip);
            info!(session = %self.conn.id, peer = %ip, user = %user, "AUTH success");
            self.shared
                .audit_auth(true, &self.conn.id, self.conn.peer, &user);
            self.shared.count_auth(&self.listener.name, "success");
            self.auth = Some(AuthIdentity::Password(user));
            self.password_authed = true;
            self.send(replies::AUTH_OK);
            return;
        }
        let blocked = self.shared.limiter.fail(ip);
        (self.shared.handoff).session_event(crate::pipeline::SessionEvent::AuthFailure {
            ip,
            locked: blocked,
        });
        warn!(session = %self.conn.id, peer = %ip, user = %user, "AUTH failure");
        self.shared
            .audit_auth(false, &self.conn.id, self.conn.peer, &user);
        self.shared.count_auth(&self.listener.name, "failure");
        if blocked {
            self.send(replies::AUTH_LOCKED_OUT);
            self.state = State::Closed;
        } else if self.error_reply(replies::BAD_CREDENTIALS).is_err() {
            self.state = State::Closed;
        }
    }

    fn prompt(&mut self, x: Exchange, challenge: &str) {
        self.send(replies::sasl_prompt(challenge));
        self.state = State::Sasl(x);
    }

    /// One decoded response: ask for the next or finish.
    fn sasl_step(&mut self, x: Exchange, data: Vec<u8>) -> Result<(), Closing> {
        match x.step {
            Step::Plain => {
                let mut parts = data.split(|&b| b == 0);
                let (Some(authz), Some(user), Some(pass), None) =
                    (parts.next(), parts.next(), parts.next(), parts.next())
                else {
                    return self.error_reply(replies::MALFORMED_PLAIN);
                };
                if !authz.is_empty() && authz != user {
                    return self.error_reply(replies::AUTHZ_REFUSED);
                }
                self.credentials(user, pass, x.delay);
            }
            Step::LoginUser => self.prompt(
                Exchange {
                    step: Step::LoginPassword(data),
                    delay: x.delay,
                },
                replies::PROMPT_PASSWORD,
            ),
            Step::LoginPassword(user) => self.credentials(&user, &data, x.delay),
        }
        Ok(())
    }

    /// Queue the password check. Credentials that are not UTF-8 end the exchange
    /// without a reply (unchanged from before the sans-I/O split).
    fn credentials(&mut self, user: &[u8], pass: &[u8], delay: Duration) {
        let (Ok(user), Ok(password)) = (std::str::from_utf8(user), std::str::from_utf8(pass))
        else {
            return;
        };
        self.state = State::Verifying {
            user: user.to_string(),
        };
        self.queued = Some(Action::Verify(Credentials {
            user: user.to_string(),
            password: password.to_string(),
            delay,
        }));
    }

    /// `None` when the client cancelled or sent garbage (the reply has been queued).
    fn decode_sasl(&mut self, data: &[u8]) -> Result<Option<Vec<u8>>, Closing> {
        if data == b"*" {
            self.error_reply(replies::AUTH_CANCELLED)?;
            return Ok(None);
        }
        if data == b"=" {
            return Ok(Some(Vec::new()));
        }
        match base64::engine::general_purpose::STANDARD.decode(data) {
            Ok(d) => Ok(Some(d)),
            Err(_) => {
                self.error_reply(replies::BAD_BASE64)?;
                Ok(None)
            }
        }
    }
}
