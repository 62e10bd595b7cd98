//! Retention, prune, and the times stats report, under a `ManualClock`.

use std::sync::Arc;
use std::time::Duration;

use quern::{Backoff, Clock, JobState, ManualClock, NewJob, Retention, Store, Timestamp};

fn open(dir: &tempfile::TempDir, clock: &ManualClock) -> Store {
    Store::builder()
        .clock(Arc::new(clock.clone()))
        .backoff(Backoff::fixed(Duration::from_secs(60)))
        .open(dir.path().join("q.redb"))
        .unwrap()
}

/// Enqueues and runs `n` jobs of `queue` to the given end: success, or failure for good.
fn finish(store: &Store, queue: &str, n: usize, succeed: bool) {
    store
        .enqueue_batch((0..n).map(|i| NewJob::new(queue, format!("{i}")).max_attempts(1)))
        .unwrap();
    for c in store.claim(queue, n).unwrap() {
        if succeed {
            store.complete(c.lease).unwrap();
        } else {
            store.fail(c.lease, "boom").unwrap();
        }
    }
}

#[test]
fn retention_prunes_successes_and_failures_by_their_own_ages() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::default();
    let store = open(&dir, &clock);
    finish(&store, "q", 3, true);
    finish(&store, "q", 2, false);
    let retention = Retention {
        succeeded: Duration::from_secs(3_600),
        failed: Duration::from_secs(7 * 24 * 3_600),
        max_failed: None,
    };
    clock.advance(Duration::from_secs(3_599));
    assert_eq!(store.apply_retention(&retention).unwrap(), 0);
    clock.advance(Duration::from_secs(2));
    assert_eq!(
        store.apply_retention(&retention).unwrap(),
        3,
        "successes past an hour"
    );
    let q = store.stats().unwrap().queue("q").cloned().unwrap();
    assert_eq!((q.succeeded, q.failed), (0, 2));
    clock.advance(Duration::from_secs(7 * 24 * 3_600));
    assert_eq!(
        store.apply_retention(&retention).unwrap(),
        2,
        "failures past a week"
    );
}

#[test]
fn retention_keeps_at_most_the_newest_failures() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::default();
    let store = open(&dir, &clock);
    for _ in 0..5 {
        finish(&store, "q", 1, false);
        clock.advance(Duration::from_secs(1));
    }
    let retention = Retention {
        max_failed: Some(2),
        ..Retention::default()
    };
    assert_eq!(store.apply_retention(&retention).unwrap(), 3);
    let left: Vec<u64> = store
        .list(&quern::Filter::default().state(JobState::Failed))
        .unwrap()
        .iter()
        .map(|j| j.id.0)
        .collect();
    assert_eq!(left, [4, 5], "the newest failures are kept");
}

#[test]
fn prune_takes_an_age_or_a_time_and_leaves_live_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::default();
    let store = open(&dir, &clock);
    finish(&store, "q", 2, true);
    let cut = clock.now().after(Duration::from_secs(1));
    clock.advance(Duration::from_secs(10));
    finish(&store, "q", 1, true);
    store.enqueue(NewJob::new("q", "live")).unwrap();
    assert_eq!(store.prune(cut).unwrap(), 2);
    assert_eq!(store.prune(Duration::from_secs(60)).unwrap(), 0);
    clock.advance(Duration::from_secs(61));
    assert_eq!(store.prune(Duration::from_secs(60)).unwrap(), 1);
    let q = store.stats().unwrap().queue("q").cloned().unwrap();
    assert_eq!((q.pending, q.succeeded), (1, 0));
}

#[test]
fn stats_report_the_oldest_due_job_the_next_scheduled_and_the_next_retry() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(Timestamp(1_000_000));
    let store = open(&dir, &clock);
    store.enqueue(NewJob::new("q", "old").priority(1)).unwrap();
    clock.advance(Duration::from_secs(5));
    store.enqueue(NewJob::new("q", "new").priority(9)).unwrap();
    store
        .enqueue(NewJob::new("q", "later").delay(Duration::from_secs(30)))
        .unwrap();
    store.enqueue(NewJob::new("q", "fails")).unwrap();
    let stats = store.stats().unwrap();
    let q = stats.queue("q").unwrap();
    assert_eq!(q.pending, 4);
    assert_eq!(q.oldest_due_pending, Some(Timestamp(1_000_000)));
    assert_eq!(q.next_scheduled_at, Some(Timestamp(1_035_000)));
    // Claim everything due, fail one: its retry is a minute out.
    let claimed = store.claim("q", 10).unwrap();
    assert_eq!(claimed.len(), 3);
    for c in claimed {
        if c.job.payload == b"fails" {
            store.fail(c.lease, "boom").unwrap();
        } else {
            store.complete(c.lease).unwrap();
        }
    }
    let q = store.stats().unwrap().queue("q").cloned().unwrap();
    assert_eq!((q.pending, q.retrying, q.succeeded), (1, 1, 2));
    assert_eq!(q.oldest_due_pending, None);
    assert_eq!(q.next_retry_at, Some(Timestamp(1_065_000)));
}

#[test]
fn stats_see_past_a_scheduled_job_that_came_due_to_the_next_one() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(Timestamp(1_000_000));
    let store = open(&dir, &clock);
    store
        .enqueue(NewJob::new("q", "soon").delay(Duration::from_secs(10)))
        .unwrap();
    store
        .enqueue(NewJob::new("q", "later").delay(Duration::from_secs(3_600)))
        .unwrap();
    // A claim indexes both as scheduled; nothing is due yet.
    assert!(store.claim("q", 1).unwrap().is_empty());
    // The first comes due, with no claim since to move it to ready.
    clock.advance(Duration::from_secs(20));
    let q = store.stats().unwrap().queue("q").cloned().unwrap();
    assert_eq!(q.oldest_due_pending, Some(Timestamp(1_010_000)));
    assert_eq!(q.next_scheduled_at, Some(Timestamp(4_600_000)));
}

#[test]
fn stats_count_a_job_waiting_for_its_concurrency_key_as_due_pending() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(Timestamp(1_000_000));
    let store = open(&dir, &clock);
    store
        .enqueue(NewJob::new("q", "first").concurrency_key("org-7"))
        .unwrap();
    assert_eq!(store.claim("q", 1).unwrap().len(), 1);
    clock.advance(Duration::from_secs(5));
    store
        .enqueue(NewJob::new("q", "second").concurrency_key("org-7"))
        .unwrap();
    // The claim finds the key busy and sets the second job aside, blocked.
    assert!(store.claim("q", 1).unwrap().is_empty());
    let q = store.stats().unwrap().queue("q").cloned().unwrap();
    assert_eq!((q.pending, q.in_progress), (1, 1));
    assert_eq!(q.oldest_due_pending, Some(Timestamp(1_005_000)));
}
