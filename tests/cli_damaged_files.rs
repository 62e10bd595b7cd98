//! The utility's read commands on damaged files: every damaged file of the `open_damaged` fuzz
//! corpora (the same damage as the fuzz target makes), and a file cut short, through the
//! `quern` binary. Each command ends with exit code 0, 1 or 2 (never a panic, never killed for
//! memory), writes no byte of the file, and prints whole JSON or none.

mod utility;

// Only its damage is used here, not its oracle.
#[allow(dead_code)]
#[path = "../fuzz/common/damage.rs"]
mod damage;
#[path = "../fuzz/common/input.rs"]
mod input;

use std::path::{Path, PathBuf};

use utility::{quern, s, stderr, stdout};

/// The read commands, by their arguments after the file.
const READS: &[&[&str]] = &[
    &["stats"],
    &["stats", "--format", "json"],
    &["dump"],
    &["dump", "--format", "json"],
    &["dump", "--format", "jsonl"],
    &["show", "1"],
    &["show", "7", "--format", "json"],
    &["check"],
];

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no corpus in {}", dir.display());
    files
}

/// Runs every read command on `path`, checking the oracle; returns the exit codes.
fn read_all(name: &str, path: &Path) -> Vec<i32> {
    let before = std::fs::read(path).unwrap();
    let mut codes = Vec::new();
    for args in READS {
        let mut all = vec![args[0], s(path)];
        all.extend_from_slice(&args[1..]);
        let out = quern(&all);
        let what = format!("{name}: quern {}", args.join(" "));
        let code = out
            .status
            .code()
            .unwrap_or_else(|| panic!("{what}: killed by a signal: {}", stderr(&out)));
        assert!(
            matches!(code, 0..=2),
            "{what}: exit code {code}: {}",
            stderr(&out)
        );
        assert!(
            !stderr(&out).contains("panicked"),
            "{what}: {}",
            stderr(&out)
        );
        let json = args.contains(&"json");
        let jsonl = args.contains(&"jsonl");
        if json && !stdout(&out).is_empty() {
            serde_json::from_str::<serde_json::Value>(&stdout(&out))
                .unwrap_or_else(|e| panic!("{what}: half-written JSON ({e}): {}", stdout(&out)));
        }
        if jsonl {
            for line in stdout(&out).lines() {
                serde_json::from_str::<serde_json::Value>(line)
                    .unwrap_or_else(|e| panic!("{what}: a half-written line ({e}): {line}"));
            }
        }
        assert!(
            std::fs::read(path).unwrap() == before,
            "{what}: a read changed the file"
        );
        codes.push(code);
    }
    codes
}

#[test]
fn read_commands_on_every_damaged_file_of_the_fuzz_corpora_end_cleanly_and_write_nothing() {
    for (target, base) in [
        ("open_damaged", damage::BASE),
        ("open_damaged_v1", damage::BASE_V1),
    ] {
        for (name, bytes) in corpus(target) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("damaged.redb");
            std::fs::write(&path, damage::damage_of(base, &bytes)).unwrap();
            read_all(&format!("{target}/{name}"), &path);
        }
    }
}

#[test]
fn a_damaged_length_that_would_take_gigabytes_is_reported_as_corrupt() {
    // The fuzzer's find: 6 bytes of damage made a read allocate 4 GiB for one page.
    let bytes = std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/open_damaged/oom-6-bytes"),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("damaged.redb");
    std::fs::write(&path, damage::damage_of(damage::BASE, &bytes)).unwrap();
    let out = quern(&["stats", s(&path)]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("corrupt database file"),
        "{}",
        stderr(&out)
    );
    match quern::Store::open_read_only(&path) {
        Err(quern::Error::Corrupt { .. }) => {}
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn a_file_cut_short_reads_as_corrupt_never_as_healthy() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.redb");
    let whole =
        std::fs::read(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v6.redb"))
            .unwrap();
    std::fs::write(&path, &whole[..whole.len() - 4096]).unwrap();
    let codes = read_all("cut", &path);
    // Every read says so: none reads as healthy, no JSON is left half-written (checked above).
    assert!(
        codes[..codes.len() - 1].iter().all(|&c| c == 2),
        "{codes:?}"
    );
    assert_eq!(codes.last(), Some(&1), "check finds a problem: {codes:?}");
    let out = quern(&["stats", s(&path)]);
    assert!(stderr(&out).contains("truncated"), "{}", stderr(&out));
}
