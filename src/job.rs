//! The nouns of a queue: ids, timestamps, the job a user writes and the job the store returns.

use std::time::Duration;

#[cfg(feature = "json")]
use crate::error::{Error, Result};
use crate::state::Record;
use crate::types::{JobId, JobState, Timestamp};

/// The default number of attempts a job gets before it fails for good.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 25;

/// A job to enqueue: a queue name, an opaque payload and how to run it.
///
/// ```
/// use std::time::Duration;
/// use quern::NewJob;
///
/// let job = NewJob::new("uploads", b"file-42".to_vec())
///     .priority(5)
///     .delay(Duration::from_secs(10))
///     .max_attempts(10)
///     .unique_key("file-42")
///     .concurrency_key("bucket-a");
/// assert_eq!(job.queue_name(), "uploads");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewJob {
    pub(crate) queue: String,
    pub(crate) payload: Vec<u8>,
    pub(crate) priority: i32,
    pub(crate) run_at: RunAt,
    pub(crate) max_attempts: u32,
    pub(crate) unique_key: Option<String>,
    pub(crate) concurrency_key: Option<String>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) strict: bool,
    pub(crate) latest_wins: bool,
    pub(crate) debounce: Option<Duration>,
    pub(crate) ordered: bool,
}

/// When a new job becomes claimable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RunAt {
    Now,
    At(Timestamp),
    After(Duration),
}

impl RunAt {
    pub(crate) fn resolve(self, now: Timestamp) -> Timestamp {
        match self {
            RunAt::Now => now,
            RunAt::At(t) => t,
            RunAt::After(d) => now.after(d),
        }
    }
}

impl NewJob {
    /// A job for `queue` carrying `payload`, runnable now, priority 0, 25 attempts.
    pub fn new(queue: impl Into<String>, payload: impl Into<Vec<u8>>) -> Self {
        NewJob {
            queue: queue.into(),
            payload: payload.into(),
            priority: 0,
            run_at: RunAt::Now,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            unique_key: None,
            concurrency_key: None,
            timeout: None,
            strict: false,
            latest_wins: false,
            debounce: None,
            ordered: false,
        }
    }

    /// A job whose payload is `value` encoded as JSON (the `json` feature).
    ///
    /// # Errors
    /// [`Error::Json`] when `value` cannot be serialized.
    #[cfg(feature = "json")]
    pub fn json<T: serde::Serialize + ?Sized>(queue: impl Into<String>, value: &T) -> Result<Self> {
        let payload = serde_json::to_vec(value).map_err(|e| Error::Json(e.into()))?;
        Ok(NewJob::new(queue, payload))
    }

    /// Higher runs first. Default: 0.
    #[must_use]
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// Not claimable before `at`. Default: claimable at once.
    #[must_use]
    pub fn run_at(mut self, at: Timestamp) -> Self {
        self.run_at = RunAt::At(at);
        self
    }

    /// Not claimable until `delay` after it is enqueued. Default: claimable at once.
    #[must_use]
    pub fn delay(mut self, delay: Duration) -> Self {
        self.run_at = RunAt::After(delay);
        self
    }

    /// Attempts before the job fails for good; at least 1. Default: 25.
    #[must_use]
    pub fn max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = max_attempts;
        self
    }

    /// Coalesces enqueues of one queue and key, without losing one: every enqueue that
    /// succeeds is covered by a run of the key's job that starts after it. Default: none.
    ///
    /// - While the key's job waits to run (pending, or failed with a retry scheduled), the
    ///   enqueue is folded into it: [`Enqueued::Coalesced`]. Its payload stays the first one
    ///   unless this enqueue asks for [`NewJob::latest_wins`]; [`NewJob::debounce`] moves its
    ///   run out.
    /// - While the key's job runs, the run may have read the old state: the enqueue becomes a
    ///   follow-up that waits for the run to end, or is folded into the follow-up that already
    ///   waits: [`Enqueued::FollowUp`]. The follow-up never runs while the running job does.
    ///   If the run ends for good, the follow-up runs next; if it goes back to waiting (a retry,
    ///   a snooze, an expired lease, a give-back at shutdown), it takes the follow-up in, so
    ///   that one job of the key waits.
    ///
    /// So at most one job of the key runs, and at most one waits. For work that must never be
    /// repeated, [`NewJob::unique_key_strict`] refuses an enqueue while any job of the key
    /// lives.
    #[must_use]
    pub fn unique_key(mut self, key: impl Into<String>) -> Self {
        self.unique_key = Some(key.into());
        self.strict = false;
        self
    }

    /// At most one live job of this queue and key, running included: while one is pending, in
    /// progress or failed with a retry scheduled, the enqueue writes nothing and returns
    /// [`Enqueued::Duplicate`]. An enqueue while the job runs is lost to it; where that matters,
    /// use [`NewJob::unique_key`]. Default: none.
    #[must_use]
    pub fn unique_key_strict(mut self, key: impl Into<String>) -> Self {
        self.unique_key = Some(key.into());
        self.strict = true;
        self
    }

    /// With a [`NewJob::unique_key`]: when this enqueue is folded into the job that waits, its
    /// payload replaces the waiting job's ("latest wins", for work that syncs the current
    /// state of something). Default: the first payload is kept.
    #[must_use]
    pub fn latest_wins(mut self) -> Self {
        self.latest_wins = true;
        self
    }

    /// With a [`NewJob::unique_key`]: the key's job runs no sooner than `window` after this
    /// enqueue, whether it is new or this enqueue is folded into it, so that a burst of
    /// enqueues becomes one run after the burst. Default: none.
    #[must_use]
    pub fn debounce(mut self, window: Duration) -> Self {
        self.debounce = Some(window);
        self
    }

    /// At most one job of this queue with this key is in progress at a time. Default: none.
    #[must_use]
    pub fn concurrency_key(mut self, key: impl Into<String>) -> Self {
        self.concurrency_key = Some(key.into());
        self
    }

    /// With a [`NewJob::concurrency_key`]: the jobs of the key start in the order they were
    /// enqueued (id order), whatever their priority or run time. The first job of the key
    /// holds the line while it waits (for its run time, a retry or a snooze) as well as while
    /// it runs; the jobs behind it wait in a table of their own, where no claim looks at them.
    /// A job that fails for good or is cancelled gives the line to the next. Every job of the
    /// key should be enqueued ordered. Default: not ordered.
    #[must_use]
    pub fn ordered(mut self) -> Self {
        self.ordered = true;
        self
    }

    /// How long one attempt may run under an executor before it is cancelled and counted as a
    /// failed attempt. Default: the executor's timeout.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The queue this job goes to.
    pub fn queue_name(&self) -> &str {
        &self.queue
    }
}

/// A job as stored: what [`Store::get`](crate::Store::get), [`Store::list`](crate::Store::list)
/// and [`Store::claim`](crate::Store::claim) return.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Job {
    /// Its id.
    pub id: JobId,
    /// The queue it belongs to.
    pub queue: String,
    /// Where it stands in its life.
    pub state: JobState,
    /// The bytes it was enqueued with.
    pub payload: Vec<u8>,
    /// Higher runs first.
    pub priority: i32,
    /// Attempts started in the current attempt chain, counted when claimed.
    pub attempts: u32,
    /// Attempts allowed before it fails for good.
    pub max_attempts: u32,
    /// Not claimable before this time.
    pub run_at: Timestamp,
    /// When failed: `Some` is the time of the scheduled retry, `None` means failed for good.
    pub next_attempt_at: Option<Timestamp>,
    /// The error of the last failed attempt.
    pub last_error: Option<String>,
    /// Its unique key, if any.
    pub unique_key: Option<String>,
    /// Its concurrency key, if any.
    pub concurrency_key: Option<String>,
    /// Progress set by the lease holder while it runs.
    pub progress: Option<String>,
    /// When in progress: when its lease runs out unless renewed.
    pub lease_expires_at: Option<Timestamp>,
    /// The per-attempt timeout it was enqueued with, if any.
    pub timeout: Option<Duration>,
    /// When it was enqueued.
    pub created_at: Timestamp,
    /// When it last changed.
    pub updated_at: Timestamp,
    /// When it succeeded or failed for good.
    pub finished_at: Option<Timestamp>,
    /// How many times an operator retried it by hand.
    pub manual_retries: u32,
    /// Whether its concurrency key is ordered ([`NewJob::ordered`]).
    pub ordered: bool,
    /// When it is a follow-up ([`Enqueued::FollowUp`]): the running job of its unique key that
    /// it waits for.
    pub waits_for: Option<JobId>,
}

impl Job {
    /// The payload decoded from JSON (the `json` feature).
    ///
    /// # Errors
    /// [`Error::Json`] when the payload is not JSON of type `T`.
    #[cfg(feature = "json")]
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(&self.payload).map_err(|e| Error::Json(e.into()))
    }

    /// Whether the job has reached a state it cannot leave by itself: succeeded, or failed with
    /// no retry scheduled.
    pub fn is_finished(&self) -> bool {
        match self.state {
            JobState::Succeeded => true,
            JobState::Failed => self.next_attempt_at.is_none(),
            JobState::Pending | JobState::InProgress => false,
        }
    }
}

impl Record {
    /// The job as a user sees it: this record under its id, with its payload.
    pub(crate) fn into_job(self, id: JobId, payload: Vec<u8>) -> Job {
        Job {
            id,
            queue: self.queue,
            state: self.state,
            payload,
            priority: self.priority,
            attempts: self.attempts,
            max_attempts: self.max_attempts,
            run_at: Timestamp(self.run_at),
            next_attempt_at: self.next_attempt_at.map(Timestamp),
            last_error: self.last_error,
            unique_key: self.unique_key,
            concurrency_key: self.concurrency_key,
            progress: self.progress,
            lease_expires_at: self.lease_expires_at.map(Timestamp),
            timeout: self.timeout_ms.map(Duration::from_millis),
            created_at: Timestamp(self.created_at),
            updated_at: Timestamp(self.updated_at),
            finished_at: self.finished_at.map(Timestamp),
            manual_retries: self.manual_retries,
            ordered: self.extra.ordered,
            waits_for: self.extra.behind.map(JobId),
        }
    }
}

/// What [`Store::enqueue`](crate::Store::enqueue) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    /// A new job was written with this id.
    Created(JobId),
    /// Strict unique key ([`NewJob::unique_key_strict`]): a live job of the same queue and key
    /// exists; nothing was written.
    Duplicate(JobId),
    /// Unique key ([`NewJob::unique_key`]): folded into this job of the key, which waits to
    /// run (pending, or failed with a retry scheduled) and so will see this enqueue.
    Coalesced(JobId),
    /// Unique key ([`NewJob::unique_key`]): the key's job `running` is in progress, so this
    /// enqueue is covered by `job`, the follow-up that waits for that run to end (new, or
    /// already waiting). If the run goes back to waiting instead of ending, the follow-up is
    /// folded into `running`, which then covers this enqueue, and `job` no longer exists.
    FollowUp {
        /// The follow-up.
        job: JobId,
        /// The running job it waits for.
        running: JobId,
    },
}

impl Enqueued {
    /// The id of the job that covers this enqueue: the new job, the waiting job it was folded
    /// into, the follow-up, or (strict) the live job of the key.
    pub fn id(self) -> JobId {
        match self {
            Enqueued::Created(id) | Enqueued::Duplicate(id) | Enqueued::Coalesced(id) => id,
            Enqueued::FollowUp { job, .. } => job,
        }
    }
}

/// The right to settle one claim of one job: a fencing token.
///
/// Each claim gets a fresh token. Calls that take a lease succeed only while the job is still in
/// progress under that same token; otherwise they fail with [`Error::LeaseLost`](crate::Error::LeaseLost) and change
/// nothing. Settling calls take the lease by value, so one lease settles once. A lease dropped
/// unsettled simply expires.
#[derive(Debug, PartialEq, Eq)]
pub struct Lease {
    pub(crate) job: JobId,
    pub(crate) token: u64,
    pub(crate) store: u64,
}

impl Lease {
    /// A copy for an operation that only borrows the lease (a heartbeat, progress): the
    /// settling calls still take the original by value, so one lease settles once.
    pub(crate) fn duplicate(&self) -> Lease {
        Lease {
            job: self.job,
            token: self.token,
            store: self.store,
        }
    }

    /// The job this lease is for.
    pub fn job(&self) -> JobId {
        self.job
    }

    /// The fencing token: increasing across all claims of a database.
    pub fn token(&self) -> u64 {
        self.token
    }
}

/// A job handed out by [`Store::claim`](crate::Store::claim), with the lease to settle it.
#[derive(Debug)]
pub struct Claimed {
    /// The job, already in progress with its attempt counted.
    pub job: Job,
    /// The lease to heartbeat and settle it with.
    pub lease: Lease,
}
