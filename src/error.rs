//! The errors of quern.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::types::{JobId, JobState};

/// A `Result` whose error is quern's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in quern.
///
/// Expected conflicts ([`Error::LeaseLost`], [`Error::NotFound`], [`Error::InvalidState`], ...)
/// are variants to match on; a storage failure names what quern was doing and its cause in its
/// message, and keeps the cause whole in [`Error::Storage`]'s `cause` field.
/// `Error` is `Clone`, so one failed group commit can be reported to every caller in it.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The database file could not be opened or created.
    #[error("cannot open quern database {}", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: StorageError,
    },
    /// Another process has the database open for writing (or, for a writer, open at all in a
    /// mode that excludes it).
    #[error("quern database {} is already open for writing by another process", path.display())]
    AlreadyOpen {
        /// The file.
        path: PathBuf,
    },
    /// The file is a database, but not one quern wrote.
    #[error("{} is not a quern database", path.display())]
    NotQuern {
        /// The file.
        path: PathBuf,
    },
    /// The file was written in a format version this build does not read.
    #[error(
        "quern database {} has format version {found}, this build reads version {supported}{}",
        path.display(),
        if found < supported { "; open it for writing once to upgrade it" } else { "" }
    )]
    UnsupportedFormat {
        /// The file.
        path: PathBuf,
        /// The version in the file.
        found: u64,
        /// The version this build reads and writes.
        supported: u64,
    },
    /// A storage operation failed. The message says what quern was doing, on which file, and
    /// the cause, once: "claiming jobs in queue.redb: I/O error: No space left on device (os
    /// error 28)". The cause is in the message, so it is not also the error's
    /// [`std::error::Error::source`] (a report of the chain would print it twice); it stays
    /// whole in the `cause` field, and [`StorageError::redb`] gives redb's own error. After a
    /// failed commit the store refuses writes ([`Error::Poisoned`]) until it is reopened.
    #[error("{}: {cause}", cause.doing(context))]
    Storage {
        /// What quern was doing ("claiming jobs", "committing a write transaction", ...).
        context: &'static str,
        /// The cause: redb's error, and through it the I/O error, if any.
        cause: StorageError,
    },
    /// A record on disk could not be decoded, an index disagrees with its record, or the
    /// database file is damaged (a page failing redb's integrity check at a writable open, or
    /// one redb could not read in a read-only store).
    #[error("corrupt {what}: {detail}")]
    Corrupt {
        /// What: a job's record, an index, the header, or the database file by its path.
        what: String,
        /// What is wrong with it.
        detail: String,
    },
    /// An earlier commit failed; the store refuses writes until it is reopened, so that nothing
    /// half-written is ever built upon.
    #[error(
        "quern database {} refuses writes after an earlier commit failed; reopen it",
        path.display()
    )]
    Poisoned {
        /// The file.
        path: PathBuf,
    },
    /// The job is no longer in progress under this lease: its lease expired and it was recovered,
    /// it was claimed again, cancelled or pruned. Nothing was changed.
    #[error("lease lost on job {job}: it is no longer in progress under this lease")]
    LeaseLost {
        /// The job.
        job: JobId,
    },
    /// The lease was handed out by another database.
    #[error("lease for job {job} belongs to another quern database")]
    ForeignLease {
        /// The job.
        job: JobId,
    },
    /// No job has this id.
    #[error("job {job} not found")]
    NotFound {
        /// The id asked for.
        job: JobId,
    },
    /// The operation does not apply to a job in this state.
    #[error("job {job} is {state}: {operation} does not apply")]
    InvalidState {
        /// The job.
        job: JobId,
        /// Its state.
        state: JobState,
        /// What was asked.
        operation: &'static str,
    },
    /// Retrying the job would make a second live job with its unique key.
    #[error("job {job} cannot be retried: job {existing} holds its unique key")]
    UniqueConflict {
        /// The job asked to retry.
        job: JobId,
        /// The live job that holds the key.
        existing: JobId,
    },
    /// An argument was refused.
    #[error("invalid {what}: {reason}")]
    InvalidInput {
        /// Which argument.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// A payload could not be encoded or decoded as JSON.
    #[cfg(feature = "json")]
    #[error("json payload: {0}")]
    Json(#[source] Arc<serde_json::Error>),
    /// A writer opened the file while a read-only store read it as its last writer had left
    /// it, unclosed (see [`Store::open_read_only`](crate::Store::open_read_only)): what was read
    /// may be torn, so it is not returned. The writer has repaired the file; a new read-only
    /// open reads it beside that writer.
    #[error(
        "quern database {} changed while it was read (a writer opened it); open it again to read it",
        path.display()
    )]
    Changed {
        /// The file.
        path: PathBuf,
    },
    /// A write was asked of a store opened read-only.
    #[error("the store is open read-only")]
    ReadOnly,
    /// The store's writer has stopped (the store is closing).
    #[error("the store is closed")]
    Closed,
    /// A task of the executor (its claimer or a worker; not a handler, whose panic is a failed
    /// attempt) panicked: [`ExecutorHandle::shutdown`](crate::ExecutorHandle::shutdown) reports
    /// it once every other task has stopped.
    #[error("a task of the executor of queue {queue:?} panicked")]
    ExecutorPanicked {
        /// The queue the executor ran.
        queue: String,
    },
    /// No process serves the control channel of the database: none holds it open for writing,
    /// or the one that does was opened with
    /// [`StoreBuilder::control_channel(false)`](crate::StoreBuilder::control_channel).
    #[error("no process serves a control channel for quern database {}", path.display())]
    NoControlChannel {
        /// The database file.
        path: PathBuf,
    },
    /// The control channel of the database failed: the socket could not be reached (no
    /// permission, a path too long), or the reply did not come or did not decode.
    #[error("control channel of quern database {} failed", path.display())]
    Control {
        /// The database file.
        path: PathBuf,
        /// Why.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The process could not listen for the signals that stop it (see
    /// [`wait_for_signal`](crate::wait_for_signal)).
    #[error("could not listen for SIGINT and SIGTERM")]
    Signal {
        /// Why.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// An executor was started outside a tokio runtime.
    #[error("{operation} must be called within a tokio runtime")]
    NoRuntime {
        /// What was called.
        operation: &'static str,
    },
}

impl Error {
    /// Whether this error leaves the whole write transaction unusable, rather than refusing one
    /// operation before it wrote anything.
    pub(crate) fn aborts_batch(&self) -> bool {
        matches!(
            self,
            Error::Storage { .. } | Error::Corrupt { .. } | Error::Poisoned { .. } | Error::Closed
        )
    }

    /// A storage failure met while doing `context`.
    pub(crate) fn storage(context: &'static str, e: impl Into<redb::Error>) -> Error {
        Error::Storage {
            context,
            cause: StorageError::new(e.into()),
        }
    }

    /// Says what quern was doing in a storage error that does not say it yet: errors are made
    /// deep inside a transaction, and labelled by the operation they leave.
    pub(crate) fn doing(mut self, what: &'static str) -> Error {
        if let Error::Storage { context, .. } = &mut self
            && context.is_empty()
        {
            *context = what;
        }
        self
    }

    /// Names the database file in a storage error that does not name it yet: errors are
    /// made deep inside a transaction, and located where they leave the store.
    pub(crate) fn in_file(mut self, path: &Path) -> Error {
        if let Error::Storage { cause, .. } = &mut self
            && cause.file.is_none()
        {
            cause.file = Some(path.into());
        }
        self
    }

    pub(crate) fn invalid(what: &'static str, reason: impl Into<String>) -> Error {
        Error::InvalidInput {
            what,
            reason: reason.into(),
        }
    }
}

/// A storage failure met inside a transaction, before the operation it belongs to labels it
/// ([`Error::doing`]) and the store names its file ([`Error::in_file`]).
pub(crate) fn redb_failed(e: impl Into<redb::Error>) -> Error {
    Error::storage("", e)
}

/// A failure of the storage engine under quern: redb's error, and the database file it
/// happened on.
///
/// Its message is redb's, which already names the I/O error under it, so it has no
/// [`std::error::Error::source`] of its own (a report of the chain would print the I/O error
/// twice); [`StorageError::redb`] gives redb's error, and through it the I/O error.
#[derive(Debug, Clone)]
pub struct StorageError {
    error: Arc<redb::Error>,
    /// The database file, once the error left the store that met it.
    file: Option<Arc<Path>>,
}

impl StorageError {
    pub(crate) fn new(error: redb::Error) -> StorageError {
        StorageError {
            error: Arc::new(error),
            file: None,
        }
    }

    /// The database file the failure happened on, when known.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// redb's error: match on it (`redb::Error::Io`, `redb::Error::Corrupted`, ...) or walk its
    /// sources to the I/O error.
    pub fn redb(&self) -> &redb::Error {
        &self.error
    }

    /// The I/O error under the failure, if it was one. After an I/O failure redb reports
    /// `PreviousIo` for the writes that follow, which carries none.
    pub fn io(&self) -> Option<&std::io::Error> {
        match &*self.error {
            redb::Error::Io(e) => Some(e),
            _ => None,
        }
    }

    /// "CONTEXT in FILE", what [`Error::Storage`]'s message starts with.
    fn doing(&self, context: &str) -> String {
        let context = if context.is_empty() {
            "storage failure"
        } else {
            context
        };
        match &self.file {
            Some(f) => format!("{context} in {}", f.display()),
            None => context.to_owned(),
        }
    }
}

impl std::fmt::Display for StorageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.error, f)
    }
}

impl std::error::Error for StorageError {}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        /// Lets `?` carry redb errors out of [`Store::write`](crate::Store::write) closures.
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Error::storage("running a user transaction", e)
            }
        }
    )*};
}
from_redb!(
    redb::Error,
    redb::TableError,
    redb::StorageError,
    redb::TransactionError,
    redb::CommitError
);
