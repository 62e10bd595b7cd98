//! Reading a file whose writer was killed (SIGKILL), read-only: the jobs as it left them, and
//! not a byte of the file written; a writer that opens the file meanwhile starts, and the reads
//! after it are refused rather than torn.

mod killed;

use quern::{Error, Filter, JobId, JobState, NewJob, Store};

/// Runs the child's part when this process is the child: `n` jobs of about 200 bytes.
fn as_child(n: u64) {
    killed::as_child((0..n).map(|i| NewJob::new("q", format!("job {i} {}", "x".repeat(200)))));
}

fn states(store: &Store) -> Vec<(u64, JobState)> {
    store
        .list(&Filter::default())
        .unwrap()
        .into_iter()
        .map(|j| (j.id.0, j.state))
        .collect()
}

#[test]
fn a_file_whose_worker_was_killed_reads_as_it_left_it_and_keeps_every_byte() {
    as_child(5);
    let dir = tempfile::tempdir().unwrap();
    let db = killed::killed_worker(
        &dir,
        "a_file_whose_worker_was_killed_reads_as_it_left_it_and_keeps_every_byte",
    );
    let before = std::fs::read(&db).unwrap();

    let store = Store::open_read_only(&db).unwrap();
    assert!(!store.closed_cleanly());
    assert!(store.is_read_only());
    assert_eq!(
        states(&store),
        [
            (1, JobState::Succeeded),
            (2, JobState::InProgress),
            (3, JobState::InProgress),
            (4, JobState::Pending),
            (5, JobState::Pending),
        ]
    );
    let running = store.get(JobId(2)).unwrap().unwrap();
    assert!(running.lease_expires_at.is_some(), "{running:?}");
    let q = store.stats().unwrap().queue("q").cloned().unwrap();
    assert_eq!((q.pending, q.in_progress, q.succeeded), (2, 2, 1), "{q:?}");
    assert_eq!(store.check().unwrap(), Vec::new());
    assert!(matches!(
        store.enqueue(NewJob::new("q", "no")),
        Err(Error::ReadOnly)
    ));
    // Closing the store closes redb's repaired database, which writes its state: in memory.
    store.close();
    assert!(
        std::fs::read(&db).unwrap() == before,
        "reading the file changed its bytes"
    );
}

#[test]
fn a_file_closed_cleanly_or_held_by_a_live_writer_reads_as_closed_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("q.redb");
    let writer = Store::open(&db).unwrap();
    writer.enqueue(NewJob::new("q", "a")).unwrap();
    let beside = Store::open_read_only(&db).unwrap();
    assert!(beside.closed_cleanly(), "a live writer's file");
    assert_eq!(states(&beside), [(1, JobState::Pending)]);
    drop(beside);
    writer.close();
    let reader = Store::open_read_only(&db).unwrap();
    assert!(reader.closed_cleanly(), "a file closed cleanly");
    assert!(reader.__repair_bytes_in_memory().is_none());
}

#[test]
fn a_worker_starts_while_an_unclosed_file_is_read_and_the_reads_after_it_are_refused_as_changed() {
    as_child(5);
    let dir = tempfile::tempdir().unwrap();
    let db = killed::killed_worker(
        &dir,
        "a_worker_starts_while_an_unclosed_file_is_read_and_the_reads_after_it_are_refused_as_changed",
    );
    let reader = Store::open_read_only(&db).unwrap();
    assert!(!reader.closed_cleanly());
    assert_eq!(reader.stats().unwrap().queue("q").unwrap().pending, 2);

    // The reader holds no lock a writer waits for or is refused by.
    let worker = Store::open(&db).unwrap();
    let changed = |r: quern::Result<_>| matches!(r, Err(Error::Changed { path }) if path == db);
    assert!(changed(reader.stats().map(|_| ())));
    assert!(changed(reader.get(JobId(1)).map(|_| ())));
    let mut handed = 0;
    assert!(changed(reader.for_each(&Filter::default(), |_| {
        handed += 1;
        true
    })));
    assert_eq!(
        handed, 0,
        "a job read after the writer's open was handed on"
    );

    // Opened again, the file reads beside its live writer.
    let again = Store::open_read_only(&db).unwrap();
    assert!(again.closed_cleanly());
    assert_eq!(again.list(&Filter::default()).unwrap().len(), 5);
    drop(worker);
}

#[test]
fn reading_an_unclosed_file_holds_only_the_repairs_writes_in_memory_not_the_file() {
    as_child(5_000);
    let dir = tempfile::tempdir().unwrap();
    let db = killed::killed_worker(
        &dir,
        "reading_an_unclosed_file_holds_only_the_repairs_writes_in_memory_not_the_file",
    );
    let file_len = std::fs::metadata(&db).unwrap().len();
    let store = Store::open_read_only(&db).unwrap();
    assert_eq!(store.list(&Filter::default()).unwrap().len(), 5_000);
    let held = store.__repair_bytes_in_memory().unwrap();
    eprintln!("file {file_len} bytes, repair held {held} bytes in memory");
    assert!(
        held * 20 < file_len,
        "{held} bytes in memory for a file of {file_len}"
    );
}
