//! The storage engine seam: a handful of byte-level operations over named trees.
//! The spool only talks to [`Store`], so sled can be replaced without touching
//! ingress or delivery. Everything handed to a store is already encrypted or clear
//! metadata (IDs, states, times, counters).

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLock;

use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

/// The logical trees of the spool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tree {
    /// id -> sealed content.
    Messages,
    /// id -> sealed envelope.
    Envelopes,
    /// id -> wrapped data key (destroying this row crypto-shreds the message).
    Wraps,
    /// id -> clear queue summary + sealed per-recipient state.
    Queue,
    /// next_attempt (u64 BE) ++ id -> empty.
    Schedule,
    /// id -> quarantine entry (time and rule name).
    Quarantine,
    /// free-form metadata (key check values, caches).
    Meta,
    /// audit seq (u64 BE) -> sealed, chained audit record.
    Audit,
    /// audit chain head and retention anchor.
    AuditMeta,
    /// event cursor (u64 BE) -> event record (clear facts + sealed person fields).
    Events,
}

const ALL: [Tree; 10] = [
    Tree::Messages,
    Tree::Envelopes,
    Tree::Wraps,
    Tree::Queue,
    Tree::Schedule,
    Tree::Quarantine,
    Tree::Meta,
    Tree::Audit,
    Tree::AuditMeta,
    Tree::Events,
];

impl Tree {
    fn name(self) -> &'static str {
        match self {
            Tree::Messages => "messages",
            Tree::Envelopes => "envelopes",
            Tree::Wraps => "wraps",
            Tree::Queue => "queue",
            Tree::Schedule => "schedule",
            Tree::Quarantine => "quarantine",
            Tree::Meta => "meta",
            Tree::Audit => "audit",
            Tree::AuditMeta => "audit_meta",
            Tree::Events => "events",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// One write in an atomic batch.
#[derive(Debug, Clone)]
pub enum Op {
    Put(Tree, Vec<u8>, Vec<u8>),
    Delete(Tree, Vec<u8>),
}

/// A storage engine. `commit` is atomic across trees; `flush` makes every earlier
/// commit durable.
pub trait Store: Send + Sync + 'static {
    fn get(&self, tree: Tree, key: &[u8]) -> io::Result<Option<Vec<u8>>>;
    fn commit(&self, ops: &[Op]) -> io::Result<()>;
    /// Visit keys in `[start, end)` (`end = None`: to the end) in order until `visit`
    /// returns false.
    fn scan(
        &self,
        tree: Tree,
        start: &[u8],
        end: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> io::Result<()>;
    /// Replace `key`'s value with `new` only if it is still `old`; false if it changed.
    fn compare_and_swap(&self, tree: Tree, key: &[u8], old: &[u8], new: &[u8]) -> io::Result<bool>;
    fn flush(&self) -> io::Result<()>;
}

/// The sled implementation.
///
/// sled latches the first I/O error (e.g. disk full) and fails every later call, reads
/// included. So after an I/O error the next call drops the database and reopens it from
/// disk: the spool resumes by itself once space returns. Commits that were never flushed
/// (and so never acknowledged) may or may not survive the reopen, each one whole or not at all.
pub struct SledStore {
    dir: PathBuf,
    inner: RwLock<Option<Inner>>,
    poisoned: AtomicBool,
}

struct Inner {
    db: sled::Db,
    trees: Vec<sled::Tree>,
}

impl Inner {
    fn open(dir: &Path) -> io::Result<Self> {
        // A database dropped a moment ago (reopen after an I/O error, or a restart within
        // one process) may still hold its file lock until sled's flusher thread exits:
        // wait briefly for it rather than failing.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        let db = loop {
            match sled_config(dir).open() {
                Ok(db) => break db,
                Err(sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(25));
                }
                Err(e) => return Err(sled_io(e)),
            }
        };
        let trees = ALL
            .iter()
            .map(|t| db.open_tree(t.name()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(sled_io)?;
        Ok(Inner { db, trees })
    }

    fn tree(&self, t: Tree) -> &sled::Tree {
        &self.trees[t.index()]
    }
}

/// sled's defaults (a 1 GiB page cache, space-saving segment cleaning) suit a database
/// that lives in memory; a spool is write-once, read-once, delete: the cache only needs
/// the queue's working set, and rewriting segments to save space costs CPU per message.
fn sled_config(dir: &Path) -> sled::Config {
    sled::Config::new()
        .path(dir)
        .cache_capacity(16 * 1024 * 1024)
        .mode(sled::Mode::HighThroughput)
}

fn sled_io(e: sled::Error) -> io::Error {
    match e {
        sled::Error::Io(e) => e,
        other => io::Error::other(other.to_string()),
    }
}

impl SledStore {
    pub fn open(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        // The spool holds only ciphertext, but its metadata is still nobody else's business.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        Ok(SledStore {
            dir: dir.to_path_buf(),
            inner: RwLock::new(Some(Inner::open(dir)?)),
            poisoned: AtomicBool::new(false),
        })
    }

    /// Run `f` on the open database, reopening it first if an earlier call failed.
    fn with<T>(&self, f: impl FnOnce(&Inner) -> io::Result<T>) -> io::Result<T> {
        if self.poisoned.load(Ordering::Acquire) {
            let mut guard = self.inner.write().unwrap_or_else(|p| p.into_inner());
            if self.poisoned.load(Ordering::Acquire) {
                // Drop the latched instance (releasing its file lock) before reopening.
                *guard = None;
                *guard = Some(Inner::open(&self.dir)?);
                self.poisoned.store(false, Ordering::Release);
            }
        }
        let guard = self.inner.read().unwrap_or_else(|p| p.into_inner());
        let inner = guard
            .as_ref()
            .ok_or_else(|| io::Error::other("spool database is closed after an I/O error"))?;
        let res = f(inner);
        if res.is_err() {
            self.poisoned.store(true, Ordering::Release);
        }
        res
    }
}

impl Store for SledStore {
    fn get(&self, tree: Tree, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        self.with(|db| {
            db.tree(tree)
                .get(key)
                .map(|v| v.map(|v| v.to_vec()))
                .map_err(sled_io)
        })
    }

    fn commit(&self, ops: &[Op]) -> io::Result<()> {
        self.with(|db| {
            let res: Result<(), TransactionError<()>> = db.trees.as_slice().transaction(|txs| {
                for op in ops {
                    match op {
                        Op::Put(tree, k, v) => {
                            txs[tree.index()].insert(k.as_slice(), v.as_slice())?;
                        }
                        Op::Delete(tree, k) => {
                            txs[tree.index()].remove(k.as_slice())?;
                        }
                    }
                }
                Ok::<(), ConflictableTransactionError<()>>(())
            });
            match res {
                Ok(()) => Ok(()),
                Err(TransactionError::Storage(e)) => Err(sled_io(e)),
                Err(TransactionError::Abort(())) => Err(io::Error::other("transaction aborted")),
            }
        })
    }

    fn scan(
        &self,
        tree: Tree,
        start: &[u8],
        end: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> io::Result<()> {
        self.with(|db| {
            let t = db.tree(tree);
            let iter = match end {
                Some(end) => t.range(start.to_vec()..end.to_vec()),
                None => t.range(start.to_vec()..),
            };
            for item in iter {
                let (k, v) = item.map_err(sled_io)?;
                if !visit(&k, &v) {
                    break;
                }
            }
            Ok(())
        })
    }

    fn compare_and_swap(&self, tree: Tree, key: &[u8], old: &[u8], new: &[u8]) -> io::Result<bool> {
        self.with(|db| {
            db.tree(tree)
                .compare_and_swap(key, Some(old), Some(new))
                .map(|r| r.is_ok())
                .map_err(sled_io)
        })
    }

    fn flush(&self) -> io::Result<()> {
        self.with(|db| db.db.flush().map(|_| ()).map_err(sled_io))
    }
}
