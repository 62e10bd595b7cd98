//! The core of an open database: what every handle of a [`Store`](super::Store) and the writer
//! thread share, built once at open.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use redb::{Database, ReadOnlyDatabase};

use super::ctx::Config;
use super::handoff::Takers;
use super::watermark::Watermark;

/// What every part of one open database shares, built once at open: the store's handles and
/// the writer thread hold it.
pub(crate) struct Core {
    /// The database file, named in errors.
    pub path: Arc<Path>,
    pub db: Db,
    pub cfg: Config,
    pub watermark: Watermark,
    /// Set when a commit failed: writes are refused until the store is reopened.
    pub poisoned: AtomicBool,
    pub takers: Takers,
}

/// The database, as it was opened.
pub(crate) enum Db {
    Writable(Database),
    ReadOnly(ReadOnlyDatabase),
}

impl Core {
    pub(crate) fn new(path: &Path, db: Db, cfg: Config) -> Core {
        Core {
            path: path.into(),
            db,
            cfg,
            watermark: Watermark::new(),
            poisoned: AtomicBool::new(false),
            takers: Takers::default(),
        }
    }

    /// The database, when it was opened for writing.
    pub(crate) fn writable(&self) -> Option<&Database> {
        match &self.db {
            Db::Writable(db) => Some(db),
            Db::ReadOnly(_) => None,
        }
    }
}
