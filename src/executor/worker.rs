//! A worker: takes claimed jobs from the channel one at a time and runs each to its settlement.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::task::JoinError;
use tracing::Instrument;

use super::metrics::Counters;
use super::{Outcome, Shared, context};
use crate::error::Error;
use crate::job::{Claimed, Job, Lease};
use crate::store::Settle;

pub(crate) async fn run(shared: Arc<Shared>) {
    while let Some(claimed) = shared.dispatch.next_job().await {
        run_job(&shared, claimed).await;
        shared.dispatch.job_done();
    }
}

/// How a run ended.
enum End {
    Returned(Result<Outcome, JoinError>),
    TimedOut(Duration),
    Killed,
    LeaseLost,
}

async fn run_job(shared: &Arc<Shared>, claimed: Claimed) {
    let span = tracing::info_span!(
        "job",
        id = %claimed.job.id,
        queue = %claimed.job.queue,
        attempt = claimed.job.attempts
    );
    let ctx = context(&shared.store, &claimed);
    let settled_by_handler = ctx.settled_flag();
    let Claimed { job, lease } = claimed;
    async {
        if !still_held(shared, &job, &lease).await {
            return;
        }
        shared.counters.start(shared.store.now().since(job.run_at));
        let started = std::time::Instant::now();
        // The handler is called inside the task, so that a panic before its first await is a
        // failed attempt like any other, not the end of this worker.
        let handler = shared.handler.clone();
        let task = tokio::spawn(async move { handler(ctx).await }.in_current_span());
        let end = supervise(shared, &job, &lease, task).await;
        shared.counters.end(started.elapsed());
        if settled_by_handler.load(Ordering::Acquire) {
            // Settled in the handler's own transaction: nothing is left to do, whatever it
            // returned.
            Counters::add(&shared.counters.settled_by_handler, 1);
            return;
        }
        settle(shared, &job, lease, end);
    }
    .instrument(span)
    .await;
}

/// A job may have waited in the channel while its lease ran down. If less than two thirds of
/// the lease is left, renew it before starting, and drop the job if it was taken away
/// meanwhile (recovered, cancelled). Fresh jobs, the common case, start without a commit.
async fn still_held(shared: &Shared, job: &Job, lease: &Lease) -> bool {
    let ttl = shared.store.lease_ttl();
    let left = job
        .lease_expires_at
        .map_or(Duration::ZERO, |exp| exp.since(shared.store.now()));
    if left >= ttl / 3 * 2 {
        return true;
    }
    match shared.store.heartbeat_async(lease).await {
        Ok(()) => true,
        Err(e) => {
            Counters::add(&shared.counters.lease_lost, 1);
            tracing::info!(error = %e, "a claimed job was lost before it started");
            false
        }
    }
}

/// The longest time between two heartbeats of a running job's lease.
const HEARTBEAT_MAX: Duration = Duration::from_secs(24 * 60 * 60);

/// Waits for the handler while heartbeating its lease; cancels it on timeout, shutdown or a lost
/// lease.
async fn supervise(
    shared: &Shared,
    job: &Job,
    lease: &Lease,
    mut task: tokio::task::JoinHandle<Outcome>,
) -> End {
    let timeout = job.timeout.or(shared.timeout);
    // A timeout past the clock's range (`Duration::MAX`) is no deadline at all.
    let deadline = timeout.and_then(|t| tokio::time::Instant::now().checked_add(t));
    // A beat at least daily: a lease of years would put the first beat past the clock's range.
    let period = (shared.store.lease_ttl() / 3).clamp(Duration::from_millis(10), HEARTBEAT_MAX);
    let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    loop {
        tokio::select! {
            r = &mut task => return End::Returned(r),
            _ = beat.tick() => match shared.store.heartbeat_async(lease).await {
                Ok(()) => {}
                Err(Error::LeaseLost { .. }) => {
                    stop_handler(&mut task).await;
                    return End::LeaseLost;
                }
                Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
            },
            () = sleep_until(deadline) => {
                stop_handler(&mut task).await;
                return End::TimedOut(timeout.unwrap_or_default());
            }
            () = shared.kill.cancelled() => {
                stop_handler(&mut task).await;
                return End::Killed;
            }
        }
    }
}

/// Cancels a handler and waits until its future is dropped (at its next await), so that what
/// it holds (its context's store handle, say) is released before the worker goes on: once
/// shutdown returns, no handler of this executor holds anything.
async fn stop_handler(task: &mut tokio::task::JoinHandle<Outcome>) {
    task.abort();
    let _ = task.await;
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Hands the job's outcome to the store. The worker does not wait for the commit: settles of
/// many jobs share commits, and a job whose settle is lost with the process is recovered and
/// run again. Shutdown waits for every settle in flight.
fn settle(shared: &Arc<Shared>, job: &Job, lease: Lease, end: End) {
    let (how, counter): (Settle, fn(&Counters) -> &AtomicU64) = match end {
        End::Returned(Ok(Outcome::Success)) => (Settle::Complete, |c| &c.succeeded),
        End::Returned(Ok(Outcome::Retry(e))) => (failed(shared, job, e), |c| &c.failed),
        End::Returned(Ok(Outcome::Snooze(d))) => (Settle::Snooze(d), |c| &c.snoozed),
        End::Returned(Ok(Outcome::Park {
            scope,
            duration,
            reason,
        })) => (Settle::Park(scope, duration, reason), |c| &c.parked),
        End::Returned(Ok(Outcome::Settled)) => {
            let error = "the handler returned Outcome::Settled without settling its job".into();
            (failed(shared, job, error), |c| &c.failed)
        }
        End::Returned(Ok(Outcome::Discard(e))) => {
            shared
                .failures
                .failure(&job.queue, job.id, job.attempts, &e);
            (Settle::Discard(e), |c| &c.discarded)
        }
        End::Returned(Err(e)) if e.is_panic() => {
            Counters::add(&shared.counters.panicked, 1);
            let message = panic_message(e.into_panic());
            let how = failed(shared, job, format!("panicked: {message}"));
            (how, |c| &c.failed)
        }
        End::TimedOut(after) => {
            Counters::add(&shared.counters.timed_out, 1);
            let how = failed(shared, job, format!("timed out after {after:?}"));
            (how, |c| &c.failed)
        }
        // Cancelled by shutdown (or from outside): not the job's fault.
        End::Returned(Err(_)) | End::Killed => (Settle::Snooze(Duration::ZERO), |c| &c.given_back),
        End::LeaseLost => {
            Counters::add(&shared.counters.lease_lost, 1);
            tracing::info!("lease lost while running; the outcome is dropped");
            return;
        }
    };
    let done = shared.settles.token();
    let shared2 = shared.clone();
    let quiet = shared.quiet.clone();
    let span = tracing::Span::current();
    let sent = shared.store.settle_then(lease, how, move |result| {
        let _entered = span.enter();
        match result {
            Ok(()) => Counters::add(counter(&shared2.counters), 1),
            Err(Error::LeaseLost { .. }) => {
                Counters::add(&shared2.counters.lease_lost, 1);
                tracing::info!("lease lost before settling; the outcome is dropped");
            }
            Err(e) => tracing::error!(error = %e, "could not settle; the lease will expire"),
        }
        // The executor (and its store handle) before the token: see `Shared::give_back`.
        drop(shared2);
        drop(done);
        quiet.settled();
    });
    if let Err(e) = sent {
        tracing::error!(error = %e, "could not settle; the lease will expire");
    }
}

fn failed(shared: &Shared, job: &Job, error: String) -> Settle {
    shared
        .failures
        .failure(&job.queue, job.id, job.attempts, &error);
    Settle::Fail(error)
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a non-string panic payload".to_owned()
    }
}
