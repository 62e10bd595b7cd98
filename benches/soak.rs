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

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use quern::{Executor, NewJob, Outcome, Retention, Store};

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

fn main() {
    let secs = env_u64("QUERN_SOAK_SECS", 180);
    let rate = env_u64("QUERN_SOAK_RATE", 10_000);
    let window = Duration::from_secs(env_u64("QUERN_SOAK_WINDOW_SECS", 10).max(1));
    let keep = Duration::from_secs(env_u64("QUERN_SOAK_RETENTION_SECS", 10));
    let concurrency = env_u64("QUERN_SOAK_CONCURRENCY", 16) as usize;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("soak.redb");
    let store = Store::open(&path).expect("open");
    let base = Instant::now();
    // Enqueue-to-start latencies of the jobs started in the current window, in µs.
    let started: Arc<Mutex<Vec<u64>>> = Arc::default();
    let completed = Arc::new(AtomicU64::new(0));
    let handle = {
        let _guard = rt.enter();
        let (started, completed) = (started.clone(), completed.clone());
        Executor::builder(store.clone())
            .queue("soak")
            .concurrency(concurrency)
            .retention(Some(Retention {
                succeeded: keep,
                ..Retention::default()
            }))
            .spawn(move |ctx| {
                let at = ctx
                    .payload()
                    .try_into()
                    .map(u64::from_le_bytes)
                    .unwrap_or(0);
                let waited = (base.elapsed().as_micros() as u64).saturating_sub(at);
                started.lock().push(waited);
                let completed = completed.clone();
                async move {
                    completed.fetch_add(1, Ordering::Relaxed);
                    Outcome::Success
                }
            })
            .expect("spawn")
    };
    let stop = Arc::new(AtomicBool::new(false));
    let enqueued = Arc::new(AtomicU64::new(0));
    let producer = {
        let (store, stop, enqueued) = (store.clone(), stop.clone(), enqueued.clone());
        std::thread::spawn(move || {
            let per_tick = (rate / 100).max(1);
            let mut next = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                let at = (base.elapsed().as_micros() as u64).to_le_bytes();
                store
                    .enqueue_batch((0..per_tick).map(|_| NewJob::new("soak", at.to_vec())))
                    .expect("enqueue");
                enqueued.fetch_add(per_tick, Ordering::Relaxed);
                next += Duration::from_millis(10);
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
        })
    };
    println!(
        "soak: {rate} jobs/s for {secs} s, windows of {} s, succeeded jobs kept {} s, \
         concurrency {concurrency}",
        window.as_secs(),
        keep.as_secs()
    );
    println!(
        "{:>6} {:>8} {:>9} {:>9} {:>12} {:>10} {:>10}",
        "t (s)", "RSS MiB", "file MiB", "backlog", "completed/s", "p50 ms", "p99 ms"
    );
    let mut p99s = Vec::new();
    let mut last_completed = 0;
    let end = base + Duration::from_secs(secs);
    let mut tick = base;
    while tick + window <= end {
        tick += window;
        std::thread::sleep(tick.saturating_duration_since(Instant::now()));
        let mut latencies = std::mem::take(&mut *started.lock());
        latencies.sort_unstable();
        let done = completed.load(Ordering::Relaxed);
        let backlog = enqueued.load(Ordering::Relaxed).saturating_sub(done);
        let file = std::fs::metadata(&path).map_or(0, |m| m.len()) / (1024 * 1024);
        let (p50, p99) = (quantile_ms(&latencies, 0.5), quantile_ms(&latencies, 0.99));
        println!(
            "{:>6} {:>8} {:>9} {:>9} {:>12.0} {:>10.2} {:>10.2}",
            base.elapsed().as_secs(),
            rss_mib(),
            file,
            backlog,
            (done - last_completed) as f64 / window.as_secs_f64(),
            p50,
            p99
        );
        last_completed = done;
        p99s.push(p99);
    }
    stop.store(true, Ordering::Relaxed);
    producer.join().expect("producer");
    rt.block_on(handle.shutdown(Duration::from_secs(10)))
        .expect("shutdown");
    let mut sorted = p99s.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted.get(sorted.len() / 2).copied().unwrap_or(0.0);
    let worst = sorted.last().copied().unwrap_or(0.0);
    println!(
        "summary: {} windows; p99 median {median:.2} ms, worst {worst:.2} ms ({:.1}x the median); \
         {} jobs enqueued, {} completed",
        p99s.len(),
        if median > 0.0 { worst / median } else { 0.0 },
        enqueued.load(Ordering::Relaxed),
        completed.load(Ordering::Relaxed)
    );
    store.close();
}
