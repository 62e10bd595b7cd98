//! A worker: takes claimed jobs from the channel one at a time and runs each to its settlement.

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, TryRecvError};
use tokio::task::JoinError;
use tracing::Instrument;

use super::metrics::Counters;
use super::{Outcome, Shared, context};
use crate::error::Error;
use crate::job::{Claimed, Job, Lease};
use crate::store::Settle;

pub(crate) async fn run(shared: Arc<Shared>, rx: Receiver<Claimed>) {
    loop {
        if shared.stop.is_cancelled() {
            return;
        }
        let ready = shared.job_ready.notified();
        tokio::pin!(ready);
        ready.as_mut().enable();
        match rx.try_recv() {
            Ok(claimed) => {
                shared.room.notify_one();
                run_job(&shared, claimed).await;
                continue;
            }
            Err(TryRecvError::Disconnected) => return,
            Err(TryRecvError::Empty) => {}
        }
        tokio::select! {
            () = ready => {}
            () = shared.stop.cancelled() => return,
        }
    }
}

/// How a run ended.
enum End {
    Returned(Result<Outcome, JoinError>),
    TimedOut(Duration),
    Killed,
    LeaseLost,
}

async fn run_job(shared: &Shared, claimed: Claimed) {
    let span = tracing::info_span!(
        "job",
        id = %claimed.job.id,
        queue = %claimed.job.queue,
        attempt = claimed.job.attempts
    );
    let ctx = context(&shared.store, &claimed);
    let Claimed { job, lease } = claimed;
    async {
        shared.counters.start(shared.store.now().since(job.run_at));
        let task = tokio::spawn((shared.handler)(ctx).in_current_span());
        let end = supervise(shared, &job, &lease, task).await;
        shared.counters.end();
        settle(shared, &job, lease, end).await;
    }
    .instrument(span)
    .await;
}

/// Waits for the handler while heartbeating its lease; cancels it on timeout, shutdown or a lost
/// lease.
async fn supervise(
    shared: &Shared,
    job: &Job,
    lease: &Lease,
    mut task: tokio::task::JoinHandle<Outcome>,
) -> End {
    let timeout = job.timeout.or(shared.timeout);
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let period = (shared.store.lease_ttl() / 3).max(Duration::from_millis(10));
    let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    loop {
        tokio::select! {
            r = &mut task => return End::Returned(r),
            _ = beat.tick() => match shared.store.heartbeat_async(lease).await {
                Ok(()) => {}
                Err(Error::LeaseLost { .. }) => {
                    task.abort();
                    return End::LeaseLost;
                }
                Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
            },
            () = sleep_until(deadline) => {
                task.abort();
                return End::TimedOut(timeout.unwrap_or_default());
            }
            () = shared.kill.cancelled() => {
                task.abort();
                return End::Killed;
            }
        }
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

async fn settle(shared: &Shared, job: &Job, lease: Lease, end: End) {
    let c = &shared.counters;
    let how = match end {
        End::Returned(Ok(Outcome::Success)) => {
            Counters::add(&c.succeeded, 1);
            Settle::Complete
        }
        End::Returned(Ok(Outcome::Retry(e))) => failed(shared, job, e),
        End::Returned(Ok(Outcome::Snooze(d))) => {
            Counters::add(&c.snoozed, 1);
            Settle::Snooze(d)
        }
        End::Returned(Ok(Outcome::Discard(e))) => {
            Counters::add(&c.discarded, 1);
            shared
                .failures
                .failure(&job.queue, job.id, job.attempts, &e);
            Settle::Discard(e)
        }
        End::Returned(Err(e)) if e.is_panic() => {
            Counters::add(&c.panicked, 1);
            let message = panic_message(e.into_panic());
            failed(shared, job, format!("panicked: {message}"))
        }
        End::TimedOut(after) => {
            Counters::add(&c.timed_out, 1);
            failed(shared, job, format!("timed out after {after:?}"))
        }
        // Cancelled by shutdown (or from outside): not the job's fault.
        End::Returned(Err(_)) | End::Killed => Settle::Snooze(Duration::ZERO),
        End::LeaseLost => {
            Counters::add(&c.lease_lost, 1);
            tracing::info!("lease lost while running; the outcome is dropped");
            return;
        }
    };
    match shared.store.settle_async(lease, how).await {
        Ok(()) => {}
        Err(Error::LeaseLost { .. }) => {
            Counters::add(&c.lease_lost, 1);
            tracing::info!("lease lost before settling; the outcome is dropped");
        }
        Err(e) => tracing::error!(error = %e, "could not settle; the lease will expire"),
    }
}

fn failed(shared: &Shared, job: &Job, error: String) -> Settle {
    Counters::add(&shared.counters.failed, 1);
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
