//! Counters an executor keeps, and the snapshot a user reads.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// A snapshot of an executor's counters and gauges, from
/// [`ExecutorHandle::metrics`](crate::ExecutorHandle::metrics).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Metrics {
    /// Jobs claimed from the store.
    pub claimed: u64,
    /// Jobs whose handler started.
    pub started: u64,
    /// Jobs that succeeded (counted once the success is committed, as are the other outcomes).
    pub succeeded: u64,
    /// Failed attempts (a `Retry` outcome, a panic or a timeout).
    pub failed: u64,
    /// Jobs discarded by their handler.
    pub discarded: u64,
    /// Jobs snoozed by their handler.
    pub snoozed: u64,
    /// Handlers that panicked (also counted in `failed`).
    pub panicked: u64,
    /// Handlers cancelled for running past their timeout (also counted in `failed`).
    pub timed_out: u64,
    /// Jobs whose lease was lost while they ran or waited; their outcome was dropped.
    pub lease_lost: u64,
    /// Jobs given back to pending, attempt returned, because the executor stopped.
    pub given_back: u64,
    /// Jobs whose handler parked their key or queue (the job itself snoozed to the park's end).
    pub parked: u64,
    /// Jobs their handler settled itself, in a transaction with its own writes
    /// ([`JobContext::settle_in`](crate::JobContext::settle_in)).
    pub settled_by_handler: u64,
    /// Handlers running now.
    pub running: u64,
    /// The most handlers that ever ran at once.
    pub max_running: u64,
    /// Claimed jobs waiting in the channel for a worker now.
    pub channel_len: usize,
    /// The largest delay from a job's due time to its start, by the store's clock.
    pub max_start_delay: Duration,
    /// The mean delay from a job's due time to its start, by the store's clock.
    pub mean_start_delay: Duration,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub claimed: AtomicU64,
    started: AtomicU64,
    pub succeeded: AtomicU64,
    pub failed: AtomicU64,
    pub discarded: AtomicU64,
    pub snoozed: AtomicU64,
    pub panicked: AtomicU64,
    pub timed_out: AtomicU64,
    pub lease_lost: AtomicU64,
    pub given_back: AtomicU64,
    pub settled_by_handler: AtomicU64,
    pub parked: AtomicU64,
    running: AtomicU64,
    max_running: AtomicU64,
    ended: AtomicU64,
    ran_us: AtomicU64,
    delay_total_ms: AtomicU64,
    delay_max_ms: AtomicU64,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    /// A handler starts, `delay` after its job came due.
    pub(crate) fn start(&self, delay: Duration) {
        self.started.fetch_add(1, Relaxed);
        let now = self.running.fetch_add(1, Relaxed) + 1;
        self.max_running.fetch_max(now, Relaxed);
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.delay_total_ms.fetch_add(ms, Relaxed);
        self.delay_max_ms.fetch_max(ms, Relaxed);
    }

    /// A handler ended after running for `ran`.
    pub(crate) fn end(&self, ran: Duration) {
        self.running.fetch_sub(1, Relaxed);
        let us = u64::try_from(ran.as_micros()).unwrap_or(u64::MAX);
        self.ran_us.fetch_add(us, Relaxed);
        self.ended.fetch_add(1, Relaxed);
    }

    /// How many handlers ended, and their total running time in microseconds.
    pub(crate) fn ran(&self) -> (u64, u64) {
        (self.ended.load(Relaxed), self.ran_us.load(Relaxed))
    }

    pub(crate) fn snapshot(&self, channel_len: usize) -> Metrics {
        let started = self.started.load(Relaxed);
        Metrics {
            claimed: self.claimed.load(Relaxed),
            started,
            succeeded: self.succeeded.load(Relaxed),
            failed: self.failed.load(Relaxed),
            discarded: self.discarded.load(Relaxed),
            snoozed: self.snoozed.load(Relaxed),
            panicked: self.panicked.load(Relaxed),
            timed_out: self.timed_out.load(Relaxed),
            lease_lost: self.lease_lost.load(Relaxed),
            given_back: self.given_back.load(Relaxed),
            settled_by_handler: self.settled_by_handler.load(Relaxed),
            parked: self.parked.load(Relaxed),
            running: self.running.load(Relaxed),
            max_running: self.max_running.load(Relaxed),
            channel_len,
            max_start_delay: Duration::from_millis(self.delay_max_ms.load(Relaxed)),
            mean_start_delay: Duration::from_millis(
                self.delay_total_ms
                    .load(Relaxed)
                    .checked_div(started)
                    .unwrap_or(0),
            ),
        }
    }
}
