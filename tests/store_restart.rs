//! A restart resumes at once: the jobs a stopped process left in progress are recovered when
//! the next writable open asks (`Store::recover_abandoned`, which an executor does when it
//! starts), not when their leases expire. The leases of the current open are never touched.
//! The SIGKILL form of this test is in `crash_sigkill.rs`.

mod common;

use common::{Env, assert_lease_lost, ms, secs, until};
use quern::{Error, Executor, JobState, NewJob, Outcome, Store};

/// The error a job recovered at restart carries.
const STOPPED: &str = "the process running it stopped";

#[test]
fn jobs_claimed_before_a_restart_are_due_at_once_with_their_attempt_counted() {
    let env = Env::new();
    let ids: Vec<_> = (0..3)
        .map(|i| env.enqueue(NewJob::new("q", format!("{i}"))))
        .collect();
    let stale = env.store.claim("q", 2).unwrap();
    let env = env.reopen();
    // Opening recovers nothing by itself: the CLI and readers see the jobs as left.
    assert_eq!(env.ids_in("q", JobState::InProgress), ids[..2]);

    // A job enqueued while they ran (later, but due before the recovery) waits behind them.
    env.advance(secs(1));
    let later = env.enqueue(NewJob::new("q", "later"));
    assert_eq!(env.store.recover_abandoned().unwrap(), 2);
    for &id in &ids[..2] {
        let job = env.job(id);
        assert_eq!(job.state, JobState::Pending, "job {id}");
        assert_eq!(job.attempts, 1, "job {id}: the attempt stays counted");
        assert!(
            job.run_at < env.now(),
            "job {id}: due at once, not after a lease or a backoff"
        );
        assert_eq!(job.last_error.as_deref(), Some(STOPPED));
    }
    // The dead process's leases are fenced off.
    for c in stale {
        let id = c.job.id;
        assert_lease_lost(env.store.complete(c.lease), id);
    }
    // Claimed again at once, in their place: first, as they were when claimed.
    assert_eq!(env.claim_ids("q", 2), ids[..2]);
    assert_eq!(env.claim_ids("q", 2), [ids[2], later]);
    assert!(env.store.check().unwrap().is_empty());
}

#[test]
fn the_leases_of_this_open_are_never_touched() {
    let env = Env::new();
    let old = env.enqueue(NewJob::new("q", "old"));
    env.claim_one("q");
    let env = env.reopen();
    let new = env.enqueue(NewJob::new("q", "new"));
    let mine = env.store.claim("q", 1).unwrap();
    assert_eq!(mine[0].job.id, new, "the new job is the only one claimable");
    assert_eq!(env.store.recover_abandoned().unwrap(), 1);
    assert_eq!(env.job(old).state, JobState::Pending);
    assert_eq!(env.job(new).state, JobState::InProgress);
    // A second call finds nothing: the old job's new claim is this open's too.
    env.claim_one("q");
    assert_eq!(env.store.recover_abandoned().unwrap(), 0);
    for c in mine {
        env.store.complete(c.lease).unwrap();
    }
    assert_eq!(env.job(new).state, JobState::Succeeded);
}

#[test]
fn a_job_that_stops_its_process_twice_running_waits_its_backoff() {
    let env = Env::new();
    let id = env.enqueue(NewJob::new("q", "poison").max_attempts(5));
    env.claim_one("q");
    let env = env.reopen();
    env.store.recover_abandoned().unwrap();
    env.claim_one("q");
    let env = env.reopen();
    assert_eq!(env.store.recover_abandoned().unwrap(), 1);
    let job = env.job(id);
    assert_eq!(job.state, JobState::Failed, "retrying, not due at once");
    assert_eq!(job.attempts, 2);
    assert_eq!(job.last_error.as_deref(), Some(STOPPED));
    let due = job.next_attempt_at.expect("a retry is scheduled");
    assert!(due > env.now(), "the retry waits its backoff");
    assert!(env.store.claim("q", 1).unwrap().is_empty());
    env.advance(due.since(env.now()));
    assert_eq!(env.store.promote_due().unwrap(), 1);
    assert_eq!(env.claim_ids("q", 1), [id]);
}

#[test]
fn a_job_whose_attempts_are_spent_fails_for_good_at_restart() {
    let env = Env::new();
    let id = env.enqueue(NewJob::new("q", "last").max_attempts(1));
    env.claim_one("q");
    let env = env.reopen();
    assert_eq!(env.store.recover_abandoned().unwrap(), 1);
    let job = env.job(id);
    assert_eq!((job.state, job.next_attempt_at), (JobState::Failed, None));
    assert_eq!(job.last_error.as_deref(), Some(STOPPED));
}

#[test]
fn a_follow_up_waiting_behind_an_abandoned_run_is_folded_into_it() {
    let env = Env::new();
    let id = env.enqueue(NewJob::new("q", "v1").unique_key("file").latest_wins());
    env.claim_one("q");
    let follow = env
        .store
        .enqueue(NewJob::new("q", "v2").unique_key("file").latest_wins());
    assert!(
        matches!(follow, Ok(quern::Enqueued::FollowUp { .. })),
        "{follow:?}"
    );
    let env = env.reopen();
    env.store.recover_abandoned().unwrap();
    let jobs = env
        .store
        .list(&quern::Filter::default().queue("q"))
        .unwrap();
    assert_eq!(jobs.len(), 1, "one job covers both enqueues: {jobs:?}");
    let claimed = env.claim_one("q");
    assert_eq!(claimed.job.id, id);
    assert_eq!(claimed.job.payload, b"v2", "the latest payload won");
    assert!(env.store.check().unwrap().is_empty());
}

#[test]
fn a_read_only_store_recovers_nothing() {
    let env = Env::shared();
    env.enqueue(NewJob::new("q", "x"));
    env.claim_one("q");
    let reader = Store::open_read_only(env.path()).unwrap();
    assert!(matches!(reader.recover_abandoned(), Err(Error::ReadOnly)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_executor_started_after_a_restart_runs_the_dead_process_jobs_before_their_leases_expire()
{
    let env = Env::new();
    let ids: Vec<_> = (0..4)
        .map(|i| env.enqueue(NewJob::new("q", format!("{i}"))))
        .collect();
    let stale = env.store.claim("q", 4).unwrap();
    drop(stale);
    let env = env.reopen();
    // The store's clock does not move: no lease can expire, no backoff can pass.
    let handle = Executor::builder(env.store.clone())
        .queue("q")
        .concurrency(2)
        .poll_interval(ms(20))
        .spawn(|_ctx| async { Outcome::Success })
        .unwrap();
    until(&env.store, "the abandoned jobs to succeed", || {
        ids.iter()
            .all(|&id| env.job(id).state == JobState::Succeeded)
    })
    .await;
    for &id in &ids {
        assert_eq!(
            env.job(id).attempts,
            2,
            "job {id}: the dead attempt counted"
        );
    }
    handle.shutdown(secs(5)).await.unwrap();
}
