//! Databases written by each released format version open and read correctly.
//!
//! `QUERN_WRITE_FIXTURE=1 cargo test --test format_fixtures` rewrites the fixture of the current
//! version ([`CURRENT`]); do that only when bumping the format version, under a new file name.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use quern::{Backoff, Error, Filter, JobId, JobState, ManualClock, NewJob, Store, Timestamp};

const T0: Timestamp = Timestamp(1_700_000_000_000);

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A payload too large to store inline: kept in a table of its own.
fn big() -> Vec<u8> {
    vec![b'b'; 4000]
}

/// The states each fixture holds, job by job: pending, in progress, succeeded, retrying,
/// failed for good, and one not yet indexed (format 1 kept it in an inbox). From format 2 on,
/// a seventh job, not yet indexed either, carries a payload too large to store inline. From
/// format 3 on, those two are enqueued in one batch: one segment holds both. From format 4 on,
/// the jobs as enqueued (the two new ones) are stored in the short form, the others in the long.
/// From format 5 on, queue `v5` holds a running job of a unique key with a follow-up behind
/// it, and two jobs of an ordered key: the first not yet due, the second waiting behind it.
/// From format 6 on, queue `v5` is paused, its key `d` parked and rate-limited, and queue
/// `other` rate-limited.
fn write_fixture(path: &std::path::Path) {
    let clock = ManualClock::new(T0);
    let store = Store::builder()
        .clock(Arc::new(clock.clone()))
        .backoff(Backoff::fixed(Duration::from_secs(60)))
        .open(path)
        .unwrap();
    store
        .enqueue_batch([
            NewJob::new("sync", "pending").priority(3).unique_key("u1"),
            NewJob::new("sync", "running").concurrency_key("org-7"),
            NewJob::new("sync", "done"),
            NewJob::new("sync", "retrying").max_attempts(3),
            NewJob::new("sync", "dead").max_attempts(1),
        ])
        .unwrap();
    let mut claimed = store.claim("sync", 5).unwrap();
    for c in claimed.drain(..) {
        match c.job.payload.as_slice() {
            b"pending" => store.snooze(c.lease, Duration::ZERO).unwrap(),
            // A worker that died: its lease is left behind.
            b"running" => {}
            b"done" => store.complete(c.lease).unwrap(),
            _ => store.fail(c.lease, "boom").unwrap(),
        }
    }
    store
        .enqueue_batch([NewJob::new("other", "inbox"), NewJob::new("other", big())])
        .unwrap();
    store
        .enqueue(NewJob::new("v5", "runs").unique_key("f"))
        .unwrap();
    // A worker that died: its lease is left behind.
    let runs = store.claim("v5", 1).unwrap();
    assert_eq!(runs.len(), 1);
    store
        .enqueue(NewJob::new("v5", "follows").unique_key("f").latest_wins())
        .unwrap();
    store
        .enqueue_batch([
            NewJob::new("v5", "first")
                .concurrency_key("d")
                .ordered()
                .delay(Duration::from_secs(3_600)),
            NewJob::new("v5", "second").concurrency_key("d").ordered(),
        ])
        .unwrap();
    assert!(store.claim("v5", 10).unwrap().is_empty());
    store.pause("v5").unwrap();
    store
        .park("v5", Some("d"), T0.after(Duration::from_secs(7_200)), "429")
        .unwrap();
    let limit = quern::RateLimit::new(5, Duration::from_secs(1)).unwrap();
    store.set_rate_limit("v5", Some("d"), Some(limit)).unwrap();
    store.set_rate_limit("other", None, Some(limit)).unwrap();
}

/// A copy of fixture `name` in `dir`, or, with `QUERN_WRITE_FIXTURE` set and `name` the
/// current format's fixture, a fixture written anew.
fn copy_of(name: &str, dir: &tempfile::TempDir) -> PathBuf {
    let src = fixture(name);
    if name == CURRENT && std::env::var_os("QUERN_WRITE_FIXTURE").is_some() {
        let _ = std::fs::remove_file(&src);
        write_fixture(&src);
    }
    let path = dir.path().join(name);
    std::fs::copy(&src, &path).unwrap();
    path
}

/// The fixture of the format this build writes.
const CURRENT: &str = "v6.redb";

/// Opens a fixture for writing and checks every job in it, then that the store works on it.
fn opens_with_every_job_in_its_state(name: &str, with_big: bool, with_v5: bool, with_v6: bool) {
    let dir = tempfile::tempdir().unwrap();
    let path = copy_of(name, &dir);
    let clock = ManualClock::new(T0.after(Duration::from_secs(1)));
    let store = Store::builder().clock(Arc::new(clock)).open(&path).unwrap();
    assert_eq!(store.check().unwrap(), []);
    let jobs = store.list(&Filter::default()).unwrap();
    let summary: Vec<(u64, &[u8], JobState, u32, bool)> = jobs
        .iter()
        .map(|j| {
            (
                j.id.0,
                j.payload.as_slice(),
                j.state,
                j.attempts,
                j.next_attempt_at.is_some(),
            )
        })
        .collect();
    let big = big();
    let mut expected = vec![
        (1, &b"pending"[..], JobState::Pending, 0, false),
        (2, &b"running"[..], JobState::InProgress, 1, false),
        (3, &b"done"[..], JobState::Succeeded, 1, false),
        (4, &b"retrying"[..], JobState::Failed, 1, true),
        (5, &b"dead"[..], JobState::Failed, 1, false),
        (6, &b"inbox"[..], JobState::Pending, 0, false),
    ];
    if with_big {
        expected.push((7, &big[..], JobState::Pending, 0, false));
    }
    if with_v5 {
        expected.extend([
            (8, &b"runs"[..], JobState::InProgress, 1, false),
            (9, &b"follows"[..], JobState::Pending, 0, false),
            (10, &b"first"[..], JobState::Pending, 0, false),
            (11, &b"second"[..], JobState::Pending, 0, false),
        ]);
    }
    assert_eq!(summary, expected);
    if with_v6 {
        let limit = Some(quern::RateLimit::new(5, Duration::from_secs(1)).unwrap());
        let controls = store.controls().unwrap();
        let summary: Vec<_> = controls
            .iter()
            .map(|c| {
                (
                    c.queue.as_str(),
                    c.key.as_deref(),
                    c.paused,
                    c.parked_until,
                    c.rate_limit,
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                // By key: a queue's name behind its length, so "v5" before "other".
                ("v5", None, true, None, None),
                (
                    "v5",
                    Some("d"),
                    false,
                    Some(T0.after(Duration::from_secs(7_200))),
                    limit
                ),
                ("other", None, false, None, limit),
            ]
        );
        assert!(store.claim("v5", 10).unwrap().is_empty(), "paused");
        store.resume("v5").unwrap();
    } else {
        assert_eq!(store.controls().unwrap(), []);
    }
    if with_v5 {
        assert_eq!(
            store.get(JobId(9)).unwrap().unwrap().waits_for,
            Some(JobId(8))
        );
        assert!(store.get(JobId(11)).unwrap().unwrap().ordered);
        // Job 8 runs, 9 follows it, 10 is not due and holds the line of 11.
        assert!(store.claim("v5", 10).unwrap().is_empty());
    }
    let pending = store.get(JobId(1)).unwrap().unwrap();
    assert_eq!(
        (pending.priority, pending.unique_key.as_deref()),
        (3, Some("u1"))
    );
    assert_eq!(
        store.get(JobId(4)).unwrap().unwrap().next_attempt_at,
        Some(T0.after(Duration::from_secs(60)))
    );
    // The store works on it: the pending job is claimable, the key still coalesces.
    assert!(matches!(
        store
            .enqueue(NewJob::new("sync", "again").unique_key("u1"))
            .unwrap(),
        quern::Enqueued::Coalesced(JobId(1))
    ));
    let claimed = store.claim("sync", 10).unwrap();
    assert_eq!(
        claimed.iter().map(|c| c.job.id.0).collect::<Vec<_>>(),
        vec![1]
    );
    let other: Vec<u64> = store
        .claim("other", 10)
        .unwrap()
        .iter()
        .map(|c| c.job.id.0)
        .collect();
    assert_eq!(other, if with_big { vec![6, 7] } else { vec![6] });
    assert_eq!(store.check().unwrap(), []);
}

#[test]
fn format_v1_fixture_is_upgraded_at_a_writable_open_with_every_job_in_its_state() {
    opens_with_every_job_in_its_state("v1.redb", false, false, false);
}

#[test]
fn format_v2_fixture_opens_with_every_job_in_its_state() {
    opens_with_every_job_in_its_state("v2.redb", true, false, false);
}

#[test]
fn format_v3_fixture_opens_with_every_job_in_its_state() {
    opens_with_every_job_in_its_state("v3.redb", true, false, false);
}

#[test]
fn format_v4_fixture_opens_with_every_job_in_its_state() {
    opens_with_every_job_in_its_state("v4.redb", true, false, false);
}

#[test]
fn format_v5_fixture_opens_with_every_job_in_its_state() {
    opens_with_every_job_in_its_state("v5.redb", true, true, false);
}

#[test]
fn format_v6_fixture_opens_with_every_job_in_its_state() {
    opens_with_every_job_in_its_state(CURRENT, true, true, true);
}

/// The format version in the header of the database at `path`.
fn format_of(path: &std::path::Path) -> u64 {
    use quern::redb::{ReadableDatabase, TableDefinition};
    let meta: TableDefinition<&str, u64> = TableDefinition::new("quern_meta");
    let db = quern::redb::Builder::new().open_read_only(path).unwrap();
    let tx = db.begin_read().unwrap();
    tx.open_table(meta)
        .unwrap()
        .get("format_version")
        .unwrap()
        .unwrap()
        .value()
}

#[test]
fn format_v2_to_v5_files_read_as_they_are_and_a_writable_open_moves_them_to_format_6() {
    for (name, version, jobs) in [
        ("v2.redb", 2, 7),
        ("v3.redb", 3, 7),
        ("v4.redb", 4, 7),
        ("v5.redb", 5, 11),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = copy_of(name, &dir);
        let before = std::fs::read(&path).unwrap();
        let store = Store::open_read_only(&path).unwrap();
        assert_eq!(
            store.list(&Filter::default()).unwrap().len(),
            jobs,
            "{name}"
        );
        assert_eq!(store.check().unwrap(), [], "{name}");
        assert_eq!(store.controls().unwrap(), [], "{name}");
        drop(store);
        assert_eq!(
            std::fs::read(&path).unwrap(),
            before,
            "a read-only open of {name} wrote"
        );
        assert_eq!(format_of(&path), version);
        drop(Store::open(&path).unwrap());
        // Format 6 now: a build that knew only the older format would refuse it, and this one
        // reads it.
        assert_eq!(format_of(&path), 6, "{name}");
        let store = Store::open_read_only(&path).unwrap();
        assert_eq!(
            store.list(&Filter::default()).unwrap().len(),
            jobs,
            "{name}"
        );
    }
}

#[test]
fn a_format_v1_file_opened_read_only_is_refused_until_a_writable_open_upgrades_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = copy_of("v1.redb", &dir);
    let err = Store::open_read_only(&path).unwrap_err();
    assert!(
        matches!(
            err,
            Error::UnsupportedFormat {
                found: 1,
                supported: 6,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("open it for writing once"),
        "{err}"
    );
    drop(Store::open(&path).unwrap());
    let store = Store::open_read_only(&path).unwrap();
    assert_eq!(store.list(&Filter::default()).unwrap().len(), 6);
}
