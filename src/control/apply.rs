//! What the server does with a request: checks it whole, then applies it through the store's
//! own API, and says what was done.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use super::{Reply, Request};
use crate::error::Error;
use crate::job::Job;
use crate::store::{Filter, Store};
use crate::types::{JobId, JobState};

/// The most refusals one reply names; the rest are counted.
const REFUSALS_NAMED: usize = 10;

/// Applies `request` to `store`.
pub(crate) fn apply(store: &Store, request: Request) -> Reply {
    let db = store.path().display().to_string();
    let done = |r: crate::Result<String>| match r {
        Ok(message) => Reply::Done(message),
        Err(e) => refused_or_failed(&db, &e),
    };
    match request {
        Request::Retry { jobs } => change(store, &db, Change::Retry, Ok(once_each(jobs))),
        Request::RetryFailed { queue } => {
            // Only the ids are kept: a queue's failed jobs may be many, and large.
            let mut ids = Vec::new();
            let listed = store.for_each(
                &Filter::default().queue(queue).state(JobState::Failed),
                |job| {
                    ids.push(job.id);
                    true
                },
            );
            change(store, &db, Change::Retry, listed.map(|()| ids))
        }
        Request::Cancel { jobs } => change(store, &db, Change::Cancel, Ok(once_each(jobs))),
        Request::Prune { older_than } => done(
            store
                .prune(older_than)
                .map(|n| format!("pruned {n} finished job(s) older than {}", age(older_than))),
        ),
        Request::Pause { queue } => done(store.pause(&queue).map(|()| {
            format!("paused queue {queue:?}: none of its jobs start until it is resumed")
        })),
        Request::Resume { queue } => done(
            store
                .resume(&queue)
                .map(|()| format!("resumed queue {queue:?}")),
        ),
        Request::Unpark { queue, key } => {
            done(store.unpark(&queue, key.as_deref()).map(|()| match key {
                Some(key) => format!("unparked key {key:?} of queue {queue:?}"),
                None => format!("unparked queue {queue:?}"),
            }))
        }
    }
}

/// A refusal for what the caller asked wrong (nothing was changed), a failure otherwise.
fn refused_or_failed(db: &str, e: &Error) -> Reply {
    let message = format!("{db}: {e}");
    match e {
        Error::InvalidInput { .. }
        | Error::NotFound { .. }
        | Error::InvalidState { .. }
        | Error::UniqueConflict { .. } => Reply::Refused(message),
        _ => Reply::Failed(message),
    }
}

/// The ids, each once, in the order given.
fn once_each(jobs: Vec<JobId>) -> Vec<JobId> {
    let mut seen = HashSet::new();
    jobs.into_iter().filter(|id| seen.insert(*id)).collect()
}

/// A change an operator makes to jobs by id: the rules and words the control channel and the
/// `quern` utility share (not part of the API).
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// A manual retry of a failed job.
    Retry,
    /// A cancel of a live job.
    Cancel,
}

impl Change {
    /// The change as a verb: "retry".
    pub fn verb(self) -> &'static str {
        match self {
            Change::Retry => "retry",
            Change::Cancel => "cancel",
        }
    }

    /// The change done: "retried".
    pub fn done(self) -> &'static str {
        match self {
            Change::Retry => "retried",
            Change::Cancel => "cancelled",
        }
    }

    /// Why the change does not apply to `job`, if it does not.
    pub fn refusal(self, job: &Job) -> Option<String> {
        let (applies, only) = match self {
            Change::Retry => (
                job.state == JobState::Failed,
                "only failed jobs can be retried",
            ),
            Change::Cancel => (
                !job.is_finished(),
                "only pending, running or retrying jobs can be cancelled",
            ),
        };
        (!applies).then(|| format!("job {} is {} ({only})", job.id, state_of(job)))
    }

    /// Every reason the change does not apply to a job of `ids`: not found, in a state the
    /// change does not take, or (for a retry) a unique key another live job holds, or another
    /// job of the same retry would take first. `by` names the retry in that last case
    /// ("request", "command").
    ///
    /// # Errors
    /// Storage errors while reading the jobs.
    pub fn refusals(self, store: &Store, ids: &[JobId], by: &str) -> crate::Result<Vec<String>> {
        let mut refusals = Vec::new();
        let mut keyed = Vec::new();
        for &id in ids {
            match store.get(id)? {
                None => refusals.push(format!("job {id} not found")),
                Some(job) => match self.refusal(&job) {
                    Some(why) => refusals.push(why),
                    None => {
                        if self == Change::Retry
                            && let Some(key) = job.unique_key
                        {
                            keyed.push((job.queue, key, id));
                        }
                    }
                },
            }
        }
        if !keyed.is_empty() {
            refusals.extend(unique_conflicts(store, &keyed, by)?);
        }
        Ok(refusals)
    }

    /// Makes the change to job `id`.
    ///
    /// # Errors
    /// Those of [`Store::retry`] and [`Store::cancel`].
    pub fn apply(self, store: &Store, id: JobId) -> crate::Result<()> {
        match self {
            Change::Retry => store.retry(id),
            Change::Cancel => store.cancel(id),
        }
    }
}

/// A job's state as an operator reads it.
fn state_of(job: &Job) -> &'static str {
    match job.state {
        JobState::Pending => "pending",
        JobState::InProgress => "running",
        JobState::Succeeded => "succeeded",
        JobState::Failed if job.next_attempt_at.is_some() => "failed with a retry scheduled",
        JobState::Failed => "failed for good",
    }
}

/// Retries or cancels the jobs of `ids`: each is read and checked first, and one the change
/// does not apply to refuses the whole request, naming every such job. Then each is changed in
/// a commit of its own, not all in one: a job the worker changes between the check and its
/// change (a retry scheduled that comes due) stops the change there, and the reply says which
/// jobs were changed and which were left.
fn change(store: &Store, db: &str, change: Change, ids: crate::Result<Vec<JobId>>) -> Reply {
    let ids = match ids {
        Ok(ids) => ids,
        Err(e) => return refused_or_failed(db, &e),
    };
    match change.refusals(store, &ids, "request") {
        Ok(refusals) if refusals.is_empty() => {}
        Ok(mut refusals) => {
            let more = refusals.len().saturating_sub(REFUSALS_NAMED);
            refusals.truncate(REFUSALS_NAMED);
            let mut why = refusals.join("; ");
            if more > 0 {
                why.push_str(&format!("; and {more} more"));
            }
            return Reply::Refused(format!("nothing {} in {db}: {why}", change.done()));
        }
        Err(e) => return Reply::Failed(format!("nothing {} in {db}: {e}", change.done())),
    }
    if ids.is_empty() {
        return Reply::Done(format!("{} 0 job(s): none selected", change.done()));
    }
    for (n, &id) in ids.iter().enumerate() {
        if let Err(e) = change.apply(store, id) {
            let (done, left) = (&ids[..n], &ids[n + 1..]);
            return Reply::Failed(format!(
                "{} of job {id} in {db} failed: {e}; {} before it: {}; left as they were: {}",
                change.verb(),
                change.done(),
                list(done),
                list(left),
            ));
        }
    }
    Reply::Done(match change {
        Change::Retry => format!("retried {} job(s), now pending: {}", ids.len(), list(&ids)),
        Change::Cancel => format!("cancelled {} job(s): {}", ids.len(), list(&ids)),
    })
}

/// `1, 2, 3`, or `none`.
/// Job ids as messages list them: `1, 2, 5`, or `none`.
#[doc(hidden)]
pub fn list(ids: &[JobId]) -> String {
    if ids.is_empty() {
        return "none".to_owned();
    }
    ids.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The jobs to retry (queue, unique key, id) whose key a live job other than themselves holds,
/// or another job of the same retry would take first.
fn unique_conflicts(
    store: &Store,
    keyed: &[(String, String, JobId)],
    by: &str,
) -> crate::Result<Vec<String>> {
    let wanted: HashSet<(&str, &str)> = keyed
        .iter()
        .map(|(q, k, _)| (q.as_str(), k.as_str()))
        .collect();
    let queues: BTreeSet<&str> = keyed.iter().map(|(q, _, _)| q.as_str()).collect();
    let mut holders: HashMap<(String, String), JobId> = HashMap::new();
    for queue in queues {
        store.for_each(&Filter::default().queue(queue), |job| {
            if !job.is_finished()
                && let Some(key) = &job.unique_key
                && wanted.contains(&(queue, key.as_str()))
            {
                holders.insert((queue.to_owned(), key.clone()), job.id);
            }
            true
        })?;
    }
    let retried: HashSet<JobId> = keyed.iter().map(|(_, _, id)| *id).collect();
    let mut conflicts = Vec::new();
    for (queue, key, id) in keyed {
        match holders.get(&(queue.clone(), key.clone())) {
            Some(holder) if holder != id => conflicts.push(format!(
                "job {id}'s unique key {key:?} is held by job {holder}{}",
                if retried.contains(holder) {
                    format!(", retried by this {by}")
                } else {
                    ", which is live".to_owned()
                }
            )),
            _ => {
                holders.insert((queue.clone(), key.clone()), *id);
            }
        }
    }
    Ok(conflicts)
}

/// An age as the `quern` utility prints it: `500ms`, `45s`, `2h30m`, `7d`.
#[doc(hidden)]
pub fn age(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1_000 {
        return format!("{ms}ms");
    }
    let s = d.as_secs();
    let parts = [
        (s / 86_400, "d"),
        (s / 3_600 % 24, "h"),
        (s / 60 % 60, "m"),
        (s % 60, "s"),
    ];
    let mut out = String::new();
    for (n, unit) in parts.iter().skip_while(|(n, _)| *n == 0).take(2) {
        out.push_str(&format!("{n}{unit}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NewJob;

    #[test]
    fn a_retry_naming_an_unknown_or_unfailed_job_changes_nothing_and_names_them() {
        let (_dir, _clock, store) = crate::store::test_store();
        let a = store.enqueue(NewJob::new("q", "a")).unwrap().id();
        let b = store
            .enqueue(NewJob::new("q", "b").max_attempts(1))
            .unwrap()
            .id();
        let claimed = store.claim("q", 2).unwrap();
        let lease_b = claimed.into_iter().find(|c| c.job.id == b).unwrap().lease;
        store.fail(lease_b, "boom").unwrap();
        let reply = apply(
            &store,
            Request::Retry {
                jobs: vec![b, JobId(99), a],
            },
        );
        let Reply::Refused(message) = reply else {
            panic!("{reply:?}");
        };
        assert!(message.contains("job 99 not found"), "{message}");
        assert!(
            message.contains(&format!("job {a} is running")),
            "{message}"
        );
        assert_eq!(store.get(b).unwrap().unwrap().state, JobState::Failed);

        let reply = apply(&store, Request::Retry { jobs: vec![b, b] });
        assert_eq!(
            reply,
            Reply::Done(format!("retried 1 job(s), now pending: {b}"))
        );
        assert_eq!(store.get(b).unwrap().unwrap().state, JobState::Pending);
    }

    #[test]
    fn a_bad_queue_name_is_refused() {
        let (_dir, _clock, store) = crate::store::test_store();
        let reply = apply(
            &store,
            Request::Pause {
                queue: String::new(),
            },
        );
        assert!(matches!(reply, Reply::Refused(_)), "{reply:?}");
        assert!(store.controls().unwrap().is_empty());
    }
}
