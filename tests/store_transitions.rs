//! Every transition of the state machine through the public store API, under a `ManualClock`:
//! enqueue, claim (and the attempt it counts), claim order and `run_at`, complete, fail with the
//! backoff schedule, failure for good, discard, snooze, promotion of due retries, and recovery of
//! expired leases.

mod common;

use common::{Env, T0, TTL, ms, secs};
use quern::{
    Backoff, Clock, DEFAULT_MAX_ATTEMPTS, Jitter, JobState, ManualClock, NewJob, Timestamp,
};

#[test]
fn enqueue_writes_a_pending_job_with_no_attempts_and_every_field_as_given() {
    let env = Env::new();
    let id = env.enqueue(
        NewJob::new("uploads", b"photo".to_vec())
            .priority(5)
            .max_attempts(7)
            .unique_key("u-1")
            .concurrency_key("bucket")
            .timeout(secs(9)),
    );
    let job = env.job(id);
    assert_eq!(job.id, id);
    assert_eq!(job.queue, "uploads");
    assert_eq!(job.state, JobState::Pending);
    assert_eq!(job.payload, b"photo");
    assert_eq!(job.priority, 5);
    assert_eq!(job.attempts, 0);
    assert_eq!(job.max_attempts, 7);
    assert_eq!(job.run_at, T0, "runnable at once");
    assert_eq!(job.next_attempt_at, None);
    assert_eq!(job.last_error, None);
    assert_eq!(job.unique_key.as_deref(), Some("u-1"));
    assert_eq!(job.concurrency_key.as_deref(), Some("bucket"));
    assert_eq!(job.progress, None);
    assert_eq!(job.lease_expires_at, None);
    assert_eq!(job.timeout, Some(secs(9)));
    assert_eq!((job.created_at, job.updated_at), (T0, T0));
    assert_eq!(job.finished_at, None);
    assert_eq!(job.manual_retries, 0);
    assert!(!job.is_finished());
}

#[test]
fn enqueue_resolves_a_delay_against_the_clock_keeps_an_explicit_run_at_and_gives_25_attempts() {
    let env = Env::new();
    let delayed = env.enqueue(NewJob::new("q", "d").delay(secs(90)));
    let at = env.enqueue(NewJob::new("q", "a").run_at(Timestamp(T0.0 + 5_000)));
    assert_eq!(env.job(delayed).run_at, T0.after(secs(90)));
    assert_eq!(env.job(at).run_at, Timestamp(T0.0 + 5_000));
    assert_eq!(env.job(at).max_attempts, DEFAULT_MAX_ATTEMPTS);
    assert_eq!(DEFAULT_MAX_ATTEMPTS, 25);
}

#[test]
fn claim_moves_the_job_in_progress_and_counts_the_attempt_in_the_claim() {
    let env = Env::new();
    let id = env.enqueue(NewJob::new("q", "x"));
    env.advance(secs(2));
    let claimed = env.claim_one("q");
    assert_eq!(claimed.lease.job(), id);
    assert_eq!(claimed.job.id, id);
    assert_eq!(claimed.job.state, JobState::InProgress);
    assert_eq!(claimed.job.attempts, 1);
    assert_eq!(claimed.job.lease_expires_at, Some(env.now().after(TTL)));
    assert_eq!(claimed.job.updated_at, env.now());
    assert_eq!(
        env.job(id),
        claimed.job,
        "the claimed job is what was committed"
    );
    assert!(
        env.store.claim("q", 1).unwrap().is_empty(),
        "an in-progress job is not claimed twice"
    );
}

#[test]
fn an_attempt_counted_at_claim_survives_a_crash_before_the_job_settles() {
    let env = Env::new();
    let id = env.enqueue(NewJob::new("q", "x"));
    let claimed = env.claim_one("q");
    drop(claimed);
    let env = env.reopen();
    let job = env.job(id);
    assert_eq!(job.state, JobState::InProgress);
    assert_eq!(job.attempts, 1, "the attempt was counted when claimed");
    // Once its lease runs out, the crashed attempt is a failure and the next claim is attempt 2.
    env.advance(TTL);
    assert_eq!(env.store.recover_expired().unwrap(), 1);
    env.advance(secs(30));
    assert_eq!(env.store.promote_due().unwrap(), 1);
    assert_eq!(env.claim_one("q").job.attempts, 2);
}

#[test]
fn claim_hands_out_higher_priority_first_then_earlier_run_at_then_lower_id() {
    let env = Env::new();
    env.advance(secs(3_600));
    let before = |s: u64| env.now().before(secs(s));
    let j1 = env.enqueue(NewJob::new("q", "1").run_at(before(1)));
    let j2 = env.enqueue(NewJob::new("q", "2").run_at(before(5)));
    let j3 = env.enqueue(NewJob::new("q", "3").priority(9).run_at(before(1)));
    let j4 = env.enqueue(NewJob::new("q", "4").run_at(before(5)));
    let j5 = env.enqueue(NewJob::new("q", "5").priority(-3).run_at(before(60)));
    let j6 = env.enqueue(NewJob::new("q", "6").priority(9).run_at(before(2)));
    assert_eq!(env.claim_ids("q", 2), [j6, j3], "the best two first");
    assert_eq!(
        env.claim_ids("q", 10),
        [j2, j4, j1, j5],
        "then the rest in order"
    );
}

#[test]
fn claim_takes_only_jobs_of_the_named_queue() {
    let env = Env::new();
    let a = env.enqueue(NewJob::new("a", "x"));
    let b = env.enqueue(NewJob::new("b", "x").priority(100));
    assert_eq!(env.claim_ids("a", 10), [a]);
    assert_eq!(env.claim_ids("a", 10), []);
    assert_eq!(env.job(b).state, JobState::Pending);
    assert!(env.store.claim("nothing-here", 10).unwrap().is_empty());
}

#[test]
fn a_job_whose_run_at_is_in_the_future_is_not_claimable_until_the_clock_reaches_it() {
    let env = Env::new();
    let id = env.enqueue(NewJob::new("q", "later").delay(secs(10)));
    assert!(env.store.claim("q", 1).unwrap().is_empty());
    env.advance(secs(10) - ms(1));
    assert!(env.store.claim("q", 1).unwrap().is_empty());
    assert_eq!(env.job(id).state, JobState::Pending);
    env.advance(ms(1));
    assert_eq!(env.claim_ids("q", 1), [id]);
}

#[test]
fn a_due_job_is_claimed_before_a_higher_priority_job_that_is_not_yet_due() {
    let env = Env::new();
    let later = env.enqueue(NewJob::new("q", "later").priority(10).delay(secs(5)));
    let now = env.enqueue(NewJob::new("q", "now"));
    assert_eq!(env.claim_ids("q", 10), [now]);
    env.advance(secs(5));
    assert_eq!(env.claim_ids("q", 10), [later]);
}

#[test]
fn complete_marks_the_job_succeeded_with_its_finish_time() {
    let env = Env::new();
    let id = env.enqueue(NewJob::new("q", "x"));
    let claimed = env.claim_one("q");
    env.advance(secs(3));
    env.store.complete(claimed.lease).unwrap();
    let job = env.job(id);
    assert_eq!(job.state, JobState::Succeeded);
    assert_eq!(job.finished_at, Some(env.now()));
    assert_eq!(job.updated_at, env.now());
    assert_eq!(job.lease_expires_at, None);
    assert_eq!(job.next_attempt_at, None);
    assert_eq!(job.attempts, 1);
    assert!(job.is_finished());
    env.advance(secs(3_600));
    assert_eq!(env.store.promote_due().unwrap(), 0);
    assert_eq!(env.store.recover_expired().unwrap(), 0);
    assert!(env.store.claim("q", 1).unwrap().is_empty());
}

#[test]
fn fail_schedules_each_retry_by_the_backoff_schedule_up_to_its_cap() {
    let env = Env::new();
    let id = env.enqueue(NewJob::new("q", "x").max_attempts(10));
    for (attempt, delay) in [30, 60, 120, 240, 480, 600, 600].into_iter().enumerate() {
        let claimed = env.claim_one("q");
        assert_eq!(claimed.job.attempts, attempt as u32 + 1);
        env.advance(secs(1));
        env.store
            .fail(claimed.lease, format!("boom {attempt}"))
            .unwrap();
        let job = env.job(id);
        let due = env.now().after(secs(delay));
        assert_eq!(job.state, JobState::Failed);
        assert_eq!(job.next_attempt_at, Some(due), "retry {attempt}");
        assert_eq!(job.last_error, Some(format!("boom {attempt}")));
        assert_eq!((job.finished_at, job.lease_expires_at), (None, None));
        assert!(!job.is_finished());
        // Not claimable, nor promoted, a millisecond before it is due.
        env.clock.set(due.before(ms(1)));
        assert_eq!(env.store.promote_due().unwrap(), 0);
        assert!(env.store.claim("q", 1).unwrap().is_empty());
        env.clock.set(due);
        assert_eq!(env.store.promote_due().unwrap(), 1);
        let job = env.job(id);
        assert_eq!(job.state, JobState::Pending);
        assert_eq!((job.run_at, job.next_attempt_at), (due, None));
    }
}

#[test]
fn fail_of_the_last_attempt_fails_the_job_for_good() {
    let env = Env::new();
    let id = env.enqueue(NewJob::new("q", "x").max_attempts(2));
    env.store.fail(env.claim_one("q").lease, "first").unwrap();
    env.advance(secs(30));
    assert_eq!(env.store.promote_due().unwrap(), 1);
    let last = env.claim_one("q");
    assert_eq!(last.job.attempts, 2);
    env.advance(secs(1));
    env.store.fail(last.lease, "second").unwrap();
    let job = env.job(id);
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(job.next_attempt_at, None, "no retry is scheduled");
    assert_eq!(job.finished_at, Some(env.now()));
    assert_eq!(job.last_error.as_deref(), Some("second"));
    assert_eq!(job.attempts, 2);
    assert!(job.is_finished());
    env.advance(secs(86_400));
    assert_eq!(env.store.promote_due().unwrap(), 0);
    assert!(env.store.claim("q", 1).unwrap().is_empty());
}

#[test]
fn a_job_with_one_attempt_fails_for_good_at_its_first_failure() {
    let env = Env::new();
    let id = env.enqueue(NewJob::new("q", "x").max_attempts(1));
    env.store.fail(env.claim_one("q").lease, "once").unwrap();
    let job = env.job(id);
    assert_eq!((job.state, job.next_attempt_at), (JobState::Failed, None));
    assert_eq!(job.finished_at, Some(env.now()));
}

#[test]
fn discard_fails_the_job_for_good_with_attempts_left() {
    let env = Env::new();
    let id = env.enqueue(NewJob::new("q", "x"));
    let claimed = env.claim_one("q");
    env.advance(secs(1));
    env.store.discard(claimed.lease, "bad payload").unwrap();
    let job = env.job(id);
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(job.next_attempt_at, None);
    assert_eq!(job.finished_at, Some(env.now()));
    assert_eq!(job.last_error.as_deref(), Some("bad payload"));
    assert_eq!((job.attempts, job.max_attempts), (1, 25));
    assert_eq!(job.lease_expires_at, None);
    env.advance(secs(86_400));
    assert_eq!(env.store.promote_due().unwrap(), 0);
    assert_eq!(env.job(id), job);
}

#[test]
fn snooze_puts_the_job_back_pending_later_and_gives_the_attempt_back() {
    let env = Env::new();
    let id = env.enqueue(NewJob::new("q", "x"));
    let claimed = env.claim_one("q");
    env.advance(secs(2));
    env.store.snooze(claimed.lease, secs(60)).unwrap();
    let due = env.now().after(secs(60));
    let job = env.job(id);
    assert_eq!(job.state, JobState::Pending);
    assert_eq!(job.attempts, 0, "not ready is not a failure");
    assert_eq!(job.run_at, due);
    assert_eq!(job.lease_expires_at, None);
    assert_eq!((job.last_error, job.next_attempt_at), (None, None));
    assert_eq!(job.updated_at, env.now());
    env.clock.set(due.before(ms(1)));
    assert!(env.store.claim("q", 1).unwrap().is_empty());
    env.clock.set(due);
    assert_eq!(env.claim_one("q").job.attempts, 1);
}

#[test]
fn snoozing_forever_never_spends_the_attempts() {
    let env = Env::new();
    let id = env.enqueue(NewJob::new("q", "x").max_attempts(1));
    for _ in 0..5 {
        env.store.snooze(env.claim_one("q").lease, secs(1)).unwrap();
        env.advance(secs(1));
    }
    let claimed = env.claim_one("q");
    assert_eq!(claimed.job.attempts, 1);
    env.store.complete(claimed.lease).unwrap();
    assert_eq!(env.job(id).state, JobState::Succeeded);
}

#[test]
fn promote_due_moves_only_the_failures_that_are_due_and_counts_them() {
    let env = Env::new();
    let early = env.enqueue(NewJob::new("a", "early"));
    let dead = env.enqueue(NewJob::new("a", "dead"));
    let late = env.enqueue(NewJob::new("b", "late"));
    let waiting = env.enqueue(NewJob::new("a", "waiting").delay(secs(5)));
    let mut claimed = env.store.claim("a", 2).unwrap();
    env.store
        .discard(claimed.pop().unwrap().lease, "bad")
        .unwrap();
    env.store
        .fail(claimed.pop().unwrap().lease, "boom")
        .unwrap(); // early: due at T0 + 30 s
    env.advance(secs(10));
    env.store.fail(env.claim_one("b").lease, "boom").unwrap(); // late: due at T0 + 40 s
    let dead_before = env.job(dead);

    env.clock.set(T0.after(secs(29)));
    assert_eq!(env.store.promote_due().unwrap(), 0);
    env.clock.set(T0.after(secs(30)));
    assert_eq!(env.store.promote_due().unwrap(), 1);
    assert_eq!(env.job(early).state, JobState::Pending);
    assert_eq!(env.job(late).state, JobState::Failed);
    assert_eq!(env.job(late).next_attempt_at, Some(T0.after(secs(40))));
    assert_eq!(env.store.promote_due().unwrap(), 0, "each retry moves once");
    env.clock.set(T0.after(secs(45)));
    assert_eq!(env.store.promote_due().unwrap(), 1, "across queues");
    assert_eq!(env.job(late).state, JobState::Pending);
    assert_eq!(env.job(dead), dead_before, "a failure for good stays");
    assert_eq!(env.job(waiting).state, JobState::Pending);
    assert_eq!(env.job(waiting).run_at, T0.after(secs(5)));
}

#[test]
fn a_promoted_retry_runs_from_the_time_it_was_due_not_the_time_it_was_promoted() {
    let env = Env::new();
    let retried = env.enqueue(NewJob::new("q", "retried"));
    env.store.fail(env.claim_one("q").lease, "boom").unwrap();
    env.advance(secs(40));
    let fresh = env.enqueue(NewJob::new("q", "fresh"));
    env.advance(secs(20));
    assert_eq!(env.store.promote_due().unwrap(), 1);
    assert_eq!(env.job(retried).run_at, T0.after(secs(30)));
    assert_eq!(
        env.claim_ids("q", 10),
        [retried, fresh],
        "earlier run_at first"
    );
}

#[test]
fn recover_expired_turns_only_expired_leases_into_failed_attempts() {
    let env = Env::new();
    let first = env.enqueue(NewJob::new("q", "first"));
    let second = env.enqueue(NewJob::new("q", "second"));
    let pending = env.enqueue(NewJob::new("q", "pending").delay(secs(3_600)));
    let _a = env.claim_one("q");
    env.advance(secs(20));
    let _b = env.claim_one("q");
    env.clock.set(T0.after(TTL).before(ms(1)));
    assert_eq!(env.store.recover_expired().unwrap(), 0);
    env.clock.set(T0.after(TTL));
    assert_eq!(
        env.store.recover_expired().unwrap(),
        1,
        "a lease is expired at its expiry time"
    );
    let job = env.job(first);
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(job.last_error.as_deref(), Some("lease expired"));
    assert_eq!(job.attempts, 1);
    assert_eq!(job.next_attempt_at, Some(env.now().after(secs(30))));
    assert_eq!(job.lease_expires_at, None);
    assert_eq!(env.job(second).state, JobState::InProgress);
    assert_eq!(env.store.recover_expired().unwrap(), 0, "each lease once");
    env.clock.set(T0.after(secs(20)).after(TTL));
    assert_eq!(env.store.recover_expired().unwrap(), 1);
    assert_eq!(env.job(second).state, JobState::Failed);
    assert_eq!(env.job(pending).state, JobState::Pending);
}

#[test]
fn recovering_the_last_attempt_fails_the_job_for_good() {
    let env = Env::new();
    let id = env.enqueue(NewJob::new("q", "x").max_attempts(1));
    let _lease = env.claim_one("q");
    env.advance(TTL);
    assert_eq!(env.store.recover_expired().unwrap(), 1);
    let job = env.job(id);
    assert_eq!((job.state, job.next_attempt_at), (JobState::Failed, None));
    assert_eq!(job.last_error.as_deref(), Some("lease expired"));
    assert_eq!(job.finished_at, Some(env.now()));
}

#[test]
fn a_job_is_not_claimed_when_the_clock_goes_back_before_its_run_at() {
    let env = Env::new();
    let later = env.enqueue(NewJob::new("q", "later").delay(secs(10)));
    let first = env.enqueue(NewJob::new("q", "first").priority(5).delay(secs(10)));
    env.advance(secs(10));
    assert_eq!(env.claim_ids("q", 1), [first], "both became due");
    env.clock.set(T0.after(secs(5)));
    assert!(env.store.claim("q", 10).unwrap().is_empty());
    assert_eq!(env.job(later).state, JobState::Pending);
    env.clock.set(T0.after(secs(10)));
    assert_eq!(env.claim_ids("q", 10), [later]);
}

#[test]
fn claim_orders_the_extreme_priorities_too() {
    let env = Env::new();
    for p in [0, i32::MIN, 1, i32::MAX, -1] {
        env.enqueue(NewJob::new("q", p.to_string()).priority(p));
    }
    let order: Vec<i32> = env
        .store
        .claim("q", 10)
        .unwrap()
        .into_iter()
        .map(|c| c.job.priority)
        .collect();
    assert_eq!(order, [i32::MAX, 1, 0, -1, i32::MIN]);
}

#[test]
fn stats_follow_a_job_through_each_state() {
    let env = Env::new();
    let counts = |env: &Env| {
        let stats = env.store.stats().unwrap();
        let q = stats.queue("q").cloned().unwrap_or_default();
        (q.pending, q.in_progress, q.retrying, q.succeeded, q.failed)
    };
    env.enqueue(NewJob::new("q", "x").max_attempts(2));
    assert_eq!(counts(&env), (1, 0, 0, 0, 0));
    let c = env.claim_one("q");
    assert_eq!(counts(&env), (0, 1, 0, 0, 0));
    assert_eq!(
        env.store.stats().unwrap().next_lease_expiry,
        Some(env.now().after(TTL))
    );
    env.store.fail(c.lease, "boom").unwrap();
    assert_eq!(counts(&env), (0, 0, 1, 0, 0));
    env.advance(secs(30));
    env.store.promote_due().unwrap();
    assert_eq!(counts(&env), (1, 0, 0, 0, 0));
    let c = env.claim_one("q");
    env.store.fail(c.lease, "boom").unwrap();
    assert_eq!(counts(&env), (0, 0, 0, 0, 1));
    env.enqueue(NewJob::new("q", "y"));
    env.store.complete(env.claim_one("q").lease).unwrap();
    assert_eq!(counts(&env), (0, 0, 0, 1, 1));
    assert_eq!(env.store.stats().unwrap().next_lease_expiry, None);
}

/// Fails `n` fresh jobs of a store with `backoff` once each (and then once more, when `twice`);
/// returns each one's delay before its retry, in ms.
fn retry_delays(backoff: Backoff, n: usize, twice: bool) -> Vec<u64> {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let store = common::builder(&clock)
        .backoff(backoff)
        .open(common::db(&dir))
        .unwrap();
    store
        .enqueue_batch((0..n).map(|i| NewJob::new("q", format!("{i}"))))
        .unwrap();
    let mut delays = Vec::new();
    for round in 0..if twice { 2 } else { 1 } {
        if round > 0 {
            // Every retry is due after the longest delay; promoted, they run again.
            clock.advance(secs(3_600));
            assert_eq!(store.promote_due().unwrap(), n as u64);
        }
        delays.clear();
        for claimed in store.claim("q", n).unwrap() {
            let id = claimed.job.id;
            store.fail(claimed.lease, "boom").unwrap();
            let job = store.get(id).unwrap().unwrap();
            delays.push(job.next_attempt_at.unwrap().0 - clock.now().0);
        }
        assert_eq!(delays.len(), n);
    }
    delays
}

/// How many different values `delays` holds.
fn distinct(delays: &[u64]) -> usize {
    delays
        .iter()
        .collect::<std::collections::HashSet<_>>()
        .len()
}

#[test]
fn the_default_equal_jitter_spreads_retries_within_the_upper_half_of_the_delay() {
    let delays = retry_delays(Backoff::default(), 64, false);
    // The first retry of the default schedule: 30 s, equal jitter: 15 to 30 s.
    assert!(
        delays.iter().all(|d| (15_000..=30_000).contains(d)),
        "{delays:?}"
    );
    // Spread across jobs: a jitter drawn from a seed that did not vary would give one value.
    assert!(distinct(&delays) > 32, "{delays:?}");
    let second = retry_delays(Backoff::default(), 64, true);
    assert!(
        second.iter().all(|d| (30_000..=60_000).contains(d)),
        "{second:?}"
    );
    assert!(distinct(&second) > 32, "{second:?}");
}

#[test]
fn decorrelated_jitter_stays_between_the_initial_delay_and_three_times_the_last() {
    let backoff = Backoff::exponential(secs(10), 2.0, secs(600)).jitter(Jitter::Decorrelated);
    let first = retry_delays(backoff, 64, false);
    // No delay before: between the initial delay and three times it.
    assert!(
        first.iter().all(|d| (10_000..=30_000).contains(d)),
        "{first:?}"
    );
    assert!(distinct(&first) > 32, "{first:?}");
    // After one: between the initial delay and three times the delay before, at most 90 s.
    let second = retry_delays(backoff, 64, true);
    assert!(
        second.iter().all(|d| (10_000..=90_000).contains(d)),
        "{second:?}"
    );
    assert!(distinct(&second) > 32, "{second:?}");
}
