//! The durable store: the only module that touches redb.
//!
//! `mod.rs` holds the [`Store`] type and its public operations; each operation is one call into
//! the file of its family, run in a group commit (writes) or a read transaction (reads).
//!
//! - `open.rs`: [`StoreBuilder`], opening a file, reading its header, open errors.
//! - `create.rs`: creating a database file atomically, and recognising a half-created one.
//! - `upgrade.rs`: moving an older format to this build's, at a writable open.
//! - `write_tx.rs`: [`Store::write`] and [`WriteTx`], the user's own write transaction.
//! - `for_executor.rs`: what only the executor calls (claim cycles, settles without waiting).
//! - `core.rs`: what every handle and the writer thread share, built once at open.
//! - `tables.rs`: every table, the format version, and one transaction's table handles.
//! - `codec.rs`: record, segment and key encoding, and the readers of segments and payloads.
//! - `ctx.rs`: one write transaction's view: counters, and the one way a record is written.
//! - `ctx/follow_up.rs`: what the end of a run does to the follow-up waiting behind it.
//! - `index.rs`: index and count maintenance, the only writer of index tables; where a pending
//!   job is placed and how a concurrency key passes on.
//! - `unique.rs`: an enqueue of a held change-safe unique key, folded into the waiting job.
//! - `controls.rs`: pauses, parks and rate limits of queues and keys, and the claim's gate.
//! - `writer.rs`: the group-commit writer thread.
//! - `handoff.rs`: jobs claimed for idle executors at the commit of their enqueue.
//! - `watermark.rs`: the change counter waiters sleep on.
//! - Operation families: `enqueue.rs`, `work.rs` (claim and the lease holder's calls),
//!   `housekeeping.rs` (promotion, recovery, retry, cancel, prune), `cycle.rs` (the
//!   executor's claim cycle), `read.rs` (get, list, stats), `verify.rs` ([`Store::check`]).
//! - `snapshot.rs`: reading a file its writer did not close, repaired in memory, never written.

mod codec;
mod controls;
mod core;
mod create;
mod ctx;
mod cycle;
mod enqueue;
mod for_executor;
mod handoff;
mod housekeeping;
mod index;
mod open;
mod read;
mod snapshot;
mod tables;
mod unique;
mod upgrade;
mod verify;
mod watermark;
mod work;
mod write_tx;
mod writer;

use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use redb::{ReadTransaction, ReadableDatabase};

pub use self::codec::decode;
pub use self::controls::QueueControl;
pub(crate) use self::create::resolve;
pub(crate) use self::cycle::Cycle;
pub use self::enqueue::{MAX_KEY, MAX_PAYLOAD, MAX_QUEUE_NAME};
pub(crate) use self::enqueue::{validate, validate_queue};
pub(crate) use self::for_executor::Settle;
pub(crate) use self::handoff::{Room, Taker, TakerId};
pub use self::housekeeping::{Cutoff, Retention};
pub use self::open::{DEFAULT_CACHE_SIZE, DEFAULT_LEASE_TTL, StoreBuilder};
pub use self::read::{Filter, QueueStats, Stats};
pub use self::tables::FORMAT_VERSION;
pub use self::verify::Problem;
pub use self::work::ParkScope;
pub use self::write_tx::WriteTx;

use self::core::{Core, Db};
use self::ctx::Ctx;
use self::write_tx::outside_write;
use self::writer::{Request, Writer};
use crate::error::{Error, Result};
use crate::job::{Claimed, Enqueued, Job, Lease, NewJob};
use crate::types::{JobId, Timestamp};

/// A quern database: durable queues of jobs in one redb file.
///
/// `Store` is cheap to clone (an `Arc` inside) and `Send + Sync`. Every call that changes jobs
/// is one write transaction, committed durably before the call returns; calls from many threads
/// at once share commits (group commit). The database file is closed when the last clone is
/// dropped.
///
/// Writing methods return [`Error::Poisoned`] once a commit has failed with an I/O error: the
/// store refuses writes until it is reopened, so that nothing is built on a half-written state.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    // Field order matters: the control channel stops (and removes its socket) while the
    // database is still held, and the writer thread is joined before the core (and with it
    // the database) is dropped.
    #[cfg(unix)]
    control: std::sync::OnceLock<crate::control::Server>,
    writer: Option<Writer>,
    core: Arc<Core>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.inner.core.path)
            .field("read_only", &self.is_read_only())
            .finish_non_exhaustive()
    }
}

impl Store {
    /// A store over an opened database; a writable one gets its writer thread.
    fn from_core(core: Core) -> std::io::Result<Store> {
        let core = Arc::new(core);
        let writer = match core.db {
            Db::Writable(_) => Some(Writer::spawn(core.clone())?),
            Db::ReadOnly(_) | Db::Snapshot(_) => None,
        };
        Ok(Store {
            inner: Arc::new(Inner {
                #[cfg(unix)]
                control: std::sync::OnceLock::new(),
                writer,
                core,
            }),
        })
    }

    /// Serves the control channel of a store opened for writing (see
    /// [`StoreBuilder::control_channel`]), or, with `serve` false, removes a socket a dead
    /// process left. A channel that cannot be served is logged, and the store works without
    /// it: the operator's commands then say that no channel serves the file.
    fn control_channel(&self, serve: bool) {
        #[cfg(unix)]
        {
            let path = self.path().to_path_buf();
            if !serve {
                if let Err(e) = crate::control::remove_stale(&path) {
                    tracing::warn!(path = %path.display(), error = %e, "could not remove a stale control socket");
                }
                return;
            }
            // A weak handle: the server keeps no store open, and stops when the store closes.
            let weak = Arc::downgrade(&self.inner);
            let handler = Box::new(move |request| match weak.upgrade() {
                Some(inner) => crate::control::apply(&Store { inner }, request),
                None => crate::control::Reply::Failed("the store is closing".to_owned()),
            });
            match crate::control::Server::start(&path, handler) {
                Ok(server) => {
                    let _ = self.inner.control.set(server);
                }
                Err(e) => tracing::warn!(
                    path = %path.display(),
                    error = %e,
                    "no control channel: operators' commands cannot reach this store while it runs"
                ),
            }
        }
        #[cfg(not(unix))]
        let _ = serve;
    }
}

impl Store {
    /// Opens the database at `path` for writing with default options, creating it if missing.
    ///
    /// # Errors
    /// See [`StoreBuilder::open`].
    pub fn open(path: impl AsRef<Path>) -> Result<Store> {
        StoreBuilder::default().open(path)
    }

    /// Options for opening a store.
    pub fn builder() -> StoreBuilder {
        StoreBuilder::default()
    }

    /// Opens the database at `path` read-only, alongside a live writer process. A file whose
    /// writer stopped without closing it is read as that writer left it, without writing it
    /// (see [`Store::closed_cleanly`]).
    ///
    /// # Errors
    /// See [`StoreBuilder::open_read_only`].
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<Store> {
        StoreBuilder::default().open_read_only(path)
    }

    /// Closes the database: drops this handle, then waits until the file is closed. That is
    /// when the last handle is gone (this one, its clones, an executor's, a running handler's)
    /// and the writer has committed what was queued.
    ///
    /// When [`ExecutorHandle::shutdown`](crate::ExecutorHandle::shutdown) has returned, its
    /// executor holds no handle, so a program that then calls `close` on its last handle may
    /// exit at once: the next open finds the file closed cleanly, with nothing to repair.
    /// Dropping the last handle closes the file just the same; `close` says when it is done.
    ///
    /// Blocks the calling thread until every other handle is dropped: one kept alive
    /// elsewhere (a detached task or thread) keeps it waiting. On a current-thread tokio
    /// runtime, call it once the runtime's tasks that hold handles have ended.
    pub fn close(self) {
        let closed = self.inner.core.closed.waiter();
        drop(self);
        closed.wait();
    }

    /// Operations sent to the writer's channel since the store opened (not those a caller
    /// committed on its own thread); 0 for a read-only store. For tests of group commit; not
    /// part of the API.
    #[doc(hidden)]
    pub fn __writes_sent(&self) -> u64 {
        self.inner.writer.as_ref().map_or(0, Writer::sent)
    }

    /// Group-commit batches finished since the store opened. For tests; not part of the API.
    #[doc(hidden)]
    pub fn __write_batches(&self) -> u64 {
        self.inner.writer.as_ref().map_or(0, Writer::batches)
    }

    /// The bytes a read-only store of a file left unclosed holds in memory for redb's repair
    /// of it (see [`Store::closed_cleanly`]); `None` for any other store. For tests of that
    /// bound; not part of the API.
    #[doc(hidden)]
    pub fn __repair_bytes_in_memory(&self) -> Option<u64> {
        match &self.inner.core.db {
            Db::Snapshot(snapshot) => Some(snapshot.overlay_bytes()),
            Db::Writable(_) | Db::ReadOnly(_) => None,
        }
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.core.path
    }

    /// The on-disk format version of the file: [`FORMAT_VERSION`](crate::FORMAT_VERSION) once
    /// opened for writing (which upgrades an older file), or the older version a read-only
    /// store reads as it is.
    pub fn format_version(&self) -> u64 {
        self.inner.core.format
    }

    /// Whether this store was opened read-only.
    pub fn is_read_only(&self) -> bool {
        matches!(self.inner.core.db, Db::ReadOnly(_) | Db::Snapshot(_))
    }

    /// Whether the file was closed cleanly, or is open by a live writer: `false` when this
    /// read-only store reads a file whose writer stopped without closing it (killed, crashed)
    /// and that no writer has opened since. Its jobs then read as that writer left them: the
    /// jobs it had claimed are in progress until the next worker's executor starts (which
    /// recovers them at once, see [`Store::recover_abandoned`]). A writable open repairs such
    /// a file, so a writable store is always `true`.
    pub fn closed_cleanly(&self) -> bool {
        !matches!(self.inner.core.db, Db::Snapshot(_))
    }

    /// Whether every page's checksum was verified when this store was opened (see
    /// [`StoreBuilder::verify_on_open`]): `false` when it was opened trusting the file, or
    /// read-only beside a writer that committed while the open verified it (that writer
    /// verified the file when it opened it).
    pub fn verified(&self) -> bool {
        self.inner.core.cfg.verified
    }

    /// The current time by the store's clock.
    pub fn now(&self) -> Timestamp {
        self.inner.core.cfg.clock.now()
    }

    /// The default lease of a claim.
    pub fn lease_ttl(&self) -> Duration {
        self.inner.core.cfg.lease_ttl
    }

    /// Runs `op` in the writer's next group commit and waits for the commit. `doing` names the
    /// operation in its storage errors.
    fn call<R: Send + 'static>(
        &self,
        doing: &'static str,
        op: impl FnOnce(&mut Ctx<'_>) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        // A oneshot parks the caller at once; a channel's receive spins and yields first, which
        // on two cores took the CPU of the callers coming back from the last commit.
        let (tx, rx) = oneshot::channel();
        let writer = self.writer()?;
        writer.send_or_commit(Box::new(Request::new(doing, op, move |r| {
            // The caller waits on `rx` until this is sent.
            let _ = tx.send(r);
        })))?;
        rx.recv().unwrap_or(Err(Error::Closed))
    }

    fn writer(&self) -> Result<&Writer> {
        let writer = self.inner.writer.as_ref().ok_or(Error::ReadOnly)?;
        outside_write()?;
        if self.inner.core.poisoned.load(Ordering::Acquire) {
            return Err(Error::Poisoned {
                path: self.inner.core.path.to_path_buf(),
            });
        }
        Ok(writer)
    }

    /// Runs `f` in a read transaction. On a read-only store, a panic of redb on a damaged file
    /// is [`Error::Corrupt`] (see [`open::guarded_read`]); `f` must not run user code that may panic.
    /// On a snapshot of a file left unclosed, a read after which a writer opened the file is
    /// [`Error::Changed`].
    fn read<R>(
        &self,
        doing: &'static str,
        f: impl FnOnce(&ReadTransaction) -> Result<R>,
    ) -> Result<R> {
        let begin = |e| Error::storage("beginning a read transaction", e);
        let path = &*self.inner.core.path;
        match &self.inner.core.db {
            Db::Writable(db) => db.begin_read().map_err(begin).and_then(|tx| f(&tx)),
            Db::ReadOnly(db) => open::guarded_read(path, || f(&db.begin_read().map_err(begin)?)),
            Db::Snapshot(snapshot) => snapshot.checked(path, |db| {
                open::guarded_read(path, || f(&db.begin_read().map_err(begin)?))
            }),
        }
        .map_err(|e| e.doing(doing).in_file(path))
    }

    /// Enqueues one job, durably.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for an empty or over-long queue name, a payload over
    /// [`MAX_PAYLOAD`], `max_attempts` of 0 or an empty or over-long key; [`Error::ReadOnly`];
    /// storage errors.
    pub fn enqueue(&self, job: NewJob) -> Result<Enqueued> {
        enqueue::validate(&job)?;
        self.call("enqueueing a job", move |cx| enqueue::enqueue(cx, job))
    }

    /// Enqueues many jobs in one transaction: all are written or none. Outcomes are in input
    /// order; a job whose unique key is held (also by an earlier job of the same batch) is a
    /// [`Enqueued::Duplicate`].
    ///
    /// # Errors
    /// As [`Store::enqueue`], for any job of the batch; then nothing is written.
    pub fn enqueue_batch(&self, jobs: impl IntoIterator<Item = NewJob>) -> Result<Vec<Enqueued>> {
        let jobs: Vec<NewJob> = jobs.into_iter().collect();
        jobs.iter().try_for_each(enqueue::validate)?;
        self.call("enqueueing a batch of jobs", move |cx| {
            enqueue::enqueue_batch(cx, jobs)
        })
    }

    /// Claims up to `n` due pending jobs of `queue`: priority descending, then `run_at`, then
    /// id; a job whose concurrency key is in progress is skipped. Each claimed job is in
    /// progress with its attempt counted and a fresh lease, all in one transaction.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a bad queue name; [`Error::ReadOnly`]; storage errors.
    pub fn claim(&self, queue: &str, n: usize) -> Result<Vec<Claimed>> {
        enqueue::validate_queue(queue)?;
        if n == 0 {
            return Ok(Vec::new());
        }
        // Behind a backlog of new jobs longer than one transaction indexes, each try indexes
        // part of it, committed, until the claim can see every job enqueued before it.
        let mut through = None;
        loop {
            let queue = queue.to_owned();
            match self.call("claiming jobs", move |cx| {
                work::claim(cx, &queue, n, through)
            })? {
                work::ClaimStep::Claimed(jobs) => return Ok(jobs),
                work::ClaimStep::Indexing { through: bound } => through = Some(bound),
            }
        }
    }

    /// Extends the lease to now + the lease TTL.
    ///
    /// A lease that expired but whose job was not yet recovered can still be extended: the job
    /// was not given to anyone else.
    ///
    /// # Errors
    /// [`Error::LeaseLost`] when the job is no longer in progress under this lease;
    /// [`Error::ForeignLease`]; storage errors.
    pub fn heartbeat(&self, lease: &Lease) -> Result<()> {
        let lease = lease.duplicate();
        self.call("extending a lease", move |cx| work::heartbeat(cx, &lease))
    }

    /// Records progress text (cut to 4 KiB), visible in [`Store::get`] while the job runs.
    ///
    /// # Errors
    /// As [`Store::heartbeat`].
    pub fn set_progress(&self, lease: &Lease, progress: impl Into<String>) -> Result<()> {
        let lease = lease.duplicate();
        let progress = progress.into();
        self.call("recording progress", move |cx| {
            work::set_progress(cx, &lease, &progress)
        })
    }

    /// InProgress -> Succeeded.
    ///
    /// # Errors
    /// As [`Store::heartbeat`].
    pub fn complete(&self, lease: Lease) -> Result<()> {
        self.call("completing a job", move |cx| work::complete(cx, &lease))
    }

    /// InProgress -> Failed: the next attempt is scheduled at now + backoff(attempts), or, when
    /// the attempts are spent, the job fails for good. The error is kept (cut to 4 KiB).
    ///
    /// # Errors
    /// As [`Store::heartbeat`].
    pub fn fail(&self, lease: Lease, error: impl Into<String>) -> Result<()> {
        let error = error.into();
        self.call("failing a job", move |cx| work::fail(cx, &lease, &error))
    }

    /// InProgress -> Failed for good, whatever attempts remain.
    ///
    /// # Errors
    /// As [`Store::heartbeat`].
    pub fn discard(&self, lease: Lease, error: impl Into<String>) -> Result<()> {
        let error = error.into();
        self.call("discarding a job", move |cx| {
            work::discard(cx, &lease, &error)
        })
    }

    /// InProgress -> Pending at now + `delay`, with the attempt given back: a dependency that is
    /// not ready is not a failure.
    ///
    /// # Errors
    /// As [`Store::heartbeat`].
    pub fn snooze(&self, lease: Lease, delay: Duration) -> Result<()> {
        self.call("snoozing a job", move |cx| work::snooze(cx, &lease, delay))
    }

    /// Failed jobs whose retry is due -> Pending. Returns how many moved.
    ///
    /// # Errors
    /// [`Error::ReadOnly`]; storage errors.
    pub fn promote_due(&self) -> Result<u64> {
        self.call("promoting due retries", housekeeping::promote_due)
    }

    /// In-progress jobs whose lease expired (their worker died or hung) -> a failed attempt
    /// with the error "lease expired", retried with backoff or failed for good as
    /// [`Store::fail`] would. Their old leases are lost. Returns how many.
    ///
    /// # Errors
    /// [`Error::ReadOnly`]; storage errors.
    pub fn recover_expired(&self) -> Result<u64> {
        self.call("recovering expired leases", housekeeping::recover_expired)
    }

    /// In-progress jobs claimed by an earlier open of this database (whose process stopped:
    /// crashed, killed, or exited without settling them) go back to pending, due at once (in
    /// their place in the queue, their run time as it was when they were claimed), so that
    /// a restart resumes them at once instead of waiting for their leases to expire. Returns
    /// how many.
    ///
    /// A writable open proves that no other process holds the file (redb allows one writer),
    /// so those leases are dead. Each job keeps its attempt (counted at claim), and its error
    /// says the process stopped; a job whose attempts are spent fails for good, and one whose
    /// previous attempt ended this way too waits its normal backoff, so that a job that kills
    /// its process cannot crash-loop it. Leases taken by this open are never touched. An
    /// [`Executor`](crate::Executor) calls this when it starts; opening a store does not.
    ///
    /// # Errors
    /// [`Error::ReadOnly`]; storage errors.
    pub fn recover_abandoned(&self) -> Result<u64> {
        self.call(
            "recovering the jobs of a stopped process",
            housekeeping::recover_abandoned,
        )
    }

    /// Manual retry of a failed job (retry scheduled or terminal): Pending now, attempts back
    /// to 0, `manual_retries` up by one.
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::InvalidState`] unless the job failed;
    /// [`Error::UniqueConflict`] when another live job took its unique key meanwhile.
    pub fn retry(&self, id: JobId) -> Result<()> {
        self.call("retrying a job", move |cx| housekeeping::retry(cx, id))
    }

    /// Pending, in-progress or retry-scheduled -> Failed for good with the error "cancelled".
    /// A worker running a cancelled job loses its lease.
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::InvalidState`] for a job already finished.
    pub fn cancel(&self, id: JobId) -> Result<()> {
        // Behind a long backlog of new jobs, each try indexes part of it, committed.
        while !self.call("cancelling a job", move |cx| housekeeping::cancel(cx, id))? {}
        Ok(())
    }

    /// Deletes succeeded and terminally failed jobs that finished before the cut: an age
    /// (`Duration`) or a time (`Timestamp`). Returns how many. A long history is deleted in
    /// transactions of at most 1,000 jobs each, so that memory stays flat and other writes
    /// commit between them.
    ///
    /// # Errors
    /// [`Error::ReadOnly`]; storage errors.
    pub fn prune(&self, older_than: impl Into<Cutoff>) -> Result<u64> {
        let cut = match older_than.into() {
            Cutoff::Age(d) => self.now().before(d),
            Cutoff::Before(t) => t,
        };
        self.prune_in_chunks(cut, cut, None)
    }

    /// Prunes in transactions of at most [`housekeeping::PRUNE_CHUNK`] jobs until none is left.
    fn prune_in_chunks(
        &self,
        succeeded: Timestamp,
        failed: Timestamp,
        max_failed: Option<u64>,
    ) -> Result<u64> {
        let chunk = housekeeping::PRUNE_CHUNK;
        let mut total = 0;
        loop {
            let n = self.call("pruning finished jobs", move |cx| {
                housekeeping::prune(cx, succeeded, failed, max_failed, chunk)
            })?;
            total += n;
            if n < chunk as u64 {
                return Ok(total);
            }
        }
    }

    /// Deletes finished jobs by a retention policy: succeeded and failed jobs by their own
    /// ages, and the oldest failures beyond a cap. Returns how many. Executors call this
    /// periodically.
    ///
    /// # Errors
    /// [`Error::ReadOnly`]; storage errors.
    pub fn apply_retention(&self, retention: &Retention) -> Result<u64> {
        let now = self.now();
        let succeeded = now.before(retention.succeeded);
        let failed = now.before(retention.failed);
        let max = retention.max_failed;
        self.prune_in_chunks(succeeded, failed, max)
    }

    /// The job with this id, if it exists.
    ///
    /// # Errors
    /// Storage errors; [`Error::Corrupt`] for an undecodable record.
    pub fn get(&self, id: JobId) -> Result<Option<Job>> {
        self.read("reading a job", |tx| read::get(tx, id))
    }

    /// The jobs the filter admits, in id order.
    ///
    /// # Errors
    /// As [`Store::get`].
    pub fn list(&self, filter: &Filter) -> Result<Vec<Job>> {
        let mut out = Vec::new();
        self.read("listing jobs", |tx| {
            read::scan(tx, filter, |job| {
                out.push(job);
                true
            })
        })?;
        Ok(out)
    }

    /// Calls `each` with every job the filter admits, in id order, from one consistent
    /// snapshot, without holding them all in memory; stops when `each` returns false.
    ///
    /// # Errors
    /// As [`Store::get`].
    pub fn for_each(&self, filter: &Filter, mut each: impl FnMut(Job) -> bool) -> Result<()> {
        // A panic of `each` is the caller's, not damage (which a read-only store's guard would
        // report): it stops the scan and goes on once the read is over.
        let mut panicked = None;
        // A snapshot of a file left unclosed checks the file before it hands on each job, not
        // only after the scan: `each` may show the job at once (`quern dump`), and a job read
        // after a writer opened the file may be torn.
        let snapshot = match &self.inner.core.db {
            Db::Snapshot(snapshot) => Some(snapshot),
            Db::Writable(_) | Db::ReadOnly(_) => None,
        };
        let mut changed = None;
        let result = self.read("listing jobs", |tx| {
            read::scan(tx, filter, |job| {
                if let Some(Err(e)) = snapshot.map(|s| s.refuse_if_changed(&self.inner.core.path)) {
                    changed = Some(e);
                    return false;
                }
                catch_unwind(AssertUnwindSafe(|| each(job))).unwrap_or_else(|p| {
                    panicked = Some(p);
                    false
                })
            })
        });
        if let Some(p) = panicked {
            std::panic::resume_unwind(p);
        }
        match changed {
            Some(e) => Err(e),
            None => result,
        }
    }

    /// Counts per queue and state, the oldest due pending job, the next retry.
    ///
    /// # Errors
    /// As [`Store::get`].
    pub fn stats(&self) -> Result<Stats> {
        let now = self.now();
        self.read("counting jobs", |tx| read::stats(tx, now))
    }

    /// The change watermark: a number that every change to jobs committed through this store
    /// increases. It lives in memory: it starts at 0 when the store opens.
    pub fn generation(&self) -> u64 {
        self.inner.core.watermark.get()
    }

    /// Blocks until a change to jobs past generation `seen` is committed by this process, or
    /// `timeout` passes. Returns the generation.
    pub fn wait_for_change(&self, seen: u64, timeout: Duration) -> u64 {
        self.inner.core.watermark.wait_past(seen, timeout)
    }

    /// Resolves when a change to jobs past generation `seen` is committed by this process.
    /// Returns the generation.
    ///
    /// # Cancel safety
    /// Cancel safe: dropping the future loses nothing.
    pub async fn changed(&self, seen: u64) -> u64 {
        self.inner.core.watermark.changed_past(seen).await
    }
}

/// A store on a new file of a temporary directory, driven by a manual clock at 1,000 s: for the
/// unit tests of the store's files.
#[cfg(test)]
pub(crate) fn test_store() -> (tempfile::TempDir, crate::ManualClock, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = crate::ManualClock::new(Timestamp(1_000_000));
    let store = Store::builder()
        .clock(Arc::new(clock.clone()))
        .open(dir.path().join("q.redb"))
        .expect("open");
    (dir, clock, store)
}
