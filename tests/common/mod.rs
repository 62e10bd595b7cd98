//! Helpers shared by the store tests: a store on a temporary file whose time moves only through
//! a `ManualClock`, with a jitter-free backoff so that retry times can be asserted exactly.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use quern::{
    Backoff, Claimed, Clock, Enqueued, Error, Filter, Jitter, Job, JobId, JobState, ManualClock,
    NewJob, Store, StoreBuilder, Timestamp,
};

/// The lease of every claim in these tests.
pub const TTL: Duration = Duration::from_secs(30);

/// Where every test clock starts: a round time far from the epoch.
pub const T0: Timestamp = Timestamp(1_704_067_200_000);

/// The default schedule without jitter: 30 s doubling to a 10 min cap.
pub fn schedule() -> Backoff {
    Backoff::exponential(secs(30), 2.0, secs(600)).jitter(Jitter::None)
}

pub fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

pub fn ms(m: u64) -> Duration {
    Duration::from_millis(m)
}

/// A store on a file of its own, with the clock that drives it.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub clock: ManualClock,
    pub store: Store,
}

impl Env {
    pub fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0);
        let store = open(&dir, &clock);
        Env { dir, clock, store }
    }

    /// A store in the shared mode whatever [`mode`] says: for tests of read-only handles
    /// alongside the writer, which the exclusive mode refuses by design.
    pub fn shared() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0);
        let store = builder(&clock)
            .exclusive(false)
            .verify_on_open(true)
            .open(db(&dir))
            .unwrap();
        Env { dir, clock, store }
    }

    /// Drops the store (as a crash or a restart would, without settling anything) and opens
    /// the same file again with the same clock.
    pub fn reopen(self) -> Env {
        let Env { dir, clock, store } = self;
        drop(store);
        let store = open(&dir, &clock);
        Env { dir, clock, store }
    }

    pub fn path(&self) -> std::path::PathBuf {
        db(&self.dir)
    }

    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    pub fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }

    /// Enqueues a job that must be created (not coalesced).
    pub fn enqueue(&self, job: NewJob) -> JobId {
        match self.store.enqueue(job).unwrap() {
            Enqueued::Created(id) => id,
            other => panic!("expected a new job, got {other:?}"),
        }
    }

    /// The job, which must exist.
    pub fn job(&self, id: JobId) -> Job {
        self.store.get(id).unwrap().expect("job exists")
    }

    /// Claims from `queue`, expecting exactly one job.
    pub fn claim_one(&self, queue: &str) -> Claimed {
        let mut claimed = self.store.claim(queue, 1).unwrap();
        assert_eq!(claimed.len(), 1, "expected one claimable job in {queue}");
        claimed.pop().unwrap()
    }

    /// The ids `claim(queue, n)` hands out, in the order it hands them out (leases dropped).
    pub fn claim_ids(&self, queue: &str, n: usize) -> Vec<JobId> {
        self.store
            .claim(queue, n)
            .unwrap()
            .into_iter()
            .map(|c| c.job.id)
            .collect()
    }

    /// Ids of the jobs of `queue` in `state`, in id order.
    pub fn ids_in(&self, queue: &str, state: JobState) -> Vec<JobId> {
        self.store
            .list(&Filter::default().queue(queue).state(state))
            .unwrap()
            .into_iter()
            .map(|j| j.id)
            .collect()
    }
}

pub fn open(dir: &tempfile::TempDir, clock: &ManualClock) -> Store {
    builder(clock).open(db(dir)).unwrap()
}

/// The options of a test store: time from `clock`, the lease [`TTL`], the jitter-free
/// [`schedule`], in the mode [`mode`] says. A test changes what it needs before opening [`db`].
pub fn builder(clock: &ManualClock) -> StoreBuilder {
    mode(
        Store::builder()
            .clock(Arc::new(clock.clone()))
            .lease_ttl(TTL)
            .backoff(schedule()),
    )
}

/// The store's mode for this run of the suite: by default a shared lock and a verified open;
/// with `QUERN_TEST_STORE_MODE=exclusive`, the file locked exclusively and trusted at open
/// (`exclusive(true)`, `verify_on_open(false)`), as CI runs the store suite a second time.
pub fn mode(builder: StoreBuilder) -> StoreBuilder {
    match std::env::var("QUERN_TEST_STORE_MODE").as_deref() {
        Ok("exclusive") => builder.exclusive(true).verify_on_open(false),
        Ok("shared") | Err(_) => builder,
        Ok(other) => panic!("QUERN_TEST_STORE_MODE is shared or exclusive, not {other:?}"),
    }
}

/// The database file of a test, in its temporary directory.
pub fn db(dir: &tempfile::TempDir) -> std::path::PathBuf {
    dir.path().join("q.redb")
}

/// Asserts `result` is `Error::LeaseLost` naming `job`.
pub fn assert_lease_lost<T: std::fmt::Debug>(result: Result<T, Error>, job: JobId) {
    match result {
        Err(Error::LeaseLost { job: j }) => assert_eq!(j, job, "LeaseLost names the job"),
        other => panic!("expected LeaseLost for job {job}, got {other:?}"),
    }
}

/// Asserts `result` is `Error::InvalidState` naming `job`, its `state` and the `operation`.
pub fn assert_invalid_state<T: std::fmt::Debug>(
    result: Result<T, Error>,
    job: JobId,
    state: JobState,
    operation: &str,
) {
    match result {
        Err(Error::InvalidState {
            job: j,
            state: s,
            operation: o,
        }) => assert_eq!((j, s, o), (job, state, operation)),
        other => panic!("expected InvalidState({job}, {state}, {operation}), got {other:?}"),
    }
}

/// How long an executor test waits for an event before it fails.
pub const WAIT: Duration = Duration::from_secs(20);

/// Waits until `cond` holds, re-checking after each change the store commits (and every few
/// milliseconds, for conditions on an executor's own counters); fails after [`WAIT`].
pub async fn until(store: &Store, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let seen = store.generation();
        if cond() {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out waiting for {what}");
        }
        let recheck = tokio::time::sleep(Duration::from_millis(5));
        tokio::select! {
            _ = store.changed(seen) => {}
            () = recheck => {}
        }
    }
}
