//! What happens to a message between the end of DATA and the `250`: policy, then the
//! durable handoff. The SMTP session only sees the [`Handoff`] trait.

use crate::sandbox::{Sandbox, SandboxError};
use crate::types::{Envelope, MessageId, Reply};
use std::future::Future;
use std::pin::Pin;

/// A complete message as received, with the Received header already prepended.
#[derive(Debug)]
pub struct Submission {
    pub id: MessageId,
    pub envelope: Envelope,
    pub content: Vec<u8>,
}

/// Facts about a recipient offered at RCPT time, for recipient-only policy.
#[derive(Debug)]
pub struct RcptCheck<'a> {
    pub listener: &'a str,
    pub auth: Option<&'a str>,
    pub mail_from: &'a str,
    pub recipient: &'a str,
    pub accepted_so_far: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("storage: {0}")]
    Storage(#[from] SandboxError),
    #[error("internal: {0}")]
    Internal(String),
}

impl PipelineError {
    /// The one place pipeline failures become SMTP replies. Nothing was accepted.
    pub fn reply(&self) -> Reply {
        match self {
            PipelineError::Storage(_) => {
                Reply::new(452, "4.3.1", "Insufficient system storage, try again later")
            }
            PipelineError::Internal(_) => {
                Reply::new(451, "4.3.0", "Local error in processing, try again later")
            }
        }
    }
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where the session hands accepted messages. `submit` resolves only once the
/// message is durable: its `Ok` is what turns into `250`.
pub trait Handoff: Send + Sync + 'static {
    /// A reply refusing this recipient, or `None` to accept it.
    fn check_recipient(&self, check: &RcptCheck<'_>) -> Option<Reply>;
    fn submit(&self, sub: Submission) -> BoxFuture<'_, Result<Reply, PipelineError>>;
}

/// The pipeline used by the server: sandbox delivery for now.
pub struct Pipeline {
    sandbox: Sandbox,
}

impl Pipeline {
    pub fn sandbox(sandbox: Sandbox) -> Self {
        Pipeline { sandbox }
    }
}

impl Handoff for Pipeline {
    fn check_recipient(&self, _check: &RcptCheck<'_>) -> Option<Reply> {
        None
    }

    fn submit(&self, sub: Submission) -> BoxFuture<'_, Result<Reply, PipelineError>> {
        Box::pin(async move {
            let sandbox = self.sandbox.clone();
            let id = sub.id;
            tokio::task::spawn_blocking(move || sandbox.write(sub.id, &sub.envelope, &sub.content))
                .await
                .map_err(|e| PipelineError::Internal(e.to_string()))??;
            Ok(Reply::new(250, "2.0.0", format!("Ok: queued as {id}")))
        })
    }
}
