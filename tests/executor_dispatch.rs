//! The executor: bounded dispatch, fixed concurrency, outcomes, recovery, shutdown, periodic
//! schedules. Time moves only through `ManualClock`; waits are on events, with timeouts.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use quern::{
    Backoff, Error, Executor, Filter, JobState, ManualClock, NewJob, Outcome, Periodic, Store,
    Timestamp,
};
use tokio::sync::{Semaphore, watch};

mod common;

use common::{WAIT, until};

/// A test store whose failed attempts retry only after an hour: an executor test sees a
/// failure stay failed.
fn open(dir: &tempfile::TempDir, clock: &ManualClock) -> Store {
    common::builder(clock)
        .backoff(Backoff::fixed(Duration::from_secs(3600)))
        .open(common::db(dir))
        .unwrap()
}

fn count(store: &Store, queue: &str, state: JobState) -> usize {
    store
        .list(&Filter::default().queue(queue).state(state))
        .unwrap()
        .len()
}

/// An executor of queue "q" whose jobs each wait for a permit of the returned gate, which
/// starts with `permits`.
fn gated(
    store: &Store,
    concurrency: usize,
    capacity: usize,
    permits: usize,
) -> (quern::ExecutorHandle, Arc<Semaphore>) {
    let gate = Arc::new(Semaphore::new(permits));
    let g = gate.clone();
    let handle = Executor::builder(store.clone())
        .queue("q")
        .concurrency(concurrency)
        .channel_capacity(capacity)
        .spawn(move |_ctx| {
            let g = g.clone();
            async move {
                g.acquire().await.unwrap().forget();
                Outcome::Success
            }
        })
        .unwrap();
    (handle, gate)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_channel_keeps_jobs_pending_and_runs_them_all_later() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::default();
    let store = open(&dir, &clock);
    store
        .enqueue_batch((0..50).map(|i| NewJob::new("q", format!("{i}"))))
        .unwrap();
    // Two jobs go through at once: the executor learns that jobs are quick, and fills the
    // channel ahead of its workers from then on.
    let (handle, gate) = gated(&store, 2, 3, 2);
    // Two running, three waiting in the channel: everything else stays pending on disk.
    until(
        &store,
        "2 succeeded, 5 claimed, 3 of them in the channel",
        || {
            count(&store, "q", JobState::Succeeded) == 2
                && count(&store, "q", JobState::InProgress) == 5
                && handle.metrics().channel_len == 3
        },
    )
    .await;
    assert_eq!(count(&store, "q", JobState::Pending), 43);
    gate.add_permits(50);
    until(&store, "all 50 succeeded", || {
        count(&store, "q", JobState::Succeeded) == 50
    })
    .await;
    handle.shutdown(WAIT).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_claimed_ahead_of_the_workers_before_a_job_has_ended() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::default();
    let store = open(&dir, &clock);
    store
        .enqueue_batch((0..20).map(|i| NewJob::new("q", format!("{i}"))))
        .unwrap();
    let (handle, gate) = gated(&store, 2, 8, 0);
    // How long a job runs is unknown until one ends: a job claimed ahead might wait in the
    // channel past its lease, so only idle workers are fed.
    until(&store, "2 started", || handle.metrics().started == 2).await;
    assert_eq!(count(&store, "q", JobState::InProgress), 2);
    assert_eq!(handle.metrics().channel_len, 0);
    gate.add_permits(20);
    until(&store, "all 20 succeeded", || {
        count(&store, "q", JobState::Succeeded) == 20
    })
    .await;
    handle.shutdown(WAIT).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_is_never_exceeded() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::default();
    let store = open(&dir, &clock);
    store
        .enqueue_batch((0..40).map(|i| NewJob::new("q", format!("{i}"))))
        .unwrap();
    let in_flight = Arc::new(AtomicUsize::new(0));
    let (peak_tx, mut peak_rx) = watch::channel(0usize);
    let peak_tx = Arc::new(peak_tx);
    let gate = Arc::new(Semaphore::new(0));
    let (f, p, g) = (in_flight.clone(), peak_tx.clone(), gate.clone());
    let handle = Executor::builder(store.clone())
        .queue("q")
        .concurrency(3)
        .spawn(move |_ctx| {
            let (f, p, g) = (f.clone(), p.clone(), g.clone());
            async move {
                let now = f.fetch_add(1, Ordering::SeqCst) + 1;
                p.send_modify(|m| *m = (*m).max(now));
                g.acquire().await.unwrap().forget();
                f.fetch_sub(1, Ordering::SeqCst);
                Outcome::Success
            }
        })
        .unwrap();
    tokio::time::timeout(WAIT, peak_rx.wait_for(|m| *m == 3))
        .await
        .expect("three handlers ran at once")
        .unwrap();
    gate.add_permits(1_000);
    until(&store, "all 40 succeeded", || {
        count(&store, "q", JobState::Succeeded) == 40
    })
    .await;
    assert_eq!(*peak_rx.borrow(), 3, "more than 3 handlers ran at once");
    assert_eq!(handle.metrics().max_running, 3);
    handle.shutdown(WAIT).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_settle_jobs_and_a_panic_is_a_failed_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::default();
    let store = open(&dir, &clock);
    let ids: HashMap<&str, quern::JobId> = ["ok", "retry", "discard", "panic", "snooze"]
        .into_iter()
        .map(|p| (p, store.enqueue(NewJob::new("q", p)).unwrap().id()))
        .collect();
    let handle = Executor::builder(store.clone())
        .queue("q")
        .spawn(|ctx| async move {
            match ctx.payload() {
                b"ok" => Outcome::Success,
                b"retry" => Outcome::retry("remote said 503"),
                b"discard" => Outcome::discard("bad payload"),
                b"snooze" => Outcome::Snooze(Duration::from_secs(60)),
                _ => panic!("handler blew up"),
            }
        })
        .unwrap();
    until(&store, "all five outcomes committed", || {
        let m = handle.metrics();
        m.succeeded + m.failed + m.discarded + m.snoozed == 5
    })
    .await;
    let get = |k: &str| store.get(ids[k]).unwrap().unwrap();
    assert_eq!(get("ok").state, JobState::Succeeded);
    let retry = get("retry");
    assert_eq!(retry.state, JobState::Failed);
    assert!(retry.next_attempt_at.is_some());
    assert_eq!(retry.last_error.as_deref(), Some("remote said 503"));
    let discard = get("discard");
    assert_eq!(
        (discard.state, discard.next_attempt_at),
        (JobState::Failed, None)
    );
    let panic = get("panic");
    assert_eq!(panic.state, JobState::Failed);
    assert_eq!(panic.attempts, 1);
    assert!(panic.last_error.unwrap().contains("handler blew up"));
    let snooze = get("snooze");
    assert_eq!((snooze.state, snooze.attempts), (JobState::Pending, 0));
    assert_eq!(
        snooze.run_at,
        clock_after(&clock, 60),
        "snoozed for 60 s from now"
    );
    let m = handle.metrics();
    assert_eq!(
        (m.succeeded, m.panicked, m.discarded, m.snoozed),
        (1, 1, 1, 1)
    );
    handle.shutdown(WAIT).await.unwrap();
}

/// A handler that settles its job in its own transaction (`JobContext::settle_in`) writes its
/// row and settles together; one that says `Outcome::Settled` without having settled fails its
/// attempt with an error that says so; a settle refused inside the transaction rolls the row
/// back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_settles_its_job_in_its_own_transaction() {
    use quern::redb::ReadableTable;
    const ROWS: quern::redb::TableDefinition<&str, u64> = quern::redb::TableDefinition::new("rows");
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::default();
    let store = open(&dir, &clock);
    let ids: HashMap<&str, quern::JobId> = ["pull", "snooze", "forgot", "stale"]
        .into_iter()
        .map(|p| (p, store.enqueue(NewJob::new("q", p)).unwrap().id()))
        .collect();
    let handle = Executor::builder(store.clone())
        .queue("q")
        .spawn(|ctx| async move {
            let name = String::from_utf8_lossy(ctx.payload()).into_owned();
            let written = match name.as_str() {
                "forgot" => return Outcome::Settled,
                "stale" => {
                    // The job is taken from this run before it settles.
                    ctx.store().cancel(ctx.job().id).unwrap();
                    ctx.settle_in(move |tx, lease| {
                        tx.open_table(ROWS)?.insert(name.as_str(), 1)?;
                        tx.complete(lease)
                    })
                    .await
                }
                "snooze" => {
                    ctx.settle_in(move |tx, lease| {
                        tx.open_table(ROWS)?.insert(name.as_str(), 1)?;
                        tx.snooze(lease, Duration::from_secs(60))
                    })
                    .await
                }
                _ => {
                    ctx.settle_in(move |tx, lease| {
                        tx.open_table(ROWS)?.insert(name.as_str(), 1)?;
                        tx.complete(lease)
                    })
                    .await
                }
            };
            match written {
                Ok(()) => Outcome::Settled,
                Err(e) => Outcome::discard(e),
            }
        })
        .unwrap();
    until(&store, "every job settled", || {
        let m = handle.metrics();
        m.settled_by_handler == 2 && m.failed == 1 && m.lease_lost + m.discarded >= 1
    })
    .await;
    handle.shutdown(WAIT).await.unwrap();
    let get = |k: &str| store.get(ids[k]).unwrap().unwrap();
    let row = |k: &str| {
        store
            .write(|tx| Ok::<_, Error>(tx.open_table(ROWS)?.get(k)?.map(|g| g.value())))
            .unwrap()
    };
    assert_eq!(get("pull").state, JobState::Succeeded);
    assert_eq!(row("pull"), Some(1));
    let snoozed = get("snooze");
    assert_eq!(
        (snoozed.state, snoozed.attempts, snoozed.run_at),
        (JobState::Pending, 0, clock_after(&clock, 60))
    );
    assert_eq!(row("snooze"), Some(1));
    let forgot = get("forgot");
    assert_eq!(forgot.state, JobState::Failed);
    assert!(
        forgot.last_error.unwrap().contains("without settling"),
        "the attempt fails saying why"
    );
    let stale = get("stale");
    assert_eq!(stale.last_error.as_deref(), Some("cancelled"));
    assert_eq!(
        row("stale"),
        None,
        "the row went back with the refused settle"
    );
    assert_eq!(store.check().unwrap(), []);
}

fn clock_after(clock: &ManualClock, secs: u64) -> Timestamp {
    use quern::Clock;
    clock.now().after(Duration::from_secs(secs))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snoozed_job_runs_again_without_spending_an_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::default();
    let store = open(&dir, &clock);
    let id = store
        .enqueue(NewJob::new("q", "x").max_attempts(1))
        .unwrap()
        .id();
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    let handle = Executor::builder(store.clone())
        .queue("q")
        .spawn(move |ctx| {
            let n = r.fetch_add(1, Ordering::SeqCst);
            let attempts = ctx.job().attempts;
            async move {
                assert_eq!(attempts, 1, "each run is the first attempt");
                if n == 0 {
                    Outcome::Snooze(Duration::from_secs(30))
                } else {
                    Outcome::Success
                }
            }
        })
        .unwrap();
    until(&store, "the snooze", || {
        store.get(id).unwrap().unwrap().state == JobState::Pending
            && runs.load(Ordering::SeqCst) == 1
    })
    .await;
    clock.advance(Duration::from_secs(31));
    handle.wake();
    until(&store, "the second run", || {
        store.get(id).unwrap().unwrap().state == JobState::Succeeded
    })
    .await;
    // With max_attempts 1, a spent attempt would have made the second run impossible.
    assert_eq!(store.get(id).unwrap().unwrap().attempts, 1);
    handle.shutdown(WAIT).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_after_a_crash_recovers_expired_leases_and_runs_everything() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::default();
    {
        let store = open(&dir, &clock);
        store
            .enqueue_batch((0..10).map(|i| NewJob::new("q", format!("{i}"))))
            .unwrap();
        // A worker claimed three jobs and died: its leases are left behind.
        let claimed = store.claim("q", 3).unwrap();
        assert_eq!(claimed.len(), 3);
        drop(claimed);
    }
    clock.advance(Duration::from_secs(31));
    let store = common::builder(&clock)
        .backoff(Backoff::fixed(Duration::ZERO))
        .open(common::db(&dir))
        .unwrap();
    let handle = Executor::builder(store.clone())
        .queue("q")
        .spawn(|_ctx| async { Outcome::Success })
        .unwrap();
    until(&store, "all 10 succeeded", || {
        count(&store, "q", JobState::Succeeded) == 10
    })
    .await;
    let recovered = store
        .list(&Filter::default().queue("q"))
        .unwrap()
        .into_iter()
        .filter(|j| j.attempts == 2)
        .count();
    assert_eq!(recovered, 3, "the three crashed attempts were counted");
    handle.shutdown(WAIT).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_lease_expired_and_was_recovered_cannot_settle() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::default();
    let store = open(&dir, &clock);
    let id = store.enqueue(NewJob::new("q", "x")).unwrap().id();
    let gate = Arc::new(Semaphore::new(0));
    let g = gate.clone();
    let handle = Executor::builder(store.clone())
        .queue("q")
        .spawn(move |_ctx| {
            let g = g.clone();
            async move {
                g.acquire().await.unwrap().forget();
                Outcome::Success
            }
        })
        .unwrap();
    until(&store, "the claim", || {
        store.get(id).unwrap().unwrap().state == JobState::InProgress
    })
    .await;
    clock.advance(Duration::from_secs(31));
    // Recovered here, or by the executor's own claim cycle if it looks first.
    store.recover_expired().unwrap();
    assert_eq!(store.get(id).unwrap().unwrap().state, JobState::Failed);
    gate.add_permits(1);
    until(&store, "the dropped outcome", || {
        handle.metrics().lease_lost == 1
    })
    .await;
    let job = store.get(id).unwrap().unwrap();
    assert_eq!(
        job.state,
        JobState::Failed,
        "the stale run's success was not recorded"
    );
    assert_eq!(job.last_error.as_deref(), Some("lease expired"));
    handle.shutdown(WAIT).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_leaves_nothing_in_progress_and_gives_attempts_back() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::default();
    let store = open(&dir, &clock);
    store
        .enqueue_batch((0..20).map(|i| NewJob::new("q", format!("{i}"))))
        .unwrap();
    let started = Arc::new(Semaphore::new(0));
    let s = started.clone();
    let handle = Executor::builder(store.clone())
        .queue("q")
        .concurrency(2)
        .channel_capacity(4)
        .spawn(move |_ctx| {
            let s = s.clone();
            async move {
                s.add_permits(1);
                // Never finishes by itself: shutdown must cancel it.
                std::future::pending::<()>().await;
                Outcome::Success
            }
        })
        .unwrap();
    tokio::time::timeout(WAIT, started.acquire_many(2))
        .await
        .unwrap()
        .unwrap()
        .forget();
    handle.shutdown(Duration::from_millis(50)).await.unwrap();
    let jobs = store.list(&Filter::default()).unwrap();
    assert!(
        jobs.iter().all(|j| j.state == JobState::Pending),
        "{jobs:#?}"
    );
    assert!(
        jobs.iter().all(|j| j.attempts == 0),
        "attempts were given back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_periodic_schedule_whose_job_the_store_would_refuse_is_refused_at_spawn() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::default();
    let store = open(&dir, &clock);
    let spawned = Executor::builder(store.clone())
        .queue("sync")
        .periodic(Periodic::new(
            "reconcile",
            Duration::from_secs(10),
            NewJob::new("sync", "reconcile").max_attempts(0),
        ))
        .spawn(|_ctx| async { Outcome::Success });
    match spawned {
        Err(Error::InvalidInput { what, reason }) => {
            assert_eq!(what, "periodic schedule");
            assert!(
                reason.contains("reconcile") && reason.contains("max_attempts"),
                "{reason}"
            );
        }
        Err(e) => panic!("expected InvalidInput, got {e}"),
        Ok(_) => panic!("an executor was spawned with a schedule it could never fire"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_jobs_fire_once_per_slot() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(Timestamp(1_000_000_001));
    let store = open(&dir, &clock);
    let runs = Arc::new(Mutex::new(Vec::new()));
    let r = runs.clone();
    let handle = Executor::builder(store.clone())
        .queue("sync")
        .periodic(Periodic::new(
            "reconcile",
            Duration::from_secs(10),
            NewJob::new("sync", "reconcile"),
        ))
        .spawn(move |ctx| {
            r.lock().push(ctx.job().run_at);
            async { Outcome::Success }
        })
        .unwrap();
    until(&store, "the first slot's run", || runs.lock().len() == 1).await;
    assert_eq!(
        runs.lock()[0],
        Timestamp(1_000_000_000),
        "run_at is the slot's start"
    );
    clock.advance(Duration::from_secs(5));
    handle.wake();
    clock.advance(Duration::from_secs(5));
    handle.wake();
    until(&store, "the second slot's run", || runs.lock().len() == 2).await;
    clock.advance(Duration::from_secs(10));
    handle.wake();
    until(&store, "the third slot's run", || runs.lock().len() == 3).await;
    assert_eq!(
        *runs.lock(),
        vec![
            Timestamp(1_000_000_000),
            Timestamp(1_000_010_000),
            Timestamp(1_000_020_000)
        ]
    );
    handle.shutdown(WAIT).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_executor_starts_a_new_job_without_waiting_for_a_poll() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::default();
    let store = open(&dir, &clock);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let handle = Executor::builder(store.clone())
        .queue("q")
        .poll_interval(Duration::from_secs(3600))
        .spawn(move |ctx| {
            let _ = tx.send(ctx.job().id);
            async { Outcome::Success }
        })
        .unwrap();
    let id = store.enqueue(NewJob::new("q", "x")).unwrap().id();
    let started = tokio::time::timeout(WAIT, rx.recv()).await.unwrap();
    assert_eq!(started, Some(id));
    handle.shutdown(WAIT).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_a_job_longer_than_its_lease() {
    // Real time here: the work takes four lease lengths, and only heartbeats keep it. The
    // lease is long enough that a debug build on a loaded machine beats in time (a beat every
    // third of a lease: 150 ms were too tight once in CI).
    let dir = tempfile::tempdir().unwrap();
    let store = Store::builder()
        .lease_ttl(Duration::from_millis(500))
        .open(common::db(&dir))
        .unwrap();
    let id = store.enqueue(NewJob::new("q", "slow")).unwrap().id();
    let handle = Executor::builder(store.clone())
        .queue("q")
        .spawn(|_ctx| async {
            tokio::time::sleep(Duration::from_millis(2000)).await;
            Outcome::Success
        })
        .unwrap();
    until(&store, "the slow job's success", || {
        store.get(id).unwrap().unwrap().state == JobState::Succeeded
    })
    .await;
    let job = store.get(id).unwrap().unwrap();
    assert_eq!(
        job.attempts, 1,
        "the lease never expired under the running job"
    );
    assert_eq!(handle.metrics().lease_lost, 0);
    handle.shutdown(WAIT).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_past_its_timeout_is_cancelled_as_a_failed_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::default();
    let store = open(&dir, &clock);
    let id = store
        .enqueue(NewJob::new("q", "stuck").timeout(Duration::from_millis(50)))
        .unwrap()
        .id();
    let handle = Executor::builder(store.clone())
        .queue("q")
        .spawn(|_ctx| async {
            std::future::pending::<()>().await;
            Outcome::Success
        })
        .unwrap();
    until(&store, "the timeout", || {
        store.get(id).unwrap().unwrap().state == JobState::Failed
    })
    .await;
    let job = store.get(id).unwrap().unwrap();
    assert!(job.last_error.unwrap().contains("timed out"));
    assert!(
        job.next_attempt_at.is_some(),
        "a timeout is retried like any failure"
    );
    assert_eq!(handle.metrics().timed_out, 1);
    handle.shutdown(WAIT).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_and_a_lease_too_long_for_the_clock_mean_no_limit() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::builder()
        .lease_ttl(Duration::MAX)
        .open(common::db(&dir))
        .unwrap();
    let id = store
        .enqueue(NewJob::new("q", "x").timeout(Duration::MAX))
        .unwrap()
        .id();
    let handle = Executor::builder(store.clone())
        .queue("q")
        .spawn(|_ctx| async { Outcome::Success })
        .unwrap();
    // The executor counts a success once its commit is done, just after the store shows it.
    until(&store, "the job to succeed", || {
        handle.metrics().succeeded == 1
    })
    .await;
    assert_eq!(store.get(id).unwrap().unwrap().state, JobState::Succeeded);
    handle.shutdown(WAIT).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_executor_behind_a_long_backlog_runs_the_most_urgent_job_first() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::default();
    let store = open(&dir, &clock);
    // More new jobs than one claim transaction indexes, then one that outranks them all.
    store
        .enqueue_batch((0..25_000).map(|i| NewJob::new("q", format!("{i}"))))
        .unwrap();
    store
        .enqueue(NewJob::new("q", "urgent").priority(10))
        .unwrap();
    let (first_tx, mut first_rx) = tokio::sync::mpsc::unbounded_channel();
    let handle = Executor::builder(store.clone())
        .queue("q")
        .concurrency(1)
        .channel_capacity(1)
        .spawn(move |ctx| {
            let _ = first_tx.send(ctx.payload().to_vec());
            async { Outcome::Success }
        })
        .unwrap();
    let first = tokio::time::timeout(WAIT, first_rx.recv()).await.unwrap();
    assert_eq!(first.as_deref(), Some(&b"urgent"[..]));
    handle.shutdown(WAIT).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_worker_starts_a_new_job_while_another_runs_a_long_one() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::default();
    let store = open(&dir, &clock);
    let (started_tx, mut started_rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    let long_gate = Arc::new(Semaphore::new(0));
    let gate = long_gate.clone();
    let handle = Executor::builder(store.clone())
        .queue("q")
        .concurrency(2)
        .spawn(move |ctx| {
            let payload = ctx.payload().to_vec();
            let _ = started_tx.send(payload.clone());
            let gate = gate.clone();
            async move {
                if payload == b"long" {
                    gate.acquire().await.unwrap().forget();
                }
                Outcome::Success
            }
        })
        .unwrap();
    let mut next_start = async || {
        tokio::time::timeout(WAIT, started_rx.recv())
            .await
            .expect("a job to start")
            .unwrap()
    };
    // One worker holds the long job; the other runs a short one and goes idle.
    store.enqueue(NewJob::new("q", "long")).unwrap();
    assert_eq!(next_start().await, b"long");
    let short = store.enqueue(NewJob::new("q", "short")).unwrap().id();
    assert_eq!(next_start().await, b"short");
    until(&store, "the short job to succeed", || {
        store.get(short).unwrap().unwrap().state == JobState::Succeeded
    })
    .await;
    // The idle worker starts the next job while the long one still runs.
    store.enqueue(NewJob::new("q", "third")).unwrap();
    assert_eq!(next_start().await, b"third");
    long_gate.add_permits(1);
    handle.shutdown(WAIT).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_sharing_a_concurrency_key_never_run_at_once_under_an_executor() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::default();
    let store = open(&dir, &clock);
    store
        .enqueue_batch((0..12).map(|i| NewJob::new("q", format!("{i}")).concurrency_key("org-7")))
        .unwrap();
    // Jobs of no key, which finish at once: the workers they free could take a second job of
    // the key, if the key let them.
    store
        .enqueue_batch((0..3).map(|i| NewJob::new("q", format!("free-{i}"))))
        .unwrap();
    let in_flight = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(0));
    let (f, p, g) = (in_flight.clone(), peak.clone(), gate.clone());
    let handle = Executor::builder(store.clone())
        .queue("q")
        .concurrency(4)
        .spawn(move |ctx| {
            let (f, p, g) = (f.clone(), p.clone(), g.clone());
            let keyed = ctx.job().concurrency_key.is_some();
            async move {
                if keyed {
                    // Held on the gate: a job of the key runs for as long as the test says.
                    let now = f.fetch_add(1, Ordering::SeqCst) + 1;
                    p.fetch_max(now, Ordering::SeqCst);
                    g.acquire().await.unwrap().forget();
                    f.fetch_sub(1, Ordering::SeqCst);
                }
                Outcome::Success
            }
        })
        .unwrap();
    // One job of the key is held running; the free jobs finished, their workers are idle.
    until(
        &store,
        "the free jobs succeeded and one keyed job runs",
        || count(&store, "q", JobState::Succeeded) == 3 && in_flight.load(Ordering::SeqCst) == 1,
    )
    .await;
    // A claim cycle runs after each commit: one more commit wakes it once the workers are idle.
    let seen = store.generation();
    store.enqueue(NewJob::new("other", "wake")).unwrap();
    tokio::time::timeout(WAIT, store.changed(seen))
        .await
        .unwrap();
    handle.wake();
    assert_eq!(count(&store, "q", JobState::InProgress), 1);
    assert_eq!(
        peak.load(Ordering::SeqCst),
        1,
        "two jobs of the key ran at once"
    );
    // Released one at a time, each next job of the key starts only after the one before ends.
    for done in 1..=12 {
        gate.add_permits(1);
        until(&store, "the next keyed job settles", || {
            count(&store, "q", JobState::Succeeded) == 3 + done
        })
        .await;
        assert_eq!(
            peak.load(Ordering::SeqCst),
            1,
            "two jobs of the key ran at once"
        );
    }
    handle.shutdown(WAIT).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_freed_by_a_lost_lease_gets_the_next_job_without_waiting_for_a_poll() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::default();
    let store = common::builder(&clock)
        // Heartbeats every 100 ms of real time: the run learns of the cancel quickly.
        .lease_ttl(Duration::from_millis(300))
        .open(common::db(&dir))
        .unwrap();
    let first = store
        .enqueue(NewJob::new("q", "blocks").priority(1))
        .unwrap()
        .id();
    let second = store.enqueue(NewJob::new("q", "next")).unwrap().id();
    let started = Arc::new(Mutex::new(Vec::new()));
    let s = started.clone();
    let handle = Executor::builder(store.clone())
        .queue("q")
        .concurrency(1)
        .poll_interval(Duration::from_secs(3600))
        .spawn(move |ctx| {
            s.lock().push(ctx.job().id);
            let blocks = ctx.payload() == b"blocks";
            async move {
                if blocks {
                    std::future::pending::<()>().await;
                }
                Outcome::Success
            }
        })
        .unwrap();
    until(&store, "the first job started", || {
        started.lock().as_slice() == [first]
    })
    .await;
    // The run's heartbeat finds its lease lost and ends it without a commit: the idle worker
    // must still be fed, not left waiting for the hour-long poll.
    store.cancel(first).unwrap();
    until(&store, "the second job succeeded", || {
        store.get(second).unwrap().unwrap().state == JobState::Succeeded
    })
    .await;
    assert_eq!(handle.metrics().lease_lost, 1);
    handle.shutdown(WAIT).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enqueue_for_idle_workers_is_claimed_in_its_own_commit_and_no_more() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::default();
    let store = open(&dir, &clock);
    let (handle, gate) = gated(&store, 2, 8, 0);
    // Two idle workers: each enqueue's commit claims its job, so it is in progress (its
    // attempt counted) by the time the enqueue returns, with no claim cycle in between.
    for n in 1..=2 {
        let id = store
            .enqueue(NewJob::new("q", format!("{n}")))
            .unwrap()
            .id();
        let job = store.get(id).unwrap().unwrap();
        assert_eq!(
            (job.state, job.attempts),
            (JobState::InProgress, 1),
            "job {n}"
        );
    }
    // No idle worker is left, and no job has ended: the third waits, pending.
    let id = store.enqueue(NewJob::new("q", "3")).unwrap().id();
    assert_eq!(store.get(id).unwrap().unwrap().state, JobState::Pending);
    gate.add_permits(3);
    until(&store, "all 3 succeeded", || {
        count(&store, "q", JobState::Succeeded) == 3
    })
    .await;
    assert_eq!(handle.metrics().claimed, 3);
    handle.shutdown(WAIT).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_panics_before_its_future_is_a_failed_attempt_and_its_worker_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::default();
    let store = open(&dir, &clock);
    let boom = store.enqueue(NewJob::new("q", "boom")).unwrap().id();
    let fine = store.enqueue(NewJob::new("q", "fine")).unwrap().id();
    // One worker: if the panic ended it, the second job would never run.
    let handle = Executor::builder(store.clone())
        .queue("q")
        .concurrency(1)
        .spawn(|ctx| {
            assert_ne!(ctx.payload(), b"boom", "handler blew up before its future");
            async { Outcome::Success }
        })
        .unwrap();
    until(&store, "the job after the panic succeeded", || {
        store.get(fine).unwrap().unwrap().state == JobState::Succeeded
    })
    .await;
    let job = store.get(boom).unwrap().unwrap();
    assert_eq!((job.state, job.attempts), (JobState::Failed, 1));
    assert!(
        job.last_error
            .unwrap()
            .contains("handler blew up before its future")
    );
    assert_eq!(handle.metrics().panicked, 1);
    handle.shutdown(WAIT).await.unwrap();
}

#[test]
fn spawning_outside_a_tokio_runtime_is_refused_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, &ManualClock::default());
    let spawned = Executor::builder(store)
        .queue("q")
        .spawn(|_ctx| async { Outcome::Success });
    match spawned {
        Err(Error::NoRuntime { operation }) => assert_eq!(operation, "ExecutorBuilder::spawn"),
        other => panic!("expected NoRuntime, got {other:?}"),
    }
}
