//! Store benchmarks, named by workload. Every figure is durable (each commit fsynced).
//!
//! `cargo bench --bench store` runs them all; the README lists the latest figures.
//! `redb_raw_commit` is the yardstick: one small insert per durable commit, in the same
//! concurrency mode quern uses.

use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use quern::redb::{self, ConcurrencyMode, TableDefinition};
use quern::{NewJob, Store};

const RAW: TableDefinition<u64, &[u8]> = TableDefinition::new("raw");

fn raw_db(dir: &tempfile::TempDir, mode: ConcurrencyMode) -> redb::Database {
    redb::Builder::new()
        .set_concurrency_mode(mode)
        .create(dir.path().join("raw.redb"))
        .expect("create raw redb")
}

fn store(dir: &tempfile::TempDir, exclusive: bool) -> Store {
    Store::builder()
        .exclusive(exclusive)
        .open(dir.path().join("bench.redb"))
        .expect("open store")
}

fn job(i: u64) -> NewJob {
    NewJob::new("bench", i.to_be_bytes().to_vec())
}

fn prefill(store: &Store, n: u64) {
    let mut next = 0;
    while next < n {
        let end = (next + 10_000).min(n);
        store.enqueue_batch((next..end).map(job)).expect("prefill");
        next = end;
    }
}

fn commits(c: &mut Criterion) {
    let mut g = c.benchmark_group("single_commit");
    g.throughput(Throughput::Elements(1));
    g.sample_size(20).measurement_time(Duration::from_secs(4));
    for (name, mode, exclusive) in [
        ("shared", ConcurrencyMode::SingleWriter, false),
        ("exclusive", ConcurrencyMode::ExclusiveWriter, true),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = raw_db(&dir, mode);
        let mut i = 0u64;
        g.bench_function(BenchmarkId::new("redb_raw_commit", name), |b| {
            b.iter(|| {
                let tx = db.begin_write().expect("begin");
                tx.open_table(RAW)
                    .expect("table")
                    .insert(i, [0u8; 16].as_slice())
                    .expect("insert");
                tx.commit().expect("commit");
                i += 1;
            });
        });
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(&dir, exclusive);
        let mut i = 0u64;
        g.bench_function(BenchmarkId::new("enqueue_durable", name), |b| {
            b.iter(|| {
                black_box(s.enqueue(job(i)).expect("enqueue"));
                i += 1;
            });
        });
    }
    g.finish();
}

fn batches(c: &mut Criterion) {
    let mut g = c.benchmark_group("batch");
    g.sample_size(10).measurement_time(Duration::from_secs(4));
    g.throughput(Throughput::Elements(1_000));
    let dir = tempfile::tempdir().expect("tempdir");
    let s = store(&dir, false);
    let mut i = 0u64;
    g.bench_function("enqueue_batch_1000", |b| {
        b.iter(|| {
            black_box(s.enqueue_batch((i..i + 1_000).map(job)).expect("batch"));
            i += 1_000;
        });
    });
    g.finish();
}

fn concurrent_enqueue(c: &mut Criterion) {
    const THREADS: u64 = 16;
    let mut g = c.benchmark_group("group_commit");
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    g.throughput(Throughput::Elements(THREADS * 100));
    let dir = tempfile::tempdir().expect("tempdir");
    let s = store(&dir, false);
    g.bench_function("enqueue_16_threads_x100", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let barrier = Arc::new(Barrier::new(THREADS as usize + 1));
                let handles: Vec<_> = (0..THREADS)
                    .map(|t| {
                        let s = s.clone();
                        let barrier = barrier.clone();
                        std::thread::spawn(move || {
                            barrier.wait();
                            for i in 0..100 {
                                s.enqueue(job(t * 1_000 + i)).expect("enqueue");
                            }
                        })
                    })
                    .collect();
                barrier.wait();
                let start = Instant::now();
                for h in handles {
                    h.join().expect("join");
                }
                total += start.elapsed();
            }
            total
        });
    });
    g.finish();
}

fn claim_complete(c: &mut Criterion) {
    let mut g = c.benchmark_group("claim_complete");
    g.sample_size(20).measurement_time(Duration::from_secs(4));
    g.throughput(Throughput::Elements(1));
    let dir = tempfile::tempdir().expect("tempdir");
    let s = store(&dir, false);
    prefill(&s, 100_000);
    g.bench_function("claim_complete", |b| {
        b.iter(|| {
            let c = s.claim("bench", 1).expect("claim").pop().expect("a job");
            s.complete(c.lease).expect("complete");
        });
    });
    // The completion in the user's own transaction, with one row of the user's: a commit of
    // its own, as the plain complete is here (one job at a time shares no commit).
    let mut row = 0u64;
    g.bench_function("claim_complete_in_write", |b| {
        b.iter(|| {
            let c = s.claim("bench", 1).expect("claim").pop().expect("a job");
            row += 1;
            s.write(|tx| {
                tx.open_table(RAW)?.insert(row, [0u8; 16].as_slice())?;
                tx.complete(c.lease)
            })
            .expect("complete in a write");
        });
    });
    g.finish();
}

/// Claim cost at growing queue depth: one claim (one durable commit) of one job. The queue is
/// filled 50,000 deeper than its label, so the few thousand claims of a run barely dent it.
fn claim_at_depth(c: &mut Criterion) {
    let mut g = c.benchmark_group("claim_at_depth");
    g.sample_size(20).measurement_time(Duration::from_secs(4));
    g.throughput(Throughput::Elements(1));
    let depths: &[u64] = if std::env::var_os("QUERN_BENCH_QUICK").is_some() {
        &[1_000, 100_000]
    } else {
        &[1_000, 100_000, 1_000_000]
    };
    for &depth in depths {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(&dir, false);
        prefill(&s, depth + 50_000);
        // A claim indexes at most 20,000 new jobs: claims of an empty queue index the
        // whole backlog first, so that what is measured is a claim at this depth, not the
        // indexing of a batch-enqueued backlog.
        for _ in 0..(depth + 50_000) / 20_000 + 2 {
            s.claim("elsewhere", 1).expect("index the new jobs");
        }
        g.bench_function(BenchmarkId::new("claim_1", depth), |b| {
            b.iter(|| black_box(s.claim("bench", 1).expect("claim")));
        });
    }
    g.finish();
}

/// Claim cost with a long line of jobs behind one blocked key, against the same queue without
/// that line: the jobs behind a blocked key wait where no claim looks, so the claims of other
/// jobs must cost the same.
fn claim_behind_blocked_key(c: &mut Criterion) {
    let mut g = c.benchmark_group("claim_behind_blocked_key");
    g.sample_size(20).measurement_time(Duration::from_secs(4));
    g.throughput(Throughput::Elements(1));
    let behind: u64 = if std::env::var_os("QUERN_BENCH_QUICK").is_some() {
        100_000
    } else {
        1_000_000
    };
    // none_behind: the yardstick. blocked_key: an ordered key whose first job waits an hour
    // for its retry. parked_key: a plain concurrency key parked for an hour (a 429), its jobs
    // indexed before the park.
    for (label, line) in [
        ("none_behind", 0),
        ("blocked_key", behind),
        ("parked_key", behind),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::builder()
            .backoff(quern::Backoff::fixed(Duration::from_secs(3_600)))
            .open(dir.path().join("bench.redb"))
            .expect("open store");
        let parked = label == "parked_key";
        let stuck = |i: u64| {
            let j = job(i).concurrency_key("stuck");
            if parked { j } else { j.ordered() }
        };
        if !parked {
            s.enqueue(stuck(0)).expect("enqueue");
            let first = s.claim("bench", 1).expect("claim").pop().expect("a job");
            s.fail(first.lease, "503").expect("fail");
        }
        let mut next = 0;
        while next < line {
            let end = (next + 10_000).min(line);
            s.enqueue_batch((next..end).map(stuck)).expect("prefill");
            next = end;
        }
        if parked {
            for _ in 0..line / 20_000 + 2 {
                s.claim("elsewhere", 1).expect("index the new jobs");
            }
            let until = quern::Timestamp(s.now().0 + 3_600_000);
            s.park("bench", Some("stuck"), until, "429").expect("park");
        }
        prefill(&s, 50_000);
        // Everything indexed first (a claim indexes at most 20,000 new jobs).
        for _ in 0..(line + 50_000) / 20_000 + 2 {
            s.claim("elsewhere", 1).expect("index the new jobs");
        }
        g.bench_function(BenchmarkId::new("claim_1", label), |b| {
            b.iter(|| {
                let claimed = s.claim("bench", 1).expect("claim");
                assert!(claimed.iter().all(|c| c.job.concurrency_key.is_none()));
                black_box(claimed)
            });
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    commits,
    batches,
    concurrent_enqueue,
    claim_complete,
    claim_at_depth,
    claim_behind_blocked_key
);
criterion_main!(benches);
