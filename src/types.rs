//! The plain values every other module speaks in: ids, timestamps and the job state. A leaf:
//! it imports nothing of quern's.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch, as read from the store's [`Clock`](crate::Clock).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// The time `d` after `self`, saturating at the far future.
    #[must_use]
    pub fn after(self, d: Duration) -> Timestamp {
        Timestamp(self.0.saturating_add(duration_ms(d)))
    }

    /// The time `d` before `self`, saturating at the epoch.
    #[must_use]
    pub fn before(self, d: Duration) -> Timestamp {
        Timestamp(self.0.saturating_sub(duration_ms(d)))
    }

    /// How long after `earlier` this time is; zero when it is not after.
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

impl fmt::Display for Timestamp {
    /// Milliseconds since the epoch, followed by `ms`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}

/// Whole milliseconds in `d`, saturating.
pub(crate) fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The id of a job: increasing in enqueue order, never reused within a database.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct JobId(pub u64);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Where a job stands in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum JobState {
    /// Waiting to be claimed (possibly not before its `run_at`).
    Pending,
    /// Claimed by a worker holding its lease.
    InProgress,
    /// Done.
    Succeeded,
    /// Failed: a retry is scheduled when `next_attempt_at` is `Some`, otherwise it failed for
    /// good.
    Failed,
}

impl JobState {
    /// All states, in life order.
    pub const ALL: [JobState; 4] = [
        JobState::Pending,
        JobState::InProgress,
        JobState::Succeeded,
        JobState::Failed,
    ];

    /// The lowercase name used in output and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::InProgress => "in_progress",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
        }
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for JobState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobState::ALL
            .into_iter()
            .find(|st| st.as_str() == s || (s == "in-progress" && *st == JobState::InProgress))
            .ok_or_else(|| {
                format!("unknown state {s:?} (expected pending, in_progress, succeeded or failed)")
            })
    }
}
