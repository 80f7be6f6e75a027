//! What the queue hands to a next hop: one [`Job`] (a message and the recipients due now)
//! given to a [`Transport`] — MX delivery, a smarthost, or the sandbox directory.

use crate::notice::Notice;
use crate::sandbox::Sandbox;
use crate::types::{AttemptResult, Envelope, HopInfo, MessageId, RcptOutcome, Reply};
use std::future::Future;
use std::pin::Pin;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One delivery attempt of one message: the recipients at `rcpts` (indices into
/// `env.recipients`). The message's own TLS floor travels in `env.tls_floor`.
#[derive(Clone, Copy)]
pub struct Job<'a> {
    pub id: MessageId,
    pub env: &'a Envelope,
    pub content: &'a [u8],
    pub rcpts: &'a [usize],
}

impl<'a> Job<'a> {
    /// The same message for a subset of its recipients.
    pub fn with_rcpts(self, rcpts: &'a [usize]) -> Job<'a> {
        Job { rcpts, ..self }
    }

    /// The same result for every recipient of the job.
    pub fn all(&self, result: AttemptResult, hop: Option<HopInfo>) -> Vec<RcptOutcome> {
        same_for_all(self.rcpts, result, hop)
    }
}

/// One outcome per recipient index, all the same.
pub(crate) fn same_for_all(
    rcpts: &[usize],
    result: AttemptResult,
    hop: Option<HopInfo>,
) -> Vec<RcptOutcome> {
    rcpts
        .iter()
        .map(|&index| RcptOutcome {
            index,
            result: result.clone(),
            hop: hop.clone(),
        })
        .collect()
}

/// One portal notification or code mail for its recipients: the only job whose
/// content may travel without TLS, because it can only hold a [`Notice`].
#[derive(Clone, Copy)]
pub struct NoticeJob<'a> {
    pub id: MessageId,
    pub env: &'a Envelope,
    pub notice: &'a Notice,
    pub rcpts: &'a [usize],
}

impl<'a> NoticeJob<'a> {
    /// The notice as an ordinary message job (TLS as for any message).
    pub fn as_message(&self) -> Job<'a> {
        Job {
            id: self.id,
            env: self.env,
            content: self.notice.as_bytes(),
            rcpts: self.rcpts,
        }
    }
}

/// Something that can carry a message to its next hop. Must return one outcome per
/// index in `job.rcpts`.
pub trait Transport: Send + Sync + 'static {
    fn deliver<'a>(&'a self, job: Job<'a>) -> BoxFuture<'a, Vec<RcptOutcome>>;

    /// A notice; by default delivered like any message.
    fn deliver_notice<'a>(&'a self, job: NoticeJob<'a>) -> BoxFuture<'a, Vec<RcptOutcome>> {
        self.deliver(job.as_message())
    }
}

/// Sandbox transport: writes `<ID>.eml` + envelope and calls it delivered.
pub struct SandboxTransport {
    sandbox: Sandbox,
}

impl SandboxTransport {
    pub fn new(sandbox: Sandbox) -> Self {
        SandboxTransport { sandbox }
    }
}

impl Transport for SandboxTransport {
    fn deliver<'a>(&'a self, job: Job<'a>) -> BoxFuture<'a, Vec<RcptOutcome>> {
        Box::pin(async move {
            let sandbox = self.sandbox.clone();
            let (id, env, data) = (job.id, job.env.clone(), job.content.to_vec());
            let res = tokio::task::spawn_blocking(move || sandbox.write(id, &env, &data)).await;
            let result = match res {
                Ok(Ok(())) => {
                    AttemptResult::Delivered(Reply::new(250, "2.0.0", "written to sandbox"))
                }
                Ok(Err(e)) => AttemptResult::Transient(Reply::new(
                    451,
                    "4.3.0",
                    format!("sandbox write failed: {e}"),
                )),
                Err(e) => AttemptResult::Transient(Reply::new(
                    451,
                    "4.3.0",
                    format!("sandbox task failed: {e}"),
                )),
            };
            let hop = HopInfo {
                method: "sandbox".into(),
                ..HopInfo::default()
            };
            job.all(result, Some(hop))
        })
    }
}

/// Mail submitted with a sandbox API key goes to the sandbox whatever the delivery
/// mode (a test environment for integrators); everything else to `real`.
/// DKIM-signs each message (when a `[[dkim]]` key covers its From domain) right before
/// it leaves, after every change phigate makes to it, so the signature verifies at the
/// receiver. Outermost transport: sandbox copies are signed like real deliveries.
pub struct DkimSign {
    pub keys: std::sync::Arc<crate::dkim::Dkim>,
    pub inner: std::sync::Arc<dyn Transport>,
}

impl Transport for DkimSign {
    fn deliver<'a>(&'a self, job: Job<'a>) -> BoxFuture<'a, Vec<RcptOutcome>> {
        Box::pin(async move {
            match self.keys.sign(job.content) {
                Some(signed) => {
                    let job = Job {
                        content: &signed,
                        ..job
                    };
                    self.inner.deliver(job).await
                }
                None => self.inner.deliver(job).await,
            }
        })
    }

    fn deliver_notice<'a>(&'a self, job: NoticeJob<'a>) -> BoxFuture<'a, Vec<RcptOutcome>> {
        Box::pin(async move {
            let signed = self.keys.sign(job.notice.as_bytes());
            match signed.and_then(|s| job.notice.with_prefix(s)) {
                Some(notice) => {
                    let job = NoticeJob {
                        notice: &notice,
                        ..job
                    };
                    self.inner.deliver_notice(job).await
                }
                None => self.inner.deliver_notice(job).await,
            }
        })
    }
}

pub struct SandboxKeys {
    pub real: std::sync::Arc<dyn Transport>,
    pub sandbox: SandboxTransport,
}

impl Transport for SandboxKeys {
    fn deliver<'a>(&'a self, job: Job<'a>) -> BoxFuture<'a, Vec<RcptOutcome>> {
        if job.env.listener == crate::types::API_SANDBOX_LISTENER {
            self.sandbox.deliver(job)
        } else {
            self.real.deliver(job)
        }
    }

    fn deliver_notice<'a>(&'a self, job: NoticeJob<'a>) -> BoxFuture<'a, Vec<RcptOutcome>> {
        self.real.deliver_notice(job)
    }
}
