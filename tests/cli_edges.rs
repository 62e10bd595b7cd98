//! The `quern` utility under careless and hostile input: commands that must change all or
//! nothing, text from users that must not reach the terminal as it is, JSON output that must
//! keep payloads byte for byte and stay well-formed, and the messages of bad arguments.

use std::path::{Path, PathBuf};
use std::process::Command;

use quern::{JobId, JobState, NewJob, Store};
use serde_json::Value;
use utility::{quern, s, stderr, stdout};

mod utility;

/// Runs `args`, which must fail with exit code 2 and one line on stderr containing `needle`;
/// returns that line.
fn fails_with(args: &[&str], needle: &str) -> String {
    let out = quern(args);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    assert_eq!(err.lines().count(), 1, "{args:?}: one line: {err}");
    assert!(err.contains(needle), "{args:?}: {err}");
    assert!(out.stdout.is_empty(), "{args:?}: {}", stdout(&out));
    err
}

/// The jobs of the write-command tests, in a file no process holds.
struct Jobs {
    path: PathBuf,
    pending: JobId,
    running: JobId,
    retrying: JobId,
    dead: JobId,
    succeeded: JobId,
}

/// A pending, a running, a retry-scheduled, a failed-for-good and a succeeded job, each alone
/// in its queue so that each claim takes the one meant.
fn jobs(dir: &tempfile::TempDir) -> Jobs {
    let path = dir.path().join("q.redb");
    let store = Store::open(&path).unwrap();
    let id = |queue: &str| {
        store
            .enqueue(NewJob::new(queue, "x").max_attempts(2))
            .unwrap()
            .id()
    };
    let (pending, running, retrying, dead, succeeded) =
        (id("p"), id("r"), id("t"), id("d"), id("s"));
    let claim = |queue: &str| store.claim(queue, 1).unwrap().pop().unwrap().lease;
    let _running = claim("r");
    store.fail(claim("t"), "try again").unwrap();
    store.discard(claim("d"), "no use").unwrap();
    store.complete(claim("s")).unwrap();
    drop(store);
    Jobs {
        path,
        pending,
        running,
        retrying,
        dead,
        succeeded,
    }
}

fn state(path: &Path, id: JobId) -> (JobState, bool) {
    let job = Store::open_read_only(path)
        .unwrap()
        .get(id)
        .unwrap()
        .unwrap();
    (job.state, job.next_attempt_at.is_some())
}

/// Runs a command that must be refused, naming `needle`, and leave the file's bytes as they
/// were.
fn refused_leaving_the_file_as_it_was(path: &Path, args: &[&str], needle: &str) -> String {
    let before = std::fs::read(path).unwrap();
    let err = fails_with(args, needle);
    assert!(
        std::fs::read(path).unwrap() == before,
        "{args:?} changed the file"
    );
    err
}

#[test]
fn cancel_with_one_unknown_id_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let j = jobs(&dir);
    let (p, id) = (s(&j.path), j.pending.0.to_string());
    let err = refused_leaving_the_file_as_it_was(&j.path, &["cancel", p, &id, "99"], "job 99");
    assert!(err.contains("job 99 not found"), "{err}");
    assert!(err.contains("nothing cancelled"), "{err}");
    assert_eq!(state(&j.path, j.pending), (JobState::Pending, false));
}

#[test]
fn cancel_of_a_finished_job_among_live_ones_changes_nothing_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let j = jobs(&dir);
    let ids = [j.pending, j.succeeded, j.running, j.dead].map(|id| id.0.to_string());
    let mut args = vec!["cancel", s(&j.path)];
    args.extend(ids.iter().map(String::as_str));
    let err = refused_leaving_the_file_as_it_was(
        &j.path,
        &args,
        &format!("job {} is succeeded", j.succeeded),
    );
    assert!(
        err.contains(&format!("job {} is failed for good", j.dead)),
        "every refusal is named: {err}"
    );
    assert!(!err.contains(&format!("job {} ", j.pending)), "{err}");
}

#[test]
fn retry_with_one_job_that_has_not_failed_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let j = jobs(&dir);
    let ids = [j.dead, j.retrying, j.pending].map(|id| id.0.to_string());
    let err = refused_leaving_the_file_as_it_was(
        &j.path,
        &["retry", s(&j.path), &ids[0], &ids[1], &ids[2]],
        &format!("job {} is pending", j.pending),
    );
    assert!(err.contains("only failed jobs can be retried"), "{err}");
    refused_leaving_the_file_as_it_was(
        &j.path,
        &["retry", s(&j.path), &ids[0], "1000"],
        "job 1000 not found",
    );
    assert_eq!(state(&j.path, j.dead), (JobState::Failed, false));
}

#[test]
fn retry_of_a_job_whose_unique_key_another_job_holds_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.redb");
    let store = Store::open(&path).unwrap();
    let failed_job = |key: &str| {
        let id = store
            .enqueue(NewJob::new("q", "x").max_attempts(1).unique_key(key))
            .unwrap()
            .id();
        let lease = store.claim("q", 1).unwrap().pop().unwrap().lease;
        store.fail(lease, "no").unwrap();
        id
    };
    // Two failures of one key, one after the other: retrying both would make two live jobs.
    let (first, second) = (failed_job("k"), failed_job("k"));
    // A failure whose key a live job took since.
    let taken = failed_job("t");
    let holder = store
        .enqueue(NewJob::new("q", "x").unique_key("t"))
        .unwrap()
        .id();
    drop(store);

    let (a, b, c) = (
        first.0.to_string(),
        second.0.to_string(),
        taken.0.to_string(),
    );
    let err = refused_leaving_the_file_as_it_was(
        &path,
        &["retry", s(&path), &a, &b],
        &format!("job {second}'s unique key \"k\" is held by job {first}"),
    );
    assert!(err.contains("retried by this command"), "{err}");
    refused_leaving_the_file_as_it_was(
        &path,
        &["retry", s(&path), &c],
        &format!("job {taken}'s unique key \"t\" is held by job {holder}, which is live"),
    );
    refused_leaving_the_file_as_it_was(
        &path,
        &["retry", s(&path), "--queue", "q", "--state", "failed"],
        "nothing retried",
    );
}

#[test]
fn cancel_and_retry_of_ids_that_all_apply_change_every_one() {
    let dir = tempfile::tempdir().unwrap();
    let j = jobs(&dir);
    let ids = [j.pending, j.running, j.retrying, j.pending].map(|id| id.0.to_string());
    let mut args = vec!["cancel", s(&j.path)];
    args.extend(ids.iter().map(String::as_str));
    let out = quern(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "cancelled 3 job(s)\n", "each id once");
    for id in [j.pending, j.running, j.retrying] {
        assert_eq!(state(&j.path, id), (JobState::Failed, false), "job {id}");
    }

    let ids = [j.pending, j.dead].map(|id| id.0.to_string());
    let out = quern(&["retry", s(&j.path), &ids[0], &ids[1]]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "retried 2 job(s): now pending\n");
    for id in [j.pending, j.dead] {
        assert_eq!(state(&j.path, id), (JobState::Pending, false), "job {id}");
    }
}

#[test]
fn a_retry_selecting_no_jobs_leaves_the_file_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let j = jobs(&dir);
    let before = std::fs::read(&j.path).unwrap();
    let out = quern(&["retry", s(&j.path), "--queue", "p", "--state", "failed"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "retried 0 job(s): none selected\n");
    assert!(std::fs::read(&j.path).unwrap() == before);
}

/// The child role of the crash test below: with `QUERN_CLI_CRASH_DB` set, this test opens that
/// file for writing, enqueues two jobs, says it is ready and waits to be killed.
const CRASH_DB: &str = "QUERN_CLI_CRASH_DB";

#[test]
fn cancel_on_a_file_a_crashed_worker_left_unclean_checks_every_id_then_applies() {
    if let Some(db) = std::env::var_os(CRASH_DB) {
        let store = Store::open(&db).unwrap();
        store
            .enqueue_batch([NewJob::new("q", "a"), NewJob::new("q", "b")])
            .unwrap();
        // On the line libtest began with the test's name.
        println!("child ready");
        std::io::Write::flush(&mut std::io::stdout()).unwrap();
        loop {
            std::thread::park();
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.redb");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "cancel_on_a_file_a_crashed_worker_left_unclean_checks_every_id_then_applies",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CRASH_DB, &path)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
    let ready = lines
        .map(Result::unwrap)
        .any(|l| l.ends_with("child ready"));
    assert!(ready, "the child exited before it was ready");
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !Store::open_read_only(&path).unwrap().closed_cleanly(),
        "a crashed writer leaves the file unclosed, for a writable open to repair"
    );

    // The ids are checked on the file as the crash left it, read without writing it: a bad
    // one refuses the whole command, and the file keeps every byte.
    let before = std::fs::read(&path).unwrap();
    fails_with(&["cancel", s(&path), "1", "3"], "job 3 not found");
    assert!(
        std::fs::read(&path).unwrap() == before,
        "a refused cancel wrote"
    );
    assert_eq!(state(&path, JobId(1)), (JobState::Pending, false));
    let out = quern(&["cancel", s(&path), "2", "1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    for id in [JobId(1), JobId(2)] {
        assert_eq!(state(&path, id), (JobState::Failed, false), "job {id}");
    }
}

/// Bytes a terminal acts on: C0 controls but the line ends, DEL, C1 controls in UTF-8, and the
/// bidi override U+202E.
fn terminal_controls(text: &str) -> Vec<char> {
    text.chars()
        .filter(|&c| (c.is_control() && c != '\n') || ('\u{202a}'..='\u{202e}').contains(&c))
        .collect()
}

#[test]
fn show_dump_stats_and_errors_escape_control_characters_from_users() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.redb");
    let payload = "\x1b[31mred\r\x08\0\u{202e}txt\u{9b}";
    let queue = "q\x1b]0;owned\x07";
    {
        let store = Store::open(&path).unwrap();
        store
            .enqueue(
                NewJob::new(queue, payload)
                    .max_attempts(1)
                    .unique_key("u\nk")
                    .concurrency_key("c\tk"),
            )
            .unwrap();
        let lease = store.claim(queue, 1).unwrap().pop().unwrap().lease;
        store.set_progress(&lease, "50%\r100%").unwrap();
        store.fail(lease, "boom\x1b[2J\nsecond line").unwrap();
    }

    let out = quern(&["show", s(&path), "1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert_eq!(terminal_controls(&text), [], "{text:?}");
    let shown = format!(
        "payload (utf8, {} bytes) \\x1b[31mred\\r\\x08\\0\\u{{202e}}txt\\u{{9b}}\n",
        payload.len()
    );
    assert!(text.contains(&shown), "{text}");
    assert!(
        text.starts_with("job 1  queue q\\x1b]0;owned\\x07  failed\n"),
        "{text}"
    );
    assert!(text.contains("unique key     u\\nk\n"), "{text}");
    assert!(text.contains("concurrency    c\\tk\n"), "{text}");
    assert!(text.contains("progress       50%\\r100%\n"), "{text}");
    assert!(
        text.contains("last error     boom\\x1b[2J\\nsecond line\n"),
        "{text}"
    );
    assert_eq!(text.lines().count(), 15, "one line a field: {text}");

    let out = quern(&["dump", s(&path)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert_eq!(terminal_controls(&text), [], "{text:?}");
    let row = text.lines().nth(1).unwrap();
    assert!(row.contains(" q\\x1b]0;owned\\x07 "), "{row}");
    assert!(
        row.ends_with(" \\x1b[31mred\\r\\x08\\0\\u{202e}txt\\u{9b}"),
        "{row}"
    );
    assert_eq!(text.lines().count(), 2, "{text}");

    let out = quern(&["stats", s(&path)]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(terminal_controls(&stdout(&out)), [], "{}", stdout(&out));
    assert!(
        stdout(&out).contains("q\\x1b]0;owned\\x07"),
        "{}",
        stdout(&out)
    );

    // A path is user input too, and so are the values clap echoes.
    let hostile = dir.path().join("x\x1b[31m\n.redb");
    let err = fails_with(&["stats", s(&hostile)], "x\\x1b[31m\\n.redb: no such file");
    assert_eq!(terminal_controls(&err), []);
    let err = fails_with(&["show", s(&path), "1\x1b[2J"], "invalid value");
    assert_eq!(terminal_controls(&err), [], "{err:?}");
}

#[test]
fn a_long_payload_is_cut_in_the_dump_table_without_splitting_an_escape() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.redb");
    {
        let store = Store::open(&path).unwrap();
        store
            .enqueue(NewJob::new(
                "q",
                format!("{}\x1b[0m and more", "a".repeat(37)),
            ))
            .unwrap();
    }
    let out = quern(&["dump", s(&path)]);
    let row = stdout(&out).lines().nth(1).unwrap().to_owned();
    // 37 characters and `\x1b` would be 41 of the 40: the escape goes whole.
    assert!(row.ends_with(&format!(" {}…", "a".repeat(37))), "{row}");
}

#[test]
fn json_payloads_are_given_byte_for_byte_never_reparsed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.redb");
    let payloads: [&[u8]; 6] = [
        br#"{"b":1,"a":2}"#,
        br#"{"a":1,"a":2}"#,
        b"1e2",
        b"{ \"spaced\" : [1, 2.50] }\n",
        "\u{1b}[31m\u{202e}".as_bytes(),
        &[0xff, 0x00, b'{'],
    ];
    {
        let store = Store::open(&path).unwrap();
        store
            .enqueue_batch(payloads.iter().map(|p| NewJob::new("q", p.to_vec())))
            .unwrap();
    }
    let expect = |job: &Value, i: usize| {
        let (encoding, text) = match std::str::from_utf8(payloads[i]) {
            Ok(text) => ("utf8", text.to_owned()),
            Err(_) => ("hex", "ff007b".to_owned()),
        };
        assert_eq!(job["payload_encoding"], encoding, "{job}");
        assert_eq!(job["payload"].as_str(), Some(text.as_str()), "{job}");
    };

    let out = quern(&["dump", s(&path), "--format", "jsonl"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines: Vec<String> = stdout(&out).lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), payloads.len());
    for (i, line) in lines.iter().enumerate() {
        expect(&serde_json::from_str(line).unwrap(), i);
    }

    let out = quern(&["dump", s(&path), "--format", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let jobs: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(jobs.len(), payloads.len());
    for (i, job) in jobs.iter().enumerate() {
        expect(job, i);
    }

    for (i, _) in payloads.iter().enumerate() {
        let out = quern(&["show", s(&path), &(i + 1).to_string(), "--format", "json"]);
        assert!(out.status.success(), "{}", stderr(&out));
        expect(&serde_json::from_slice(&out.stdout).unwrap(), i);
    }
}

#[test]
fn stats_jsonl_is_one_object_per_line_and_json_one_document() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.redb");
    {
        let store = Store::open(&path).unwrap();
        store
            .enqueue_batch([NewJob::new("a", "x"), NewJob::new("b", "y")])
            .unwrap();
    }
    let out = quern(&["stats", s(&path), "--format", "jsonl"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert_eq!(text.lines().count(), 1, "{text}");
    for line in text.lines() {
        let stats: Value = serde_json::from_str(line).unwrap();
        assert_eq!(stats["queues"].as_array().map(Vec::len), Some(2), "{line}");
    }
    let out = quern(&["stats", s(&path), "--format", "json"]);
    let stats: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stats["queues"][1]["queue"], "b");
}

#[test]
fn an_age_that_overflows_is_reported_as_too_large() {
    let dir = tempfile::tempdir().unwrap();
    let j = jobs(&dir);
    for age in [
        "99999999999999999999d",
        "18446744073709551615d",
        "300000000000000000h",
    ] {
        let err = refused_leaving_the_file_as_it_was(
            &j.path,
            &["prune", s(&j.path), "--older-than", age],
            "is too large",
        );
        assert!(!err.contains("whole number"), "{err}");
    }
    let err = fails_with(&["prune", s(&j.path), "--older-than=-3d"], "whole number");
    assert!(!err.contains("too large"), "{err}");
}

#[test]
fn retry_state_other_than_failed_is_refused_when_the_command_is_parsed() {
    let dir = tempfile::tempdir().unwrap();
    let j = jobs(&dir);
    for state in ["pending", "in_progress", "succeeded"] {
        refused_leaving_the_file_as_it_was(
            &j.path,
            &["retry", s(&j.path), "--queue", "p", "--state", state],
            &format!("{state} jobs cannot be retried: only failed jobs can"),
        );
    }
    // Parsed before the file is looked at: the same refusal for a file that does not exist.
    fails_with(
        &[
            "retry",
            "/nonexistent/q.redb",
            "--queue",
            "p",
            "--state",
            "pending",
        ],
        "only failed jobs can",
    );
    fails_with(
        &["retry", s(&j.path), "--queue", "p", "--state", "nonsense"],
        "unknown state",
    );
}

#[test]
fn a_symlink_loop_is_reported_as_a_loop_not_as_a_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let looped = dir.path().join("loop.redb");
    std::os::unix::fs::symlink(&looped, &looped).unwrap();
    for args in [
        vec!["stats", s(&looped)],
        vec!["dump", s(&looped)],
        vec!["show", s(&looped), "1"],
        vec!["cancel", s(&looped), "1"],
        vec!["retry", s(&looped), "1"],
        vec!["prune", s(&looped), "--older-than", "1d"],
        vec!["check", s(&looped)],
    ] {
        let err = fails_with(&args, "loop.redb: ");
        assert!(
            err.to_lowercase()
                .contains("too many levels of symbolic links"),
            "{args:?}: {err}"
        );
        assert!(!err.contains("no such file"), "{args:?}: {err}");
    }
    assert!(
        looped.symlink_metadata().unwrap().is_symlink(),
        "left alone"
    );
}

#[test]
fn command_line_mistakes_are_one_line_with_exit_code_2() {
    fails_with(
        &["cancel", "q.redb"],
        "required arguments were not provided: <IDS>",
    );
    fails_with(
        &["stats", "q.redb", "--frobnicate"],
        "unexpected argument '--frobnicate'",
    );
    fails_with(&["bogus"], "unrecognized subcommand 'bogus'");
    fails_with(
        &["retry", "q.redb"],
        "required arguments were not provided: <IDS>",
    );
    let out = quern(&["--version"]);
    assert_eq!(out.status.code(), Some(0));
}

/// A database of a few thousand jobs with its last 4 KiB cut off, as a disk that lost its tail
/// would leave it.
fn truncated(dir: &tempfile::TempDir) -> PathBuf {
    let path = dir.path().join("cut.redb");
    {
        let store = Store::open(&path).unwrap();
        store
            .enqueue_batch((0..3_000).map(|i| NewJob::new("q", format!("job number {i:>40}"))))
            .unwrap();
    }
    let len = std::fs::metadata(&path).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(len - 4096).unwrap();
    path
}

#[test]
fn dump_json_of_a_truncated_file_is_complete_json_or_nothing_with_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = truncated(&dir);
    // The file opens, and the scan meets the missing pages partway through the rows; a store
    // that refused such a file at open would leave stdout empty, which is as good.
    let out = quern(&["dump", s(&path), "--format", "json"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    if !out.stdout.is_empty() {
        let jobs: Vec<Value> = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON: {e}"));
        assert!(jobs.len() < 3_000);
    }
    let out = quern(&["dump", s(&path), "--format", "jsonl"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    for line in stdout(&out).lines() {
        serde_json::from_str::<Value>(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    }
}

/// A database of `n` small jobs, closed.
fn many(dir: &tempfile::TempDir, n: usize) -> PathBuf {
    let db = dir.path().join("many.redb");
    let store = Store::open(&db).unwrap();
    store
        .enqueue_batch((0..n).map(|i| NewJob::new("q", format!("job {i}"))))
        .unwrap();
    assert_eq!(store.claim("q", 50).unwrap().len(), 50);
    store.close();
    db
}

#[test]
fn no_command_but_upgrade_creates_initialises_or_upgrades_a_file() {
    let dir = tempfile::tempdir().unwrap();
    // An empty file and one of zeros, as a crash during creation leaves them.
    for (name, bytes) in [("empty.redb", vec![]), ("zeros.redb", vec![0u8; 73_728])] {
        let db = dir.path().join(name);
        std::fs::write(&db, &bytes).unwrap();
        for args in [
            vec!["prune", s(&db), "--older-than", "1s"],
            vec!["cancel", s(&db), "1"],
            vec!["retry", s(&db), "1"],
            vec!["stats", s(&db)],
        ] {
            let out = quern(&args);
            assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
            assert_eq!(
                std::fs::read(&db).unwrap(),
                bytes,
                "{args:?} changed {name}"
            );
        }
    }
    // Formats 2 and 3 read as they are, but a write command would upgrade them: refused, the
    // file unchanged.
    for fixture in ["v2", "v3"] {
        let old = dir.path().join(format!("{fixture}.redb"));
        std::fs::copy(format!("tests/fixtures/{fixture}.redb"), &old).unwrap();
        let before = std::fs::read(&old).unwrap();
        for args in [
            vec!["cancel", s(&old), "1"],
            vec!["prune", s(&old), "--older-than", "1s"],
        ] {
            fails_with(&args, "quern upgrade");
            assert_eq!(
                std::fs::read(&old).unwrap(),
                before,
                "{args:?} changed {fixture}"
            );
        }
        let stats = quern(&["stats", s(&old)]);
        assert_eq!(stats.status.code(), Some(0), "{}", stderr(&stats));
    }
    // A format 1 file: refused by every command but `upgrade`, which names it.
    let v1 = dir.path().join("v1.redb");
    std::fs::copy("tests/fixtures/v1.redb", &v1).unwrap();
    let before = std::fs::read(&v1).unwrap();
    for args in [
        vec!["cancel", s(&v1), "99"],
        vec!["prune", s(&v1), "--older-than", "1s"],
        vec!["stats", s(&v1)],
    ] {
        let err = fails_with(&args, "quern upgrade");
        assert!(err.contains("format version 1"), "{err}");
        assert_eq!(
            std::fs::read(&v1).unwrap(),
            before,
            "{args:?} changed the file"
        );
    }
    let check = quern(&["check", s(&v1)]);
    assert!(
        stdout(&check).contains("quern upgrade"),
        "{}",
        stdout(&check)
    );
    let upgraded = quern(&["upgrade", s(&v1)]);
    assert_eq!(upgraded.status.code(), Some(0), "{}", stderr(&upgraded));
    assert!(
        stdout(&upgraded).contains(&format!(
            "from format version 1 to {}",
            quern::FORMAT_VERSION
        )),
        "{}",
        stdout(&upgraded)
    );
    let again = quern(&["upgrade", s(&v1)]);
    assert!(
        stdout(&again).contains("nothing to upgrade"),
        "{}",
        stdout(&again)
    );
    let stats = quern(&["stats", s(&v1)]);
    assert_eq!(stats.status.code(), Some(0), "{}", stderr(&stats));
}

#[test]
fn a_fifo_is_refused_not_waited_on() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("q.redb");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    for args in [
        vec!["stats", s(&fifo)],
        vec!["dump", s(&fifo)],
        vec!["show", s(&fifo), "1"],
        vec!["cancel", s(&fifo), "1"],
    ] {
        fails_with(&args, "not a regular file");
    }
}

#[test]
fn check_under_a_file_size_limit_verifies_in_memory_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = many(&dir, 3_000);
    assert!(std::fs::metadata(&db).unwrap().len() > 200 * 1024);
    let before = std::fs::read(&db).unwrap();
    // The limit (in KiB) is below the file's size: a check that wrote would fail.
    let out = Command::new("bash")
        .args([
            "-c",
            "trap '' XFSZ; ulimit -f 20; exec \"$0\" check \"$1\"",
            env!("CARGO_BIN_EXE_quern"),
            s(&db),
        ])
        .output()
        .unwrap();
    let report = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{report}{}", stderr(&out));
    assert_eq!(report, "storage: ok\ninvariants: ok\n");
    assert!(
        std::fs::read(&db).unwrap() == before,
        "check wrote the file"
    );
    let out = quern(&["stats", s(&db)]);
    assert!(out.status.success(), "{}", stderr(&out));
}
