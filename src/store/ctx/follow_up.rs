//! What becomes of a follow-up (see `store/unique.rs`) when the run it waits for ends: part of
//! writing a record that leaves in-progress ([`Ctx::put`]). The pure steps are
//! [`state::release`] and [`state::absorb`].

use redb::ReadableTable;

use super::Ctx;
use crate::error::{Error, Result, redb_failed};
use crate::state::{self, Phase, Record};
use crate::store::codec::keyed;
use crate::store::index;

impl Ctx<'_> {
    /// The follow-up waiting behind running job `id` (record `running`), indexed, if it has one.
    pub(super) fn follower(&mut self, id: u64, running: &Record) -> Result<Option<(u64, Record)>> {
        let Some(u) = &running.unique_key else {
            return Ok(None);
        };
        let holder = self
            .t
            .unique()?
            .get(keyed(&running.queue, u).as_slice())
            .map_err(redb_failed)?
            .map(|g| g.value());
        let Some(f) = holder.filter(|&h| h != id) else {
            return Ok(None);
        };
        self.index_through(f)?;
        let rec = self.load(f)?.ok_or_else(|| dangling(f))?;
        Ok((rec.extra.behind == Some(id)).then_some((f, rec)))
    }

    /// The run of job `id` ended as `ran`, with `follow` waiting behind it: a run that ended for
    /// good releases the follow-up; one that went back to waiting takes it in, and it is deleted.
    pub(super) fn after_run(&mut self, id: u64, ran: &Record, follow: (u64, Record)) -> Result<()> {
        let (f, frec) = follow;
        let now = self.now();
        if ran.phase().is_live() {
            let payload = if frec.extra.latest_wins {
                Some(self.payload(f, frec.payload.clone())?)
            } else {
                None
            };
            self.delete(f, &frec)?;
            let mut merged = ran.clone();
            let take_payload = state::absorb(&mut merged, &frec, now).map_err(|_| {
                Error::invalid("settle", "the job went back to waiting in no known way")
            })?;
            if let Some(bytes) = payload.filter(|_| take_payload) {
                self.set_payload(id, &mut merged, bytes)?;
            }
            self.put(id, Some(ran), &merged)?;
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
            self.put(f, Some(&frec), &released)?;
            tracing::debug!(job = id, follow_up = f, "the follow-up was released");
        }
        Ok(())
    }

    /// A follow-up left the living (cancelled): the running job it waited for holds the unique key
    /// again, so that the next enqueue of the key follows it rather than runs beside it.
    pub(super) fn hand_back(&mut self, follow: &Record) -> Result<()> {
        let (Some(running), Some(u)) = (follow.extra.behind, &follow.unique_key) else {
            return Ok(());
        };
        let Some(rec) = self.load(running)? else {
            return Ok(());
        };
        if rec.phase() == Phase::InProgress
            && rec.unique_key.as_ref() == Some(u)
            && rec.queue == follow.queue
        {
            index::take_unique_key(&mut self.t, &follow.queue, u, running)?;
        }
        Ok(())
    }
}

fn dangling(id: u64) -> Error {
    Error::Corrupt {
        what: "unique index".into(),
        detail: format!("entry for job {id}, which does not exist"),
    }
}
