//! Group commit: many concurrent writers share one fsync.
//!
//! A writer takes a ticket after its batch is applied or staged. If no flush is running it
//! becomes the leader: it notes the highest ticket issued so far, runs the hooks that
//! commit staged batches (all staged before their ticket, so before the note), flushes,
//! and then every writer
//! whose ticket is covered returns. Writers that arrive during a flush wait for the next
//! one, which one of them leads. A failed flush covers nobody, so each waiter either sees
//! a later successful flush or runs (and reports) its own failed one.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use super::store::Store;

#[derive(Default)]
struct State {
    flushed: u64,
    flushing: bool,
}

type Hook = Box<dyn Fn() + Send + Sync>;

#[derive(Default)]
pub struct GroupCommit {
    issued: AtomicU64,
    flushes: AtomicU64,
    state: Mutex<State>,
    done: Notify,
    hooks: std::sync::RwLock<Vec<Hook>>,
}

impl GroupCommit {
    pub fn add_hook(&self, hook: Hook) {
        self.hooks
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(hook);
    }

    /// Commit whatever writers staged (see `Spool::on_flush`).
    pub fn run_hooks(&self) {
        for h in self.hooks.read().unwrap_or_else(|p| p.into_inner()).iter() {
            h();
        }
    }

    /// Number of flushes performed so far.
    pub fn flush_count(&self) -> u64 {
        self.flushes.load(Ordering::Relaxed)
    }

    /// Return once everything this caller committed before the call is durable.
    pub async fn durable(&self, store: &Arc<dyn Store>) -> io::Result<()> {
        let ticket = self.issued.fetch_add(1, Ordering::SeqCst) + 1;
        loop {
            let notified = self.done.notified();
            tokio::pin!(notified);
            let target = {
                let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
                if st.flushed >= ticket {
                    return Ok(());
                }
                if st.flushing {
                    // Register before releasing the lock so the wake-up cannot be missed.
                    notified.as_mut().enable();
                    None
                } else {
                    st.flushing = true;
                    Some(self.issued.load(Ordering::SeqCst))
                }
            };
            let Some(target) = target else {
                notified.await;
                continue;
            };
            // Staged writes of every ticket up to `target` are committed here, in one batch.
            self.run_hooks();
            let s = Arc::clone(store);
            let res = tokio::task::spawn_blocking(move || s.flush())
                .await
                .unwrap_or_else(|e| Err(io::Error::other(e.to_string())));
            self.flushes.fetch_add(1, Ordering::Relaxed);
            {
                let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
                st.flushing = false;
                if res.is_ok() && st.flushed < target {
                    st.flushed = target;
                }
            }
            self.done.notify_waiters();
            return res;
        }
    }
}
