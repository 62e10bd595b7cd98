//! The core of an open database: what every handle of a [`Store`](super::Store) and the writer
//! thread share, built once at open.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use parking_lot::{Condvar, Mutex};
use redb::{Database, ReadOnlyDatabase};

use super::ctx::Config;
use super::handoff::Takers;
use super::snapshot::Snapshot;
use super::watermark::Watermark;

/// What every part of one open database shares, built once at open: the store's handles and
/// the writer thread hold it.
pub(crate) struct Core {
    /// The database file, named in errors.
    pub path: Arc<Path>,
    pub db: Db,
    /// The format the file is in: this build's, or an older one read as it is (read-only).
    pub format: u64,
    pub cfg: Config,
    pub watermark: Watermark,
    /// Set when a commit failed: writes are refused until the store is reopened.
    pub poisoned: AtomicBool,
    pub takers: Takers,
    /// Last, so that it drops after the database: tells [`Store::close`](super::Store::close)
    /// that the file is closed.
    pub closed: Closed,
}

/// The database, as it was opened.
pub(crate) enum Db {
    Writable(Database),
    ReadOnly(ReadOnlyDatabase),
    /// Read-only, from a file its writer did not close, repaired in memory.
    Snapshot(Snapshot),
}

impl Core {
    pub(crate) fn new(path: &Path, db: Db, format: u64, cfg: Config) -> Core {
        Core {
            path: path.into(),
            db,
            format,
            cfg,
            watermark: Watermark::new(),
            poisoned: AtomicBool::new(false),
            takers: Takers::default(),
            closed: Closed::default(),
        }
    }

    /// The database, when it was opened for writing.
    pub(crate) fn writable(&self) -> Option<&Database> {
        match &self.db {
            Db::Writable(db) => Some(db),
            Db::ReadOnly(_) | Db::Snapshot(_) => None,
        }
    }
}

/// Set when the core drops, after the database: the core's last field. See [`Store::close`](super::Store::close).
#[derive(Default)]
pub(crate) struct Closed(Arc<(Mutex<bool>, Condvar)>);

impl Closed {
    /// A handle to wait on until the core (and so the database) is dropped.
    pub(crate) fn waiter(&self) -> CloseWaiter {
        CloseWaiter(self.0.clone())
    }
}

impl Drop for Closed {
    fn drop(&mut self) {
        let (closed, changed) = &*self.0;
        *closed.lock() = true;
        changed.notify_all();
    }
}

/// Waits for a [`Closed`] to drop.
pub(crate) struct CloseWaiter(Arc<(Mutex<bool>, Condvar)>);

impl CloseWaiter {
    /// Blocks until the database is closed.
    pub(crate) fn wait(self) {
        let (closed, changed) = &*self.0;
        let mut closed = closed.lock();
        while !*closed {
            changed.wait(&mut closed);
        }
    }
}
