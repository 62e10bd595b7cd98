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
