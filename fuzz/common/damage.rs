//! Fuzz input -> a damaged copy of a quern database, and what a store does with it.
//!
//! Shared by the `open_damaged` fuzz target and the corpus replay in `tests/fuzz_corpus.rs`,
//! both including this file (and `input.rs`, as `crate::input`) by path. The database damaged is
//! the format fixture `tests/fixtures/v4.redb`: a job in each state and two not yet indexed,
//! in one segment, the same bytes on every machine, so that a corpus file always means the same
//! damaged file. Until format 2 it was `v1.redb`: the finds named after a crash were found on
//! that file, and are kept with it (`fuzz/corpus/open_damaged_v1/`, replayed on `BASE_V1` by
//! `tests/fuzz_corpus.rs`), where their offsets still reach what they reached.
//!
//! The oracle: opening the damaged file gives an error, or a store whose every operation
//! returns, with a result or an error; never a panic that escapes quern (the fuzzer aborts on
//! it), never a panic that quern swallows outside its guards (the writer thread's, say:
//! [`exercise`] reports those), never a hang (the fuzzer's timeout). quern guards two places,
//! where redb reads a file it never verified: the redb open itself, and the reads of a store
//! opened read-only (verified in memory at open, trusted with `verify_on_open(false)`; the
//! oracle opens both kinds verified, since a trusted open of damaged data may exhaust memory
//! by design); a panic caught in a read-only read
//! must come back as `Error::Corrupt`. A writable store is verified at open, so any panic in
//! it is a failure. And when `Store::check` finds nothing wrong with a store, its reads of the
//! same state all succeed: damage that a read trips over is damage `check` should have found.

use std::cell::Cell;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once, PoisonError};
use std::time::Duration;

use quern::{Error, Filter, JobId, ManualClock, NewJob, Retention, Store, Timestamp};

use crate::input::Input;

/// The undamaged database.
pub const BASE: &[u8] = include_bytes!("../../tests/fixtures/v4.redb");
/// redb's page size: the unit of the page-sized edits.
pub const PAGE: usize = 4096;
/// The most edits one input makes.
pub const MAX_EDITS: usize = 16;
/// The ids of the fixture's jobs (1-7), and two that never existed.
const IDS: std::ops::RangeInclusive<u64> = 0..=8;
/// The fixture's clock (`tests/format_fixtures.rs`), an hour on: its lease has expired, its
/// retry is due, its finished jobs are an hour old.
const NOW: Timestamp = Timestamp(1_700_000_000_000 + 3_600_000);

/// The format 1 fixture, the base of every crash the fuzzer found before format 2
/// (`fuzz/corpus/open_damaged_v1/`): each find is replayed on the file it was found on, where
/// its offsets mean what they meant then.
#[allow(
    dead_code,
    reason = "the corpus replay uses it, the fuzz target does not"
)]
pub const BASE_V1: &[u8] = include_bytes!("../../tests/fixtures/v1.redb");

/// `base` (`BASE`, or `BASE_V1` for the finds on it) damaged by the edits `data` encodes,
/// five bytes each: a kind, a three-byte offset (modulo the file's length), a value.
pub fn damage_of(base: &[u8], data: &[u8]) -> Vec<u8> {
    let mut file = base.to_vec();
    let mut input = Input::new(data);
    for _ in 0..MAX_EDITS {
        if input.is_empty() || file.is_empty() {
            break;
        }
        let kind = input.below(8);
        let at = input.u24() as usize % file.len();
        let value = input.byte();
        match kind {
            // Flipped bits.
            0..=3 => file[at] ^= value.max(1),
            // A byte overwritten.
            4 => file[at] = value,
            // A page lost: zeroed (a write that never reached the disk).
            5 => {
                let start = at / PAGE * PAGE;
                let end = (start + PAGE).min(file.len());
                file[start..end].fill(0);
            }
            // A page written over another (a misdirected write).
            6 => {
                let pages = file.len().div_ceil(PAGE);
                let from = usize::from(value) % pages * PAGE;
                let to = at / PAGE * PAGE;
                let n = PAGE.min(file.len() - from).min(file.len() - to);
                file.copy_within(from..from + n, to);
            }
            // Truncated.
            _ => file.truncate(at),
        }
    }
    file
}

/// Panics seen by the hook [`record_panics`] installs: every thread's, caught or not.
static PANICS: AtomicUsize = AtomicUsize::new(0);
static LAST_PANIC: Mutex<String> = Mutex::new(String::new());

thread_local! {
    /// Set while this thread runs a call whose panics quern catches on purpose: a store's open,
    /// a read of a read-only store.
    static GUARDED: Cell<bool> = const { Cell::new(false) };
}

/// Installs a panic hook, once, that counts every panic and keeps the last one's message. A
/// panic in a call quern guards stops there (quern catches it and returns an error); any other
/// goes on to the hook that was installed before: libFuzzer's aborts, so the fuzzer reports the
/// panic where it happened.
pub fn record_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let then = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            let thread = std::thread::current().name().unwrap_or("?").to_owned();
            // The hook runs while the thread panics, which poisons the lock when the guard
            // drops: every use takes it poisoned or not.
            *LAST_PANIC.lock().unwrap_or_else(PoisonError::into_inner) =
                format!("thread '{thread}': {info}");
            if !GUARDED.with(Cell::get) {
                then(info);
            }
        }));
    });
}

fn panics() -> usize {
    PANICS.load(Ordering::SeqCst)
}

/// The message of the last panic the hook saw.
pub fn last_panic() -> String {
    LAST_PANIC
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
}

/// What one store did with a damaged file.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Why the read-only open failed, if it did.
    pub read_only: Option<String>,
    /// Why the writable open failed, if it did.
    pub writable: Option<String>,
    /// Why the second writable open, after the writes, failed, if it did.
    pub reopened: Option<String>,
    /// Operations that returned an error, over all opens.
    pub errors: usize,
    /// Operations that succeeded.
    pub ok: usize,
    /// Problems `Store::check` found, over all its runs.
    pub problems: usize,
    /// Panics inside an open that quern caught and turned into an error.
    pub caught_in_open: usize,
    /// Reads of a read-only store in which quern caught a panic and returned `Error::Corrupt`.
    pub caught_in_reads: usize,
}

impl Outcome {
    /// One short line: `ro=<error kind or ok> rw=... reopen=... ok=N err=N ...`.
    #[allow(dead_code)] // the fuzz targets print nothing
    pub fn summary(&self) -> String {
        let kind = |r: &Option<String>| r.clone().unwrap_or_else(|| "ok".into());
        format!(
            "ro={} rw={} reopen={} ok={} err={} problems={} caught={} caught_ro={}",
            kind(&self.read_only),
            kind(&self.writable),
            kind(&self.reopened),
            self.ok,
            self.errors,
            self.problems,
            self.caught_in_open,
            self.caught_in_reads
        )
    }
}

/// The variant name of an error: what the summary shows.
fn kind(e: &Error) -> String {
    let debug = format!("{e:?}");
    debug
        .split(|c: char| !c.is_alphanumeric())
        .next()
        .unwrap_or("?")
        .to_owned()
}

/// Opens the damaged database at `path` read-only, then writable, runs every kind of
/// operation, reopens it, and reads again.
///
/// # Panics
/// When a panic was swallowed by quern anywhere but inside its guarded open or a read-only
/// store's guarded reads (the writer thread's, say), or a guarded read swallowed one but did
/// not return `Error::Corrupt`: [`record_panics`] must be installed for that to be seen.
pub fn exercise(path: &Path) -> Outcome {
    let mut out = Outcome::default();
    let clock = ManualClock::new(NOW);
    let builder = || Store::builder().clock(Arc::new(clock.clone()));
    utility_reads(path);

    match open(&mut out, || builder().open_read_only(path)) {
        Ok(store) => check_then_read(&store, &mut out),
        Err(e) => out.read_only = Some(e),
    }

    match open(&mut out, || builder().open(path)) {
        Ok(store) => {
            check_then_read(&store, &mut out);
            write(&store, &mut out);
            check(&store, &mut out);
            read(&store, &mut out);
        }
        Err(e) => out.writable = Some(e),
    }

    match open(&mut out, || builder().open(path)) {
        Ok(store) => check_then_read(&store, &mut out),
        Err(e) => out.reopened = Some(e),
    }
    out
}

/// The utility's read commands on the damaged file, before anything opens it for writing,
/// when `QUERN_FUZZ_QUERN` names a `quern` binary (`fuzz/run.sh` builds one): each ends with
/// exit code 0, 1 or 2 (never a panic's 101, never a signal such as an abort on a failed
/// allocation), and leaves every byte of the file as it was.
fn utility_reads(path: &Path) {
    let Some(quern) = std::env::var_os("QUERN_FUZZ_QUERN") else {
        return;
    };
    let before = std::fs::read(path).expect("read the damaged file");
    let file = path.to_str().expect("a temporary path is UTF-8");
    for args in [
        &["stats", file, "--format", "json"][..],
        &["dump", file, "--format", "jsonl"],
        &["show", file, "3"],
        &["check", file],
    ] {
        let out = std::process::Command::new(&quern)
            .args(args)
            .output()
            .expect("run quern");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            matches!(out.status.code(), Some(0..=2)) && !stderr.contains("panicked"),
            "quern {} ended with {}: {stderr}",
            args.join(" "),
            out.status
        );
        assert!(
            std::fs::read(path).expect("read the damaged file") == before,
            "quern {} changed the file",
            args.join(" ")
        );
    }
}

/// Runs an open, telling a panic that quern caught (and turned into an error) from one it
/// swallowed.
fn open(out: &mut Outcome, f: impl FnOnce() -> quern::Result<Store>) -> Result<Store, String> {
    let before = panics();
    GUARDED.with(|o| o.set(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    GUARDED.with(|o| o.set(false));
    // Raised again outside the open, so that the hook after this one (libFuzzer's) sees it.
    let Ok(result) = result else {
        let last = last_panic();
        panic!("a panic escaped the store's open: {last}");
    };
    let caught = panics() - before;
    match result {
        Ok(store) => {
            assert_no_panic(caught, "an open that succeeded");
            Ok(store)
        }
        Err(e) => {
            if caught > 0 {
                out.caught_in_open += 1;
            }
            Err(kind(&e))
        }
    }
}

fn assert_no_panic(n: usize, during: &str) {
    if n > 0 {
        let last = last_panic();
        panic!("{n} panic(s) swallowed during {during}; the last: {last}");
    }
}

fn tally<T>(out: &mut Outcome, r: quern::Result<T>) -> Option<T> {
    match r {
        Ok(v) => {
            out.ok += 1;
            Some(v)
        }
        Err(_) => {
            out.errors += 1;
            None
        }
    }
}

/// Runs one read of `store`. A writable store's reads are not guarded: a panic goes on to the
/// hook (and libFuzzer's abort). A read-only store's are: a panic quern caught there must come
/// back as `Error::Corrupt`, and is counted.
fn guarded<T>(
    store: &Store,
    out: &mut Outcome,
    what: &str,
    f: impl FnOnce() -> quern::Result<T>,
) -> quern::Result<T> {
    if !store.is_read_only() {
        return f();
    }
    let before = panics();
    GUARDED.with(|g| g.set(true));
    let result = f();
    GUARDED.with(|g| g.set(false));
    let caught = panics() - before;
    if caught > 0 {
        match &result {
            Err(Error::Corrupt { .. }) => out.caught_in_reads += caught,
            other => {
                let other = other.as_ref().map(drop).map_err(kind);
                let last = last_panic();
                panic!(
                    "{what} of a read-only store swallowed {caught} panic(s) but returned \
                     {other:?}, not Corrupt; the last: {last}"
                );
            }
        }
    }
    result
}

/// Runs `Store::check`; true when it found nothing wrong.
fn check(store: &Store, out: &mut Outcome) -> bool {
    let before = panics() - out.caught_in_reads;
    let checked = guarded(store, out, "check", || store.check());
    let clean = match tally(out, checked) {
        Some(problems) => {
            out.problems += problems.len();
            problems.is_empty()
        }
        None => false,
    };
    assert_no_panic(panics() - out.caught_in_reads - before, "check");
    clean
}

/// Checks, then reads: when the check found nothing, every read must succeed.
fn check_then_read(store: &Store, out: &mut Outcome) {
    let clean = check(store, out);
    let failures = read(store, out);
    if clean && let Some(first) = failures.first() {
        let last = last_panic();
        panic!(
            "check found nothing wrong, but {} read(s) failed; the first: {first} \
             (the last panic seen: {last})",
            failures.len()
        );
    }
}

/// Reads every job, lists and counts; returns the reads that failed, with their errors.
fn read(store: &Store, out: &mut Outcome) -> Vec<String> {
    let before = panics() - out.caught_in_reads;
    let mut failures = Vec::new();
    let mut note = |out: &mut Outcome, what: String, f: &mut dyn FnMut() -> quern::Result<()>| {
        let r = guarded(store, out, &what, f);
        if let Err(e) = &r {
            failures.push(format!("{what}: {e}"));
        }
        tally(out, r);
    };
    for id in IDS {
        note(out, format!("get({id})"), &mut || {
            store.get(JobId(id)).map(drop)
        });
    }
    note(out, "list".into(), &mut || {
        store.list(&Filter::default()).map(drop)
    });
    let page = Filter::default().queue("sync").limit(3);
    note(out, "list(sync, 3)".into(), &mut || {
        store.list(&page).map(drop)
    });
    note(out, "stats".into(), &mut || store.stats().map(drop));
    note(out, "for_each".into(), &mut || {
        let mut seen = 0;
        store.for_each(&Filter::default(), |_| {
            seen += 1;
            seen < 100
        })
    });
    assert_no_panic(panics() - out.caught_in_reads - before, "reads");
    failures
}

fn write(store: &Store, out: &mut Outcome) {
    let before = panics();
    tally(out, store.recover_expired());
    tally(out, store.promote_due());
    for (i, claimed) in tally(out, store.claim("sync", 8))
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        let lease = claimed.lease;
        let r = match i % 4 {
            0 => store.complete(lease),
            1 => store.fail(lease, "boom"),
            2 => store
                .heartbeat(&lease)
                .and_then(|()| store.snooze(lease, Duration::ZERO)),
            _ => store.discard(lease, "bad"),
        };
        tally(out, r);
    }
    tally(out, store.claim("other", 2));
    tally(
        out,
        store.enqueue(NewJob::new("sync", "again").unique_key("u1")),
    );
    tally(
        out,
        store.enqueue_batch([NewJob::new("sync", "x"), NewJob::new("other", "y")]),
    );
    for id in IDS {
        tally(out, store.retry(JobId(id)));
    }
    tally(out, store.cancel(JobId(1)));
    tally(out, store.apply_retention(&Retention::default()));
    tally(out, store.prune(Duration::from_secs(60)));
    assert_no_panic(panics() - before, "writes");
}
