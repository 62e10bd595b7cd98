//! The fuzzers' seed corpora (`fuzz/corpus/<target>/`), replayed as ordinary tests on stable:
//! each file goes through the same mapping as in its fuzz target (`fuzz/common/`, included
//! here by path), with the same oracle. A crash the fuzzer found is kept in its corpus, so it
//! stays fixed.
//!
//! `QUERN_WRITE_FUZZ_SEEDS=1 cargo test --test fuzz_corpus` rewrites the seed files this file
//! makes (`seed-*`); files of any other name (the fuzzer's finds) are left alone.
//! `QUERN_FUZZ_VERBOSE=1` prints what each damaged file did.

mod model;

#[path = "../fuzz/common/damage.rs"]
mod damage;
#[path = "../fuzz/common/input.rs"]
mod input;
#[path = "../fuzz/common/ops.rs"]
mod ops;

use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};

use quern::redb::{ReadableDatabase, ReadableTable, TableDefinition};

fn corpus(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

/// Every file of a target's corpus, in name order, after writing the seeds when asked to.
fn files(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = corpus(target);
    if std::env::var_os("QUERN_WRITE_FUZZ_SEEDS").is_some() {
        std::fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in seeds(target) {
            std::fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
        }
    }
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .filter(|(name, _)| !name.starts_with('.'))
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no corpus in {}", dir.display());
    out
}

#[test]
fn decode_corpus_gives_errors_not_panics() {
    let files = files("decode");
    for (name, bytes) in &files {
        // The oracle is that these return; what they return is up to the bytes.
        let _ = quern::__decode::record(bytes);
        let _ = quern::__decode::inbox(bytes);
        let _ = quern::__decode::keys(bytes);
        let _ = name;
    }
    // The seeds include real encodings, so the decoders' success paths are replayed too.
    assert!(
        files
            .iter()
            .any(|(_, b)| quern::__decode::record(b).is_ok()),
        "no valid record in the decode corpus"
    );
    assert!(
        files.iter().any(|(_, b)| quern::__decode::inbox(b).is_ok()),
        "no valid inbox entry in the decode corpus"
    );
}

#[test]
fn control_request_corpus_gives_errors_not_panics() {
    let files = files("control_request");
    let mut decoded = 0;
    for (name, bytes) in &files {
        // The same oracle as the fuzz target: a request that decodes round-trips.
        if let Ok(request) = quern::control::decode_request(bytes) {
            decoded += 1;
            let body = quern::control::encode_request(&request)
                .unwrap_or_else(|e| panic!("{name}: {request:?} does not encode: {e}"));
            assert_eq!(
                quern::control::decode_request(&body).ok(),
                Some(request),
                "{name}"
            );
        }
    }
    assert!(
        decoded > 0,
        "no valid request in the control_request corpus"
    );
}

/// Every kind of request, encoded; then near misses: another version, a trailing byte, a
/// length that runs past the end, an unknown variant.
fn control_seeds() -> Vec<(String, Vec<u8>)> {
    use quern::JobId;
    use quern::control::{PROTOCOL_VERSION, Request, encode_request};
    let requests = [
        (
            "retry",
            Request::Retry {
                jobs: vec![JobId(1), JobId(2), JobId(300)],
            },
        ),
        (
            "retry-failed",
            Request::RetryFailed {
                queue: "sync".into(),
            },
        ),
        (
            "cancel",
            Request::Cancel {
                jobs: vec![JobId(u64::MAX)],
            },
        ),
        (
            "prune",
            Request::Prune {
                older_than: std::time::Duration::from_secs(7 * 86_400),
            },
        ),
        (
            "pause",
            Request::Pause {
                queue: "uploads".into(),
            },
        ),
        (
            "resume",
            Request::Resume {
                queue: "uploads".into(),
            },
        ),
        (
            "unpark-key",
            Request::Unpark {
                queue: "sync".into(),
                key: Some("acct-1".into()),
            },
        ),
    ];
    let mut out: Vec<(String, Vec<u8>)> = requests
        .into_iter()
        .map(|(name, r)| (name.to_owned(), encode_request(&r).unwrap()))
        .collect();
    let pause = out[4].1.clone();
    let mut trailing = pause.clone();
    trailing.push(0);
    let mut version = pause.clone();
    version[0] = PROTOCOL_VERSION + 1;
    out.push(("trailing".into(), trailing));
    out.push(("version".into(), version));
    out.push((
        "long-length".into(),
        vec![PROTOCOL_VERSION, 0, 0xff, 0xff, 0x03, b'q'],
    ));
    out.push(("unknown-variant".into(), vec![PROTOCOL_VERSION, 0x7f]));
    out.push(("empty".into(), Vec::new()));
    out
}

#[test]
fn ops_model_corpus_agrees_with_the_model() {
    for (name, bytes) in files("ops_model") {
        let ops = ops::ops(&bytes);
        let mut h = model::Harness::new();
        for (step, op) in ops.iter().enumerate() {
            if let Err(e) = h.apply(op) {
                panic!("{name}: step {step} {op:?}: {e}\nall operations: {ops:?}");
            }
        }
    }
}

/// The damaged-file tests count panics process-wide (a writer thread's too): one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

#[test]
fn open_damaged_corpus_gives_errors_not_panics() {
    replay_damaged("open_damaged", damage::BASE);
}

/// The crashes the fuzzer found on the format 1 fixture, each replayed on that file.
#[test]
fn open_damaged_finds_on_format_1_give_errors_not_panics() {
    replay_damaged("open_damaged_v1", damage::BASE_V1);
}

/// Damages `base` by each file of the corpus `target` and runs the damaged file through the
/// fuzz target's oracle.
fn replay_damaged(target: &str, base: &[u8]) {
    let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    damage::record_panics();
    let verbose = std::env::var_os("QUERN_FUZZ_VERBOSE").is_some();
    for (name, bytes) in files(target) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("damaged.redb");
        std::fs::write(&path, damage::damage_of(base, &bytes)).unwrap();
        let outcome = damage::exercise(&path);
        if verbose {
            println!("{name}: {}", outcome.summary());
        }
    }
}

/// The seed files of each target, by name (without the `seed-` prefix).
fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    match target {
        "decode" => decode_seeds(),
        "ops_model" => ops_seeds(),
        "open_damaged" => damage_seeds(),
        "control_request" => control_seeds(),
        // Finds only, no seeds.
        "open_damaged_v1" => Vec::new(),
        _ => unreachable!("{target}"),
    }
}

/// Real encodings from the format fixtures: each stored job (payload inline or apart), the
/// format 1 inbox entry, each kind of index key; then a few near misses.
fn decode_seeds() -> Vec<(String, Vec<u8>)> {
    let dir = tempfile::tempdir().unwrap();
    let by_id = |name: &'static str| TableDefinition::<u64, &[u8]>::new(name);
    let mut out = Vec::new();
    let v1 = dir.path().join("v1.redb");
    std::fs::copy(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1.redb"),
        &v1,
    )
    .unwrap();
    let db = quern::redb::Builder::new().open_read_only(&v1).unwrap();
    let tx = db.begin_read().unwrap();
    for entry in tx.open_table(by_id("quern_inbox")).unwrap().iter().unwrap() {
        let (id, value) = entry.unwrap();
        out.push((format!("inbox-{}", id.value()), value.value().to_vec()));
    }
    let path = dir.path().join("v4.redb");
    std::fs::write(&path, damage::BASE).unwrap();
    let db = quern::redb::Builder::new().open_read_only(&path).unwrap();
    let tx = db.begin_read().unwrap();
    for entry in tx.open_table(by_id("quern_jobs")).unwrap().iter().unwrap() {
        let (id, value) = entry.unwrap();
        out.push((format!("record-{}", id.value()), value.value().to_vec()));
    }
    for entry in tx
        .open_table(by_id("quern_segments"))
        .unwrap()
        .iter()
        .unwrap()
    {
        let (id, value) = entry.unwrap();
        out.push((format!("segment-{}", id.value()), value.value().to_vec()));
    }
    let bytes = |name: &'static str| TableDefinition::<&[u8], &[u8]>::new(name);
    for (table, what) in [
        ("quern_ready", "key-ready"),
        ("quern_scheduled", "key-scheduled"),
    ] {
        if let Some(entry) = tx.open_table(bytes(table)).unwrap().iter().unwrap().next() {
            let (k, v) = entry.unwrap();
            out.push((what.into(), k.value().to_vec()));
            out.push((format!("{what}-value"), v.value().to_vec()));
        }
    }
    let counted = TableDefinition::<&[u8], u64>::new("quern_counts");
    if let Some(entry) = tx.open_table(counted).unwrap().iter().unwrap().next() {
        out.push(("key-count".into(), entry.unwrap().0.value().to_vec()));
    }
    let unit = |name: &'static str| TableDefinition::<&[u8], ()>::new(name);
    if let Some(entry) = tx
        .open_table(unit("quern_retries"))
        .unwrap()
        .iter()
        .unwrap()
        .next()
    {
        out.push(("key-retry".into(), entry.unwrap().0.value().to_vec()));
    }
    let record = out
        .iter()
        .find(|(n, _)| n.starts_with("record"))
        .expect("the fixture has jobs")
        .1
        .clone();
    out.push((
        "record-truncated".into(),
        record[..record.len() / 2].to_vec(),
    ));
    let mut versioned = record.clone();
    versioned[0] = 9;
    out.push(("record-version-9".into(), versioned));
    let mut trailing = record;
    trailing.push(0);
    out.push(("record-trailing".into(), trailing));
    out.push(("empty".into(), Vec::new()));
    out.push(("huge-length".into(), vec![0xff; 12]));
    out
}

/// Hand-made sequences, one a theme. Each op is a kind byte (`fuzz/common/ops.rs`: 0 enqueue,
/// 6 batch, 8 claim, 14 complete, 17 fail, 19 discard, 20 snooze, 22 heartbeat, 23 advance,
/// 26 promote, 27 recover, 28 retry, 29 cancel, 30 prune, 31 reopen) and its field bytes; a
/// job is six bytes: queue, priority (+2), delay (>= 192: delay % 90 s), attempts (-1),
/// unique (>= 160: key % 4), concurrency (>= 160: key % 3).
fn ops_seeds() -> Vec<(String, Vec<u8>)> {
    const JOB: [u8; 6] = [0, 2, 0, 2, 0, 0];
    let unique = |u: u8| [0, 2, 0, 2, 160 + u, 0];
    let ckey = |c: u8| [0, 2, 0, 2, 0, 160 + c];
    let cat = |parts: &[&[u8]]| parts.concat();
    vec![
        (
            "enqueue-claim-complete".into(),
            cat(&[&[0], &JOB, &[0], &JOB, &[8, 0, 4], &[14, 0], &[14, 0]]),
        ),
        (
            "fail-retry-promote".into(),
            cat(&[
                &[0, 0, 2, 0, 1, 0, 0], // two attempts
                &[8, 0, 1, 17, 0],      // claim, fail
                &[23, 11, 26],          // past the backoff, promote
                &[8, 0, 1, 17, 0],      // claim, fail for good
                &[28, 0, 8, 0, 1, 14, 0],
            ]),
        ),
        (
            "unique-and-concurrency-keys".into(),
            cat(&[
                &[6, 5],
                &unique(1),
                &unique(1),
                &ckey(2),
                &ckey(2),
                &[1, 3, 192, 0, 0, 0], // queue b, delayed
                &[8, 0, 4, 8, 1, 4],
                &[14, 0, 8, 0, 4, 23, 200, 8, 1, 4],
            ]),
        ),
        (
            "lease-expiry".into(),
            cat(&[
                &[0],
                &JOB,
                &[8, 0, 1, 23, 20, 22, 0], // claim, heartbeat in time
                &[23, 40, 27],             // the lease expires, recover
                &[14, 0],                  // the stale lease is refused
                &[23, 15, 26, 8, 0, 1, 20, 0, 5, 23, 5, 8, 0, 1, 19, 0],
            ]),
        ),
        (
            "cancel-prune-reopen".into(),
            cat(&[
                &[0],
                &JOB,
                &[0],
                &JOB,
                &[0],
                &JOB,
                &[29, 0, 8, 0, 1, 14, 0, 31],
                &[23, 100, 30, 30, 31, 0],
                &JOB,
            ]),
        ),
    ]
}

/// Damage to the parts of the fixture that matter: redb's header, a page of each kind, a
/// record's bytes; and a truncation.
fn damage_seeds() -> Vec<(String, Vec<u8>)> {
    let base = damage::BASE;
    // An edit: kind (0 flip, 4 set, 5 zero page, 6 copy page, 7 truncate), offset, value.
    let edit = |kind: u8, at: usize, value: u8| {
        let at = u32::try_from(at).unwrap().to_be_bytes();
        vec![kind, at[1], at[2], at[3], value]
    };
    let find = |needle: &[u8]| {
        base.windows(needle.len())
            .position(|w| w == needle)
            .unwrap_or_else(|| panic!("{needle:?} not in the fixture"))
    };
    let mut out = vec![
        ("none".into(), Vec::new()),
        ("header-magic".into(), edit(0, 0, 0x01)),
        ("header-flip".into(), edit(0, 9, 0x80)),
        ("truncated-half".into(), edit(7, base.len() / 2, 0)),
        ("truncated-header".into(), edit(7, 100, 0)),
        ("page-1-zeroed".into(), edit(5, damage::PAGE, 0)),
        ("last-page-zeroed".into(), edit(5, base.len() - 1, 0)),
        ("page-copied".into(), edit(6, 3 * damage::PAGE, 5)),
    ];
    for text in ["boom", "org-7", "quern_jobs"] {
        let at = find(text.as_bytes());
        out.push((format!("flip-{text}"), edit(0, at, 0x20)));
    }
    let at = find(b"running");
    out.push((
        "payload-and-record".into(),
        [edit(4, at, b'x'), edit(0, at - 12, 0x7f)].concat(),
    ));
    out
}
