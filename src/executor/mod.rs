//! The executor: runs jobs of one queue with a fixed number of workers.
//!
//! ```text
//!   store ──claim cycle──> claimer ──bounded channel──> workers (concurrency) ──settle──> store
//!     │      (one txn)       │  sleeps on the store's change watermark and the next due time
//!     │                      └─ claims only what fits in the channel; the rest stays pending
//!     └──enqueue commit──> hand-off ──┘  (jobs for idle workers, claimed in the enqueue's txn)
//! ```
//!
//! - `dispatch.rs`: the channel and the room / busy / reserved counts that keep every claim
//!   within the room there is, with the argument for their order.
//! - `claimer.rs`: the claim loop, restart and queue-full recovery, periodic schedules,
//!   retention.
//! - `handoff.rs`: jobs claimed for idle workers by the commit that enqueues them.
//! - `worker.rs`: a worker's loop and the life of one job (heartbeats, timeout, panics,
//!   settling).
//! - `metrics.rs`: counters a user can read; `failure_log.rs`: logging that does not flood.

mod claimer;
mod dispatch;
mod failure_log;
mod handoff;
mod idle;
mod metrics;
mod signal;
mod worker;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use idle::Idle;
pub use metrics::Metrics;
pub use signal::{Signal, wait_for_signal};

use self::dispatch::Dispatch;
use self::failure_log::FailureLog;
use self::idle::Quiet;
use self::metrics::Counters;
use crate::error::{Error, Result};
use crate::job::{Claimed, Job, Lease};
use crate::periodic::Periodic;
use crate::store::{ParkScope, Retention, Store, WriteTx};

/// What a handler says about the job it ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Done: the job succeeds.
    Success,
    /// This attempt failed: retry with backoff, or fail for good once the attempts are spent.
    Retry(String),
    /// Not ready yet (a dependency is missing): run again after this long, with the attempt
    /// given back.
    Snooze(Duration),
    /// Will never work: fail for good now.
    Discard(String),
    /// The remote is limited or unreachable (a 429 with `Retry-After`, a quota, a network
    /// down): park the job's concurrency key ([`ParkScope::Key`]: jobs of other keys go on) or
    /// its whole queue for `duration`, and run this job again then, its attempt given back.
    /// The park is stored: it survives a restart, and `quern stats` shows it with `reason`. A
    /// job without a concurrency key asked to park its key is snoozed for `duration` instead,
    /// and a warning says so.
    Park {
        /// What to park.
        scope: ParkScope,
        /// For how long.
        duration: Duration,
        /// Why, for the people who look.
        reason: String,
    },
    /// The handler settled the job itself, in a transaction with its own writes
    /// ([`JobContext::settle_in`]): the executor leaves it as it is. A handler that returns
    /// this without having settled its job has its attempt failed with an error that says so.
    Settled,
}

impl Outcome {
    /// A failed attempt with `error` as its message.
    pub fn retry(error: impl std::fmt::Display) -> Self {
        Outcome::Retry(error.to_string())
    }

    /// Parks the job's concurrency key for `duration` ([`Outcome::Park`]).
    pub fn park_key(duration: Duration, reason: impl std::fmt::Display) -> Self {
        Outcome::Park {
            scope: ParkScope::Key,
            duration,
            reason: reason.to_string(),
        }
    }

    /// Parks the job's whole queue for `duration` ([`Outcome::Park`]).
    pub fn park_queue(duration: Duration, reason: impl std::fmt::Display) -> Self {
        Outcome::Park {
            scope: ParkScope::Queue,
            duration,
            reason: reason.to_string(),
        }
    }

    /// A job that will never succeed, with `error` as its message.
    pub fn discard(error: impl std::fmt::Display) -> Self {
        Outcome::Discard(error.to_string())
    }
}

/// What a handler gets: the job, and calls fenced by the job's lease.
#[derive(Debug)]
pub struct JobContext {
    job: Job,
    lease: Lease,
    store: Store,
    /// Set once the handler settled the job in its own transaction; the worker reads it.
    settled: Arc<AtomicBool>,
}

impl JobContext {
    /// Whether the handler settled the job itself ([`JobContext::settle_in`]).
    pub(crate) fn settled_flag(&self) -> Arc<AtomicBool> {
        self.settled.clone()
    }

    /// The job being run (in progress, with this attempt counted).
    pub fn job(&self) -> &Job {
        &self.job
    }

    /// The job's payload.
    pub fn payload(&self) -> &[u8] {
        &self.job.payload
    }

    /// The store, for enqueueing follow-up work.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Records progress text, visible to `quern show` and [`Store::get`] while the job runs.
    ///
    /// # Errors
    /// [`Error::LeaseLost`] when the job was taken from this run (cancelled, or its lease
    /// expired and it was recovered); storage errors.
    ///
    /// # Cancel safety
    /// If the future is dropped, the progress may or may not be recorded.
    pub async fn set_progress(&self, progress: impl Into<String>) -> Result<()> {
        self.store
            .set_progress_async(&self.lease, progress.into())
            .await
    }

    /// Runs `f` in one write transaction of the store ([`Store::write`]) with this run's lease,
    /// to write the user's tables and settle the job together: `f` calls
    /// [`WriteTx::complete`](crate::WriteTx::complete) (or `fail`, `snooze`, `discard`) with
    /// the lease, and the job is settled exactly when the writes commit. The handler then
    /// returns [`Outcome::Settled`].
    ///
    /// ```no_run
    /// use quern::redb::TableDefinition;
    /// use quern::{JobContext, Outcome};
    ///
    /// const LOCAL: TableDefinition<&str, &str> = TableDefinition::new("local");
    ///
    /// async fn pull(ctx: JobContext) -> Outcome {
    ///     let remote = String::from("state read from the remote");
    ///     let written = ctx
    ///         .settle_in(move |tx, lease| {
    ///             tx.open_table(LOCAL)?.insert("item", remote.as_str())?;
    ///             tx.complete(lease)
    ///         })
    ///         .await;
    ///     match written {
    ///         Ok(()) => Outcome::Settled,
    ///         Err(e) => Outcome::retry(e),
    ///     }
    /// }
    /// ```
    ///
    /// The transaction is a commit of its own, as every [`Store::write`] is, where the
    /// executor's own settles share group commits: `docs/performance.md` has the cost.
    ///
    /// # Errors
    /// `f`'s error, or the store's: [`Error::LeaseLost`] when the job was taken from this run
    /// (the whole transaction is rolled back, the user's writes included).
    ///
    /// # Panics
    /// When `f` panics, the panic goes on in the handler (and fails the attempt).
    pub async fn settle_in<R, E, F>(&self, f: F) -> std::result::Result<R, E>
    where
        F: FnOnce(&mut WriteTx<'_>, Lease) -> std::result::Result<R, E> + Send + 'static,
        R: Send + 'static,
        E: From<Error> + Send + 'static,
    {
        let store = self.store.clone();
        let lease = self.lease.duplicate();
        let job = self.lease.job();
        let run = tokio::task::spawn_blocking(move || {
            store.write(|tx| {
                let value = f(tx, lease)?;
                Ok::<_, E>((value, tx.has_settled(job)))
            })
        })
        .await;
        let (value, settled) = match run {
            Ok(result) => result?,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => {
                return Err(Error::NoRuntime {
                    operation: "settling a job in a transaction",
                }
                .into());
            }
        };
        if settled {
            self.settled.store(true, Ordering::Release);
        }
        Ok(value)
    }

    /// Extends the lease now. The executor already heartbeats while the handler runs; this is
    /// for handlers that want to know at once whether they still hold the job.
    ///
    /// # Errors
    /// As [`JobContext::set_progress`].
    ///
    /// # Cancel safety
    /// If the future is dropped, the lease may or may not be extended.
    pub async fn heartbeat(&self) -> Result<()> {
        self.store.heartbeat_async(&self.lease).await
    }
}

type BoxFuture = Pin<Box<dyn Future<Output = Outcome> + Send>>;
type Handler = Arc<dyn Fn(JobContext) -> BoxFuture + Send + Sync>;

/// Runs jobs; see [`Executor::builder`].
#[derive(Debug)]
pub struct Executor;

impl Executor {
    /// Options for an executor working `store`.
    pub fn builder(store: Store) -> ExecutorBuilder {
        ExecutorBuilder {
            store,
            queue: "default".into(),
            concurrency: 4,
            channel_capacity: None,
            timeout: None,
            poll_interval: Duration::from_secs(1),
            periodic: Vec::new(),
            retention: Some(Retention::default()),
            retention_interval: Duration::from_secs(60),
        }
    }
}

/// Options for an executor; [`ExecutorBuilder::spawn`] starts it.
#[derive(Debug)]
#[must_use]
pub struct ExecutorBuilder {
    store: Store,
    queue: String,
    concurrency: usize,
    channel_capacity: Option<usize>,
    timeout: Option<Duration>,
    poll_interval: Duration,
    periodic: Vec<Periodic>,
    retention: Option<Retention>,
    retention_interval: Duration,
}

impl ExecutorBuilder {
    /// The queue to work. Default: `"default"`.
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = queue.into();
        self
    }

    /// How many jobs run at once (at least 1). Default: 4.
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency.max(1);
        self
    }

    /// The capacity of the bounded channel between the claimer and the workers: the most
    /// claimed jobs that may wait for a free worker (at least 1). Jobs beyond it stay pending in
    /// the database. A larger channel lets more claims share a commit, which is what fast jobs
    /// need; the claimer fills it only as far as the workers, at the rate they have been
    /// starting jobs, will start them within a third of a lease, so slow jobs do not wait in
    /// it until their leases run out. Default: eight per worker, at least 256.
    pub fn channel_capacity(mut self, capacity: usize) -> Self {
        self.channel_capacity = Some(capacity.max(1));
        self
    }

    /// How long one attempt may run before it is cancelled and counted as a failed attempt; a
    /// job's own [`NewJob::timeout`](crate::NewJob::timeout) takes precedence. Default: none.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// How often the claimer looks at the database without being woken: covers clock changes
    /// and writers it cannot hear. Default: 1 s.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// Adds a periodic schedule; its jobs go to the queue their [`NewJob`](crate::NewJob)
    /// names. Default: none.
    pub fn periodic(mut self, schedule: Periodic) -> Self {
        self.periodic.push(schedule);
        self
    }

    /// How long finished jobs are kept, or `None` to keep them until pruned by hand. Default:
    /// [`Retention::default`] (succeeded 24 h, failed 7 days, at most 100,000 failures).
    pub fn retention(mut self, retention: Option<Retention>) -> Self {
        self.retention = retention;
        self
    }

    /// Starts the executor on the current tokio runtime: the jobs an earlier process left in
    /// progress (see [`Store::recover_abandoned`]) and expired leases are recovered, and
    /// persisted pending work is dispatched, before anything else.
    ///
    /// # Errors
    /// [`Error::NoRuntime`] outside a tokio runtime; [`Error::InvalidInput`] for a bad queue
    /// name, or for a periodic schedule whose job the store would refuse; [`Error::ReadOnly`]
    /// for a read-only store.
    pub fn spawn<F, Fut>(self, handler: F) -> Result<ExecutorHandle>
    where
        F: Fn(JobContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Outcome> + Send + 'static,
    {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime {
            operation: "ExecutorBuilder::spawn",
        })?;
        crate::store::validate_queue(&self.queue)?;
        // A schedule whose job the store would refuse would fail every claim cycle.
        for p in &self.periodic {
            crate::store::validate(&p.job)
                .map_err(|e| Error::invalid("periodic schedule", format!("{:?}: {e}", p.name)))?;
        }
        if self.store.is_read_only() {
            return Err(Error::ReadOnly);
        }
        let capacity = self
            .channel_capacity
            .unwrap_or(self.concurrency.saturating_mul(8).max(256));
        let handler: Handler = Arc::new(move |ctx| Box::pin(handler(ctx)));
        let stop = CancellationToken::new();
        let shared = Arc::new(Shared {
            store: self.store,
            queue: self.queue.into(),
            concurrency: self.concurrency,
            dispatch: Arc::new(Dispatch::new(self.concurrency, capacity, stop.clone())),
            timeout: self.timeout,
            poll_interval: self.poll_interval,
            periodic: self.periodic.into(),
            retention: self.retention,
            retention_interval: self.retention_interval,
            handler,
            stop,
            kill: CancellationToken::new(),
            wake: Notify::new(),
            counters: Counters::default(),
            failures: FailureLog::default(),
            settles: TaskTracker::new(),
            housekeeping: TaskTracker::new(),
            quiet: Arc::new(Quiet::new()),
        });
        tracing::info!(
            queue = %shared.queue, concurrency = self.concurrency, capacity,
            "executor starting"
        );
        let taker = shared.store.add_taker(Arc::new(handoff::Handoff {
            shared: Arc::downgrade(&shared),
            queue: shared.queue.clone(),
        }));
        let claimer = runtime.spawn(claimer::run(shared.clone(), taker));
        let workers = (0..self.concurrency)
            .map(|_| runtime.spawn(worker::run(shared.clone())))
            .collect();
        Ok(ExecutorHandle {
            shared,
            claimer: Some(claimer),
            workers,
        })
    }

    /// As [`ExecutorBuilder::spawn`], with a handler of typed jobs (the `json` feature): each
    /// job's payload is decoded from JSON into a `T` once, before the handler is called with
    /// it. Enqueue them with [`NewJob::json`](crate::NewJob::json). A payload that does not
    /// decode will never decode on a retry either: its job fails for good at its first attempt
    /// ([`Outcome::Discard`]), with the decode error. The bytes stay at
    /// [`JobContext::payload`].
    ///
    /// ```no_run
    /// # async fn sync(store: quern::Store) -> quern::Result<()> {
    /// use quern::{Executor, Idle, NewJob, Outcome};
    ///
    /// #[derive(serde::Serialize, serde::Deserialize)]
    /// struct Upload {
    ///     path: String,
    ///     version: u64,
    /// }
    ///
    /// store.enqueue(NewJob::json("uploads", &Upload { path: "a.jpg".into(), version: 3 })?)?;
    /// Executor::builder(store)
    ///     .queue("uploads")
    ///     .spawn_typed(|upload: Upload, _ctx| async move {
    ///         println!("uploading {} v{}", upload.path, upload.version);
    ///         Outcome::Success
    ///     })?
    ///     .run_until_idle(Idle::Now)
    ///     .await
    /// # }
    /// ```
    ///
    /// # Errors
    /// As [`ExecutorBuilder::spawn`].
    #[cfg(feature = "json")]
    pub fn spawn_typed<T, F, Fut>(self, handler: F) -> Result<ExecutorHandle>
    where
        T: serde::de::DeserializeOwned + Send + 'static,
        F: Fn(T, JobContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Outcome> + Send + 'static,
    {
        let handler = Arc::new(handler);
        self.spawn(move |ctx| {
            let decoded = ctx.job().json::<T>();
            let handler = handler.clone();
            async move {
                match decoded {
                    Ok(value) => handler(value, ctx).await,
                    Err(e) => Outcome::Discard(format!(
                        "the payload does not decode as {}: {e}",
                        std::any::type_name::<T>()
                    )),
                }
            }
        })
    }
}

/// What the claimer and the workers share.
pub(crate) struct Shared {
    pub store: Store,
    pub queue: Arc<str>,
    pub concurrency: usize,
    /// The channel to the workers, and the room claims may fill.
    pub dispatch: Arc<Dispatch>,
    pub timeout: Option<Duration>,
    pub poll_interval: Duration,
    pub periodic: Arc<[Periodic]>,
    pub retention: Option<Retention>,
    pub retention_interval: Duration,
    pub handler: Handler,
    /// Stop claiming and taking new jobs.
    pub stop: CancellationToken,
    /// Cancel running handlers (after the grace period).
    pub kill: CancellationToken,
    /// Look at the database now.
    pub wake: Notify,
    pub counters: Counters,
    pub failures: FailureLog,
    /// Settles handed to the store and not yet committed: shutdown waits for them.
    pub settles: TaskTracker,
    /// Retention passes under way, beside the claim cycles: shutdown waits for them.
    pub housekeeping: TaskTracker,
    /// Whether the queue has work left, for [`ExecutorHandle::idle`]. Apart from the rest, so
    /// that a settle's callback can wake the claimer after it let go of the executor.
    pub quiet: Arc<Quiet>,
}

impl Shared {
    /// Gives a claimed job that will not run here back to pending, with its attempt given
    /// back. Does not wait for the commit (a committing thread may call it, and must not block
    /// on the store); shutdown waits for it as for a settle.
    pub(crate) fn give_back(self: &Arc<Self>, claimed: Claimed) {
        let done = self.settles.token();
        let id = claimed.job.id;
        let shared = self.clone();
        let quiet = self.quiet.clone();
        let sent = self.store.settle_then(
            claimed.lease,
            crate::store::Settle::Snooze(Duration::ZERO),
            move |result| {
                match result {
                    Ok(()) => {
                        Counters::add(&shared.counters.given_back, 1);
                        tracing::debug!(job = %id, "gave a claimed job back");
                    }
                    Err(e) => gave_back_failed(id, &e),
                }
                // The executor (and its store handle) before the token: once shutdown sees
                // the last token go, this closure, run on the writer thread, holds no handle
                // whose drop would close the database there, unwaited for.
                drop(shared);
                drop(done);
                quiet.settled();
            },
        );
        if let Err(e) = sent {
            gave_back_failed(id, &e);
        }
    }
}

fn gave_back_failed(id: crate::JobId, e: &Error) {
    tracing::warn!(job = %id, error = %e, "could not give a claimed job back; its lease will expire");
}

/// A running executor. Keep it: dropping it stops claiming (without waiting for running jobs);
/// [`ExecutorHandle::shutdown`] stops gracefully.
#[must_use = "dropping the handle stops the executor"]
pub struct ExecutorHandle {
    shared: Arc<Shared>,
    claimer: Option<JoinHandle<()>>,
    workers: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for ExecutorHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecutorHandle")
            .field("queue", &self.shared.queue)
            .field("workers", &self.workers.len())
            .finish_non_exhaustive()
    }
}

impl ExecutorHandle {
    /// Makes the claimer look at the database now rather than at its next due time or poll:
    /// for changes it cannot hear, such as another process's writes or a clock moved by hand.
    pub fn wake(&self) {
        self.shared.wake.notify_one();
    }

    /// Waits until the executor's queue has nothing left to do now ([`Idle::Now`]), or also
    /// nothing coming due within a bound ([`Idle::Within`]): no due pending job, nothing
    /// running, nothing claimed and waiting in memory, every outcome committed. It waits for a
    /// claim cycle that began after this call, so a job enqueued before it is run first. The
    /// executor keeps running: see [`ExecutorHandle::run_until_idle`] to stop it then.
    ///
    /// ```no_run
    /// # async fn sync(store: quern::Store) -> quern::Result<()> {
    /// use quern::{Executor, Idle, Outcome};
    /// let handle = Executor::builder(store)
    ///     .queue("sync")
    ///     .spawn(|_job| async { Outcome::Success })?;
    /// handle.idle(Idle::Now).await?;
    /// handle.shutdown(std::time::Duration::from_secs(30)).await
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`Error::Closed`] when the executor stopped before its queue was idle; the error of
    /// its claim cycles when they keep failing (three in a row: a full disk, say), rather
    /// than wait for ever.
    pub async fn idle(&self, until: Idle) -> Result<()> {
        let store = &self.shared.store;
        self.shared
            .quiet
            .wait(until, &self.shared.wake, || store.now())
            .await
    }

    /// Runs until the queue is idle ([`ExecutorHandle::idle`]), then shuts the executor down
    /// (nothing is running then; a job that started meanwhile gets a lease's time to finish):
    /// the whole of a "sync what is pending, then exit" run.
    ///
    /// # Errors
    /// As [`ExecutorHandle::idle`] and [`ExecutorHandle::shutdown`].
    pub async fn run_until_idle(self, until: Idle) -> Result<()> {
        let idle = self.idle(until).await;
        let grace = self.shared.store.lease_ttl();
        let stopped = self.shutdown(grace).await;
        idle.and(stopped)
    }

    /// Counters and gauges of this executor.
    pub fn metrics(&self) -> Metrics {
        self.shared
            .counters
            .snapshot(self.shared.dispatch.waiting())
    }

    /// Stops claiming, gives back claimed jobs that have not started, lets running jobs finish
    /// within `grace`, then cancels the rest and gives them back as snoozed (attempt given
    /// back). When it returns, no job is in progress under this executor's leases.
    ///
    /// # Errors
    /// [`Error::ExecutorPanicked`] if a task of the executor (the claimer or a worker; a
    /// handler's panic is a failed attempt) panicked; [`Error::Closed`] if one was cancelled
    /// because its runtime is shutting down.
    ///
    /// # Cancel safety
    /// Not cancel safe: dropping the future part way leaves the remaining jobs to finish in the
    /// background, and their leases to expire if the runtime stops.
    pub async fn shutdown(mut self, grace: Duration) -> Result<()> {
        tracing::info!(queue = %self.shared.queue, "executor shutting down");
        self.shared.stop.cancel();
        let mut result = Ok(());
        if let Some(claimer) = self.claimer.take()
            && let Err(e) = claimer.await
        {
            result = Err(self.task_failed(&e));
        }
        while let Some(claimed) = self.shared.dispatch.take_waiting() {
            self.shared.give_back(claimed);
        }
        let workers = std::mem::take(&mut self.workers);
        let mut all = Box::pin(futures_join_all(workers));
        let joined = tokio::select! {
            r = &mut all => r,
            () = tokio::time::sleep(grace) => {
                tracing::warn!(queue = %self.shared.queue, "grace period over: cancelling running jobs");
                self.shared.kill.cancel();
                all.await
            }
        };
        if let Err(e) = joined {
            result = Err(self.task_failed(&e));
        }
        self.shared.settles.close();
        self.shared.housekeeping.close();
        self.shared.settles.wait().await;
        self.shared.housekeeping.wait().await;
        tracing::info!(queue = %self.shared.queue, "executor stopped");
        result
    }
}

impl ExecutorHandle {
    /// The error of a task of this executor that did not return: it panicked, or it was
    /// cancelled (its runtime is shutting down).
    fn task_failed(&self, e: &tokio::task::JoinError) -> Error {
        if e.is_panic() {
            Error::ExecutorPanicked {
                queue: self.shared.queue.to_string(),
            }
        } else {
            Error::Closed
        }
    }
}

impl Drop for ExecutorHandle {
    fn drop(&mut self) {
        self.shared.stop.cancel();
    }
}

/// Awaits every handle; the first error of a task that panicked or was cancelled.
async fn futures_join_all(
    handles: Vec<JoinHandle<()>>,
) -> std::result::Result<(), tokio::task::JoinError> {
    let mut first = Ok(());
    for h in handles {
        if let Err(e) = h.await
            && first.is_ok()
        {
            first = Err(e);
        }
    }
    first
}

/// A copy of the lease for the handler's context; the worker keeps the original to settle.
pub(crate) fn context(store: &Store, claimed: &Claimed) -> JobContext {
    JobContext {
        job: claimed.job.clone(),
        lease: claimed.lease.duplicate(),
        store: store.clone(),
        settled: Arc::new(AtomicBool::new(false)),
    }
}
