//! Crash tests with real process death: a child process runs an executor (or enqueues batches)
//! on a real database file and is killed with SIGKILL at random moments, then restarted, until
//! the work is done. `QUERN_CRASH_KILLS` sets the number of kills (default 12 per test);
//! `QUERN_CRASH_SEED` replays a run. The worker's jobs are on ordered keys: no key's jobs may
//! start out of order across the kills.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use quern::{Executor, Filter, JobState, NewJob, Outcome, Store};

const BATCH: usize = 500;

/// The ordered concurrency keys the worker test's jobs are spread over.
const ORDERED_KEYS: u64 = 16;

/// Jobs for the worker test: enough work that every kill lands mid-work.
fn job_count() -> u64 {
    170 * u64::from(kills())
}

fn kills() -> u32 {
    std::env::var("QUERN_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12)
}

/// xorshift64*, seeded from the clock unless `QUERN_CRASH_SEED` says otherwise.
struct Rng(u64);

impl Rng {
    fn new() -> Self {
        let seed = std::env::var("QUERN_CRASH_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        eprintln!("crash test seed: QUERN_CRASH_SEED={seed}");
        Rng(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

fn open(db: &Path) -> Store {
    Store::builder()
        .lease_ttl(Duration::from_millis(300))
        .backoff(quern::Backoff::fixed(Duration::from_millis(10)))
        .open(db)
        .unwrap()
}

/// Runs this test binary again as the child `role` of `test`.
fn spawn_child(test: &str, role: &str, db: &Path, log: &Path) -> Child {
    spawn_run(test, role, db, log, 0)
}

/// As [`spawn_child`], telling the child its run number (`QUERN_CRASH_RUN`), which names its
/// work where process ids could repeat over many runs.
fn spawn_run(test: &str, role: &str, db: &Path, log: &Path, run: u32) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env("QUERN_CRASH_CHILD", role)
        .env("QUERN_CRASH_RUN", run.to_string())
        .env("QUERN_CRASH_DB", db)
        .env("QUERN_CRASH_LOG", log)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

fn child_role() -> Option<(String, PathBuf, PathBuf)> {
    let role = std::env::var("QUERN_CRASH_CHILD").ok()?;
    let db = std::env::var_os("QUERN_CRASH_DB")?.into();
    let log = std::env::var_os("QUERN_CRASH_LOG")?.into();
    Some((role, db, log))
}

/// The worker child: runs every job, logging each run's start and end in an append-only file.
fn worker_child(db: &Path, log: &Path) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let store = open(db);
    let log = std::sync::Arc::new(parking_lot::Mutex::new(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap(),
    ));
    let pid = std::process::id();
    let _guard = rt.enter();
    let handle = Executor::builder(store.clone())
        .queue("crash")
        .concurrency(4)
        .channel_capacity(8)
        .spawn(move |ctx| {
            let log = log.clone();
            let (id, attempt) = (ctx.job().id.0, ctx.job().attempts);
            async move {
                // One write per line: a kill cannot cut a line in two (`writeln!` on a
                // `File` may write each piece separately).
                let line = |kind: &str| format!("{kind} {id} {attempt} {pid}\n");
                log.lock().write_all(line("start").as_bytes()).unwrap();
                tokio::time::sleep(Duration::from_millis(1 + id % 3)).await;
                log.lock().write_all(line("end").as_bytes()).unwrap();
                Outcome::Success
            }
        })
        .unwrap();
    loop {
        // Read before the check, so that a commit landing after it wakes the wait.
        let seen = store.generation();
        let q = store
            .stats()
            .unwrap()
            .queue("crash")
            .cloned()
            .unwrap_or_default();
        if q.pending + q.in_progress + q.retrying == 0 {
            break;
        }
        // Every job's end is a commit of this process; the timeout only bounds a wait for a
        // retry coming due, which commits nothing until the claimer promotes it.
        store.wait_for_change(seen, Duration::from_millis(100));
    }
    rt.block_on(handle.shutdown(Duration::from_secs(5)))
        .unwrap();
}

/// The enqueuing child: writes batches tagged with its run number and their number until
/// killed, logging each batch once `enqueue_batch` has returned (acknowledged).
fn enqueue_child(db: &Path, log: &Path) {
    let store = open(db);
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let run: u32 = std::env::var("QUERN_CRASH_RUN").unwrap().parse().unwrap();
    for batch in 0.. {
        store
            .enqueue_batch((0..BATCH).map(|i| NewJob::new("batches", format!("{run}:{batch}:{i}"))))
            .unwrap();
        log.write_all(format!("{run}:{batch}\n").as_bytes())
            .unwrap();
    }
}

#[test]
fn killed_workers_lose_no_job_and_never_run_one_twice_at_once() {
    if let Some((role, db, log)) = child_role() {
        if role == "worker" {
            worker_child(&db, &log);
        }
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crash.redb");
    let log = dir.path().join("runs.log");
    open(&db)
        .enqueue_batch((0..job_count()).map(|i| {
            NewJob::new("crash", format!("{i}"))
                .max_attempts(1_000)
                .concurrency_key(format!("k{}", i % ORDERED_KEYS))
                .ordered()
                // Priority against id order: the order must come from the key.
                .priority((i % 5) as i32)
        }))
        .unwrap();
    let mut rng = Rng::new();
    let mut killed = HashSet::new();
    let test = "killed_workers_lose_no_job_and_never_run_one_twice_at_once";
    // Kill children mid-work until the kills are spent or a child finishes the work.
    while killed.len() < kills() as usize {
        let logged = std::fs::metadata(&log).map_or(0, |m| m.len());
        let mut child = spawn_child(test, "worker", &db, &log);
        // Kill at a random moment once the child is at work (it logged a run), so that the
        // kills land mid-work even on a loaded machine where a child is slow to start.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::metadata(&log).map_or(0, |m| m.len()) == logged
            && Instant::now() < deadline
            && child.try_wait().unwrap().is_none()
        {
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_millis(rng.below(400)));
        let pid = child.id();
        if let Some(status) = child.try_wait().unwrap() {
            // A child that ended before its kill must have finished the work, not failed.
            assert!(status.success(), "a worker child failed: {status}");
            let q = open(&db).stats().unwrap().queue("crash").cloned().unwrap();
            assert_eq!(
                q.pending + q.in_progress + q.retrying,
                0,
                "a child ended saying the work was done, but it is not: {q:?}"
            );
            break;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        killed.insert(pid);
    }
    let started = Instant::now();
    let mut child = spawn_child(test, "worker", &db, &log);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "the final run failed: {status}");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the final run did not finish"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let store = open(&db);
    let jobs = store.list(&Filter::default().queue("crash")).unwrap();
    assert_eq!(jobs.len() as u64, job_count(), "no job was lost");
    assert!(
        jobs.iter().all(|j| j.state == JobState::Succeeded),
        "every job succeeded"
    );
    assert_eq!(store.check().unwrap(), [], "the database is consistent");

    // Runs per job, in log order: (attempt, pid, ended).
    let mut runs: BTreeMap<u64, Vec<(u32, u32, bool)>> = BTreeMap::new();
    let key_of: BTreeMap<u64, String> = jobs
        .iter()
        .map(|j| (j.id.0, j.concurrency_key.clone().unwrap()))
        .collect();
    // Per ordered key, the jobs whose run reached its end so far, in log order.
    let mut ended: BTreeMap<&str, HashSet<u64>> = BTreeMap::new();
    for line in std::fs::read_to_string(&log).unwrap().lines() {
        let parts: Vec<&str> = line.split(' ').collect();
        let [kind, id, attempt, pid] = parts[..] else {
            // A line cut by a kill.
            continue;
        };
        let (Ok(id), Ok(attempt), Ok(pid)) = (id.parse(), attempt.parse(), pid.parse()) else {
            continue;
        };
        let job = runs.entry(id).or_default();
        let key = key_of[&id].as_str();
        match kind {
            "start" => {
                // The order guarantee: every earlier job of its key ran to its end first.
                let done = ended.entry(key).or_default();
                if let Some(earlier) = key_of
                    .range(..id)
                    .find(|(e, k)| k.as_str() == key && !done.contains(e))
                {
                    panic!(
                        "job {id} of key {key} started before job {} ended",
                        earlier.0
                    );
                }
                assert!(
                    !job.iter().any(|&(_, p, ended)| p == pid && !ended),
                    "job {id} started twice at once in process {pid}"
                );
                job.push((attempt, pid, false));
            }
            "end" => {
                if let Some(run) = job.iter_mut().rev().find(|r| r.1 == pid && r.0 == attempt) {
                    run.2 = true;
                }
                ended.entry(key).or_default().insert(id);
            }
            _ => {}
        }
    }
    let reruns = runs.values().filter(|r| r.len() > 1).count();
    let cut = runs.values().flatten().filter(|r| !r.2).count();
    let working: HashSet<u32> = runs.values().flatten().map(|r| r.1).collect();
    let killed_working = working.intersection(&killed).count();
    eprintln!(
        "{} kills ({killed_working} while running jobs); {cut} runs cut short by a kill; \
         {reruns} jobs ran more than once",
        killed.len(),
    );
    assert!(
        killed_working >= 3,
        "too few kills landed mid-work: {killed_working}"
    );
    assert!(cut >= 1, "no kill cut a running job short");
    for job in &jobs {
        let r = runs.get(&job.id.0).map_or(&[][..], Vec::as_slice);
        assert!(
            !r.is_empty(),
            "job {} succeeded without a logged run",
            job.id
        );
        assert!(
            r.len() as u32 <= job.attempts,
            "job {} ran {} times but counts {} attempts",
            job.id,
            r.len(),
            job.attempts
        );
        for (attempt, pid, _) in &r[..r.len() - 1] {
            assert!(
                killed.contains(pid),
                "job {} ran again after attempt {attempt} in process {pid}, which was not killed",
                job.id
            );
        }
        // Its success is its last run's: that run reached its end. So every run a kill cut
        // short, never the last, was run again.
        let (attempt, pid, ended) = r[r.len() - 1];
        assert!(
            ended,
            "job {} succeeded, but its last run (attempt {attempt}, process {pid}) never reached its end",
            job.id
        );
    }
}

#[test]
fn a_batch_enqueue_killed_midway_is_there_whole_or_not_at_all() {
    if let Some((role, db, log)) = child_role() {
        if role == "enqueue" {
            enqueue_child(&db, &log);
        }
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("batches.redb");
    let log = dir.path().join("batches.log");
    drop(open(&db));
    let mut rng = Rng::new();
    let test = "a_batch_enqueue_killed_midway_is_there_whole_or_not_at_all";
    for run in 0..kills() {
        let logged = std::fs::metadata(&log).map_or(0, |m| m.len());
        let mut child = spawn_run(test, "enqueue", &db, &log, run);
        // Killed at a random moment once it has written a batch, so that each kill lands
        // mid-stream.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::metadata(&log).map_or(0, |m| m.len()) == logged {
            assert!(
                child.try_wait().unwrap().is_none(),
                "an enqueuing child ended by itself"
            );
            assert!(Instant::now() < deadline, "no batch was acknowledged");
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(rng.below(50)));
        assert!(
            child.try_wait().unwrap().is_none(),
            "an enqueuing child ended by itself"
        );
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let store = open(&db);
    // Jobs per (run, batch).
    let mut per_batch: BTreeMap<(u32, u64), usize> = BTreeMap::new();
    for job in store.list(&Filter::default()).unwrap() {
        let payload = String::from_utf8(job.payload).unwrap();
        let mut parts = payload.split(':').map(|p| p.parse::<u64>().unwrap());
        let (run, batch) = (parts.next().unwrap(), parts.next().unwrap());
        *per_batch.entry((run as u32, batch)).or_default() += 1;
    }
    for ((run, batch), n) in &per_batch {
        assert_eq!(
            *n, BATCH,
            "run {run}'s batch {batch} has {n} of {BATCH} jobs"
        );
    }
    let mut acknowledged = 0;
    for line in std::fs::read_to_string(&log).unwrap().lines() {
        let Some((run, batch)) = line.split_once(':') else {
            continue;
        };
        let (Ok(run), Ok(batch)) = (run.parse::<u32>(), batch.parse::<u64>()) else {
            // A line cut by a kill.
            continue;
        };
        acknowledged += 1;
        assert!(
            per_batch.contains_key(&(run, batch)),
            "run {run}'s batch {batch} was acknowledged but is not there"
        );
    }
    eprintln!(
        "{} whole batches, {acknowledged} of them acknowledged, over {} killed runs",
        per_batch.len(),
        kills()
    );
    assert!(
        acknowledged >= kills() as usize,
        "each run acknowledged a batch"
    );
    assert_eq!(store.check().unwrap(), []);
}

/// The lease of the restart test: far longer than the test may take, so that only recovery at
/// restart, never an expiry, can run the dead process's jobs again.
const LONG_LEASE: Duration = Duration::from_secs(3_600);

fn open_long_lease(db: &Path) -> Store {
    Store::builder().lease_ttl(LONG_LEASE).open(db).unwrap()
}

/// The holding child: claims jobs and runs each forever, logging each start, until killed.
fn holding_child(db: &Path, log: &Path) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = open_long_lease(db);
    let log = std::sync::Arc::new(parking_lot::Mutex::new(
        std::fs::OpenOptions::new().append(true).open(log).unwrap(),
    ));
    let _guard = rt.enter();
    let _handle = Executor::builder(store)
        .queue("held")
        .concurrency(4)
        .channel_capacity(4)
        .spawn(move |ctx| {
            let line = format!("start {}\n", ctx.job().id.0);
            log.lock().write_all(line.as_bytes()).unwrap();
            std::future::pending()
        })
        .unwrap();
    rt.block_on(std::future::pending::<()>());
}

#[test]
fn a_restart_after_sigkill_runs_the_dead_process_jobs_at_once_not_after_their_leases() {
    if let Some((role, db, log)) = child_role() {
        if role == "hold" {
            holding_child(&db, &log);
        }
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("restart.redb");
    let log = dir.path().join("starts.log");
    std::fs::write(&log, "").unwrap();
    let ids: Vec<_> = {
        let store = open_long_lease(&db);
        (0..4)
            .map(
                |i| match store.enqueue(NewJob::new("held", format!("{i}"))).unwrap() {
                    quern::Enqueued::Created(id) => id,
                    other => panic!("{other:?}"),
                },
            )
            .collect()
    };
    let test = "a_restart_after_sigkill_runs_the_dead_process_jobs_at_once_not_after_their_leases";
    let mut child = spawn_child(test, "hold", &db, &log);
    // The child's starts are the event: each is logged after its claim committed.
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read_to_string(&log).unwrap().lines().count() < ids.len() {
        assert!(
            Instant::now() < deadline,
            "the child did not start its jobs"
        );
        assert!(child.try_wait().unwrap().is_none(), "the child exited");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();

    let restarted = Instant::now();
    let store = open_long_lease(&db);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _guard = rt.enter();
    let handle = Executor::builder(store.clone())
        .queue("held")
        .concurrency(4)
        .spawn(|_ctx| async { Outcome::Success })
        .unwrap();
    let done = || {
        ids.iter()
            .all(|&id| store.get(id).unwrap().unwrap().state == JobState::Succeeded)
    };
    let deadline = restarted + Duration::from_secs(20);
    while !done() {
        assert!(
            Instant::now() < deadline,
            "the dead process's jobs did not run again within 20 s of the restart (their leases \
             last an hour)"
        );
        let seen = store.generation();
        if !done() {
            store.wait_for_change(seen, Duration::from_millis(100));
        }
    }
    eprintln!(
        "the dead process's jobs ran again {:?} after the restart",
        restarted.elapsed()
    );
    for &id in &ids {
        let job = store.get(id).unwrap().unwrap();
        assert_eq!(job.attempts, 2, "job {id}: the killed attempt counted");
    }
    rt.block_on(handle.shutdown(Duration::from_secs(5)))
        .unwrap();
    assert_eq!(store.check().unwrap(), []);
}
