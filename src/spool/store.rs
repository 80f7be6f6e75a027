//! The storage engine seam: a handful of byte-level operations over named trees.
//! The spool only talks to [`Store`], so sled can be replaced without touching
//! ingress or delivery. Everything handed to a store is already encrypted or clear
//! metadata (IDs, states, times, counters).

use std::io;
use std::path::Path;

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
}

const ALL: [Tree; 7] = [
    Tree::Messages,
    Tree::Envelopes,
    Tree::Wraps,
    Tree::Queue,
    Tree::Schedule,
    Tree::Quarantine,
    Tree::Meta,
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
pub struct SledStore {
    db: sled::Db,
    trees: Vec<sled::Tree>,
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
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
        let db = sled::Config::new().path(dir).open().map_err(sled_io)?;
        let trees = ALL
            .iter()
            .map(|t| db.open_tree(t.name()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(sled_io)?;
        Ok(SledStore { db, trees })
    }

    fn tree(&self, t: Tree) -> &sled::Tree {
        &self.trees[t.index()]
    }
}

impl Store for SledStore {
    fn get(&self, tree: Tree, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        self.tree(tree)
            .get(key)
            .map(|v| v.map(|v| v.to_vec()))
            .map_err(sled_io)
    }

    fn commit(&self, ops: &[Op]) -> io::Result<()> {
        let t = &self.trees;
        let res: Result<(), TransactionError<()>> = (
            &t[0], &t[1], &t[2], &t[3], &t[4], &t[5], &t[6],
        )
            .transaction(|(a, b, c, d, e, f, g)| {
                let txs = [a, b, c, d, e, f, g];
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
    }

    fn scan(
        &self,
        tree: Tree,
        start: &[u8],
        end: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> io::Result<()> {
        let t = self.tree(tree);
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
    }

    fn compare_and_swap(&self, tree: Tree, key: &[u8], old: &[u8], new: &[u8]) -> io::Result<bool> {
        self.tree(tree)
            .compare_and_swap(key, Some(old), Some(new))
            .map(|r| r.is_ok())
            .map_err(sled_io)
    }

    fn flush(&self) -> io::Result<()> {
        self.db.flush().map(|_| ()).map_err(sled_io)
    }
}
