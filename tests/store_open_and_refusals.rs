//! Opening, reopening, read-only handles, the outbox transaction, group commit, and every refusal
//! of bad input: each a typed error, never a panic.

use std::sync::Arc;
use std::time::{Duration, Instant};

use quern::redb::{ReadableTable, ReadableTableMetadata, TableDefinition};
use quern::{Enqueued, Error, Filter, JobId, JobState, MAX_PAYLOAD, ManualClock, NewJob, Store};

fn path(dir: &tempfile::TempDir) -> std::path::PathBuf {
    dir.path().join("q.redb")
}

#[test]
fn reopening_after_drop_keeps_every_job_and_its_state() {
    let dir = tempfile::tempdir().unwrap();
    let ids = {
        let store = Store::open(path(&dir)).unwrap();
        let ids: Vec<JobId> = store
            .enqueue_batch((0..5).map(|i| NewJob::new("q", format!("{i}"))))
            .unwrap()
            .into_iter()
            .map(Enqueued::id)
            .collect();
        let mut claimed = store.claim("q", 2).unwrap();
        store.complete(claimed.remove(0).lease).unwrap();
        ids
    };
    let store = Store::open(path(&dir)).unwrap();
    let states: Vec<JobState> = ids
        .iter()
        .map(|id| store.get(*id).unwrap().unwrap().state)
        .collect();
    assert_eq!(
        states,
        [
            JobState::Succeeded,
            JobState::InProgress,
            JobState::Pending,
            JobState::Pending,
            JobState::Pending
        ]
    );
    let next = store.enqueue(NewJob::new("q", "later")).unwrap().id();
    assert!(next > ids[4], "ids keep increasing across reopen");
}

#[test]
fn a_second_writer_gets_already_open() {
    let dir = tempfile::tempdir().unwrap();
    let _first = Store::open(path(&dir)).unwrap();
    match Store::open(path(&dir)) {
        Err(Error::AlreadyOpen { path: p }) => assert_eq!(p, path(&dir)),
        other => panic!("expected AlreadyOpen, got {other:?}"),
    }
}

#[test]
fn a_file_that_is_not_a_database_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        path(&dir),
        b"this is not a database at all, just text".repeat(200),
    )
    .unwrap();
    let err = Store::open(path(&dir)).unwrap_err();
    assert!(err.to_string().contains("q.redb"), "{err}");
    let err = Store::open_read_only(path(&dir)).unwrap_err();
    assert!(err.to_string().contains("q.redb"), "{err}");
}

#[test]
fn a_redb_database_without_a_quern_header_is_not_quern() {
    let dir = tempfile::tempdir().unwrap();
    {
        const OTHER: TableDefinition<u64, u64> = TableDefinition::new("other");
        let db = quern::redb::Database::create(path(&dir)).unwrap();
        let tx = db.begin_write().unwrap();
        tx.open_table(OTHER).unwrap().insert(1, 2).unwrap();
        tx.commit().unwrap();
    }
    assert!(matches!(
        Store::open(path(&dir)),
        Err(Error::NotQuern { .. })
    ));
}

#[test]
fn a_missing_file_is_an_error_for_a_reader() {
    let dir = tempfile::tempdir().unwrap();
    let err = Store::open_read_only(path(&dir)).unwrap_err();
    assert!(matches!(err, Error::Open { .. }), "{err:?}");
    assert!(!path(&dir).exists(), "a reader creates nothing");
}

#[test]
fn a_read_only_handle_follows_the_writer_and_refuses_writes() {
    let dir = tempfile::tempdir().unwrap();
    let writer = Store::open(path(&dir)).unwrap();
    let reader = Store::open_read_only(path(&dir)).unwrap();
    let id = writer.enqueue(NewJob::new("q", "x")).unwrap().id();
    assert_eq!(reader.get(id).unwrap().unwrap().state, JobState::Pending);
    assert_eq!(reader.stats().unwrap().queue("q").unwrap().pending, 1);
    assert!(matches!(
        reader.enqueue(NewJob::new("q", "y")),
        Err(Error::ReadOnly)
    ));
    assert!(matches!(reader.claim("q", 1), Err(Error::ReadOnly)));
    assert!(matches!(reader.cancel(id), Err(Error::ReadOnly)));
}

#[test]
fn bad_input_is_refused_with_a_typed_error_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(path(&dir)).unwrap();
    let refused = |job: NewJob| matches!(store.enqueue(job), Err(Error::InvalidInput { .. }));
    assert!(refused(NewJob::new("", "x")));
    assert!(refused(NewJob::new("q".repeat(256), "x")));
    assert!(refused(NewJob::new("q", vec![0u8; MAX_PAYLOAD + 1])));
    assert!(refused(NewJob::new("q", "x").max_attempts(0)));
    assert!(refused(NewJob::new("q", "x").unique_key("")));
    assert!(refused(
        NewJob::new("q", "x").concurrency_key("k".repeat(2_000))
    ));
    assert!(matches!(
        store.claim("", 1),
        Err(Error::InvalidInput { .. })
    ));
    let batch = store.enqueue_batch([
        NewJob::new("q", "ok"),
        NewJob::new("q", "bad").max_attempts(0),
    ]);
    assert!(matches!(batch, Err(Error::InvalidInput { .. })));
    assert!(
        store.list(&Filter::default()).unwrap().is_empty(),
        "nothing was written"
    );
    assert!(matches!(
        store.retry(JobId(99)),
        Err(Error::NotFound { job: JobId(99) })
    ));
    assert!(matches!(
        store.cancel(JobId(99)),
        Err(Error::NotFound { .. })
    ));
}

#[test]
fn a_lease_from_another_store_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let a = Store::open(dir.path().join("a.redb")).unwrap();
    let b = Store::open(dir.path().join("b.redb")).unwrap();
    a.enqueue(NewJob::new("q", "x")).unwrap();
    b.enqueue(NewJob::new("q", "x")).unwrap();
    let lease = a.claim("q", 1).unwrap().pop().unwrap().lease;
    assert!(matches!(b.complete(lease), Err(Error::ForeignLease { .. })));
    assert_eq!(b.get(JobId(1)).unwrap().unwrap().state, JobState::Pending);
}

const FILES: TableDefinition<&str, u64> = TableDefinition::new("files");

#[test]
fn the_outbox_commits_user_rows_and_jobs_together_or_neither() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(path(&dir)).unwrap();
    store
        .write(|tx| {
            tx.open_table(FILES)?.insert("a.txt", 1)?;
            tx.enqueue(NewJob::new("uploads", "a.txt"))?;
            Ok::<_, Error>(())
        })
        .unwrap();
    let failed: Result<(), Error> = store.write(|tx| {
        tx.open_table(FILES)?.insert("b.txt", 2)?;
        tx.enqueue(NewJob::new("uploads", "b.txt"))?;
        Err(Error::InvalidInput {
            what: "test",
            reason: "roll back".into(),
        })
    });
    assert!(failed.is_err());
    let jobs = store.list(&Filter::default()).unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].payload, b"a.txt");
    let names: Vec<String> = store
        .write(|tx| {
            let t = tx.open_table(FILES)?;
            let names = t
                .iter()?
                .map(|e| e.map(|(k, _)| k.value().to_owned()))
                .collect::<Result<Vec<_>, _>>()?;
            Ok::<_, Error>(names)
        })
        .unwrap();
    assert_eq!(names, ["a.txt"]);
}

#[test]
fn ids_and_leases_after_a_rolled_back_write_are_never_given_twice() {
    // Each write transaction hands the counters it read on to the next; one that is rolled
    // back must hand on nothing, or the next would start from ids it never committed.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(path(&dir)).unwrap();
    let a = store.enqueue(NewJob::new("q", "a")).unwrap().id();
    let mut rolled_back = None;
    let failed: Result<(), Error> = store.write(|tx| {
        rolled_back = Some(tx.enqueue(NewJob::new("q", "b"))?.id());
        Err(Error::InvalidInput {
            what: "test",
            reason: "roll back".into(),
        })
    });
    assert!(failed.is_err());
    let c = store.enqueue(NewJob::new("q", "c")).unwrap().id();
    let d = store
        .write(|tx| tx.enqueue(NewJob::new("q", "d")))
        .unwrap()
        .id();
    let e = store.enqueue(NewJob::new("q", "e")).unwrap().id();
    assert!(a < c && c < d && d < e, "{a:?} {c:?} {d:?} {e:?}");
    assert!(rolled_back.is_some_and(|b| b > a));
    let payloads: Vec<Vec<u8>> = store
        .list(&Filter::default())
        .unwrap()
        .into_iter()
        .map(|j| j.payload)
        .collect();
    assert_eq!(payloads, [b"a", b"c", b"d", b"e"]);
    // Every claim gets a lease of its own, and the ids survive a reopen.
    let mut tokens = Vec::new();
    while let Some(claimed) = store.claim("q", 1).unwrap().pop() {
        tokens.push(claimed.lease.token());
        store.complete(claimed.lease).unwrap();
    }
    tokens.sort_unstable();
    tokens.dedup();
    assert_eq!(tokens.len(), 4);
    drop(store);
    let store = Store::open(path(&dir)).unwrap();
    let f = store.enqueue(NewJob::new("q", "f")).unwrap().id();
    assert!(f > e);
}

#[test]
fn a_write_whose_enqueue_broke_is_not_committed_even_if_the_closure_goes_on() {
    const QUERN_JOBS: TableDefinition<u64, &[u8]> = TableDefinition::new("quern_jobs");
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(path(&dir)).unwrap();
    let result: Result<(), Error> = store.write(|tx| {
        tx.open_table(FILES)?.insert("a.txt", 1)?;
        // Holding one of quern's own tables makes the enqueue fail on storage.
        let _held = tx.transaction().open_table(QUERN_JOBS)?;
        let enqueued = tx.enqueue(NewJob::new("uploads", "a.txt"));
        assert!(
            matches!(enqueued, Err(Error::Storage { .. })),
            "{enqueued:?}"
        );
        Ok(())
    });
    assert!(matches!(result, Err(Error::Storage { .. })), "{result:?}");
    let rows = store
        .write(|tx| Ok::<_, Error>(tx.open_table(FILES)?.len()?))
        .unwrap();
    assert_eq!(rows, 0, "the user's row was not committed either");
    assert_eq!(store.check().unwrap(), []);
}

#[test]
fn a_storage_error_says_what_was_being_done_on_which_file_and_its_cause_once() {
    const QUERN_JOBS: TableDefinition<u64, &[u8]> = TableDefinition::new("quern_jobs");
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(path(&dir)).unwrap();
    let result: Result<(), Error> = store.write(|tx| {
        let _held = tx.transaction().open_table(QUERN_JOBS)?;
        tx.enqueue(NewJob::new("uploads", "a.txt"))?;
        Ok(())
    });
    let error = result.unwrap_err();
    let Error::Storage { context, cause } = &error else {
        panic!("expected a storage error, got {error:?}");
    };
    assert_eq!(*context, "enqueueing a job");
    assert_eq!(cause.file(), Some(path(&dir).as_path()));
    // The user reaches redb's own error through the cause.
    assert!(
        matches!(cause.redb(), quern::redb::Error::TableAlreadyOpen(name, _) if name == "quern_jobs"),
        "{:?}",
        cause.redb()
    );
    let message = error.to_string();
    let start = format!("enqueueing a job in {}: ", path(&dir).display());
    assert!(message.starts_with(&start), "{message}");
    assert_eq!(&message[start.len()..], cause.redb().to_string());
    // The cause is in the message, so it is nobody's source: a report that joins the chain
    // prints it once.
    assert!(std::error::Error::source(&error).is_none());
    assert!(std::error::Error::source(cause).is_none());
}

#[test]
fn a_store_call_inside_a_write_is_refused_rather_than_deadlocking() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(path(&dir)).unwrap();
    let inner = store.write(|_tx| Ok::<_, Error>(store.enqueue(NewJob::new("q", "x"))));
    assert!(matches!(inner, Ok(Err(Error::InvalidInput { .. }))));
}

#[test]
fn a_write_inside_a_write_is_refused_rather_than_deadlocking() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(path(&dir)).unwrap();
    let inner =
        store.write(|_tx| Ok::<_, Error>(store.write(|tx| tx.enqueue(NewJob::new("q", "nested")))));
    assert!(
        matches!(inner, Ok(Err(Error::InvalidInput { .. }))),
        "{inner:?}"
    );
    assert_eq!(store.stats().unwrap().queue("q"), None);
}

#[test]
fn a_thread_whose_write_closure_panicked_can_write_again() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(path(&dir)).unwrap();
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        store.write(|_tx| -> Result<(), Error> { panic!("the closure panics") })
    }));
    assert!(caught.is_err());
    // The same thread: neither refused as if still inside the write, nor blocked.
    store.enqueue(NewJob::new("q", "after")).unwrap();
    store
        .write(|tx| tx.enqueue(NewJob::new("q", "after, in a write")))
        .unwrap();
    assert_eq!(store.stats().unwrap().queue("q").unwrap().pending, 2);
}

#[test]
fn waiting_for_a_change_with_no_time_limit_returns_at_the_change() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(path(&dir)).unwrap();
    let seen = store.generation();
    let generation = std::thread::scope(|s| {
        let waiter = s.spawn(|| store.wait_for_change(seen, Duration::MAX));
        store.enqueue(NewJob::new("q", "x")).unwrap();
        waiter.join().unwrap()
    });
    assert!(generation > seen);
}

#[test]
fn sixteen_threads_enqueueing_at_once_all_succeed_with_distinct_ids() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(path(&dir)).unwrap();
    let ids: Vec<JobId> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..16)
            .map(|t| {
                let store = &store;
                s.spawn(move || {
                    (0..100)
                        .map(|i| {
                            store
                                .enqueue(NewJob::new("q", format!("{t}-{i}")))
                                .unwrap()
                                .id()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 1_600);
    assert_eq!(store.stats().unwrap().queue("q").unwrap().pending, 1_600);
}

#[test]
fn a_refused_operation_does_not_sink_its_neighbours_in_a_group_commit() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::default();
    let store = Store::builder()
        .clock(Arc::new(clock.clone()))
        .open(path(&dir))
        .unwrap();
    store.enqueue(NewJob::new("q", "x")).unwrap();
    let stale = store.claim("q", 1).unwrap().pop().unwrap().lease;
    store.cancel(stale.job()).unwrap();
    let batches = store.__write_batches();
    let sent = store.__writes_sent();
    std::thread::scope(|s| {
        let (enqueuers, refused) = store
            .write(|_tx| {
                // The write holds the writer's commits: the operations sent meanwhile queue,
                // and go in one batch once it ends.
                let enqueuers: Vec<_> = (0..8)
                    .map(|_| s.spawn(|| store.enqueue(NewJob::new("q", "y")).is_ok()))
                    .collect();
                let refused =
                    s.spawn(|| matches!(store.complete(stale), Err(Error::LeaseLost { .. })));
                // All nine are sent to the writer, which waits for the commit lock.
                let deadline = Instant::now() + Duration::from_secs(20);
                while store.__writes_sent() < sent + 9 {
                    assert!(Instant::now() < deadline, "the operations did not queue");
                    std::thread::yield_now();
                }
                Ok::<_, Error>((enqueuers, refused))
            })
            .unwrap();
        assert!(refused.join().unwrap(), "the stale lease was refused");
        assert!(
            enqueuers.into_iter().all(|h| h.join().unwrap()),
            "its neighbours all committed"
        );
    });
    assert_eq!(
        store.__write_batches(),
        batches + 1,
        "the refused settle and the eight enqueues shared one commit"
    );
    assert_eq!(store.stats().unwrap().queue("q").unwrap().pending, 8);
}

#[test]
fn the_change_watermark_wakes_a_waiter_when_another_thread_enqueues() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(path(&dir)).unwrap();
    let seen = store.generation();
    // No time limit: a missed wake-up leaves the waiter asleep, and the test fails when its
    // answer does not come (a wait with a limit would return the same generation at the
    // limit, and pass). The waiter is not joined, so that a missed wake-up fails the test
    // rather than hangs it.
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let waiter = store.clone();
    std::thread::spawn(move || done_tx.send(waiter.wait_for_change(seen, Duration::MAX)));
    store.enqueue(NewJob::new("q", "x")).unwrap();
    let woke = done_rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the waiter was not woken by the commit");
    assert!(woke > seen);
}

#[test]
fn public_handles_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Store>();
    check::<quern::Lease>();
    check::<quern::Job>();
    check::<Error>();
    check::<quern::ExecutorHandle>();
}
