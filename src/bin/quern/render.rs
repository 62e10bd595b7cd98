//! Rendering: every renderer writes to any `io::Write`, so tests capture output.

use std::io::{self, Write};

use quern::{Filter, Job, QueueControl, Stats, Store, Timestamp};
use serde_json::{Value, json};

use crate::args::Format;
use crate::escape::{escape, escape_cut};
use crate::time;

pub fn stats_table(
    out: &mut impl Write,
    stats: &Stats,
    controls: &[QueueControl],
) -> io::Result<()> {
    if stats.queues.is_empty() {
        writeln!(out, "no jobs")?;
        for c in controls {
            control_line(out, c, stats.at)?;
        }
        return Ok(());
    }
    writeln!(
        out,
        "{:<20} {:>9} {:>9} {:>9} {:>9} {:>9}  {:<16} {:<16}",
        "QUEUE",
        "PENDING",
        "RUNNING",
        "RETRYING",
        "FAILED",
        "SUCCEEDED",
        "OLDEST DUE",
        "NEXT RETRY"
    )?;
    for q in &stats.queues {
        let oldest = q
            .oldest_due_pending
            .map_or("-".into(), |t| time::relative(t, stats.at));
        let retry = q
            .next_retry_at
            .map_or("-".into(), |t| time::relative(t, stats.at));
        writeln!(
            out,
            "{:<20} {:>9} {:>9} {:>9} {:>9} {:>9}  {:<16} {:<16}",
            escape(&q.queue),
            q.pending,
            q.in_progress,
            q.retrying,
            q.failed,
            q.succeeded,
            oldest,
            retry
        )?;
    }
    if let Some(t) = stats.next_lease_expiry {
        writeln!(out, "next lease expiry: {}", time::relative(t, stats.at))?;
    }
    for c in controls {
        control_line(out, c, stats.at)?;
    }
    Ok(())
}

/// One line on what holds a queue or key back: paused, parked (until when, why), rate limit.
pub fn control_line(out: &mut impl Write, c: &QueueControl, now: Timestamp) -> io::Result<()> {
    let scope = match &c.key {
        Some(k) => format!("queue {} key {}", escape(&c.queue), escape(k)),
        None => format!("queue {}", escape(&c.queue)),
    };
    let mut parts = Vec::new();
    if c.paused {
        parts.push("paused".to_owned());
    }
    if let Some(t) = c.parked_until {
        let why = c
            .reason
            .as_deref()
            .map_or(String::new(), |r| format!(" ({})", escape(r)));
        parts.push(format!("parked until {}{why}", time::relative(t, now)));
    }
    if let Some(l) = c.rate_limit {
        let used = c.window.map_or(String::new(), |(n, closes)| {
            format!(
                ", {n} started, window closes {}",
                time::relative(closes, now)
            )
        });
        parts.push(format!("at most {} per {:?}{used}", l.starts(), l.period()));
    }
    if let Some(n) = c.max_running {
        parts.push(format!("{n} of its jobs at once"));
    }
    writeln!(out, "{scope}: {}", parts.join("; "))
}

/// One object: indented for `json`, on one line for `jsonl`. `closed_cleanly` is
/// [`Store::closed_cleanly`].
pub fn stats_json(
    out: &mut impl Write,
    stats: &Stats,
    controls: &[QueueControl],
    closed_cleanly: bool,
    format: Format,
) -> io::Result<()> {
    let queues: Vec<Value> = stats
        .queues
        .iter()
        .map(|q| {
            json!({
                "queue": q.queue,
                "pending": q.pending,
                "in_progress": q.in_progress,
                "retrying": q.retrying,
                "failed": q.failed,
                "succeeded": q.succeeded,
                "oldest_due_pending": q.oldest_due_pending.map(|t| t.0),
                "next_retry_at": q.next_retry_at.map(|t| t.0),
                "next_scheduled_at": q.next_scheduled_at.map(|t| t.0),
            })
        })
        .collect();
    let controls: Vec<Value> = controls
        .iter()
        .map(|c| {
            json!({
                "queue": c.queue,
                "key": c.key,
                "paused": c.paused,
                "parked_until": c.parked_until.map(|t| t.0),
                "reason": c.reason,
                "rate_limit": c.rate_limit.map(|l| json!({
                    "starts": l.starts(),
                    "period_ms": l.period().as_millis() as u64,
                })),
                "window": c.window.map(|(n, closes)| json!({
                    "started": n,
                    "closes_at": closes.0,
                })),
                "max_running": c.max_running,
            })
        })
        .collect();
    let v = json!({
        "at": stats.at.0,
        "next_lease_expiry": stats.next_lease_expiry.map(|t| t.0),
        "queues": queues,
        "controls": controls,
        // false: the file's writer stopped without closing it; jobs read as it left them.
        "closed_cleanly": closed_cleanly,
    });
    if format == Format::Jsonl {
        serde_json::to_writer(&mut *out, &v)?;
    } else {
        serde_json::to_writer_pretty(&mut *out, &v)?;
    }
    writeln!(out)
}

/// The payload's exact bytes as text: the text itself when it is UTF-8 (`utf8`), hex
/// otherwise (`hex`). Never parsed: a JSON payload keeps its key order, duplicate keys and
/// number spelling.
fn payload(bytes: &[u8]) -> (&'static str, String) {
    match std::str::from_utf8(bytes) {
        Ok(s) => ("utf8", s.to_owned()),
        Err(_) => ("hex", hex(bytes)),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn ts(t: Option<Timestamp>) -> Value {
    t.map_or(Value::Null, |t| json!(t.0))
}

pub fn job_value(job: &Job) -> Value {
    let (encoding, payload) = payload(&job.payload);
    json!({
        "id": job.id.0,
        "queue": job.queue,
        "state": job.state.as_str(),
        "priority": job.priority,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "run_at": job.run_at.0,
        "next_attempt_at": ts(job.next_attempt_at),
        "last_error": job.last_error,
        "unique_key": job.unique_key,
        "concurrency_key": job.concurrency_key,
        "progress": job.progress,
        "lease_expires_at": ts(job.lease_expires_at),
        "timeout_ms": job.timeout.map(|d| d.as_millis()),
        "created_at": job.created_at.0,
        "updated_at": job.updated_at.0,
        "finished_at": ts(job.finished_at),
        "manual_retries": job.manual_retries,
        "payload_encoding": encoding,
        "payload": payload,
    })
}

pub fn job_json_line(out: &mut impl Write, job: &Job) -> io::Result<()> {
    serde_json::to_writer(&mut *out, &job_value(job))?;
    writeln!(out)
}

/// One job for people. Every text that came from users (payload, error, progress, keys, queue)
/// is escaped: it cannot move the cursor, recolour or rewrite the terminal.
pub fn job_text(out: &mut impl Write, job: &Job, now: Timestamp) -> io::Result<()> {
    let when = |t: Option<Timestamp>| {
        t.map_or("-".to_owned(), |t| {
            format!("{} ({})", time::utc(t), time::relative(t, now))
        })
    };
    let text = |t: &Option<String>| t.as_deref().map_or("-".to_owned(), escape);
    let (encoding, payload) = payload(&job.payload);
    writeln!(
        out,
        "job {}  queue {}  {}",
        job.id,
        escape(&job.queue),
        job.state
    )?;
    writeln!(
        out,
        "  attempts       {} of {}",
        job.attempts, job.max_attempts
    )?;
    writeln!(out, "  priority       {}", job.priority)?;
    writeln!(out, "  run at         {}", when(Some(job.run_at)))?;
    writeln!(out, "  next attempt   {}", when(job.next_attempt_at))?;
    writeln!(out, "  lease expires  {}", when(job.lease_expires_at))?;
    writeln!(out, "  created        {}", when(Some(job.created_at)))?;
    writeln!(out, "  updated        {}", when(Some(job.updated_at)))?;
    writeln!(out, "  finished       {}", when(job.finished_at))?;
    writeln!(out, "  unique key     {}", text(&job.unique_key))?;
    writeln!(out, "  concurrency    {}", text(&job.concurrency_key))?;
    writeln!(out, "  manual retries {}", job.manual_retries)?;
    writeln!(out, "  progress       {}", text(&job.progress))?;
    writeln!(out, "  last error     {}", text(&job.last_error))?;
    writeln!(
        out,
        "  payload ({encoding}, {} bytes) {}",
        job.payload.len(),
        escape(&payload)
    )
}

/// Streams the jobs the filter admits; nothing is held in memory but the current job.
///
/// A JSON array is closed even when reading fails midway, so that stdout always holds complete
/// JSON; the error is returned after it, and the exit code says the list is incomplete. Table
/// and JSONL rows are written whole, one at a time.
pub fn dump(
    out: &mut impl Write,
    store: &Store,
    filter: &Filter,
    format: Format,
) -> anyhow::Result<()> {
    let mut failed: Option<io::Error> = None;
    let mut first = true;
    if format == Format::Table {
        writeln!(
            out,
            "{:>8} {:<14} {:<12} {:>8} {:>4} {:<24} PAYLOAD",
            "ID", "QUEUE", "STATE", "ATTEMPTS", "PRIO", "RUN AT"
        )?;
    } else if format == Format::Json {
        write!(out, "[")?;
    }
    let scanned = store.for_each(filter, |job| {
        let written = match format {
            Format::Jsonl => job_json_line(out, &job),
            Format::Json => {
                let sep = if first { "\n" } else { ",\n" };
                write!(out, "{sep}").and_then(|()| {
                    serde_json::to_writer(&mut *out, &job_value(&job)).map_err(io::Error::from)
                })
            }
            Format::Table => {
                let (_, payload) = payload(&job.payload);
                writeln!(
                    out,
                    "{:>8} {:<14} {:<12} {:>8} {:>4} {:<24} {}",
                    job.id.0,
                    escape(&job.queue),
                    job.state.as_str(),
                    format!("{}/{}", job.attempts, job.max_attempts),
                    job.priority,
                    time::utc(job.run_at),
                    escape_cut(&payload, 40)
                )
            }
        };
        first = false;
        match written {
            Ok(()) => true,
            Err(e) => {
                failed = Some(e);
                false
            }
        }
    });
    // A failed write (a closed pipe) leaves nothing to close.
    let closed = if format == Format::Json && failed.is_none() {
        writeln!(out, "{}]", if first { "" } else { "\n" })
    } else {
        Ok(())
    };
    if let Some(e) = failed {
        return Err(e.into());
    }
    scanned?;
    closed?;
    Ok(())
}
