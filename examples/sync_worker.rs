//! A local sync worker: uploads a few thousand files to a simulated flaky remote through a quern
//! queue on `sync-demo.redb`. Some uploads fail transiently and are retried with backoff; some
//! find the remote "not ready" and snooze. Stop it at any moment (Ctrl-C, kill -9) and run it
//! again: it resumes from the database and finishes every upload exactly once.
//!
//! `cargo run --example sync_worker` (add `-- --fresh` to start over).

use std::time::Duration;

use quern::{Backoff, Enqueued, Filter, JobState, NewJob, Store};

const FILES: u64 = 3_000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = "sync-demo.redb";
    if std::env::args().any(|a| a == "--fresh") {
        let _ = std::fs::remove_file(path);
    }
    let store = Store::builder()
        .backoff(Backoff::exponential(
            Duration::from_millis(5),
            2.0,
            Duration::from_millis(50),
        ))
        .lease_ttl(Duration::from_secs(5))
        .open(path)?;

    // Enqueue every upload; unique keys make a rerun enqueue nothing twice.
    let outcomes = store.enqueue_batch((0..FILES).map(|i| {
        NewJob::new("uploads", format!("photos/{i:05}.jpg"))
            .unique_key(format!("upload-{i:05}"))
            .max_attempts(10)
    }))?;
    let created = outcomes
        .iter()
        .filter(|o| matches!(o, Enqueued::Created(_)))
        .count();
    println!("enqueued {created} new uploads ({} already known)", outcomes.len() - created);

    // A previous run killed mid-job left leases behind: take them back.
    let recovered = store.recover_expired()?;
    if recovered > 0 {
        println!("recovered {recovered} jobs from a previous run");
    }

    let mut remote = FlakyRemote::default();
    let mut done = 0u64;
    loop {
        store.promote_due()?;
        store.recover_expired()?;
        let batch = store.claim("uploads", 64)?;
        if batch.is_empty() {
            let stats = store.stats()?;
            let q = stats.queue("uploads").cloned().unwrap_or_default();
            if q.pending + q.in_progress + q.retrying == 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        for c in batch {
            let name = String::from_utf8_lossy(&c.job.payload).into_owned();
            match remote.upload(&name, c.job.attempts) {
                Remote::Stored => {
                    store.complete(c.lease)?;
                    done += 1;
                }
                Remote::Flaky => store.fail(c.lease, format!("timeout uploading {name}"))?,
                Remote::NotReady => store.snooze(c.lease, Duration::from_millis(20))?,
            }
        }
        if done % 500 == 0 {
            println!("uploaded {done} this run");
        }
    }

    let stats = store.stats()?;
    let q = stats.queue("uploads").cloned().unwrap_or_default();
    let failed = store.list(&Filter::default().queue("uploads").state(JobState::Failed))?;
    println!(
        "done: {} succeeded, {} failed for good, {} uploaded this run",
        q.succeeded,
        failed.len(),
        done
    );
    Ok(())
}

enum Remote {
    Stored,
    Flaky,
    NotReady,
}

/// A remote that times out on the first attempt of every 7th file, and is "not ready" for every
/// 11th file the first time it is asked.
#[derive(Default)]
struct FlakyRemote {
    asked: std::collections::HashSet<String>,
}

impl FlakyRemote {
    fn upload(&mut self, name: &str, attempt: u32) -> Remote {
        let n: u64 = name
            .trim_start_matches("photos/")
            .trim_end_matches(".jpg")
            .parse()
            .unwrap_or(0);
        let first_ask = self.asked.insert(name.to_owned());
        if n % 11 == 0 && first_ask {
            Remote::NotReady
        } else if n % 7 == 0 && attempt == 1 {
            Remote::Flaky
        } else {
            Remote::Stored
        }
    }
}
