//! Change-safe unique keys ([`NewJob::unique_key`](crate::NewJob::unique_key)), the enqueue
//! side: an enqueue of a held key is folded into the key's waiting job ([`state::coalesce`]),
//! or the caller writes it as the follow-up of the running job. What becomes of a follow-up
//! when the run ends is the record writer's (`ctx/follow_up.rs`).

use super::ctx::Ctx;
use crate::error::{Error, Result};
use crate::job::Enqueued;
use crate::state::{self, Phase, Record};
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
        cx.set_payload(holder, &mut new, fold.payload)?;
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

fn load(cx: &mut Ctx<'_>, id: u64, index: &str) -> Result<Record> {
    cx.load(id)?.ok_or_else(|| Error::Corrupt {
        what: index.into(),
        detail: format!("entry for job {id}, which does not exist"),
    })
}
