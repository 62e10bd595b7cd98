//! quern beside a peer: the same enqueue and drain workloads on quern and on
//! [effectum](https://crates.io/crates/effectum) (an SQLite-based Rust job queue), in one run, on
//! the same disk, and a markdown table of the figures and their ratios.
//!
//! ```text
//! cargo run --release --manifest-path benches/peer/Cargo.toml
//! ```
//!
//! This is its own cargo workspace (like `fuzz/`), so the main crate's `cargo test` and
//! `cargo bench` never build effectum and its bundled SQLite.
//!
//! Both sides are fully durable as shipped, with their defaults: quern's `Store::open` (redb,
//! fsync per commit, shared mode); effectum's `Queue::new` (SQLite with `synchronous=NORMAL`;
//! effectum 0.7 sets the pragma `journal`, not `journal_mode`, so SQLite stays in its rollback
//! journal mode, which syncs at every commit; the run prints which journal it saw). Databases
//! go in temporary directories under `target/` of this workspace, on the project's filesystem,
//! not in memory.
//!
//! Workloads, each run on both sides:
//! - enqueue one job per call (`QUERN_PEER_ENQUEUE`, default 2,000 calls);
//! - enqueue in batches of 100 and of 1,000 (quern `enqueue_batch`, effectum `add_jobs`);
//! - drain `QUERN_PEER_JOBS` (default 20,000) pre-enqueued no-op jobs at concurrency 1, 4 and
//!   16, from the executor's (worker's) start until every job is finished, both with their
//!   default settings;
//! - enqueue-to-start on an idle executor (worker) of concurrency 4: from the call to enqueue
//!   until the handler runs, one job at a time, `QUERN_PEER_SAMPLES` (default 500) samples.
//!
//! The ratio column is quern/effectum: above 1 quern is faster for throughputs; below 1 quern
//! is faster for latencies. One run, no assertions: the VM's disk varies between runs, so
//! compare rows of one run.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use effectum::{Job, JobRunner, Queue, RunningJob, Worker};
use quern::{Executor, NewJob, Outcome, Store};
use tokio::runtime::Runtime;

const JOB_TYPE: &str = "noop";

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace(['_', ','], "").parse().ok())
        .unwrap_or(default)
}

fn main() {
    let enqueue_n = env_u64("QUERN_PEER_ENQUEUE", 2_000);
    let jobs = env_u64("QUERN_PEER_JOBS", 20_000);
    let samples = env_u64("QUERN_PEER_SAMPLES", 500) as usize;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // effectum's queue must be dropped inside a runtime (its connection pool spawns on drop).
    let _guard = rt.enter();
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    std::fs::create_dir_all(&base).expect("target dir");
    let tmp = || tempfile::tempdir_in(&base).expect("tempdir");

    let mut table: Vec<Row> = Vec::new();
    let mut add = |row: Row| {
        println!(
            "{:<44} quern {:>14}   effectum {:>14}   ratio {}",
            row.name,
            row.quern_text(),
            row.effectum_text(),
            row.ratio_text()
        );
        table.push(row);
    };

    // Enqueue, one job per call.
    let q = {
        let dir = tmp();
        let store = Store::open(dir.path().join("q.redb")).expect("open");
        rate(enqueue_n, 1, || {
            store.enqueue(NewJob::new("q", "x")).expect("enqueue");
        })
    };
    let (e, journal) = {
        let dir = tmp();
        let path = dir.path().join("e.db");
        let queue = rt.block_on(Queue::new(&path)).expect("effectum queue");
        let per_sec = rt.block_on(async {
            let start = Instant::now();
            for _ in 0..enqueue_n {
                queue.add_job(effectum_job()).await.expect("add_job");
            }
            enqueue_n as f64 / start.elapsed().as_secs_f64()
        });
        let journal = journal_kind(&path);
        rt.block_on(queue.close(Duration::from_secs(10)))
            .expect("close");
        (per_sec, journal)
    };
    add(Row::throughput(
        format!("enqueue one job per call ({enqueue_n})"),
        "jobs/s",
        q,
        e,
    ));

    // Enqueue in batches.
    for (size, batches) in [(100u64, 100u64), (1_000, 20)] {
        let q = {
            let dir = tmp();
            let store = Store::open(dir.path().join("q.redb")).expect("open");
            rate(batches, size, || {
                store
                    .enqueue_batch((0..size).map(|_| NewJob::new("q", "x")))
                    .expect("batch");
            })
        };
        let e = {
            let dir = tmp();
            let queue = rt
                .block_on(Queue::new(&dir.path().join("e.db")))
                .expect("effectum queue");
            let per_sec = rt.block_on(async {
                let start = Instant::now();
                for _ in 0..batches {
                    let batch = (0..size).map(|_| effectum_job()).collect();
                    queue.add_jobs(batch).await.expect("add_jobs");
                }
                (batches * size) as f64 / start.elapsed().as_secs_f64()
            });
            rt.block_on(queue.close(Duration::from_secs(10)))
                .expect("close");
            per_sec
        };
        add(Row::throughput(
            format!("enqueue batches of {size} ({} jobs)", batches * size),
            "jobs/s",
            q,
            e,
        ));
    }

    // Drain pre-enqueued no-op jobs, each side with its defaults.
    for concurrency in [1u16, 4, 16] {
        let q = quern_drain(&rt, &tmp(), jobs, usize::from(concurrency));
        let e = effectum_drain(&rt, &tmp(), jobs, concurrency);
        add(Row::throughput(
            format!("drain {jobs} no-op jobs, concurrency {concurrency}"),
            "jobs/s",
            q,
            e,
        ));
    }

    // Enqueue-to-start on an idle executor.
    let q = quern_latency(&rt, &tmp(), samples);
    let e = effectum_latency(&rt, &tmp(), samples);
    for (what, i) in [("p50", 0), ("p99", 1), ("max", 2)] {
        add(Row::latency(
            format!("enqueue-to-start, idle, {what} ({samples} samples)"),
            q[i],
            e[i],
        ));
    }

    println!("\neffectum's SQLite journal seen during the run: {journal}");
    println!("\n| workload | quern | effectum | ratio (quern/effectum) |\n|---|---|---|---|");
    for row in &table {
        println!(
            "| {} | {} | {} | {} |",
            row.name,
            row.quern_text(),
            row.effectum_text(),
            row.ratio_text()
        );
    }
}

struct Row {
    name: String,
    unit: &'static str,
    quern: f64,
    effectum: f64,
    latency: bool,
}

impl Row {
    fn throughput(name: String, unit: &'static str, quern: f64, effectum: f64) -> Row {
        Row {
            name,
            unit,
            quern,
            effectum,
            latency: false,
        }
    }

    fn latency(name: String, quern: Duration, effectum: Duration) -> Row {
        Row {
            name,
            unit: "ms",
            quern: quern.as_secs_f64() * 1e3,
            effectum: effectum.as_secs_f64() * 1e3,
            latency: true,
        }
    }

    fn fmt(&self, v: f64) -> String {
        if self.latency {
            format!("{v:.2} {}", self.unit)
        } else {
            format!("{} {}", thousands(v), self.unit)
        }
    }

    fn quern_text(&self) -> String {
        self.fmt(self.quern)
    }

    fn effectum_text(&self) -> String {
        self.fmt(self.effectum)
    }

    fn ratio_text(&self) -> String {
        let r = self.quern / self.effectum;
        if self.latency {
            format!("{r:.2} (lower is better)")
        } else {
            format!("{r:.1}x")
        }
    }
}

fn thousands(v: f64) -> String {
    let s = format!("{:.0}", v);
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Calls per second of `f`, times `per_call` (jobs per call).
fn rate(calls: u64, per_call: u64, mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    for _ in 0..calls {
        f();
    }
    (calls * per_call) as f64 / start.elapsed().as_secs_f64()
}

fn effectum_job() -> Job {
    Job::builder(JOB_TYPE).payload(b"x".to_vec()).build()
}

async fn effectum_noop(_job: RunningJob, _ctx: ()) -> Result<(), String> {
    Ok(())
}

/// Which SQLite journal effectum's database uses: a `-wal` file beside it means WAL.
fn journal_kind(db: &Path) -> &'static str {
    let mut wal = PathBuf::from(db).into_os_string();
    wal.push("-wal");
    if Path::new(&wal).exists() {
        "WAL (e.db-wal present)"
    } else {
        "rollback journal (no e.db-wal file)"
    }
}

fn quern_prefill(store: &Store, jobs: u64) {
    let mut left = jobs;
    while left > 0 {
        let n = left.min(1_000);
        store
            .enqueue_batch((0..n).map(|_| NewJob::new("q", "x")))
            .expect("prefill");
        left -= n;
    }
}

/// Jobs per second for `jobs` pre-enqueued no-op jobs, from the executor's start until every
/// success is committed.
fn quern_drain(rt: &Runtime, dir: &tempfile::TempDir, jobs: u64, concurrency: usize) -> f64 {
    let store = Store::open(dir.path().join("q.redb")).expect("open");
    quern_prefill(&store, jobs);
    let _guard = rt.enter();
    let start = Instant::now();
    let handle = Executor::builder(store.clone())
        .queue("q")
        .concurrency(concurrency)
        .spawn(|_ctx| async { Outcome::Success })
        .expect("spawn");
    while handle.metrics().succeeded < jobs {
        std::thread::sleep(Duration::from_millis(1));
    }
    let elapsed = start.elapsed();
    rt.block_on(handle.shutdown(Duration::from_secs(10)))
        .expect("shutdown");
    jobs as f64 / elapsed.as_secs_f64()
}

/// Jobs per second for `jobs` pre-enqueued no-op jobs, from the worker's start until every job
/// is finished (effectum counts a job finished once its completion is written).
fn effectum_drain(rt: &Runtime, dir: &tempfile::TempDir, jobs: u64, concurrency: u16) -> f64 {
    let _guard = rt.enter();
    let queue = rt
        .block_on(Queue::new(&dir.path().join("e.db")))
        .expect("effectum queue");
    rt.block_on(async {
        let mut left = jobs;
        while left > 0 {
            let n = left.min(1_000);
            queue
                .add_jobs((0..n).map(|_| effectum_job()).collect())
                .await
                .expect("prefill");
            left -= n;
        }
    });
    let runner = JobRunner::builder(JOB_TYPE, effectum_noop).build();
    let start = Instant::now();
    let worker = rt
        .block_on(
            Worker::builder(&queue, ())
                .jobs([runner])
                .min_concurrency(concurrency)
                .max_concurrency(concurrency)
                .build(),
        )
        .expect("worker");
    while worker.counts().finished < jobs {
        std::thread::sleep(Duration::from_millis(1));
    }
    let elapsed = start.elapsed();
    rt.block_on(async {
        worker
            .unregister(Some(Duration::from_secs(10)))
            .await
            .expect("unregister");
        queue.close(Duration::from_secs(10)).await.expect("close");
    });
    jobs as f64 / elapsed.as_secs_f64()
}

fn percentiles(mut delays: Vec<Duration>) -> [Duration; 3] {
    delays.sort();
    let at = |q: f64| delays[((delays.len() as f64 * q) as usize).min(delays.len() - 1)];
    [at(0.50), at(0.99), delays[delays.len() - 1]]
}

/// Enqueue-to-start on an idle executor of concurrency 4, one job at a time.
fn quern_latency(rt: &Runtime, dir: &tempfile::TempDir, samples: usize) -> [Duration; 3] {
    let store = Store::open(dir.path().join("q.redb")).expect("open");
    let _guard = rt.enter();
    let (tx, rx) = mpsc::channel::<Instant>();
    let tx = Arc::new(std::sync::Mutex::new(tx));
    let handle = Executor::builder(store.clone())
        .queue("q")
        .concurrency(4)
        .spawn(move |_ctx| {
            let _ = tx.lock().expect("sender").send(Instant::now());
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
    percentiles(delays)
}

async fn effectum_signal(_job: RunningJob, tx: mpsc::Sender<Instant>) -> Result<(), String> {
    let _ = tx.send(Instant::now());
    Ok(())
}

/// Enqueue-to-start on an idle worker of concurrency 4, one job at a time.
fn effectum_latency(rt: &Runtime, dir: &tempfile::TempDir, samples: usize) -> [Duration; 3] {
    let _guard = rt.enter();
    let queue = rt
        .block_on(Queue::new(&dir.path().join("e.db")))
        .expect("effectum queue");
    let (tx, rx) = mpsc::channel::<Instant>();
    let runner = JobRunner::builder(JOB_TYPE, effectum_signal).build();
    let worker = rt
        .block_on(
            Worker::builder(&queue, tx)
                .jobs([runner])
                .max_concurrency(4)
                .build(),
        )
        .expect("worker");
    let mut delays = Vec::with_capacity(samples);
    for _ in 0..samples {
        let start = Instant::now();
        rt.block_on(queue.add_job(effectum_job())).expect("add_job");
        let started = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("job started");
        delays.push(started - start);
        // Let the completion settle so the worker is idle before the next sample.
        while worker.counts().finished < delays.len() as u64 {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    rt.block_on(async {
        worker
            .unregister(Some(Duration::from_secs(10)))
            .await
            .expect("unregister");
        queue.close(Duration::from_secs(10)).await.expect("close");
    });
    percentiles(delays)
}
