//! A local sync worker: uploads a few thousand files to a simulated flaky remote through a quern
//! executor on `sync-demo.redb`. Some uploads fail transiently and are retried with backoff; some
//! find the remote "not ready" and snooze without spending an attempt. Stop it at any moment
//! (Ctrl-C, or `kill -9`) and run it again: it resumes from the database and finishes every
//! upload.
//!
//! `cargo run --release --example sync_worker` (add `-- --fresh` to start over).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use quern::redb::{ReadableTable, ReadableTableMetadata, TableDefinition};
use quern::{Backoff, Executor, NewJob, Outcome, Store};

const FILES: u64 = 3_000;
/// The local files to sync: name -> number.
const LOCAL: TableDefinition<&str, u64> = TableDefinition::new("demo_local");
/// The simulated remote bucket: file name -> number of times it was written.
const REMOTE: TableDefinition<&str, u64> = TableDefinition::new("demo_remote");

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sync_worker: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "quern=info".into()),
        )
        .init();
    let path = "sync-demo.redb";
    if std::env::args().any(|a| a == "--fresh") {
        // Never from under a demo that is running on it.
        match Store::open(path) {
            Err(e @ quern::Error::AlreadyOpen { .. }) => {
                return Err(format!("--fresh: {e}; stop it first").into());
            }
            Ok(store) => store.close(),
            Err(_) => {}
        }
        let _ = std::fs::remove_file(path);
    }
    let store = Store::builder()
        .backoff(Backoff::exponential(
            Duration::from_millis(50),
            2.0,
            Duration::from_secs(1),
        ))
        .lease_ttl(Duration::from_secs(3))
        .open(path)?;

    // The local side: files to sync, recorded together with their upload jobs in one
    // transaction (the outbox pattern), so a rerun enqueues only files it never recorded.
    let created = store.write(|tx| {
        let mut local = tx.open_table(LOCAL)?;
        let mut jobs = Vec::new();
        for i in 0..FILES {
            let name = format!("photos/{i:05}.jpg");
            if local.get(name.as_str())?.is_none() {
                local.insert(name.as_str(), i)?;
                jobs.push(
                    NewJob::new("uploads", name)
                        .unique_key(format!("upload-{i:05}"))
                        .max_attempts(10),
                );
            }
        }
        drop(local);
        Ok::<_, quern::Error>(tx.enqueue_batch(jobs)?.len())
    })?;
    println!("recorded {created} new files to upload");

    let remote = Arc::new(FlakyRemote::default());
    let handle = Executor::builder(store.clone())
        .queue("uploads")
        .concurrency(8)
        .spawn(move |ctx| {
            let remote = remote.clone();
            async move {
                let name = String::from_utf8_lossy(ctx.payload()).into_owned();
                remote.upload(ctx.store(), &name, ctx.job().attempts).await
            }
        })?;

    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {
                println!("interrupted: shutting down gracefully");
                handle.shutdown(Duration::from_secs(5)).await?;
                // Closed before the process exits, so the next run finds it closed cleanly.
                store.close();
                return Ok(());
            }
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        let q = store.stats()?.queue("uploads").cloned().unwrap_or_default();
        let m = handle.metrics();
        // Claimed jobs are in progress: running in a handler, or waiting in the channel.
        println!(
            "pending {:>5}  claimed {:>3} (running {}, queued {:>3})  retrying {:>4}  succeeded {:>5}  failed {:>3}",
            q.pending, q.in_progress, m.running, m.channel_len, q.retrying, q.succeeded, q.failed
        );
        if q.pending + q.in_progress + q.retrying == 0 {
            break;
        }
    }
    handle.shutdown(Duration::from_secs(5)).await?;

    let m = store.stats()?.queue("uploads").cloned().unwrap_or_default();
    let (files, writes) = store.write(|tx| {
        let table = tx.open_table(REMOTE)?;
        let mut writes = 0;
        for entry in table.iter()? {
            writes += entry?.1.value();
        }
        Ok::<_, quern::Error>((table.len()?, writes))
    })?;
    println!(
        "done: {} uploads succeeded, {} failed for good; the remote holds {files} files \
         ({writes} writes: re-runs after a kill -9 rewrite a file, they never lose one)",
        m.succeeded, m.failed
    );
    store.close();
    Ok(())
}

/// A remote that times out on the first attempt of every 7th file, and is "not ready" for every
/// 11th file the first time this process asks for it.
#[derive(Default)]
struct FlakyRemote {
    asked: Mutex<HashSet<String>>,
}

impl FlakyRemote {
    async fn upload(&self, store: &Store, name: &str, attempt: u32) -> Outcome {
        let n: u64 = name
            .trim_start_matches("photos/")
            .trim_end_matches(".jpg")
            .parse()
            .unwrap_or(0);
        let first_ask = self.asked.lock().insert(name.to_owned());
        tokio::time::sleep(Duration::from_millis(2)).await;
        if n.is_multiple_of(11) && first_ask {
            return Outcome::Snooze(Duration::from_millis(200));
        }
        if n.is_multiple_of(7) && attempt == 1 {
            return Outcome::retry(format!("timeout uploading {name}"));
        }
        let (store, name) = (store.clone(), name.to_owned());
        let stored = tokio::task::spawn_blocking(move || {
            store.write(|tx| {
                let mut table = tx.open_table(REMOTE)?;
                let writes = table.get(name.as_str())?.map_or(0, |g| g.value());
                table.insert(name.as_str(), writes + 1)?;
                Ok::<_, quern::Error>(())
            })
        })
        .await;
        match stored {
            Ok(Ok(())) => Outcome::Success,
            Ok(Err(e)) => Outcome::retry(e),
            Err(e) => Outcome::retry(e),
        }
    }
}
