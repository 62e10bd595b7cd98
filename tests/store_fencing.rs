//! Leases as fencing tokens: a lease whose job was recovered, claimed again, cancelled or pruned
//! gets `Error::LeaseLost` from every call that takes it, and the job is left exactly as it was.
//! Heartbeats extend a lease, and an expired lease whose job nobody recovered still holds.
//!
//! A lease cannot settle twice: `complete`, `fail`, `discard` and `snooze` take the `Lease` by
//! value and `Lease` is not `Clone`, so that is checked by the compiler, not here.

mod common;

use common::{Env, TTL, assert_lease_lost, secs};
use quern::{JobState, Lease, NewJob};

/// Every call that takes a lease.
#[derive(Debug, Clone, Copy)]
enum Call {
    Complete,
    Fail,
    Discard,
    Snooze,
    Heartbeat,
    SetProgress,
}

const CALLS: [Call; 6] = [
    Call::Complete,
    Call::Fail,
    Call::Discard,
    Call::Snooze,
    Call::Heartbeat,
    Call::SetProgress,
];

fn call(env: &Env, lease: Lease, call: Call) -> quern::Result<()> {
    match call {
        Call::Complete => env.store.complete(lease),
        Call::Fail => env.store.fail(lease, "stale fail"),
        Call::Discard => env.store.discard(lease, "stale discard"),
        Call::Snooze => env.store.snooze(lease, secs(60)),
        Call::Heartbeat => env.store.heartbeat(&lease),
        Call::SetProgress => env.store.set_progress(&lease, "stale progress"),
    }
}

/// For every call that takes a lease: makes a fresh job of its own queue whose lease `stale`
/// has made stale, makes the call with that lease a second later, and checks it is refused with
/// `LeaseLost` naming the job and that the job is unchanged, field for field.
fn every_call_is_refused_and_changes_nothing(stale: impl Fn(&Env, &str) -> Lease) {
    let env = Env::new();
    for (i, c) in CALLS.into_iter().enumerate() {
        let queue = format!("q{i}");
        let lease = stale(&env, &queue);
        let id = lease.job();
        let before = env.store.get(id).unwrap();
        env.advance(secs(1));
        assert_lease_lost(call(&env, lease, c), id);
        assert_eq!(env.store.get(id).unwrap(), before, "{c:?} changed job {id}");
    }
    assert!(
        env.store.check().unwrap().is_empty(),
        "the store's invariants hold"
    );
}

/// Claims a new job of `queue` and lets its lease expire and be recovered.
fn recovered(env: &Env, queue: &str) -> Lease {
    env.enqueue(NewJob::new(queue, "x"));
    let lease = env.claim_one(queue).lease;
    env.advance(TTL);
    assert!(env.store.recover_expired().unwrap() >= 1);
    lease
}

#[test]
fn a_lease_recovered_after_expiry_is_lost_to_every_call() {
    every_call_is_refused_and_changes_nothing(|env, queue| {
        let lease = recovered(env, queue);
        assert_eq!(env.job(lease.job()).state, JobState::Failed);
        lease
    });
}

#[test]
fn a_lease_whose_job_was_recovered_and_claimed_again_is_lost_to_every_call() {
    every_call_is_refused_and_changes_nothing(|env, queue| {
        let old = recovered(env, queue);
        env.advance(secs(30));
        env.store.promote_due().unwrap();
        let new = env.claim_one(queue);
        assert_eq!(new.job.id, old.job());
        assert!(new.lease.token() > old.token(), "a fresh token");
        assert_eq!(new.job.state, JobState::InProgress);
        old
    });
}

#[test]
fn a_lease_whose_job_was_cancelled_is_lost_to_every_call() {
    every_call_is_refused_and_changes_nothing(|env, queue| {
        env.enqueue(NewJob::new(queue, "x"));
        let lease = env.claim_one(queue).lease;
        env.store.cancel(lease.job()).unwrap();
        lease
    });
}

#[test]
fn a_lease_whose_job_was_pruned_is_lost_to_every_call() {
    every_call_is_refused_and_changes_nothing(|env, queue| {
        env.enqueue(NewJob::new(queue, "x"));
        let lease = env.claim_one(queue).lease;
        env.store.cancel(lease.job()).unwrap();
        env.advance(secs(1));
        assert_eq!(env.store.prune(secs(0)).unwrap(), 1);
        assert_eq!(env.store.get(lease.job()).unwrap(), None);
        lease
    });
}

#[test]
fn the_new_lease_holder_settles_normally_after_a_stale_lease_was_refused() {
    let env = Env::new();
    let old = recovered(&env, "q");
    env.advance(secs(30));
    env.store.promote_due().unwrap();
    let new = env.claim_one("q");
    assert_lease_lost(env.store.complete(old), new.job.id);
    env.store.complete(new.lease).unwrap();
    let job = env.job(new.job.id);
    assert_eq!((job.state, job.attempts), (JobState::Succeeded, 2));
}

#[test]
fn each_claim_gets_a_fresh_increasing_token() {
    let env = Env::new();
    env.store
        .enqueue_batch((0..4).map(|i| NewJob::new("q", format!("{i}"))))
        .unwrap();
    let tokens: Vec<u64> = env
        .store
        .claim("q", 2)
        .unwrap()
        .into_iter()
        .chain(env.store.claim("q", 2).unwrap())
        .map(|c| c.lease.token())
        .collect();
    assert!(tokens.windows(2).all(|w| w[0] < w[1]), "{tokens:?}");
}

#[test]
fn heartbeat_extends_the_lease_from_now() {
    let env = Env::new();
    let id = env.enqueue(NewJob::new("q", "x"));
    let claimed = env.claim_one("q");
    let start = env.now();
    assert_eq!(env.job(id).lease_expires_at, Some(start.after(TTL)));
    env.advance(secs(20));
    env.store.heartbeat(&claimed.lease).unwrap();
    let job = env.job(id);
    assert_eq!(job.lease_expires_at, Some(start.after(secs(20) + TTL)));
    assert_eq!(job.updated_at, env.now());
    assert_eq!((job.state, job.attempts), (JobState::InProgress, 1));
    // Past the first expiry, the heartbeat keeps it; at the new expiry it is recovered.
    env.advance(secs(15));
    assert_eq!(env.store.recover_expired().unwrap(), 0);
    assert_eq!(env.job(id).state, JobState::InProgress);
    env.advance(secs(15));
    assert_eq!(env.store.recover_expired().unwrap(), 1);
    assert_lease_lost(env.store.heartbeat(&claimed.lease), id);
}

#[test]
fn an_expired_lease_that_nobody_recovered_still_heartbeats_and_settles() {
    let env = Env::new();
    let id = env.enqueue(NewJob::new("q", "x"));
    let claimed = env.claim_one("q");
    env.advance(TTL + secs(5));
    env.store.heartbeat(&claimed.lease).unwrap();
    assert_eq!(env.job(id).lease_expires_at, Some(env.now().after(TTL)));
    assert_eq!(
        env.store.recover_expired().unwrap(),
        0,
        "the heartbeat renewed it"
    );
    env.advance(TTL + secs(5));
    env.store.complete(claimed.lease).unwrap();
    assert_eq!(env.job(id).state, JobState::Succeeded);
}

#[test]
fn progress_is_visible_while_the_job_runs_and_cleared_by_the_next_claim() {
    let env = Env::new();
    let id = env.enqueue(NewJob::new("q", "x"));
    let claimed = env.claim_one("q");
    env.advance(secs(1));
    env.store
        .set_progress(&claimed.lease, "uploaded 3/9")
        .unwrap();
    let job = env.job(id);
    assert_eq!(job.progress.as_deref(), Some("uploaded 3/9"));
    assert_eq!(job.updated_at, env.now());
    assert_eq!(
        job.lease_expires_at, claimed.job.lease_expires_at,
        "progress is not a heartbeat"
    );
    env.store.fail(claimed.lease, "boom").unwrap();
    env.advance(secs(30));
    env.store.promote_due().unwrap();
    assert_eq!(env.claim_one("q").job.progress, None);
}

#[test]
fn progress_text_is_cut_to_four_kib_at_a_char_boundary() {
    let env = Env::new();
    let id = env.enqueue(NewJob::new("q", "x"));
    let claimed = env.claim_one("q");
    let long = "é".repeat(4 * 1024);
    env.store
        .set_progress(&claimed.lease, long.clone())
        .unwrap();
    let kept = env.job(id).progress.unwrap();
    assert!(kept.len() <= 4 * 1024 && kept.len() > 4 * 1024 - 2);
    assert!(long.starts_with(&kept));
    env.store.fail(claimed.lease, "x".repeat(10_000)).unwrap();
    assert_eq!(env.job(id).last_error.unwrap().len(), 4 * 1024);
}
