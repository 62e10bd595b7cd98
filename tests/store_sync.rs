//! The sync semantics, for work that keeps something in step with a changing source:
//!
//! - change-safe unique keys ([`NewJob::unique_key`], the default): an enqueue of a held key is
//!   folded into the key's waiting job, or becomes the follow-up of its running job, so that
//!   every enqueue is covered by a run that starts after it; with `latest_wins` and `debounce`;
//! - ordered concurrency keys ([`NewJob::ordered`]): the jobs of a key start in id order, and the
//!   first holds the line while it waits for a retry, a snooze or its run time;
//! - settling a job in the user's own transaction ([`quern::Store::write`] with
//!   [`quern::WriteTx::complete`] and the others): the job's outcome and the user's rows commit
//!   together or not at all.
//!
//! Strict unique keys and plain concurrency keys are in `store_keys.rs`. Time moves only through
//! the `ManualClock`; every test ends with a clean [`quern::Store::check`].

mod common;

use common::{Env, T0, TTL, assert_lease_lost, ms, secs};
use quern::redb::{ReadableTable, TableDefinition};
use quern::{Claimed, Enqueued, Error, Filter, Job, JobId, JobState, NewJob, Timestamp};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// The queue of most tests.
const Q: &str = "q";

/// The change-safe unique key of most tests.
const KEY: &str = "k";

/// A user table written beside quern's in [`quern::Store::write`].
const ROWS: TableDefinition<&str, u64> = TableDefinition::new("rows");

/// A job of queue [`Q`] with the change-safe unique key [`KEY`].
fn sync(payload: impl Into<Vec<u8>>) -> NewJob {
    NewJob::new(Q, payload).unique_key(KEY)
}

/// A job of queue [`Q`] with the ordered concurrency key `key`.
fn ordered(payload: &str, key: &str) -> NewJob {
    NewJob::new(Q, payload).concurrency_key(key).ordered()
}

/// A payload too large to travel inside the job's record (it is stored apart).
fn big(fill: u8) -> Vec<u8> {
    vec![fill; 5_000]
}

/// Enqueues `job`, which must be folded into a waiting job: returns that job.
fn coalesced(env: &Env, job: NewJob) -> JobId {
    match env.store.enqueue(job).unwrap() {
        Enqueued::Coalesced(id) => id,
        other => panic!("expected the enqueue to be coalesced, got {other:?}"),
    }
}

/// Enqueues `job`, which must become (or be folded into) a follow-up: returns the follow-up
/// and the running job it waits for.
fn follow_up(env: &Env, job: NewJob) -> (JobId, JobId) {
    match env.store.enqueue(job).unwrap() {
        Enqueued::FollowUp { job, running } => (job, running),
        other => panic!("expected a follow-up, got {other:?}"),
    }
}

/// The jobs of [`Q`] with unique key [`KEY`] that wait to run: pending (follow-ups included),
/// or failed with a retry scheduled.
fn waiting_of_key(env: &Env) -> Vec<JobId> {
    env.store
        .list(&Filter::default().queue(Q))
        .unwrap()
        .into_iter()
        .filter(|j| j.unique_key.as_deref() == Some(KEY))
        .filter(|j| match j.state {
            JobState::Pending => true,
            JobState::Failed => j.next_attempt_at.is_some(),
            JobState::InProgress | JobState::Succeeded => false,
        })
        .map(|j| j.id)
        .collect()
}

fn payload(env: &Env, id: JobId) -> Vec<u8> {
    env.job(id).payload
}

fn assert_nothing_claimable(env: &Env, queue: &str, why: &str) {
    let claimed: Vec<JobId> = env
        .store
        .claim(queue, 10)
        .unwrap()
        .into_iter()
        .map(|c| c.job.id)
        .collect();
    assert!(claimed.is_empty(), "{why}: claimed {claimed:?}");
}

fn assert_healthy(env: &Env) {
    assert_eq!(env.store.check().unwrap(), []);
}

/// The value of `key` in the user table [`ROWS`], read in a transaction of its own.
fn row(env: &Env, key: &str) -> Option<u64> {
    env.store
        .write(|tx| {
            let table = tx.open_table(ROWS)?;
            let value = table.get(key)?.map(|g| g.value());
            Ok::<_, Error>(value)
        })
        .unwrap()
}

/// The fields a settle decides: state, attempts, run_at, next_attempt_at, last_error,
/// lease_expires_at, finished_at, updated_at.
type Outcome = (
    JobState,
    u32,
    Timestamp,
    Option<Timestamp>,
    Option<String>,
    Option<Timestamp>,
    Option<Timestamp>,
    Timestamp,
);

/// What a settle decided, to compare a settle in a user transaction with the store's own.
fn outcome(job: &Job) -> Outcome {
    (
        job.state,
        job.attempts,
        job.run_at,
        job.next_attempt_at,
        job.last_error.clone(),
        job.lease_expires_at,
        job.finished_at,
        job.updated_at,
    )
}

// ---------------------------------------------------------------------------------------------
// A. Change-safe unique keys: folding into the waiting job
// ---------------------------------------------------------------------------------------------

#[test]
fn an_enqueue_of_a_key_whose_job_is_pending_is_coalesced_keeping_the_first_payload() {
    let env = Env::new();
    let id = env.enqueue(sync("first"));
    assert_eq!(
        env.store.enqueue(sync("second")).unwrap(),
        Enqueued::Coalesced(id)
    );
    assert_eq!(env.store.list(&Filter::default()).unwrap().len(), 1);
    assert_eq!(payload(&env, id), b"first");
    let c = env.claim_one(Q);
    assert_eq!((c.job.id, c.job.payload), (id, b"first".to_vec()));
    assert_healthy(&env);
}

#[test]
fn an_enqueue_of_a_key_whose_job_waits_for_a_retry_is_coalesced_into_it() {
    let env = Env::new();
    let id = env.enqueue(sync("first"));
    env.store.fail(env.claim_one(Q).lease, "503").unwrap();
    assert_eq!(coalesced(&env, sync("second")), id);
    assert_eq!(payload(&env, id), b"first");
    assert_eq!(coalesced(&env, sync(big(b'l')).latest_wins()), id);
    assert_eq!(payload(&env, id), big(b'l'), "latest wins in a retry too");
    assert_eq!(waiting_of_key(&env), [id]);
    assert_eq!(env.job(id).next_attempt_at, Some(T0.after(secs(30))));
    assert_healthy(&env);
    env.advance(secs(30));
    env.store.promote_due().unwrap();
    assert_eq!(env.claim_one(Q).job.payload, big(b'l'));
    assert_healthy(&env);
}

#[test]
fn latest_wins_replaces_the_payload_of_the_waiting_job() {
    let env = Env::new();
    let id = env.enqueue(sync("v1"));
    assert_eq!(coalesced(&env, sync("v2").latest_wins()), id);
    assert_eq!(payload(&env, id), b"v2");
    // Without latest_wins, the payload in place stays, whatever put it there.
    assert_eq!(coalesced(&env, sync("v3")), id);
    assert_eq!(payload(&env, id), b"v2");
    assert_eq!(env.store.list(&Filter::default()).unwrap().len(), 1);
    assert_eq!(env.claim_one(Q).job.payload, b"v2");
    assert_healthy(&env);
}

#[test]
fn latest_wins_moves_the_waiting_payload_between_inline_and_apart() {
    let env = Env::new();
    let id = env.enqueue(sync("small"));
    assert_eq!(coalesced(&env, sync(big(b'a')).latest_wins()), id);
    assert_eq!(payload(&env, id), big(b'a'), "inline replaced by apart");
    assert_healthy(&env);
    assert_eq!(coalesced(&env, sync(big(b'b')).latest_wins()), id);
    assert_eq!(payload(&env, id), big(b'b'), "apart replaced by apart");
    assert_healthy(&env);
    assert_eq!(coalesced(&env, sync("tiny").latest_wins()), id);
    assert_eq!(payload(&env, id), b"tiny", "apart replaced by inline");
    assert_healthy(&env);
    assert_eq!(coalesced(&env, sync(big(b'c')).latest_wins()), id);
    let c = env.claim_one(Q);
    assert_eq!(c.job.payload, big(b'c'));
    env.store.complete(c.lease).unwrap();
    assert_healthy(&env);
}

// ---------------------------------------------------------------------------------------------
// A. Change-safe unique keys: debounce
// ---------------------------------------------------------------------------------------------

#[test]
fn a_debounced_new_job_runs_no_sooner_than_its_window_nor_its_own_run_at() {
    let env = Env::new();
    let soon = env.enqueue(NewJob::new(Q, "soon").unique_key("a").debounce(secs(10)));
    let later = env.enqueue(
        NewJob::new(Q, "later")
            .unique_key("b")
            .delay(secs(60))
            .debounce(secs(10)),
    );
    assert_eq!(env.job(soon).run_at, T0.after(secs(10)));
    assert_eq!(env.job(later).run_at, T0.after(secs(60)));
    assert_healthy(&env);
}

#[test]
fn a_debounced_enqueue_pushes_the_waiting_job_out_but_never_pulls_it_in() {
    let env = Env::new();
    let id = env.enqueue(sync("x"));
    assert_eq!(env.job(id).run_at, T0);
    env.advance(secs(5));
    assert_eq!(coalesced(&env, sync("y").debounce(secs(10))), id);
    assert_eq!(
        env.job(id).run_at,
        T0.after(secs(15)),
        "pushed to now + 10 s"
    );
    env.advance(secs(1));
    assert_eq!(coalesced(&env, sync("z").debounce(secs(2))), id);
    assert_eq!(
        env.job(id).run_at,
        T0.after(secs(15)),
        "now + 2 s is sooner: not pulled in"
    );
    assert_eq!(coalesced(&env, sync("w")), id);
    assert_eq!(
        env.job(id).run_at,
        T0.after(secs(15)),
        "no debounce, no move"
    );
    assert_nothing_claimable(&env, Q, "it was due, and was pushed out");
    env.advance(secs(9));
    assert_eq!(env.claim_one(Q).job.id, id);
    assert_healthy(&env);
}

#[test]
fn a_burst_of_debounced_enqueues_becomes_one_run_a_window_after_the_last() {
    let env = Env::new();
    let id = env.enqueue(sync("0").debounce(secs(10)));
    for i in 1..5 {
        env.advance(secs(1));
        assert_eq!(coalesced(&env, sync(format!("{i}")).debounce(secs(10))), id);
    }
    // The last enqueue was at T0 + 4 s.
    assert_eq!(env.job(id).run_at, T0.after(secs(14)));
    env.advance(secs(10) - ms(1));
    assert_nothing_claimable(&env, Q, "within the window of the last enqueue");
    env.advance(ms(1));
    let c = env.claim_one(Q);
    assert_eq!((c.job.id, c.job.payload), (id, b"0".to_vec()));
    assert_eq!(env.store.list(&Filter::default()).unwrap().len(), 1);
    assert_healthy(&env);
}

#[test]
fn a_debounced_enqueue_pushes_a_scheduled_retry_out() {
    let env = Env::new();
    let id = env.enqueue(sync("x"));
    env.store.fail(env.claim_one(Q).lease, "503").unwrap();
    assert_eq!(env.job(id).next_attempt_at, Some(T0.after(secs(30))));
    assert_eq!(coalesced(&env, sync("y").debounce(secs(60))), id);
    assert_eq!(env.job(id).next_attempt_at, Some(T0.after(secs(60))));
    env.advance(secs(30));
    assert_eq!(env.store.promote_due().unwrap(), 0, "the retry moved out");
    env.advance(secs(30));
    assert_eq!(env.store.promote_due().unwrap(), 1);
    assert_eq!(env.claim_one(Q).job.id, id);
    assert_healthy(&env);
}

// ---------------------------------------------------------------------------------------------
// A. Change-safe unique keys: follow-ups of a running job
// ---------------------------------------------------------------------------------------------

#[test]
fn an_enqueue_while_the_key_runs_becomes_a_follow_up_that_never_runs_beside_it() {
    let env = Env::new();
    let r = env.enqueue(sync("v1"));
    let running = env.claim_one(Q);
    let (f, behind) = follow_up(&env, sync("v2"));
    assert_eq!(behind, r);
    assert_ne!(f, r);
    let job = env.job(f);
    assert_eq!(job.state, JobState::Pending);
    assert_eq!(job.waits_for, Some(r));
    assert_eq!(job.payload, b"v2");
    assert_eq!(env.job(r).waits_for, None);
    assert_nothing_claimable(&env, Q, "the follow-up waits for the run");
    env.advance(secs(10));
    assert_nothing_claimable(&env, Q, "due, and still waiting for the run");
    assert_eq!(waiting_of_key(&env), [f]);
    env.store.complete(running.lease).unwrap();
    assert_healthy(&env);
}

#[test]
fn a_second_enqueue_while_the_key_runs_is_folded_into_the_follow_up() {
    let env = Env::new();
    let r = env.enqueue(sync("v1"));
    let running = env.claim_one(Q);
    let (f, _) = follow_up(&env, sync("v2"));
    assert_eq!(
        env.store.enqueue(sync("v3")).unwrap(),
        Enqueued::FollowUp { job: f, running: r }
    );
    assert_eq!(payload(&env, f), b"v2", "keep-first in the follow-up");
    assert_eq!(
        env.store.enqueue(sync("v4").latest_wins()).unwrap(),
        Enqueued::FollowUp { job: f, running: r }
    );
    assert_eq!(payload(&env, f), b"v4", "latest wins in the follow-up");
    assert_eq!(
        env.store.enqueue(sync(big(b'x')).latest_wins()).unwrap(),
        Enqueued::FollowUp { job: f, running: r }
    );
    assert_eq!(payload(&env, f), big(b'x'), "a large latest payload too");
    assert_healthy(&env);
    assert_eq!(
        env.store.enqueue(sync("v6").latest_wins()).unwrap(),
        Enqueued::FollowUp { job: f, running: r }
    );
    assert_eq!(payload(&env, f), b"v6", "and a small one after it");
    assert_eq!(waiting_of_key(&env), [f], "one job waits, one runs");
    assert_eq!(env.store.list(&Filter::default()).unwrap().len(), 2);
    assert_healthy(&env);
    env.store.complete(running.lease).unwrap();
    let next = env.claim_one(Q);
    assert_eq!((next.job.id, next.job.payload), (f, b"v6".to_vec()));
    assert_healthy(&env);
}

#[test]
fn a_debounced_enqueue_pushes_the_follow_up_out_and_it_keeps_that_time_when_released() {
    let env = Env::new();
    env.enqueue(sync("v1"));
    let running = env.claim_one(Q);
    let (f, _) = follow_up(&env, sync("v2"));
    env.advance(secs(5));
    assert_eq!(follow_up(&env, sync("v3").debounce(secs(20))).0, f);
    assert_eq!(env.job(f).run_at, T0.after(secs(25)));
    env.store.complete(running.lease).unwrap();
    assert_eq!(env.job(f).waits_for, None);
    assert_nothing_claimable(&env, Q, "released, but debounced");
    env.advance(secs(20));
    assert_eq!(env.claim_one(Q).job.id, f);
    assert_healthy(&env);
}

#[test]
fn a_batch_during_a_run_folds_every_enqueue_of_the_key_into_one_follow_up() {
    let env = Env::new();
    let r = env.enqueue(sync("v1"));
    let running = env.claim_one(Q);
    let out = env
        .store
        .enqueue_batch([sync("v2"), sync("v3").latest_wins(), sync("v4")])
        .unwrap();
    let f = out[0].id();
    assert_eq!(
        out,
        [Enqueued::FollowUp { job: f, running: r }; 3],
        "one follow-up covers the batch"
    );
    assert_eq!(payload(&env, f), b"v3");
    assert_eq!(waiting_of_key(&env), [f]);
    env.store.complete(running.lease).unwrap();
    assert_eq!(env.claim_one(Q).job.payload, b"v3");
    assert_healthy(&env);
}

/// R (with `max_attempts`) is claimed, F follows it with payload "v2", then `settle` ends R's
/// run for good: F must be released, claimable at once, and run with its own payload.
fn the_follow_up_is_released_when(max_attempts: u32, settle: impl FnOnce(&Env, Claimed)) {
    let env = Env::new();
    let r = env.enqueue(sync("v1").max_attempts(max_attempts));
    let running = env.claim_one(Q);
    let (f, _) = follow_up(&env, sync("v2"));
    settle(&env, running);
    let ended = env.job(r);
    assert!(ended.is_finished(), "R ended for good: {ended:?}");
    let job = env.job(f);
    assert_eq!((job.state, job.waits_for), (JobState::Pending, None));
    assert_eq!(waiting_of_key(&env), [f]);
    assert_healthy(&env);
    let next = env.claim_one(Q);
    assert_eq!((next.job.id, next.job.payload), (f, b"v2".to_vec()));
    // F now holds the key: the next enqueue follows F.
    assert_eq!(follow_up(&env, sync("v3")).1, f);
    env.store.complete(next.lease).unwrap();
    assert_healthy(&env);
}

#[test]
fn the_follow_up_is_released_when_its_job_completes() {
    the_follow_up_is_released_when(3, |env, c| env.store.complete(c.lease).unwrap());
}

#[test]
fn the_follow_up_is_released_when_its_job_is_discarded() {
    the_follow_up_is_released_when(3, |env, c| env.store.discard(c.lease, "bad").unwrap());
}

#[test]
fn the_follow_up_is_released_when_its_job_fails_its_last_attempt() {
    the_follow_up_is_released_when(1, |env, c| env.store.fail(c.lease, "503").unwrap());
}

#[test]
fn the_follow_up_is_released_when_its_running_job_is_cancelled() {
    the_follow_up_is_released_when(3, |env, c| env.store.cancel(c.job.id).unwrap());
}

#[test]
fn the_follow_up_is_released_when_the_last_attempt_of_its_job_is_recovered() {
    the_follow_up_is_released_when(1, |env, _c| {
        env.advance(TTL);
        assert_eq!(env.store.recover_expired().unwrap(), 1);
    });
}

// ---------------------------------------------------------------------------------------------
// A. Change-safe unique keys: the run goes back to waiting and takes its follow-up in
// ---------------------------------------------------------------------------------------------

/// After R took its follow-up F in: F is gone, R is the one job of the key that waits, and it
/// holds the key (a next enqueue is coalesced into it).
fn assert_folded_into(env: &Env, r: JobId, f: JobId) {
    assert_eq!(env.store.get(f).unwrap(), None, "the follow-up is deleted");
    assert_eq!(waiting_of_key(env), [r], "exactly one job of the key waits");
    assert_eq!(env.job(r).waits_for, None);
    assert_healthy(env);
}

#[test]
fn a_run_that_fails_with_a_retry_takes_its_follow_up_in_keeping_its_own_payload() {
    let env = Env::new();
    let r = env.enqueue(sync("v1"));
    let running = env.claim_one(Q);
    let (f, _) = follow_up(&env, sync("v2"));
    env.store.fail(running.lease, "503").unwrap();
    assert_folded_into(&env, r, f);
    let job = env.job(r);
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(job.next_attempt_at, Some(T0.after(secs(30))), "its backoff");
    assert_eq!(job.payload, b"v1", "keep-first: R's payload");
    assert_eq!(coalesced(&env, sync("v3")), r);
    env.advance(secs(30));
    assert_eq!(env.store.promote_due().unwrap(), 1);
    let retry = env.claim_one(Q);
    assert_eq!(
        (retry.job.id, retry.job.attempts, retry.job.payload),
        (r, 2, b"v1".to_vec())
    );
    assert_healthy(&env);
}

#[test]
fn a_run_that_fails_with_a_retry_takes_the_latest_payload_of_its_follow_up() {
    let env = Env::new();
    let r = env.enqueue(sync("v1").latest_wins());
    let running = env.claim_one(Q);
    let (f, _) = follow_up(&env, sync("v2").latest_wins());
    env.store.fail(running.lease, "503").unwrap();
    assert_folded_into(&env, r, f);
    assert_eq!(payload(&env, r), b"v2");
    assert_eq!(env.job(r).next_attempt_at, Some(T0.after(secs(30))));
    env.advance(secs(30));
    env.store.promote_due().unwrap();
    assert_eq!(env.claim_one(Q).job.payload, b"v2");
    assert_healthy(&env);
}

#[test]
fn a_follow_up_made_latest_by_a_later_enqueue_gives_its_payload_to_the_retry() {
    let env = Env::new();
    let r = env.enqueue(sync("v1"));
    let running = env.claim_one(Q);
    let (f, _) = follow_up(&env, sync("v2"));
    assert_eq!(follow_up(&env, sync("v3").latest_wins()).0, f);
    env.store.fail(running.lease, "503").unwrap();
    assert_folded_into(&env, r, f);
    assert_eq!(payload(&env, r), b"v3");
    assert_healthy(&env);
}

#[test]
fn a_large_latest_payload_and_a_small_one_swap_places_when_a_follow_up_is_taken_in() {
    // A large follow-up payload replaces a small one of the job...
    let env = Env::new();
    let r = env.enqueue(sync("small"));
    let running = env.claim_one(Q);
    let (f, _) = follow_up(&env, sync(big(b'a')).latest_wins());
    env.store.fail(running.lease, "503").unwrap();
    assert_folded_into(&env, r, f);
    assert_eq!(payload(&env, r), big(b'a'));
    // ... and a small one replaces a large one.
    env.advance(secs(30));
    env.store.promote_due().unwrap();
    let running = env.claim_one(Q);
    assert_eq!(running.job.payload, big(b'a'));
    let (f, _) = follow_up(&env, sync("small again").latest_wins());
    env.store.snooze(running.lease, secs(0)).unwrap();
    assert_folded_into(&env, r, f);
    assert_eq!(env.claim_one(Q).job.payload, b"small again");
    assert_healthy(&env);
}

#[test]
fn a_run_that_fails_with_a_retry_waits_for_its_later_debounced_follow_up() {
    let env = Env::new();
    let r = env.enqueue(sync("v1"));
    let running = env.claim_one(Q);
    let (f, _) = follow_up(&env, sync("v2").debounce(secs(120)));
    assert_eq!(env.job(f).run_at, T0.after(secs(120)));
    env.store.fail(running.lease, "503").unwrap();
    assert_folded_into(&env, r, f);
    assert_eq!(
        env.job(r).next_attempt_at,
        Some(T0.after(secs(120))),
        "the later of its backoff (30 s) and the follow-up's run_at"
    );
    env.advance(secs(30));
    assert_eq!(env.store.promote_due().unwrap(), 0);
    assert_nothing_claimable(&env, Q, "the retry waits for the debounce");
    env.advance(secs(90));
    assert_eq!(env.store.promote_due().unwrap(), 1);
    assert_eq!(env.claim_one(Q).job.id, r);
    assert_healthy(&env);
}

#[test]
fn a_run_that_snoozes_takes_its_follow_up_in() {
    let env = Env::new();
    let r = env.enqueue(sync("v1"));
    let running = env.claim_one(Q);
    let (f, _) = follow_up(&env, sync("v2").latest_wins());
    env.store.snooze(running.lease, secs(60)).unwrap();
    assert_folded_into(&env, r, f);
    let job = env.job(r);
    assert_eq!(
        (job.state, job.attempts, job.run_at),
        (JobState::Pending, 0, T0.after(secs(60)))
    );
    assert_eq!(job.payload, b"v2");
    assert_eq!(coalesced(&env, sync("v3")), r);
    env.advance(secs(60));
    let again = env.claim_one(Q);
    assert_eq!((again.job.id, again.job.payload), (r, b"v2".to_vec()));
    assert_healthy(&env);
}

#[test]
fn a_run_that_snoozes_in_a_user_transaction_takes_its_follow_up_in() {
    let env = Env::new();
    let r = env.enqueue(sync("v1"));
    let running = env.claim_one(Q);
    let (f, _) = follow_up(&env, sync("v2").latest_wins());
    env.store
        .write(|tx| tx.snooze(running.lease, secs(10)))
        .unwrap();
    assert_folded_into(&env, r, f);
    assert_eq!(payload(&env, r), b"v2");
    assert_eq!(env.job(r).run_at, T0.after(secs(10)));
    assert_healthy(&env);
}

#[test]
fn a_run_given_back_at_shutdown_takes_its_follow_up_in_and_runs_again_at_once() {
    // A give-back at shutdown is a snooze of 0.
    let env = Env::new();
    let r = env.enqueue(sync("v1"));
    let running = env.claim_one(Q);
    let (f, _) = follow_up(&env, sync("v2"));
    env.store.snooze(running.lease, secs(0)).unwrap();
    assert_folded_into(&env, r, f);
    let again = env.claim_one(Q);
    assert_eq!(
        (again.job.id, again.job.attempts, again.job.payload),
        (r, 1, b"v1".to_vec())
    );
    assert_healthy(&env);
}

#[test]
fn a_run_whose_lease_expires_takes_its_follow_up_in_when_recovered() {
    let env = Env::new();
    let r = env.enqueue(sync("v1"));
    let _lost = env.claim_one(Q);
    let (f, _) = follow_up(&env, sync("v2").latest_wins());
    env.advance(TTL);
    assert_eq!(env.store.recover_expired().unwrap(), 1);
    assert_folded_into(&env, r, f);
    let job = env.job(r);
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(job.last_error.as_deref(), Some("lease expired"));
    assert_eq!(job.next_attempt_at, Some(T0.after(TTL + secs(30))));
    assert_eq!(job.payload, b"v2");
    env.advance(secs(30));
    env.store.promote_due().unwrap();
    assert_eq!(env.claim_one(Q).job.payload, b"v2");
    assert_healthy(&env);
}

#[test]
fn a_follow_up_still_waits_for_its_run_after_a_reopen() {
    let env = Env::new();
    let r = env.enqueue(sync("v1"));
    let _lost = env.claim_one(Q);
    let (f, _) = follow_up(&env, sync("v2").latest_wins());
    let env = env.reopen();
    let job = env.job(f);
    assert_eq!((job.state, job.waits_for), (JobState::Pending, Some(r)));
    assert_nothing_claimable(&env, Q, "the follow-up waits for the run");
    assert_eq!(follow_up(&env, sync("v3").latest_wins()), (f, r));
    env.advance(TTL);
    assert_eq!(env.store.recover_expired().unwrap(), 1);
    assert_folded_into(&env, r, f);
    assert_eq!(payload(&env, r), b"v3");
    assert_healthy(&env);
}

// ---------------------------------------------------------------------------------------------
// A. Change-safe unique keys: cancelling the follow-up, strict keys, batches
// ---------------------------------------------------------------------------------------------

#[test]
fn cancelling_the_follow_up_gives_the_key_back_to_the_running_job() {
    let env = Env::new();
    let r = env.enqueue(sync("v1"));
    let running = env.claim_one(Q);
    let (f, _) = follow_up(&env, sync("v2"));
    env.store.cancel(f).unwrap();
    let cancelled = env.job(f);
    assert_eq!(cancelled.state, JobState::Failed);
    assert_eq!(cancelled.waits_for, None);
    assert_healthy(&env);
    // The next enqueue follows the run again, never runs beside it.
    let (f2, behind) = follow_up(&env, sync("v3"));
    assert_eq!(behind, r);
    assert_ne!(f2, f);
    assert_nothing_claimable(&env, Q, "the new follow-up waits for the run");
    env.store.complete(running.lease).unwrap();
    let next = env.claim_one(Q);
    assert_eq!((next.job.id, next.job.payload), (f2, b"v3".to_vec()));
    assert_healthy(&env);
}

#[test]
fn a_large_follow_up_payload_that_does_not_win_is_deleted_with_the_follow_up() {
    let env = Env::new();
    let r = env.enqueue(sync("v1"));
    let running = env.claim_one(Q);
    let (f, _) = follow_up(&env, sync(big(b'f')));
    env.store.fail(running.lease, "503").unwrap();
    assert_folded_into(&env, r, f);
    assert_eq!(payload(&env, r), b"v1");
}

#[test]
fn after_its_follow_up_is_cancelled_a_run_that_fails_retries_alone_holding_the_key() {
    let env = Env::new();
    let r = env.enqueue(sync("v1"));
    let running = env.claim_one(Q);
    let (f, _) = follow_up(&env, sync("v2"));
    env.store.cancel(f).unwrap();
    env.store.fail(running.lease, "503").unwrap();
    assert_eq!(
        env.job(f).state,
        JobState::Failed,
        "the cancelled follow-up stays"
    );
    assert_eq!(waiting_of_key(&env), [r]);
    assert_eq!(coalesced(&env, sync("v3")), r);
    assert_healthy(&env);
}

#[test]
fn a_follow_up_enqueued_in_a_rolled_back_transaction_leaves_the_key_with_the_run() {
    let env = Env::new();
    let r = env.enqueue(sync("v1"));
    let running = env.claim_one(Q);
    let result: Result<(), Error> = env.store.write(|tx| {
        assert!(matches!(
            tx.enqueue(sync("v2"))?,
            Enqueued::FollowUp { running, .. } if running == r
        ));
        Err(Error::InvalidInput {
            what: "test",
            reason: "roll back".into(),
        })
    });
    assert!(result.is_err());
    assert_eq!(env.store.list(&Filter::default()).unwrap().len(), 1);
    assert_healthy(&env);
    let (f, behind) = follow_up(&env, sync("v3"));
    assert_eq!(behind, r);
    env.store.complete(running.lease).unwrap();
    assert_eq!(env.claim_one(Q).job.id, f);
    assert_healthy(&env);
}

#[test]
fn a_released_follow_up_takes_its_place_in_an_ordered_line_by_its_id() {
    let env = Env::new();
    let r = env.enqueue(sync("v1").concurrency_key("c").ordered());
    let running = env.claim_one(Q);
    assert_eq!(running.job.id, r);
    let x = env.enqueue(ordered("x", "c"));
    let (f, _) = follow_up(&env, sync("v2").concurrency_key("c").ordered());
    assert!(x < f);
    assert_nothing_claimable(&env, Q, "x waits in line, f waits for the run");
    env.store.complete(running.lease).unwrap();
    assert_healthy(&env);
    let next = env.claim_one(Q);
    assert_eq!(next.job.id, x, "x was in line before the follow-up");
    assert_nothing_claimable(&env, Q, "the follow-up waits behind x");
    env.store.complete(next.lease).unwrap();
    assert_eq!(env.claim_ids(Q, 10), [f]);
    assert_healthy(&env);
}

#[test]
fn a_released_follow_up_still_runs_one_at_a_time_with_its_concurrency_key() {
    let env = Env::new();
    env.enqueue(sync("v1").concurrency_key("c"));
    let running = env.claim_one(Q);
    let y = env.enqueue(NewJob::new(Q, "y").concurrency_key("c"));
    let (f, _) = follow_up(&env, sync("v2").concurrency_key("c"));
    assert_nothing_claimable(&env, Q, "y blocked by the key, f waits for the run");
    env.store.complete(running.lease).unwrap();
    let mut claimed = env.store.claim(Q, 10).unwrap();
    let ids: Vec<JobId> = claimed.iter().map(|c| c.job.id).collect();
    assert_eq!(ids, [y], "one job of the key at a time");
    env.store.complete(claimed.remove(0).lease).unwrap();
    assert_eq!(env.claim_ids(Q, 10), [f]);
    assert_healthy(&env);
}

#[test]
fn a_strict_unique_key_refuses_enqueues_while_pending_and_drops_the_ones_during_the_run() {
    let env = Env::new();
    let strict = |p: &str| NewJob::new(Q, p).unique_key_strict(KEY);
    let r = env.enqueue(strict("v1"));
    assert_eq!(
        env.store.enqueue(strict("v2")).unwrap(),
        Enqueued::Duplicate(r)
    );
    let running = env.claim_one(Q);
    assert_eq!(
        env.store.enqueue(strict("v3")).unwrap(),
        Enqueued::Duplicate(r)
    );
    assert_eq!(env.store.list(&Filter::default()).unwrap().len(), 1);
    env.store.complete(running.lease).unwrap();
    // The documented trade-off: the enqueue during the run is lost to it.
    assert_nothing_claimable(&env, Q, "no follow-up for a strict key");
    assert_eq!(env.store.list(&Filter::default()).unwrap().len(), 1);
    assert_healthy(&env);
}

#[test]
fn a_key_repeated_in_a_batch_is_created_then_coalesced_keeping_the_first_payload() {
    let env = Env::new();
    let out = env
        .store
        .enqueue_batch([sync("1"), NewJob::new(Q, "other"), sync("2")])
        .unwrap();
    let (a, other) = (out[0].id(), out[1].id());
    assert_eq!(
        out,
        [
            Enqueued::Created(a),
            Enqueued::Created(other),
            Enqueued::Coalesced(a)
        ]
    );
    assert_eq!(payload(&env, a), b"1");
    assert_eq!(env.store.list(&Filter::default()).unwrap().len(), 2);
    assert_healthy(&env);
}

#[test]
fn a_key_repeated_in_a_batch_with_latest_wins_takes_the_later_payload() {
    let env = Env::new();
    let out = env
        .store
        .enqueue_batch([
            sync("1"),
            NewJob::new(Q, "other"),
            sync("2").latest_wins(),
            sync("3"),
            NewJob::new(Q, "more"),
        ])
        .unwrap();
    let a = out[0].id();
    assert_eq!(out[0], Enqueued::Created(a));
    assert!(matches!(out[1], Enqueued::Created(_)));
    assert_eq!(out[2], Enqueued::Coalesced(a));
    assert_eq!(out[3], Enqueued::Coalesced(a));
    assert!(matches!(out[4], Enqueued::Created(_)));
    assert_eq!(
        payload(&env, a),
        b"2",
        "the latest_wins enqueue; the last kept it"
    );
    assert_healthy(&env);
    let claimed: Vec<Vec<u8>> = env
        .store
        .claim(Q, 10)
        .unwrap()
        .into_iter()
        .map(|c| c.job.payload)
        .collect();
    assert_eq!(
        claimed,
        [b"2".to_vec(), b"other".to_vec(), b"more".to_vec()]
    );
    assert_healthy(&env);
}

#[test]
fn a_key_repeated_in_a_batch_with_debounce_pushes_the_new_job_out() {
    let env = Env::new();
    let out = env
        .store
        .enqueue_batch([
            sync("1").debounce(secs(10)),
            sync("2").debounce(secs(20)),
            sync("3").debounce(secs(5)),
        ])
        .unwrap();
    let a = out[0].id();
    assert_eq!(
        out,
        [
            Enqueued::Created(a),
            Enqueued::Coalesced(a),
            Enqueued::Coalesced(a)
        ]
    );
    assert_eq!(env.job(a).run_at, T0.after(secs(20)));
    assert_eq!(payload(&env, a), b"1");
    assert_healthy(&env);
}

#[test]
fn latest_wins_in_a_batch_moves_payloads_between_inline_and_apart() {
    let env = Env::new();
    let out = env
        .store
        .enqueue_batch([
            NewJob::new(Q, "before"),
            NewJob::new(Q, "small").unique_key("a"),
            NewJob::new(Q, big(b'a')).unique_key("b"),
            NewJob::new(Q, big(b'A')).unique_key("a").latest_wins(),
            NewJob::new(Q, "tiny").unique_key("b").latest_wins(),
            NewJob::new(Q, "after"),
        ])
        .unwrap();
    let (a, b) = (out[1].id(), out[2].id());
    assert_eq!(out[3], Enqueued::Coalesced(a));
    assert_eq!(out[4], Enqueued::Coalesced(b));
    assert_eq!(payload(&env, a), big(b'A'));
    assert_eq!(payload(&env, b), b"tiny");
    assert_healthy(&env);
    // Into a job of an earlier batch, still not indexed.
    assert_eq!(
        coalesced(
            &env,
            NewJob::new(Q, "small again")
                .unique_key("a")
                .latest_wins()
                .debounce(secs(1))
        ),
        a
    );
    assert_eq!(payload(&env, a), b"small again");
    assert_healthy(&env);
    env.advance(secs(1));
    let payloads: Vec<Vec<u8>> = env
        .store
        .claim(Q, 10)
        .unwrap()
        .into_iter()
        .map(|c| c.job.payload)
        .collect();
    assert_eq!(
        payloads,
        [
            b"before".to_vec(),
            b"tiny".to_vec(),
            b"after".to_vec(),
            b"small again".to_vec()
        ]
    );
    assert_healthy(&env);
}

#[test]
fn a_file_edited_while_its_upload_runs_is_uploaded_again_with_the_new_content() {
    let env = Env::new();
    let upload = |content: &str| {
        NewJob::new("uploads", content)
            .unique_key("a.txt")
            .latest_wins()
    };
    let first = env.enqueue(upload("v1"));
    let run = env.claim_one("uploads");
    assert_eq!(run.job.payload, b"v1", "the run read v1");
    // The file is edited while the upload runs.
    let (again, running) = match env.store.enqueue(upload("v2")).unwrap() {
        Enqueued::FollowUp { job, running } => (job, running),
        other => panic!("expected a follow-up, got {other:?}"),
    };
    assert_eq!(running, first);
    env.store.complete(run.lease).unwrap();
    let next = env.claim_one("uploads");
    assert_eq!((next.job.id, next.job.payload), (again, b"v2".to_vec()));
    env.store.complete(next.lease).unwrap();
    assert_nothing_claimable(&env, "uploads", "both versions uploaded");
    assert_healthy(&env);
}

// ---------------------------------------------------------------------------------------------
// B. Ordered concurrency keys
// ---------------------------------------------------------------------------------------------

#[test]
fn the_jobs_of_an_ordered_key_start_in_id_order_whatever_their_priority_and_run_at() {
    let env = Env::new();
    let first = env.enqueue(ordered("1", "k"));
    let second = env.enqueue(ordered("2", "k").priority(5).run_at(T0.before(secs(10))));
    let third = env.enqueue(ordered("3", "k").priority(10).run_at(T0.before(secs(20))));
    for (id, name) in [(first, "first"), (second, "second"), (third, "third")] {
        let mut claimed = env.store.claim(Q, 10).unwrap();
        let ids: Vec<JobId> = claimed.iter().map(|c| c.job.id).collect();
        assert_eq!(ids, [id], "the {name} job alone");
        env.store.complete(claimed.remove(0).lease).unwrap();
        assert_healthy(&env);
    }
    assert_nothing_claimable(&env, Q, "all ran");
    assert_healthy(&env);
}

#[test]
fn the_jobs_of_an_ordered_key_enqueued_in_one_batch_start_in_id_order() {
    let env = Env::new();
    let ids: Vec<JobId> = env
        .store
        .enqueue_batch((0..5).map(|i| ordered(&format!("{i}"), "k").priority(i)))
        .unwrap()
        .into_iter()
        .map(Enqueued::id)
        .collect();
    for &id in &ids {
        let mut claimed = env.store.claim(Q, 10).unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].job.id, id);
        env.store.complete(claimed.remove(0).lease).unwrap();
    }
    assert_healthy(&env);
}

#[test]
fn the_first_job_of_an_ordered_key_holds_the_line_while_it_waits_for_a_retry() {
    let env = Env::new();
    let create = env.enqueue(ordered("create f", "f"));
    env.store.fail(env.claim_one(Q).lease, "503").unwrap();
    let rename = env.enqueue(ordered("rename f", "f"));
    assert_nothing_claimable(&env, Q, "rename waits behind create's retry");
    env.advance(secs(30));
    assert_nothing_claimable(&env, Q, "rename is due, create's retry not yet promoted");
    assert_eq!(env.store.promote_due().unwrap(), 1);
    let retry = env.claim_one(Q);
    assert_eq!(retry.job.id, create);
    assert_nothing_claimable(&env, Q, "rename waits while create runs");
    env.store.complete(retry.lease).unwrap();
    assert_eq!(env.claim_ids(Q, 10), [rename]);
    assert_healthy(&env);
}

#[test]
fn an_unordered_concurrency_key_lets_a_later_job_run_before_a_retry() {
    // The contrast to the test above, as measured today: without `ordered`, the job behind a
    // retry runs first.
    let env = Env::new();
    let create = env.enqueue(NewJob::new(Q, "create f").concurrency_key("f"));
    env.store.fail(env.claim_one(Q).lease, "503").unwrap();
    let rename = env.enqueue(NewJob::new(Q, "rename f").concurrency_key("f"));
    let run = env.claim_one(Q);
    assert_eq!(run.job.id, rename, "rename runs before create's retry");
    env.store.complete(run.lease).unwrap();
    env.advance(secs(30));
    env.store.promote_due().unwrap();
    assert_eq!(env.claim_ids(Q, 10), [create]);
    assert_healthy(&env);
}

#[test]
fn the_first_job_of_an_ordered_key_holds_the_line_while_snoozed() {
    let env = Env::new();
    let first = env.enqueue(ordered("1", "k"));
    env.store.snooze(env.claim_one(Q).lease, secs(60)).unwrap();
    let second = env.enqueue(ordered("2", "k"));
    assert_nothing_claimable(&env, Q, "the second waits behind the snoozed first");
    env.advance(secs(59));
    assert_nothing_claimable(&env, Q, "still snoozed");
    env.advance(secs(1));
    let again = env.claim_one(Q);
    assert_eq!(again.job.id, first);
    env.store.complete(again.lease).unwrap();
    assert_eq!(env.claim_ids(Q, 10), [second]);
    assert_healthy(&env);
}

#[test]
fn the_first_job_of_an_ordered_key_holds_the_line_until_its_delayed_run_at() {
    let env = Env::new();
    let first = env.enqueue(ordered("1", "k").delay(secs(60)));
    let second = env.enqueue(ordered("2", "k"));
    assert_nothing_claimable(&env, Q, "the second is due but second in line");
    env.advance(secs(60));
    let run = env.claim_one(Q);
    assert_eq!(run.job.id, first);
    assert_nothing_claimable(&env, Q, "the second waits for the first's run");
    env.store.complete(run.lease).unwrap();
    assert_eq!(env.claim_ids(Q, 10), [second]);
    assert_healthy(&env);
}

#[test]
fn the_first_job_of_an_ordered_key_holds_the_line_after_its_lease_expires() {
    let env = Env::new();
    let first = env.enqueue(ordered("1", "k"));
    let _lost = env.claim_one(Q);
    let second = env.enqueue(ordered("2", "k"));
    env.advance(TTL);
    assert_eq!(env.store.recover_expired().unwrap(), 1);
    assert_nothing_claimable(&env, Q, "the first waits for its retry, holding the line");
    env.advance(secs(30));
    env.store.promote_due().unwrap();
    let retry = env.claim_one(Q);
    assert_eq!(retry.job.id, first);
    env.store.complete(retry.lease).unwrap();
    assert_eq!(env.claim_ids(Q, 10), [second]);
    assert_healthy(&env);
}

#[test]
fn the_first_job_of_an_ordered_key_holds_the_line_across_a_reopen() {
    let env = Env::new();
    let first = env.enqueue(ordered("1", "k"));
    env.store.fail(env.claim_one(Q).lease, "503").unwrap();
    let second = env.enqueue(ordered("2", "k"));
    let env = env.reopen();
    assert!(env.job(first).ordered && env.job(second).ordered);
    assert_nothing_claimable(&env, Q, "the retry holds the line after a reopen");
    env.advance(secs(30));
    env.store.promote_due().unwrap();
    let retry = env.claim_one(Q);
    assert_eq!(retry.job.id, first);
    env.store.complete(retry.lease).unwrap();
    assert_eq!(env.claim_ids(Q, 10), [second]);
    assert_healthy(&env);
}

/// `first` and a second job share the ordered key "k"; `settle` ends the first for good (it
/// gets the first's id): the second must run next.
fn the_line_passes_on_when(first: NewJob, settle: impl FnOnce(&Env, JobId)) {
    let env = Env::new();
    let id = env.enqueue(first);
    let second = env.enqueue(ordered("2", "k"));
    settle(&env, id);
    assert!(env.job(id).is_finished());
    assert_healthy(&env);
    assert_eq!(env.claim_ids(Q, 10), [second]);
    assert_healthy(&env);
}

#[test]
fn an_ordered_line_passes_on_when_its_first_job_fails_its_last_attempt() {
    the_line_passes_on_when(ordered("1", "k").max_attempts(1), |env, _| {
        env.store.fail(env.claim_one(Q).lease, "boom").unwrap();
    });
}

#[test]
fn an_ordered_line_passes_on_when_its_first_job_is_discarded() {
    the_line_passes_on_when(ordered("1", "k"), |env, _| {
        env.store.discard(env.claim_one(Q).lease, "bad").unwrap();
    });
}

#[test]
fn an_ordered_line_passes_on_when_its_running_first_job_is_cancelled() {
    the_line_passes_on_when(ordered("1", "k"), |env, id| {
        let _run = env.claim_one(Q);
        env.store.cancel(id).unwrap();
    });
}

#[test]
fn an_ordered_line_passes_on_when_its_first_job_is_cancelled_while_waiting_for_a_retry() {
    the_line_passes_on_when(ordered("1", "k"), |env, id| {
        env.store.fail(env.claim_one(Q).lease, "503").unwrap();
        assert_nothing_claimable(env, Q, "the line is held by the retry");
        env.store.cancel(id).unwrap();
    });
}

#[test]
fn an_ordered_line_passes_on_when_its_delayed_first_job_is_cancelled() {
    the_line_passes_on_when(ordered("1", "k").delay(secs(3_600)), |env, id| {
        assert_nothing_claimable(env, Q, "the line is held by the delayed first job");
        env.store.cancel(id).unwrap();
    });
}

#[test]
fn an_ordered_line_passes_on_when_the_last_attempt_of_its_first_job_is_recovered() {
    the_line_passes_on_when(ordered("1", "k").max_attempts(1), |env, _| {
        let _lost = env.claim_one(Q);
        env.advance(TTL);
        assert_eq!(env.store.recover_expired().unwrap(), 1);
    });
}

#[test]
fn cancelling_a_job_waiting_in_an_ordered_line_lets_the_one_behind_it_keep_its_place() {
    let env = Env::new();
    let first = env.enqueue(ordered("1", "k"));
    env.store.fail(env.claim_one(Q).lease, "503").unwrap();
    let second = env.enqueue(ordered("2", "k"));
    let third = env.enqueue(ordered("3", "k"));
    env.store.cancel(second).unwrap();
    assert_healthy(&env);
    assert_nothing_claimable(&env, Q, "the first still holds the line");
    env.advance(secs(30));
    env.store.promote_due().unwrap();
    let retry = env.claim_one(Q);
    assert_eq!(retry.job.id, first);
    env.store.complete(retry.lease).unwrap();
    assert_eq!(env.claim_ids(Q, 10), [third]);
    assert_healthy(&env);
}

#[test]
fn an_ordered_job_retried_by_hand_waits_behind_the_job_holding_the_line() {
    let env = Env::new();
    let first = env.enqueue(ordered("1", "k").max_attempts(1));
    env.store.fail(env.claim_one(Q).lease, "boom").unwrap();
    let second = env.enqueue(ordered("2", "k"));
    let third = env.enqueue(ordered("3", "k"));
    let run = env.claim_one(Q);
    assert_eq!(run.job.id, second);
    env.store.retry(first).unwrap();
    assert_healthy(&env);
    assert_nothing_claimable(&env, Q, "second holds the line");
    env.store.complete(run.lease).unwrap();
    assert_eq!(
        env.claim_ids(Q, 10),
        [first],
        "first has the lowest id of those waiting"
    );
    assert!(env.job(third).state == JobState::Pending);
    assert_healthy(&env);
}

#[test]
fn a_blocked_ordered_key_never_holds_up_other_keys_or_jobs_without_one() {
    let env = Env::new();
    let first = env.enqueue(ordered("first", "k"));
    env.store.fail(env.claim_one(Q).lease, "503").unwrap();
    let behind: Vec<JobId> = env
        .store
        .enqueue_batch((0..1_000).map(|i| ordered(&format!("{i}"), "k").priority(100)))
        .unwrap()
        .into_iter()
        .map(Enqueued::id)
        .collect();
    let other = env.enqueue(ordered("other", "other"));
    let free = env.enqueue(NewJob::new(Q, "free"));
    assert_eq!(env.claim_ids(Q, 10), [other, free], "claimed at once");
    assert_healthy(&env);
    // The line of "k" is still in order afterwards.
    env.advance(secs(30));
    env.store.promote_due().unwrap();
    let retry = env.claim_one(Q);
    assert_eq!(retry.job.id, first);
    env.store.complete(retry.lease).unwrap();
    assert_eq!(env.claim_ids(Q, 10), [behind[0]]);
    assert_healthy(&env);
}

#[test]
fn ordered_without_a_concurrency_key_is_refused_and_writes_nothing() {
    let env = Env::new();
    match env.store.enqueue(NewJob::new(Q, "x").ordered()) {
        Err(Error::InvalidInput { what, .. }) => assert_eq!(what, "ordered"),
        other => panic!("expected InvalidInput(ordered), got {other:?}"),
    }
    match env
        .store
        .enqueue_batch([NewJob::new(Q, "ok"), NewJob::new(Q, "x").ordered()])
    {
        Err(Error::InvalidInput { what, .. }) => assert_eq!(what, "ordered"),
        other => panic!("expected InvalidInput(ordered), got {other:?}"),
    }
    let in_tx: Result<(), Error> = env.store.write(|tx| {
        tx.enqueue(NewJob::new(Q, "x").ordered())?;
        Ok(())
    });
    assert!(
        matches!(
            in_tx,
            Err(Error::InvalidInput {
                what: "ordered",
                ..
            })
        ),
        "{in_tx:?}"
    );
    assert_eq!(env.store.list(&Filter::default()).unwrap(), []);
    assert_healthy(&env);
}

// ---------------------------------------------------------------------------------------------
// C. Settling a job in the user's transaction
// ---------------------------------------------------------------------------------------------

#[test]
fn a_user_row_and_a_complete_commit_together() {
    let env = Env::new();
    let id = env.enqueue(NewJob::new(Q, "pull a.txt"));
    let c = env.claim_one(Q);
    env.store
        .write(|tx| {
            tx.open_table(ROWS)?.insert("a.txt", 7)?;
            tx.complete(c.lease)?;
            Ok::<_, Error>(())
        })
        .unwrap();
    assert_eq!(row(&env, "a.txt"), Some(7));
    let job = env.job(id);
    assert_eq!(job.state, JobState::Succeeded);
    assert_eq!(job.finished_at, Some(T0));
    assert_healthy(&env);
}

#[test]
fn a_complete_in_a_user_transaction_releases_the_follow_up() {
    let env = Env::new();
    let r = env.enqueue(sync("v1"));
    let running = env.claim_one(Q);
    let (f, _) = follow_up(&env, sync("v2"));
    env.store
        .write(|tx| {
            tx.open_table(ROWS)?.insert("k", 1)?;
            tx.complete(running.lease)
        })
        .unwrap();
    assert_eq!(env.job(r).state, JobState::Succeeded);
    assert_eq!(env.job(f).waits_for, None);
    assert_eq!(env.claim_one(Q).job.id, f);
    assert_healthy(&env);
}

#[test]
fn a_complete_with_a_lease_lost_to_recovery_rolls_back_the_users_rows() {
    let env = Env::new();
    let id = env.enqueue(NewJob::new(Q, "pull a.txt"));
    let stale = env.claim_one(Q);
    env.advance(TTL);
    assert_eq!(env.store.recover_expired().unwrap(), 1);
    env.advance(secs(30));
    assert_eq!(env.store.promote_due().unwrap(), 1);
    let fresh = env.claim_one(Q);
    let before = env.job(id);
    let mut refused = None;
    let result: Result<(), Error> = env.store.write(|tx| {
        tx.open_table(ROWS)?.insert("a.txt", 1)?;
        // The closure ignores the refusal and returns Ok.
        refused = Some(tx.complete(stale.lease));
        tx.open_table(ROWS)?.insert("b.txt", 2)?;
        Ok(())
    });
    assert_lease_lost(refused.unwrap(), id);
    assert_lease_lost(result, id);
    assert_eq!(row(&env, "a.txt"), None, "rolled back");
    assert_eq!(row(&env, "b.txt"), None, "rolled back");
    assert_eq!(env.job(id), before, "the job is unchanged");
    assert_healthy(&env);
    // The fresh lease still settles.
    env.store.complete(fresh.lease).unwrap();
    assert_healthy(&env);
}

#[test]
fn a_complete_with_a_lease_lost_to_cancel_rolls_back_the_users_rows() {
    let env = Env::new();
    let id = env.enqueue(NewJob::new(Q, "pull a.txt"));
    let c = env.claim_one(Q);
    env.store.cancel(id).unwrap();
    let before = env.job(id);
    let result: Result<(), Error> = env.store.write(|tx| {
        tx.open_table(ROWS)?.insert("a.txt", 1)?;
        let _ignored = tx.complete(c.lease);
        Ok(())
    });
    assert_lease_lost(result, id);
    assert_eq!(row(&env, "a.txt"), None);
    assert_eq!(env.job(id), before);
    assert_eq!(env.job(id).last_error.as_deref(), Some("cancelled"));
    assert_healthy(&env);
}

#[test]
fn a_refused_settle_rolls_back_the_other_settles_of_its_transaction() {
    let env = Env::new();
    let a = env.enqueue(NewJob::new(Q, "a"));
    let b = env.enqueue(NewJob::new(Q, "b"));
    let mut claimed = env.store.claim(Q, 2).unwrap();
    let (cb, ca) = (claimed.pop().unwrap(), claimed.pop().unwrap());
    env.store.cancel(b).unwrap();
    let result: Result<(), Error> = env.store.write(|tx| {
        tx.complete(ca.lease)?;
        let _ignored = tx.complete(cb.lease);
        tx.enqueue(NewJob::new(Q, "c"))?;
        Ok(())
    });
    assert_lease_lost(result, b);
    assert_eq!(
        env.job(a).state,
        JobState::InProgress,
        "a's complete rolled back"
    );
    assert_eq!(env.store.list(&Filter::default()).unwrap().len(), 2, "no c");
    assert_healthy(&env);
}

#[test]
fn a_user_transaction_that_fails_after_completing_commits_nothing() {
    let env = Env::new();
    let id = env.enqueue(NewJob::new(Q, "pull a.txt"));
    let c = env.claim_one(Q);
    let before = env.job(id);
    let result: Result<(), Error> = env.store.write(|tx| {
        tx.open_table(ROWS)?.insert("a.txt", 1)?;
        tx.complete(c.lease)?;
        Err(Error::InvalidInput {
            what: "test",
            reason: "roll back".into(),
        })
    });
    assert!(
        matches!(result, Err(Error::InvalidInput { what: "test", .. })),
        "{result:?}"
    );
    assert_eq!(row(&env, "a.txt"), None);
    let job = env.job(id);
    assert_eq!(job.state, JobState::InProgress);
    assert_eq!(job, before);
    assert_healthy(&env);
}

/// Claims twin jobs, settles one with the store's own call and the other with `in_tx` inside
/// a user transaction, and asserts both came out the same: returns the second.
fn a_settle_in_a_user_transaction_matches_the_stores(
    by_store: impl FnOnce(&Env, Claimed),
    in_tx: impl FnOnce(&mut quern::WriteTx<'_>, Claimed) -> quern::Result<()>,
) -> (Env, Job) {
    let env = Env::new();
    let a = env.enqueue(NewJob::new(Q, "a"));
    let b = env.enqueue(NewJob::new(Q, "b"));
    let mut claimed = env.store.claim(Q, 2).unwrap();
    let (cb, ca) = (claimed.pop().unwrap(), claimed.pop().unwrap());
    assert_eq!((ca.job.id, cb.job.id), (a, b));
    env.advance(secs(1));
    by_store(&env, ca);
    env.store
        .write(|tx| {
            tx.open_table(ROWS)?.insert("b", 1)?;
            in_tx(tx, cb)
        })
        .unwrap();
    assert_eq!(row(&env, "b"), Some(1));
    let (ja, jb) = (env.job(a), env.job(b));
    assert_eq!(outcome(&jb), outcome(&ja));
    (env, jb)
}

#[test]
fn a_fail_in_a_user_transaction_schedules_a_retry_as_store_fail_does() {
    let (env, job) = a_settle_in_a_user_transaction_matches_the_stores(
        |env, c| env.store.fail(c.lease, "503").unwrap(),
        |tx, c| tx.fail(c.lease, "503"),
    );
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(job.attempts, 1);
    assert_eq!(job.next_attempt_at, Some(T0.after(secs(31))));
    assert_eq!(job.last_error.as_deref(), Some("503"));
    assert_healthy(&env);
}

#[test]
fn a_snooze_in_a_user_transaction_gives_the_attempt_back_as_store_snooze_does() {
    let (env, job) = a_settle_in_a_user_transaction_matches_the_stores(
        |env, c| env.store.snooze(c.lease, secs(60)).unwrap(),
        |tx, c| tx.snooze(c.lease, secs(60)),
    );
    assert_eq!(
        (job.state, job.attempts, job.run_at),
        (JobState::Pending, 0, T0.after(secs(61)))
    );
    assert_healthy(&env);
}

#[test]
fn a_discard_in_a_user_transaction_fails_the_job_for_good_as_store_discard_does() {
    let (env, job) = a_settle_in_a_user_transaction_matches_the_stores(
        |env, c| env.store.discard(c.lease, "bad").unwrap(),
        |tx, c| tx.discard(c.lease, "bad"),
    );
    assert!(job.is_finished());
    assert_eq!(job.state, JobState::Failed);
    assert_healthy(&env);
}

#[test]
fn a_retry_scheduled_in_a_user_transaction_runs_again() {
    let env = Env::new();
    let id = env.enqueue(NewJob::new(Q, "x"));
    let c = env.claim_one(Q);
    env.store.write(|tx| tx.fail(c.lease, "503")).unwrap();
    assert_nothing_claimable(&env, Q, "the retry is 30 s out");
    env.advance(secs(30));
    assert_eq!(env.store.promote_due().unwrap(), 1);
    let again = env.claim_one(Q);
    assert_eq!((again.job.id, again.job.attempts), (id, 2));
    assert_healthy(&env);
}
