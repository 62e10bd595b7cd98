//! Remote backpressure: parking a concurrency key or a whole queue until a time, pausing a
//! queue, rate limits per queue and per key, and a handler's [`Outcome::Park`].
//!
//! - a park holds back only what it names, until its time, and survives a restart;
//! - a pause holds a queue until it is resumed; enqueues and running jobs go on;
//! - a rate limit counts starts in fixed windows, across claims and across a restart;
//! - a parked key with a long backlog does not slow the claims of the others;
//! - bad input is refused before anything is written;
//! - under the executor, a handler's `Outcome::park_key` parks its key and the others go on.
//!
//! Time moves only through the `ManualClock`; every store test ends with a clean
//! [`quern::Store::check`].

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Env, T0, WAIT, secs, until};
use parking_lot::Mutex;
use quern::{
    Claimed, Error, Executor, JobId, JobState, NewJob, Outcome, QueueControl, RateLimit, Store,
    Timestamp,
};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// The queue of most tests.
const Q: &str = "q";

/// A job of queue [`Q`] without a concurrency key.
fn free(payload: &str) -> NewJob {
    NewJob::new(Q, payload)
}

/// A job of queue [`Q`] with the concurrency key `key`.
fn keyed(payload: &str, key: &str) -> NewJob {
    NewJob::new(Q, payload).concurrency_key(key)
}

fn limit(starts: u32, period: Duration) -> RateLimit {
    RateLimit::new(starts, period).unwrap()
}

/// What [`QueueControl`] says, as a tuple to compare: queue, key, paused, parked_until,
/// reason, rate_limit, window.
type View = (
    String,
    Option<String>,
    bool,
    Option<Timestamp>,
    Option<String>,
    Option<RateLimit>,
    Option<(u32, Timestamp)>,
);

fn view(c: &QueueControl) -> View {
    (
        c.queue.clone(),
        c.key.clone(),
        c.paused,
        c.parked_until,
        c.reason.clone(),
        c.rate_limit,
        c.window,
    )
}

/// The store's controls, sorted by (queue, key).
fn controls(store: &Store) -> Vec<View> {
    let mut out: Vec<View> = store.controls().unwrap().iter().map(view).collect();
    out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    out
}

/// A park of `queue` (or of its `key`) as [`controls`] shows it.
fn parked(queue: &str, key: Option<&str>, until: Timestamp, reason: &str) -> View {
    (
        queue.to_owned(),
        key.map(str::to_owned),
        false,
        Some(until),
        Some(reason.to_owned()),
        None,
        None,
    )
}

/// A rate limit of `queue` (or of its `key`) with its current window, as [`controls`] shows it.
fn limited(
    queue: &str,
    key: Option<&str>,
    limit: RateLimit,
    window: Option<(u32, Timestamp)>,
) -> View {
    (
        queue.to_owned(),
        key.map(str::to_owned),
        false,
        None,
        None,
        Some(limit),
        window,
    )
}

/// A paused queue as [`controls`] shows it.
fn paused(queue: &str) -> View {
    (queue.to_owned(), None, true, None, None, None, None)
}

/// Claims up to `n` jobs of `queue`: their ids, in the order handed out, with the claims.
fn claim(env: &Env, queue: &str, n: usize) -> (Vec<JobId>, Vec<Claimed>) {
    let claimed = env.store.claim(queue, n).unwrap();
    (claimed.iter().map(|c| c.job.id).collect(), claimed)
}

/// Claims up to `n` jobs of `queue` and completes them: their ids, in the order handed out.
fn run(env: &Env, queue: &str, n: usize) -> Vec<JobId> {
    let (ids, claimed) = claim(env, queue, n);
    for c in claimed {
        env.store.complete(c.lease).unwrap();
    }
    ids
}

fn assert_nothing_claimable(env: &Env, queue: &str, why: &str) {
    let (ids, _) = claim(env, queue, 100);
    assert!(ids.is_empty(), "{why}: claimed {ids:?}");
}

/// The job is pending, never started (or its attempts given back).
fn assert_waiting(env: &Env, id: JobId) {
    let job = env.job(id);
    assert_eq!(
        (job.state, job.attempts),
        (JobState::Pending, 0),
        "job {id} waits"
    );
}

fn assert_invalid<T: std::fmt::Debug>(result: Result<T, Error>, field: &str) {
    match result {
        Err(Error::InvalidInput { what, .. }) => assert_eq!(what, field),
        other => panic!("expected InvalidInput naming {field:?}, got {other:?}"),
    }
}

fn assert_healthy(env: &Env) {
    assert_eq!(env.store.check().unwrap(), []);
}

// ---------------------------------------------------------------------------------------------
// A. Parking a key or a queue
// ---------------------------------------------------------------------------------------------

#[test]
fn a_parked_key_holds_only_its_own_jobs_until_its_time_then_runs_them_in_order_one_at_a_time() {
    let env = Env::new();
    let k1 = env.enqueue(keyed("k1", "k"));
    let k2 = env.enqueue(keyed("k2", "k").priority(5));
    let k3 = env.enqueue(keyed("k3", "k"));
    let a1 = env.enqueue(keyed("a1", "a"));
    let f1 = env.enqueue(free("f1"));
    let until = T0.after(secs(60));
    env.store
        .park(Q, Some("k"), until, "429 Retry-After: 60")
        .unwrap();

    assert_eq!(run(&env, Q, 10), [a1, f1], "other keys and free jobs run");
    let f2 = env.enqueue(free("f2"));
    let a2 = env.enqueue(keyed("a2", "a"));
    assert_eq!(run(&env, Q, 10), [f2, a2], "and go on running");
    for id in [k1, k2, k3] {
        assert_waiting(&env, id);
    }
    assert_healthy(&env);

    env.advance(secs(59));
    assert_nothing_claimable(&env, Q, "the key is parked until its time");
    assert_healthy(&env);

    env.advance(secs(1));
    // At its time, the key runs again: in claim order (priority first), one job at a time.
    let (ids, claimed) = claim(&env, Q, 10);
    assert_eq!(ids, [k2], "the key's first job in claim order, alone");
    assert_nothing_claimable(&env, Q, "the key is busy");
    env.store
        .complete(claimed.into_iter().next().unwrap().lease)
        .unwrap();
    assert_eq!(run(&env, Q, 10), [k1]);
    assert_eq!(run(&env, Q, 10), [k3]);
    assert_nothing_claimable(&env, Q, "all ran");
    assert_eq!(controls(&env.store), []);
    assert_healthy(&env);
}

#[test]
fn jobs_of_a_parked_key_enqueued_or_due_during_the_park_wait_for_it_too() {
    let env = Env::new();
    let k1 = env.enqueue(keyed("k1", "k"));
    env.store
        .park(Q, Some("k"), T0.after(secs(60)), "quota")
        .unwrap();
    assert_nothing_claimable(&env, Q, "k1 is parked");
    // Enqueued while the key is parked: before the waiting job in claim order, after it, and
    // one due only later in the park.
    let first = env.enqueue(keyed("first", "k").priority(9));
    let last = env.enqueue(keyed("last", "k").priority(-1));
    let later = env.enqueue(keyed("later", "k").delay(secs(30)));
    assert_nothing_claimable(&env, Q, "new jobs of the key wait for the park");
    env.advance(secs(30));
    assert_nothing_claimable(
        &env,
        Q,
        "a job of the key that became due waits for the park",
    );
    assert_healthy(&env);
    env.advance(secs(30));
    let mut order = Vec::new();
    for _ in 0..4 {
        let ran = run(&env, Q, 10);
        assert_eq!(ran.len(), 1, "one job of the key at a time: {ran:?}");
        order.extend(ran);
    }
    assert_eq!(order, [first, k1, later, last], "claim order");
    assert_nothing_claimable(&env, Q, "all ran");
    assert_healthy(&env);
}

#[test]
fn a_parked_queue_claims_nothing_until_its_time_while_other_queues_go_on() {
    let env = Env::new();
    let q = [
        env.enqueue(free("q1")),
        env.enqueue(keyed("q2", "k")),
        env.enqueue(free("q3").priority(1)),
    ];
    let other = [
        env.enqueue(NewJob::new("other", "o1")),
        env.enqueue(NewJob::new("other", "o2").concurrency_key("k")),
    ];
    let until = T0.after(secs(30));
    env.store.park(Q, None, until, "maintenance").unwrap();
    assert_eq!(
        controls(&env.store),
        [parked(Q, None, until, "maintenance")]
    );

    assert_nothing_claimable(&env, Q, "the queue is parked");
    assert_eq!(run(&env, "other", 10), other, "another queue goes on");
    let q4 = env.enqueue(free("q4"));
    assert_nothing_claimable(&env, Q, "a new job of the parked queue waits");
    env.advance(secs(29));
    assert_nothing_claimable(&env, Q, "the queue is parked until its time");
    assert_healthy(&env);

    env.advance(secs(1));
    assert_eq!(run(&env, Q, 10), [q[2], q[0], q[1], q4]);
    assert_eq!(controls(&env.store), []);
    assert_healthy(&env);
}

#[test]
fn a_later_park_extends_one_and_an_earlier_one_does_not_shorten_it() {
    let env = Env::new();
    let k1 = env.enqueue(keyed("k1", "k"));
    env.store
        .park(Q, Some("k"), T0.after(secs(60)), "first")
        .unwrap();
    // Set aside until 60 s, then the park is extended.
    assert_nothing_claimable(&env, Q, "the key is parked");
    env.store
        .park(Q, Some("k"), T0.after(secs(120)), "second")
        .unwrap();
    env.store
        .park(Q, Some("k"), T0.after(secs(30)), "third")
        .unwrap();
    let views = controls(&env.store);
    assert_eq!(views.len(), 1, "{views:?}");
    assert_eq!(
        views[0].3,
        Some(T0.after(secs(120))),
        "the latest time holds"
    );
    env.advance(secs(60));
    assert_nothing_claimable(&env, Q, "extended to 120 s");
    assert_healthy(&env);
    env.advance(secs(59));
    assert_nothing_claimable(&env, Q, "extended to 120 s");
    env.advance(secs(1));
    assert_eq!(run(&env, Q, 10), [k1]);
    assert_healthy(&env);
}

#[test]
fn an_ordered_key_parked_runs_its_jobs_in_id_order_after_the_park() {
    let env = Env::new();
    let ordered = |p: &str| keyed(p, "o").ordered();
    let o1 = env.enqueue(ordered("o1"));
    let o2 = env.enqueue(ordered("o2").priority(5));
    env.store
        .park(Q, Some("o"), T0.after(secs(60)), "429")
        .unwrap();
    assert_nothing_claimable(&env, Q, "the key is parked");
    let o3 = env.enqueue(ordered("o3").priority(9));
    let f1 = env.enqueue(free("f1"));
    assert_eq!(run(&env, Q, 10), [f1], "only the free job runs");
    assert_healthy(&env);
    env.advance(secs(60));
    assert_eq!(run(&env, Q, 10), [o1], "an ordered key starts in id order");
    assert_eq!(run(&env, Q, 10), [o2]);
    assert_eq!(run(&env, Q, 10), [o3]);
    assert_healthy(&env);
}

// ---------------------------------------------------------------------------------------------
// B. What survives a restart, and what `controls()` reports
// ---------------------------------------------------------------------------------------------

#[test]
fn parks_pauses_and_limits_survive_a_reopen_and_controls_reports_them() {
    let env = Env::new();
    let p1 = env.enqueue(NewJob::new("p", "p1"));
    let k1 = env.enqueue(keyed("k1", "k"));
    let r1 = env.enqueue(NewJob::new("r", "r1"));
    let l = [
        env.enqueue(NewJob::new("l", "l1")),
        env.enqueue(NewJob::new("l", "l2")),
    ];
    let rate = limit(1, secs(10));
    env.store.pause("p").unwrap();
    env.store
        .park(Q, Some("k"), T0.after(secs(120)), "429 Retry-After: 120")
        .unwrap();
    env.store
        .park("r", None, T0.after(secs(60)), "down")
        .unwrap();
    env.store.set_rate_limit("l", None, Some(rate)).unwrap();
    assert_eq!(run(&env, "l", 10), [l[0]], "one start in the window");
    // The key's job is moved aside at a claim while its key is parked.
    assert_nothing_claimable(&env, Q, "the key is parked");

    let expected = vec![
        limited("l", None, rate, Some((1, T0.after(secs(10))))),
        paused("p"),
        parked(Q, Some("k"), T0.after(secs(120)), "429 Retry-After: 120"),
        parked("r", None, T0.after(secs(60)), "down"),
    ];
    assert_eq!(controls(&env.store), expected);

    let env = env.reopen();
    assert_eq!(controls(&env.store), expected, "as before the restart");
    assert_healthy(&env);
    assert_nothing_claimable(&env, "p", "still paused");
    assert_nothing_claimable(&env, Q, "still parked");
    assert_nothing_claimable(&env, "r", "still parked");
    assert_nothing_claimable(&env, "l", "still out of starts");

    env.advance(secs(10));
    assert_eq!(
        controls(&env.store)[0],
        limited("l", None, rate, None),
        "a closed window is not reported"
    );
    assert_eq!(run(&env, "l", 10), [l[1]]);

    env.advance(secs(50));
    assert_eq!(
        controls(&env.store),
        [
            limited("l", None, rate, None),
            paused("p"),
            parked(Q, Some("k"), T0.after(secs(120)), "429 Retry-After: 120"),
        ],
        "the queue park ended at its time and is gone"
    );
    assert_eq!(run(&env, "r", 10), [r1]);
    assert_nothing_claimable(&env, Q, "the key is parked until 120 s");

    env.advance(secs(60));
    assert_eq!(
        controls(&env.store),
        [limited("l", None, rate, None), paused("p")],
        "the key park ended and is gone"
    );
    let env = env.reopen();
    assert_eq!(run(&env, Q, 10), [k1], "after a restart too");
    assert_nothing_claimable(&env, "p", "still paused");
    env.store.resume("p").unwrap();
    env.store.set_rate_limit("l", None, None).unwrap();
    assert_eq!(controls(&env.store), []);
    assert_eq!(run(&env, "p", 10), [p1]);
    assert_healthy(&env);
}

// ---------------------------------------------------------------------------------------------
// C. Unpark
// ---------------------------------------------------------------------------------------------

#[test]
fn unpark_ends_a_park_at_once_and_the_jobs_set_aside_run_at_the_next_claim() {
    let env = Env::new();
    let k = [env.enqueue(keyed("k1", "k")), env.enqueue(keyed("k2", "k"))];
    let f1 = env.enqueue(free("f1"));
    env.store
        .park(Q, Some("k"), T0.after(secs(3600)), "429")
        .unwrap();
    env.store
        .park(Q, None, T0.after(secs(3600)), "down")
        .unwrap();
    assert_nothing_claimable(&env, Q, "the queue is parked");

    env.store.unpark(Q, None).unwrap();
    assert_eq!(
        controls(&env.store),
        [parked(Q, Some("k"), T0.after(secs(3600)), "429")]
    );
    assert_eq!(
        run(&env, Q, 10),
        [f1],
        "the queue runs; the key is still parked"
    );
    assert_nothing_claimable(&env, Q, "the key is parked");

    env.store.unpark(Q, Some("k")).unwrap();
    assert_eq!(controls(&env.store), []);
    assert_eq!(
        run(&env, Q, 10),
        [k[0]],
        "the key's set-aside job runs at once"
    );
    assert_eq!(run(&env, Q, 10), [k[1]]);
    // Unparking what is not parked does nothing.
    env.store.unpark(Q, Some("k")).unwrap();
    env.store.unpark("nothing", None).unwrap();
    assert_eq!(controls(&env.store), []);
    assert_healthy(&env);
}

// ---------------------------------------------------------------------------------------------
// D. Rate limits
// ---------------------------------------------------------------------------------------------

#[test]
fn a_queue_rate_limit_starts_at_most_its_count_per_window_across_claims() {
    let env = Env::new();
    let ids: Vec<JobId> = (0..10)
        .map(|i| env.enqueue(free(&format!("{i}"))))
        .collect();
    let rate = limit(3, secs(10));
    env.store.set_rate_limit(Q, None, Some(rate)).unwrap();
    assert_eq!(controls(&env.store), [limited(Q, None, rate, None)]);

    assert_eq!(claim(&env, Q, 2).0, ids[0..2]);
    assert_eq!(
        claim(&env, Q, 2).0,
        ids[2..3],
        "one start left in the window"
    );
    assert_nothing_claimable(&env, Q, "the window's 3 starts are used");
    assert_eq!(
        controls(&env.store),
        [limited(Q, None, rate, Some((3, T0.after(secs(10)))))]
    );
    env.advance(secs(9));
    assert_nothing_claimable(&env, Q, "the window is still open");
    assert_healthy(&env);

    env.advance(secs(1));
    assert_eq!(claim(&env, Q, 10).0, ids[3..6], "a new window: 3 more");
    assert_eq!(
        controls(&env.store),
        [limited(Q, None, rate, Some((3, T0.after(secs(20)))))]
    );
    assert_nothing_claimable(&env, Q, "the second window is used");
    env.advance(secs(10));
    assert_eq!(claim(&env, Q, 1).0, ids[6..7]);
    env.advance(secs(5));
    assert_eq!(claim(&env, Q, 10).0, ids[7..9], "the window opened at 20 s");
    env.advance(secs(5));
    assert_eq!(claim(&env, Q, 10).0, ids[9..10]);
    assert_eq!(
        controls(&env.store),
        [limited(Q, None, rate, Some((1, T0.after(secs(40)))))]
    );
    assert_healthy(&env);
}

#[test]
fn a_key_rate_limit_holds_that_key_only() {
    let env = Env::new();
    let k: Vec<JobId> = (0..5)
        .map(|i| env.enqueue(keyed(&format!("k{i}"), "k")))
        .collect();
    let a: Vec<JobId> = (0..4)
        .map(|i| env.enqueue(keyed(&format!("a{i}"), "a")))
        .collect();
    let rate = limit(2, secs(60));
    env.store.set_rate_limit(Q, Some("k"), Some(rate)).unwrap();

    // Concurrency 1 per key: each job of a key completes before the next starts.
    assert_eq!(run(&env, Q, 10), [k[0], a[0]]);
    assert_eq!(run(&env, Q, 10), [k[1], a[1]]);
    assert_eq!(
        run(&env, Q, 10),
        [a[2]],
        "k is out of starts, a is not limited"
    );
    assert_eq!(run(&env, Q, 10), [a[3]]);
    assert_eq!(
        controls(&env.store),
        [limited(Q, Some("k"), rate, Some((2, T0.after(secs(60)))))]
    );
    env.advance(secs(59));
    assert_nothing_claimable(&env, Q, "k's window is still open");
    assert_healthy(&env);

    env.advance(secs(1));
    assert_eq!(run(&env, Q, 10), [k[2]]);
    env.advance(secs(10));
    assert_eq!(run(&env, Q, 10), [k[3]]);
    assert_nothing_claimable(&env, Q, "k's second window is used");
    assert_eq!(
        controls(&env.store),
        [limited(Q, Some("k"), rate, Some((2, T0.after(secs(120)))))]
    );
    env.advance(secs(50));
    assert_eq!(run(&env, Q, 10), [k[4]]);
    for id in k.iter().chain(&a) {
        assert_eq!(env.job(*id).state, JobState::Succeeded);
    }
    assert_healthy(&env);
}

#[test]
fn removing_a_key_rate_limit_runs_its_set_aside_jobs_at_once() {
    let env = Env::new();
    let k: Vec<JobId> = (0..3)
        .map(|i| env.enqueue(keyed(&format!("k{i}"), "k")))
        .collect();
    env.store
        .set_rate_limit(Q, Some("k"), Some(limit(1, secs(3600))))
        .unwrap();
    assert_eq!(run(&env, Q, 10), [k[0]]);
    assert_nothing_claimable(&env, Q, "k is out of starts for an hour");
    env.store.set_rate_limit(Q, Some("k"), None).unwrap();
    assert_eq!(controls(&env.store), []);
    assert_eq!(run(&env, Q, 10), [k[1]]);
    assert_eq!(run(&env, Q, 10), [k[2]]);
    assert_healthy(&env);
}

#[test]
fn a_rate_limit_is_not_exceeded_across_a_restart() {
    let env = Env::new();
    let ids: Vec<JobId> = (0..4).map(|i| env.enqueue(free(&format!("{i}")))).collect();
    let k: Vec<JobId> = (0..2)
        .map(|i| env.enqueue(NewJob::new("kq", format!("k{i}")).concurrency_key("k")))
        .collect();
    let rate = limit(2, secs(60));
    env.store.set_rate_limit(Q, None, Some(rate)).unwrap();
    let key_rate = limit(1, secs(120));
    env.store
        .set_rate_limit("kq", Some("k"), Some(key_rate))
        .unwrap();
    assert_eq!(run(&env, Q, 10), ids[0..2], "the queue's window is used");
    assert_eq!(run(&env, "kq", 10), k[0..1], "the key's window is used");
    env.advance(secs(30));

    let env = env.reopen();
    assert_nothing_claimable(&env, Q, "the window's starts are used, restart or not");
    assert_nothing_claimable(&env, "kq", "the key's start is used, restart or not");
    env.advance(secs(29));
    let env = env.reopen();
    assert_nothing_claimable(&env, Q, "the window is still open");
    assert_eq!(
        controls(&env.store),
        [
            limited("kq", Some("k"), key_rate, Some((1, T0.after(secs(120))))),
            limited(Q, None, rate, Some((2, T0.after(secs(60))))),
        ]
    );

    env.advance(secs(1));
    assert_eq!(run(&env, Q, 10), ids[2..4], "a new window at 60 s");
    assert_nothing_claimable(&env, "kq", "the key's window is open until 120 s");
    env.advance(secs(60));
    let env = env.reopen();
    assert_eq!(
        run(&env, "kq", 10),
        k[1..2],
        "a new window of the key at 120 s"
    );
    assert_healthy(&env);
}

// ---------------------------------------------------------------------------------------------
// E. Pause
// ---------------------------------------------------------------------------------------------

#[test]
fn a_paused_queue_accepts_enqueues_lets_running_jobs_finish_and_claims_nothing_until_resumed() {
    let env = Env::new();
    let running = env.enqueue(free("running"));
    let lease = env.claim_one(Q).lease;
    let waiting = env.enqueue(keyed("waiting", "k"));
    let o1 = env.enqueue(NewJob::new("other", "o1"));
    env.store.pause(Q).unwrap();
    let during = [
        env.enqueue(free("during").priority(1)),
        env.enqueue(keyed("during-k", "k2")),
    ];
    assert_eq!(controls(&env.store), [paused(Q)]);
    assert_nothing_claimable(&env, Q, "the queue is paused");
    env.advance(secs(3600));
    assert_nothing_claimable(&env, Q, "a pause does not end by itself");
    assert_eq!(run(&env, "other", 10), [o1], "another queue goes on");
    // The job that was running when the queue was paused still settles.
    env.store.heartbeat(&lease).unwrap();
    env.store.complete(lease).unwrap();
    assert_eq!(env.job(running).state, JobState::Succeeded);
    for id in [waiting, during[0], during[1]] {
        assert_waiting(&env, id);
    }
    assert_healthy(&env);

    let env = env.reopen();
    assert_nothing_claimable(&env, Q, "a pause survives a restart");
    env.store.resume(Q).unwrap();
    assert_eq!(controls(&env.store), []);
    assert_eq!(run(&env, Q, 10), [during[0], waiting, during[1]]);
    assert_healthy(&env);
}

// ---------------------------------------------------------------------------------------------
// F. A parked key with a long backlog
// ---------------------------------------------------------------------------------------------

#[test]
fn a_parked_key_with_twenty_thousand_jobs_does_not_hold_up_the_others() {
    let env = Env::new();
    const HOT: usize = 20_000;
    let hot: Vec<JobId> = env
        .store
        .enqueue_batch((0..HOT).map(|i| keyed(&format!("h{i}"), "hot")))
        .unwrap()
        .into_iter()
        .map(|e| e.id())
        .collect();
    assert_eq!(hot.len(), HOT);
    let until = T0.after(secs(600));
    env.store.park(Q, Some("hot"), until, "429").unwrap();
    let mut others: Vec<JobId> = (0..5)
        .map(|i| env.enqueue(keyed(&format!("c{i}"), &format!("cold{i}"))))
        .collect();
    others.extend((0..5).map(|i| env.enqueue(free(&format!("f{i}")))));

    // The first claim indexes the backlog and sets the key's head aside.
    let started = std::time::Instant::now();
    assert_eq!(run(&env, Q, 100), others);
    eprintln!(
        "first claim behind the parked backlog: {:?}",
        started.elapsed()
    );
    assert_healthy(&env);

    // Later claims meet no job of the parked key; a new job of it that comes first in claim
    // order becomes its head, and is set aside in turn.
    let urgent = env.enqueue(keyed("urgent", "hot").priority(1));
    let mut slowest = Duration::ZERO;
    for round in 0..20 {
        let mine = [
            env.enqueue(keyed(&format!("r{round}"), &format!("cold{}", round % 5))),
            env.enqueue(free(&format!("g{round}"))),
        ];
        let started = std::time::Instant::now();
        assert_eq!(run(&env, Q, 100), mine, "round {round}");
        slowest = slowest.max(started.elapsed());
    }
    eprintln!("slowest claim of the others: {slowest:?}");
    let late = env.enqueue(keyed("late", "hot").priority(-1));
    assert_nothing_claimable(&env, Q, "the key is parked");
    assert_waiting(&env, urgent);
    assert_waiting(&env, late);
    assert_healthy(&env);

    // At its time, the key runs again, first in claim order, one at a time.
    env.advance(secs(600));
    assert_eq!(run(&env, Q, 100), [urgent]);
    assert_eq!(run(&env, Q, 100), [hot[0]]);
    assert_eq!(run(&env, Q, 100), [hot[1]]);
    let (ids, claimed) = claim(&env, Q, 100);
    assert_eq!(ids, [hot[2]]);
    drop(claimed);
    assert_eq!(controls(&env.store), []);
    assert_healthy(&env);
}

// ---------------------------------------------------------------------------------------------
// G. Bad input
// ---------------------------------------------------------------------------------------------

#[test]
fn bad_limits_parks_and_names_are_refused_and_nothing_is_written() {
    let env = Env::new();
    let later = T0.after(secs(60));
    assert_invalid(RateLimit::new(0, secs(1)), "rate limit starts");
    assert_invalid(RateLimit::new(1, Duration::ZERO), "rate limit period");
    assert_invalid(
        RateLimit::new(1, Duration::from_micros(999)),
        "rate limit period",
    );
    assert_invalid(env.store.park(Q, None, env.now(), "now"), "park until");
    assert_invalid(
        env.store.park(Q, Some("k"), T0.before(secs(1)), "past"),
        "park until",
    );
    assert_invalid(env.store.park(Q, Some(""), later, "r"), "concurrency key");
    assert_invalid(env.store.park("", None, later, "r"), "queue name");
    assert_invalid(env.store.park("", Some("k"), later, "r"), "queue name");
    let ok = limit(1, secs(1));
    assert_invalid(
        env.store.set_rate_limit(Q, Some(""), Some(ok)),
        "concurrency key",
    );
    assert_invalid(env.store.set_rate_limit("", None, Some(ok)), "queue name");
    assert_invalid(env.store.unpark("", None), "queue name");
    assert_invalid(env.store.unpark(Q, Some("")), "concurrency key");
    assert_invalid(env.store.pause(""), "queue name");
    assert_invalid(env.store.resume(""), "queue name");
    let long = "x".repeat(quern::MAX_KEY + 1);
    assert_invalid(
        env.store.park(Q, Some(&long), later, "r"),
        "concurrency key",
    );
    let long_queue = "x".repeat(quern::MAX_QUEUE_NAME + 1);
    assert_invalid(env.store.pause(&long_queue), "queue name");
    assert_eq!(controls(&env.store), []);
    let env = env.reopen();
    assert_eq!(controls(&env.store), []);
    assert_healthy(&env);
}

// ---------------------------------------------------------------------------------------------
// H. Under the executor: a handler parks its key
// ---------------------------------------------------------------------------------------------

fn state(store: &Store, id: JobId) -> JobState {
    store.get(id).unwrap().expect("job exists").state
}

const RETRY_AFTER: &str = "429 Retry-After: 60";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_parking_its_key_holds_that_key_while_other_keys_keep_running() {
    let env = Env::new();
    let store = env.store.clone();
    let a1 = env.enqueue(keyed("park", "a"));
    let a2 = env.enqueue(keyed("a2", "a"));
    // The handler parks the key the first time it runs a job "park"; every other run succeeds.
    let ran = Arc::new(Mutex::new(Vec::<String>::new()));
    let parked_once = Arc::new(AtomicBool::new(false));
    let (r, p) = (ran.clone(), parked_once.clone());
    let handle = Executor::builder(store.clone())
        .queue(Q)
        .concurrency(2)
        .spawn(move |ctx| {
            let (r, p) = (r.clone(), p.clone());
            async move {
                let payload = String::from_utf8_lossy(ctx.payload()).into_owned();
                if payload == "park" && !p.swap(true, Ordering::SeqCst) {
                    return Outcome::park_key(secs(60), RETRY_AFTER);
                }
                r.lock().push(payload);
                Outcome::Success
            }
        })
        .unwrap();
    until(&store, "the key parked", || handle.metrics().parked == 1).await;
    assert_eq!(
        controls(&store),
        [parked(Q, Some("a"), T0.after(secs(60)), RETRY_AFTER)]
    );
    let job = env.job(a1);
    assert_eq!(
        (job.state, job.attempts, job.run_at),
        (JobState::Pending, 0, T0.after(secs(60))),
        "the parked job waits for the park, its attempt given back"
    );

    // Jobs of other keys, and without one, enqueued after the park, run; the parked key's do not.
    let b: Vec<JobId> = (0..3)
        .map(|i| env.enqueue(keyed(&format!("b{i}"), "b")))
        .collect();
    let a3 = env.enqueue(keyed("a3", "a"));
    let n1 = env.enqueue(free("n1"));
    until(&store, "b0..b2 and n1 succeeded", || {
        b.iter()
            .chain([&n1])
            .all(|id| state(&store, *id) == JobState::Succeeded)
    })
    .await;
    for id in [a1, a2, a3] {
        assert_waiting(&env, id);
    }
    {
        let ran = ran.lock();
        assert!(
            !ran.iter().any(|p| p.starts_with('a')),
            "a job of the parked key ran: {ran:?}"
        );
    }
    assert_eq!(
        controls(&store),
        [parked(Q, Some("a"), T0.after(secs(60)), RETRY_AFTER)]
    );

    // At the park's time, the key's jobs run again, the parked one too.
    env.advance(secs(60));
    handle.wake();
    until(&store, "a1..a3 succeeded", || {
        [a1, a2, a3]
            .iter()
            .all(|id| state(&store, *id) == JobState::Succeeded)
    })
    .await;
    assert_eq!(controls(&store), []);
    handle.shutdown(WAIT).await.unwrap();
    assert_healthy(&env);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_parking_the_key_of_a_job_without_one_only_snoozes_that_job() {
    let env = Env::new();
    let store = env.store.clone();
    let lone = env.enqueue(free("park"));
    let handle = Executor::builder(store.clone())
        .queue(Q)
        .spawn(|ctx| async move {
            if ctx.payload() == b"park" {
                Outcome::park_key(secs(60), RETRY_AFTER)
            } else {
                Outcome::Success
            }
        })
        .unwrap();
    until(&store, "the job parked", || handle.metrics().parked == 1).await;
    let job = env.job(lone);
    assert_eq!(
        (job.state, job.attempts, job.run_at),
        (JobState::Pending, 0, T0.after(secs(60))),
        "snoozed, its attempt given back"
    );
    assert_eq!(controls(&store), [], "no control stored");
    // Nothing else is held back.
    let other = env.enqueue(free("other"));
    let keyed_job = env.enqueue(keyed("keyed", "k"));
    until(&store, "the other jobs succeeded", || {
        [other, keyed_job]
            .iter()
            .all(|id| state(&store, *id) == JobState::Succeeded)
    })
    .await;
    assert_waiting(&env, lone);
    handle.shutdown(WAIT).await.unwrap();
    assert_healthy(&env);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_executor_starts_no_more_than_the_queue_rate_limit_per_window() {
    let env = Env::new();
    let store = env.store.clone();
    let rate = limit(2, secs(60));
    store.set_rate_limit(Q, None, Some(rate)).unwrap();
    let handle = Executor::builder(store.clone())
        .queue(Q)
        .concurrency(4)
        .spawn(|_ctx| async { Outcome::Success })
        .unwrap();
    // Enqueued with idle workers: the hand-off at commit claims under the same limit.
    let ids: Vec<JobId> = (0..5).map(|i| env.enqueue(free(&format!("{i}")))).collect();
    let succeeded = |n: usize| {
        let store = store.clone();
        let ids = ids.clone();
        move || {
            ids.iter()
                .filter(|id| state(&store, **id) == JobState::Succeeded)
                .count()
                == n
        }
    };
    until(&store, "2 succeeded", succeeded(2)).await;
    assert_eq!(
        controls(&store),
        [limited(Q, None, rate, Some((2, T0.after(secs(60)))))]
    );
    for id in &ids[2..] {
        assert_waiting(&env, *id);
    }
    env.advance(secs(60));
    handle.wake();
    until(&store, "4 succeeded", succeeded(4)).await;
    assert_eq!(
        controls(&store),
        [limited(Q, None, rate, Some((2, T0.after(secs(120)))))]
    );
    assert_waiting(&env, ids[4]);
    env.advance(secs(60));
    handle.wake();
    until(&store, "all 5 succeeded", succeeded(5)).await;
    assert_eq!(handle.metrics().started, 5);
    handle.shutdown(WAIT).await.unwrap();
    assert_healthy(&env);
}

// ---------------------------------------------------------------------------------------------
// Found by review: the key heads at their edges
// ---------------------------------------------------------------------------------------------

#[test]
fn a_delayed_ordered_holder_keeps_its_key_from_a_plain_job_of_the_same_key() {
    let env = Env::new();
    let b = env.enqueue(keyed("b", "k").ordered().delay(secs(60)));
    let a = env.enqueue(keyed("a", "k"));
    assert_nothing_claimable(&env, Q, "the ordered line's first job holds the key");
    assert_healthy(&env);
    env.store.cancel(b).unwrap();
    assert_healthy(&env);
    let (ids, claimed) = claim(&env, Q, 10);
    assert_eq!(ids, [a], "the line ended: the plain job runs");
    env.store
        .complete(claimed.into_iter().next().unwrap().lease)
        .unwrap();
    assert_healthy(&env);
}

#[test]
fn passing_a_key_after_the_clock_went_back_moves_its_many_blocked_jobs_without_recursing() {
    let env = Env::new();
    env.enqueue(keyed("r", "k"));
    let running = env.claim_one(Q);
    env.store
        .enqueue_batch((0..3_000).map(|i| keyed(&format!("{i}"), "k")))
        .unwrap();
    assert_nothing_claimable(&env, Q, "the key is busy; its jobs are blocked");
    env.clock.set(T0.before(secs(1)));
    env.store.complete(running.lease).unwrap();
    assert_healthy(&env);
    env.advance(secs(1));
    assert_eq!(
        claim(&env, Q, 10).0.len(),
        1,
        "one job of the key at a time"
    );
    assert_healthy(&env);
}

// ---------------------------------------------------------------------------------------------
// Several jobs of a key at once
// ---------------------------------------------------------------------------------------------

#[test]
fn a_key_allowed_two_at_once_runs_two_and_the_rest_wait_for_room() {
    let env = Env::new();
    let k: Vec<JobId> = (0..5)
        .map(|i| env.enqueue(keyed(&format!("k{i}"), "k")))
        .collect();
    let other = env.enqueue(keyed("o", "other"));
    env.store.set_max_running(Q, "k", Some(2)).unwrap();
    let views = env.store.controls().unwrap();
    assert_eq!(views.len(), 1);
    assert_eq!(views[0].max_running, Some(2));
    let (ids, mut claimed) = claim(&env, Q, 10);
    assert_eq!(ids, [k[0], k[1], other], "two of the key, in claim order");
    assert_healthy(&env);
    assert_nothing_claimable(&env, Q, "the key is full");
    let first = claimed.remove(0);
    env.store.complete(first.lease).unwrap();
    assert_eq!(claim(&env, Q, 10).0, [k[2]], "room for one more");
    assert_healthy(&env);
}

#[test]
fn lowering_a_keys_maximum_lets_no_job_start_until_the_running_ones_fit_it() {
    let env = Env::new();
    let k: Vec<JobId> = (0..4)
        .map(|i| env.enqueue(keyed(&format!("k{i}"), "k")))
        .collect();
    env.store.set_max_running(Q, "k", Some(3)).unwrap();
    let (ids, mut claimed) = claim(&env, Q, 10);
    assert_eq!(ids, k[..3]);
    env.store.set_max_running(Q, "k", None).unwrap();
    assert_eq!(env.store.controls().unwrap(), []);
    env.store.complete(claimed.remove(0).lease).unwrap();
    assert_nothing_claimable(&env, Q, "two still run, one is the maximum");
    env.store.complete(claimed.remove(0).lease).unwrap();
    assert_nothing_claimable(&env, Q, "one still runs");
    env.store.complete(claimed.remove(0).lease).unwrap();
    assert_eq!(claim(&env, Q, 10).0, [k[3]]);
    assert_healthy(&env);
    assert_invalid(env.store.set_max_running(Q, "k", Some(0)), "max running");
}

#[test]
fn an_ordered_job_set_aside_while_its_key_is_full_is_healthy_and_runs_when_room_comes() {
    let env = Env::new();
    env.store.set_max_running(Q, "k", Some(2)).unwrap();
    env.enqueue(keyed("a", "k"));
    env.enqueue(keyed("b", "k"));
    let (_, mut claimed) = claim(&env, Q, 10);
    assert_eq!(claimed.len(), 2);
    let o = env.enqueue(keyed("o", "k").ordered());
    assert_nothing_claimable(&env, Q, "two run, two is the maximum");
    assert_healthy(&env);
    env.store.complete(claimed.remove(0).lease).unwrap();
    assert_eq!(claim(&env, Q, 10).0, [o]);
    assert_healthy(&env);
}
