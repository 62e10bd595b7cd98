//! The `quern` utility, run as a real process against databases built here, also while this
//! process holds the database open for writing.

use std::path::PathBuf;
use std::process::Command;

use quern::redb::TableDefinition;
use quern::{JobId, JobState, NewJob, Store};
use serde_json::Value;
use utility::{quern, s, stderr, stdout};

mod utility;

/// A database with a succeeded, a failed-for-good, a running and two pending jobs.
fn build(dir: &tempfile::TempDir) -> (PathBuf, Store) {
    let path = dir.path().join("q.redb");
    let store = Store::open(&path).unwrap();
    store
        .enqueue_batch([
            NewJob::new("uploads", r#"{"file":"a.jpg"}"#),
            NewJob::new("uploads", "b.jpg").max_attempts(1),
            NewJob::new("uploads", vec![0xff, 0x00, 0x10]),
            NewJob::new("mail", "hello").unique_key("welcome"),
        ])
        .unwrap();
    let mut claimed = store.claim("uploads", 3).unwrap();
    let running = claimed.pop().unwrap();
    store.set_progress(&running.lease, "3/9 parts").unwrap();
    let b = claimed.pop().unwrap();
    store.fail(b.lease, "bucket said 403").unwrap();
    store.complete(claimed.pop().unwrap().lease).unwrap();
    (path, store)
}

#[test]
fn stats_and_dump_read_a_database_another_process_is_writing() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _writer) = build(&dir);
    let out = quern(&["stats", s(&path)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let uploads = text.lines().find(|l| l.starts_with("uploads")).unwrap();
    let numbers: Vec<&str> = uploads.split_whitespace().skip(1).take(5).collect();
    assert_eq!(
        numbers,
        ["0", "1", "0", "1", "1"],
        "pending running retrying failed succeeded"
    );

    let out = quern(&["dump", s(&path), "--format", "jsonl"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let jobs: Vec<Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(jobs.len(), 4);
    for field in [
        "id",
        "queue",
        "state",
        "priority",
        "attempts",
        "max_attempts",
        "run_at",
        "next_attempt_at",
        "last_error",
        "unique_key",
        "concurrency_key",
        "progress",
        "lease_expires_at",
        "created_at",
        "updated_at",
        "finished_at",
        "manual_retries",
        "payload",
        "payload_encoding",
    ] {
        assert!(
            jobs.iter().all(|j| j.get(field).is_some()),
            "missing {field}"
        );
    }
    assert_eq!(
        (&jobs[0]["payload"], &jobs[0]["payload_encoding"]),
        (&Value::from(r#"{"file":"a.jpg"}"#), &Value::from("utf8")),
        "JSON payloads are their exact text"
    );
    assert_eq!(jobs[1]["payload"], "b.jpg", "text payloads are text");
    assert_eq!(
        (&jobs[2]["payload"], &jobs[2]["payload_encoding"]),
        (&Value::from("ff0010"), &Value::from("hex")),
        "other payloads are hex"
    );
    assert_eq!(jobs[2]["progress"], "3/9 parts");
    assert_eq!(jobs[1]["last_error"], "bucket said 403");
}

#[test]
fn dump_filters_by_queue_state_and_limit_in_every_format() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _writer) = build(&dir);
    let out = quern(&[
        "dump",
        s(&path),
        "--queue",
        "uploads",
        "--state",
        "failed",
        "--format",
        "json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let jobs: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0]["state"], "failed");
    let out = quern(&["dump", s(&path), "--limit", "2"]);
    assert_eq!(stdout(&out).lines().count(), 3, "a header and two rows");
    let out = quern(&["dump", s(&path), "--state", "pending", "--format", "json"]);
    let jobs: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(jobs[0]["queue"], "mail");
}

#[test]
fn show_prints_every_field_of_one_job() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _writer) = build(&dir);
    let out = quern(&["show", s(&path), "2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.starts_with("job 2  queue uploads  failed"), "{text}");
    assert!(text.contains("bucket said 403"));
    let out = quern(&["show", s(&path), "3", "--format", "json"]);
    let job: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (job["id"].as_u64(), job["state"].as_str()),
        (Some(3), Some("in_progress"))
    );
}

#[test]
fn retry_cancel_and_prune_write_when_no_writer_holds_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (path, writer) = build(&dir);
    drop(writer);
    let out = quern(&["retry", s(&path), "--queue", "uploads", "--state", "failed"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = quern(&["cancel", s(&path), "4"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = quern(&["prune", s(&path), "--older-than", "0s"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("pruned 2"), "{}", stdout(&out));
    let store = Store::open(&path).unwrap();
    let retried = store.get(JobId(2)).unwrap().unwrap();
    assert_eq!(
        (retried.state, retried.attempts, retried.manual_retries),
        (JobState::Pending, 0, 1)
    );
    assert!(
        store.get(JobId(4)).unwrap().is_none(),
        "cancelled, then pruned"
    );
    assert!(
        store.get(JobId(1)).unwrap().is_none(),
        "succeeded, then pruned"
    );
}

#[test]
fn check_passes_a_healthy_database_live_and_at_rest() {
    let dir = tempfile::tempdir().unwrap();
    let (path, writer) = build(&dir);
    let out = quern(&["check", s(&path)]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    // Verified in memory beside the writer, or skipped if it committed meanwhile.
    let report = stdout(&out);
    assert!(
        report.starts_with("storage: ok\n") || report.starts_with("storage: skipped"),
        "{report}"
    );
    drop(writer);
    let out = quern(&["check", s(&path)]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert_eq!(stdout(&out), "storage: ok\ninvariants: ok\n");
}

#[test]
fn check_reports_a_damaged_file_and_show_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes =
        std::fs::read(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v2.redb"))
            .unwrap();
    // The page type byte of the page holding the job records: no longer a kind of page.
    let at = bytes.windows(4).position(|w| w == b"boom").unwrap();
    bytes[at / 4096 * 4096] ^= 1;
    let path = dir.path().join("damaged.redb");
    std::fs::write(&path, bytes).unwrap();
    let out = quern(&["check", s(&path)]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(
        stdout(&out).starts_with("storage: corrupt: "),
        "{}",
        stdout(&out)
    );
    let out = quern(&["show", s(&path), "1"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).starts_with(&format!("quern: corrupt database file {}", s(&path))),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        stderr(&out).lines().count(),
        1,
        "one line, no panic message from the storage engine before it: {}",
        stderr(&out)
    );
}

fn fails_with(args: &[&str], needle: &str) {
    let out = quern(args);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
    assert!(stderr(&out).contains(needle), "{args:?}: {}", stderr(&out));
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
}

#[test]
fn bad_input_is_one_line_naming_what_and_where_with_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.redb");
    fails_with(&["stats", s(&missing)], "missing.redb: no such file");
    fails_with(&["retry", s(&missing), "1"], "no such file");
    assert!(!missing.exists(), "nothing was created");

    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "not a database".repeat(500)).unwrap();
    fails_with(&["dump", s(&text)], "notes.txt");

    let other = dir.path().join("other.redb");
    {
        const T: TableDefinition<u64, u64> = TableDefinition::new("t");
        let db = quern::redb::Database::create(&other).unwrap();
        let tx = db.begin_write().unwrap();
        tx.open_table(T).unwrap().insert(1, 1).unwrap();
        tx.commit().unwrap();
    }
    fails_with(&["stats", s(&other)], "is not a quern database");

    let newer = dir.path().join("newer.redb");
    drop(Store::open(&newer).unwrap());
    {
        const META: TableDefinition<&str, u64> = TableDefinition::new("quern_meta");
        let db = quern::redb::Database::create(&newer).unwrap();
        let tx = db.begin_write().unwrap();
        tx.open_table(META)
            .unwrap()
            .insert("format_version", 99)
            .unwrap();
        tx.commit().unwrap();
    }
    fails_with(&["stats", s(&newer)], "format version 99");

    let (path, writer) = build(&dir);
    // A holder that serves no control channel: a write command cannot reach it.
    drop(writer);
    let _writer = Store::builder().control_channel(false).open(&path).unwrap();
    fails_with(
        &["cancel", s(&path), "4"],
        "open for writing by another process, which serves no control channel",
    );
    fails_with(&["show", s(&path), "42"], "job 42 not found");
    fails_with(
        &["prune", s(&path), "--older-than", "7 parsecs"],
        "older-than",
    );
}

#[test]
fn a_storage_failure_is_one_line_with_its_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "not a database".repeat(500)).unwrap();
    let out = quern(&["stats", s(&text)]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let line = stderr(&out);
    assert_eq!(line.lines().count(), 1, "{line}");
    assert!(
        line.starts_with(&format!("quern: cannot open quern database {}: ", s(&text))),
        "{line}"
    );
    // redb's message names the I/O error under it; the chain adds nothing after it.
    assert_eq!(line.matches("magic number").count(), 1, "{line}");
}

#[test]
fn a_closed_pipe_is_not_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.redb");
    {
        let store = Store::open(&path).unwrap();
        store
            .enqueue_batch((0..5_000).map(|i| NewJob::new("q", format!("job {i}"))))
            .unwrap();
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_quern"))
        .args(["dump", s(&path), "--format", "jsonl"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 64];
    std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut first).unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn stats_and_show_say_what_is_paused_parked_and_limited() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.redb");
    let store = Store::open(&path).unwrap();
    let id = store
        .enqueue(NewJob::new("uploads", "a.jpg").concurrency_key("acct-7"))
        .unwrap()
        .id();
    store.pause("mail").unwrap();
    let until = quern::Timestamp(store.now().0 + 3_600_000);
    store
        .park("uploads", Some("acct-7"), until, "429 Retry-After: 3600")
        .unwrap();
    let limit = quern::RateLimit::new(10, std::time::Duration::from_secs(1)).unwrap();
    store.set_rate_limit("uploads", None, Some(limit)).unwrap();

    let out = quern(&["stats", s(&path)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("queue mail: paused"), "{text}");
    assert!(
        text.contains("queue uploads key acct-7: parked until")
            && text.contains("(429 Retry-After: 3600)"),
        "{text}"
    );
    assert!(text.contains("queue uploads: at most 10 per 1s"), "{text}");

    let out = quern(&["stats", s(&path), "--format", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let controls = v["controls"].as_array().unwrap();
    assert_eq!(controls.len(), 3, "{v}");
    let parked = controls.iter().find(|c| c["key"] == "acct-7").unwrap();
    assert_eq!(parked["parked_until"], until.0);
    assert_eq!(parked["reason"], "429 Retry-After: 3600");

    let out = quern(&["show", s(&path), &id.0.to_string()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("queue uploads key acct-7: parked until"),
        "{text}"
    );
    assert!(text.contains("queue uploads: at most 10 per 1s"), "{text}");
    assert!(
        !text.contains("queue mail"),
        "another queue's control: {text}"
    );
}
