//! `quern stats`, `dump` and `show` on a file whose worker was killed (SIGKILL): they read the
//! jobs as it left them, say that the file was not closed cleanly, and write no byte of it.

mod killed;
mod utility;

use std::path::PathBuf;

use quern::{NewJob, Store};
use serde_json::Value;
use utility::{quern, s, stderr, stdout};

const NOTE: &str = "was not closed cleanly (its writer stopped without closing it)";

/// Runs `test` as the worker child (five jobs: 1 succeeded, 2 and 3 in progress, 4 and 5
/// pending), kills it and returns the file, left unclosed.
fn killed_worker(dir: &tempfile::TempDir, test: &str) -> PathBuf {
    killed::as_child((1..=5).map(|i| NewJob::new("q", format!("job {i}"))));
    killed::killed_worker(dir, test)
}

/// Runs `quern args`, which must succeed; returns its stdout and stderr.
fn ok(args: &[&str]) -> (String, String) {
    let out = quern(args);
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    (stdout(&out), stderr(&out))
}

/// The state of each job in JSON lines, by id.
fn states(jsonl: &str) -> Vec<(u64, String)> {
    jsonl
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            (
                v["id"].as_u64().unwrap(),
                v["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn expected_states() -> Vec<(u64, String)> {
    [
        (1, "succeeded"),
        (2, "in_progress"),
        (3, "in_progress"),
        (4, "pending"),
        (5, "pending"),
    ]
    .into_iter()
    .map(|(id, state)| (id, state.to_owned()))
    .collect()
}

#[test]
fn stats_dump_and_show_read_a_killed_workers_file_as_it_left_it_and_write_no_byte() {
    let dir = tempfile::tempdir().unwrap();
    let db = killed_worker(
        &dir,
        "stats_dump_and_show_read_a_killed_workers_file_as_it_left_it_and_write_no_byte",
    );
    let path = s(&db);
    let before = std::fs::read(&db).unwrap();

    // Tables say it on their first line.
    let (table, _) = ok(&["stats", path]);
    let mut lines = table.lines();
    let note = lines.next().unwrap();
    assert!(note.starts_with("note: ") && note.contains(NOTE), "{table}");
    let q = lines.find(|l| l.starts_with("q ")).unwrap();
    let counts: Vec<&str> = q.split_whitespace().skip(1).take(5).collect();
    assert_eq!(
        counts,
        ["2", "2", "0", "0", "1"],
        "pending running retrying failed succeeded: {table}"
    );

    // JSON says it in a field, and the note goes to stderr: stdout stays JSON alone.
    for format in ["json", "jsonl"] {
        let (json, err) = ok(&["stats", path, "--format", format]);
        let v: Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
        assert_eq!(v["closed_cleanly"], false, "{json}");
        assert_eq!(v["queues"][0]["in_progress"], 2, "{json}");
        assert_eq!(v["queues"][0]["pending"], 2, "{json}");
        assert!(err.contains(NOTE), "{format}: {err}");
    }

    let (dump, _) = ok(&["dump", path]);
    let mut lines = dump.lines();
    assert!(lines.next().unwrap().contains(NOTE), "{dump}");
    let rows: Vec<(String, String)> = lines
        .skip(1)
        .map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (cols[0].to_owned(), cols[2].to_owned())
        })
        .collect();
    let expected: Vec<(String, String)> = expected_states()
        .into_iter()
        .map(|(id, state)| (id.to_string(), state))
        .collect();
    assert_eq!(rows, expected, "{dump}");

    let (jsonl, err) = ok(&["dump", path, "--format", "jsonl"]);
    assert_eq!(states(&jsonl), expected_states());
    assert!(err.contains(NOTE), "{err}");
    let (json, _) = ok(&["dump", path, "--format", "json"]);
    let all: Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    assert_eq!(all.as_array().unwrap().len(), 5, "{json}");

    let (show, _) = ok(&["show", path, "2"]);
    let mut lines = show.lines();
    assert!(lines.next().unwrap().contains(NOTE), "{show}");
    assert!(
        lines
            .next()
            .unwrap()
            .starts_with("job 2  queue q  in_progress"),
        "{show}"
    );
    let (line, err) = ok(&["show", path, "3", "--format", "json"]);
    assert_eq!(states(&line), [(3, "in_progress".to_owned())]);
    assert!(err.contains(NOTE), "{err}");

    assert!(
        std::fs::read(&db).unwrap() == before,
        "a read command wrote the file"
    );
}

#[test]
fn stats_dump_and_show_of_a_file_closed_cleanly_say_nothing_of_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("q.redb");
    let store = Store::open(&db).unwrap();
    store.enqueue(NewJob::new("q", "a")).unwrap();
    store.close();
    let path = s(&db);
    for args in [
        vec!["stats", path],
        vec!["dump", path],
        vec!["dump", path, "--format", "jsonl"],
        vec!["show", path, "1"],
    ] {
        let (out, err) = ok(&args);
        assert!(
            !out.contains("note:") && err.is_empty(),
            "{args:?}: {out}{err}"
        );
    }
    let (json, _) = ok(&["stats", path, "--format", "json"]);
    let v: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["closed_cleanly"], true, "{json}");
}
