//! The job state machine: the states, the persisted record of a job, and every legal transition
//! as a plain function on that record. No I/O: the store reads a record, applies one of these
//! inside a write transaction, and writes the record and its index entries back.
//!
//! ```text
//!            enqueue            claim (attempts += 1)
//!   ─────────────────> Pending ───────────────────────> InProgress ── complete ──> Succeeded
//!                       ^  ^ ^                            │  │  │
//!                       │  │ └──────── snooze (attempt given back) ┘  │  │
//!                       │  └─ promote_due ── Failed+retry <── fail ───┘  │   (attempts < max)
//!                       │                       │                        │
//!                       └──── retry (manual) ── Failed  <── fail/discard ┘   (attempts == max)
//!                                               (terminal)
//! ```
//!
//! `cancel` takes a pending, in-progress or retry-scheduled job to terminal failure. `recover`
//! (an expired lease) is a failed attempt; `abandon` (a job whose process stopped, found at the
//! next writable open) takes it back to Pending with its attempt counted, or is a failed
//! attempt when its last attempt ended so too.
//! Fencing: every transition out of `InProgress` that a worker asks for names the lease token it
//! was given; a record in any other state, or under another token, refuses it.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::backoff::Backoff;
use crate::types::{JobState, duration_ms};

/// A finer split of the states, as counted in stats and as placed in the indexes: failed jobs
/// differ in whether a retry is scheduled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Phase {
    Pending = 0,
    InProgress = 1,
    Succeeded = 2,
    Retrying = 3,
    Dead = 4,
}

impl Phase {
    pub(crate) const ALL: [Phase; 5] = [
        Phase::Pending,
        Phase::InProgress,
        Phase::Succeeded,
        Phase::Retrying,
        Phase::Dead,
    ];

    pub(crate) fn code(self) -> u8 {
        self as u8
    }

    /// Whether a job in this phase holds its unique key.
    pub(crate) fn is_live(self) -> bool {
        matches!(self, Phase::Pending | Phase::InProgress | Phase::Retrying)
    }
}

/// The longest error or progress text kept, in bytes; longer text is cut at a char boundary.
pub(crate) const MAX_TEXT: usize = 4 * 1024;

/// Where a job's payload is kept. A small one travels inside the job's stored value, so that a
/// claim reads and writes one entry; a large one is written once to a table of its own, so that
/// transitions do not copy it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) enum Payload {
    /// In the payloads table, under the job's id.
    #[default]
    Apart,
    /// In the job's stored value, after the record.
    Inline(Vec<u8>),
}

/// The persisted state of one job, without its id (the key). The payload is not part of the
/// record's encoding: the store's codec frames it beside the record, or stores it apart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Record {
    pub queue: String,
    pub state: JobState,
    pub priority: i32,
    pub attempts: u32,
    pub max_attempts: u32,
    pub run_at: u64,
    pub next_attempt_at: Option<u64>,
    pub last_error: Option<String>,
    pub unique_key: Option<String>,
    pub concurrency_key: Option<String>,
    pub progress: Option<String>,
    /// The token of the latest claim; 0 before the first.
    pub lease_token: u64,
    pub lease_expires_at: Option<u64>,
    pub timeout_ms: Option<u64>,
    pub created_at: u64,
    pub updated_at: u64,
    pub finished_at: Option<u64>,
    pub manual_retries: u32,
    /// The backoff delay chosen after the last failed attempt, for decorrelated jitter.
    pub last_backoff_ms: Option<u64>,
    /// Where the payload is; not encoded with the record.
    #[serde(skip)]
    pub payload: Payload,
    /// The fields added in format 5; not in the record's own encoding (the codec writes them
    /// ahead of it, only when one differs from its default).
    #[serde(skip)]
    pub extra: Extra,
}

/// The fields of a record that format 5 added, for the sync semantics: ordered concurrency keys
/// and follow-ups of change-safe unique keys. All default for a job that uses neither.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Extra {
    /// The concurrency key is ordered: the jobs of the key start in id order, and the first
    /// holds the line (the busy entry) while it waits as well as while it runs.
    pub ordered: bool,
    /// A follow-up: pending, but it waits for the end of the run of this job (in progress,
    /// same queue and unique key), and is in no claim index until then.
    pub behind: Option<u64>,
    /// The payload came from an enqueue that asked for the latest payload to win: when this
    /// follow-up is folded back into the job it waits for, its payload replaces that job's.
    pub latest_wins: bool,
}

/// Why a transition was refused. The store turns it into an [`Error`](crate::Error) naming the
/// job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The record is not in progress under the caller's token.
    LeaseLost,
    /// The transition does not apply to the record's state.
    InvalidState(&'static str),
}

impl Record {
    pub(crate) fn phase(&self) -> Phase {
        match self.state {
            JobState::Pending => Phase::Pending,
            JobState::InProgress => Phase::InProgress,
            JobState::Succeeded => Phase::Succeeded,
            JobState::Failed if self.next_attempt_at.is_some() => Phase::Retrying,
            JobState::Failed => Phase::Dead,
        }
    }

    fn fenced(&self, token: u64) -> Result<(), Refusal> {
        if self.state == JobState::InProgress && self.lease_token == token {
            Ok(())
        } else {
            Err(Refusal::LeaseLost)
        }
    }

    fn leave_progress(&mut self, now: u64) {
        self.lease_expires_at = None;
        self.updated_at = now;
    }

    fn finish(&mut self, state: JobState, now: u64) {
        self.state = state;
        self.next_attempt_at = None;
        self.finished_at = Some(now);
        self.leave_progress(now);
    }
}

/// Pending -> InProgress under a fresh `token`; the attempt is counted here.
pub(crate) fn claim(rec: &mut Record, now: u64, lease_ttl: Duration, token: u64) {
    debug_assert_eq!(rec.state, JobState::Pending);
    rec.state = JobState::InProgress;
    rec.attempts = rec.attempts.saturating_add(1);
    rec.lease_token = token;
    rec.lease_expires_at = Some(now.saturating_add(duration_ms(lease_ttl)));
    rec.progress = None;
    rec.updated_at = now;
}

/// Extends the lease of an in-progress record to `now + lease_ttl`.
pub(crate) fn heartbeat(
    rec: &mut Record,
    token: u64,
    now: u64,
    lease_ttl: Duration,
) -> Result<(), Refusal> {
    rec.fenced(token)?;
    rec.lease_expires_at = Some(now.saturating_add(duration_ms(lease_ttl)));
    rec.updated_at = now;
    Ok(())
}

/// Records progress text of an in-progress record.
pub(crate) fn set_progress(
    rec: &mut Record,
    token: u64,
    now: u64,
    progress: &str,
) -> Result<(), Refusal> {
    rec.fenced(token)?;
    rec.progress = Some(truncate(progress));
    rec.updated_at = now;
    Ok(())
}

/// InProgress -> Succeeded.
pub(crate) fn complete(rec: &mut Record, token: u64, now: u64) -> Result<(), Refusal> {
    rec.fenced(token)?;
    rec.finish(JobState::Succeeded, now);
    Ok(())
}

/// InProgress -> Failed: retry scheduled with backoff, or terminal once the attempts are spent.
pub(crate) fn fail(
    rec: &mut Record,
    token: u64,
    now: u64,
    error: &str,
    backoff: &Backoff,
    seed: u64,
) -> Result<(), Refusal> {
    rec.fenced(token)?;
    fail_attempt(rec, now, error, backoff, seed);
    Ok(())
}

/// InProgress with an expired lease -> Failed, as `fail` with the error "lease expired". The
/// caller has found the lease expired; no token is needed, since no worker asks for this.
pub(crate) fn recover(rec: &mut Record, now: u64, backoff: &Backoff, seed: u64) {
    debug_assert_eq!(rec.state, JobState::InProgress);
    fail_attempt(rec, now, "lease expired", backoff, seed);
}

/// The error of a job whose process stopped while it ran, as [`abandon`] records it.
pub(crate) const PROCESS_STOPPED: &str = "the process running it stopped";

/// InProgress under a lease of an earlier open of the database, whose process is gone (a
/// writable open proves that no other process holds the file) -> Pending, due at once: its
/// run_at stays the time it was due when claimed, so it takes its place in the queue again
/// ahead of the jobs that came due after it. The attempt stays counted (it was counted at
/// claim); the error says the process stopped. A job
/// whose attempts are spent fails for good; one whose previous attempt ended this way too is
/// failed with its normal backoff instead, so that a job that kills its process does not
/// crash-loop it.
pub(crate) fn abandon(rec: &mut Record, now: u64, backoff: &Backoff, seed: u64) {
    debug_assert_eq!(rec.state, JobState::InProgress);
    if rec.last_error.as_deref() == Some(PROCESS_STOPPED) || rec.attempts >= rec.max_attempts {
        fail_attempt(rec, now, PROCESS_STOPPED, backoff, seed);
        return;
    }
    rec.last_error = Some(PROCESS_STOPPED.to_owned());
    rec.state = JobState::Pending;
    rec.leave_progress(now);
}

fn fail_attempt(rec: &mut Record, now: u64, error: &str, backoff: &Backoff, seed: u64) {
    rec.last_error = Some(truncate(error));
    if rec.attempts >= rec.max_attempts {
        rec.finish(JobState::Failed, now);
        return;
    }
    let previous = rec.last_backoff_ms.map(Duration::from_millis);
    let delay = duration_ms(backoff.delay(rec.attempts, previous, seed));
    rec.state = JobState::Failed;
    rec.next_attempt_at = Some(now.saturating_add(delay));
    rec.last_backoff_ms = Some(delay);
    rec.leave_progress(now);
}

/// InProgress -> Failed for good, whatever attempts remain.
pub(crate) fn discard(rec: &mut Record, token: u64, now: u64, error: &str) -> Result<(), Refusal> {
    rec.fenced(token)?;
    rec.last_error = Some(truncate(error));
    rec.finish(JobState::Failed, now);
    Ok(())
}

/// InProgress -> Pending at `run_at`, giving the attempt back: not ready is not a failure.
pub(crate) fn snooze(rec: &mut Record, token: u64, now: u64, run_at: u64) -> Result<(), Refusal> {
    rec.fenced(token)?;
    rec.state = JobState::Pending;
    rec.attempts = rec.attempts.saturating_sub(1);
    rec.run_at = run_at;
    rec.leave_progress(now);
    Ok(())
}

/// Failed with a retry due -> Pending, runnable from the time the retry was due.
pub(crate) fn promote(rec: &mut Record, now: u64) -> Result<(), Refusal> {
    let Some(due) = rec
        .next_attempt_at
        .filter(|_| rec.state == JobState::Failed)
    else {
        return Err(Refusal::InvalidState("promote"));
    };
    rec.state = JobState::Pending;
    rec.run_at = due;
    rec.next_attempt_at = None;
    rec.updated_at = now;
    Ok(())
}

/// Failed (scheduled or terminal) -> Pending now, with a fresh attempt chain.
pub(crate) fn retry(rec: &mut Record, now: u64) -> Result<(), Refusal> {
    if rec.state != JobState::Failed {
        return Err(Refusal::InvalidState("retry"));
    }
    rec.state = JobState::Pending;
    rec.attempts = 0;
    rec.manual_retries = rec.manual_retries.saturating_add(1);
    rec.run_at = now;
    rec.next_attempt_at = None;
    rec.finished_at = None;
    rec.last_backoff_ms = None;
    rec.updated_at = now;
    Ok(())
}

/// Pending, InProgress or Failed-with-retry -> Failed for good with the error "cancelled". A
/// worker holding the lease of a cancelled job loses it.
pub(crate) fn cancel(rec: &mut Record, now: u64) -> Result<(), Refusal> {
    if !rec.phase().is_live() {
        return Err(Refusal::InvalidState("cancel"));
    }
    rec.last_error = Some("cancelled".to_owned());
    // A cancelled follow-up waits for nothing any more.
    rec.extra.behind = None;
    rec.finish(JobState::Failed, now);
    Ok(())
}

/// A waiting record (pending or failed with a retry scheduled) takes in another enqueue of its
/// unique key: with `latest_wins` it marks its payload as the latest (the store writes the
/// bytes), and with `not_before` its next run moves out to at least that time (debounce).
pub(crate) fn coalesce(
    rec: &mut Record,
    now: u64,
    latest_wins: bool,
    not_before: Option<u64>,
) -> Result<(), Refusal> {
    let waits = match rec.phase() {
        Phase::Pending => &mut rec.run_at,
        Phase::Retrying => match rec.next_attempt_at.as_mut() {
            Some(next) => next,
            None => return Err(Refusal::InvalidState("coalesce")),
        },
        _ => return Err(Refusal::InvalidState("coalesce")),
    };
    if let Some(at) = not_before {
        *waits = (*waits).max(at);
    }
    if latest_wins {
        rec.extra.latest_wins = true;
    }
    rec.updated_at = now;
    Ok(())
}

/// A follow-up whose job's run ended for good: it runs as any pending job from now on.
pub(crate) fn release(rec: &mut Record, now: u64) -> Result<(), Refusal> {
    if rec.state != JobState::Pending || rec.extra.behind.is_none() {
        return Err(Refusal::InvalidState("release"));
    }
    rec.extra.behind = None;
    rec.updated_at = now;
    Ok(())
}

/// A job whose run went back to waiting takes in its follow-up `follow`, which is then deleted:
/// it waits at least until the follow-up would have run, and it covers every enqueue the
/// follow-up did. Returns whether the follow-up's payload replaces the job's (it came from an
/// enqueue that asked for the latest payload to win).
pub(crate) fn absorb(rec: &mut Record, follow: &Record, now: u64) -> Result<bool, Refusal> {
    coalesce(rec, now, false, Some(follow.run_at))?;
    Ok(follow.extra.latest_wins)
}

/// `text`, cut to at most [`MAX_TEXT`] bytes at a char boundary.
pub(crate) fn truncate(text: &str) -> String {
    if text.len() <= MAX_TEXT {
        return text.to_owned();
    }
    let mut end = MAX_TEXT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(30);

    fn pending() -> Record {
        Record {
            queue: "q".into(),
            state: JobState::Pending,
            priority: 0,
            attempts: 0,
            max_attempts: 3,
            run_at: 0,
            next_attempt_at: None,
            last_error: None,
            unique_key: None,
            concurrency_key: None,
            progress: None,
            lease_token: 0,
            lease_expires_at: None,
            timeout_ms: None,
            created_at: 0,
            updated_at: 0,
            finished_at: None,
            manual_retries: 0,
            last_backoff_ms: None,
            payload: Payload::Apart,
            extra: Extra::default(),
        }
    }

    fn claimed(token: u64) -> Record {
        let mut r = pending();
        claim(&mut r, 1_000, TTL, token);
        r
    }

    fn fixed() -> Backoff {
        Backoff::fixed(Duration::from_secs(10))
    }

    #[test]
    fn claim_counts_the_attempt_and_sets_the_lease() {
        let r = claimed(7);
        assert_eq!(r.state, JobState::InProgress);
        assert_eq!(r.attempts, 1);
        assert_eq!(r.lease_token, 7);
        assert_eq!(r.lease_expires_at, Some(31_000));
    }

    #[test]
    fn stale_token_is_refused_by_every_lease_transition_and_changes_nothing() {
        let r = claimed(7);
        let mut c = r.clone();
        assert_eq!(complete(&mut c, 6, 2_000), Err(Refusal::LeaseLost));
        assert_eq!(
            fail(&mut c, 6, 2_000, "x", &fixed(), 0),
            Err(Refusal::LeaseLost)
        );
        assert_eq!(discard(&mut c, 6, 2_000, "x"), Err(Refusal::LeaseLost));
        assert_eq!(snooze(&mut c, 6, 2_000, 9_000), Err(Refusal::LeaseLost));
        assert_eq!(heartbeat(&mut c, 6, 2_000, TTL), Err(Refusal::LeaseLost));
        assert_eq!(set_progress(&mut c, 6, 2_000, "p"), Err(Refusal::LeaseLost));
        assert_eq!(c, r);
    }

    #[test]
    fn a_settled_record_refuses_its_own_token_again() {
        let mut r = claimed(7);
        complete(&mut r, 7, 2_000).unwrap();
        assert_eq!(complete(&mut r, 7, 2_000), Err(Refusal::LeaseLost));
        assert_eq!(r.state, JobState::Succeeded);
        assert_eq!(r.finished_at, Some(2_000));
    }

    #[test]
    fn fail_schedules_a_retry_until_attempts_are_spent() {
        let mut r = claimed(1);
        fail(&mut r, 1, 2_000, "boom", &fixed(), 0).unwrap();
        assert_eq!(r.phase(), Phase::Retrying);
        assert_eq!(r.next_attempt_at, Some(12_000));
        promote(&mut r, 12_000).unwrap();
        assert_eq!((r.state, r.run_at), (JobState::Pending, 12_000));
        claim(&mut r, 12_000, TTL, 2);
        fail(&mut r, 2, 13_000, "boom", &fixed(), 0).unwrap();
        promote(&mut r, 23_000).unwrap();
        claim(&mut r, 23_000, TTL, 3);
        fail(&mut r, 3, 24_000, "last", &fixed(), 0).unwrap();
        assert_eq!(r.phase(), Phase::Dead);
        assert_eq!(r.attempts, 3);
        assert_eq!(r.last_error.as_deref(), Some("last"));
        assert_eq!(r.finished_at, Some(24_000));
    }

    #[test]
    fn snooze_gives_the_attempt_back() {
        let mut r = claimed(1);
        snooze(&mut r, 1, 2_000, 60_000).unwrap();
        assert_eq!(
            (r.state, r.attempts, r.run_at),
            (JobState::Pending, 0, 60_000)
        );
        assert_eq!(r.lease_expires_at, None);
    }

    #[test]
    fn discard_is_terminal_with_attempts_left() {
        let mut r = claimed(1);
        discard(&mut r, 1, 2_000, "bad payload").unwrap();
        assert_eq!(r.phase(), Phase::Dead);
    }

    #[test]
    fn recover_counts_as_a_failed_attempt() {
        let mut r = claimed(1);
        recover(&mut r, 40_000, &fixed(), 0);
        assert_eq!(r.phase(), Phase::Retrying);
        assert_eq!(r.last_error.as_deref(), Some("lease expired"));
    }

    #[test]
    fn abandon_makes_the_job_due_now_keeping_its_attempt_then_backs_off_the_second_time() {
        let mut r = claimed(1);
        abandon(&mut r, 2_000, &fixed(), 0);
        assert_eq!((r.phase(), r.attempts, r.run_at), (Phase::Pending, 1, 0));
        assert_eq!(r.last_error.as_deref(), Some(PROCESS_STOPPED));
        assert_eq!(r.lease_expires_at, None);
        // Its next attempt stops its process too: no crash loop, the normal backoff.
        claim(&mut r, 3_000, TTL, 2);
        abandon(&mut r, 4_000, &fixed(), 0);
        assert_eq!(r.phase(), Phase::Retrying);
        assert_eq!(r.next_attempt_at, Some(14_000));
        // Spent attempts fail for good, the first time too.
        let mut spent = claimed(3);
        spent.attempts = spent.max_attempts;
        abandon(&mut spent, 2_000, &fixed(), 0);
        assert_eq!(spent.phase(), Phase::Dead);
    }

    #[test]
    fn retry_starts_a_fresh_chain_from_any_failure() {
        let mut r = claimed(1);
        discard(&mut r, 1, 2_000, "x").unwrap();
        retry(&mut r, 3_000).unwrap();
        assert_eq!(
            (r.state, r.attempts, r.manual_retries),
            (JobState::Pending, 0, 1)
        );
        assert_eq!(r.finished_at, None);
        assert_eq!(retry(&mut r, 3_000), Err(Refusal::InvalidState("retry")));
    }

    #[test]
    fn cancel_applies_to_live_jobs_only() {
        let mut p = pending();
        cancel(&mut p, 5).unwrap();
        assert_eq!(p.phase(), Phase::Dead);
        assert_eq!(cancel(&mut p, 6), Err(Refusal::InvalidState("cancel")));
        let mut c = claimed(4);
        cancel(&mut c, 5).unwrap();
        assert_eq!(complete(&mut c, 4, 6), Err(Refusal::LeaseLost));
    }

    #[test]
    fn promote_refuses_anything_but_a_scheduled_retry() {
        let mut r = pending();
        assert!(promote(&mut r, 0).is_err());
        let mut d = claimed(1);
        discard(&mut d, 1, 0, "x").unwrap();
        assert!(promote(&mut d, 0).is_err());
    }

    #[test]
    fn coalesce_debounces_a_waiting_record_and_refuses_a_running_one() {
        let mut p = pending();
        p.run_at = 5_000;
        coalesce(&mut p, 6_000, false, Some(4_000)).unwrap();
        assert_eq!(p.run_at, 5_000, "debounce never pulls a run in");
        coalesce(&mut p, 6_000, true, Some(9_000)).unwrap();
        assert_eq!((p.run_at, p.extra.latest_wins), (9_000, true));
        let mut r = claimed(1);
        fail(&mut r, 1, 2_000, "503", &fixed(), 0).unwrap();
        coalesce(&mut r, 3_000, false, Some(20_000)).unwrap();
        assert_eq!(r.next_attempt_at, Some(20_000));
        let mut c = claimed(2);
        assert_eq!(
            coalesce(&mut c, 3_000, false, None),
            Err(Refusal::InvalidState("coalesce"))
        );
    }

    #[test]
    fn absorb_waits_for_the_later_of_the_two_and_release_only_frees_a_follow_up() {
        let mut r = claimed(1);
        snooze(&mut r, 1, 2_000, 3_000).unwrap();
        let mut f = pending();
        f.run_at = 8_000;
        f.extra.behind = Some(1);
        f.extra.latest_wins = true;
        assert_eq!(absorb(&mut r, &f, 2_000), Ok(true));
        assert_eq!(r.run_at, 8_000);
        assert_eq!(
            release(&mut r, 2_000),
            Err(Refusal::InvalidState("release"))
        );
        release(&mut f, 2_000).unwrap();
        assert_eq!(f.extra.behind, None);
    }

    #[test]
    fn long_text_is_cut_at_a_char_boundary() {
        let s = "é".repeat(MAX_TEXT);
        let t = truncate(&s);
        assert!(t.len() <= MAX_TEXT && s.starts_with(&t));
    }
}
