//! Runs a [`Session`] over a stream: reads, writes, timeouts, shutdown, the pipeline
//! hand-off and the password check. Generic over the stream so it runs the same over
//! plain TCP, TLS, or an in-memory pipe in tests. All protocol decisions are the
//! session's.

use super::{Action, ConnInfo, ListenerInfo, Session, SessionEnd, Shared, Wait};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::debug;

#[derive(Debug, thiserror::Error)]
enum DriverError {
    #[error("connection closed")]
    Eof,
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

enum Stop {
    Close,
    StartTls,
}

/// Run one session. `greet` is false after STARTTLS (the greeting was already sent).
pub async fn run<S: AsyncRead + AsyncWrite + Unpin + Send>(
    io: S,
    shared: Arc<Shared>,
    listener: Arc<ListenerInfo>,
    conn: ConnInfo,
    greet: bool,
) -> SessionEnd<S> {
    let id = conn.id.clone();
    let mut session = Session::new(shared.clone(), listener, conn);
    if greet {
        session.greet();
    }
    let mut d = Driver {
        io,
        session,
        shared,
    };
    let end = d.drive().await;
    let _ = d.flush().await;
    match end {
        Ok(Stop::StartTls) => SessionEnd::StartTls(d.io),
        Ok(Stop::Close) | Err(DriverError::Eof) => {
            let _ = d.io.shutdown().await;
            SessionEnd::Closed
        }
        Err(DriverError::Io(e)) => {
            debug!(session = %id, error = %e, "session I/O error");
            SessionEnd::Closed
        }
    }
}

struct Driver<S> {
    io: S,
    session: Session,
    shared: Arc<Shared>,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Driver<S> {
    async fn drive(&mut self) -> Result<Stop, DriverError> {
        loop {
            match self.session.next_action() {
                Action::Read(wait) => self.fill(wait).await?,
                Action::Submit(sub) => {
                    let result = self.shared.handoff.submit(*sub).await;
                    self.session.submitted(result);
                }
                Action::Verify(c) => {
                    tokio::time::sleep(c.delay).await;
                    let users = self.shared.users.clone();
                    let ok =
                        tokio::task::spawn_blocking(move || users.verify(&c.user, &c.password))
                            .await
                            .unwrap_or(false);
                    self.session.verified(ok);
                }
                Action::StartTls => return Ok(Stop::StartTls),
                Action::Close => return Ok(Stop::Close),
            }
        }
    }

    async fn flush(&mut self) -> Result<(), DriverError> {
        let out = self.session.output();
        if !out.is_empty() {
            self.io.write_all(out).await?;
            self.io.flush().await?;
            self.session.output_sent();
        }
        Ok(())
    }

    /// Send pending replies, then read more (so pipelined commands get their replies in
    /// one batch, RFC 2920).
    async fn fill(&mut self, wait: Wait) -> Result<(), DriverError> {
        self.flush().await?;
        let mut chunk = [0u8; 16 * 1024];
        let read = tokio::time::timeout(wait.timeout, self.io.read(&mut chunk));
        let n = if wait.shutdown {
            tokio::select! {
                r = read => r,
                _ = self.shared.shutdown.cancelled() => {
                    self.session.shutting_down();
                    return Ok(());
                }
            }
        } else {
            read.await
        };
        match n {
            Err(_) => {
                self.session.timed_out();
                Ok(())
            }
            Ok(Ok(0)) => Err(DriverError::Eof),
            Ok(Ok(n)) => {
                self.session.receive(&chunk[..n]);
                Ok(())
            }
            Ok(Err(e)) => Err(e.into()),
        }
    }
}
