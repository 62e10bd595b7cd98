//! quern: a durable job queue that lives inside your program, on the embedded database
//! [redb](https://docs.rs/redb).
//!
//! Jobs move through `Pending -> InProgress -> Succeeded | Failed` in redb tables, each
//! transition one durable write transaction. Attempts are counted when a job is claimed, failed
//! attempts are retried with exponential backoff and jitter, a claim's lease is a fencing token
//! that a stale worker cannot settle with, and many concurrent calls share one commit.
//!
//! # From the top
//!
//! ```
//! use std::time::Duration;
//! use quern::{Enqueued, JobState, NewJob, Store};
//!
//! # fn main() -> Result<(), quern::Error> {
//! # let dir = tempfile::tempdir().map_err(|e| quern::Error::Closed)?;
//! let store = Store::open(dir.path().join("sync.redb"))?;
//!
//! // Producers enqueue; a unique key coalesces work that is already waiting.
//! let id = store.enqueue(NewJob::new("uploads", "photos/cat.jpg").unique_key("cat.jpg"))?.id();
//! assert!(matches!(
//!     store.enqueue(NewJob::new("uploads", "photos/cat.jpg").unique_key("cat.jpg"))?,
//!     Enqueued::Coalesced(existing) if existing == id
//! ));
//!
//! // A worker claims, works, and settles with its lease.
//! for claimed in store.claim("uploads", 16)? {
//!     assert_eq!(claimed.job.attempts, 1);
//!     match upload(&claimed.job.payload) {
//!         Ok(()) => store.complete(claimed.lease)?,
//!         Err(NotReady) => store.snooze(claimed.lease, Duration::from_secs(60))?,
//!     }
//! }
//! assert_eq!(store.get(id)?.map(|j| j.state), Some(JobState::Succeeded));
//! # Ok(())
//! # }
//! # struct NotReady;
//! # fn upload(_: &[u8]) -> Result<(), NotReady> { Ok(()) }
//! ```
//!
//! The on-disk layout, the invariants between tables and the map of the code are in
//! [`design`] (`docs/design.md`).
//!
//! # Features
//!
//! - `cli` (default): the `quern` utility. A program that embeds quern builds without it, and
//!   without clap and anyhow: `default-features = false`.
//! - `json` (default): `NewJob::json`, `Job::json` and `Error::Json`, through serde_json.

#![deny(missing_docs)]
#![deny(clippy::unwrap_used)]
#![warn(clippy::expect_used)]

mod backoff;
mod clock;
pub mod control;
mod error;
mod executor;
mod job;
mod limits;
mod periodic;
mod state;
mod store;
mod types;

pub use backoff::{Backoff, Jitter};
pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{Error, Result, StorageError};
pub use executor::{
    Executor, ExecutorBuilder, ExecutorHandle, Idle, JobContext, Metrics, Outcome, Signal,
    wait_for_signal,
};
pub use job::{Claimed, DEFAULT_MAX_ATTEMPTS, Enqueued, Job, Lease, NewJob};
pub use limits::RateLimit;
pub use periodic::Periodic;
pub use store::{
    Cutoff, DEFAULT_CACHE_SIZE, DEFAULT_LEASE_TTL, FORMAT_VERSION, Filter, MAX_KEY, MAX_PAYLOAD,
    MAX_QUEUE_NAME, ParkScope, Problem, QueueControl, QueueStats, Retention, Stats, Store,
    StoreBuilder, WriteTx,
};
pub use types::{JobId, JobState, Timestamp};

#[doc(hidden)]
pub use store::decode as __decode;

#[doc = include_str!("../docs/design.md")]
pub mod design {}

/// The redb this build of quern uses, for [`Store::write`] transactions over your own tables.
pub use redb;

/// The README, whose example is compiled with the doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
