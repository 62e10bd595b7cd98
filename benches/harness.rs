//! Whole-run figures for the README, measured in one run beside the disk's own limits:
//! `cargo bench --bench harness` (set `QUERN_HARNESS_JOBS` to change the drain size, default
//! 100,000).
//!
//! `cargo bench --bench harness -- FILTER` runs only the rows whose name contains FILTER (e.g.
//! `drain`, `mixed`, `scale`), for profiling one workload.
//!
//! Other knobs: `QUERN_HARNESS_MIXED_SECS` (the mixed load's length, default 3 s) and
//! `QUERN_HARNESS_SCALE` (jobs in the scale run, default 1,000,000; 0 skips it).
//!
//! The peer comparison with effectum lives in its own workspace: `benches/peer/`.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use quern::redb::{self, ConcurrencyMode, TableDefinition};
use quern::{Executor, NewJob, Outcome, Store};

const RAW: TableDefinition<u64, &[u8]> = TableDefinition::new("raw");

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace(['_', ','], "").parse().ok())
        .unwrap_or(default)
}

fn main() {
    let jobs = env_u64("QUERN_HARNESS_JOBS", 100_000);
    let mixed_secs = env_u64("QUERN_HARNESS_MIXED_SECS", 3);
    let scale = env_u64("QUERN_HARNESS_SCALE", 1_000_000);
    // `cargo bench` passes `--bench`; the first argument that is not a flag is the filter.
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let want = |name: &str| filter.as_deref().is_none_or(|f| name.contains(f));
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

    const FSYNC: &str = "raw file: write + fsync";
    const RAW_SHARED: &str = "redb raw durable commit (shared mode)";
    const RAW_EXCL: &str = "redb raw durable commit (exclusive mode)";
    const SINGLE: &str = "enqueue, one job per commit (shared mode)";
    const SINGLE_EXCL: &str = "enqueue, one job per commit (exclusive mode)";
    if want(FSYNC) {
        let fsyncs = fsync_rate(2_000);
        row(FSYNC, format!("{fsyncs:.0} /s"));
    }
    // The raw rates are the yardsticks of the single-enqueue rows: both are measured in
    // alternating rounds, so that the disk's drift (±20% over a minute here) falls on both.
    for (exclusive, raw_name, single_name) in
        [(false, RAW_SHARED, SINGLE), (true, RAW_EXCL, SINGLE_EXCL)]
    {
        if want(raw_name) || want(single_name) {
            let (raw, single) = single_vs_raw(exclusive, 10, 200);
            row(raw_name, format!("{raw:.0} /s"));
            row(
                single_name,
                format!("{single:.0} /s ({:.2} of raw)", single / raw),
            );
        }
    }

    // Each caller waits for its own commit, so a commit carries at most 16 jobs: the figure
    // scales with the disk's commit rate, which is measured in alternating rounds beside it.
    // The target, 30,000 jobs/s where redb's default (exclusive) mode commits 3,700
    // times a second, is 8.1 commits' worth.
    for (exclusive, name) in [
        (false, "enqueue from 16 threads at once (shared mode)"),
        (true, "enqueue from 16 threads at once (exclusive mode)"),
    ] {
        if want(name) {
            let (raw, threads) = threads_vs_raw(exclusive, 5, 16, 100);
            row(
                name,
                format!(
                    "{threads:.0} jobs/s = {:.1} raw commits (raw {raw:.0} /s)",
                    threads / raw
                ),
            );
        }
    }

    const BATCH_100: &str = "enqueue_batch of 100";
    const BATCH_1000: &str = "enqueue_batch of 1,000";
    if want(BATCH_100) || want(BATCH_1000) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path().join("batch.redb")).expect("open");
        for (size, name) in [(100, BATCH_100), (1_000, BATCH_1000)] {
            if want(name) {
                let (raw, batch) = batch_vs_raw(&store, size, 10);
                row(
                    &format!("redb raw: {size} inserts of 64 bytes per commit"),
                    format!("{raw:.0} rows/s"),
                );
                row(
                    name,
                    format!("{batch:.0} jobs/s ({:.2} of raw inserts)", batch / raw),
                );
            }
        }
    }

    for concurrency in [1, 4, 16] {
        let name = format!("drain {jobs} no-op jobs, concurrency {concurrency}");
        if want(&name) {
            let per_sec = drain(&rt, jobs, concurrency);
            row(&name, format!("{per_sec:.0} jobs/s"));
        }
    }

    let settled = format!(
        "drain {} jobs settled in the handler's write (settle_in), concurrency 16",
        jobs / 10
    );
    if want(&settled) {
        let per_sec = drain_settled_in_write(&rt, jobs / 10);
        row(&settled, format!("{per_sec:.0} jobs/s"));
    }

    // Several queues: one executor each (the pattern today), against one executor on one
    // queue with as many workers, the same jobs in all: rate, CPU per job, and commits (the
    // writer's group commits: settles and claim cycles) per 1,000 jobs.
    for (queues, each) in [(1, 20), (5, 4)] {
        let name = format!("busy queues: {queues} executor(s) at c{each}, one queue each");
        if want(&name) {
            let d = drain_queues(&rt, jobs, queues, each);
            row(
                &name,
                format!(
                    "{:.0} jobs/s, {:.1} µs CPU per job, {:.0} commits per 1,000 jobs",
                    d.0, d.1, d.2
                ),
            );
        }
    }

    const IDLE: &str = "enqueue-to-start on an idle executor";
    if want(IDLE) {
        let (p50, p99, max) = idle_latency(&rt, 1_000);
        row(IDLE, format!("p50 {p50:?}  p99 {p99:?}  max {max:?}"));
    }

    let mixed_done = format!("mixed load {mixed_secs} s: jobs/s enqueued, completed");
    let mixed_latency = format!("mixed load {mixed_secs} s: enqueue-to-start");
    if want(&mixed_done) || want(&mixed_latency) {
        let m = mixed_load(&rt, Duration::from_secs(mixed_secs));
        row(
            &mixed_done,
            format!(
                "{:.0} enqueued, {:.0} completed /s (backlog {} at the end of the window)",
                m.enqueued_per_sec, m.completed_per_sec, m.backlog
            ),
        );
        row(
            &mixed_latency,
            format!("p50 {:?}  p99 {:?}  max {:?}", m.p50, m.p99, m.max),
        );
    }

    // Before the scale run, which resets the peak.
    const RSS: &str = "peak RSS";
    if want(RSS) {
        row(RSS, format!("{} MiB", peak_rss_kib() / 1024));
    }

    let scale_names = [
        format!("scale {scale}: enqueue in batches of 10,000"),
        format!("scale {scale}: file after enqueue"),
        format!("scale {scale}: drain at concurrency 16"),
        format!("scale {scale}: file after drain"),
        format!("scale {scale}: prune all, file after"),
        format!("scale {scale}: file after redb compaction"),
        format!("scale {scale}: peak RSS of the scale run"),
    ];
    if scale > 0 && scale_names.iter().any(|n| want(n)) {
        for (name, value) in scale_names.iter().zip(scale_run(&rt, scale)) {
            row(name, value);
        }
    }

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

/// A redb database for the raw yardstick and a store, side by side in `dir`, both in the
/// exclusive or both in the shared (`SingleWriter`) concurrency mode.
fn raw_and_store(exclusive: bool, dir: &std::path::Path) -> (redb::Database, Store) {
    let mode = if exclusive {
        ConcurrencyMode::ExclusiveWriter
    } else {
        ConcurrencyMode::SingleWriter
    };
    let db = redb::Builder::new()
        .set_concurrency_mode(mode)
        .create(dir.join("raw.redb"))
        .expect("create");
    let store = Store::builder()
        .exclusive(exclusive)
        .open(dir.join("quern.redb"))
        .expect("open");
    (db, store)
}

/// Seconds for `n` durable commits of one 16-byte insert each, keys from `next` on.
fn raw_commits(db: &redb::Database, next: &mut u64, n: u64) -> f64 {
    let start = Instant::now();
    for _ in 0..n {
        let tx = db.begin_write().expect("begin");
        tx.open_table(RAW)
            .expect("table")
            .insert(*next, [0u8; 16].as_slice())
            .expect("insert");
        tx.commit().expect("commit");
        *next += 1;
    }
    start.elapsed().as_secs_f64()
}

/// Durable commits per second of one 16-byte redb insert each, and of one quern enqueue each,
/// in the same concurrency mode, measured in `rounds` alternating rounds of `n` commits.
fn single_vs_raw(exclusive: bool, rounds: u32, n: u64) -> (f64, f64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (db, store) = raw_and_store(exclusive, dir.path());
    let mut i = 0u64;
    let (mut raw_secs, mut quern_secs) = (0.0, 0.0);
    for _ in 0..rounds {
        raw_secs += raw_commits(&db, &mut i, n);
        quern_secs += n as f64
            / rate(n, || {
                store.enqueue(NewJob::new("q", "x")).expect("enqueue");
            });
    }
    let total = f64::from(rounds) * n as f64;
    (total / raw_secs, total / quern_secs)
}

/// Raw durable commits per second (as [`single_vs_raw`]), and jobs per second of `threads`
/// threads each enqueueing `per_thread` jobs one at a time, in `rounds` alternating rounds.
fn threads_vs_raw(exclusive: bool, rounds: u32, threads: u64, per_thread: u64) -> (f64, f64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (db, store) = raw_and_store(exclusive, dir.path());
    let mut i = 0u64;
    let (mut raw_secs, mut quern_secs) = (0.0, 0.0);
    let raw_n = 200;
    for _ in 0..rounds {
        raw_secs += raw_commits(&db, &mut i, raw_n);
        let start = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| {
                    for _ in 0..per_thread {
                        store.enqueue(NewJob::new("q", "x")).expect("enqueue");
                    }
                });
            }
        });
        quern_secs += start.elapsed().as_secs_f64();
    }
    let rounds = f64::from(rounds);
    (
        rounds * raw_n as f64 / raw_secs,
        rounds * (threads * per_thread) as f64 / quern_secs,
    )
}

/// Rows per second of `size` 64-byte redb inserts per durable commit, and jobs per second of
/// `enqueue_batch` of `size` jobs into `store`, in `rounds` alternating rounds of ten commits.
fn batch_vs_raw(store: &Store, size: u64, rounds: u32) -> (f64, f64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = redb::Builder::new()
        .set_concurrency_mode(ConcurrencyMode::SingleWriter)
        .create(dir.path().join("raw.redb"))
        .expect("create");
    let mut i = 0u64;
    let (mut raw_secs, mut quern_secs) = (0.0, 0.0);
    for _ in 0..rounds {
        raw_secs += 10.0
            / rate(10, || {
                let tx = db.begin_write().expect("begin");
                {
                    let mut t = tx.open_table(RAW).expect("table");
                    for _ in 0..size {
                        t.insert(i, [7u8; 64].as_slice()).expect("insert");
                        i += 1;
                    }
                }
                tx.commit().expect("commit");
            });
        quern_secs += 10.0
            / rate(10, || {
                store
                    .enqueue_batch((0..size).map(|_| NewJob::new("b", "x")))
                    .expect("batch");
            });
    }
    let total = f64::from(rounds) * 10.0 * size as f64;
    (total / raw_secs, total / quern_secs)
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

/// `jobs` no-op jobs spread over `queues` queues, drained by one executor per queue at
/// concurrency `each`: jobs per second, microseconds of this process's CPU (user and system)
/// per job, and the writer's commits per 1,000 jobs.
fn drain_queues(
    rt: &tokio::runtime::Runtime,
    jobs: u64,
    queues: usize,
    each: usize,
) -> (f64, f64, f64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path().join("queues.redb")).expect("open");
    let names: Vec<String> = (0..queues).map(|q| format!("q{q}")).collect();
    let mut left = jobs;
    while left > 0 {
        let n = left.min(10_000);
        store
            .enqueue_batch((0..n).map(|i| NewJob::new(names[i as usize % queues].clone(), "x")))
            .expect("prefill");
        left -= n;
    }
    let _guard = rt.enter();
    let (cpu0, commits0, start) = (cpu_us(), store.__write_batches(), Instant::now());
    let handles: Vec<_> = names
        .iter()
        .map(|q| {
            Executor::builder(store.clone())
                .queue(q.clone())
                .concurrency(each)
                .spawn(|_ctx| async { Outcome::Success })
                .expect("spawn")
        })
        .collect();
    while handles.iter().map(|h| h.metrics().succeeded).sum::<u64>() < jobs {
        std::thread::sleep(Duration::from_millis(1));
    }
    let elapsed = start.elapsed();
    let (cpu, commits) = (cpu_us() - cpu0, store.__write_batches() - commits0);
    for h in handles {
        rt.block_on(h.shutdown(Duration::from_secs(10)))
            .expect("shutdown");
    }
    let n = jobs as f64;
    (
        n / elapsed.as_secs_f64(),
        cpu as f64 / n,
        commits as f64 * 1_000.0 / n,
    )
}

/// This process's CPU time so far (user and system), in microseconds.
fn cpu_us() -> u64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a whole `rusage` into the pointer it is given.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    us(usage.ru_utime) + us(usage.ru_stime)
}

/// Jobs per second for `jobs` pre-enqueued jobs whose handler writes a row of its own and
/// completes the job in the same transaction ([`quern::JobContext::settle_in`]): a commit per
/// job, where the executor's own settles share commits.
fn drain_settled_in_write(rt: &tokio::runtime::Runtime, jobs: u64) -> f64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path().join("settle.redb")).expect("open");
    store
        .enqueue_batch((0..jobs).map(|_| NewJob::new("q", "x")))
        .expect("prefill");
    let _guard = rt.enter();
    let start = Instant::now();
    let handle = Executor::builder(store.clone())
        .queue("q")
        .concurrency(16)
        .spawn(move |ctx| async move {
            let row = ctx.job().id.0;
            let written = ctx
                .settle_in(move |tx, lease| {
                    tx.open_table(RAW)?.insert(row, [0u8; 64].as_slice())?;
                    tx.complete(lease)
                })
                .await;
            match written {
                Ok(()) => Outcome::Settled,
                Err(e) => Outcome::retry(e),
            }
        })
        .expect("spawn");
    while handle.metrics().settled_by_handler < jobs {
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

struct Mixed {
    enqueued_per_sec: f64,
    completed_per_sec: f64,
    backlog: u64,
    p50: Duration,
    p99: Duration,
    max: Duration,
}

/// A steady mixed load: 4 producer threads enqueue for `window` (each: nine single jobs, then
/// a batch of 10, over and over) while an executor of concurrency 16 drains. Every payload is
/// the time of its enqueue call, so the handler measures enqueue-to-start under load; the
/// latencies cover every job, including the backlog drained after the window.
fn mixed_load(rt: &tokio::runtime::Runtime, window: Duration) -> Mixed {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path().join("mixed.redb")).expect("open");
    let _guard = rt.enter();
    let base = Instant::now();
    let delays = Arc::new(parking_lot::Mutex::new(Vec::<u64>::new()));
    let seen = delays.clone();
    let handle = Executor::builder(store.clone())
        .queue("q")
        .concurrency(16)
        .spawn(move |ctx| {
            let now = base.elapsed().as_nanos() as u64;
            let at = u64::from_be_bytes(ctx.payload().try_into().expect("8-byte payload"));
            seen.lock().push(now.saturating_sub(at));
            async { Outcome::Success }
        })
        .expect("spawn");
    let stamp = || (base.elapsed().as_nanos() as u64).to_be_bytes().to_vec();
    let stop = AtomicBool::new(false);
    let enqueued = AtomicU64::new(0);
    let mut at_window = (0, 0);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    if i % 10 == 9 {
                        let at = stamp();
                        store
                            .enqueue_batch((0..10).map(|_| NewJob::new("q", at.clone())))
                            .expect("batch");
                        enqueued.fetch_add(10, Ordering::Relaxed);
                    } else {
                        store.enqueue(NewJob::new("q", stamp())).expect("enqueue");
                        enqueued.fetch_add(1, Ordering::Relaxed);
                    }
                    i += 1;
                }
            });
        }
        std::thread::sleep(window);
        at_window = (enqueued.load(Ordering::Relaxed), handle.metrics().succeeded);
        stop.store(true, Ordering::Relaxed);
    });
    let total = enqueued.load(Ordering::Relaxed);
    while handle.metrics().succeeded < total {
        std::thread::sleep(Duration::from_millis(1));
    }
    rt.block_on(handle.shutdown(Duration::from_secs(10)))
        .expect("shutdown");
    let mut delays = std::mem::take(&mut *delays.lock());
    delays.sort_unstable();
    let at = |q: f64| {
        Duration::from_nanos(delays[((delays.len() as f64 * q) as usize).min(delays.len() - 1)])
    };
    let secs = window.as_secs_f64();
    Mixed {
        enqueued_per_sec: at_window.0 as f64 / secs,
        completed_per_sec: at_window.1 as f64 / secs,
        backlog: at_window.0.saturating_sub(at_window.1),
        p50: at(0.50),
        p99: at(0.99),
        max: at(1.0),
    }
}

fn file_mib(path: &std::path::Path) -> String {
    let bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    if bytes < 1024 * 1024 {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    } else {
        format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
    }
}

/// `n` jobs enqueued in batches of 10,000, drained at concurrency 16 and pruned: the file's
/// size after each step, after a redb compaction (quern never compacts; redb only reuses the
/// freed pages), and the peak RSS of these steps alone.
fn scale_run(rt: &tokio::runtime::Runtime, n: u64) -> [String; 7] {
    // Writing 5 to clear_refs resets VmHWM, so the peak is this run's own.
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("scale.redb");
    let store = Store::open(&path).expect("open");

    let start = Instant::now();
    let mut left = n;
    while left > 0 {
        let k = left.min(10_000);
        store
            .enqueue_batch((0..k).map(|_| NewJob::new("q", "x")))
            .expect("enqueue");
        left -= k;
    }
    let took = start.elapsed();
    let enqueue = format!(
        "{:.0} jobs/s ({:.1} s)",
        n as f64 / took.as_secs_f64(),
        took.as_secs_f64()
    );
    let after_enqueue = file_mib(&path);

    let _guard = rt.enter();
    let start = Instant::now();
    let handle = Executor::builder(store.clone())
        .queue("q")
        .concurrency(16)
        .channel_capacity(256)
        .spawn(|_ctx| async { Outcome::Success })
        .expect("spawn");
    while handle.metrics().succeeded < n {
        std::thread::sleep(Duration::from_millis(5));
    }
    let took = start.elapsed();
    rt.block_on(handle.shutdown(Duration::from_secs(10)))
        .expect("shutdown");
    let drain = format!(
        "{:.0} jobs/s ({:.1} s)",
        n as f64 / took.as_secs_f64(),
        took.as_secs_f64()
    );
    let after_drain = file_mib(&path);

    let start = Instant::now();
    let pruned = store
        .prune(store.now().after(Duration::from_secs(1)))
        .expect("prune");
    let after_prune = format!(
        "{} ({pruned} jobs pruned in {:.1} s)",
        file_mib(&path),
        start.elapsed().as_secs_f64()
    );
    drop(store);
    // The peak of quern's own work; the compaction below is redb's, with redb's own cache.
    let rss = if reset {
        format!("{} MiB", peak_rss_kib() / 1024)
    } else {
        format!("{} MiB (peak of the whole process)", peak_rss_kib() / 1024)
    };

    let compacted = match redb::Database::open(&path) {
        Ok(mut db) => match db.compact() {
            Ok(_) => {
                drop(db);
                file_mib(&path)
            }
            Err(e) => format!("compaction failed: {e}"),
        },
        Err(e) => format!("could not reopen for compaction: {e}"),
    };
    [
        enqueue,
        after_enqueue,
        drain,
        after_drain,
        after_prune,
        compacted,
        rss,
    ]
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
