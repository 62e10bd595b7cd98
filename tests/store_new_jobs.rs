//! Jobs not yet indexed (written by an enqueue and nothing since), and payloads kept inline or
//! apart: what the public API shows of both is the same as for any other job.

mod common;

use common::{Env, secs};
use quern::{Filter, JobId, JobState, MAX_PAYLOAD, NewJob};

#[test]
fn cancel_of_the_newest_of_several_new_jobs_leaves_the_others_claimable_in_order() {
    let env = Env::new();
    let ids: Vec<JobId> = (0..5)
        .map(|i| env.enqueue(NewJob::new("q", format!("{i}"))))
        .collect();
    env.store.cancel(ids[3]).unwrap();
    assert_eq!(env.job(ids[3]).state, JobState::Failed);
    assert_eq!(env.store.check().unwrap(), []);
    let stats = env.store.stats().unwrap();
    let q = stats.queue("q").unwrap();
    assert_eq!((q.pending, q.failed), (4, 1));
    assert_eq!(
        env.claim_ids("q", 10),
        [ids[0], ids[1], ids[2], ids[4]],
        "every job before and after the cancelled one is claimed, in order"
    );
    assert_eq!(env.store.check().unwrap(), []);
}

#[test]
fn new_jobs_are_counted_listed_and_checked_before_any_claim() {
    let env = Env::new();
    env.enqueue(NewJob::new("a", "1"));
    env.enqueue(NewJob::new("b", "2").run_at(env.now().after(secs(60))));
    let stats = env.store.stats().unwrap();
    assert_eq!(stats.queue("a").unwrap().pending, 1);
    assert_eq!(stats.queue("b").unwrap().pending, 1);
    assert_eq!(
        stats.queue("b").unwrap().next_scheduled_at,
        Some(env.now().after(secs(60)))
    );
    let listed = env
        .store
        .list(&Filter::default().state(JobState::Pending))
        .unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(env.store.check().unwrap(), []);
}

#[test]
fn payloads_over_the_inline_limit_and_at_the_maximum_round_trip_and_are_pruned() {
    let env = Env::new();
    let sizes = [0, 1, 1024, 1025, 64 * 1024, MAX_PAYLOAD];
    let payload = |n: usize| (0..n).map(|i| (i % 251) as u8).collect::<Vec<u8>>();
    let ids: Vec<JobId> = sizes
        .iter()
        .map(|&n| env.enqueue(NewJob::new("q", payload(n))))
        .collect();
    for (&id, &n) in ids.iter().zip(&sizes) {
        assert_eq!(env.job(id).payload, payload(n), "get of new job {id}");
    }
    let claimed = env.store.claim("q", 10).unwrap();
    assert_eq!(claimed.len(), sizes.len());
    for (c, &n) in claimed.iter().zip(&sizes) {
        assert_eq!(c.job.payload, payload(n), "claim of job {}", c.job.id);
    }
    for c in claimed {
        env.store.complete(c.lease).unwrap();
    }
    for (&id, &n) in ids.iter().zip(&sizes) {
        assert_eq!(env.job(id).payload, payload(n), "get of finished job {id}");
    }
    assert_eq!(env.store.check().unwrap(), []);
    env.advance(secs(10));
    assert_eq!(env.store.prune(secs(1)).unwrap(), sizes.len() as u64);
    assert_eq!(
        env.store.check().unwrap(),
        [],
        "prune removed the payloads kept apart too"
    );
}

#[test]
fn a_payload_survives_every_transition_of_its_job() {
    let env = Env::new();
    let id = env.enqueue(NewJob::new("q", "keep me").max_attempts(3));
    let c = env.claim_one("q");
    env.store.snooze(c.lease, secs(0)).unwrap();
    let c = env.claim_one("q");
    env.store.heartbeat(&c.lease).unwrap();
    env.store.set_progress(&c.lease, "half").unwrap();
    env.store.fail(c.lease, "flaky").unwrap();
    env.advance(secs(3600));
    env.store.promote_due().unwrap();
    let c = env.claim_one("q");
    assert_eq!(c.job.payload, b"keep me");
    env.store.discard(c.lease, "gave up").unwrap();
    env.store.retry(id).unwrap();
    let c = env.claim_one("q");
    assert_eq!(c.job.payload, b"keep me");
    env.store.complete(c.lease).unwrap();
    assert_eq!(env.job(id).payload, b"keep me");
    let env = env.reopen();
    assert_eq!(env.job(id).payload, b"keep me");
    assert_eq!(env.store.check().unwrap(), []);
}
