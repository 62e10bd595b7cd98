//! Command-line parsing.

use std::num::{IntErrorKind, ParseIntError};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use quern::JobState;

/// Inspect and operate a quern job database, also while a worker writes it.
///
/// retry, cancel, prune, pause, resume and unpark change the file directly when no process
/// holds it, and otherwise ask the process that holds it, through its control channel (the
/// socket `<db>.control`).
#[derive(Debug, Parser)]
#[command(name = "quern", version, about, long_about = None)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Per queue: counts by state, the oldest due pending job, the next retry, lease expiry.
    Stats {
        /// The database file.
        db: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Every job with all its fields; a payload as its exact text when it is UTF-8, hex otherwise.
    Dump {
        /// The database file.
        db: PathBuf,
        /// Only this queue.
        #[arg(long)]
        queue: Option<String>,
        /// Only this state: pending, in_progress, succeeded or failed.
        #[arg(long, value_parser = parse_state)]
        state: Option<JobState>,
        /// At most this many jobs.
        #[arg(long)]
        limit: Option<usize>,
        /// Output format; jsonl streams one job per line.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// One job, every field, its last error and progress.
    Show {
        /// The database file.
        db: PathBuf,
        /// The job id.
        id: u64,
        /// Output format (table means readable text).
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Retry failed jobs by hand: pending now, a fresh attempt chain.
    Retry {
        /// The database file.
        db: PathBuf,
        /// Job ids; or select with --queue and --state.
        #[arg(required_unless_present = "queue")]
        ids: Vec<u64>,
        /// Retry every job of this queue in --state.
        #[arg(long, requires = "state", conflicts_with = "ids")]
        queue: Option<String>,
        /// With --queue: the state to retry; only failed jobs can be retried.
        #[arg(long, requires = "queue", value_parser = parse_retry_state)]
        state: Option<JobState>,
    },
    /// Cancel pending, running or retrying jobs: they fail for good with "cancelled".
    Cancel {
        /// The database file.
        db: PathBuf,
        /// Job ids.
        #[arg(required = true)]
        ids: Vec<u64>,
    },
    /// Delete succeeded and failed-for-good jobs that finished longer ago than a duration.
    Prune {
        /// The database file.
        db: PathBuf,
        /// An age such as 7d, 12h, 30m, 45s or 500ms.
        #[arg(long, value_parser = parse_duration)]
        older_than: Age,
    },
    /// Pause a queue: none of its jobs start until it is resumed; running jobs finish, enqueues
    /// are accepted.
    Pause {
        /// The database file.
        db: PathBuf,
        /// The queue.
        queue: String,
    },
    /// Resume a paused queue.
    Resume {
        /// The database file.
        db: PathBuf,
        /// The queue.
        queue: String,
    },
    /// End the park of a queue, or of one of its concurrency keys, now.
    Unpark {
        /// The database file.
        db: PathBuf,
        /// The queue.
        queue: String,
        /// Only this concurrency key of the queue.
        #[arg(long)]
        key: Option<String>,
    },
    /// Verify the storage and quern's invariants: exit code 1 and a list when anything is wrong,
    /// 2 when a check could not run. redb's integrity check runs in memory: the file is never
    /// written, and a worker may start meanwhile.
    Check {
        /// The database file.
        db: PathBuf,
    },
    /// Upgrade a database of an older format to this build's. No other command changes a
    /// file's format; a worker of this build upgrades the file when it opens it.
    Upgrade {
        /// The database file.
        db: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
    Jsonl,
}

/// A parsed `--older-than`.
#[derive(Debug, Clone, Copy)]
pub struct Age(pub Duration);

fn parse_state(s: &str) -> Result<JobState, String> {
    s.parse()
}

/// `retry --state`: a state whose jobs a retry takes, which is only `failed`.
fn parse_retry_state(s: &str) -> Result<JobState, String> {
    match s.parse()? {
        JobState::Failed => Ok(JobState::Failed),
        other => Err(format!(
            "{other} jobs cannot be retried: only failed jobs can (use --state failed)"
        )),
    }
}

/// `7d`, `12h`, `30m`, `45s`, `500ms`.
pub fn parse_duration(s: &str) -> Result<Age, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{s:?} has no unit (use ms, s, m, h or d)"))?;
    let (number, unit) = s.split_at(split);
    if number.is_empty() {
        return Err(format!("{s:?} does not start with a whole number"));
    }
    let ms_per = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {s:?} (use ms, s, m, h or d)"
            ));
        }
    };
    // Only digits remain: the one way to fail is a number beyond u64.
    let n: u64 = number.parse().map_err(|e: ParseIntError| match e.kind() {
        IntErrorKind::PosOverflow => too_large(s),
        _ => format!("{s:?} does not start with a whole number"),
    })?;
    n.checked_mul(ms_per)
        .map(|ms| Age(Duration::from_millis(ms)))
        .ok_or_else(|| too_large(s))
}

fn too_large(s: &str) -> String {
    format!("{s:?} is too large: an age must be under 584 million years")
}
