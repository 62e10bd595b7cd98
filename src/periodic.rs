//! Periodic jobs: one job per period slot, never two live at once, on a cadence that survives
//! restarts (slots are counted from the Unix epoch, and the last slot fired is stored).

use std::time::Duration;

use crate::job::NewJob;
use crate::types::{Timestamp, duration_ms};

/// A job enqueued once per period, e.g. a reconcile pass every five minutes.
///
/// The slot of a time is `time / every`. When a slot starts and the schedule has not fired for it
/// yet, its job is enqueued with `run_at` at the slot's start. If the job of an earlier slot is
/// still live (pending, running or waiting for a retry), the new slot's job waits until that one
/// finishes, and is skipped if the slot is over by then: no two jobs of one schedule are ever
/// live at once. A process that was down through several slots fires once, for the current
/// slot.
///
/// ```
/// use std::time::Duration;
/// use quern::{NewJob, Periodic};
///
/// let reconcile = Periodic::new("reconcile", Duration::from_secs(300), NewJob::new("sync", "full"))
///     .single_attempt();
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Periodic {
    pub(crate) name: String,
    pub(crate) every_ms: u64,
    pub(crate) job: NewJob,
}

impl Periodic {
    /// A schedule named `name` (its identity across restarts) firing `job` every `every`
    /// (at least 1 ms). The job's unique key is replaced by one derived from the name.
    pub fn new(name: impl Into<String>, every: Duration, job: NewJob) -> Self {
        let name = name.into();
        let job = job.unique_key(format!("periodic:{name}"));
        Periodic {
            name,
            every_ms: duration_ms(every).max(1),
            job,
        }
    }

    /// One attempt per slot: a failed run is not retried; the next slot runs again.
    #[must_use]
    pub fn single_attempt(mut self) -> Self {
        self.job = self.job.max_attempts(1);
        self
    }

    /// The schedule's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The slot `now` falls in.
    pub(crate) fn slot(&self, now: Timestamp) -> u64 {
        now.0 / self.every_ms
    }

    /// When slot `slot` starts.
    pub(crate) fn slot_start(&self, slot: u64) -> Timestamp {
        Timestamp(slot.saturating_mul(self.every_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_count_from_the_epoch() {
        let p = Periodic::new("r", Duration::from_secs(10), NewJob::new("q", ""));
        assert_eq!(p.slot(Timestamp(0)), 0);
        assert_eq!(p.slot(Timestamp(9_999)), 0);
        assert_eq!(p.slot(Timestamp(10_000)), 1);
        assert_eq!(p.slot_start(3), Timestamp(30_000));
    }

    #[test]
    fn the_unique_key_comes_from_the_name() {
        let p = Periodic::new(
            "r",
            Duration::from_secs(1),
            NewJob::new("q", "").unique_key("x"),
        );
        assert_eq!(p.job.unique_key.as_deref(), Some("periodic:r"));
        assert_eq!(p.clone().single_attempt().job.max_attempts, 1);
    }
}
