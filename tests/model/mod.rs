//! A reference model of quern's state machine: plain Rust, a map of jobs, no storage. Model
//! tests (proptest) and the fuzzer run the same operations against the store and this model
//! and compare them after every step.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use quern::{
    Backoff, Clock, Enqueued, Error, Filter, Job, JobId, JobState, Lease, MAX_PAYLOAD, ManualClock,
    NewJob, RateLimit, Retention, Store, Timestamp,
};

pub const QUEUES: [&str; 2] = ["a", "b"];
pub const TTL_MS: u64 = 30_000;
pub const BACKOFF_MS: u64 = 10_000;
/// The longest progress text kept, in bytes (the store cuts longer text).
pub const MAX_TEXT: usize = 4 * 1024;

/// One generated operation. Indexes pick among jobs and held leases modulo their count.
#[derive(Debug, Clone)]
pub enum Op {
    Enqueue(Spec),
    EnqueueBatch(Vec<Spec>),
    Claim {
        queue: u8,
        n: u8,
    },
    Complete {
        lease: u8,
    },
    Fail {
        lease: u8,
    },
    Discard {
        lease: u8,
    },
    Snooze {
        lease: u8,
        secs: u8,
    },
    Heartbeat {
        lease: u8,
    },
    Advance {
        secs: u16,
    },
    PromoteDue,
    RecoverExpired,
    /// Recovers the jobs claimed before the last reopen (whose process is gone).
    RecoverAbandoned,
    Retry {
        job: u8,
    },
    Cancel {
        job: u8,
    },
    Prune {
        secs: u16,
    },
    Reopen,
    /// Progress text on a held lease: short, or longer than the store keeps.
    SetProgress {
        lease: u8,
        long: bool,
    },
    /// Jobs enqueued one by one in a user's write transaction, committed or rolled back.
    Write {
        specs: Vec<Spec>,
        commit: bool,
    },
    /// Retention by separate ages and a cap on the failures kept.
    ApplyRetention {
        succeeded_secs: u16,
        failed_secs: u16,
        max_failed: Option<u8>,
    },
    /// The clock set back (a wall clock corrected).
    ClockBack {
        secs: u16,
    },
    /// A batch of `n` small jobs of queue `queue`: more than one segment holds.
    BigBatch {
        queue: u8,
        n: u16,
    },
    /// Parks a queue (no `key`) or one of its concurrency keys for `secs` (at least 1).
    Park {
        queue: u8,
        key: Option<u8>,
        secs: u8,
    },
    Unpark {
        queue: u8,
        key: Option<u8>,
    },
    Pause {
        queue: u8,
    },
    Resume {
        queue: u8,
    },
    /// Sets how many jobs of a key may run at once (`None` or 1: one).
    SetMaxRunning {
        queue: u8,
        key: u8,
        max: Option<u8>,
    },
    /// Sets (`starts` some) or removes the rate limit of a queue or key.
    SetLimit {
        queue: u8,
        key: Option<u8>,
        starts: Option<u8>,
        period_secs: u8,
    },
    /// A user transaction that enqueues `spec` (if any) and settles a held lease: complete,
    /// fail or snooze (`how` % 3); committed or rolled back.
    SettleInWrite {
        lease: u8,
        how: u8,
        spec: Option<Spec>,
        commit: bool,
    },
}

#[derive(Debug, Clone, Default)]
pub struct Spec {
    pub queue: u8,
    pub priority: i8,
    pub delay_secs: u8,
    pub max_attempts: u8,
    pub unique: Option<u8>,
    pub ckey: Option<u8>,
    /// The payload's size class: 0 one byte, 1 the most kept inline (1 KiB), 2 one byte more
    /// (kept apart), 3 the largest allowed.
    pub payload: u8,
    /// A per-attempt timeout, in seconds.
    pub timeout_secs: Option<u8>,
    /// An explicit run_at, in seconds from now (before now when negative); takes the place of
    /// the delay.
    pub run_at_secs: Option<i16>,
    /// With `unique`: the strict mode (refused while a job of the key lives).
    pub strict: bool,
    /// With a (not strict) `unique`: the latest payload wins.
    pub latest: bool,
    /// With a (not strict) `unique`: a debounce window, in seconds.
    pub debounce_secs: Option<u8>,
    /// Tells apart the one-byte payloads of one queue, so that a payload that wins shows.
    pub tag: u8,
}

impl Spec {
    fn payload(&self) -> Vec<u8> {
        let fill = b'a' + self.queue % 2;
        match self.payload % 4 {
            0 => vec![self.queue, self.tag],
            1 => vec![fill; 1024],
            2 => vec![fill; 1025],
            _ => vec![fill; MAX_PAYLOAD],
        }
    }

    fn unique_key(&self) -> Option<String> {
        self.unique.map(|u| format!("u{}", u % 4))
    }

    fn ckey_name(&self) -> Option<String> {
        self.ckey.map(|c| format!("c{}", c % 3))
    }

    /// Key `c2` is ordered; `c0` and `c1` are not (one key is never both).
    fn ordered(&self) -> bool {
        self.ckey.is_some_and(|c| c % 3 == 2)
    }

    /// Whether it has a change-safe unique key.
    fn coalescing(&self) -> bool {
        self.unique.is_some() && !self.strict
    }

    /// Its debounce window, in ms, when it applies.
    fn debounce_ms(&self) -> Option<u64> {
        self.debounce_secs
            .filter(|_| self.coalescing())
            .map(|d| u64::from(d) * 1_000)
    }

    /// The run_at it asks for, by a clock at `now`.
    fn run_at(&self, now: u64) -> u64 {
        match self.run_at_secs {
            Some(s) => now.saturating_add_signed(i64::from(s) * 1_000),
            None => now + u64::from(self.delay_secs) * 1_000,
        }
    }

    fn new_job(&self, now: u64) -> NewJob {
        let mut job = NewJob::new(QUEUES[usize::from(self.queue) % 2], self.payload())
            .priority(i32::from(self.priority))
            .max_attempts(u32::from(self.max_attempts).max(1));
        job = match self.run_at_secs {
            Some(_) => job.run_at(Timestamp(self.run_at(now))),
            None => job.delay(Duration::from_secs(u64::from(self.delay_secs))),
        };
        if let Some(u) = self.unique_key() {
            if self.strict {
                job = job.unique_key_strict(u);
            } else {
                job = job.unique_key(u);
                if self.latest {
                    job = job.latest_wins();
                }
                if let Some(d) = self.debounce_secs {
                    job = job.debounce(Duration::from_secs(u64::from(d)));
                }
            }
        }
        if let Some(c) = self.ckey_name() {
            job = job.concurrency_key(c);
            if self.ordered() {
                job = job.ordered();
            }
        }
        if let Some(t) = self.timeout_secs {
            job = job.timeout(Duration::from_secs(u64::from(t)));
        }
        job
    }
}

/// What a user's write transaction returns to roll itself back.
#[derive(Debug)]
enum WriteError {
    Rollback,
    Quern(Error),
}

impl From<Error> for WriteError {
    fn from(e: Error) -> Self {
        WriteError::Quern(e)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MJob {
    pub queue: String,
    pub state: JobState,
    pub priority: i32,
    pub attempts: u32,
    pub max_attempts: u32,
    pub run_at: u64,
    pub next_attempt_at: Option<u64>,
    pub last_error: Option<String>,
    pub unique_key: Option<String>,
    pub ckey: Option<String>,
    pub token: u64,
    pub lease_expires_at: Option<u64>,
    pub finished_at: Option<u64>,
    pub manual_retries: u32,
    pub payload: Vec<u8>,
    pub progress: Option<String>,
    pub timeout: Option<Duration>,
    pub created_at: u64,
    pub updated_at: u64,
    pub ordered: bool,
    /// A follow-up: the running job of its unique key it waits for.
    pub behind: Option<u64>,
    pub latest_wins: bool,
}

impl MJob {
    /// Pending (not behind a run) or failed with a retry scheduled.
    fn waiting(&self) -> bool {
        self.live() && self.state != JobState::InProgress
    }

    fn key(&self) -> Option<(String, String)> {
        self.unique_key.clone().map(|u| (self.queue.clone(), u))
    }

    fn live(&self) -> bool {
        match self.state {
            JobState::Pending | JobState::InProgress => true,
            JobState::Failed => self.next_attempt_at.is_some(),
            JobState::Succeeded => false,
        }
    }
}

/// The store under test, the model, and the leases the test holds.
pub struct Harness {
    pub dir: tempfile::TempDir,
    pub clock: ManualClock,
    pub store: Option<Store>,
    pub jobs: BTreeMap<u64, MJob>,
    pub leases: Vec<Lease>,
    pub next_id: u64,
    /// The highest lease token the store has issued: each new one must be above it.
    pub max_token: u64,
    /// The highest token issued before the last reopen: a job in progress under it or a lower
    /// one was claimed by an earlier open (0 before any reopen).
    pub earlier_tokens: u64,
    /// Whether the store retries with the default backoff (jittered), whose delays the model
    /// checks against their bounds; otherwise a fixed [`BACKOFF_MS`].
    pub jitter: bool,
    /// Ordered concurrency keys: (queue, key) -> the job that holds the line.
    pub lines: BTreeMap<(String, String), u64>,
    /// Every enqueue of a change-safe unique key, for the coverage guarantee.
    pub events: Vec<Event>,
    /// What holds back each queue (key `None`) and concurrency key.
    pub controls: BTreeMap<(String, Option<String>), MControl>,
    /// Per (queue, key): the highest number of its jobs ever allowed to run at once.
    pub max_allowed: HashMap<(String, String), u32>,
}

/// A queue's or key's control, as the model keeps it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MControl {
    pub paused: bool,
    pub parked_until: Option<u64>,
    pub reason: Option<String>,
    /// (starts, period in ms).
    pub limit: Option<(u32, u64)>,
    /// (opened at, started in it).
    pub window: Option<(u64, u32)>,
    /// A key: how many of its jobs may run at once, when more than one.
    pub max_running: Option<u32>,
}

impl MControl {
    /// Starts allowed at `now`.
    fn allowance(&self, now: u64) -> u32 {
        if self.paused || self.parked_until.is_some_and(|t| t > now) {
            return 0;
        }
        match (self.limit, self.window) {
            (None, _) => u32::MAX,
            (Some((starts, period)), Some((opened, started))) if now < opened + period => {
                starts.saturating_sub(started)
            }
            (Some((starts, _)), _) => starts,
        }
    }

    fn start(&mut self, now: u64) {
        if let Some((_, period)) = self.limit {
            self.window = match self.window {
                Some((opened, started)) if now < opened + period => Some((opened, started + 1)),
                _ => Some((now, 1)),
            };
        }
    }
}

/// An enqueue of a change-safe unique key: the job that covers it (`carrier`), and whether a
/// run of that job has started since (covered) or an operator cancelled it first (dropped).
#[derive(Debug, Clone)]
pub struct Event {
    pub step: usize,
    pub carrier: u64,
    pub covered: bool,
    pub dropped: bool,
}

fn open(dir: &tempfile::TempDir, clock: &ManualClock, jitter: bool) -> Store {
    let backoff = if jitter {
        Backoff::default()
    } else {
        Backoff::fixed(Duration::from_millis(BACKOFF_MS))
    };
    Store::builder()
        .clock(Arc::new(clock.clone()))
        .lease_ttl(Duration::from_millis(TTL_MS))
        .backoff(backoff)
        .open(dir.path().join("model.redb"))
        .expect("open store")
}

impl Harness {
    pub fn new() -> Self {
        Harness::with_backoff(false)
    }

    /// A harness whose store retries with the default backoff: 30 s doubling to 10 min, equal
    /// jitter.
    pub fn with_default_backoff() -> Self {
        Harness::with_backoff(true)
    }

    fn with_backoff(jitter: bool) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = ManualClock::new(Timestamp(1_000_000_000));
        let store = open(&dir, &clock, jitter);
        Harness {
            dir,
            clock,
            store: Some(store),
            jobs: BTreeMap::new(),
            leases: Vec::new(),
            next_id: 1,
            max_token: 0,
            earlier_tokens: 0,
            jitter,
            lines: BTreeMap::new(),
            events: Vec::new(),
            controls: BTreeMap::new(),
            max_allowed: HashMap::new(),
        }
    }

    fn store(&self) -> &Store {
        self.store.as_ref().expect("store is open")
    }

    fn now(&self) -> u64 {
        self.clock.now().0
    }

    /// Applies `op` to both; returns a description of the first disagreement.
    pub fn apply(&mut self, op: &Op) -> Result<(), String> {
        match op {
            Op::Enqueue(spec) => {
                let now = self.now();
                let got = self
                    .store()
                    .enqueue(spec.new_job(now))
                    .map_err(|e| e.to_string())?;
                let want = self.model_enqueue(spec);
                check_eq("enqueue outcome", got, want)?;
            }
            Op::EnqueueBatch(specs) => {
                let now = self.now();
                let got = self
                    .store()
                    .enqueue_batch(specs.iter().map(|s| s.new_job(now)))
                    .map_err(|e| e.to_string())?;
                let want: Vec<Enqueued> = specs.iter().map(|s| self.model_enqueue(s)).collect();
                check_eq("enqueue_batch outcomes", got, want)?;
            }
            Op::BigBatch { queue, n } => {
                let spec = Spec {
                    queue: *queue,
                    max_attempts: 3,
                    ..Spec::default()
                };
                let now = self.now();
                let got = self
                    .store()
                    .enqueue_batch((0..*n).map(|_| spec.new_job(now)))
                    .map_err(|e| e.to_string())?;
                let want: Vec<Enqueued> = (0..*n).map(|_| self.model_enqueue(&spec)).collect();
                check_eq("big batch outcomes", got, want)?;
            }
            Op::Write { specs, commit } => {
                let now = self.now();
                let got = self.store().write(|tx| {
                    let mut outcomes = Vec::new();
                    for spec in specs {
                        outcomes.push(tx.enqueue(spec.new_job(now))?);
                    }
                    if *commit {
                        Ok(outcomes)
                    } else {
                        Err(WriteError::Rollback)
                    }
                });
                match (commit, got) {
                    (true, Ok(got)) => {
                        let want: Vec<Enqueued> =
                            specs.iter().map(|s| self.model_enqueue(s)).collect();
                        check_eq("write outcomes", got, want)?;
                    }
                    (false, Err(WriteError::Rollback)) => {}
                    (_, got) => return Err(format!("write (commit {commit}) gave {got:?}")),
                }
            }
            Op::Claim { queue, n } => {
                let queue = QUEUES[usize::from(*queue) % 2];
                let n = usize::from(*n % 5);
                let claimed = self.store().claim(queue, n).map_err(|e| e.to_string())?;
                let want = self.model_claim(queue, n);
                let got: Vec<u64> = claimed.iter().map(|c| c.job.id.0).collect();
                check_eq("claimed ids", &got, &want)?;
                self.check_order(&got)?;
                for c in claimed {
                    // A fresh token for every claim: above every token issued before, in this
                    // open or an earlier one.
                    let token = c.lease.token();
                    if token <= self.max_token {
                        return Err(format!(
                            "claim of {} got token {token}, not above {} issued before",
                            c.job.id, self.max_token
                        ));
                    }
                    self.max_token = token;
                    if let Some(m) = self.jobs.get_mut(&c.job.id.0) {
                        m.token = token;
                    }
                    check_job(&c.job, &self.jobs[&c.job.id.0])?;
                    self.leases.push(c.lease);
                }
            }
            Op::Complete { lease } | Op::Fail { lease } | Op::Discard { lease } => {
                let Some(lease) = self.take_lease(*lease) else {
                    return Ok(());
                };
                let id = lease.job().0;
                let valid = self.lease_valid(&lease);
                let got = match op {
                    Op::Complete { .. } => self.store().complete(lease),
                    Op::Fail { .. } => self.store().fail(lease, "boom"),
                    _ => self.store().discard(lease, "bad"),
                };
                self.check_fenced(valid, got, id)?;
                if valid {
                    let now = self.now();
                    let m = self.jobs.get_mut(&id).expect("valid lease has a job");
                    match op {
                        Op::Complete { .. } => finish(m, JobState::Succeeded, now),
                        Op::Fail { .. } => fail_attempt(m, now, "boom"),
                        _ => {
                            m.last_error = Some("bad".into());
                            finish(m, JobState::Failed, now);
                        }
                    }
                    self.adopt_retry_time(id)?;
                    self.ended_run(id);
                }
            }
            Op::Snooze { lease, secs } => {
                let Some(lease) = self.take_lease(*lease) else {
                    return Ok(());
                };
                let id = lease.job().0;
                let valid = self.lease_valid(&lease);
                let delay = Duration::from_secs(u64::from(*secs % 60));
                let got = self.store().snooze(lease, delay);
                self.check_fenced(valid, got, id)?;
                if valid {
                    let now = self.now();
                    let m = self.jobs.get_mut(&id).expect("job");
                    m.state = JobState::Pending;
                    m.attempts -= 1;
                    m.run_at = now + u64::from(*secs % 60) * 1_000;
                    m.lease_expires_at = None;
                    m.updated_at = now;
                    self.ended_run(id);
                }
            }
            Op::SetProgress { lease, long } => {
                if self.leases.is_empty() {
                    return Ok(());
                }
                let i = usize::from(*lease) % self.leases.len();
                let valid = self.lease_valid(&self.leases[i]);
                let id = self.leases[i].job().0;
                let text = if *long {
                    "p".repeat(MAX_TEXT + 100)
                } else {
                    "p".into()
                };
                let got = self.store().set_progress(&self.leases[i], text.clone());
                self.check_fenced(valid, got, id)?;
                if valid {
                    let now = self.now();
                    let m = self.jobs.get_mut(&id).expect("job");
                    m.progress = Some(text[..text.len().min(MAX_TEXT)].to_owned());
                    m.updated_at = now;
                }
            }
            Op::Heartbeat { lease } => {
                if self.leases.is_empty() {
                    return Ok(());
                }
                let i = usize::from(*lease) % self.leases.len();
                let valid = self.lease_valid(&self.leases[i]);
                let id = self.leases[i].job().0;
                let got = self.store().heartbeat(&self.leases[i]);
                self.check_fenced(valid, got, id)?;
                if valid {
                    let now = self.now();
                    let m = self.jobs.get_mut(&id).expect("job");
                    m.lease_expires_at = Some(now + TTL_MS);
                    m.updated_at = now;
                }
            }
            Op::Advance { secs } => self.clock.advance(Duration::from_secs(u64::from(*secs))),
            Op::ClockBack { secs } => {
                let back = u64::from(*secs) * 1_000;
                self.clock.set(Timestamp(self.now().saturating_sub(back)));
            }
            Op::PromoteDue => {
                let got = self.store().promote_due().map_err(|e| e.to_string())?;
                let now = self.now();
                let mut want = 0;
                for m in self.jobs.values_mut() {
                    if m.state == JobState::Failed && m.next_attempt_at.is_some_and(|t| t <= now) {
                        m.state = JobState::Pending;
                        m.run_at = m.next_attempt_at.take().expect("due");
                        m.updated_at = now;
                        want += 1;
                    }
                }
                check_eq("promoted", got, want)?;
            }
            Op::RecoverExpired => {
                let got = self.store().recover_expired().map_err(|e| e.to_string())?;
                let now = self.now();
                let mut recovered = Vec::new();
                for (id, m) in &mut self.jobs {
                    if m.state == JobState::InProgress
                        && m.lease_expires_at.is_some_and(|t| t <= now)
                    {
                        fail_attempt(m, now, "lease expired");
                        recovered.push(*id);
                    }
                }
                check_eq("recovered", got, recovered.len() as u64)?;
                for id in recovered {
                    self.adopt_retry_time(id)?;
                    self.ended_run(id);
                }
            }
            Op::RecoverAbandoned => {
                let got = self
                    .store()
                    .recover_abandoned()
                    .map_err(|e| e.to_string())?;
                let now = self.now();
                let earlier = self.earlier_tokens;
                let mut recovered = Vec::new();
                for (id, m) in &mut self.jobs {
                    if m.state == JobState::InProgress && m.token <= earlier {
                        abandon(m, now);
                        recovered.push(*id);
                    }
                }
                check_eq("abandoned", got, recovered.len() as u64)?;
                for id in recovered {
                    self.adopt_retry_time(id)?;
                    self.ended_run(id);
                }
            }
            Op::Retry { job } => {
                let Some(id) = self.pick_job(*job) else {
                    return Ok(());
                };
                let got = self.store().retry(JobId(id));
                let now = self.now();
                let m = &self.jobs[&id];
                let holder = m.unique_key.as_ref().and_then(|u| {
                    self.jobs.iter().find(|(other, o)| {
                        **other != id
                            && o.live()
                            && o.queue == m.queue
                            && o.unique_key.as_ref() == Some(u)
                    })
                });
                match (m.state, holder, got) {
                    (JobState::Failed, None, Ok(())) => {
                        let m = self.jobs.get_mut(&id).expect("job");
                        m.state = JobState::Pending;
                        m.attempts = 0;
                        m.manual_retries += 1;
                        m.run_at = now;
                        m.next_attempt_at = None;
                        m.finished_at = None;
                        m.updated_at = now;
                    }
                    (JobState::Failed, Some(_), Err(Error::UniqueConflict { .. })) => {}
                    (s, _, Err(Error::InvalidState { .. })) if s != JobState::Failed => {}
                    (s, h, got) => {
                        return Err(format!("retry of {id} in {s} (holder {h:?}) gave {got:?}"));
                    }
                }
            }
            Op::Cancel { job } => {
                let Some(id) = self.pick_job(*job) else {
                    return Ok(());
                };
                let got = self.store().cancel(JobId(id));
                let now = self.now();
                let m = self.jobs.get_mut(&id).expect("job");
                let was_running = m.state == JobState::InProgress;
                match (m.live(), got) {
                    (true, Ok(())) => {
                        m.last_error = Some("cancelled".into());
                        m.behind = None;
                        finish(m, JobState::Failed, now);
                        // What it carried and had not run is dropped by the operator.
                        for e in &mut self.events {
                            if e.carrier == id && !e.covered {
                                e.dropped = true;
                            }
                        }
                        if was_running {
                            self.ended_run(id);
                        }
                    }
                    (false, Err(Error::InvalidState { .. })) => {}
                    (live, got) => {
                        return Err(format!("cancel of {id} (live {live}) gave {got:?}"));
                    }
                }
            }
            Op::Prune { secs } => {
                let age = u64::from(*secs);
                let got = self
                    .store()
                    .prune(Duration::from_secs(age))
                    .map_err(|e| e.to_string())?;
                let cut = self.now().saturating_sub(age * 1_000);
                let before = self.jobs.len();
                self.jobs
                    .retain(|_, m| m.live() || m.finished_at.is_none_or(|f| f >= cut));
                check_eq("pruned", got, (before - self.jobs.len()) as u64)?;
            }
            Op::ApplyRetention {
                succeeded_secs,
                failed_secs,
                max_failed,
            } => {
                let retention = Retention {
                    succeeded: Duration::from_secs(u64::from(*succeeded_secs)),
                    failed: Duration::from_secs(u64::from(*failed_secs)),
                    max_failed: max_failed.map(u64::from),
                };
                let got = self
                    .store()
                    .apply_retention(&retention)
                    .map_err(|e| e.to_string())?;
                let now = self.now();
                let cut_succeeded = now.saturating_sub(u64::from(*succeeded_secs) * 1_000);
                let cut_failed = now.saturating_sub(u64::from(*failed_secs) * 1_000);
                let before = self.jobs.len();
                self.jobs.retain(|_, m| match (m.state, m.finished_at) {
                    (JobState::Succeeded, Some(f)) => f >= cut_succeeded,
                    (JobState::Failed, Some(f)) => f >= cut_failed,
                    _ => true,
                });
                if let Some(max) = max_failed {
                    let mut dead: Vec<(u64, u64)> = self
                        .jobs
                        .iter()
                        .filter(|(_, m)| m.state == JobState::Failed && !m.live())
                        .map(|(id, m)| (m.finished_at.unwrap_or(0), *id))
                        .collect();
                    dead.sort_unstable();
                    let excess = dead.len().saturating_sub(usize::from(*max));
                    for (_, id) in &dead[..excess] {
                        self.jobs.remove(id);
                    }
                }
                check_eq("retention deleted", got, (before - self.jobs.len()) as u64)?;
            }
            Op::Reopen => {
                drop(self.store.take());
                self.earlier_tokens = self.max_token;
                self.store = Some(open(&self.dir, &self.clock, self.jitter));
            }
            Op::Park { queue, key, secs } => {
                let (q, k) = control_scope(*queue, *key);
                let until = self.now() + u64::from((*secs).max(1)) * 1_000;
                self.store()
                    .park(&q, k.as_deref(), Timestamp(until), "429")
                    .map_err(|e| e.to_string())?;
                let c = self.controls.entry((q, k)).or_default();
                c.parked_until = Some(c.parked_until.map_or(until, |t| t.max(until)));
                c.reason = Some("429".into());
            }
            Op::Unpark { queue, key } => {
                let (q, k) = control_scope(*queue, *key);
                self.store()
                    .unpark(&q, k.as_deref())
                    .map_err(|e| e.to_string())?;
                let c = self.controls.entry((q, k)).or_default();
                c.parked_until = None;
                c.reason = None;
            }
            Op::Pause { queue } | Op::Resume { queue } => {
                let q = QUEUES[usize::from(*queue) % 2].to_owned();
                let pause = matches!(op, Op::Pause { .. });
                let got = if pause {
                    self.store().pause(&q)
                } else {
                    self.store().resume(&q)
                };
                got.map_err(|e| e.to_string())?;
                self.controls.entry((q, None)).or_default().paused = pause;
            }
            Op::SetLimit {
                queue,
                key,
                starts,
                period_secs,
            } => {
                let (q, k) = control_scope(*queue, *key);
                let period = u64::from((*period_secs).max(1)) * 1_000;
                let limit = starts.map(|n| {
                    RateLimit::new(u32::from(n.max(1)), Duration::from_millis(period))
                        .expect("a valid limit")
                });
                self.store()
                    .set_rate_limit(&q, k.as_deref(), limit)
                    .map_err(|e| e.to_string())?;
                let c = self.controls.entry((q, k)).or_default();
                c.limit = starts.map(|n| (u32::from(n.max(1)), period));
                if c.limit.is_none() {
                    c.window = None;
                }
            }
            Op::SetMaxRunning { queue, key, max } => {
                let (q, k) = control_scope(*queue, Some(*key));
                let k = k.expect("a key");
                self.store()
                    .set_max_running(&q, &k, max.map(u32::from))
                    .map_err(|e| e.to_string())?;
                let max = max.map(u32::from).filter(|&m| m > 1);
                let highest = self.max_allowed.entry((q.clone(), k.clone())).or_insert(1);
                *highest = (*highest).max(max.unwrap_or(1));
                self.controls.entry((q, Some(k))).or_default().max_running = max;
            }
            Op::SettleInWrite {
                lease,
                how,
                spec,
                commit,
            } => {
                let Some(lease) = self.take_lease(*lease) else {
                    return Ok(());
                };
                let id = lease.job().0;
                let valid = self.lease_valid(&lease);
                let now = self.now();
                let got = self.store().write(|tx| {
                    let enqueued = match spec {
                        Some(spec) => Some(tx.enqueue(spec.new_job(now))?),
                        None => None,
                    };
                    // A refused settle is not passed on: the store must refuse to commit all
                    // the same.
                    let _ = match how % 3 {
                        0 => tx.complete(lease),
                        1 => tx.fail(lease, "boom"),
                        _ => tx.snooze(lease, Duration::from_secs(5)),
                    };
                    if *commit {
                        Ok(enqueued)
                    } else {
                        Err(WriteError::Rollback)
                    }
                });
                match (valid, *commit, got) {
                    (true, true, Ok(enqueued)) => {
                        if let Some(spec) = spec {
                            let want = self.model_enqueue(spec);
                            check_eq("enqueue in a settling write", enqueued, Some(want))?;
                        }
                        let m = self.jobs.get_mut(&id).expect("valid lease has a job");
                        match how % 3 {
                            0 => finish(m, JobState::Succeeded, now),
                            1 => fail_attempt(m, now, "boom"),
                            _ => {
                                m.state = JobState::Pending;
                                m.attempts -= 1;
                                m.run_at = now + 5_000;
                                m.lease_expires_at = None;
                                m.updated_at = now;
                            }
                        }
                        self.adopt_retry_time(id)?;
                        self.ended_run(id);
                    }
                    (_, false, Err(WriteError::Rollback))
                    | (false, true, Err(WriteError::Quern(Error::LeaseLost { .. }))) => {}
                    (valid, commit, got) => {
                        return Err(format!(
                            "settling write on {id} (valid {valid}, commit {commit}) gave {got:?}"
                        ));
                    }
                }
            }
        }
        self.settle_lines();
        self.check_coverage()?;
        self.compare()
    }

    /// The run of job `id` just ended as the model now has it: a follow-up waiting behind it
    /// is released if the run ended for good, or folded into the job if it went back to
    /// waiting.
    fn ended_run(&mut self, id: u64) {
        let now = self.now();
        let Some(f) = self
            .jobs
            .iter()
            .find(|(_, o)| o.behind == Some(id))
            .map(|(f, _)| *f)
        else {
            return;
        };
        if !self.jobs[&id].live() {
            let fm = self.jobs.get_mut(&f).expect("follow-up");
            fm.behind = None;
            fm.updated_at = now;
            return;
        }
        let fm = self.jobs.remove(&f).expect("follow-up");
        let m = self.jobs.get_mut(&id).expect("job");
        if m.state == JobState::Pending {
            m.run_at = m.run_at.max(fm.run_at);
        } else {
            m.next_attempt_at = m.next_attempt_at.map(|t| t.max(fm.run_at));
        }
        if fm.latest_wins {
            m.payload = fm.payload;
        }
        m.updated_at = now;
        for e in &mut self.events {
            if e.carrier == f {
                e.carrier = id;
            }
        }
    }

    /// A free ordered line goes to the lowest id that waits in it; a line stays with its job
    /// while that job lives.
    fn settle_lines(&mut self) {
        let jobs = &self.jobs;
        self.lines
            .retain(|_, h| jobs.get(h).is_some_and(MJob::live));
        for (id, m) in &self.jobs {
            if m.ordered && m.state == JobState::Pending && m.behind.is_none() {
                let key = (m.queue.clone(), m.ckey.clone().expect("ordered has a key"));
                self.lines.entry(key).or_insert(*id);
            }
        }
    }

    /// The coverage guarantee: every enqueue of a change-safe unique key is covered by a run
    /// of its key that started after it, or is carried by a job of the key that waits to run
    /// (and so will start after it), or was dropped by a cancel.
    fn check_coverage(&self) -> Result<(), String> {
        for e in &self.events {
            if e.covered || e.dropped {
                continue;
            }
            match self.jobs.get(&e.carrier) {
                Some(m) if m.waiting() => {}
                m => {
                    return Err(format!(
                        "the enqueue of step {} is carried by job {}, which is {:?}: it would \
                         never be covered by a run",
                        e.step,
                        e.carrier,
                        m.map(|m| m.state)
                    ));
                }
            }
        }
        Ok(())
    }

    /// The job that holds unique key `u` of `queue`: the one that waits to run, or else the
    /// one that runs.
    fn holder(&self, queue: &str, u: &str) -> Option<u64> {
        let of_key = || {
            self.jobs.iter().filter(move |(_, m)| {
                m.live() && m.queue == queue && m.unique_key.as_deref() == Some(u)
            })
        };
        of_key()
            .find(|(_, m)| m.waiting())
            .or_else(|| of_key().next())
            .map(|(id, _)| *id)
    }

    fn model_enqueue(&mut self, spec: &Spec) -> Enqueued {
        let job = spec.new_job(self.now());
        let queue = job.queue_name().to_owned();
        let now = self.now();
        let step = self.events.len();
        let Some(u) = spec.unique_key() else {
            return Enqueued::Created(JobId(self.create(spec, now, None)));
        };
        let Some(holder) = self.holder(&queue, &u) else {
            let id = self.create(spec, now, None);
            if spec.coalescing() {
                self.events.push(Event {
                    step,
                    carrier: id,
                    covered: false,
                    dropped: false,
                });
            }
            return Enqueued::Created(JobId(id));
        };
        if spec.strict {
            return Enqueued::Duplicate(JobId(holder));
        }
        let m = &self.jobs[&holder];
        let (carrier, answer) = if m.state == JobState::InProgress {
            let id = self.create(spec, now, Some(holder));
            (
                id,
                Enqueued::FollowUp {
                    job: JobId(id),
                    running: JobId(holder),
                },
            )
        } else {
            let answer = match m.behind {
                Some(running) => Enqueued::FollowUp {
                    job: JobId(holder),
                    running: JobId(running),
                },
                None => Enqueued::Coalesced(JobId(holder)),
            };
            let retrying = m.state == JobState::Failed;
            let waits = if retrying {
                m.next_attempt_at.expect("waiting")
            } else {
                m.run_at
            };
            let not_before = spec.debounce_ms().map(|d| now + d);
            if spec.latest || not_before.is_some_and(|t| t > waits) {
                let m = self.jobs.get_mut(&holder).expect("holder");
                if let Some(t) = not_before {
                    if retrying {
                        m.next_attempt_at = Some(waits.max(t));
                    } else {
                        m.run_at = waits.max(t);
                    }
                }
                if spec.latest {
                    m.payload = spec.payload();
                    m.latest_wins = true;
                }
                m.updated_at = now;
            }
            (holder, answer)
        };
        self.events.push(Event {
            step,
            carrier,
            covered: false,
            dropped: false,
        });
        answer
    }

    /// A new job of `spec`, as the store writes it; `behind` for a follow-up.
    fn create(&mut self, spec: &Spec, now: u64, behind: Option<u64>) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let mut run_at = spec.run_at(now);
        if let Some(d) = spec.debounce_ms() {
            run_at = run_at.max(now + d);
        }
        self.jobs.insert(
            id,
            MJob {
                queue: QUEUES[usize::from(spec.queue) % 2].to_owned(),
                state: JobState::Pending,
                priority: i32::from(spec.priority),
                attempts: 0,
                max_attempts: u32::from(spec.max_attempts).max(1),
                run_at,
                next_attempt_at: None,
                last_error: None,
                unique_key: spec.unique_key(),
                ckey: spec.ckey_name(),
                token: 0,
                lease_expires_at: None,
                finished_at: None,
                manual_retries: 0,
                payload: spec.payload(),
                progress: None,
                timeout: spec.timeout_secs.map(|t| Duration::from_secs(u64::from(t))),
                created_at: now,
                updated_at: now,
                ordered: spec.ordered(),
                behind,
                latest_wins: behind.is_some() && spec.latest,
            },
        );
        id
    }

    fn model_claim(&mut self, queue: &str, n: usize) -> Vec<u64> {
        let now = self.now();
        if n == 0 {
            return Vec::new();
        }
        // A claim forgets the parks and rate windows of its queue that ended by now, so that
        // a clock put back later does not bring them back.
        for ((q, _), c) in &mut self.controls {
            if q != queue {
                continue;
            }
            if c.parked_until.is_some_and(|t| t <= now) {
                c.parked_until = None;
                c.reason = None;
            }
            if let (Some((_, period)), Some((opened, _))) = (c.limit, c.window)
                && now >= opened + period
            {
                c.window = None;
            }
        }
        let own = (queue.to_owned(), None);
        let n = n.min(
            self.controls
                .get(&own)
                .map_or(u32::MAX, |c| c.allowance(now)) as usize,
        );
        let mut due: Vec<(i32, u64, u64)> = self
            .jobs
            .iter()
            .filter(|(_, m)| {
                m.queue == queue
                    && m.state == JobState::Pending
                    && m.run_at <= now
                    && m.behind.is_none()
            })
            .map(|(id, m)| (-m.priority, m.run_at, *id))
            .collect();
        due.sort_unstable();
        let mut out = Vec::new();
        for (_, _, id) in due {
            if out.len() == n {
                break;
            }
            let ckey = self.jobs[&id].ckey.clone();
            let busy = ckey.as_ref().is_some_and(|k| {
                if self.jobs[&id].ordered {
                    // Only the job that holds the line of an ordered key may start.
                    self.lines.get(&(queue.to_owned(), k.clone())) != Some(&id)
                } else {
                    let running = self
                        .jobs
                        .values()
                        .filter(|o| {
                            o.state == JobState::InProgress
                                && o.queue == queue
                                && o.ckey.as_ref() == Some(k)
                        })
                        .count();
                    let max = self
                        .controls
                        .get(&(queue.to_owned(), Some(k.clone())))
                        .and_then(|c| c.max_running)
                        .unwrap_or(1);
                    running >= max as usize
                }
            });
            if busy {
                continue;
            }
            // A parked or rate-limited key starts nothing now.
            let scope = ckey.map(|k| (queue.to_owned(), Some(k)));
            if let Some(scope) = &scope
                && self
                    .controls
                    .get(scope)
                    .is_some_and(|c| c.allowance(now) == 0)
            {
                continue;
            }
            for scope in [Some(own.clone()), scope].into_iter().flatten() {
                if let Some(c) = self.controls.get_mut(&scope) {
                    c.start(now);
                }
            }
            for e in &mut self.events {
                if e.carrier == id {
                    e.covered = true;
                }
            }
            let m = self.jobs.get_mut(&id).expect("job");
            m.state = JobState::InProgress;
            m.attempts += 1;
            m.lease_expires_at = Some(now + TTL_MS);
            m.progress = None;
            m.updated_at = now;
            out.push(id);
        }
        out
    }

    /// The order guarantee: a job of an ordered key starts only when no job of the key with a
    /// lower id waits to run (one retried by hand takes its place behind the job that held the
    /// line then, and is not counted).
    fn check_order(&self, claimed: &[u64]) -> Result<(), String> {
        for &id in claimed {
            let m = &self.jobs[&id];
            if !m.ordered {
                continue;
            }
            if let Some((earlier, _)) = self.jobs.range(..id).find(|(_, o)| {
                o.ordered
                    && o.queue == m.queue
                    && o.ckey == m.ckey
                    && o.waiting()
                    && o.behind.is_none()
                    && o.manual_retries == 0
            }) {
                return Err(format!(
                    "job {id} of ordered key {:?} started while job {earlier} waits",
                    m.ckey
                ));
            }
        }
        Ok(())
    }

    fn take_lease(&mut self, i: u8) -> Option<Lease> {
        if self.leases.is_empty() {
            return None;
        }
        let i = usize::from(i) % self.leases.len();
        Some(self.leases.swap_remove(i))
    }

    fn pick_job(&self, i: u8) -> Option<u64> {
        if self.jobs.is_empty() {
            return None;
        }
        self.jobs
            .keys()
            .nth(usize::from(i) % self.jobs.len())
            .copied()
    }

    fn lease_valid(&self, lease: &Lease) -> bool {
        self.jobs
            .get(&lease.job().0)
            .is_some_and(|m| m.state == JobState::InProgress && m.token == lease.token())
    }

    fn check_fenced(&self, valid: bool, got: quern::Result<()>, id: u64) -> Result<(), String> {
        match (valid, got) {
            (true, Ok(())) | (false, Err(Error::LeaseLost { .. })) => Ok(()),
            (valid, got) => Err(format!("lease on {id} (valid {valid}) gave {got:?}")),
        }
    }

    /// With the default backoff, a job that just failed with a retry scheduled: the store's
    /// retry time must lie within the jittered delay's bounds for its attempt, and the model
    /// takes it (the jitter's draw is the store's).
    fn adopt_retry_time(&mut self, id: u64) -> Result<(), String> {
        if !self.jitter {
            return Ok(());
        }
        let Some(m) = self.jobs.get(&id) else {
            return Ok(());
        };
        if m.state != JobState::Failed || m.next_attempt_at.is_none() {
            return Ok(());
        }
        let job = self
            .store()
            .get(JobId(id))
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("job {id} missing"))?;
        let now = self.now();
        // 30 s doubling to 10 min; equal jitter draws from the upper half.
        let full = (30_000u64 << (m.attempts.saturating_sub(1)).min(20)).min(600_000);
        let got = job
            .next_attempt_at
            .ok_or_else(|| format!("job {id}: no retry scheduled"))?
            .0;
        // A follow-up folded into it may hold it back further.
        let follow_up = self
            .jobs
            .values()
            .find(|o| o.behind == Some(id))
            .map(|o| o.run_at);
        let in_bounds = got >= now + full / 2 && got <= now + full;
        let held_back = follow_up == Some(got) && got >= now + full / 2;
        if !(in_bounds || held_back) {
            return Err(format!(
                "job {id}: retry after {} ms, outside {}..={} ms for attempt {}",
                got.saturating_sub(now),
                full / 2,
                full,
                m.attempts
            ));
        }
        self.jobs.get_mut(&id).expect("job").next_attempt_at = Some(got);
        Ok(())
    }

    /// The store and the model agree on every job, whole, on the set of jobs and on the
    /// counts; and the store's jobs keep the invariants (attempts within their maximum, at
    /// most one job per queue and concurrency key in progress).
    pub fn compare(&self) -> Result<(), String> {
        let store = self.store();
        let listed = store.list(&Filter::default()).map_err(|e| e.to_string())?;
        let ids: Vec<u64> = listed.iter().map(|j| j.id.0).collect();
        let modeled: Vec<u64> = self.jobs.keys().copied().collect();
        check_eq("job ids", &ids, &modeled)?;
        let mut running: HashMap<(String, String), u32> = HashMap::new();
        // Per unique key: (running, waiting).
        let mut of_key: HashMap<(String, String), (u32, u32)> = HashMap::new();
        for job in &listed {
            if let Some(u) = &job.unique_key
                && !job.is_finished()
            {
                let n = of_key.entry((job.queue.clone(), u.clone())).or_default();
                if job.state == JobState::InProgress {
                    n.0 += 1;
                } else {
                    n.1 += 1;
                }
                if n.0 > 1 || n.1 > 1 {
                    return Err(format!(
                        "unique key {}/{u}: {} jobs run and {} wait",
                        job.queue, n.0, n.1
                    ));
                }
            }
            check_job(job, &self.jobs[&job.id.0])?;
            if job.attempts > job.max_attempts {
                return Err(format!(
                    "job {} has {} attempts of {}",
                    job.id, job.attempts, job.max_attempts
                ));
            }
            if job.state == JobState::InProgress
                && let Some(k) = &job.concurrency_key
            {
                // At most as many as the key's highest maximum ever allowed (1 by default).
                let scope = (job.queue.clone(), k.clone());
                let allowed = self.max_allowed.get(&scope).copied().unwrap_or(1);
                let n = running.entry(scope).or_insert(0u32);
                *n += 1;
                if *n > allowed {
                    return Err(format!(
                        "{n} jobs of {}/{k} in progress, at most {allowed} allowed",
                        job.queue
                    ));
                }
            }
        }
        // A lookup by id reads what the listing read (a sample: every job would be slow for
        // the large batches).
        for id in self
            .jobs
            .keys()
            .step_by(self.jobs.len().div_ceil(16).max(1))
        {
            let job = store
                .get(JobId(*id))
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("job {id} missing"))?;
            check_job(&job, &self.jobs[id])?;
        }
        let stats = store.stats().map_err(|e| e.to_string())?;
        for queue in QUEUES {
            let count = |s: JobState, retrying: Option<bool>| {
                self.jobs
                    .values()
                    .filter(|m| {
                        m.queue == queue
                            && m.state == s
                            && retrying.is_none_or(|r| m.next_attempt_at.is_some() == r)
                    })
                    .count() as u64
            };
            let want = [
                count(JobState::Pending, None),
                count(JobState::InProgress, None),
                count(JobState::Succeeded, None),
                count(JobState::Failed, Some(true)),
                count(JobState::Failed, Some(false)),
            ];
            let got = stats.queue(queue).map_or([0; 5], |q| {
                [q.pending, q.in_progress, q.succeeded, q.retrying, q.failed]
            });
            check_eq(&format!("counts of queue {queue}"), got, want)?;
        }
        let now = self.now();
        let mut want: Vec<ControlRow> = Vec::new();
        for ((q, k), c) in &self.controls {
            let parked = c.parked_until.filter(|&t| t > now);
            let window = match (c.limit, c.window) {
                (Some((_, period)), Some((opened, started))) if now < opened + period => {
                    Some((started, opened + period))
                }
                _ => None,
            };
            if c.paused || parked.is_some() || c.limit.is_some() || c.max_running.is_some() {
                want.push((
                    q.clone(),
                    k.clone(),
                    c.paused,
                    parked,
                    c.limit,
                    window,
                    c.max_running,
                ));
            }
        }
        let mut got: Vec<_> = store
            .controls()
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|c| {
                (
                    c.queue,
                    c.key,
                    c.paused,
                    c.parked_until.map(|t| t.0),
                    c.rate_limit
                        .map(|l| (l.starts(), l.period().as_millis() as u64)),
                    c.window.map(|(n, t)| (n, t.0)),
                    c.max_running,
                )
            })
            .collect();
        got.sort();
        want.sort();
        check_eq("controls", got, want)?;
        let problems = store.check().map_err(|e| e.to_string())?;
        if !problems.is_empty() {
            return Err(format!("check found {problems:?}"));
        }
        Ok(())
    }
}

/// A control as compared: (queue, key, paused, parked until, (starts, period ms), (started,
/// window closes), max running).
type ControlRow = (
    String,
    Option<String>,
    bool,
    Option<u64>,
    Option<(u32, u64)>,
    Option<(u32, u64)>,
    Option<u32>,
);

/// The (queue, key) a control op names: queue `a` or `b`, key `c0`..`c2` or the queue itself.
fn control_scope(queue: u8, key: Option<u8>) -> (String, Option<String>) {
    (
        QUEUES[usize::from(queue) % 2].to_owned(),
        key.map(|k| format!("c{}", k % 3)),
    )
}

/// The store's job agrees with the model's, field by field.
fn check_job(j: &Job, m: &MJob) -> Result<(), String> {
    let got = (
        &j.queue,
        j.state,
        j.priority,
        j.attempts,
        j.max_attempts,
        j.run_at.0,
        j.next_attempt_at.map(|t| t.0),
        &j.last_error,
        j.lease_expires_at.map(|t| t.0),
        (j.finished_at.map(|t| t.0), j.manual_retries),
        (&j.unique_key, &j.concurrency_key, &j.progress, j.timeout),
        (
            j.created_at.0,
            j.updated_at.0,
            j.ordered,
            j.waits_for.map(|w| w.0),
        ),
    );
    let want = (
        &m.queue,
        m.state,
        m.priority,
        m.attempts,
        m.max_attempts,
        m.run_at,
        m.next_attempt_at,
        &m.last_error,
        m.lease_expires_at,
        (m.finished_at, m.manual_retries),
        (&m.unique_key, &m.ckey, &m.progress, m.timeout),
        (m.created_at, m.updated_at, m.ordered, m.behind),
    );
    check_eq(&format!("job {}", j.id), got, want)?;
    if j.payload != m.payload {
        return Err(format!(
            "job {}: payload of {} bytes, model has {} bytes",
            j.id,
            j.payload.len(),
            m.payload.len()
        ));
    }
    Ok(())
}

impl Default for Harness {
    fn default() -> Self {
        Harness::new()
    }
}

fn finish(m: &mut MJob, state: JobState, now: u64) {
    m.state = state;
    m.next_attempt_at = None;
    m.finished_at = Some(now);
    m.lease_expires_at = None;
    m.updated_at = now;
}

/// A failed attempt: a retry after the fixed backoff (with the default backoff, the harness
/// then takes the store's jittered time, checked against its bounds), or failed for good.
fn fail_attempt(m: &mut MJob, now: u64, error: &str) {
    m.last_error = Some(error.to_owned());
    if m.attempts >= m.max_attempts {
        finish(m, JobState::Failed, now);
    } else {
        m.state = JobState::Failed;
        m.next_attempt_at = Some(now + BACKOFF_MS);
        m.lease_expires_at = None;
        m.updated_at = now;
    }
}

/// The error of a job whose process stopped while it ran.
pub const PROCESS_STOPPED: &str = "the process running it stopped";

/// A job claimed by a process that is gone: due at once (its run_at as it was) with its
/// attempt counted, unless its last
/// attempt ended so too or its attempts are spent (a failed attempt then).
fn abandon(m: &mut MJob, now: u64) {
    if m.last_error.as_deref() == Some(PROCESS_STOPPED) || m.attempts >= m.max_attempts {
        fail_attempt(m, now, PROCESS_STOPPED);
        return;
    }
    m.last_error = Some(PROCESS_STOPPED.to_owned());
    m.state = JobState::Pending;
    m.lease_expires_at = None;
    m.updated_at = now;
}

fn check_eq<T: PartialEq + std::fmt::Debug>(what: &str, got: T, want: T) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("{what}: store has {got:?}, model has {want:?}"))
    }
}
