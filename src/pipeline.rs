//! What happens to a message between the end of DATA and the `250`: policy, then the
//! durable handoff. The SMTP session only sees the [`Handoff`] trait.

use crate::queue::Queue;
use crate::spool::{RecipientState, SpoolError};
use crate::types::{now_secs, Envelope, MessageId, Reply};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

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
    #[error("spool: {0}")]
    Spool(#[from] SpoolError),
}

impl PipelineError {
    /// The one place pipeline failures become SMTP replies. Nothing was accepted.
    pub fn reply(&self) -> Reply {
        match self {
            PipelineError::Spool(SpoolError::Io(_)) => {
                Reply::new(452, "4.3.1", "Insufficient system storage, try again later")
            }
            PipelineError::Spool(_) => {
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

/// The pipeline used by the server: encrypt and spool durably, then wake the queue.
pub struct Pipeline {
    queue: Arc<Queue>,
}

impl Pipeline {
    pub fn new(queue: Arc<Queue>) -> Self {
        Pipeline { queue }
    }
}

impl Handoff for Pipeline {
    fn check_recipient(&self, _check: &RcptCheck<'_>) -> Option<Reply> {
        None
    }

    fn submit(&self, sub: Submission) -> BoxFuture<'_, Result<Reply, PipelineError>> {
        Box::pin(async move {
            let id = sub.id;
            self.queue
                .spool()
                .enqueue(
                    id,
                    &sub.envelope,
                    &sub.content,
                    RecipientState::queued(now_secs()),
                )
                .await?;
            self.queue.wake();
            Ok(Reply::new(250, "2.0.0", format!("Ok: queued as {id}")))
        })
    }
}
