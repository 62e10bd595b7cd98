//! The commands of the `quern` utility: each opens the database and runs one command.
//!
//! Read commands open the database read-only, so they work while a worker writes it. Write
//! commands (retry, cancel, prune, pause, resume, unpark) open it for writing when no process
//! holds it; when one does, they send their request through its control channel
//! (`quern::control`) and print its reply. Errors print one line and exit with code 2; `check`
//! exits with 1 when it finds problems.

use std::collections::HashSet;
use std::io::{self, Write};
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use clap::Parser;
use quern::control::{self, Change, Reply, Request, list};
use quern::{Error, Filter, JobId, JobState, Store};

use crate::args::{Args, Command, Format};
use crate::escape::escape;
use crate::{render, time};

/// Exit codes.
const OK: i32 = 0;
const PROBLEMS: i32 = 1;
pub const FAILURE: i32 = 2;

pub fn main() -> i32 {
    let args = match Args::try_parse() {
        Ok(args) => args,
        // Help and version go to stdout as clap writes them.
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return OK;
        }
        Err(e) => {
            eprintln!("quern: {}", one_line(&e.render().to_string()));
            return FAILURE;
        }
    };
    match try_main(args) {
        Ok(code) => code,
        Err(e) if is_broken_pipe(&e) => OK,
        Err(e) => {
            let chain: Vec<String> = e.chain().map(ToString::to_string).collect();
            // Paths, ids and queue names come from users: escaped, the error stays one line.
            eprintln!("quern: {}", escape(&chain.join(": ")));
            FAILURE
        }
    }
}

/// A command-line error of clap's, which spans several lines ("error: ...", a tip, the usage,
/// a pointer to --help), as one: what is wrong, its tips, and the pointer to --help.
fn one_line(rendered: &str) -> String {
    let mut parts: Vec<String> = Vec::new();
    for line in rendered.lines().map(str::trim) {
        if line.starts_with("Usage:") || line.starts_with("For more information") {
            break;
        }
        if line.is_empty() {
            continue;
        }
        let line = line.strip_prefix("error: ").unwrap_or(line);
        match parts.last_mut() {
            // "...were not provided:" followed by the arguments, one a line.
            Some(last) if last.ends_with(':') || !line.starts_with("tip:") => {
                last.push(' ');
                last.push_str(line);
            }
            _ => parts.push(line.to_owned()),
        }
    }
    parts.push("see --help".to_owned());
    escape(&parts.join("; "))
}

/// A closed pipe (`quern dump | head`) ends the output; it is not an error.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    })
}

fn try_main(args: Args) -> Result<i32> {
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    // What was written reaches stdout before a failure is reported: `dump` ends its output
    // properly before it returns an error.
    let run = run(&mut out, args.command).map_err(read_again);
    let flushed = out.flush();
    let code = run?;
    flushed?;
    Ok(code)
}

fn run(out: &mut impl Write, command: Command) -> Result<i32> {
    Ok(match command {
        Command::Stats { db, format } => {
            let store = open_read(&db)?;
            let stats = store.stats()?;
            let controls = store.controls()?;
            note_unclosed(out, &store, format)?;
            let closed_cleanly = store.closed_cleanly();
            match format {
                Format::Json | Format::Jsonl => {
                    render::stats_json(out, &stats, &controls, closed_cleanly, format)?
                }
                Format::Table => render::stats_table(out, &stats, &controls)?,
            }
            OK
        }
        Command::Dump {
            db,
            queue,
            state,
            limit,
            format,
        } => {
            let store = open_read(&db)?;
            let mut filter = Filter::default();
            if let Some(q) = queue {
                filter = filter.queue(q);
            }
            if let Some(s) = state {
                filter = filter.state(s);
            }
            if let Some(n) = limit {
                filter = filter.limit(n);
            }
            note_unclosed(out, &store, format)?;
            render::dump(out, &store, &filter, format)?;
            OK
        }
        Command::Show { db, id, format } => {
            let store = open_read(&db)?;
            let job = store
                .get(JobId(id))?
                .ok_or_else(|| anyhow!("job {id} not found in {}", db.display()))?;
            note_unclosed(out, &store, format)?;
            match format {
                Format::Json | Format::Jsonl => render::job_json_line(out, &job)?,
                Format::Table => {
                    render::job_text(out, &job, store.now())?;
                    // What holds its queue or key back, if anything.
                    let now = store.now();
                    for c in store.controls()? {
                        let ours = c.queue == job.queue
                            && (c.key.is_none() || c.key == job.concurrency_key);
                        if ours {
                            render::control_line(out, &c, now)?;
                        }
                    }
                }
            }
            OK
        }
        Command::Retry {
            db,
            ids,
            queue,
            state,
        } => {
            let selection = match (queue, state) {
                (Some(queue), Some(state)) => Selection::Queue(queue, state),
                _ => Selection::Ids(ids),
            };
            change(out, &db, Change::Retry, selection)?
        }
        Command::Cancel { db, ids } => change(out, &db, Change::Cancel, Selection::Ids(ids))?,
        Command::Prune { db, older_than } => match open_write(&db)? {
            Some(store) => {
                let n = store.prune(older_than.0)?;
                writeln!(
                    out,
                    "pruned {n} finished job(s) older than {}",
                    time::duration(older_than.0)
                )?;
                OK
            }
            None => remote(
                out,
                &db,
                &Request::Prune {
                    older_than: older_than.0,
                },
            )?,
        },
        Command::Pause { db, queue } => match open_write(&db)? {
            Some(store) => {
                store.pause(&queue)?;
                writeln!(
                    out,
                    "paused queue {}: none of its jobs start until it is resumed",
                    escape(&format!("{queue:?}"))
                )?;
                OK
            }
            None => remote(out, &db, &Request::Pause { queue })?,
        },
        Command::Resume { db, queue } => match open_write(&db)? {
            Some(store) => {
                store.resume(&queue)?;
                writeln!(out, "resumed queue {}", escape(&format!("{queue:?}")))?;
                OK
            }
            None => remote(out, &db, &Request::Resume { queue })?,
        },
        Command::Unpark { db, queue, key } => match open_write(&db)? {
            Some(store) => {
                store.unpark(&queue, key.as_deref())?;
                let what = match &key {
                    Some(key) => format!("unparked key {key:?} of queue {queue:?}"),
                    None => format!("unparked queue {queue:?}"),
                };
                writeln!(out, "{}", escape(&what))?;
                OK
            }
            None => remote(out, &db, &Request::Unpark { queue, key })?,
        },
        Command::Check { db } => check(out, &db)?,
        Command::Upgrade { db } => upgrade(out, &db)?,
    })
}

/// The request that asks the process holding the file for `change` of `selection`.
fn request_for(change: Change, selection: &Selection) -> Request {
    let ids = |ids: &[u64]| ids.iter().copied().map(JobId).collect();
    match (change, selection) {
        (Change::Retry, Selection::Queue(queue, _)) => Request::RetryFailed {
            queue: queue.clone(),
        },
        (Change::Retry, Selection::Ids(jobs)) => Request::Retry { jobs: ids(jobs) },
        (Change::Cancel, Selection::Ids(jobs)) => Request::Cancel { jobs: ids(jobs) },
        // `cancel` takes ids only (args.rs): a queue selects none.
        (Change::Cancel, Selection::Queue(..)) => Request::Cancel { jobs: Vec::new() },
    }
}

/// The jobs a command names.
enum Selection {
    Ids(Vec<u64>),
    /// Every job of a queue in a state.
    Queue(String, JobState),
}

/// The ids a selection names, each once, in the order given.
fn select(store: &Store, selection: Selection) -> Result<Vec<JobId>> {
    match selection {
        Selection::Ids(ids) => {
            let mut seen = HashSet::new();
            Ok(ids
                .into_iter()
                .filter(|id| seen.insert(*id))
                .map(JobId)
                .collect())
        }
        Selection::Queue(queue, state) => Ok(store
            .list(&Filter::default().queue(queue).state(state))?
            .into_iter()
            .map(|j| j.id)
            .collect()),
    }
}

/// Retries or cancels every job selected, or none: each job is read and checked first, and a
/// single job the change does not apply to refuses the whole command, naming every such job.
///
/// The check runs on a read-only open, which leaves the file as it is (a writable open and
/// close rewrites redb's header even when no job changes): a refused command changes no byte,
/// also in a file a crashed writer left unclosed (read as it left it). It runs again under the
/// write lock, since a worker may have run between the two opens; that open repairs a file
/// left unclosed, as any writer's open would.
///
/// When another process holds the file for writing, the request goes to it through its
/// control channel, which checks every job again before it changes any.
fn change(out: &mut impl Write, db: &Path, change: Change, selection: Selection) -> Result<i32> {
    existing(db)?;
    let request = request_for(change, &selection);
    let (store, ids) = match Store::open_read_only(db) {
        Ok(reader) => {
            let ids = select(&reader, selection)?;
            refuse_unless_all_apply(&reader, db, change, &ids)?;
            if ids.is_empty() {
                writeln!(out, "{} 0 job(s): none selected", change.done())?;
                return Ok(OK);
            }
            drop(reader);
            let Some(store) = open_write(db)? else {
                return remote(out, db, &request);
            };
            refuse_unless_all_apply(&store, db, change, &ids)?;
            (store, ids)
        }
        Err(Error::AlreadyOpen { .. }) => return remote(out, db, &request),
        Err(e) => return Err(old_format(db, e)),
    };
    for (n, &id) in ids.iter().enumerate() {
        if let Err(e) = change.apply(&store, id) {
            // Every job was checked under the write lock: only a storage failure gets here.
            let (done, left) = (&ids[..n], &ids[n + 1..]);
            return Err(anyhow::Error::new(e).context(format!(
                "{} of job {id} in {} failed; {} before it: {}; left as they were: {}",
                change.verb(),
                db.display(),
                change.done(),
                list(done),
                list(left),
            )));
        }
    }
    match change {
        Change::Retry => writeln!(out, "retried {} job(s): now pending", ids.len())?,
        Change::Cancel => writeln!(out, "cancelled {} job(s)", ids.len())?,
    }
    Ok(OK)
}

/// The most refusals one error names; the rest are counted.
const REFUSALS_NAMED: usize = 10;

/// Fails, naming every job (up to [`REFUSALS_NAMED`]) the change does not apply to: a job not
/// found, in a state the change does not take, or (for a retry) whose unique key another live
/// job holds.
fn refuse_unless_all_apply(store: &Store, db: &Path, change: Change, ids: &[JobId]) -> Result<()> {
    let mut refusals = change
        .refusals(store, ids, "command")
        .with_context(|| format!("reading the jobs named in {}", db.display()))?;
    if refusals.is_empty() {
        return Ok(());
    }
    let more = refusals.len().saturating_sub(REFUSALS_NAMED);
    refusals.truncate(REFUSALS_NAMED);
    let mut why = refusals.join("; ");
    if more > 0 {
        why.push_str(&format!("; and {more} more"));
    }
    bail!("nothing {} in {}: {why}", change.done(), db.display())
}

/// Says, when `store` reads a file its writer did not close, that the jobs are shown as that
/// writer left them: a line of the output for people (`table`), a line on stderr beside JSON,
/// which stays data alone (`stats` JSON also says it in its `closed_cleanly` field).
fn note_unclosed(out: &mut impl Write, store: &Store, format: Format) -> io::Result<()> {
    if store.closed_cleanly() {
        return Ok(());
    }
    let note = format!(
        "note: {} was not closed cleanly (its writer stopped without closing it): jobs are shown \
         as it left them, its claims running until a worker opens the file",
        escape(&store.path().display().to_string())
    );
    match format {
        Format::Table => writeln!(out, "{note}"),
        Format::Json | Format::Jsonl => {
            eprintln!("{note}");
            Ok(())
        }
    }
}

/// A read that a writer's open cut short ([`Error::Changed`]) says to run the command again:
/// the file is then the live writer's, which a new read-only open reads beside it.
fn read_again(e: anyhow::Error) -> anyhow::Error {
    match e.chain().find_map(|c| c.downcast_ref::<Error>()) {
        Some(Error::Changed { path }) => anyhow!(
            "{} changed while it was read (a writer opened it): run the command again",
            path.display()
        ),
        _ => e,
    }
}

/// Fails unless `db` can be opened: "no such file" when it does not exist, the I/O error
/// otherwise (a symlink loop, a directory on the way that is not one, no permission). A
/// writable open would create a missing file.
fn existing(db: &Path) -> Result<()> {
    match std::fs::metadata(db) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => bail!("{}: no such file", db.display()),
        Err(e) => bail!("{}: {e}", db.display()),
    }
}

/// Sends `request` to the process that holds `db`, through its control channel, and prints
/// its reply: exit code 0 when done; a refusal or a failure is the command's error.
fn remote(out: &mut impl Write, db: &Path, request: &Request) -> Result<i32> {
    match control::send(db, request) {
        Ok(Reply::Done(message)) => {
            writeln!(out, "{}", escape(&message))?;
            Ok(OK)
        }
        Ok(reply) => bail!("{}", reply.message()),
        Err(Error::NoControlChannel { .. }) => bail!(
            "{} is open for writing by another process, which serves no control channel (it \
             was opened with the channel turned off, or cannot make its socket): stop it to \
             change jobs or queues (stats, dump, show and check work while it runs)",
            db.display()
        ),
        Err(e) => Err(anyhow::Error::new(e)
            .context(format!("asking the process that holds {}", db.display()))),
    }
}

fn writer_busy(db: &Path) -> anyhow::Error {
    anyhow!(
        "{} is open for writing by another process: stop it to upgrade it (stats, dump, show \
         and check work while it runs)",
        db.display()
    )
}

fn open_read(db: &Path) -> Result<Store> {
    existing(db)?;
    Store::open_read_only(db).map_err(|e| old_format(db, e))
}

/// Opens `db` for writing, never creating, initialising or upgrading it: those are a
/// program's (or `quern upgrade`'s) to do. `None` when another process holds it for writing:
/// the command then goes through that process's control channel.
fn open_write(db: &Path) -> Result<Option<Store>> {
    existing(db)?;
    // Read first: a writable open rewrites redb's header even when quern then refuses the
    // file, so what a write command refuses (an older format, a file that is no quern
    // database) is refused by a read that changes no byte. A file a crash left unclosed is
    // read so too (as it was left); the writable open then repairs it, as a worker's start
    // would.
    match Store::open_read_only(db) {
        // Formats 2 and 3 read as they are, but a writable open would upgrade them.
        Ok(reader) if reader.format_version() < quern::FORMAT_VERSION => {
            return Err(old_format(
                db,
                Error::UnsupportedFormat {
                    path: db.to_path_buf(),
                    found: reader.format_version(),
                    supported: quern::FORMAT_VERSION,
                },
            ));
        }
        Ok(reader) => drop(reader),
        Err(Error::AlreadyOpen { .. }) => return Ok(None),
        Err(e) => return Err(old_format(db, e)),
    }
    // A command's store serves no control channel: it holds the file for a moment only.
    match Store::builder()
        .create(false)
        .upgrade(false)
        .control_channel(false)
        .open(db)
    {
        Err(Error::AlreadyOpen { .. }) => Ok(None),
        other => other.map(Some).map_err(|e| old_format(db, e)),
    }
}

/// An older format named with the command that upgrades it.
fn old_format(db: &Path, e: Error) -> anyhow::Error {
    match e {
        Error::UnsupportedFormat {
            found, supported, ..
        } if found < supported => anyhow!(
            "{} has format version {found}, this build writes version {supported}: run `quern \
             upgrade {}` first (a worker of this build upgrades it too)",
            escape(&db.display().to_string()),
            escape(&db.display().to_string())
        ),
        e => e.into(),
    }
}

/// `quern upgrade`: the only command that changes a file's format.
fn upgrade(out: &mut impl Write, db: &Path) -> Result<i32> {
    existing(db)?;
    // Read first, so that a file this command refuses (no quern database, a newer format)
    // keeps every byte.
    let found = match Store::open_read_only(db) {
        Ok(reader) if reader.format_version() == quern::FORMAT_VERSION => {
            writeln!(
                out,
                "{} is at format version {}: nothing to upgrade",
                escape(&db.display().to_string()),
                quern::FORMAT_VERSION
            )?;
            return Ok(OK);
        }
        Ok(reader) => reader.format_version(),
        Err(Error::UnsupportedFormat {
            found, supported, ..
        }) if found < supported => found,
        Err(Error::AlreadyOpen { path }) => return Err(writer_busy(&path)),
        Err(e) => return Err(e.into()),
    };
    let store = match Store::builder()
        .create(false)
        .control_channel(false)
        .open(db)
    {
        Err(Error::AlreadyOpen { path }) => return Err(writer_busy(&path)),
        other => other?,
    };
    store.close();
    writeln!(
        out,
        "upgraded {} from format version {found} to {}",
        escape(&db.display().to_string()),
        quern::FORMAT_VERSION
    )?;
    Ok(OK)
}

/// redb's own integrity check, the format, then quern's invariants: each check that can run
/// runs, and each that cannot says why. Exit code 1 when a check found problems, 2 when none
/// did but one could not run, 0 when all ran clean. Nothing is written: the integrity check
/// runs in memory (the read-only open verifies every page), so it works on a file this user
/// may not write, under a file size limit, and beside a running worker.
fn check(out: &mut impl Write, db: &Path) -> Result<i32> {
    existing(db)?;
    let name = escape(&db.display().to_string());
    let store = match Store::open_read_only(db) {
        Ok(store) if store.verified() => {
            writeln!(out, "storage: ok")?;
            store
        }
        Ok(store) => {
            writeln!(
                out,
                "storage: skipped (a writer holds the database and committed while the check \
                 read it; it verified the file when it opened it)"
            )?;
            store
        }
        Err(e @ Error::Corrupt { .. }) => {
            writeln!(out, "storage: corrupt: {}", escape(&e.to_string()))?;
            writeln!(out, "invariants: not checked (the file cannot be read)")?;
            return Ok(PROBLEMS);
        }
        Err(Error::UnsupportedFormat {
            found, supported, ..
        }) if found < supported => {
            writeln!(
                out,
                "format: version {found}, older than this build's {supported}: run `quern \
                 upgrade {name}` (invariants not checked)"
            )?;
            return Ok(FAILURE);
        }
        Err(e) => {
            writeln!(out, "storage: not checked: {}", escape(&e.to_string()))?;
            writeln!(out, "invariants: not checked")?;
            return Ok(FAILURE);
        }
    };
    if store.format_version() < quern::FORMAT_VERSION {
        writeln!(
            out,
            "format: version {}, older than this build's {}: run `quern upgrade {name}`",
            store.format_version(),
            quern::FORMAT_VERSION
        )?;
    }
    let found = match store.check() {
        Ok(found) => found,
        Err(e) => {
            writeln!(out, "invariants: not checked: {}", escape(&e.to_string()))?;
            return Ok(FAILURE);
        }
    };
    if found.is_empty() {
        writeln!(out, "invariants: ok")?;
    } else {
        writeln!(out, "invariants: {} problem(s)", found.len())?;
        for p in &found {
            writeln!(out, "  {}", escape(&p.to_string()))?;
        }
        return Ok(PROBLEMS);
    }
    Ok(OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_a_writers_open_cut_short_says_to_run_the_command_again() {
        let changed = Error::Changed {
            path: "q.redb".into(),
        };
        let e = read_again(anyhow::Error::new(changed).context("reading job 1 in q.redb"));
        assert_eq!(
            e.to_string(),
            "q.redb changed while it was read (a writer opened it): run the command again"
        );
        let other = read_again(anyhow!("job 1 not found in q.redb"));
        assert_eq!(other.to_string(), "job 1 not found in q.redb");
    }
}
