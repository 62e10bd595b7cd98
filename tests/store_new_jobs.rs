//! Jobs not yet indexed (written by an enqueue and nothing since), and payloads kept inline or
//! apart: what the public API shows of both is the same as for any other job.

mod common;

use common::{Env, secs};
use quern::{Error, Filter, JobId, JobState, MAX_PAYLOAD, NewJob};

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

/// The payload of job `i` of a batch: every seventh over the inline limit, the rest small.
fn batch_payload(i: usize) -> Vec<u8> {
    if i.is_multiple_of(7) {
        vec![(i % 251) as u8; 1500]
    } else {
        format!("job {i}").into_bytes()
    }
}

/// Enqueues one batch of `n` jobs (stored as segments of about 1,300 jobs each), and
/// returns their ids.
fn enqueue_big_batch(env: &Env, n: usize) -> Vec<JobId> {
    env.store
        .enqueue_batch((0..n).map(|i| NewJob::new("q", batch_payload(i))))
        .unwrap()
        .into_iter()
        .map(|e| match e {
            quern::Enqueued::Created(id) => id,
            other => panic!("expected a new job, got {other:?}"),
        })
        .collect()
}

#[test]
fn every_job_of_a_batch_reads_lists_and_counts_as_a_job_of_its_own() {
    let env = Env::new();
    let ids = enqueue_big_batch(&env, 2_500);
    assert!(
        ids.windows(2).all(|w| w[1].0 == w[0].0 + 1),
        "consecutive ids"
    );
    for i in [0, 1, 1_023, 1_024, 1_025, 2_047, 2_048, 2_499] {
        let job = env.job(ids[i]);
        assert_eq!(
            (job.payload, job.state),
            (batch_payload(i), JobState::Pending)
        );
    }
    assert_eq!(env.store.get(JobId(ids[2_499].0 + 1)).unwrap(), None);
    assert_eq!(
        env.store.stats().unwrap().queue("q").unwrap().pending,
        2_500
    );
    // A listing that starts inside a segment, and one cut short inside another.
    let after: Vec<JobId> = env
        .store
        .list(&Filter::default().after(ids[1_500]).limit(600))
        .unwrap()
        .into_iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(after, ids[1_501..2_101]);
    assert_eq!(env.store.list(&Filter::default()).unwrap().len(), 2_500);
    assert_eq!(env.store.check().unwrap(), []);
    // The next job's id follows the batch's last, before and after a reopen.
    assert_eq!(env.enqueue(NewJob::new("q", "next")).0, ids[2_499].0 + 1);
    let env = env.reopen();
    assert_eq!(env.job(ids[1_234]).payload, batch_payload(1_234));
    assert_eq!(env.store.check().unwrap(), []);
}

#[test]
fn a_batch_is_claimed_in_order_across_its_segments() {
    let env = Env::new();
    let ids = enqueue_big_batch(&env, 2_500);
    assert_eq!(env.claim_ids("q", 1_000), ids[..1_000]);
    assert_eq!(env.store.check().unwrap(), []);
    assert_eq!(env.claim_ids("q", 2_000), ids[1_000..]);
    assert_eq!(env.store.check().unwrap(), []);
    let stats = env.store.stats().unwrap();
    assert_eq!(stats.queue("q").unwrap().in_progress, 2_500);
}

#[test]
fn cancel_and_retry_of_a_job_inside_a_segment_leave_its_neighbours_claimable() {
    let env = Env::new();
    let ids = enqueue_big_batch(&env, 2_000);
    env.store.cancel(ids[1_500]).unwrap();
    assert_eq!(env.job(ids[1_500]).state, JobState::Failed);
    assert_eq!(env.job(ids[1_501]).state, JobState::Pending);
    assert_eq!(env.store.check().unwrap(), []);
    env.store.retry(ids[1_500]).unwrap();
    let claimed = env.claim_ids("q", 3_000);
    assert_eq!(claimed.len(), 2_000);
    let mut sorted = claimed.clone();
    sorted.sort();
    assert_eq!(sorted, ids);
    assert_eq!(env.store.check().unwrap(), []);
}

#[test]
fn a_unique_key_twice_in_one_batch_is_one_job() {
    let env = Env::new();
    let out = env
        .store
        .enqueue_batch([
            NewJob::new("q", "a").unique_key("k"),
            NewJob::new("q", "b"),
            NewJob::new("q", "c").unique_key("k"),
            NewJob::new("q", "d"),
        ])
        .unwrap();
    let first = match out[0] {
        quern::Enqueued::Created(id) => id,
        ref other => panic!("{other:?}"),
    };
    assert_eq!(out[2], quern::Enqueued::Coalesced(first));
    // The three new jobs have consecutive ids, stored as one segment.
    let ids: Vec<u64> = env
        .store
        .list(&Filter::default())
        .unwrap()
        .iter()
        .map(|j| j.id.0)
        .collect();
    assert_eq!(ids, [first.0, first.0 + 1, first.0 + 2]);
    assert_eq!(env.job(JobId(first.0 + 2)).payload, b"d");
    assert_eq!(env.store.check().unwrap(), []);
}

#[test]
fn a_batch_whose_jobs_are_all_duplicates_commits_nothing() {
    let env = Env::new();
    let first = env.enqueue(NewJob::new("q", "a").unique_key("k"));
    let before = env.store.generation();
    let out = env
        .store
        .enqueue_batch([NewJob::new("q", "b").unique_key("k")])
        .unwrap();
    assert_eq!(out, [quern::Enqueued::Coalesced(first)]);
    assert_eq!(env.store.enqueue_batch(Vec::<NewJob>::new()).unwrap(), []);
    assert_eq!(env.store.generation(), before, "no change was committed");
}

/// More new jobs than one claim transaction indexes (20,000), in one batch.
const BACKLOG: usize = 25_000;

/// A fresh store with a backlog of [`BACKLOG`] new jobs in `queue`; their ids.
fn backlog(queue: &str) -> (Env, Vec<JobId>) {
    let env = Env::new();
    let ids = env
        .store
        .enqueue_batch((0..BACKLOG).map(|i| NewJob::new(queue, format!("{i}"))))
        .unwrap()
        .into_iter()
        .map(|e| e.id())
        .collect();
    (env, ids)
}

#[test]
fn a_claim_behind_a_backlog_longer_than_one_transaction_sees_the_job_of_its_queue() {
    let (env, _) = backlog("bulk");
    let other = env.enqueue(NewJob::new("other", "behind the backlog"));
    let claimed = env.store.claim("other", 1).unwrap();
    assert_eq!(claimed.len(), 1, "the job of the queue was not seen");
    assert_eq!(claimed[0].job.id, other);
}

#[test]
fn a_claim_behind_a_backlog_longer_than_one_transaction_keeps_priority_order() {
    let (env, _) = backlog("q");
    let urgent = env.enqueue(NewJob::new("q", "urgent").priority(10));
    let claimed = env.store.claim("q", 1).unwrap();
    assert_eq!(claimed[0].job.id, urgent);
    // The rest in id order, every one of them.
    let rest = env.store.claim("q", BACKLOG).unwrap();
    assert_eq!(rest.len(), BACKLOG);
    assert!(rest.windows(2).all(|w| w[0].job.id < w[1].job.id));
}

#[test]
fn cancel_of_a_job_behind_a_backlog_longer_than_one_transaction_cancels_it_alone() {
    let (env, ids) = backlog("q");
    // A retry of a job still new is refused as for any pending job, and indexes nothing.
    let before = env.store.generation();
    assert!(matches!(
        env.store.retry(ids[0]),
        Err(Error::InvalidState { .. })
    ));
    assert_eq!(env.store.generation(), before);
    let last = *ids.last().unwrap();
    let before = env.store.generation();
    env.store.cancel(last).unwrap();
    // The backlog in front of it is indexed over more than one commit, not one huge one.
    assert!(env.store.generation() >= before + 2);
    assert_eq!(
        env.store.get(last).unwrap().unwrap().state,
        JobState::Failed
    );
    let q = env.store.stats().unwrap().queue("q").cloned().unwrap();
    assert_eq!((q.pending, q.failed), (BACKLOG as u64 - 1, 1));
    assert_eq!(env.store.check().unwrap(), Vec::new());
}

#[test]
fn cancel_of_an_id_past_the_last_job_is_not_found_at_once() {
    let (env, _) = backlog("q");
    let before = env.store.generation();
    assert!(matches!(
        env.store.cancel(JobId(u64::MAX)),
        Err(Error::NotFound { .. })
    ));
    assert_eq!(env.store.generation(), before, "nothing was indexed for it");
}
