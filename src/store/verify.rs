//! `Store::check`: quern's own invariants (docs/design.md), verified from one read transaction.
//! Works on a read-only store, alongside a live writer.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use redb::{ReadTransaction, ReadableTable, ReadableTableMetadata};

use super::Store;
use super::codec::{
    blocked_key_of, decode_job, decode_segment, keyed, parse_count_key, ready_key, timed_key,
};
use super::read::{indexed_below, meta_value, next_id_floor, segments};
use super::tables::{
    BLOCKED, BUSY, COUNTS, DEAD, JOBS, LEASES, META_NEXT_TOKEN, PAYLOADS, READY, RETRIES,
    SCHEDULED, SUCCEEDED, UNIQUE,
};
use crate::error::{Result, redb_failed};
use crate::state::{Payload, Phase, Record};

/// One broken invariant found by [`Store::check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where: a table, or a job.
    pub place: String,
    /// What is wrong.
    pub detail: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.place, self.detail)
    }
}

type ByteSet = HashSet<Vec<u8>>;

/// Every entry of a byte-keyed table.
fn byte_keys<V: redb::Value + 'static>(
    tx: &ReadTransaction,
    def: redb::TableDefinition<&'static [u8], V>,
) -> Result<ByteSet> {
    let table = tx.open_table(def).map_err(redb_failed)?;
    let mut out = HashSet::new();
    for e in table.iter().map_err(redb_failed)? {
        let (k, _) = e.map_err(redb_failed)?;
        out.insert(k.value().to_vec());
    }
    Ok(out)
}

fn pair_keys(
    tx: &ReadTransaction,
    def: redb::TableDefinition<(u64, u64), ()>,
) -> Result<HashSet<(u64, u64)>> {
    let table = tx.open_table(def).map_err(redb_failed)?;
    let mut out = HashSet::new();
    for e in table.iter().map_err(redb_failed)? {
        let (k, _) = e.map_err(redb_failed)?;
        out.insert(k.value());
    }
    Ok(out)
}

fn owners(
    tx: &ReadTransaction,
    def: redb::TableDefinition<&'static [u8], u64>,
) -> Result<HashMap<Vec<u8>, u64>> {
    let table = tx.open_table(def).map_err(redb_failed)?;
    let mut out = HashMap::new();
    for e in table.iter().map_err(redb_failed)? {
        let (k, v) = e.map_err(redb_failed)?;
        out.insert(k.value().to_vec(), v.value());
    }
    Ok(out)
}

impl Store {
    /// Verifies quern's invariants: every record decodes and every payload reads; every job has
    /// exactly the index entries of its state and every index entry points to a job in that
    /// state; unique and busy keys point to the live jobs that hold them (a follow-up holds its
    /// running job's unique key, the first job of an ordered key holds its busy key while it
    /// waits); counts match. Returns
    /// the problems found (none for a healthy database).
    ///
    /// # Errors
    /// Storage errors that prevent reading the database at all.
    pub fn check(&self) -> Result<Vec<Problem>> {
        self.read("checking the database", check_tx)
    }
}

fn check_tx(tx: &ReadTransaction) -> Result<Vec<Problem>> {
    let mut problems = Vec::new();
    let mut problem = |place: String, detail: String| problems.push(Problem { place, detail });

    let mut holding = super::controls::waking(tx)?;
    holding.extend(super::controls::running_counts(tx)?.into_keys());
    let stranded = stranded_keys(tx, &owners(tx, BUSY)?, &holding)?;
    let mut ready = byte_keys(tx, READY)?;
    let mut scheduled = byte_keys(tx, SCHEDULED)?;
    let mut blocked = byte_keys(tx, BLOCKED)?;
    let mut retries = byte_keys(tx, RETRIES)?;
    let mut leases = pair_keys(tx, LEASES)?;
    let mut succeeded = pair_keys(tx, SUCCEEDED)?;
    let mut dead = pair_keys(tx, DEAD)?;
    let mut busy = owners(tx, BUSY)?;
    // As stored, for the jobs of an ordered key waiting behind another (see `ordered_line`).
    let holders = busy.clone();
    let mut unique = owners(tx, UNIQUE)?;
    let mut keys = KeyChecks::default();
    let mut running_seen: HashMap<Vec<u8>, u64> = HashMap::new();
    let mut counted: BTreeMap<(String, u8), u64> = BTreeMap::new();

    let new_from = indexed_below(tx)?;
    // Every lease was taken below the next token: what tells the leases of an earlier open
    // (a stopped process) from this one's.
    let next_token = meta_value(tx, META_NEXT_TOKEN)?;
    let mut apart = 0u64;
    let jobs = tx.open_table(JOBS).map_err(redb_failed)?;
    let payloads = tx.open_table(PAYLOADS).map_err(redb_failed)?;
    for e in jobs.iter().map_err(redb_failed)? {
        let (k, v) = e.map_err(redb_failed)?;
        let id = k.value();
        let place = format!("job {id}");
        let rec = match decode_job(id, v.value()) {
            Ok(rec) => rec,
            Err(e) => {
                problem(place, e.to_string());
                continue;
            }
        };
        if rec.payload == Payload::Apart {
            apart += 1;
            if let Some(detail) = missing_payload(&payloads, id)? {
                problem(place.clone(), detail);
            }
        }
        if id >= new_from {
            for detail in new_job_problems(id, &rec, &mut unique, &mut keys) {
                problem(place.clone(), detail);
            }
            continue;
        }
        *counted
            .entry((rec.queue.clone(), rec.phase().code()))
            .or_default() += 1;
        let q = rec.queue.as_str();
        let mut missing: Vec<&str> = Vec::new();
        let mut expect = |found: bool, index: &'static str| {
            if !found {
                missing.push(index);
            }
        };
        match rec.phase() {
            // A follow-up is in no claim index until its job's run ends.
            Phase::Pending if rec.extra.behind.is_some() => {}
            Phase::Pending => {
                let in_ready = ready.remove(&ready_key(q, rec.priority, rec.run_at, id));
                let in_scheduled = scheduled.remove(&timed_key(q, rec.run_at, id));
                let in_blocked = rec
                    .concurrency_key
                    .as_ref()
                    .is_some_and(|c| blocked.remove(&blocked_key_of(&rec, c, id)));
                let places = [in_ready, in_scheduled, in_blocked]
                    .iter()
                    .filter(|b| **b)
                    .count();
                expect(places == 1, "single ready, scheduled or blocked");
                // The head of an unordered key holds it while it waits in ready (a file
                // written before format 6 may have ready jobs that do not).
                if let Some(c) = rec.concurrency_key.as_ref().filter(|_| !rec.extra.ordered)
                    && in_ready
                    && busy.get(&keyed(q, c)) == Some(&id)
                {
                    busy.remove(&keyed(q, c));
                }
                if let Some(c) = rec.concurrency_key.as_ref().filter(|_| rec.extra.ordered) {
                    let key = keyed(q, c);
                    if in_blocked {
                        // Behind the first job of its line, which holds the key; or set aside
                        // while the key is held back (passed on at its wake time) or full
                        // (passed on when one of its running jobs ends).
                        expect(
                            holders.get(&key).is_some_and(|&h| h != id) || holding.contains(&key),
                            "busy (of the job first in its line)",
                        );
                    } else {
                        expect(busy.remove(&key) == Some(id), "busy (first in its line)");
                    }
                }
            }
            Phase::InProgress => {
                expect(
                    rec.lease_expires_at
                        .is_some_and(|t| leases.remove(&(t, id))),
                    "leases",
                );
                if rec.lease_token >= next_token {
                    problem(
                        place.clone(),
                        format!(
                            "in progress under lease token {}, not below the next token {next_token}",
                            rec.lease_token
                        ),
                    );
                }
                if let Some(c) = &rec.concurrency_key {
                    let key = keyed(q, c);
                    if busy.get(&key) == Some(&id) {
                        busy.remove(&key);
                    } else if rec.extra.ordered {
                        expect(false, "busy");
                    } else {
                        // A key that may run several: counted, checked against the running
                        // table below.
                        *running_seen.entry(key).or_default() += 1;
                    }
                }
            }
            Phase::Retrying => {
                expect(
                    rec.next_attempt_at
                        .is_some_and(|t| retries.remove(&timed_key(q, t, id))),
                    "retries",
                );
                if let Some(c) = rec.concurrency_key.as_ref().filter(|_| rec.extra.ordered) {
                    expect(
                        busy.remove(&keyed(q, c)) == Some(id),
                        "busy (first in its line)",
                    );
                }
            }
            Phase::Succeeded => expect(
                rec.finished_at.is_some_and(|t| succeeded.remove(&(t, id))),
                "succeeded",
            ),
            Phase::Dead => expect(
                rec.finished_at.is_some_and(|t| dead.remove(&(t, id))),
                "dead",
            ),
        }
        if rec.phase().is_live()
            && let Some(u) = &rec.unique_key
        {
            let key = keyed(q, u);
            if unique.get(&key) == Some(&id) {
                unique.remove(&key);
                keys.holder(id, &rec);
            } else if rec.phase() == Phase::InProgress {
                // Its follow-up, a later job, holds the key: checked once all are read.
                keys.running.insert(id, key);
            } else {
                expect(false, "unique");
            }
        }
        for index in missing {
            problem(
                place.clone(),
                format!("is {} but has no {index} entry", phase_name(&rec)),
            );
        }
    }

    // Segments: new jobs of batches, each id in one place only, all below the next id.
    let next_id = next_id_floor(tx)?.max(
        jobs.last()
            .map_err(redb_failed)?
            .map_or(0, |(k, _)| k.value() + 1),
    );
    if let Some(segments) = segments(tx)? {
        let mut covered_to = 0u64;
        for e in segments.iter().map_err(redb_failed)? {
            let (k, v) = e.map_err(redb_failed)?;
            let key = k.value();
            let place = format!("segment of jobs from {key}");
            if key < new_from {
                problem(place.clone(), "is below the indexed mark".into());
            }
            if key < covered_to {
                problem(place.clone(), "overlaps the segment before it".into());
            }
            let batch = match decode_segment(key, v.value()) {
                Ok(batch) => batch,
                Err(e) => {
                    problem(place, e.to_string());
                    continue;
                }
            };
            covered_to = key + batch.len() as u64;
            if covered_to > next_id {
                problem(
                    place.clone(),
                    format!("ends past the next id ({next_id}): its ids would be given again"),
                );
            }
            for (id, rec) in batch {
                let place = format!("job {id}");
                if jobs.get(id).map_err(redb_failed)?.is_some() {
                    problem(
                        place.clone(),
                        "is stored both alone and in a segment".into(),
                    );
                }
                if rec.payload == Payload::Apart {
                    apart += 1;
                    if let Some(detail) = missing_payload(&payloads, id)? {
                        problem(place.clone(), detail);
                    }
                }
                for detail in new_job_problems(id, &rec, &mut unique, &mut keys) {
                    problem(place.clone(), detail);
                }
            }
        }
    }

    for (place, detail) in keys.problems() {
        problem(place, detail);
    }

    let stray = payloads.len().map_err(redb_failed)?.saturating_sub(apart);
    if stray > 0 {
        problem(
            "payloads table".into(),
            format!("{stray} payloads belong to no job that keeps its payload apart"),
        );
    }

    let leftovers: [(&str, usize); 9] = [
        ("ready", ready.len()),
        ("scheduled", scheduled.len()),
        ("blocked", blocked.len()),
        ("retries", retries.len()),
        ("leases", leases.len()),
        ("succeeded", succeeded.len()),
        ("dead", dead.len()),
        ("busy", busy.len()),
        ("unique", unique.len()),
    ];
    for (table, n) in leftovers {
        if n > 0 {
            problem(
                format!("{table} index"),
                format!("{n} entries point to no job in the matching state"),
            );
        }
    }

    // Jobs of keys that may run several, counted in the running table as they run.
    let stored_running = super::controls::running_counts(tx)?;
    let keys_running: std::collections::BTreeSet<&Vec<u8>> =
        running_seen.keys().chain(stored_running.keys()).collect();
    for key in keys_running {
        let (seen, stored) = (
            running_seen.get(key).copied().unwrap_or(0),
            stored_running.get(key).copied().unwrap_or(0),
        );
        if seen != stored {
            problem(
                format!("running count of key {:?}", String::from_utf8_lossy(key)),
                format!("says {stored}, {seen} of its jobs run without its busy entry"),
            );
        }
    }

    // Invariant 4: a blocked job's key is held, or a job of it waits in ready or scheduled, or
    // its control passes it on at a wake time; otherwise nothing would ever place it again.
    for key in stranded {
        problem(
            format!("blocked jobs of key {:?}", String::from_utf8_lossy(&key)),
            "wait for a key that nothing holds, no job of it is in ready or scheduled, and no \
             wake time passes on: they would never run"
                .into(),
        );
    }

    // Controls: each decodes, under a (queue, key) key.
    for (place, detail) in super::controls::problems(tx)? {
        problem(place, detail);
    }

    let counts = tx.open_table(COUNTS).map_err(redb_failed)?;
    for e in counts.iter().map_err(redb_failed)? {
        let (k, v) = e.map_err(redb_failed)?;
        let key = parse_count_key(k.value())?;
        let actual = counted.remove(&key).unwrap_or(0);
        if actual != v.value() {
            problem(
                format!("counts of queue {:?}", key.0),
                format!(
                    "say {} in state {}, the jobs table has {actual}",
                    v.value(),
                    key.1
                ),
            );
        }
    }
    for ((queue, code), n) in counted {
        problem(
            format!("counts of queue {queue:?}"),
            format!("missing for state {code}, the jobs table has {n}"),
        );
    }
    Ok(problems)
}

/// The (queue, concurrency key) keys with blocked jobs that nothing will place again: the key
/// is not busy, no job of it is in ready or scheduled, and its control has no wake time.
fn stranded_keys(
    tx: &ReadTransaction,
    busy: &HashMap<Vec<u8>, u64>,
    waking: &HashSet<Vec<u8>>,
) -> Result<Vec<Vec<u8>>> {
    // The (queue, key) of an entry whose key is (queue, ...tail) and whose value holds the key
    // after `skip` bytes.
    let keyed_of = |k: &[u8], ckey: &[u8]| -> Option<Vec<u8>> {
        let qlen = usize::from(*k.first()?);
        let mut out = k.get(..=qlen)?.to_vec();
        out.extend_from_slice(&u16::try_from(ckey.len()).ok()?.to_be_bytes());
        out.extend_from_slice(ckey);
        Some(out)
    };
    let mut placed: HashSet<Vec<u8>> = HashSet::new();
    for e in tx
        .open_table(READY)
        .map_err(redb_failed)?
        .iter()
        .map_err(redb_failed)?
    {
        let (k, v) = e.map_err(redb_failed)?;
        if !v.value().is_empty()
            && let Some(key) = keyed_of(k.value(), v.value())
        {
            placed.insert(key);
        }
    }
    for e in tx
        .open_table(SCHEDULED)
        .map_err(redb_failed)?
        .iter()
        .map_err(redb_failed)?
    {
        let (k, v) = e.map_err(redb_failed)?;
        if let Some(ckey) = v.value().get(4..).filter(|c| !c.is_empty())
            && let Some(key) = keyed_of(k.value(), ckey)
        {
            placed.insert(key);
        }
    }
    let mut out = Vec::new();
    for e in tx
        .open_table(BLOCKED)
        .map_err(redb_failed)?
        .iter()
        .map_err(redb_failed)?
    {
        let (k, _) = e.map_err(redb_failed)?;
        let Some(key) = k.value().get(..k.value().len().saturating_sub(20)) else {
            continue;
        };
        if !busy.contains_key(key)
            && !placed.contains(key)
            && !waking.contains(key)
            && out
                .last()
                .is_none_or(|last: &Vec<u8>| last.as_slice() != key)
        {
            out.push(key.to_vec());
        }
    }
    Ok(out)
}

/// Reads the payload kept apart of job `id`, as a read of the job does (damage there is damage
/// this check must see: a read-only store reports it as an error); says so if it is missing.
fn missing_payload(
    payloads: &impl ReadableTable<u64, &'static [u8]>,
    id: u64,
) -> Result<Option<String>> {
    Ok(match payloads.get(id).map_err(redb_failed)? {
        Some(payload) => {
            std::hint::black_box(payload.value());
            None
        }
        None => Some("has no payload".into()),
    })
}

/// What is wrong with new job `id`, which must be pending and hold its unique key, in no index
/// and no count yet.
fn new_job_problems(
    id: u64,
    rec: &Record,
    unique: &mut HashMap<Vec<u8>, u64>,
    keys: &mut KeyChecks,
) -> Vec<String> {
    let mut out = Vec::new();
    if rec.phase() != Phase::Pending {
        out.push(format!("is not yet indexed but {}", phase_name(rec)));
    }
    if let Some(u) = &rec.unique_key {
        if unique.remove(&keyed(&rec.queue, u)) == Some(id) {
            keys.holder(id, rec);
        } else {
            out.push("does not hold its unique key".into());
        }
    }
    out
}

/// What ties the jobs of a unique key together, checked once every job is read: a running job
/// that does not hold its key has a follow-up that holds it and waits for that run, and every
/// follow-up waits for a job that runs and has given it the key.
#[derive(Default)]
struct KeyChecks {
    /// Running jobs whose key another job holds: id -> (queue, unique key).
    running: HashMap<u64, Vec<u8>>,
    /// Follow-ups: (id, the job it waits for, (queue, unique key)).
    follow_ups: Vec<(u64, u64, Vec<u8>)>,
}

impl KeyChecks {
    /// Job `id` holds its unique key.
    fn holder(&mut self, id: u64, rec: &Record) {
        if let (Some(behind), Some(u)) = (rec.extra.behind, &rec.unique_key) {
            self.follow_ups.push((id, behind, keyed(&rec.queue, u)));
        }
    }

    fn problems(mut self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (id, behind, key) in self.follow_ups {
            if self.running.remove(&behind).as_ref() != Some(&key) {
                out.push((
                    format!("job {id}"),
                    format!(
                        "is a follow-up of job {behind}, which is not running with its unique key"
                    ),
                ));
            }
        }
        for id in self.running.into_keys() {
            out.push((
                format!("job {id}"),
                "is in progress but has no unique entry, nor a follow-up that holds it".into(),
            ));
        }
        out.sort();
        out
    }
}

fn phase_name(rec: &Record) -> &'static str {
    match rec.phase() {
        Phase::Pending => "pending",
        Phase::InProgress => "in progress",
        Phase::Succeeded => "succeeded",
        Phase::Retrying => "failed with a retry scheduled",
        Phase::Dead => "failed for good",
    }
}
