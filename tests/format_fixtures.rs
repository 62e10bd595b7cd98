//! Databases written by each released format version open and read correctly.
//!
//! `QUERN_WRITE_FIXTURE=1 cargo test --test format_fixtures` rewrites the fixture of the current
//! version; do that only when bumping the format version, under a new file name.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use quern::{Backoff, Filter, JobId, JobState, ManualClock, NewJob, Store, Timestamp};

const T0: Timestamp = Timestamp(1_700_000_000_000);

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The states the v1 fixture holds, job by job: pending, in progress, succeeded, retrying,
/// failed for good, and one still in the inbox.
fn write_v1(path: &std::path::Path) {
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
    store.enqueue(NewJob::new("other", "inbox")).unwrap();
}

#[test]
fn format_v1_fixture_opens_with_every_job_in_its_state() {
    let src = fixture("v1.redb");
    if std::env::var_os("QUERN_WRITE_FIXTURE").is_some() {
        let _ = std::fs::remove_file(&src);
        write_v1(&src);
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v1.redb");
    std::fs::copy(&src, &path).unwrap();
    let clock = ManualClock::new(T0.after(Duration::from_secs(1)));
    let store = Store::builder().clock(Arc::new(clock)).open(&path).unwrap();
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
    assert_eq!(
        summary,
        vec![
            (1, &b"pending"[..], JobState::Pending, 0, false),
            (2, &b"running"[..], JobState::InProgress, 1, false),
            (3, &b"done"[..], JobState::Succeeded, 1, false),
            (4, &b"retrying"[..], JobState::Failed, 1, true),
            (5, &b"dead"[..], JobState::Failed, 1, false),
            (6, &b"inbox"[..], JobState::Pending, 0, false),
        ]
    );
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
        quern::Enqueued::Duplicate(JobId(1))
    ));
    let claimed = store.claim("sync", 10).unwrap();
    assert_eq!(
        claimed.iter().map(|c| c.job.id.0).collect::<Vec<_>>(),
        vec![1]
    );
}
