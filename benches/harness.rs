//! Whole-run figures for the README, measured in one run beside the disk's own limits:
//! `cargo bench --bench harness` (set `QUERN_HARNESS_JOBS` to change the drain size, default
//! 100,000).

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use quern::redb::{self, ConcurrencyMode, TableDefinition};
use quern::{Executor, NewJob, Outcome, Store};

const RAW: TableDefinition<u64, &[u8]> = TableDefinition::new("raw");

fn main() {
    let jobs: u64 = std::env::var("QUERN_HARNESS_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut rows: Vec<(String, String)> = Vec::new();
    let mut row = |name: &str, value: String| {
        println!("{name:<48} {value}");
        rows.push((name.to_owned(), value));
    };

    let fsyncs = fsync_rate(2_000);
    row("raw file: write + fsync", format!("{fsyncs:.0} /s"));
    let raw = raw_commit_rate(ConcurrencyMode::SingleWriter, 2_000);
    row(
        "redb raw durable commit (shared mode)",
        format!("{raw:.0} /s"),
    );
    let raw_x = raw_commit_rate(ConcurrencyMode::ExclusiveWriter, 2_000);
    row(
        "redb raw durable commit (exclusive mode)",
        format!("{raw_x:.0} /s"),
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path().join("enqueue.redb")).expect("open");
    let single = rate(2_000, || {
        store.enqueue(NewJob::new("q", "x")).expect("enqueue");
    });
    row(
        "enqueue, one job per commit (shared mode)",
        format!("{single:.0} /s ({:.2} of raw)", single / raw),
    );
    drop(store);
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::builder()
        .exclusive(true)
        .open(dir.path().join("enqueue.redb"))
        .expect("open");
    let single_x = rate(2_000, || {
        store.enqueue(NewJob::new("q", "x")).expect("enqueue");
    });
    row(
        "enqueue, one job per commit (exclusive mode)",
        format!("{single_x:.0} /s ({:.2} of raw)", single_x / raw_x),
    );
    drop(store);

    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path().join("threads.redb")).expect("open");
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..16 {
            s.spawn(|| {
                for _ in 0..500 {
                    store.enqueue(NewJob::new("q", "x")).expect("enqueue");
                }
            });
        }
    });
    let threads = 8_000.0 / start.elapsed().as_secs_f64();
    row(
        "enqueue from 16 threads at once",
        format!("{threads:.0} jobs/s"),
    );
    let batch = rate(100, || {
        store
            .enqueue_batch((0..1_000).map(|_| NewJob::new("b", "x")))
            .expect("batch");
    }) * 1_000.0;
    row("enqueue_batch of 1,000", format!("{batch:.0} jobs/s"));
    drop(store);

    for concurrency in [1, 4, 16] {
        let per_sec = drain(&rt, jobs, concurrency);
        row(
            &format!("drain {jobs} no-op jobs, concurrency {concurrency}"),
            format!("{per_sec:.0} jobs/s"),
        );
    }

    let (p50, p99, max) = idle_latency(&rt, 1_000);
    row(
        "enqueue-to-start on an idle executor",
        format!("p50 {p50:?}  p99 {p99:?}  max {max:?}"),
    );
    row("peak RSS", format!("{} MiB", peak_rss_kib() / 1024));

    println!("\n| workload | figure |\n|---|---|");
    for (name, value) in rows_snapshot(&rows) {
        println!("| {name} | {value} |");
    }
}

fn rows_snapshot(rows: &[(String, String)]) -> Vec<(String, String)> {
    rows.to_vec()
}

fn rate(n: u64, mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    for _ in 0..n {
        f();
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn fsync_rate(n: u64) -> f64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut file = std::fs::File::create(dir.path().join("fsync")).expect("file");
    rate(n, || {
        file.write_all(&[0u8; 64]).expect("write");
        file.sync_data().expect("fsync");
    })
}

fn raw_commit_rate(mode: ConcurrencyMode, n: u64) -> f64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = redb::Builder::new()
        .set_concurrency_mode(mode)
        .create(dir.path().join("raw.redb"))
        .expect("create");
    let mut i = 0u64;
    rate(n, || {
        let tx = db.begin_write().expect("begin");
        tx.open_table(RAW)
            .expect("table")
            .insert(i, [0u8; 16].as_slice())
            .expect("insert");
        tx.commit().expect("commit");
        i += 1;
    })
}

/// Jobs per second for `jobs` pre-enqueued no-op jobs drained at `concurrency`, from the
/// executor's start until every success is committed.
fn drain(rt: &tokio::runtime::Runtime, jobs: u64, concurrency: usize) -> f64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path().join("drain.redb")).expect("open");
    let mut left = jobs;
    while left > 0 {
        let n = left.min(10_000);
        store
            .enqueue_batch((0..n).map(|_| NewJob::new("q", "x")))
            .expect("prefill");
        left -= n;
    }
    let _guard = rt.enter();
    let ran = Arc::new(AtomicU64::new(0));
    let r = ran.clone();
    let start = Instant::now();
    let handle = Executor::builder(store.clone())
        .queue("q")
        .concurrency(concurrency)
        .channel_capacity((concurrency * 8).max(256))
        .spawn(move |_ctx| {
            r.fetch_add(1, Ordering::Relaxed);
            async { Outcome::Success }
        })
        .expect("spawn");
    loop {
        let succeeded = handle.metrics().succeeded;
        if succeeded >= jobs {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let elapsed = start.elapsed();
    rt.block_on(handle.shutdown(Duration::from_secs(10)))
        .expect("shutdown");
    jobs as f64 / elapsed.as_secs_f64()
}

/// Enqueue-to-start delays on an idle executor: from the call to enqueue until the handler
/// runs.
fn idle_latency(rt: &tokio::runtime::Runtime, samples: usize) -> (Duration, Duration, Duration) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path().join("latency.redb")).expect("open");
    let _guard = rt.enter();
    let (tx, rx) = std::sync::mpsc::channel::<Instant>();
    let tx = Arc::new(parking_lot::Mutex::new(tx));
    let handle = Executor::builder(store.clone())
        .queue("q")
        .concurrency(4)
        .spawn(move |_ctx| {
            let _ = tx.lock().send(Instant::now());
            async { Outcome::Success }
        })
        .expect("spawn");
    let mut delays = Vec::with_capacity(samples);
    for _ in 0..samples {
        let start = Instant::now();
        store.enqueue(NewJob::new("q", "x")).expect("enqueue");
        let started = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("job started");
        delays.push(started - start);
        // Let the success settle so the executor is idle before the next sample.
        while handle.metrics().succeeded < delays.len() as u64 {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    rt.block_on(handle.shutdown(Duration::from_secs(10)))
        .expect("shutdown");
    delays.sort();
    let at = |q: f64| delays[((delays.len() as f64 * q) as usize).min(delays.len() - 1)];
    (at(0.50), at(0.99), delays[delays.len() - 1])
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}
