//! A database file whose worker was killed with SIGKILL, for the tests of reading such a file:
//! the test binary runs again as the worker child, which leaves jobs succeeded, in progress and
//! pending, says it is ready, and is killed.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use quern::{NewJob, Store};

/// Set (to the database file) in the child's environment.
const CHILD_DB: &str = "QUERN_KILLED_WORKER_DB";

/// When this process is the child: opens the file for writing, enqueues `jobs` in queue `q`,
/// claims three and completes the first, says it is ready and waits to be killed (job 1 is
/// then succeeded, 2 and 3 in progress, the rest pending). Otherwise returns at once.
pub fn as_child(jobs: impl Iterator<Item = NewJob>) {
    let Some(db) = std::env::var_os(CHILD_DB) else {
        return;
    };
    let store = Store::open(Path::new(&db)).unwrap();
    store.enqueue_batch(jobs).unwrap();
    let mut claimed = store.claim("q", 3).unwrap();
    assert_eq!(claimed.len(), 3);
    store.complete(claimed.remove(0).lease).unwrap();
    println!("child ready");
    std::io::Write::flush(&mut std::io::stdout()).unwrap();
    loop {
        std::thread::park();
    }
}

/// Runs `test` of this binary as the child on a new file in `dir` (the test calls
/// [`as_child`] first), waits for its ready line, kills it with SIGKILL and returns the file,
/// left unclosed.
pub fn killed_worker(dir: &tempfile::TempDir, test: &str) -> PathBuf {
    let db = dir.path().join("q.redb");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_DB, &db)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = lines
        .map(Result::unwrap)
        .any(|l| l.ends_with("child ready"));
    assert!(ready, "the child exited before it was ready");
    child.kill().unwrap();
    child.wait().unwrap();
    db
}
