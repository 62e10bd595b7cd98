//! A reference model of quern's state machine: plain Rust, a map of jobs, no storage. Model
//! tests (proptest) and the fuzzer run the same operations against the store and this model
//! and compare them after every step.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use quern::{
    Backoff, Clock, Enqueued, Error, Filter, Job, JobId, JobState, Lease, MAX_PAYLOAD, ManualClock,
    NewJob, Retention, Store, Timestamp,
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
}

impl Spec {
    fn payload(&self) -> Vec<u8> {
        let fill = b'a' + self.queue % 2;
        match self.payload % 4 {
            0 => vec![self.queue],
            1 => vec![fill; 1024],
            2 => vec![fill; 1025],
            _ => vec![fill; MAX_PAYLOAD],
        }
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
        if let Some(u) = self.unique {
            job = job.unique_key(format!("u{}", u % 4));
        }
        if let Some(c) = self.ckey {
            job = job.concurrency_key(format!("c{}", c % 3));
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
}

impl MJob {
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
    /// Whether the store retries with the default backoff (jittered), whose delays the model
    /// checks against their bounds; otherwise a fixed [`BACKOFF_MS`].
    pub jitter: bool,
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
            jitter,
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
                match (m.live(), got) {
                    (true, Ok(())) => {
                        m.last_error = Some("cancelled".into());
                        finish(m, JobState::Failed, now);
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
                self.store = Some(open(&self.dir, &self.clock, self.jitter));
            }
        }
        self.compare()
    }

    fn model_enqueue(&mut self, spec: &Spec) -> Enqueued {
        let job = spec.new_job(self.now());
        let queue = job.queue_name().to_owned();
        let unique = spec.unique.map(|u| format!("u{}", u % 4));
        if let Some(u) = &unique
            && let Some((id, _)) = self
                .jobs
                .iter()
                .find(|(_, m)| m.live() && m.queue == queue && m.unique_key.as_ref() == Some(u))
        {
            return Enqueued::Duplicate(JobId(*id));
        }
        let id = self.next_id;
        self.next_id += 1;
        let now = self.now();
        self.jobs.insert(
            id,
            MJob {
                queue,
                state: JobState::Pending,
                priority: i32::from(spec.priority),
                attempts: 0,
                max_attempts: u32::from(spec.max_attempts).max(1),
                run_at: spec.run_at(now),
                next_attempt_at: None,
                last_error: None,
                unique_key: unique,
                ckey: spec.ckey.map(|c| format!("c{}", c % 3)),
                token: 0,
                lease_expires_at: None,
                finished_at: None,
                manual_retries: 0,
                payload: spec.payload(),
                progress: None,
                timeout: spec.timeout_secs.map(|t| Duration::from_secs(u64::from(t))),
                created_at: now,
                updated_at: now,
            },
        );
        Enqueued::Created(JobId(id))
    }

    fn model_claim(&mut self, queue: &str, n: usize) -> Vec<u64> {
        let now = self.now();
        let mut due: Vec<(i32, u64, u64)> = self
            .jobs
            .iter()
            .filter(|(_, m)| m.queue == queue && m.state == JobState::Pending && m.run_at <= now)
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
                self.jobs.values().any(|o| {
                    o.state == JobState::InProgress
                        && o.queue == queue
                        && o.ckey.as_ref() == Some(k)
                })
            });
            if busy {
                continue;
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
        if got < now + full / 2 || got > now + full {
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
        let mut running = std::collections::HashSet::new();
        for job in &listed {
            check_job(job, &self.jobs[&job.id.0])?;
            if job.attempts > job.max_attempts {
                return Err(format!(
                    "job {} has {} attempts of {}",
                    job.id, job.attempts, job.max_attempts
                ));
            }
            if job.state == JobState::InProgress
                && let Some(k) = &job.concurrency_key
                && !running.insert((job.queue.clone(), k.clone()))
            {
                return Err(format!("two jobs of {}/{k} in progress", job.queue));
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
        let problems = store.check().map_err(|e| e.to_string())?;
        if !problems.is_empty() {
            return Err(format!("check found {problems:?}"));
        }
        Ok(())
    }
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
        (j.created_at.0, j.updated_at.0),
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
        (m.created_at, m.updated_at),
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

fn check_eq<T: PartialEq + std::fmt::Debug>(what: &str, got: T, want: T) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("{what}: store has {got:?}, model has {want:?}"))
    }
}
