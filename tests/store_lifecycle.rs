//! A database file's life at its edges: created atomically whatever moment a crash hits, a file
//! a crash left half-created is initialised and nothing else is ever overwritten, and a store
//! closed after its executor's shutdown leaves the file closed cleanly, even when the process
//! exits at once.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use quern::{Error, Executor, JobState, NewJob, Outcome, Store};

/// Runs this test binary again as a child playing `role` on the database `db`.
fn child(test: &str, role: &str, db: &Path) -> Command {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env("QUERN_LIFECYCLE_CHILD", role)
        .env("QUERN_LIFECYCLE_DB", db)
        .stdout(Stdio::null());
    command
}

fn child_role() -> Option<(String, PathBuf)> {
    let role = std::env::var("QUERN_LIFECYCLE_CHILD").ok()?;
    let db = std::env::var_os("QUERN_LIFECYCLE_DB")?.into();
    Some((role, db))
}

/// The files in `dir`, sorted.
fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A small pseudo-random sequence, the same for a seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[test]
fn a_kill_at_any_moment_of_creation_leaves_no_file_or_a_whole_database() {
    if let Some((role, db)) = child_role() {
        if role == "create" {
            // Tells the parent it is about to create, so that the kill lands in the creation.
            println!("creating");
            drop(Store::open(&db).unwrap());
        }
        return;
    }
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    let mut rng = Rng(seed);
    let (mut whole, mut absent, mut midway) = (0, 0, 0);
    for round in 0..60 {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("q.redb");
        let mut process = child(
            "a_kill_at_any_moment_of_creation_leaves_no_file_or_a_whole_database",
            "create",
            &db,
        )
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
        let mut ready = String::new();
        let mut out = std::io::BufReader::new(process.stdout.take().unwrap());
        while !ready.contains("creating") {
            ready.clear();
            let n = std::io::BufRead::read_line(&mut out, &mut ready).unwrap();
            assert!(n > 0, "round {round}: the child ended before creating");
        }
        // The kill lands anywhere from the start of the creation to after it is done.
        std::thread::sleep(Duration::from_micros(rng.below(12_000)));
        let _ = process.kill();
        let status = process.wait().unwrap();
        // Killed, or done: never failed.
        assert!(
            status.success() || std::os::unix::process::ExitStatusExt::signal(&status) == Some(9),
            "round {round} (seed {seed}): the child failed: {status}"
        );
        let existed = db.exists();
        midway += usize::from(files(dir.path()).len() > usize::from(existed));
        // The next open opens the whole database the child left (repairing it if the kill
        // landed while the child held it open), or creates one; and it clears what a killed
        // creation left beside it.
        let store = Store::open(&db).unwrap_or_else(|e| {
            panic!(
                "round {round} (seed {seed}): {e}: {:?}",
                std::error::Error::source(&e)
            )
        });
        assert!(store.stats().unwrap().queues.is_empty());
        assert_eq!(store.check().unwrap(), []);
        drop(store);
        assert_eq!(files(dir.path()), ["q.redb"], "round {round} (seed {seed})");
        if existed {
            whole += 1;
        } else {
            absent += 1;
        }
    }
    eprintln!(
        "seed {seed}: {whole} kills left a whole database, {absent} none, {midway} a temporary file"
    );
    assert!(
        midway > 0,
        "no kill landed while a database was being created (seed {seed})"
    );
}

#[test]
fn a_file_a_crash_left_half_created_is_initialised() {
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in [
        ("zeros.redb", vec![0u8; 73_728]),
        ("empty.redb", Vec::new()),
    ] {
        let db = dir.path().join(name);
        std::fs::write(&db, &bytes).unwrap();
        let store = Store::open(&db).unwrap();
        let id = store.enqueue(NewJob::new("q", "x")).unwrap().id();
        assert_eq!(store.get(id).unwrap().unwrap().state, JobState::Pending);
    }
}

#[test]
fn a_file_holding_anything_else_is_never_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, Vec<u8>); 3] = [
        ("notes.txt", b"not a database".repeat(500)),
        ("one-byte.redb", {
            let mut zeros = vec![0u8; 73_728];
            zeros[40_000] = 1;
            zeros
        }),
        ("large-zeros.redb", vec![0u8; 2 * 1024 * 1024]),
    ];
    for (name, bytes) in cases {
        let db = dir.path().join(name);
        std::fs::write(&db, &bytes).unwrap();
        let opened = Store::open(&db);
        assert!(opened.is_err(), "{name} opened");
        assert_eq!(std::fs::read(&db).unwrap(), bytes, "{name} changed");
    }
}

#[test]
fn without_create_a_missing_or_half_created_file_is_refused_and_left_as_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.redb");
    let opened = Store::builder().create(false).open(&missing);
    assert!(matches!(opened, Err(Error::Open { .. })), "{opened:?}");
    assert!(!missing.exists());
    let empty = dir.path().join("empty.redb");
    std::fs::write(&empty, b"").unwrap();
    let opened = Store::builder().create(false).open(&empty);
    assert!(matches!(opened, Err(Error::NotQuern { .. })), "{opened:?}");
    assert_eq!(std::fs::read(&empty).unwrap(), b"");
}

#[test]
fn a_fifo_is_refused_rather_than_read() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("q.redb");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    for opened in [Store::open_read_only(&fifo), Store::open(&fifo)] {
        match opened {
            Err(Error::Open { source, .. }) => {
                assert!(
                    source.to_string().contains("not a regular file"),
                    "{source}"
                )
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
}

/// The child of the close tests: runs an executor, shuts it down while jobs run and settle (as
/// a Ctrl-C would), closes the store (or only drops it), and exits the process at once.
fn close_child(db: &Path, close: bool) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let store = Store::open(db).unwrap();
    rt.block_on(async {
        let handle = Executor::builder(store.clone())
            .queue("q")
            .concurrency(8)
            .spawn(|ctx| async move {
                // A handler that writes through the store, as a sync worker's does.
                let store = ctx.store().clone();
                tokio::task::spawn_blocking(move || store.stats().map(drop))
                    .await
                    .unwrap()
                    .unwrap();
                Outcome::Success
            })
            .unwrap();
        loop {
            let seen = store.generation();
            let done = store.stats().unwrap().queue("q").map_or(0, |q| q.succeeded);
            if done >= 300 {
                break;
            }
            tokio::time::timeout(Duration::from_secs(20), store.changed(seen))
                .await
                .expect("the jobs run");
        }
        handle.shutdown(Duration::from_secs(5)).await.unwrap();
    });
    if close {
        store.close();
    } else {
        drop(store);
    }
    std::process::exit(0);
}

fn closes_cleanly(test: &str, role: &str) {
    for round in 0..8 {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("q.redb");
        Store::open(&db)
            .unwrap()
            .enqueue_batch((0..3_000).map(|i| NewJob::new("q", format!("{i}"))))
            .unwrap();
        let status = child(test, role, &db).status().unwrap();
        assert!(status.success(), "round {round}: the child failed");
        let store = Store::open_read_only(&db).unwrap();
        assert!(store.closed_cleanly(), "round {round}: not closed cleanly");
        let q = store.stats().unwrap().queue("q").cloned().unwrap();
        assert!(q.succeeded >= 300, "round {round}: {q:?}");
        assert_eq!(
            q.in_progress, 0,
            "round {round}: shutdown left nothing running"
        );
    }
}

#[test]
fn a_store_closed_after_shutdown_is_closed_cleanly_when_the_process_exits_at_once() {
    if let Some((role, db)) = child_role() {
        if role == "close" {
            close_child(&db, true);
        }
        return;
    }
    closes_cleanly(
        "a_store_closed_after_shutdown_is_closed_cleanly_when_the_process_exits_at_once",
        "close",
    );
}

#[test]
fn a_store_dropped_after_shutdown_is_closed_cleanly_when_the_process_exits_at_once() {
    if let Some((role, db)) = child_role() {
        if role == "drop" {
            close_child(&db, false);
        }
        return;
    }
    closes_cleanly(
        "a_store_dropped_after_shutdown_is_closed_cleanly_when_the_process_exits_at_once",
        "drop",
    );
}

#[test]
fn creators_racing_for_a_half_created_file_never_replace_each_others_database() {
    for round in 0..10 {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("q.redb");
        std::fs::write(&db, vec![0u8; 73_728]).unwrap();
        let barrier = std::sync::Barrier::new(6);
        let enqueued: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..6)
                .map(|_| {
                    s.spawn(|| {
                        barrier.wait();
                        match Store::open(&db) {
                            // Each winner writes a job while it holds the file; a database
                            // put over its file by another creator would lose it.
                            Ok(store) => {
                                store.enqueue(NewJob::new("q", "mine")).unwrap();
                                store.close();
                                1
                            }
                            Err(Error::AlreadyOpen { .. }) => 0,
                            Err(e) => panic!("round {round}: {e}"),
                        }
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert!(enqueued >= 1, "round {round}: nobody opened it");
        let store = Store::open(&db).unwrap();
        assert_eq!(
            store.stats().unwrap().queue("q").map_or(0, |q| q.pending),
            enqueued as u64,
            "round {round}: a job acknowledged by one creator was lost"
        );
    }
}

#[test]
fn a_database_is_created_where_a_symbolic_link_points_and_the_link_stays() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("data");
    std::fs::create_dir(&real).unwrap();
    let target = real.join("q.redb");
    let link = dir.path().join("q.redb");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    // A dangling link: the database is created at its target.
    drop(Store::open(&link).unwrap());
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(target.is_file());
    // A link to a half-created file: the file it names is replaced, the link stays.
    std::fs::write(&target, b"").unwrap();
    let store = Store::open(&link).unwrap();
    store.enqueue(NewJob::new("q", "x")).unwrap();
    store.close();
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(
        Store::open_read_only(&target)
            .unwrap()
            .stats()
            .unwrap()
            .queue("q")
            .unwrap()
            .pending,
        1
    );
}

#[test]
fn a_half_created_file_made_ready_by_hand_keeps_its_permissions() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("q.redb");
    std::fs::write(&db, b"").unwrap();
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o640)).unwrap();
    drop(Store::open(&db).unwrap());
    let mode = std::fs::metadata(&db).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640);
}

/// The child of the signal test: runs jobs that never end, and says "ready" once two run and
/// it listens for signals; stops on a signal with a short grace, then closes the store.
fn signal_child(db: &Path) {
    use std::future::Future;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = Store::open(db).unwrap();
    let running = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let r = running.clone();
    let got = rt.block_on(async {
        let handle = Executor::builder(store.clone())
            .queue("q")
            .concurrency(2)
            .spawn(move |_ctx| {
                r.add_permits(1);
                std::future::pending()
            })
            .unwrap();
        let mut run = std::pin::pin!(handle.run_until_signal(Duration::from_millis(200)));
        // Polled once, it listens: a signal from now on is seen.
        std::future::poll_fn(|cx| {
            assert!(run.as_mut().poll(cx).is_pending());
            std::task::Poll::Ready(())
        })
        .await;
        running.acquire_many(2).await.unwrap().forget();
        println!("\nready");
        run.await
    });
    println!("\nstopped on {got:?}");
    store.close();
    std::process::exit(0);
}

#[test]
fn sigterm_shuts_the_executor_down_gracefully_and_the_store_closes_cleanly() {
    use std::io::BufRead;
    if let Some((role, db)) = child_role() {
        if role == "signal" {
            signal_child(&db);
        }
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("q.redb");
    Store::open(&db)
        .unwrap()
        .enqueue_batch((0..10).map(|i| NewJob::new("q", format!("{i}"))))
        .unwrap();
    let test = "sigterm_shuts_the_executor_down_gracefully_and_the_store_closes_cleanly";
    let mut child = child(test, "signal", &db)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    // Its event: two jobs running.
    assert!(
        lines.any(|l| l.unwrap() == "ready"),
        "the child never ran its jobs"
    );
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let rest: Vec<String> = lines.map(Result::unwrap).collect();
    assert!(child.wait().unwrap().success());
    assert!(
        rest.iter().any(|l| l == "stopped on Ok(Terminate)"),
        "{rest:?}"
    );
    let store = Store::open_read_only(&db).unwrap();
    assert!(store.closed_cleanly(), "the file was closed");
    let q = store.stats().unwrap().queue("q").cloned().unwrap();
    assert_eq!(
        (q.in_progress, q.pending),
        (0, 10),
        "the running jobs were given back"
    );
    let jobs = store.list(&quern::Filter::default()).unwrap();
    assert!(jobs.iter().all(|j| j.attempts == 0), "with their attempts");
}
