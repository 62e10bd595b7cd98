//! Change-safe unique keys ([`NewJob::unique_key`](crate::NewJob::unique_key)): an enqueue of a
//! held key is folded into the key's waiting job, or becomes the follow-up of its running job;
//! when that run ends, the follow-up is released or folded back into the job. The pure steps
//! are in `state.rs` ([`state::coalesce`], [`state::release`], [`state::absorb`]); this is where
//! the store reads and writes the records they change.

use redb::ReadableTable;

use super::codec::{INLINE_PAYLOAD, keyed};
use super::ctx::Ctx;
use super::index;
use crate::error::{Error, Result, redb_failed};
use crate::job::Enqueued;
use crate::state::{self, Payload, Phase, Record};
use crate::types::JobId;

/// What an enqueue of a held key asks of the key's job.
pub(crate) struct Fold {
    pub latest_wins: bool,
    /// The payload of the enqueue, for `latest_wins`.
    pub payload: Vec<u8>,
    /// Debounce: the key's job runs no sooner than this.
    pub not_before: Option<u64>,
}

/// Folds an enqueue into `holder`, the job that holds its unique key, when the job waits to run;
/// or tells that the job runs, so that the caller writes a follow-up behind it (`Ok(None)`).
pub(crate) fn fold(cx: &mut Ctx<'_>, holder: u64, fold: Fold) -> Result<Option<Enqueued>> {
    let rec = load(cx, holder, "unique index")?;
    let answer = match (rec.phase(), rec.extra.behind) {
        (Phase::InProgress, _) => return Ok(None),
        (Phase::Pending | Phase::Retrying, Some(running)) => Enqueued::FollowUp {
            job: JobId(holder),
            running: JobId(running),
        },
        (Phase::Pending | Phase::Retrying, None) => Enqueued::Coalesced(JobId(holder)),
        (Phase::Succeeded | Phase::Dead, _) => {
            return Err(Error::Corrupt {
                what: "unique index".into(),
                detail: format!("entry for job {holder}, which is {}", rec.state),
            });
        }
    };
    if !fold.latest_wins && fold.not_before.is_none_or(|at| at <= waits_until(&rec)) {
        // Nothing of the waiting job changes: nothing is written.
        return Ok(Some(answer));
    }
    // A job not yet indexed is indexed first, so that it is rewritten with its index entries.
    cx.index_through(holder)?;
    let old = load(cx, holder, "unique index")?;
    let mut new = old.clone();
    let now = cx.now();
    state::coalesce(&mut new, now, fold.latest_wins, fold.not_before)
        .map_err(|_| Error::invalid("enqueue", "the job of its unique key changed state"))?;
    if fold.latest_wins {
        set_payload(cx, holder, &mut new, fold.payload)?;
    }
    cx.put(holder, Some(&old), &new)?;
    Ok(Some(answer))
}

/// When a waiting job runs next, as far as a debounce is concerned.
fn waits_until(rec: &Record) -> u64 {
    match rec.phase() {
        Phase::Retrying => rec.next_attempt_at.unwrap_or(rec.run_at),
        _ => rec.run_at,
    }
}

/// The follow-up waiting behind running job `id` (record `running`), indexed, if it has one.
pub(crate) fn follower(
    cx: &mut Ctx<'_>,
    id: u64,
    running: &Record,
) -> Result<Option<(u64, Record)>> {
    let Some(u) = &running.unique_key else {
        return Ok(None);
    };
    let holder =
        cx.t.unique()?
            .get(keyed(&running.queue, u).as_slice())
            .map_err(redb_failed)?
            .map(|g| g.value());
    let Some(f) = holder.filter(|&h| h != id) else {
        return Ok(None);
    };
    cx.index_through(f)?;
    let rec = load(cx, f, "unique index")?;
    Ok((rec.extra.behind == Some(id)).then_some((f, rec)))
}

/// The run of job `id` ended as `ran`, with `follow` waiting behind it: a run that ended for
/// good releases the follow-up; one that went back to waiting takes it in, and it is deleted.
pub(crate) fn after_run(
    cx: &mut Ctx<'_>,
    id: u64,
    ran: &Record,
    follow: (u64, Record),
) -> Result<()> {
    let (f, frec) = follow;
    let now = cx.now();
    if ran.phase().is_live() {
        let payload = if frec.extra.latest_wins {
            Some(cx.payload(f, frec.payload.clone())?)
        } else {
            None
        };
        cx.delete(f, &frec)?;
        let mut merged = ran.clone();
        let take_payload = state::absorb(&mut merged, &frec, now).map_err(|_| {
            Error::invalid("settle", "the job went back to waiting in no known way")
        })?;
        if let Some(bytes) = payload.filter(|_| take_payload) {
            set_payload(cx, id, &mut merged, bytes)?;
        }
        cx.put(id, Some(ran), &merged)?;
        tracing::debug!(
            job = id,
            follow_up = f,
            "the follow-up was folded into its job"
        );
    } else {
        let mut released = frec.clone();
        state::release(&mut released, now).map_err(|_| Error::Corrupt {
            what: "unique index".into(),
            detail: format!("follow-up {f} is not waiting"),
        })?;
        cx.put(f, Some(&frec), &released)?;
        tracing::debug!(job = id, follow_up = f, "the follow-up was released");
    }
    Ok(())
}

/// A follow-up left the living (cancelled): the running job it waited for holds the unique key
/// again, so that the next enqueue of the key follows it rather than runs beside it.
pub(crate) fn hand_back(cx: &mut Ctx<'_>, follow: &Record) -> Result<()> {
    let (Some(running), Some(u)) = (follow.extra.behind, &follow.unique_key) else {
        return Ok(());
    };
    let Some(rec) = cx.load(running)? else {
        return Ok(());
    };
    if rec.phase() == Phase::InProgress
        && rec.unique_key.as_ref() == Some(u)
        && rec.queue == follow.queue
    {
        index::take_unique_key(&mut cx.t, &follow.queue, u, running)?;
    }
    Ok(())
}

/// Replaces the payload of job `id` (record `rec`, written by the caller), inline or apart as
/// its size says.
fn set_payload(cx: &mut Ctx<'_>, id: u64, rec: &mut Record, bytes: Vec<u8>) -> Result<()> {
    if bytes.len() <= INLINE_PAYLOAD {
        if rec.payload == Payload::Apart {
            cx.t.payloads()?.remove(id).map_err(redb_failed)?;
        }
        rec.payload = Payload::Inline(bytes);
    } else {
        cx.t.payloads()?
            .insert(id, bytes.as_slice())
            .map_err(redb_failed)?;
        rec.payload = Payload::Apart;
    }
    Ok(())
}

fn load(cx: &mut Ctx<'_>, id: u64, index: &str) -> Result<Record> {
    cx.load(id)?.ok_or_else(|| Error::Corrupt {
        what: index.into(),
        detail: format!("entry for job {id}, which does not exist"),
    })
}
