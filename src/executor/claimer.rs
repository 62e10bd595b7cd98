//! The claimer: one task that keeps the dispatch channel fed.
//!
//! Each turn is one claim cycle (one transaction: recover expired leases, promote due retries,
//! fire periodic schedules, claim as many jobs as the channel has room for); the first also
//! recovers the jobs a stopped process left in progress, so that a restart resumes them at once. Then it sleeps
//! until the store changes, a worker frees room, the next job comes due, or the poll interval
//! passes. A job is claimed only when there is room to hand it over, so work that does not fit
//! stays pending in the database (queue-full recovery); none lives only in memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::Shared;
use super::dispatch::ClaimRoom;
use super::idle::{StopGuard, Verdict};
use super::metrics::Counters;
use crate::store::TakerId;

pub(crate) async fn run(shared: Arc<Shared>, taker: TakerId) {
    let store = &shared.store;
    let _stop = StopGuard(&shared.quiet);
    let mut last_retention: Option<Instant> = None;
    let mut pruning: Option<tokio::task::JoinHandle<()>> = None;
    let mut errors = 0u32;
    let mut demand = Demand::new(&shared);
    // Set while the claim cycles work through a backlog of new jobs (see `Cycle::indexing`).
    let mut through = None;
    // The first cycle that commits also recovers the jobs a stopped process left in progress.
    let mut abandoned = true;
    loop {
        if shared.stop.is_cancelled() {
            break;
        }
        // Retention runs beside the claim cycles, never in their way: a long history is
        // deleted in small transactions, and claims and settles commit between them. One at a
        // time; shutdown waits for the one under way.
        if let Some(retention) = shared.retention
            && last_retention.is_none_or(|t| t.elapsed() >= shared.retention_interval)
            && pruning
                .as_ref()
                .is_none_or(tokio::task::JoinHandle::is_finished)
        {
            last_retention = Some(Instant::now());
            let store = store.clone();
            pruning = Some(shared.housekeeping.spawn_blocking(move || {
                match store.apply_retention(&retention) {
                    Ok(n) if n > 0 => {
                        tracing::debug!(jobs = n, "retention pruned finished jobs")
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "retention failed"),
                }
            }));
        }
        // Read before the target, so that a settle committed meanwhile wakes the next sleep.
        let seen = store.generation();
        // The room is counted and reserved when the cycle is applied, after any hand-off
        // before it has put its jobs in the channel.
        let room = Arc::new(ClaimRoom {
            dispatch: shared.dispatch.clone(),
            ahead: demand.ahead(&shared),
        });
        let held = Arc::new(AtomicUsize::new(0));
        let mut wake_at = None;
        // Whether every outcome was committed before this cycle (see `idle.rs`).
        let number = shared.quiet.begin();
        let quiet = shared.dispatch.is_empty() && shared.settles.is_empty();
        let cycle = store
            .claim_cycle(
                shared.queue.clone(),
                room,
                held.clone(),
                shared.periodic.clone(),
                through,
                abandoned,
            )
            .await;
        match cycle {
            Ok((cycle, want)) => {
                errors = 0;
                abandoned = false;
                let claimed = cycle.claimed.len();
                // Quiet before it, and still after it: a hand-off at the commit of an enqueue
                // may have put a job in the channel meanwhile.
                let quiet = quiet
                    && claimed == 0
                    && cycle.indexing.is_none()
                    && shared.dispatch.is_empty()
                    && shared.settles.is_empty();
                shared.quiet.publish(Verdict {
                    cycle: number,
                    quiet,
                    next_work: cycle.next_work,
                    ..Verdict::default()
                });
                Counters::add(&shared.counters.claimed, claimed as u64);
                // It claimed no more than the room it reserved, and holds that room until its
                // jobs are in the channel.
                let held = held.load(Ordering::SeqCst);
                shared
                    .dispatch
                    .hand_over(cycle.claimed, held, |job| shared.give_back(job));
                tracing::trace!(claimed, want, "claim cycle");
                // A bounded cycle (one that finished indexing a backlog) saw only the jobs
                // up to its bound: one more cycle at once sees those enqueued since, which a
                // claim elsewhere may have indexed without a commit this claimer would wake to.
                let bounded = through.is_some();
                through = cycle.indexing;
                if through.is_some() || bounded || (want > 0 && claimed == want) {
                    continue;
                }
                wake_at = cycle.next_due;
            }
            Err(e) => {
                shared.dispatch.release(held.load(Ordering::SeqCst));
                errors = errors.saturating_add(1);
                if errors >= 3 {
                    shared.quiet.failing(number, e.clone());
                }
                if errors == 1 {
                    tracing::warn!(queue = %shared.queue, error = %e, "claim failed; retrying");
                } else {
                    tracing::debug!(queue = %shared.queue, error = %e, errors, "claim failed");
                }
            }
        }
        let mut sleep = wake_at
            .map_or(shared.poll_interval, |t| t.since(store.now()))
            .min(shared.poll_interval);
        if errors > 0 {
            sleep = Duration::from_millis(10u64 << errors.min(7)).min(shared.poll_interval);
        }
        tokio::select! {
            () = shared.stop.cancelled() => break,
            _ = store.changed(seen), if errors == 0 => {}
            () = shared.dispatch.room_made() => {}
            () = shared.wake.notified() => {}
            () = shared.quiet.settled_wake() => {}
            () = tokio::time::sleep(sleep) => {}
        }
    }
    // No more jobs from enqueue commits: once this returns, none is being handed over. It
    // may wait for a commit under way, so not on a runtime thread.
    let s = store.clone();
    if tokio::task::spawn_blocking(move || s.remove_taker(taker))
        .await
        .is_err()
    {
        // The blocking pool is gone (the runtime is shutting down): remove it here.
        store.remove_taker(taker);
    }
    // Jobs claimed but not started go back to pending, their attempts given back.
    while let Some(job) = shared.dispatch.take_waiting() {
        shared.give_back(job);
    }
}

/// How many claimed jobs should wait in the channel: one for each idle worker, and ahead of
/// those as many as the workers, at the mean running time of recent jobs, will start within a
/// third of a lease (Little's law), so that a job starts with most of its lease left and none
/// expires while it waits; at most the channel's capacity. Fast jobs get the whole channel, and
/// claims that share commits; jobs that run longer than a third of a lease are claimed only as
/// workers free up. Until a job has ended, nothing is claimed ahead.
struct Demand {
    ended: u64,
    ran_us: u64,
    /// The mean running time of recent jobs, in seconds, smoothed.
    mean: Option<f64>,
}

impl Demand {
    fn new(shared: &Shared) -> Self {
        let (ended, ran_us) = shared.counters.ran();
        Demand {
            ended,
            ran_us,
            mean: None,
        }
    }

    /// How many jobs to claim ahead of the idle workers.
    fn ahead(&mut self, shared: &Shared) -> usize {
        let (ended, ran_us) = shared.counters.ran();
        if ended > self.ended {
            let recent =
                ran_us.saturating_sub(self.ran_us) as f64 / 1e6 / (ended - self.ended) as f64;
            self.mean = Some(self.mean.map_or(recent, |m| (m + recent) / 2.0));
            self.ended = ended;
            self.ran_us = ran_us;
        }
        let horizon = shared.store.lease_ttl().as_secs_f64() / 3.0;
        self.mean.map_or(0, |mean| {
            // A saturating conversion: a tiny mean gives usize::MAX, clamped when reserved.
            (shared.concurrency as f64 * horizon / mean.max(1e-9)) as usize
        })
    }
}
