//! A soak: a steady stream of enqueues into an executor for minutes, with retention deleting
//! what finished, printing per window the process's memory, the file's size, the backlog, the
//! jobs completed per second and the enqueue-to-start latency, so that a stall (housekeeping
//! holding the writer) or growth (memory, the file) shows in the window it happens.
//!
//! `cargo bench --bench soak`; knobs: `QUERN_SOAK_SECS` (default 180), `QUERN_SOAK_RATE` (jobs
//! per second, default 10,000, enqueued as a batch every 10 ms), `QUERN_SOAK_WINDOW_SECS`
//! (default 10), `QUERN_SOAK_RETENTION_SECS` (how long succeeded jobs are kept, default 10),
//! `QUERN_SOAK_CONCURRENCY` (default 16). The executor applies retention once a minute, as by
//! default.
//!
//! `QUERN_SOAK_RESTART=graceful` shuts the executor down halfway and starts a new one;
//! `QUERN_SOAK_RESTART=kill` runs the program (producer and executor) in a child process, kills
//! it with SIGKILL halfway and starts another on the same file: the windows around it show
//! what a restart costs (a killed process's claimed jobs run again when the next executor
//! starts, recovered at once rather than after their leases). The run ends by
//! draining the backlog and checking that no acknowledged job was lost.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use quern::{Executor, ExecutorHandle, NewJob, Outcome, Retention, Store};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace(['_', ','], "").parse().ok())
        .unwrap_or(default)
}

/// The resident set of this process, in MiB.
fn rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib / 1024)
}

/// The `q`-quantile of `sorted`, in ms.
fn quantile_ms(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i] as f64 / 1_000.0
}

/// Microseconds since the Unix epoch: the clock every process of a run shares, so that a job
/// enqueued by a killed process is timed by the one that starts it.
fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// One run's settings.
struct Soak {
    secs: u64,
    rate: u64,
    window: Duration,
    keep: Duration,
    concurrency: usize,
}

impl Soak {
    fn from_env() -> Soak {
        Soak {
            secs: env_u64("QUERN_SOAK_SECS", 180),
            rate: env_u64("QUERN_SOAK_RATE", 10_000),
            window: Duration::from_secs(env_u64("QUERN_SOAK_WINDOW_SECS", 10).max(1)),
            keep: Duration::from_secs(env_u64("QUERN_SOAK_RETENTION_SECS", 10)),
            concurrency: env_u64("QUERN_SOAK_CONCURRENCY", 16) as usize,
        }
    }
}

const HEADER: [&str; 8] = [
    "t (s)",
    "RSS MiB",
    "file MiB",
    "backlog",
    "completed/s",
    "p50 ms",
    "p99 ms",
    "max ms",
];

fn main() {
    let soak = Soak::from_env();
    if let Some(path) = std::env::var_os("QUERN_SOAK_CHILD_DB") {
        let start = env_u64("QUERN_SOAK_START_US", now_us());
        let until = env_u64("QUERN_SOAK_UNTIL_US", u64::MAX);
        let last = std::env::var_os("QUERN_SOAK_LAST").is_some();
        work(&soak, path.as_ref(), start, until, last, None);
        return;
    }
    let restart = std::env::var("QUERN_SOAK_RESTART").unwrap_or_default();
    println!(
        "soak: {} jobs/s for {} s, windows of {} s, succeeded jobs kept {} s, \
         concurrency {}{}",
        soak.rate,
        soak.secs,
        soak.window.as_secs(),
        soak.keep.as_secs(),
        soak.concurrency,
        match restart.as_str() {
            "graceful" => ", the executor restarted gracefully halfway",
            "kill" => ", the process killed with SIGKILL halfway and started again",
            _ => "",
        }
    );
    println!(
        "{:>6} {:>8} {:>9} {:>9} {:>12} {:>10} {:>10} {:>10}",
        HEADER[0], HEADER[1], HEADER[2], HEADER[3], HEADER[4], HEADER[5], HEADER[6], HEADER[7]
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("soak.redb");
    let start = now_us();
    let p99s = if restart == "kill" {
        killed_halfway(&soak, &path, start)
    } else {
        let halfway = (restart == "graceful").then(|| start + soak.secs * 500_000);
        work(&soak, &path, start, u64::MAX, true, halfway)
    };
    let mut sorted = p99s.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted.get(sorted.len() / 2).copied().unwrap_or(0.0);
    let worst = sorted.last().copied().unwrap_or(0.0);
    println!(
        "summary: {} windows; p99 median {median:.2} ms, worst {worst:.2} ms ({:.1}x the median)",
        p99s.len(),
        if median > 0.0 { worst / median } else { 0.0 },
    );
}

/// Runs the soak in a child process, kills it halfway, and runs the rest in another; returns
/// the p99 of every window both printed.
fn killed_halfway(soak: &Soak, path: &std::path::Path, start: u64) -> Vec<f64> {
    let halfway = start + soak.secs * 500_000;
    let mut p99s = Vec::new();
    for last in [false, true] {
        let mut child = Command::new(std::env::current_exe().expect("this program"))
            .env("QUERN_SOAK_CHILD_DB", path)
            .env("QUERN_SOAK_START_US", start.to_string())
            .env(
                "QUERN_SOAK_UNTIL_US",
                if last { u64::MAX } else { halfway }.to_string(),
            )
            .envs(last.then_some(("QUERN_SOAK_LAST", "1")))
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the soak's child");
        let stdout = child.stdout.take().expect("child stdout");
        let lines = std::thread::spawn(move || {
            let mut p99s = Vec::new();
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                println!("{line}");
                if let Some(p99) = line
                    .split_whitespace()
                    .nth(6)
                    .and_then(|v| v.parse::<f64>().ok())
                    .filter(|_| !line.starts_with("killed") && !line.starts_with("done"))
                {
                    p99s.push(p99);
                }
            }
            p99s
        });
        if last {
            let status = child.wait().expect("wait for the child");
            assert!(status.success(), "the soak's last child failed: {status}");
        } else {
            // Past its last window's line: the child goes on producing and working until the
            // kill.
            let kill_at = halfway + 500_000;
            std::thread::sleep(Duration::from_micros(kill_at.saturating_sub(now_us())));
            child.kill().expect("SIGKILL the child");
            child.wait().expect("reap the child");
            println!(
                "killed with SIGKILL at {} s",
                (now_us() - start) / 1_000_000
            );
        }
        p99s.extend(lines.join().expect("the child's output"));
    }
    p99s
}

/// Produces and works the soak's jobs on `path` from now until `until` (µs since the epoch) or
/// the end of the run, printing a line per window (times from `start`); the `last` process then
/// stops producing, drains the backlog and checks that no job was lost. `restart_at`: shut the
/// executor down then and start another (a graceful restart). Returns the windows' p99s.
fn work(
    soak: &Soak,
    path: &std::path::Path,
    start: u64,
    until: u64,
    last: bool,
    restart_at: Option<u64>,
) -> Vec<f64> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let store = Store::open(path).expect("open");
    // Enqueue-to-start latencies of the jobs started in the current window, in µs.
    let started: Arc<Mutex<Vec<u64>>> = Arc::default();
    let completed = Arc::new(AtomicU64::new(0));
    let spawn = || {
        let _guard = rt.enter();
        let (started, completed) = (started.clone(), completed.clone());
        Executor::builder(store.clone())
            .queue("soak")
            .concurrency(soak.concurrency)
            .retention(Some(Retention {
                succeeded: soak.keep,
                ..Retention::default()
            }))
            .spawn(move |ctx| {
                let at = ctx
                    .payload()
                    .try_into()
                    .map(u64::from_le_bytes)
                    .unwrap_or(0);
                started.lock().push(now_us().saturating_sub(at));
                let completed = completed.clone();
                async move {
                    completed.fetch_add(1, Ordering::Relaxed);
                    Outcome::Success
                }
            })
            .expect("spawn")
    };
    let mut handle: ExecutorHandle = spawn();
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let (store, stop, rate) = (store.clone(), stop.clone(), soak.rate);
        std::thread::spawn(move || {
            let per_tick = (rate / 100).max(1);
            let mut next = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                let at = now_us().to_le_bytes();
                store
                    .enqueue_batch((0..per_tick).map(|_| NewJob::new("soak", at.to_vec())))
                    .expect("enqueue");
                next += Duration::from_millis(10);
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
        })
    };
    let window_us = soak.window.as_micros() as u64;
    let end = start + soak.secs * 1_000_000;
    let mut restart_at = restart_at;
    let mut p99s = Vec::new();
    let mut last_completed = 0;
    // Windows on the run's clock: the first that ends after now.
    let mut tick = start + (now_us().saturating_sub(start) / window_us) * window_us;
    while tick + window_us <= end.min(until) {
        tick += window_us;
        loop {
            let now = now_us();
            if let Some(at) = restart_at.filter(|&at| at <= now) {
                restart_at = None;
                rt.block_on(handle.shutdown(Duration::from_secs(10)))
                    .expect("shutdown");
                handle = spawn();
                println!("restarted the executor at {} s", (at - start) / 1_000_000);
                continue;
            }
            let wake = restart_at.map_or(tick, |at| at.min(tick));
            if wake <= now {
                break;
            }
            std::thread::sleep(Duration::from_micros(wake - now));
        }
        let mut latencies = std::mem::take(&mut *started.lock());
        latencies.sort_unstable();
        let done = completed.load(Ordering::Relaxed);
        let backlog = store
            .stats()
            .expect("stats")
            .queue("soak")
            .map_or(0, |q| q.pending + q.in_progress + q.retrying);
        let file = std::fs::metadata(path).map_or(0, |m| m.len()) / (1024 * 1024);
        let (p50, p99) = (quantile_ms(&latencies, 0.5), quantile_ms(&latencies, 0.99));
        let max = quantile_ms(&latencies, 1.0);
        println!(
            "{:>6} {:>8} {:>9} {:>9} {:>12.0} {:>10.2} {:>10.2} {:>10.1}",
            (tick - start) / 1_000_000,
            rss_mib(),
            file,
            backlog,
            (done - last_completed) as f64 / soak.window.as_secs_f64(),
            p50,
            p99,
            max
        );
        last_completed = done;
        p99s.push(p99);
    }
    if !last {
        // Killed here by the driver; until then it keeps producing and working.
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    stop.store(true, Ordering::Relaxed);
    producer.join().expect("producer");
    // Drain: every acknowledged job runs (a killed process's claims after their leases).
    let drained = Instant::now();
    loop {
        let q = store
            .stats()
            .expect("stats")
            .queue("soak")
            .cloned()
            .unwrap_or_default();
        if q.pending + q.in_progress + q.retrying == 0 {
            assert_eq!(q.failed, 0, "a job failed");
            break;
        }
        assert!(
            drained.elapsed() < Duration::from_secs(120),
            "the backlog did not drain: {q:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    rt.block_on(handle.shutdown(Duration::from_secs(10)))
        .expect("shutdown");
    println!(
        "done: backlog drained in {:.1} s, nothing pending, running or failed",
        drained.elapsed().as_secs_f64()
    );
    store.close();
    p99s
}
