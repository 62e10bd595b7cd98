//! The commands of the `quern` utility: each opens the database and runs one command.
//!
//! Read commands open the database read-only, so they work while a worker writes it. Write
//! commands (retry, cancel, prune) need the database to themselves. Errors print one line and
//! exit with code 2; `check` exits with 1 when it finds problems.

use std::io::{self, Write};
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use clap::Parser;
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
    let run = run(&mut out, args.command);
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
            match format {
                Format::Json | Format::Jsonl => render::stats_json(out, &stats, format)?,
                Format::Table => render::stats_table(out, &stats)?,
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
            render::dump(out, &store, &filter, format)?;
            OK
        }
        Command::Show { db, id, format } => {
            let store = open_read(&db)?;
            let job = store
                .get(JobId(id))?
                .ok_or_else(|| anyhow!("job {id} not found in {}", db.display()))?;
            match format {
                Format::Json | Format::Jsonl => render::job_json_line(out, &job)?,
                Format::Table => render::job_text(out, &job, store.now())?,
            }
            OK
        }
        Command::Retry {
            db,
            ids,
            queue,
            state,
        } => {
            let store = open_write(&db)?;
            let ids = select(&store, ids, queue, state)?;
            for id in &ids {
                store
                    .retry(*id)
                    .with_context(|| format!("retry of job {id} in {}", db.display()))?;
            }
            writeln!(out, "retried {} job(s): now pending", ids.len())?;
            OK
        }
        Command::Cancel { db, ids } => {
            let store = open_write(&db)?;
            for id in &ids {
                store
                    .cancel(JobId(*id))
                    .with_context(|| format!("cancel of job {id} in {}", db.display()))?;
            }
            writeln!(out, "cancelled {} job(s)", ids.len())?;
            OK
        }
        Command::Prune { db, older_than } => {
            let store = open_write(&db)?;
            let n = store.prune(older_than.0)?;
            writeln!(
                out,
                "pruned {n} finished job(s) older than {}",
                time::duration(older_than.0)
            )?;
            OK
        }
        Command::Check { db } => check(out, &db)?,
    })
}

/// The jobs a retry names: the ids given, or every job of a queue in a state.
fn select(
    store: &Store,
    ids: Vec<u64>,
    queue: Option<String>,
    state: Option<JobState>,
) -> Result<Vec<JobId>> {
    if !ids.is_empty() {
        return Ok(ids.into_iter().map(JobId).collect());
    }
    let (Some(queue), Some(state)) = (queue, state) else {
        bail!("name job ids, or both --queue and --state");
    };
    Ok(store
        .list(&Filter::default().queue(queue).state(state))?
        .into_iter()
        .map(|j| j.id)
        .collect())
}

fn missing(db: &Path) -> anyhow::Error {
    anyhow!("{}: no such file", db.display())
}

fn open_read(db: &Path) -> Result<Store> {
    if !db.exists() {
        return Err(missing(db));
    }
    Ok(Store::open_read_only(db)?)
}

fn open_write(db: &Path) -> Result<Store> {
    if !db.exists() {
        return Err(missing(db));
    }
    match Store::open(db) {
        Err(Error::AlreadyOpen { path }) => bail!(
            "{} is open for writing by another process: stop it to retry, cancel or prune \
             (stats, dump, show and check work while it runs)",
            path.display()
        ),
        other => Ok(other?),
    }
}

/// redb's own integrity check when no writer holds the file, then quern's invariants.
fn check(out: &mut impl Write, db: &Path) -> Result<i32> {
    if !db.exists() {
        return Err(missing(db));
    }
    // The check runs inside the open: a plain open trusts the file, and may panic on the
    // damage the check is there to report.
    let integrity = redb::Builder::new()
        .set_concurrency_mode(redb::ConcurrencyMode::SingleWriter)
        .set_check_integrity_on_open(true)
        .open(db);
    match integrity {
        Ok(raw) => {
            drop(raw);
            writeln!(out, "storage: ok")?;
        }
        Err(e @ redb::DatabaseError::Storage(redb::StorageError::Corrupted(_))) => {
            writeln!(out, "storage: corrupt: {}", escape(&e.to_string()))?;
            return Ok(PROBLEMS);
        }
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
            writeln!(out, "storage: skipped (a writer holds the database)")?;
        }
        Err(e) => {
            writeln!(out, "storage: cannot open: {}", escape(&e.to_string()))?;
            return Ok(PROBLEMS);
        }
    }
    let store = open_read(db)?;
    let problems = store.check()?;
    if problems.is_empty() {
        writeln!(out, "invariants: ok")?;
        return Ok(OK);
    }
    writeln!(out, "invariants: {} problem(s)", problems.len())?;
    for p in &problems {
        writeln!(out, "  {}", escape(&p.to_string()))?;
    }
    Ok(PROBLEMS)
}
