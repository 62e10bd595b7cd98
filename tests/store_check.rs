//! `Store::check` finds nothing wrong in a healthy database and names what is wrong in a damaged
//! one.

use quern::redb::{ReadableTable, TableDefinition};
use quern::{Filter, NewJob, Store};

const READY: TableDefinition<&[u8], &[u8]> = TableDefinition::new("quern_ready");
const COUNTS: TableDefinition<&[u8], u64> = TableDefinition::new("quern_counts");

/// Edits the database at `path` behind quern's back, in one redb transaction.
fn damage(path: &std::path::Path, edit: impl FnOnce(&quern::redb::WriteTransaction)) {
    let db = quern::redb::Database::create(path).unwrap();
    let tx = db.begin_write().unwrap();
    edit(&tx);
    tx.commit().unwrap();
}

/// What `check` says of the database at `path`, opened for writing.
fn problems_of(path: &std::path::Path) -> Vec<String> {
    let store = Store::open(path).unwrap();
    let problems = store.check().unwrap();
    problems.iter().map(ToString::to_string).collect()
}

#[test]
fn a_healthy_database_has_no_problems() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("q.redb")).unwrap();
    store
        .enqueue_batch((0..20).map(|i| NewJob::new("q", format!("{i}")).unique_key(format!("{i}"))))
        .unwrap();
    for c in store.claim("q", 5).unwrap() {
        store.complete(c.lease).unwrap();
    }
    store.enqueue(NewJob::new("q", "not yet indexed")).unwrap();
    assert_eq!(store.check().unwrap(), []);
    let reader = Store::open_read_only(dir.path().join("q.redb")).unwrap();
    assert_eq!(reader.check().unwrap(), [], "checks run on a live database");
}

#[test]
fn a_lost_index_entry_and_a_wrong_count_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.redb");
    {
        let store = Store::open(&path).unwrap();
        store
            .enqueue_batch((0..3).map(|i| NewJob::new("q", format!("{i}"))))
            .unwrap();
        // A claim indexes the new jobs (all of them but the jobs it could claim).
        assert!(store.claim("other", 1).unwrap().is_empty());
    }
    damage(&path, |tx| {
        let mut ready = tx.open_table(READY).unwrap();
        let first = ready
            .first()
            .unwrap()
            .map(|(k, _)| k.value().to_vec())
            .unwrap();
        ready.remove(first.as_slice()).unwrap();
        let mut counts = tx.open_table(COUNTS).unwrap();
        let key = counts
            .first()
            .unwrap()
            .map(|(k, _)| k.value().to_vec())
            .unwrap();
        counts.insert(key.as_slice(), 7).unwrap();
    });
    let problems = problems_of(&path);
    assert_eq!(problems.len(), 2, "{problems:#?}");
    assert!(
        problems[0].starts_with("job 1: is pending but has no"),
        "{problems:#?}"
    );
    assert!(problems[1].contains("say 7"), "{problems:#?}");
}

#[test]
fn a_job_stored_twice_and_a_segment_below_the_mark_are_reported() {
    const JOBS: TableDefinition<u64, &[u8]> = TableDefinition::new("quern_jobs");
    const META: TableDefinition<&str, u64> = TableDefinition::new("quern_meta");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.redb");
    {
        let store = Store::open(&path).unwrap();
        // Jobs 1-10 and 11-20 in two segments; job 21 stored alone.
        for _ in 0..2 {
            store
                .enqueue_batch((0..10).map(|i| NewJob::new("q", format!("{i}"))))
                .unwrap();
        }
        store.enqueue(NewJob::new("q", "alone")).unwrap();
        assert_eq!(store.check().unwrap(), []);
    }
    damage(&path, |tx| {
        let mut jobs = tx.open_table(JOBS).unwrap();
        let alone = jobs.get(21).unwrap().unwrap().value().to_vec();
        jobs.insert(13, alone.as_slice()).unwrap();
        tx.open_table(META)
            .unwrap()
            .insert("indexed_below", 11)
            .unwrap();
    });
    let problems = problems_of(&path);
    for expected in [
        "job 13: is stored both alone and in a segment",
        "segment of jobs from 1: is below the indexed mark",
    ] {
        assert!(
            problems.iter().any(|p| p == expected),
            "{expected}: {problems:#?}"
        );
    }
    assert!(
        !problems
            .iter()
            .any(|p| p.starts_with("segment of jobs from 11")),
        "{problems:#?}"
    );
}

#[test]
fn a_listing_stops_before_a_damaged_job_past_its_limit() {
    const JOBS: TableDefinition<u64, &[u8]> = TableDefinition::new("quern_jobs");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.redb");
    {
        let store = Store::open(&path).unwrap();
        for i in 0..3 {
            store.enqueue(NewJob::new("q", format!("{i}"))).unwrap();
        }
    }
    damage(&path, |tx| {
        tx.open_table(JOBS)
            .unwrap()
            .insert(3, [9u8, 9, 9].as_slice())
            .unwrap();
    });
    let store = Store::open(&path).unwrap();
    let page = store.list(&Filter::default().limit(2)).unwrap();
    assert_eq!(page.iter().map(|j| j.id.0).collect::<Vec<_>>(), [1, 2]);
    assert!(matches!(
        store.list(&Filter::default()),
        Err(quern::Error::Corrupt { .. })
    ));
}

#[test]
fn a_segment_past_the_next_id_is_reported() {
    const META: TableDefinition<&str, u64> = TableDefinition::new("quern_meta");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.redb");
    {
        let store = Store::open(&path).unwrap();
        store
            .enqueue_batch((0..10).map(|i| NewJob::new("q", format!("{i}"))))
            .unwrap();
        assert_eq!(store.check().unwrap(), []);
    }
    damage(&path, |tx| {
        tx.open_table(META).unwrap().remove("next_id").unwrap();
    });
    assert_eq!(
        problems_of(&path),
        ["segment of jobs from 1: ends past the next id (0): its ids would be given again"]
    );
}

#[test]
fn a_lease_at_or_past_the_next_token_is_reported() {
    const META: TableDefinition<&str, u64> = TableDefinition::new("quern_meta");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.redb");
    {
        let store = Store::open(&path).unwrap();
        store.enqueue(NewJob::new("q", "x")).unwrap();
        let claimed = store.claim("q", 1).unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(store.check().unwrap(), []);
    }
    // A token that could be given again: a later open would take the lease for its own.
    damage(&path, |tx| {
        tx.open_table(META)
            .unwrap()
            .insert("next_token", 1)
            .unwrap();
    });
    assert_eq!(
        problems_of(&path),
        ["job 1: in progress under lease token 1, not below the next token 1"]
    );
}
