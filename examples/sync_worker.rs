//! A local sync worker on `sync-demo.redb`, against a simulated flaky remote, showing what a
//! sync worker relies on quern for:
//!
//! - **uploads**: a few thousand files, each uploaded by a job of a change-safe unique key. An
//!   editor changes files while their uploads run; an edit during an upload becomes a
//!   follow-up that uploads again after it, so the remote ends with the latest version of
//!   every file. Some uploads time out and are retried with backoff; some find the remote "not
//!   ready" and snooze without spending an attempt. Files belong to eight accounts (each a
//!   concurrency key); now and then the remote answers one account with a 429 and a
//!   `Retry-After`: the demo parks that account, and the other accounts' uploads go on.
//! - **folders**: create, rename and delete of each folder on one ordered key: the remote
//!   answers the first create of every folder with a 503, and the rename and delete still
//!   reach it after the create, never before.
//! - **downloads**: remote items pulled into a local table, the write and the job's
//!   completion in one transaction, so that each item is written exactly once.
//!
//! Stop it at any moment (Ctrl-C, or `kill -9`) and run it again: it resumes from the database
//! and finishes every job. `cargo run --release --example sync_worker` (add `-- --fresh` to
//! start over).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use quern::redb::{ReadableTable, TableDefinition};
use quern::{
    Backoff, Enqueued, Executor, ExecutorHandle, Idle, JobContext, NewJob, Outcome, Store, WriteTx,
};

const FILES: u64 = 3_000;
const EDITS: u64 = 600;
const FOLDERS: u64 = 200;
const ITEMS: u64 = 1_000;

/// The local files: name -> version.
const LOCAL: TableDefinition<&str, u64> = TableDefinition::new("demo_local");
/// The remote bucket: name -> the version last uploaded.
const REMOTE: TableDefinition<&str, u64> = TableDefinition::new("demo_remote");
/// The remote folders: name -> the last operation applied (1 created, 2 renamed, 3 deleted).
const REMOTE_FOLDERS: TableDefinition<&str, u64> = TableDefinition::new("demo_remote_folders");
/// Items pulled from the remote: name -> value; and how many writes pulled them.
const PULLED: TableDefinition<&str, u64> = TableDefinition::new("demo_pulled");
/// Counters of this demo: what was enqueued already (the outbox), and what went wrong.
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("demo_counters");

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(1),
        Err(e) => {
            eprintln!("sync_worker: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs the demo to the end; whether every check held.
async fn run() -> Result<bool, Box<dyn std::error::Error>> {
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
    record_work(&store)?;

    let remote = Arc::new(FlakyRemote::default());
    let r = remote.clone();
    let uploads = Executor::builder(store.clone())
        .queue("uploads")
        .concurrency(8)
        .spawn(move |ctx| {
            let remote = r.clone();
            async move { remote.upload(ctx).await }
        })?;
    let r = remote.clone();
    let folders = Executor::builder(store.clone())
        .queue("folders")
        .concurrency(8)
        .spawn(move |ctx| {
            let remote = r.clone();
            async move { remote.folder(ctx).await }
        })?;
    let downloads = Executor::builder(store.clone())
        .queue("downloads")
        .concurrency(4)
        .spawn(|ctx| async move { download(ctx).await })?;
    let editor = tokio::spawn(edit_files(store.clone(), remote.clone()));
    let stop_editor = editor.abort_handle();
    let handles = [uploads, folders, downloads];
    let progress = tokio::spawn(print_progress(store.clone()));

    // Done when the editor is and every queue is idle: the executors say so (retries and parks
    // due within a minute are waited for), no polling. A job of one queue may enqueue into
    // another, so the queues are asked again until none has anything open.
    let done = async {
        editor.await??;
        loop {
            for h in &handles {
                h.idle(Idle::Within(Duration::from_secs(60))).await?;
            }
            if open_jobs(&store)? == 0 {
                return Ok::<_, Box<dyn std::error::Error>>(());
            }
        }
    };
    tokio::select! {
        _ = quern::wait_for_signal() => {
            println!("interrupted: shutting down gracefully");
            stop_editor.abort();
            progress.abort();
            shutdown(handles).await?;
            // Closed before the process exits, so the next run finds it closed cleanly.
            store.close();
            return Ok(true);
        }
        finished = done => finished?,
    }
    progress.abort();
    print_line(&store)?;
    shutdown(handles).await?;
    let ok = report(&store, &remote)?;
    store.close();
    Ok(ok)
}

const QUEUES: [&str; 3] = ["uploads", "folders", "downloads"];

/// Jobs waiting or running in the demo's queues.
fn open_jobs(store: &Store) -> quern::Result<u64> {
    let stats = store.stats()?;
    Ok(QUEUES
        .iter()
        .map(|q| {
            stats
                .queue(q)
                .map_or(0, |q| q.pending + q.in_progress + q.retrying)
        })
        .sum())
}

/// A line of progress every half second, for the person watching.
async fn print_progress(store: Store) {
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if print_line(&store).is_err() {
            return;
        }
    }
}

fn print_line(store: &Store) -> quern::Result<()> {
    let stats = store.stats()?;
    let mut line = String::new();
    for queue in QUEUES {
        let q = stats.queue(queue).cloned().unwrap_or_default();
        line += &format!(
            "{queue}: {:>4} waiting {:>2} running {:>5} done   ",
            q.pending + q.retrying,
            q.in_progress,
            q.succeeded
        );
    }
    println!("{line}");
    Ok(())
}

async fn shutdown(handles: [ExecutorHandle; 3]) -> quern::Result<()> {
    for h in handles {
        h.shutdown(Duration::from_secs(5)).await?;
    }
    Ok(())
}

/// Records the local side and its jobs in one transaction (the outbox pattern), once: a rerun
/// finds them recorded and enqueues nothing.
fn record_work(store: &Store) -> quern::Result<()> {
    store.write(|tx| {
        if counter(tx, "recorded")? > 0 {
            return Ok(());
        }
        let mut jobs = Vec::new();
        {
            let mut local = tx.open_table(LOCAL)?;
            for i in 0..FILES {
                let name = file(i);
                local.insert(name.as_str(), 1)?;
                jobs.push(upload_job(&name));
            }
        }
        for f in 0..FOLDERS {
            // One ordered key per folder: the three start in this order, whatever their
            // priority, and each waits for the one before it, retries included.
            for (op, priority) in [("create", 0), ("rename", 5), ("delete", 9)] {
                jobs.push(
                    NewJob::new("folders", format!("{op} folder-{f:03}"))
                        .concurrency_key(format!("folder-{f:03}"))
                        .ordered()
                        .priority(priority)
                        .max_attempts(10),
                );
            }
        }
        for i in 0..ITEMS {
            jobs.push(NewJob::new("downloads", format!("item-{i:04}")).max_attempts(10));
        }
        let n = tx.enqueue_batch(jobs)?.len();
        add(tx, "recorded", 1)?;
        println!(
            "recorded {n} jobs: {FILES} uploads, {} folder operations, {ITEMS} downloads",
            FOLDERS * 3
        );
        Ok(())
    })
}

fn file(i: u64) -> String {
    format!("photos/{i:05}.jpg")
}

/// An upload of the current version of file `name`: a change-safe unique key, so that an
/// edit while the upload runs is uploaded by a run after it.
fn upload_job(name: &str) -> NewJob {
    NewJob::new("uploads", name)
        .unique_key(name)
        .concurrency_key(account(name))
        .max_attempts(10)
}

/// The account a file belongs to: one of eight.
fn account(name: &str) -> String {
    format!("account-{}", file_number(name) % 8)
}

fn file_number(name: &str) -> u64 {
    name.trim_start_matches("photos/")
        .trim_end_matches(".jpg")
        .parse()
        .unwrap_or(0)
}

/// The account the remote rate-limits now and then.
const LIMITED: &str = "account-3";
/// How long the remote asks that account to wait (its `Retry-After`).
const RETRY_AFTER: Duration = Duration::from_millis(300);

/// Edits files while they upload: each edit bumps the local version and enqueues its upload in
/// one transaction. Every other edit is of a file being uploaded at that moment (a user saving
/// the file the worker is sending). Counts the edits that came while the file's upload ran
/// (follow-ups).
async fn edit_files(store: Store, remote: Arc<FlakyRemote>) -> quern::Result<()> {
    let mut n = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || store.write(|tx| counter(tx, "edits")))
            .await
            .map_err(|_| quern::Error::Closed)??
    };
    while n < EDITS {
        let sending = remote.sending.lock().iter().next().cloned();
        let name = match sending {
            Some(name) if n % 2 == 0 => name,
            _ => file((n * 7_919) % FILES),
        };
        let store = store.clone();
        tokio::task::spawn_blocking(move || {
            store.write(|tx| {
                {
                    let mut local = tx.open_table(LOCAL)?;
                    let version = local.get(name.as_str())?.map_or(0, |g| g.value());
                    local.insert(name.as_str(), version + 1)?;
                }
                if let Enqueued::FollowUp { .. } = tx.enqueue(upload_job(&name))? {
                    add(tx, "follow-ups", 1)?;
                }
                add(tx, "edits", 1)
            })
        })
        .await
        .map_err(|_| quern::Error::Closed)??;
        n += 1;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}

/// A remote that times out on the first attempt of every 7th upload, is "not ready" for every
/// 11th file the first time this process asks for it, and answers 503 to the first attempt of
/// every folder's create.
#[derive(Default)]
struct FlakyRemote {
    asked: Mutex<HashSet<String>>,
    /// Folder operations that arrived before the one they follow.
    out_of_order: AtomicU64,
    /// Uploads of the limited account, counted to answer every 150th with a 429.
    limited_uploads: AtomicU64,
    /// Until when the limited account is told to wait, if it is.
    limited_until: Mutex<Option<std::time::Instant>>,
    /// 429s answered.
    too_many: AtomicU64,
    /// Uploads of the limited account that came while it was told to wait (none should).
    came_too_soon: AtomicU64,
    /// Uploads of other accounts done while it was told to wait.
    others_meanwhile: AtomicU64,
    /// The files being sent now.
    sending: Mutex<HashSet<String>>,
}

impl FlakyRemote {
    async fn upload(&self, ctx: JobContext) -> Outcome {
        let name = String::from_utf8_lossy(ctx.payload()).into_owned();
        let n = file_number(&name);
        let waiting = self
            .limited_until
            .lock()
            .is_some_and(|t| std::time::Instant::now() < t);
        if account(&name) == LIMITED {
            if waiting {
                self.came_too_soon.fetch_add(1, Ordering::Relaxed);
            }
            if self.limited_uploads.fetch_add(1, Ordering::Relaxed) % 150 == 149 {
                *self.limited_until.lock() = Some(std::time::Instant::now() + RETRY_AFTER);
                self.too_many.fetch_add(1, Ordering::Relaxed);
                // The account is over its rate: no upload of it starts until the time the
                // remote gave; the other accounts go on.
                return Outcome::park_key(RETRY_AFTER, "429 Too Many Requests, Retry-After: 0.3 s");
            }
        } else if waiting {
            self.others_meanwhile.fetch_add(1, Ordering::Relaxed);
        }
        let first_ask = self.asked.lock().insert(name.clone());
        if n.is_multiple_of(11) && first_ask {
            return Outcome::Snooze(Duration::from_millis(200));
        }
        if n.is_multiple_of(7) && ctx.job().attempts == 1 {
            return Outcome::retry(format!("timeout uploading {name}"));
        }
        // Reads the file, then takes a while to send it: an edit meanwhile is not in it.
        let store = ctx.store().clone();
        let read = {
            let (store, name) = (store.clone(), name.clone());
            tokio::task::spawn_blocking(move || {
                store.write(|tx| {
                    Ok::<_, quern::Error>(
                        tx.open_table(LOCAL)?
                            .get(name.as_str())?
                            .map_or(0, |g| g.value()),
                    )
                })
            })
            .await
        };
        let version = match read {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => return Outcome::retry(e),
            Err(e) => return Outcome::retry(e),
        };
        self.sending.lock().insert(name.clone());
        tokio::time::sleep(Duration::from_millis(5)).await;
        self.sending.lock().remove(&name);
        let stored = tokio::task::spawn_blocking(move || {
            store.write(|tx| {
                tx.open_table(REMOTE)?.insert(name.as_str(), version)?;
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

    async fn folder(&self, ctx: JobContext) -> Outcome {
        let payload = String::from_utf8_lossy(ctx.payload()).into_owned();
        let Some((op, folder)) = payload.split_once(' ') else {
            return Outcome::discard(format!("not a folder operation: {payload}"));
        };
        let step = match op {
            "create" => 1,
            "rename" => 2,
            _ => 3,
        };
        if step == 1 && ctx.job().attempts == 1 {
            return Outcome::retry("503 Service Unavailable");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        let (store, folder) = (ctx.store().clone(), folder.to_owned());
        let applied = tokio::task::spawn_blocking(move || {
            store.write(|tx| {
                let mut remote = tx.open_table(REMOTE_FOLDERS)?;
                let last = remote.get(folder.as_str())?.map_or(0, |g| g.value());
                // A rerun after a crash applies its step again: the same state.
                if last != step && last != step - 1 {
                    return Ok::<_, quern::Error>(false);
                }
                remote.insert(folder.as_str(), step)?;
                Ok(true)
            })
        })
        .await;
        match applied {
            Ok(Ok(true)) => Outcome::Success,
            Ok(Ok(false)) => {
                self.out_of_order.fetch_add(1, Ordering::Relaxed);
                Outcome::discard(format!("{payload}: arrived out of order"))
            }
            Ok(Err(e)) => Outcome::retry(e),
            Err(e) => Outcome::retry(e),
        }
    }
}

/// Pulls an item into the local table and completes the job in the same transaction: a crash
/// can never leave the item written and the job pending (it would be pulled twice), nor the
/// job done and the item missing.
async fn download(ctx: JobContext) -> Outcome {
    let name = String::from_utf8_lossy(ctx.payload()).into_owned();
    tokio::time::sleep(Duration::from_millis(2)).await;
    let value = name.len() as u64 * 31;
    let written = ctx
        .settle_in(move |tx, lease| {
            tx.open_table(PULLED)?.insert(name.as_str(), value)?;
            add(tx, "pull writes", 1)?;
            tx.complete(lease)
        })
        .await;
    match written {
        Ok(()) => Outcome::Settled,
        Err(e) => Outcome::retry(e),
    }
}

fn counter(tx: &WriteTx<'_>, name: &str) -> quern::Result<u64> {
    Ok(tx.open_table(COUNTERS)?.get(name)?.map_or(0, |g| g.value()))
}

fn add(tx: &WriteTx<'_>, name: &str, n: u64) -> quern::Result<()> {
    let now = counter(tx, name)?;
    tx.open_table(COUNTERS)?.insert(name, now + n)?;
    Ok(())
}

/// Prints what the remote and the local tables hold, and whether each guarantee held.
fn report(store: &Store, remote: &FlakyRemote) -> Result<bool, Box<dyn std::error::Error>> {
    let (stale, folders_wrong, pulled, pull_writes, edits, follow_ups) = store.write(|tx| {
        let local = tx.open_table(LOCAL)?;
        let uploaded = tx.open_table(REMOTE)?;
        let mut stale = 0;
        for entry in local.iter()? {
            let (name, version) = entry?;
            if uploaded.get(name.value())?.map(|g| g.value()) != Some(version.value()) {
                stale += 1;
            }
        }
        let folders = tx.open_table(REMOTE_FOLDERS)?;
        let mut wrong = 0;
        for f in 0..FOLDERS {
            let name = format!("folder-{f:03}");
            if folders.get(name.as_str())?.map(|g| g.value()) != Some(3) {
                wrong += 1;
            }
        }
        let pulled = tx.open_table(PULLED)?.iter()?.count() as u64;
        Ok::<_, quern::Error>((
            stale,
            wrong,
            pulled,
            counter(tx, "pull writes")?,
            counter(tx, "edits")?,
            counter(tx, "follow-ups")?,
        ))
    })?;
    let stats = store.stats()?;
    let failed: u64 = ["uploads", "folders", "downloads"]
        .iter()
        .filter_map(|q| stats.queue(q))
        .map(|q| q.failed)
        .sum();
    println!(
        "uploads: {edits} edits, {follow_ups} of them while the file's upload ran (a follow-up \
         uploaded them); files whose remote copy is not the latest version: {stale}"
    );
    println!(
        "folders: {} operations out of order in this run, folders not created, renamed and \
         deleted in order: {folders_wrong}",
        remote.out_of_order.load(Ordering::Relaxed)
    );
    println!("downloads: {pulled} items pulled in {pull_writes} writes (one each)");
    let too_soon = remote.came_too_soon.load(Ordering::Relaxed);
    println!(
        "backpressure: {} answered 429 to {LIMITED}, which was parked each time; {} uploads of \
         other accounts ran while it waited; uploads of it that came too soon: {too_soon}",
        remote.too_many.load(Ordering::Relaxed),
        remote.others_meanwhile.load(Ordering::Relaxed),
    );
    let ok = stale == 0
        && folders_wrong == 0
        && pulled == ITEMS
        && pull_writes == ITEMS
        && too_soon == 0;
    println!(
        "{}; jobs failed for good: {failed}",
        if ok {
            "every check held"
        } else {
            "A CHECK FAILED"
        }
    );
    Ok(ok && failed == 0)
}
