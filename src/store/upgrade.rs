//! Format upgrades: a writable open moves an older file to this build's format, each step in
//! one write transaction, so that a crash leaves the file at one version or the next.

use std::path::Path;

use redb::Database;

use super::codec::{INLINE_PAYLOAD, decode_v1_inbox};
use super::ctx::{Config, Ctx};
use super::tables::{CONTROLS, FORMAT_VERSION, META, META_FORMAT, RUNNING, SEGMENTS, V1_INBOX};
use crate::error::{Error, Result, redb_failed};
use crate::state::Payload;

/// Moves a database at format `version` (as its header says) to [`FORMAT_VERSION`].
pub(super) fn to_current(db: &Database, cfg: &Config, path: &Path, version: u64) -> Result<()> {
    match version {
        1 => upgrade_v1(db, cfg, path).map_err(|e| e.doing("upgrading a format 1 database")),
        FORMAT_VERSION => Ok(()),
        older => upgrade_version(db, path, older),
    }
}

/// Upgrades a format 1 database in one transaction: the jobs of its inbox become indexed
/// jobs, stored as this build stores them; the jobs it had indexed are readable as they are.
fn upgrade_v1(db: &Database, cfg: &Config, path: &Path) -> Result<()> {
    let fail = |e: redb::Error| Error::storage("upgrading a format 1 database", e);
    let tx = db.begin_write().map_err(|e| fail(e.into()))?;
    {
        let mut cx = Ctx::begin(&tx, cfg);
        let mut inbox = tx.open_table(V1_INBOX).map_err(|e| fail(e.into()))?;
        while let Some((k, v)) = inbox.pop_first().map_err(|e| fail(e.into()))? {
            let id = k.value();
            let mut rec = decode_v1_inbox(id, v.value())?;
            if let Payload::Inline(p) = &rec.payload
                && p.len() > INLINE_PAYLOAD
            {
                cx.t.payloads()?
                    .insert(id, p.as_slice())
                    .map_err(redb_failed)?;
                rec.payload = Payload::Apart;
            }
            cx.put(id, None, &rec)?;
        }
        drop(inbox);
        cx.set_all_indexed()?;
        cx.t.meta()?
            .insert(META_FORMAT, FORMAT_VERSION)
            .map_err(redb_failed)?;
        cx.finish()?;
    }
    tx.delete_table(V1_INBOX).map_err(|e| fail(e.into()))?;
    tx.commit().map_err(|e| fail(e.into()))?;
    tracing::info!(path = %path.display(), "upgraded quern database from format 1 to {FORMAT_VERSION}");
    Ok(())
}

/// Upgrades a format 2 to 5 database, which this build reads as it is: only the version
/// changes, and the file gets the tables it lacks (segments from format 3, controls from 6).
fn upgrade_version(db: &Database, path: &Path, from: u64) -> Result<()> {
    let context = match from {
        2 => "upgrading a format 2 database",
        3 => "upgrading a format 3 database",
        4 => "upgrading a format 4 database",
        _ => "upgrading a format 5 database",
    };
    let fail = |e: redb::Error| Error::storage(context, e);
    let tx = db.begin_write().map_err(|e| fail(e.into()))?;
    {
        let mut meta = tx.open_table(META).map_err(|e| fail(e.into()))?;
        meta.insert(META_FORMAT, FORMAT_VERSION)
            .map_err(|e| fail(e.into()))?;
        tx.open_table(SEGMENTS).map_err(|e| fail(e.into()))?;
        tx.open_table(CONTROLS).map_err(|e| fail(e.into()))?;
        tx.open_table(RUNNING).map_err(|e| fail(e.into()))?;
    }
    tx.commit().map_err(|e| fail(e.into()))?;
    tracing::info!(path = %path.display(), "upgraded quern database from format {from} to {FORMAT_VERSION}");
    Ok(())
}
