//! The operator's calls: manual retry of a failed job (a fresh attempt chain) and cancel of a
//! live one (failed for good, "cancelled"), with every refusal.

mod common;

use common::{Env, T0, assert_invalid_state, assert_lease_lost, secs};
use quern::{Error, Filter, JobId, JobState, NewJob};

/// A job of queue "q" that failed once and waits for its retry 30 s later. It holds a unique
/// key, which a retry must not see as a conflict with itself.
fn scheduled_failure(env: &Env) -> JobId {
    let id = env.enqueue(NewJob::new("q", "x").max_attempts(3).unique_key("mine"));
    env.store.fail(env.claim_one("q").lease, "boom").unwrap();
    assert_eq!(env.job(id).next_attempt_at, Some(env.now().after(secs(30))));
    id
}

/// A job of queue "q" that failed for good after spending its two attempts.
fn terminal_failure(env: &Env) -> JobId {
    let id = env.enqueue(NewJob::new("q", "x").max_attempts(2));
    env.store.fail(env.claim_one("q").lease, "first").unwrap();
    env.advance(secs(30));
    env.store.promote_due().unwrap();
    env.store.fail(env.claim_one("q").lease, "last").unwrap();
    assert!(env.job(id).is_finished());
    id
}

/// Asserts the job was retried by hand just now: pending, due now, a fresh attempt chain, and
/// so in listings and stats before anything claims it.
fn assert_retried_now(env: &Env, id: JobId, manual_retries: u32) {
    let job = env.job(id);
    assert_eq!(job.state, JobState::Pending);
    assert_eq!(job.run_at, env.now());
    assert_eq!(job.attempts, 0);
    assert_eq!(job.manual_retries, manual_retries);
    assert_eq!((job.next_attempt_at, job.finished_at), (None, None));
    assert_eq!(job.updated_at, env.now());
    assert_eq!(env.ids_in("q", JobState::Pending), [id]);
    assert!(env.ids_in("q", JobState::Failed).is_empty());
    let stats = env.store.stats().unwrap();
    let q = stats.queue("q").unwrap();
    assert_eq!((q.pending, q.retrying, q.failed), (1, 0, 0));
    assert_eq!(q.oldest_due_pending, Some(env.now()));
    assert_eq!(q.next_retry_at, None);
}

#[test]
fn retry_of_a_scheduled_failure_makes_it_pending_now_with_a_fresh_attempt_chain() {
    let env = Env::new();
    let id = scheduled_failure(&env);
    env.advance(secs(5));
    env.store.retry(id).unwrap();
    assert_retried_now(&env, id, 1);
    assert_eq!(
        env.job(id).last_error.as_deref(),
        Some("boom"),
        "the last error stays visible"
    );
    env.advance(secs(60));
    assert_eq!(
        env.store.promote_due().unwrap(),
        0,
        "the old schedule is gone"
    );
    assert_eq!(env.claim_one("q").job.attempts, 1);
}

#[test]
fn retry_of_a_terminal_failure_makes_it_pending_now_with_a_fresh_attempt_chain() {
    let env = Env::new();
    let id = terminal_failure(&env);
    env.advance(secs(5));
    env.store.retry(id).unwrap();
    assert_retried_now(&env, id, 1);
    // The fresh chain has both attempts again, and the backoff starts over at 30 s.
    let claimed = env.claim_one("q");
    assert_eq!(claimed.job.attempts, 1);
    env.store.fail(claimed.lease, "again").unwrap();
    let job = env.job(id);
    assert_eq!(job.next_attempt_at, Some(env.now().after(secs(30))));
    env.advance(secs(30));
    env.store.promote_due().unwrap();
    env.store.fail(env.claim_one("q").lease, "again").unwrap();
    assert!(env.job(id).is_finished());
    env.store.retry(id).unwrap();
    assert_retried_now(&env, id, 2);
}

#[test]
fn retry_of_a_discarded_or_cancelled_job_runs_it_again() {
    let env = Env::new();
    let discarded = env.enqueue(NewJob::new("q", "d"));
    env.store.discard(env.claim_one("q").lease, "bad").unwrap();
    let cancelled = env.enqueue(NewJob::new("q", "c"));
    env.store.cancel(cancelled).unwrap();
    env.store.retry(discarded).unwrap();
    env.store.retry(cancelled).unwrap();
    assert_eq!(env.claim_ids("q", 10), [discarded, cancelled]);
}

#[test]
fn retry_of_a_pending_in_progress_or_succeeded_job_is_invalid_state() {
    let env = Env::new();
    let pending = env.enqueue(NewJob::new("q", "p").delay(secs(60)));
    let running = env.enqueue(NewJob::new("q", "r"));
    let done = env.enqueue(NewJob::new("q", "s"));
    let mut claimed = env.store.claim("q", 2).unwrap();
    env.store.complete(claimed.pop().unwrap().lease).unwrap();
    let before = env.store.list(&Filter::default()).unwrap();
    env.advance(secs(1));
    assert_invalid_state(
        env.store.retry(pending),
        pending,
        JobState::Pending,
        "retry",
    );
    assert_invalid_state(
        env.store.retry(running),
        running,
        JobState::InProgress,
        "retry",
    );
    assert_invalid_state(env.store.retry(done), done, JobState::Succeeded, "retry");
    assert_eq!(env.store.list(&Filter::default()).unwrap(), before);
}

#[test]
fn retry_of_a_job_enqueued_a_moment_ago_is_invalid_state() {
    // A job just enqueued is not yet in the indexes; retry must find it.
    let env = Env::new();
    let id = env.enqueue(NewJob::new("q", "x"));
    assert_invalid_state(env.store.retry(id), id, JobState::Pending, "retry");
    assert_eq!(env.job(id).state, JobState::Pending);
}

#[test]
fn retry_and_cancel_of_an_unknown_id_are_not_found() {
    let env = Env::new();
    let known = env.enqueue(NewJob::new("q", "x"));
    let unknown = JobId(known.0 + 1);
    assert!(matches!(
        env.store.retry(unknown),
        Err(Error::NotFound { job }) if job == unknown
    ));
    assert!(matches!(
        env.store.cancel(unknown),
        Err(Error::NotFound { job }) if job == unknown
    ));
    assert!(matches!(
        env.store.retry(JobId(0)),
        Err(Error::NotFound { .. })
    ));
}

#[test]
fn retry_and_cancel_of_a_pruned_job_are_not_found() {
    let env = Env::new();
    let id = env.enqueue(NewJob::new("q", "x"));
    env.store.cancel(id).unwrap();
    env.advance(secs(1));
    assert_eq!(env.store.prune(secs(0)).unwrap(), 1);
    assert!(matches!(env.store.retry(id), Err(Error::NotFound { job }) if job == id));
    assert!(matches!(env.store.cancel(id), Err(Error::NotFound { job }) if job == id));
}

#[test]
fn retry_is_refused_while_another_live_job_holds_the_unique_key() {
    let env = Env::new();
    let old = env.enqueue(NewJob::new("q", "old").unique_key("k"));
    env.store.discard(env.claim_one("q").lease, "bad").unwrap();
    let new = env.enqueue(NewJob::new("q", "new").unique_key("k"));
    let before = env.job(old);
    match env.store.retry(old) {
        Err(Error::UniqueConflict { job, existing }) => assert_eq!((job, existing), (old, new)),
        other => panic!("expected UniqueConflict, got {other:?}"),
    }
    assert_eq!(env.job(old), before);
    // Once the new job is done, the key is free and the old one may be retried.
    env.store.complete(env.claim_one("q").lease).unwrap();
    env.store.retry(old).unwrap();
    assert_eq!(
        env.store
            .enqueue(NewJob::new("q", "third").unique_key("k"))
            .unwrap(),
        quern::Enqueued::Coalesced(old),
        "the retried job holds its key again"
    );
}

/// Asserts the job was cancelled just now.
fn assert_cancelled_now(env: &Env, id: JobId) {
    let job = env.job(id);
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(job.next_attempt_at, None);
    assert_eq!(job.last_error.as_deref(), Some("cancelled"));
    assert_eq!(job.finished_at, Some(env.now()));
    assert_eq!(job.lease_expires_at, None);
    assert!(job.is_finished());
}

#[test]
fn cancel_of_a_pending_job_fails_it_for_good_as_cancelled() {
    let env = Env::new();
    let id = env.enqueue(NewJob::new("q", "x"));
    env.advance(secs(1));
    env.store.cancel(id).unwrap();
    assert_cancelled_now(&env, id);
    assert_eq!(env.job(id).attempts, 0);
    assert!(env.store.claim("q", 1).unwrap().is_empty());
}

#[test]
fn cancel_of_a_job_not_yet_due_fails_it_for_good() {
    let env = Env::new();
    let id = env.enqueue(NewJob::new("q", "x").delay(secs(60)));
    env.store.cancel(id).unwrap();
    assert_cancelled_now(&env, id);
    env.advance(secs(60));
    assert!(env.store.claim("q", 1).unwrap().is_empty());
}

#[test]
fn cancel_of_an_in_progress_job_fails_it_for_good_and_its_worker_loses_the_lease() {
    let env = Env::new();
    let id = env.enqueue(NewJob::new("q", "x"));
    let claimed = env.claim_one("q");
    env.advance(secs(1));
    env.store.cancel(id).unwrap();
    assert_cancelled_now(&env, id);
    assert_eq!(env.job(id).attempts, 1);
    let after = env.job(id);
    assert_lease_lost(env.store.heartbeat(&claimed.lease), id);
    assert_lease_lost(env.store.complete(claimed.lease), id);
    assert_eq!(env.job(id), after);
    env.advance(secs(3_600));
    assert_eq!(
        env.store.recover_expired().unwrap(),
        0,
        "no lease left to recover"
    );
}

#[test]
fn cancel_of_a_job_waiting_for_a_retry_fails_it_for_good() {
    let env = Env::new();
    let id = scheduled_failure(&env);
    env.advance(secs(1));
    env.store.cancel(id).unwrap();
    assert_cancelled_now(&env, id);
    env.advance(secs(3_600));
    assert_eq!(env.store.promote_due().unwrap(), 0);
    assert!(env.store.claim("q", 1).unwrap().is_empty());
    let stats = env.store.stats().unwrap();
    let q = stats.queue("q").unwrap();
    assert_eq!((q.retrying, q.failed, q.next_retry_at), (0, 1, None));
}

#[test]
fn cancel_of_a_finished_job_is_invalid_state_and_changes_nothing() {
    let env = Env::new();
    let done = env.enqueue(NewJob::new("q", "done"));
    env.store.complete(env.claim_one("q").lease).unwrap();
    let dead = terminal_failure(&env);
    let cancelled = env.enqueue(NewJob::new("q", "c"));
    env.store.cancel(cancelled).unwrap();
    let before = env.store.list(&Filter::default()).unwrap();
    env.advance(secs(1));
    assert_invalid_state(env.store.cancel(done), done, JobState::Succeeded, "cancel");
    assert_invalid_state(env.store.cancel(dead), dead, JobState::Failed, "cancel");
    assert_invalid_state(
        env.store.cancel(cancelled),
        cancelled,
        JobState::Failed,
        "cancel",
    );
    assert_eq!(env.store.list(&Filter::default()).unwrap(), before);
}

#[test]
fn a_cancelled_job_keeps_its_history_until_pruned() {
    let env = Env::new();
    let id = env.enqueue(NewJob::new("q", "x"));
    env.store.cancel(id).unwrap();
    env.advance(secs(59));
    assert_eq!(env.store.prune(secs(60)).unwrap(), 0);
    let job = env.job(id);
    assert_eq!(job.created_at, T0);
    assert_eq!(job.last_error.as_deref(), Some("cancelled"));
    env.advance(secs(2));
    assert_eq!(env.store.prune(secs(60)).unwrap(), 1);
    assert_eq!(env.store.get(id).unwrap(), None);
}
