//! Run until idle: the claimer tells, after each claim cycle, whether the executor's queue had
//! nothing left to do at that cycle, and [`ExecutorHandle::idle`](super::ExecutorHandle::idle)
//! waits for such a cycle that began after it was called.
//!
//! A cycle counts as quiet when, before it began, no job waited in the channel, no worker held
//! one, no claim's room was reserved and no settle was waiting for its commit; and the cycle
//! then claimed nothing. Every outcome was committed before that cycle's transaction, which so
//! saw every job due: none is left to run now. The cycle also says when the queue's next job
//! comes due (a scheduled job, a retry, the end of a park or rate window), for a wait that
//! takes in the jobs due within a bound.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, watch};

use crate::error::{Error, Result};
use crate::types::Timestamp;

/// What [`ExecutorHandle::idle`](super::ExecutorHandle::idle) waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idle {
    /// Nothing of the queue is due now: no due pending job (jobs held back by a pause, a park
    /// or a rate limit are not due), nothing running, nothing claimed and waiting in memory.
    /// Retries and scheduled jobs due later are left for a later run.
    Now,
    /// As [`Idle::Now`], and no retry, scheduled job or end of a park comes due within this
    /// long: the executor runs those first. Periodic schedules do not count (a schedule always
    /// has a next slot).
    Within(Duration),
}

/// One claim cycle's verdict.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Verdict {
    /// The cycle's number: waits count only cycles that began after they did.
    pub cycle: u64,
    pub quiet: bool,
    /// When the queue's next job comes due, if one is waiting.
    pub next_work: Option<Timestamp>,
    /// The claimer has stopped: no verdict follows.
    pub stopped: bool,
    /// The cycle failed, as the cycles before it: [`Quiet::failure`] says why.
    pub failing: bool,
}

/// What the claimer and the waiters for idleness share.
pub(crate) struct Quiet {
    /// Cycles begun so far.
    begun: AtomicU64,
    verdict: watch::Sender<Verdict>,
    /// Someone waits for idleness: the last settle of a busy spell wakes the claimer, which
    /// then runs the cycle that finds the queue quiet. Nobody pays for this otherwise.
    wanted: AtomicBool,
    settled: Notify,
    /// The error of the last failed cycle, while cycles keep failing.
    failure: parking_lot::Mutex<Option<Error>>,
}

impl Quiet {
    pub(crate) fn new() -> Quiet {
        Quiet {
            begun: AtomicU64::new(0),
            verdict: watch::Sender::new(Verdict::default()),
            wanted: AtomicBool::new(false),
            settled: Notify::new(),
            failure: parking_lot::Mutex::new(None),
        }
    }

    /// Numbers a cycle about to begin.
    pub(crate) fn begin(&self) -> u64 {
        self.begun.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Tells the waiters what cycle `verdict.cycle` found.
    pub(crate) fn publish(&self, verdict: Verdict) {
        self.verdict.send_replace(verdict);
    }

    /// Cycle `cycle` failed with `error`, as the cycles before it: a waiter gets the error
    /// rather than wait for a verdict that may never come.
    pub(crate) fn failing(&self, cycle: u64, error: Error) {
        *self.failure.lock() = Some(error);
        self.verdict.send_replace(Verdict {
            cycle,
            failing: true,
            ..Verdict::default()
        });
    }

    /// The claimer stops: wakes every waiter with an error.
    pub(crate) fn stopped(&self) {
        self.verdict.send_modify(|v| v.stopped = true);
    }

    /// A settle committed: wakes the claimer if someone waits for idleness.
    pub(crate) fn settled(&self) {
        if self.wanted.load(Ordering::SeqCst) {
            self.settled.notify_one();
        }
    }

    /// Resolves when [`Quiet::settled`] woke the claimer.
    pub(crate) async fn settled_wake(&self) {
        self.settled.notified().await;
    }

    /// Waits for a quiet cycle begun after this call, which `until` accepts. `wake` makes the
    /// claimer run a cycle now; `now` is the store's clock.
    pub(crate) async fn wait(
        &self,
        until: Idle,
        wake: &Notify,
        now: impl Fn() -> Timestamp,
    ) -> Result<()> {
        let mut verdicts = self.verdict.subscribe();
        let after = self.begun.load(Ordering::SeqCst);
        self.wanted.store(true, Ordering::SeqCst);
        wake.notify_one();
        loop {
            let v = *verdicts.borrow_and_update();
            if v.stopped {
                return Err(Error::Closed);
            }
            if v.cycle > after
                && v.failing
                && let Some(e) = self.failure.lock().clone()
            {
                return Err(e);
            }
            if v.cycle > after && v.quiet {
                let done = match until {
                    Idle::Now => true,
                    Idle::Within(bound) => v.next_work.is_none_or(|t| t.since(now()) > bound),
                };
                if done {
                    return Ok(());
                }
            }
            if verdicts.changed().await.is_err() {
                return Err(Error::Closed);
            }
        }
    }
}

/// Tells the waiters that the claimer stopped, however it ends (a panic too).
pub(crate) struct StopGuard<'a>(pub &'a Quiet);

impl Drop for StopGuard<'_> {
    fn drop(&mut self) {
        self.0.stopped();
    }
}
