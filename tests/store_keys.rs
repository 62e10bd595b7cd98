//! Strict unique keys (refusing enqueues while a job with the key is live, running included)
//! and concurrency keys (at most one job per key in progress), both per queue. The change-safe
//! unique keys, the default, are in `store_sync.rs`.

mod common;

use common::{Env, TTL, secs};
use quern::{Enqueued, Filter, JobId, JobState, NewJob};

fn keyed(queue: &str, payload: &str, key: &str) -> NewJob {
    NewJob::new(queue, payload).unique_key_strict(key)
}

/// Asserts that enqueueing another job with `key` is answered with the existing job `id`, and
/// writes nothing.
fn assert_coalesced(env: &Env, key: &str, id: JobId) {
    let before = env.store.list(&Filter::default()).unwrap();
    assert_eq!(
        env.store.enqueue(keyed("q", "again", key)).unwrap(),
        Enqueued::Duplicate(id)
    );
    assert_eq!(
        env.store.list(&Filter::default()).unwrap(),
        before,
        "a duplicate writes nothing and leaves the existing job as it was"
    );
}

/// Asserts that enqueueing with `key` creates a new job.
fn assert_key_free(env: &Env, key: &str, old: JobId) {
    match env.store.enqueue(keyed("q", "again", key)).unwrap() {
        Enqueued::Created(id) => assert!(id > old),
        other => panic!("key {key} still held: {other:?}"),
    }
}

#[test]
fn a_strict_unique_key_coalesces_enqueues_while_its_job_is_pending() {
    let env = Env::new();
    let id = env.enqueue(keyed("q", "first", "k"));
    assert_coalesced(&env, "k", id);
    assert_eq!(env.job(id).payload, b"first");
}

#[test]
fn a_strict_unique_key_coalesces_enqueues_while_its_job_is_not_yet_due() {
    let env = Env::new();
    let id = env.enqueue(keyed("q", "first", "k").delay(secs(3_600)));
    assert_coalesced(&env, "k", id);
}

#[test]
fn a_strict_unique_key_coalesces_enqueues_while_its_job_is_in_progress() {
    let env = Env::new();
    let id = env.enqueue(keyed("q", "first", "k"));
    let _running = env.claim_one("q");
    assert_coalesced(&env, "k", id);
}

#[test]
fn a_strict_unique_key_coalesces_enqueues_while_its_job_waits_for_a_retry() {
    let env = Env::new();
    let id = env.enqueue(keyed("q", "first", "k"));
    env.store.fail(env.claim_one("q").lease, "boom").unwrap();
    assert!(env.job(id).next_attempt_at.is_some());
    assert_coalesced(&env, "k", id);
    env.advance(secs(30));
    env.store.promote_due().unwrap();
    assert_coalesced(&env, "k", id);
}

#[test]
fn a_strict_unique_key_coalesces_enqueues_while_its_job_is_snoozed() {
    let env = Env::new();
    let id = env.enqueue(keyed("q", "first", "k"));
    env.store
        .snooze(env.claim_one("q").lease, secs(60))
        .unwrap();
    assert_coalesced(&env, "k", id);
}

#[test]
fn a_strict_unique_key_is_free_again_after_its_job_succeeds() {
    let env = Env::new();
    let id = env.enqueue(keyed("q", "first", "k"));
    env.store.complete(env.claim_one("q").lease).unwrap();
    assert_key_free(&env, "k", id);
}

#[test]
fn a_strict_unique_key_is_free_again_after_its_job_fails_for_good() {
    let env = Env::new();
    let id = env.enqueue(keyed("q", "first", "k").max_attempts(1));
    env.store.fail(env.claim_one("q").lease, "boom").unwrap();
    assert_key_free(&env, "k", id);
}

#[test]
fn a_strict_unique_key_is_free_again_after_its_job_is_discarded() {
    let env = Env::new();
    let id = env.enqueue(keyed("q", "first", "k"));
    env.store.discard(env.claim_one("q").lease, "bad").unwrap();
    assert_key_free(&env, "k", id);
}

#[test]
fn a_strict_unique_key_is_free_again_after_its_job_is_cancelled() {
    let env = Env::new();
    let id = env.enqueue(keyed("q", "first", "k"));
    env.store.cancel(id).unwrap();
    assert_key_free(&env, "k", id);
}

#[test]
fn a_strict_unique_key_is_free_again_after_the_last_attempt_is_recovered() {
    let env = Env::new();
    let id = env.enqueue(keyed("q", "first", "k").max_attempts(1));
    let _lost = env.claim_one("q");
    env.advance(TTL);
    assert_eq!(env.store.recover_expired().unwrap(), 1);
    assert_key_free(&env, "k", id);
}

#[test]
fn unique_keys_are_per_queue() {
    let env = Env::new();
    let a = env.enqueue(keyed("a", "x", "k"));
    let b = env.enqueue(keyed("b", "x", "k"));
    assert_ne!(a, b);
    assert_eq!(
        env.store.enqueue(keyed("b", "y", "k")).unwrap(),
        Enqueued::Duplicate(b)
    );
    assert_eq!(
        env.store.enqueue(keyed("a", "y", "k")).unwrap(),
        Enqueued::Duplicate(a)
    );
}

#[test]
fn a_batch_coalesces_a_key_repeated_inside_it_with_its_first_job() {
    let env = Env::new();
    let out = env
        .store
        .enqueue_batch([
            keyed("q", "1", "a"),
            keyed("q", "2", "b"),
            keyed("q", "3", "a"),
            NewJob::new("q", "4"),
            keyed("q", "5", "b"),
        ])
        .unwrap();
    let (a, b, c) = (out[0].id(), out[1].id(), out[3].id());
    assert_eq!(
        out,
        [
            Enqueued::Created(a),
            Enqueued::Created(b),
            Enqueued::Duplicate(a),
            Enqueued::Created(c),
            Enqueued::Duplicate(b),
        ]
    );
    let payloads: Vec<Vec<u8>> = env
        .store
        .list(&Filter::default())
        .unwrap()
        .into_iter()
        .map(|j| j.payload)
        .collect();
    assert_eq!(payloads, [b"1", b"2", b"4"]);
}

#[test]
fn a_batch_coalesces_a_key_held_by_a_job_from_before_it() {
    let env = Env::new();
    let held = env.enqueue(keyed("q", "0", "a"));
    let out = env
        .store
        .enqueue_batch([keyed("q", "1", "a"), keyed("other", "2", "a")])
        .unwrap();
    assert_eq!(out[0], Enqueued::Duplicate(held));
    assert!(matches!(out[1], Enqueued::Created(_)), "another queue");
}

#[test]
fn claim_never_hands_out_a_second_job_whose_concurrency_key_is_in_progress() {
    let env = Env::new();
    let a1 = env.enqueue(NewJob::new("q", "a1").concurrency_key("a"));
    let a2 = env.enqueue(NewJob::new("q", "a2").concurrency_key("a"));
    let b1 = env.enqueue(NewJob::new("q", "b1").concurrency_key("b"));
    let free = env.enqueue(NewJob::new("q", "free"));
    let mut claimed = env.store.claim("q", 10).unwrap();
    let ids: Vec<JobId> = claimed.iter().map(|c| c.job.id).collect();
    assert_eq!(ids, [a1, b1, free], "a2 waits for a1, even in one claim");
    assert!(env.store.claim("q", 10).unwrap().is_empty());
    assert_eq!(env.job(a2).state, JobState::Pending);
    env.store.complete(claimed.remove(0).lease).unwrap();
    assert_eq!(env.claim_ids("q", 10), [a2], "released when a1 settles");
}

#[test]
fn a_claim_of_n_skips_a_blocked_job_and_still_fills_n() {
    let env = Env::new();
    let a1 = env.enqueue(NewJob::new("q", "a1").concurrency_key("a"));
    let _a2 = env.enqueue(NewJob::new("q", "a2").concurrency_key("a"));
    let other = env.enqueue(NewJob::new("q", "other"));
    assert_eq!(env.claim_ids("q", 2), [a1, other]);
}

/// Runs a1 and a2 (same concurrency key): a1 is claimed, a2 is blocked behind it, then `settle`
/// takes a1 out of progress; a2 must be claimable after.
fn the_key_is_released_when(settle: impl FnOnce(&Env, quern::Claimed)) {
    let env = Env::new();
    env.enqueue(NewJob::new("q", "a1").concurrency_key("a"));
    let a2 = env.enqueue(NewJob::new("q", "a2").concurrency_key("a"));
    let a1 = env.claim_one("q");
    assert!(
        env.store.claim("q", 10).unwrap().is_empty(),
        "a2 is blocked"
    );
    settle(&env, a1);
    assert_eq!(env.claim_ids("q", 10), [a2]);
    assert!(env.store.check().unwrap().is_empty());
}

#[test]
fn a_concurrency_key_is_released_when_its_job_fails_with_a_retry() {
    the_key_is_released_when(|env, c| env.store.fail(c.lease, "boom").unwrap());
}

#[test]
fn a_concurrency_key_is_released_when_its_job_is_discarded() {
    the_key_is_released_when(|env, c| env.store.discard(c.lease, "bad").unwrap());
}

#[test]
fn a_concurrency_key_is_released_when_its_job_is_snoozed() {
    the_key_is_released_when(|env, c| env.store.snooze(c.lease, secs(60)).unwrap());
}

#[test]
fn a_concurrency_key_is_released_when_its_running_job_is_cancelled() {
    the_key_is_released_when(|env, c| env.store.cancel(c.job.id).unwrap());
}

#[test]
fn a_concurrency_key_is_released_when_its_expired_lease_is_recovered() {
    the_key_is_released_when(|env, _c| {
        env.advance(TTL);
        assert_eq!(env.store.recover_expired().unwrap(), 1);
    });
}

#[test]
fn a_released_blocked_job_keeps_its_place_in_priority_order() {
    let env = Env::new();
    let holder = env.enqueue(NewJob::new("q", "holder").concurrency_key("a").priority(9));
    let urgent = env.enqueue(NewJob::new("q", "urgent").concurrency_key("a").priority(5));
    let low = env.enqueue(NewJob::new("q", "low"));
    let c = env.claim_one("q");
    assert_eq!(c.job.id, holder);
    // A claim that reaches `urgent` while its key is busy passes it by.
    let more = env.store.claim("q", 1).unwrap();
    assert_eq!(more[0].job.id, low);
    env.enqueue(NewJob::new("q", "mid").priority(1));
    env.store.complete(c.lease).unwrap();
    assert_eq!(env.claim_ids("q", 1), [urgent], "priority 5 before 1");
}

#[test]
fn concurrency_keys_are_per_queue() {
    let env = Env::new();
    let a = env.enqueue(NewJob::new("a", "x").concurrency_key("k"));
    let b = env.enqueue(NewJob::new("b", "x").concurrency_key("k"));
    assert_eq!(env.claim_ids("a", 1), [a]);
    assert_eq!(env.claim_ids("b", 1), [b]);
}

#[test]
fn a_strict_unique_key_does_not_limit_concurrency_nor_a_concurrency_key_coalesce() {
    let env = Env::new();
    let one = env.enqueue(NewJob::new("q", "1").concurrency_key("k"));
    let two = env.enqueue(NewJob::new("q", "2").concurrency_key("k"));
    assert_ne!(one, two, "same concurrency key, two jobs");
    let x = env.enqueue(NewJob::new("q", "x").unique_key("u").concurrency_key("x"));
    let y = env.enqueue(NewJob::new("q", "y").unique_key("v").concurrency_key("y"));
    let claimed = env.claim_ids("q", 10);
    assert_eq!(claimed, [one, x, y]);
}

#[test]
fn jobs_sharing_a_concurrency_key_run_one_at_a_time_in_order() {
    let env = Env::new();
    let ids: Vec<JobId> = (0..5)
        .map(|i| env.enqueue(NewJob::new("q", format!("{i}")).concurrency_key("k")))
        .collect();
    for &id in &ids {
        let mut claimed = env.store.claim("q", 10).unwrap();
        assert_eq!(claimed.len(), 1, "one at a time");
        let c = claimed.pop().unwrap();
        assert_eq!(c.job.id, id);
        env.store.complete(c.lease).unwrap();
    }
    assert!(env.store.claim("q", 10).unwrap().is_empty());
    assert_eq!(env.ids_in("q", JobState::Succeeded), ids);
}

#[test]
fn a_claim_reaches_a_free_job_behind_hundreds_of_blocked_ones() {
    let env = Env::new();
    let ids: Vec<JobId> = env
        .store
        .enqueue_batch(
            (0..150)
                .map(|i| NewJob::new("q", format!("{i}")).concurrency_key("k"))
                .chain([NewJob::new("q", "free").priority(-1)]),
        )
        .unwrap()
        .into_iter()
        .map(Enqueued::id)
        .collect();
    let free = ids[150];
    assert_eq!(env.claim_ids("q", 10), [ids[0], free]);
    assert!(env.store.check().unwrap().is_empty());
}

#[test]
fn cancelling_a_blocked_job_lets_the_next_job_of_its_key_run() {
    let env = Env::new();
    env.enqueue(NewJob::new("q", "a1").concurrency_key("a"));
    let a2 = env.enqueue(NewJob::new("q", "a2").concurrency_key("a"));
    let a3 = env.enqueue(NewJob::new("q", "a3").concurrency_key("a"));
    let a1 = env.claim_one("q");
    assert!(
        env.store.claim("q", 10).unwrap().is_empty(),
        "a2, a3 blocked"
    );
    env.store.cancel(a2).unwrap();
    assert!(env.store.check().unwrap().is_empty());
    env.store.complete(a1.lease).unwrap();
    assert_eq!(env.claim_ids("q", 10), [a3]);
    assert!(env.store.check().unwrap().is_empty());
}

#[test]
fn a_retried_or_promoted_job_waits_while_its_concurrency_key_is_busy() {
    let env = Env::new();
    let first = env.enqueue(NewJob::new("q", "first").concurrency_key("k"));
    env.store.fail(env.claim_one("q").lease, "boom").unwrap();
    let second = env.enqueue(NewJob::new("q", "second").concurrency_key("k"));
    let running = env.claim_one("q");
    assert_eq!(running.job.id, second);
    env.store.retry(first).unwrap();
    assert!(env.store.claim("q", 10).unwrap().is_empty(), "key busy");
    env.store.complete(running.lease).unwrap();
    assert_eq!(env.claim_ids("q", 10), [first]);
    assert!(env.store.check().unwrap().is_empty());
}
