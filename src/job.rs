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

    /// Coalesce with a live job of the same queue and key: while one is pending, in progress or
    /// failed with a retry scheduled, enqueueing another returns
    /// [`Enqueued::Duplicate`]. Default: none.
    #[must_use]
    pub fn unique_key(mut self, key: impl Into<String>) -> Self {
        self.unique_key = Some(key.into());
        self
    }

    /// At most one job of this queue with this key is in progress at a time. Default: none.
    #[must_use]
    pub fn concurrency_key(mut self, key: impl Into<String>) -> Self {
        self.concurrency_key = Some(key.into());
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
        }
    }
}

/// What [`Store::enqueue`](crate::Store::enqueue) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    /// A new job was written with this id.
    Created(JobId),
    /// A live job of the same queue and unique key exists; nothing was written.
    Duplicate(JobId),
}

impl Enqueued {
    /// The id of the new or the existing job.
    pub fn id(self) -> JobId {
        match self {
            Enqueued::Created(id) | Enqueued::Duplicate(id) => id,
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
