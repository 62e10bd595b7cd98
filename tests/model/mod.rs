//! A reference model of quern's state machine: plain Rust, a map of jobs, no storage. Model
//! tests (proptest) and the fuzzer run the same operations against the store and this model
//! and compare them after every step.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use quern::{
    Backoff, Clock, Enqueued, Error, Filter, JobId, JobState, Lease, ManualClock, NewJob, Store,
    Timestamp,
};

pub const QUEUES: [&str; 2] = ["a", "b"];
pub const TTL_MS: u64 = 30_000;
pub const BACKOFF_MS: u64 = 10_000;

/// One generated operation. Indexes pick among jobs and held leases modulo their count.
#[derive(Debug, Clone)]
pub enum Op {
    Enqueue(Spec),
    EnqueueBatch(Vec<Spec>),
    Claim { queue: u8, n: u8 },
    Complete { lease: u8 },
    Fail { lease: u8 },
    Discard { lease: u8 },
    Snooze { lease: u8, secs: u8 },
    Heartbeat { lease: u8 },
    Advance { secs: u16 },
    PromoteDue,
    RecoverExpired,
    Retry { job: u8 },
    Cancel { job: u8 },
    Prune { secs: u16 },
    Reopen,
}

#[derive(Debug, Clone)]
pub struct Spec {
    pub queue: u8,
    pub priority: i8,
    pub delay_secs: u8,
    pub max_attempts: u8,
    pub unique: Option<u8>,
    pub ckey: Option<u8>,
}

impl Spec {
    fn new_job(&self) -> NewJob {
        let mut job = NewJob::new(QUEUES[usize::from(self.queue) % 2], vec![self.queue])
            .priority(i32::from(self.priority))
            .delay(Duration::from_secs(u64::from(self.delay_secs)))
            .max_attempts(u32::from(self.max_attempts).max(1));
        if let Some(u) = self.unique {
            job = job.unique_key(format!("u{}", u % 4));
        }
        if let Some(c) = self.ckey {
            job = job.concurrency_key(format!("c{}", c % 3));
        }
        job
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
}

fn open(dir: &tempfile::TempDir, clock: &ManualClock) -> Store {
    Store::builder()
        .clock(Arc::new(clock.clone()))
        .lease_ttl(Duration::from_millis(TTL_MS))
        .backoff(Backoff::fixed(Duration::from_millis(BACKOFF_MS)))
        .open(dir.path().join("model.redb"))
        .expect("open store")
}

impl Harness {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = ManualClock::new(Timestamp(1_000_000));
        let store = open(&dir, &clock);
        Harness {
            dir,
            clock,
            store: Some(store),
            jobs: BTreeMap::new(),
            leases: Vec::new(),
            next_id: 1,
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
                let got = self
                    .store()
                    .enqueue(spec.new_job())
                    .map_err(|e| e.to_string())?;
                let want = self.model_enqueue(spec);
                check_eq("enqueue outcome", got, want)?;
            }
            Op::EnqueueBatch(specs) => {
                let got = self
                    .store()
                    .enqueue_batch(specs.iter().map(Spec::new_job))
                    .map_err(|e| e.to_string())?;
                let want: Vec<Enqueued> = specs.iter().map(|s| self.model_enqueue(s)).collect();
                check_eq("enqueue_batch outcomes", got, want)?;
            }
            Op::Claim { queue, n } => {
                let queue = QUEUES[usize::from(*queue) % 2];
                let n = usize::from(*n % 5);
                let claimed = self.store().claim(queue, n).map_err(|e| e.to_string())?;
                let want = self.model_claim(queue, n);
                let got: Vec<u64> = claimed.iter().map(|c| c.job.id.0).collect();
                check_eq("claimed ids", &got, &want)?;
                for c in claimed {
                    if let Some(m) = self.jobs.get_mut(&c.job.id.0) {
                        m.token = c.lease.token();
                    }
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
                    self.jobs.get_mut(&id).expect("job").lease_expires_at = Some(now + TTL_MS);
                }
            }
            Op::Advance { secs } => self.clock.advance(Duration::from_secs(u64::from(*secs))),
            Op::PromoteDue => {
                let got = self.store().promote_due().map_err(|e| e.to_string())?;
                let now = self.now();
                let mut want = 0;
                for m in self.jobs.values_mut() {
                    if m.state == JobState::Failed && m.next_attempt_at.is_some_and(|t| t <= now) {
                        m.state = JobState::Pending;
                        m.run_at = m.next_attempt_at.take().expect("due");
                        want += 1;
                    }
                }
                check_eq("promoted", got, want)?;
            }
            Op::RecoverExpired => {
                let got = self.store().recover_expired().map_err(|e| e.to_string())?;
                let now = self.now();
                let mut want = 0;
                for m in self.jobs.values_mut() {
                    if m.state == JobState::InProgress
                        && m.lease_expires_at.is_some_and(|t| t <= now)
                    {
                        fail_attempt(m, now, "lease expired");
                        want += 1;
                    }
                }
                check_eq("recovered", got, want)?;
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
            Op::Reopen => {
                drop(self.store.take());
                self.store = Some(open(&self.dir, &self.clock));
            }
        }
        self.compare()
    }

    fn model_enqueue(&mut self, spec: &Spec) -> Enqueued {
        let job = spec.new_job();
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
                run_at: now + u64::from(spec.delay_secs) * 1_000,
                next_attempt_at: None,
                last_error: None,
                unique_key: unique,
                ckey: spec.ckey.map(|c| format!("c{}", c % 3)),
                token: 0,
                lease_expires_at: None,
                finished_at: None,
                manual_retries: 0,
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

    /// The store and the model agree on every job, on the set of jobs, and on the counts; at
    /// most one job per (queue, concurrency key) is in progress.
    pub fn compare(&self) -> Result<(), String> {
        let store = self.store();
        let listed: Vec<u64> = store
            .list(&Filter::default())
            .map_err(|e| e.to_string())?
            .iter()
            .map(|j| j.id.0)
            .collect();
        let modeled: Vec<u64> = self.jobs.keys().copied().collect();
        check_eq("job ids", &listed, &modeled)?;
        for (id, m) in &self.jobs {
            let j = store
                .get(JobId(*id))
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("job {id} missing"))?;
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
                j.finished_at.map(|t| t.0),
                j.manual_retries,
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
                m.finished_at,
                m.manual_retries,
            );
            check_eq(&format!("job {id}"), got, want)?;
            if m.attempts > m.max_attempts {
                return Err(format!(
                    "job {id} has {} attempts of {}",
                    m.attempts, m.max_attempts
                ));
            }
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
        let mut running = std::collections::HashSet::new();
        for m in self.jobs.values() {
            if m.state == JobState::InProgress
                && let Some(k) = &m.ckey
                && !running.insert((m.queue.clone(), k.clone()))
            {
                return Err(format!("two jobs of {}/{k} in progress", m.queue));
            }
        }
        Ok(())
    }
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
}

fn fail_attempt(m: &mut MJob, now: u64, error: &str) {
    m.last_error = Some(error.to_owned());
    if m.attempts >= m.max_attempts {
        finish(m, JobState::Failed, now);
    } else {
        m.state = JobState::Failed;
        m.next_attempt_at = Some(now + BACKOFF_MS);
        m.lease_expires_at = None;
    }
}

fn check_eq<T: PartialEq + std::fmt::Debug>(what: &str, got: T, want: T) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("{what}: store has {got:?}, model has {want:?}"))
    }
}
