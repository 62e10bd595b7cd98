//! The user's write transaction ([`Store::write`]): quern's tables and the user's own in one
//! commit, and the guard that keeps a thread inside one from waiting on itself.

use std::cell::Cell;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::ctx::Ctx;
use super::{Store, enqueue, work};
use crate::error::{Error, Result};
use crate::job::{Enqueued, Lease, NewJob};
use crate::types::JobId;

thread_local! {
    /// Set while this thread runs a [`Store::write`] closure, whose transaction holds the
    /// database's write lock: another write from the same thread would wait for it forever.
    static IN_WRITE: Cell<bool> = const { Cell::new(false) };
}

/// Refuses a write from a thread that runs a [`Store::write`] closure: it would wait forever
/// for the write lock that its own transaction holds.
pub(super) fn outside_write() -> Result<()> {
    if IN_WRITE.with(Cell::get) {
        return Err(Error::invalid(
            "call",
            "a writing method of the store was called inside Store::write; use its WriteTx",
        ));
    }
    Ok(())
}

/// Marks this thread as running a [`Store::write`] closure until dropped, also when the
/// closure panics (and the panic is caught), so that the thread can write again afterwards.
struct InsideWrite;

impl InsideWrite {
    fn enter() -> InsideWrite {
        IN_WRITE.with(|w| w.set(true));
        InsideWrite
    }
}

impl Drop for InsideWrite {
    fn drop(&mut self) {
        IN_WRITE.with(|w| w.set(false));
    }
}

impl Store {
    /// Runs `f` in one write transaction with the user's own tables: enqueue jobs and write
    /// your data together, so that neither exists without the other (the outbox pattern); or
    /// settle a job with the writes it made ([`WriteTx::complete`] and the others), so that the
    /// job is done exactly when its effects are. The transaction commits durably if `f` returns
    /// `Ok`, and is rolled back if it returns `Err`.
    ///
    /// Each call is a commit of its own (it holds the writer while `f` runs, and does not
    /// share a group commit): about one durable commit per call.
    ///
    /// ```
    /// use quern::redb::TableDefinition;
    /// use quern::{NewJob, Store};
    ///
    /// const FILES: TableDefinition<&str, u64> = TableDefinition::new("files");
    /// # let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path().join("sync.redb"))?;
    /// store.write(|tx| {
    ///     tx.open_table(FILES)?.insert("a.txt", 42)?;
    ///     tx.enqueue(NewJob::new("uploads", "a.txt"))?;
    ///     Ok::<_, quern::Error>(())
    /// })?;
    /// # Ok::<_, Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// `f`'s error; [`Error::ReadOnly`], [`Error::Poisoned`] and storage errors, converted.
    /// An enqueue in `f` that failed with a storage or corruption error may have been written
    /// in part: then nothing is committed, even if `f` went on to return `Ok`, and that error
    /// is returned.
    pub fn write<R, E: From<Error>>(
        &self,
        f: impl FnOnce(&mut WriteTx<'_>) -> std::result::Result<R, E>,
    ) -> std::result::Result<R, E> {
        let (Some(db), Some(writer)) = (self.inner.core.writable(), &self.inner.writer) else {
            return Err(Error::ReadOnly.into());
        };
        outside_write()?;
        // Begins after any commit under way, and sees whether it failed: a transaction must not
        // start from the counters of one that did not commit (see `ctx::Counters`).
        let _commits = writer.hold_commits();
        if self.inner.core.poisoned.load(Ordering::Acquire) {
            return Err(Error::Poisoned {
                path: self.inner.core.path.to_path_buf(),
            }
            .into());
        }
        let path = &*self.inner.core.path;
        let tx = db
            .begin_write()
            .map_err(|e| Error::storage("beginning a write transaction", e).in_file(path))?;
        let (value, changed) = {
            let mut wtx = WriteTx {
                cx: Ctx::begin(&tx, &self.inner.core.cfg),
                tx: &tx,
                path,
                broken: None,
                settled: Vec::new(),
            };
            let value = {
                let _inside = InsideWrite::enter();
                f(&mut wtx)
            }?;
            // An enqueue that failed midway may have written part of itself: even if `f`
            // went on, the transaction is not committed.
            if let Some(e) = wtx.broken {
                return Err(e.into());
            }
            (
                value,
                wtx.cx
                    .finish()
                    .map_err(|e| e.doing("running a user transaction").in_file(path))?,
            )
        };
        if let Err(e) = tx.commit() {
            self.inner.core.poisoned.store(true, Ordering::Release);
            return Err(Error::storage("committing a write transaction", e)
                .in_file(path)
                .into());
        }
        if changed {
            self.inner.core.watermark.bump();
        }
        Ok(value)
    }
}

/// A write transaction shared by quern and the user's own tables; see [`Store::write`].
pub struct WriteTx<'a> {
    cx: Ctx<'a>,
    tx: &'a redb::WriteTransaction,
    /// The database file, named in storage errors.
    path: &'a Path,
    /// The first error that left quern's part of the transaction half-written, or a settle
    /// refused: either way nothing commits.
    broken: Option<Error>,
    /// The jobs settled in it.
    settled: Vec<JobId>,
}

impl<'a> WriteTx<'a> {
    /// Enqueues a job in this transaction.
    ///
    /// # Errors
    /// As [`Store::enqueue`].
    pub fn enqueue(&mut self, job: NewJob) -> Result<Enqueued> {
        enqueue::validate(&job)?;
        let result = enqueue::enqueue(&mut self.cx, job).map_err(|e| e.doing("enqueueing a job"));
        self.note(result)
    }

    /// Enqueues many jobs in this transaction.
    ///
    /// # Errors
    /// As [`Store::enqueue_batch`].
    pub fn enqueue_batch(
        &mut self,
        jobs: impl IntoIterator<Item = NewJob>,
    ) -> Result<Vec<Enqueued>> {
        let result = enqueue::enqueue_batch(&mut self.cx, jobs.into_iter().collect())
            .map_err(|e| e.doing("enqueueing a batch of jobs"));
        self.note(result)
    }

    /// Completes the job of `lease` in this transaction: the job succeeds if and only if the
    /// transaction commits, with the user's writes beside it (exactly-once local effects for a
    /// handler that pulls remote state into local tables).
    ///
    /// # Errors
    /// As [`Store::complete`]: [`Error::LeaseLost`] when the lease is stale. Any error here
    /// makes the whole transaction roll back, the user's writes included, even if the closure
    /// goes on to return `Ok`: [`Store::write`] then returns that error.
    pub fn complete(&mut self, lease: Lease) -> Result<()> {
        let job = lease.job;
        let result = work::complete(&mut self.cx, &lease).map_err(|e| e.doing("completing a job"));
        self.settled(job, result)
    }

    /// Fails an attempt of the job of `lease` in this transaction, as [`Store::fail`].
    ///
    /// # Errors
    /// As [`WriteTx::complete`].
    pub fn fail(&mut self, lease: Lease, error: impl Into<String>) -> Result<()> {
        let job = lease.job;
        let result =
            work::fail(&mut self.cx, &lease, &error.into()).map_err(|e| e.doing("failing a job"));
        self.settled(job, result)
    }

    /// Fails the job of `lease` for good in this transaction, as [`Store::discard`].
    ///
    /// # Errors
    /// As [`WriteTx::complete`].
    pub fn discard(&mut self, lease: Lease, error: impl Into<String>) -> Result<()> {
        let job = lease.job;
        let result = work::discard(&mut self.cx, &lease, &error.into())
            .map_err(|e| e.doing("discarding a job"));
        self.settled(job, result)
    }

    /// Snoozes the job of `lease` in this transaction, as [`Store::snooze`].
    ///
    /// # Errors
    /// As [`WriteTx::complete`].
    pub fn snooze(&mut self, lease: Lease, delay: Duration) -> Result<()> {
        let job = lease.job;
        let result =
            work::snooze(&mut self.cx, &lease, delay).map_err(|e| e.doing("snoozing a job"));
        self.settled(job, result)
    }

    /// Notes a settle: a refused one (a stale lease) rolls the whole transaction back too, so
    /// that the user's writes never commit without the settle they go with.
    fn settled(&mut self, job: JobId, result: Result<()>) -> Result<()> {
        let result = result.map_err(|e| e.in_file(self.path));
        match &result {
            Ok(()) => self.settled.push(job),
            Err(e) => {
                if self.broken.is_none() {
                    self.broken = Some(e.clone());
                }
            }
        }
        result
    }

    /// Whether this transaction settled `job`.
    pub(crate) fn has_settled(&self, job: JobId) -> bool {
        self.settled.contains(&job)
    }

    /// Remembers an error after which quern's tables may be half-written, so that
    /// [`Store::write`] refuses to commit whatever the closure does next.
    fn note<T>(&mut self, result: Result<T>) -> Result<T> {
        let result = result.map_err(|e| e.in_file(self.path));
        if let Err(e) = &result
            && e.aborts_batch()
            && self.broken.is_none()
        {
            self.broken = Some(e.clone());
        }
        result
    }

    /// Opens one of the user's tables in this transaction. quern's own tables are named
    /// `quern_*`; leave them alone.
    ///
    /// # Errors
    /// redb's table errors, converted.
    pub fn open_table<K: redb::Key + 'static, V: redb::Value + 'static>(
        &self,
        definition: redb::TableDefinition<K, V>,
    ) -> Result<redb::Table<'a, K, V>> {
        self.tx
            .open_table(definition)
            .map_err(|e| Error::storage("opening a user table", e).in_file(self.path))
    }

    /// The underlying redb transaction, for anything else (multimap tables, ...).
    pub fn transaction(&self) -> &'a redb::WriteTransaction {
        self.tx
    }
}
