//! What survives: reopening after a drop keeps every job field for field (and leases taken
//! before it), a read-only handle sees each of a writer's commits as it lands, and prune deletes
//! exactly the finished jobs before its cut without ever letting an id be reused.

mod common;

use std::sync::Arc;

use common::{Env, TTL, ms, secs};
use quern::{Filter, Job, JobId, JobState, NewJob, Store};

/// Puts a job in every phase: pending, not yet due, in progress with progress text, waiting
/// for a retry, snoozed, succeeded, failed for good, cancelled, and retried by hand.
fn every_phase(env: &Env) {
    let s = &env.store;
    s.enqueue_batch([
        NewJob::new("q", "succeeds").priority(9),
        NewJob::new("q", "retries").priority(8).unique_key("r"),
        NewJob::new("q", "dies").priority(7).max_attempts(1),
        NewJob::new("q", "snoozes").priority(6),
        NewJob::new("q", "runs").priority(5).concurrency_key("c"),
        NewJob::new("q", "waits").concurrency_key("c"),
        NewJob::new("q", "later").delay(secs(600)).timeout(secs(5)),
        NewJob::new("other", "cancelled"),
        NewJob::new("other", "retried").max_attempts(1),
    ])
    .unwrap();
    let mut c = s.claim("q", 5).unwrap().into_iter();
    env.advance(secs(1));
    s.complete(c.next().unwrap().lease).unwrap();
    s.fail(c.next().unwrap().lease, "boom").unwrap();
    s.fail(c.next().unwrap().lease, "fatal").unwrap();
    s.snooze(c.next().unwrap().lease, secs(60)).unwrap();
    let runs = c.next().unwrap().lease;
    s.set_progress(&runs, "half way").unwrap();
    let mut o = s.claim("other", 2).unwrap().into_iter();
    s.cancel(o.next().unwrap().job.id).unwrap();
    let retried = o.next().unwrap();
    s.fail(retried.lease, "once").unwrap();
    s.retry(retried.job.id).unwrap();
}

fn all(store: &Store) -> Vec<Job> {
    store.list(&Filter::default()).unwrap()
}

#[test]
fn reopening_after_a_drop_keeps_every_field_of_every_job_and_the_stats() {
    let env = Env::new();
    every_phase(&env);
    let jobs = all(&env.store);
    assert_eq!(jobs.len(), 9);
    let states: Vec<JobState> = jobs.iter().map(|j| j.state).collect();
    for s in JobState::ALL {
        assert!(states.contains(&s), "some job is {s}");
    }
    let stats = env.store.stats().unwrap();
    let env = env.reopen();
    assert_eq!(all(&env.store), jobs);
    assert_eq!(env.store.stats().unwrap(), stats);
    assert!(env.store.check().unwrap().is_empty());
}

#[test]
fn a_lease_taken_before_reopening_still_settles_its_job() {
    let env = Env::new();
    let id = env.enqueue(NewJob::new("q", "x"));
    let claimed = env.claim_one("q");
    let env = env.reopen();
    env.store
        .set_progress(&claimed.lease, "after restart")
        .unwrap();
    env.store.complete(claimed.lease).unwrap();
    assert_eq!(env.job(id).state, JobState::Succeeded);
}

#[test]
fn a_reopened_store_recovers_the_leases_of_the_process_that_died() {
    let env = Env::new();
    let id = env.enqueue(NewJob::new("q", "x"));
    let _lost = env.claim_one("q");
    let env = env.reopen();
    env.advance(TTL);
    assert_eq!(env.store.recover_expired().unwrap(), 1);
    assert_eq!(
        env.job(id).last_error.as_deref(),
        Some("lease expired"),
        "the attempt that died is a failed attempt"
    );
}

#[test]
fn a_read_only_handle_sees_each_commit_of_the_writer_as_it_lands() {
    let env = Env::shared();
    let reader = Store::builder()
        .clock(Arc::new(env.clock.clone()))
        .open_read_only(env.path())
        .unwrap();
    let id = env.enqueue(NewJob::new("q", "x"));
    assert_eq!(reader.get(id).unwrap(), Some(env.job(id)));
    let claimed = env.claim_one("q");
    assert_eq!(reader.get(id).unwrap().unwrap().state, JobState::InProgress);
    assert_eq!(reader.stats().unwrap().queue("q").unwrap().in_progress, 1);
    env.store.set_progress(&claimed.lease, "3/9").unwrap();
    assert_eq!(
        reader.get(id).unwrap().unwrap().progress.as_deref(),
        Some("3/9")
    );
    env.store.complete(claimed.lease).unwrap();
    assert_eq!(reader.get(id).unwrap(), Some(env.job(id)));
    assert_eq!(all(&reader), all(&env.store));
    assert_eq!(reader.stats().unwrap(), env.store.stats().unwrap());
    env.advance(secs(1));
    env.store.prune(secs(0)).unwrap();
    assert_eq!(reader.get(id).unwrap(), None);
}

#[test]
fn a_read_only_handle_refuses_every_write() {
    let env = Env::shared();
    let id = env.enqueue(NewJob::new("q", "x"));
    let reader = Store::open_read_only(env.path()).unwrap();
    assert!(reader.is_read_only());
    let ro = |r: quern::Result<()>| matches!(r, Err(quern::Error::ReadOnly));
    assert!(ro(reader.enqueue(NewJob::new("q", "y")).map(drop)));
    assert!(ro(reader.enqueue_batch([NewJob::new("q", "y")]).map(drop)));
    assert!(ro(reader.claim("q", 1).map(drop)));
    assert!(ro(reader.promote_due().map(drop)));
    assert!(ro(reader.recover_expired().map(drop)));
    assert!(ro(reader.retry(id)));
    assert!(ro(reader.cancel(id)));
    assert!(ro(reader.prune(secs(0)).map(drop)));
    assert_eq!(env.job(id).state, JobState::Pending);
    assert_eq!(all(&env.store).len(), 1);
}

#[test]
fn prune_deletes_only_finished_jobs_that_finished_before_the_cut() {
    let env = Env::new();
    every_phase(&env);
    let before = all(&env.store);
    env.advance(secs(1));
    let finished: Vec<JobId> = before
        .iter()
        .filter(|j| j.is_finished())
        .map(|j| j.id)
        .collect();
    assert_eq!(finished.len(), 3, "succeeded, failed for good, cancelled");
    assert_eq!(
        env.store.prune(secs(1)).unwrap(),
        0,
        "finished exactly at the cut is not before it"
    );
    env.advance(ms(1));
    assert_eq!(env.store.prune(secs(1)).unwrap(), 3);
    let live: Vec<Job> = before.into_iter().filter(|j| !j.is_finished()).collect();
    assert_eq!(all(&env.store), live, "live jobs are untouched");
    for id in finished {
        assert_eq!(env.store.get(id).unwrap(), None);
    }
    let stats = env.store.stats().unwrap();
    let q = stats.queue("q").unwrap();
    assert_eq!((q.succeeded, q.failed), (0, 0));
    assert_eq!(env.store.prune(secs(0)).unwrap(), 0);
    assert!(env.store.check().unwrap().is_empty());
}

#[test]
fn ids_are_never_reused_after_the_newest_jobs_are_pruned() {
    let env = Env::new();
    let ids: Vec<JobId> = (0..3)
        .map(|i| env.enqueue(NewJob::new("q", format!("{i}"))))
        .collect();
    for c in env.store.claim("q", 3).unwrap() {
        env.store.complete(c.lease).unwrap();
    }
    env.advance(secs(1));
    assert_eq!(env.store.prune(secs(0)).unwrap(), 3);
    let next = env.enqueue(NewJob::new("q", "next"));
    assert!(next > ids[2], "{next} after pruning up to {}", ids[2]);
    env.store.cancel(next).unwrap();
    env.advance(secs(1));
    assert_eq!(env.store.prune(secs(0)).unwrap(), 1);
    let env = env.reopen();
    let after_reopen = env.enqueue(NewJob::new("q", "after"));
    assert!(after_reopen > next, "{after_reopen} after pruning {next}");
}

#[test]
fn prune_of_a_history_longer_than_one_transaction_deletes_all_of_it_and_keeps_the_failure_cap() {
    let env = Env::new();
    let n = 25_000;
    env.store
        .enqueue_batch((0..n).map(|i| NewJob::new("q", format!("{i}")).max_attempts(1)))
        .unwrap();
    // One claim: it indexes the backlog over several transactions, then claims all of it.
    let claimed = env.store.claim("q", n).unwrap();
    assert_eq!(claimed.len(), n);
    // Settled from several threads at once, so that they share commits.
    let mut leases: Vec<Vec<quern::Lease>> = (0..8).map(|_| Vec::new()).collect();
    for (i, c) in claimed.into_iter().enumerate() {
        leases[i % 8].push(c.lease);
    }
    std::thread::scope(|s| {
        for (t, part) in leases.into_iter().enumerate() {
            let store = &env.store;
            s.spawn(move || {
                for lease in part {
                    // One thread in eight fails its jobs for good; the rest succeed.
                    if t == 0 {
                        store.fail(lease, "boom").unwrap();
                    } else {
                        store.complete(lease).unwrap();
                    }
                }
            });
        }
    });
    env.advance(secs(10));
    let failed = n.div_ceil(8) as u64;
    let retention = quern::Retention {
        succeeded: secs(1),
        failed: secs(3600),
        max_failed: Some(100),
    };
    let pruned = env.store.apply_retention(&retention).unwrap();
    assert_eq!(
        pruned,
        n as u64 - 100,
        "every success and the failures over the cap"
    );
    let q = env.store.stats().unwrap();
    let q = q.queue("q").unwrap();
    assert_eq!((q.succeeded, q.failed), (0, 100));
    assert!(failed > 100);
    assert_eq!(env.store.prune(secs(1)).unwrap(), 100);
    assert_eq!(env.store.check().unwrap(), []);
}
