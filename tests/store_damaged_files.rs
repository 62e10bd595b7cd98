//! A database file damaged outside quern (a bad disk, a stray write) gives a clear error naming
//! the file: never a panic, and the refused open writes nothing to it.
//!
//! The damage here is one flipped bit in the page that holds the job records of the format
//! fixture (`tests/fixtures/v2.redb`): its first byte, the page type, no longer names a kind of
//! page. The fuzzer (`fuzz/`, target `open_damaged`) tries many more.

use std::path::{Path, PathBuf};

use quern::{Error, JobId, Store};

/// A copy of the v2 fixture in `dir`, with the page holding the job records damaged.
fn damaged_copy(dir: &Path) -> PathBuf {
    let mut bytes =
        std::fs::read(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v2.redb"))
            .unwrap();
    // "boom" is the last error of two of the fixture's jobs: it lies in the table page of
    // `quern_jobs`.
    let at = bytes
        .windows(4)
        .position(|w| w == b"boom")
        .expect("the fixture has a job that failed with \"boom\"");
    let page = at / 4096 * 4096;
    bytes[page] ^= 1;
    let path = dir.join("damaged.redb");
    std::fs::write(&path, bytes).unwrap();
    path
}

fn is_corrupt_naming(err: &Error, path: &Path) -> bool {
    matches!(err, Error::Corrupt { .. }) && err.to_string().contains(&path.display().to_string())
}

#[test]
fn a_flipped_bit_in_a_table_page_refuses_the_open_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = damaged_copy(dir.path());
    let before = std::fs::read(&path).unwrap();

    let err = Store::open(&path).unwrap_err();
    assert!(is_corrupt_naming(&err, &path), "{err:?}: {err}");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "a refused open leaves the file as it was"
    );
    // Refused every time: the first refusal repaired nothing by throwing data away.
    let again = Store::open(&path).unwrap_err();
    assert!(is_corrupt_naming(&again, &path), "{again}");
}

#[test]
fn a_read_only_store_reports_a_damaged_page_as_corrupt_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = damaged_copy(dir.path());
    let before = std::fs::read(&path).unwrap();
    // Verified in memory at open, as a writable open verifies it.
    let err = Store::open_read_only(&path).unwrap_err();
    assert!(is_corrupt_naming(&err, &path), "{err:?}");
    assert!(
        std::fs::read(&path).unwrap() == before,
        "a read-only open wrote"
    );
    // Trusted at open, the reads that meet the damaged page fail instead, with the same error.
    let store = Store::builder()
        .verify_on_open(false)
        .open_read_only(&path)
        .unwrap();
    for id in 1..=5 {
        let err = store.get(JobId(id)).unwrap_err();
        assert!(is_corrupt_naming(&err, &path), "job {id}: {err:?}");
    }
    let err = store.list(&quern::Filter::default()).unwrap_err();
    assert!(is_corrupt_naming(&err, &path), "{err:?}");
}

#[test]
fn a_panic_in_a_for_each_callback_is_the_callers_not_damage() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.redb");
    let writer = Store::open(&path).unwrap();
    writer.enqueue(quern::NewJob::new("q", "x")).unwrap();
    let reader = Store::open_read_only(&path).unwrap();
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        reader.for_each(&quern::Filter::default(), |_| {
            panic!("the caller's own bug")
        })
    }));
    let payload = caught.expect_err("the callback's panic reaches the caller");
    assert_eq!(
        payload.downcast_ref::<&str>(),
        Some(&"the caller's own bug")
    );
    // The store still reads.
    assert_eq!(reader.list(&quern::Filter::default()).unwrap().len(), 1);
}
