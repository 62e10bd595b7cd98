//! The `quern` utility under careless and hostile input: commands that must change all or
//! nothing, text from users that must not reach the terminal as it is, JSON output that must
//! keep payloads byte for byte and stay well-formed, and the messages of bad arguments.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use quern::{NewJob, Store};
use serde_json::Value;

fn quern(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_quern"))
        .args(args)
        .output()
        .expect("run quern")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
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
