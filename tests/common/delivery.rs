//! Driving `phigate::delivery::Deliverer` directly (library-level delivery tests).

use phigate::delivery::{Deliverer, Job, RcptOutcome};
use phigate::types::{Envelope, MessageId, TlsLevel};

/// One delivery attempt through the library API, with `floor` as the message's own TLS floor.
pub async fn deliver(
    d: &Deliverer,
    env: &Envelope,
    content: &[u8],
    rcpts: &[usize],
    floor: Option<TlsLevel>,
) -> Vec<RcptOutcome> {
    let mut env = env.clone();
    env.tls_floor = floor.or(env.tls_floor);
    let job = Job {
        id: MessageId::new(),
        env: &env,
        content,
        rcpts,
    };
    d.deliver(job).await
}
