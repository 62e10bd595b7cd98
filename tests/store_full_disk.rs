//! A disk that runs out of room under a writing store: the caller gets an error that says what
//! failed, nothing panics, every job the store acknowledged is still there after a reopen, and
//! the file is consistent.
//!
//! The child process runs under a file size limit (`ulimit -f`, with SIGXFSZ ignored), so that
//! growing the database file past it fails as a full disk does: the write system calls refuse
//! (EFBIG here, ENOSPC on a full disk) and the store must stop without losing what it committed.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use quern::{JobId, JobState, NewJob, Store};

const BATCH: usize = 100;
/// The child's file size limit, in the 1,024-byte blocks of bash's `ulimit -f`: 2 MiB.
const LIMIT_BLOCKS: u32 = 2048;

/// The child: enqueues batches until the store refuses, printing the ids of each batch it
/// acknowledged (to a pipe, which the file size limit does not cover), then the errors of the
/// failing call and of one more call. Each report starts a line of its own: the test harness
/// prints the test's name before it, without a line break.
fn fill(db: &Path) {
    let store = Store::open(db).expect("the file is created below the limit");
    for batch in 0.. {
        let jobs = (0..BATCH).map(|i| NewJob::new("fill", vec![b'x'; 400 + i + batch % 7]));
        match store.enqueue_batch(jobs) {
            Ok(done) => {
                let ids: Vec<String> = done.iter().map(|e| e.id().0.to_string()).collect();
                println!("\nok {}", ids.join(" "));
            }
            Err(e) => {
                println!("\nerr {e}");
                match store.enqueue(NewJob::new("fill", "after")) {
                    Ok(e) => println!("\nafter ok {}", e.id().0),
                    Err(e) => println!("\nafter err {e}"),
                }
                return;
            }
        }
    }
}

#[test]
fn a_full_disk_is_an_error_and_loses_no_acknowledged_job() {
    if let Ok(db) = std::env::var("QUERN_FULL_DISK_CHILD") {
        fill(Path::new(&db));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("full.redb");
    let exe = std::env::current_exe().unwrap();
    let test = "a_full_disk_is_an_error_and_loses_no_acknowledged_job";
    // Ignored signals stay ignored across exec, so the child's writes past the limit fail with
    // EFBIG instead of killing it.
    let child = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "trap '' XFSZ; ulimit -f {LIMIT_BLOCKS}; exec \"$0\" \"$@\""
        ))
        .arg(&exe)
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env("QUERN_FULL_DISK_CHILD", &db)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the child failed ({}): {stderr}",
        output.status
    );

    let mut acknowledged = Vec::new();
    let mut errors = Vec::new();
    for line in BufReader::new(output.stdout.as_slice()).lines() {
        let line = line.unwrap();
        if let Some(ids) = line.strip_prefix("ok ") {
            acknowledged.extend(ids.split(' ').map(|id| JobId(id.parse().unwrap())));
        } else if let Some(e) = line.strip_prefix("err ") {
            errors.push(e.to_owned());
        } else if let Some(after) = line.strip_prefix("after ") {
            assert!(
                after.starts_with("err "),
                "a write after the disk filled succeeded: {after}"
            );
            errors.push(after["err ".len()..].to_owned());
        }
    }
    assert!(
        acknowledged.len() >= BATCH,
        "the child wrote nothing before the limit: {stderr}"
    );
    assert_eq!(errors.len(), 2, "the child's errors: {errors:?}");
    assert!(
        errors[0].contains("File too large"),
        "the error does not say what failed: {}",
        errors[0]
    );
    let file = db.display().to_string();
    assert!(
        errors.iter().all(|e| e.contains(&file)),
        "an error does not name the file: {errors:?}"
    );
    assert!(
        std::fs::metadata(&db).unwrap().len() <= u64::from(LIMIT_BLOCKS) * 1024,
        "the file outgrew the limit"
    );

    // Without the limit: everything acknowledged is there and pending, the file is sound, and
    // the store writes again.
    let store = Store::open(&db).unwrap();
    for id in &acknowledged {
        let job = store
            .get(*id)
            .unwrap()
            .unwrap_or_else(|| panic!("{id:?} was lost"));
        assert_eq!(job.state, JobState::Pending);
    }
    let stats = store.stats().unwrap();
    assert_eq!(
        stats.queue("fill").map(|q| q.pending),
        Some(acknowledged.len() as u64),
        "jobs that were never acknowledged were written"
    );
    assert_eq!(store.check().unwrap(), Vec::new());
    store
        .enqueue(NewJob::new("fill", "after the reopen"))
        .unwrap();
}
