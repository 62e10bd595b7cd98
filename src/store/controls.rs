//! Backpressure in the store: the [`Control`] of a queue or a concurrency key, kept in
//! [`CONTROLS`](super::tables::CONTROLS), and the [`Gate`] a claim passes its jobs through, in
//! the claim's own transaction, so that every claim path (the claimer, the hand-off at commit,
//! `Store::claim`) counts against the same limits and a restart cannot burst past one.
//!
//! A job whose key is held back (parked, or out of starts in its rate window) is moved aside to
//! the blocked index as a busy key's job is, and the key's control notes when to pass the key on
//! (`wake_at`): the first claim at or after that time places the key's first blocked job again.

use std::collections::HashMap;

use redb::ReadableTable;

use super::codec::{decode_control, keyed, queue_prefix};
use super::ctx::Ctx;
use super::tables::CONTROLS;
use super::{Store, enqueue, index};
use crate::error::{Error, Result, redb_failed};
use crate::limits::{Control, RateLimit};
use crate::types::{Timestamp, duration_ms};

/// The control's key: (queue, concurrency key), or (queue, "") for the queue itself (a
/// concurrency key is never empty).
pub(crate) fn control_key(queue: &str, key: Option<&str>) -> Vec<u8> {
    keyed(queue, key.unwrap_or(""))
}

/// The control of `queue` (or of its concurrency key `key`); empty when none is stored.
pub(crate) fn load(cx: &mut Ctx<'_>, queue: &str, key: Option<&str>) -> Result<Control> {
    let k = control_key(queue, key);
    match cx.t.controls()?.get(k.as_slice()).map_err(redb_failed)? {
        Some(v) => decode_control(&k, v.value()),
        None => Ok(Control::default()),
    }
}

/// Stores `control` (deletes it when it holds nothing back and keeps no state).
pub(crate) fn save(
    cx: &mut Ctx<'_>,
    queue: &str,
    key: Option<&str>,
    control: &Control,
) -> Result<()> {
    let k = control_key(queue, key);
    if control.is_empty() {
        cx.t.controls()?.remove(k.as_slice()).map_err(redb_failed)?;
    } else {
        let bytes = postcard::to_stdvec(control).map_err(|e| Error::Corrupt {
            what: "control being written".into(),
            detail: e.to_string(),
        })?;
        cx.t.controls()?
            .insert(k.as_slice(), bytes.as_slice())
            .map_err(redb_failed)?;
    }
    cx.touch();
    Ok(())
}

/// Changes the control of `queue` (or of its key `key`) with `f`, and stores it.
pub(crate) fn update(
    cx: &mut Ctx<'_>,
    queue: &str,
    key: Option<&str>,
    f: impl FnOnce(&mut Control),
) -> Result<()> {
    let mut control = load(cx, queue, key)?;
    f(&mut control);
    save(cx, queue, key, &control)
}

/// The controls of one queue that a claim consults: the queue's own, and its keys' as the
/// claim meets them. Changes are written once, at [`Gate::finish`].
pub(crate) struct Gate {
    queue: String,
    now: u64,
    own: Control,
    own_changed: bool,
    keys: HashMap<String, (Control, bool)>,
}

impl Gate {
    /// Reads the queue's controls as of `now`: forgets the parks and windows that ended, and
    /// passes on the keys whose `wake_at` came, so that their blocked jobs run again.
    pub(crate) fn open(cx: &mut Ctx<'_>, queue: &str, now: u64) -> Result<Gate> {
        let prefix = queue_prefix(queue);
        let own_key = control_key(queue, None);
        let stored = of_queue(cx, &prefix)?;
        let mut gate = Gate {
            queue: queue.to_owned(),
            now,
            own: Control::default(),
            own_changed: false,
            keys: HashMap::new(),
        };
        for (k, mut control) in stored {
            let changed = control.expire(now);
            if k == own_key {
                gate.own = control;
                gate.own_changed = changed;
                continue;
            }
            let Some(ckey) = key_of(&prefix, &k) else {
                continue;
            };
            let mut changed = changed;
            if control.wake_at.is_some_and(|t| t <= now) {
                control.wake_at = None;
                changed = true;
                index::pass_key(&mut cx.t, &k, now)?;
            }
            gate.keys.insert(ckey, (control, changed));
        }
        Ok(gate)
    }

    /// How many jobs the queue may start now.
    pub(crate) fn queue_allowance(&self) -> usize {
        usize::try_from(self.own.allowance(self.now)).unwrap_or(usize::MAX)
    }

    /// Whether a job of concurrency key `ckey` may start now. If not, the caller moves the
    /// job aside, and the key is woken when what holds it back ends.
    pub(crate) fn key_allows(&mut self, cx: &mut Ctx<'_>, ckey: &str) -> Result<bool> {
        let now = self.now;
        let (control, changed) = match self.keys.get_mut(ckey) {
            Some(entry) => entry,
            None => {
                let control = load(cx, &self.queue, Some(ckey))?;
                self.keys.entry(ckey.to_owned()).or_insert((control, false))
            }
        };
        // A key that may run several at once is full while that many run (its busy entry is
        // its waiting head's); a job that ends passes the key on.
        // (After a maximum was lowered, jobs counted under the old one may still run.)
        let max = u64::from(control.max_running.unwrap_or(1));
        if index::running(&mut cx.t, &control_key(&self.queue, Some(ckey)))? >= max {
            return Ok(false);
        }
        if control.allowance(now) > 0 {
            return Ok(true);
        }
        let wake = control.opens_at(now);
        if control.wake_at.is_none() || control.wake_at > wake {
            control.wake_at = wake.or(control.wake_at);
            *changed = true;
        }
        Ok(false)
    }

    /// Whether jobs of `ckey` may run several at once: a claim of one passes the key on to
    /// its next job at once, which the claim may meet further on.
    pub(crate) fn runs_several(&self, ckey: &str) -> bool {
        self.keys
            .get(ckey)
            .is_some_and(|(c, _)| c.max_running.is_some_and(|m| m > 1))
    }

    /// Counts a start of a job of the queue, of concurrency key `ckey` if it has one.
    pub(crate) fn started(&mut self, ckey: Option<&str>) {
        let now = self.now;
        if self.own.limit.is_some() {
            self.own.started(now, 1);
            self.own_changed = true;
        }
        if let Some(k) = ckey
            && let Some((control, changed)) = self.keys.get_mut(k)
            && control.limit.is_some()
        {
            control.started(now, 1);
            *changed = true;
        }
    }

    /// Writes what changed.
    pub(crate) fn finish(self, cx: &mut Ctx<'_>) -> Result<()> {
        if self.own_changed {
            save(cx, &self.queue, None, &self.own)?;
        }
        for (ckey, (control, changed)) in self.keys {
            if changed {
                save(cx, &self.queue, Some(&ckey), &control)?;
            }
        }
        Ok(())
    }
}

/// The stored controls of the queue whose key prefix is `prefix`: its own and its keys'.
fn of_queue(cx: &mut Ctx<'_>, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Control)>> {
    let mut out = Vec::new();
    for entry in cx.t.controls()?.range(prefix..).map_err(redb_failed)? {
        let (k, v) = entry.map_err(redb_failed)?;
        if !k.value().starts_with(prefix) {
            break;
        }
        out.push((k.value().to_vec(), decode_control(k.value(), v.value())?));
    }
    Ok(out)
}

/// Table `def` (controls or running counts) of a read transaction; `None` in a file of a
/// format before it (5 and older), where nothing is held back and nothing counted.
fn read_table<V: redb::Value + 'static>(
    tx: &redb::ReadTransaction,
    def: redb::TableDefinition<&'static [u8], V>,
) -> Result<Option<redb::ReadOnlyTable<&'static [u8], V>>> {
    match tx.open_table(def) {
        Ok(table) => Ok(Some(table)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(redb_failed(e)),
    }
}

/// The concurrency key of control key `k` under queue prefix `prefix` (`None` for the queue's
/// own control).
fn key_of(prefix: &[u8], k: &[u8]) -> Option<String> {
    let rest = k.get(prefix.len()..)?;
    let (len, key) = rest.split_at_checked(2)?;
    let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
    (len > 0 && key.len() == len).then(|| String::from_utf8_lossy(key).into_owned())
}

/// When something held back in `queue` next opens: the queue's park or rate window, or a key's
/// wake time.
pub(crate) fn next_open(cx: &mut Ctx<'_>, queue: &str, now: u64) -> Result<Option<u64>> {
    let prefix = queue_prefix(queue);
    let own_key = control_key(queue, None);
    let mut next: Option<u64> = None;
    for (k, control) in of_queue(cx, &prefix)? {
        // A key's wake time that has come waits for the next claim with room, which passes the
        // key; returning it would make a claimer with no room run cycle after cycle at once.
        let at = if k == own_key {
            control.opens_at(now)
        } else {
            control.wake_at.filter(|&t| t > now)
        };
        if let Some(at) = at {
            next = Some(next.map_or(at, |n| n.min(at)));
        }
    }
    Ok(next)
}

/// What holds back a queue, or one concurrency key of it: [`Store::controls`] lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueControl {
    /// The queue.
    pub queue: String,
    /// The concurrency key, or `None` for the queue itself.
    pub key: Option<String>,
    /// Paused ([`Store::pause`]): nothing starts until it is resumed.
    pub paused: bool,
    /// Parked: nothing starts before this time.
    pub parked_until: Option<Timestamp>,
    /// Why it was parked.
    pub reason: Option<String>,
    /// Its rate limit.
    pub rate_limit: Option<RateLimit>,
    /// Jobs started in the current rate window, and when that window closes.
    pub window: Option<(u32, Timestamp)>,
    /// A plain key only: how many of its jobs may run at once, when more than one.
    pub max_running: Option<u32>,
}

impl QueueControl {
    fn of(queue: String, key: Option<String>, c: Control, now: u64) -> QueueControl {
        let window = match (c.limit, c.window) {
            (Some(limit), Some((opened, started))) => {
                let closes = opened.saturating_add(duration_ms(limit.period()));
                (now < closes).then_some((started, Timestamp(closes)))
            }
            _ => None,
        };
        QueueControl {
            queue,
            key,
            paused: c.paused,
            parked_until: c.parked_until.filter(|&t| t > now).map(Timestamp),
            reason: c.reason.filter(|_| c.parked_until.is_some_and(|t| t > now)),
            rate_limit: c.limit,
            window,
            max_running: c.max_running,
        }
    }
}

/// Backpressure: pausing a queue, parking a queue or key, rate limits. Each is stored in the
/// database, survives a restart, and is enforced by every claim in its own transaction.
impl Store {
    /// Pauses `queue`: nothing of it is claimed until [`Store::resume`]; running jobs finish,
    /// enqueues are accepted.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a bad queue name; [`Error::ReadOnly`]; storage errors.
    pub fn pause(&self, queue: &str) -> Result<()> {
        enqueue::validate_queue(queue)?;
        let queue = queue.to_owned();
        self.call("pausing a queue", move |cx| {
            update(cx, &queue, None, |c| c.paused = true)
        })
    }

    /// Resumes a paused `queue`.
    ///
    /// # Errors
    /// As [`Store::pause`].
    pub fn resume(&self, queue: &str) -> Result<()> {
        enqueue::validate_queue(queue)?;
        let queue = queue.to_owned();
        self.call("resuming a queue", move |cx| {
            update(cx, &queue, None, |c| c.paused = false)
        })
    }

    /// Parks `queue`, or its concurrency key `key`, until `until`: no job of it starts before
    /// then (jobs of other keys go on), and `reason` says why in [`Store::controls`] and
    /// `quern stats`. A later park of the same queue or key extends it; an earlier one does
    /// not shorten it ([`Store::unpark`] does).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a bad queue name or key, or an `until` not after now;
    /// [`Error::ReadOnly`]; storage errors.
    pub fn park(
        &self,
        queue: &str,
        key: Option<&str>,
        until: Timestamp,
        reason: impl Into<String>,
    ) -> Result<()> {
        enqueue::validate_queue(queue)?;
        enqueue::validate_key("concurrency key", key)?;
        if until <= self.now() {
            return Err(Error::invalid("park until", "it is not after now"));
        }
        let (queue, key, reason) = (queue.to_owned(), key.map(str::to_owned), reason.into());
        self.call("parking a queue or key", move |cx| {
            update(cx, &queue, key.as_deref(), |c| c.park(until.0, &reason))
        })
    }

    /// Ends a park of `queue` (or of its key `key`) now.
    ///
    /// # Errors
    /// As [`Store::park`].
    pub fn unpark(&self, queue: &str, key: Option<&str>) -> Result<()> {
        enqueue::validate_queue(queue)?;
        enqueue::validate_key("concurrency key", key)?;
        let (queue, key) = (queue.to_owned(), key.map(str::to_owned));
        self.call("unparking a queue or key", move |cx| {
            let now = cx.now();
            update(cx, &queue, key.as_deref(), |c| {
                c.parked_until = None;
                c.reason = None;
                // Jobs moved aside meanwhile run at the next claim.
                if c.wake_at.is_some() {
                    c.wake_at = Some(now);
                }
            })
        })
    }

    /// Sets (or with `None` removes) the rate limit of `queue`, or of each of its
    /// concurrency keys' `key`: at most `limit.starts()` jobs started per `limit.period()`.
    ///
    /// # Errors
    /// As [`Store::park`].
    pub fn set_rate_limit(
        &self,
        queue: &str,
        key: Option<&str>,
        limit: Option<RateLimit>,
    ) -> Result<()> {
        enqueue::validate_queue(queue)?;
        enqueue::validate_key("concurrency key", key)?;
        let (queue, key) = (queue.to_owned(), key.map(str::to_owned));
        self.call("setting a rate limit", move |cx| {
            let now = cx.now();
            update(cx, &queue, key.as_deref(), |c| {
                c.limit = limit;
                if limit.is_none() {
                    c.window = None;
                }
                if c.wake_at.is_some() {
                    c.wake_at = Some(now);
                }
            })
        })
    }

    /// Lets up to `max` jobs of the plain concurrency key `key` of `queue` run at once (the
    /// default is one; `None` or 1 restores it). The key's jobs still wait aside while that many
    /// run, and a job of an ordered key keeps to one at a time whatever this says.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a bad queue name or key, or a maximum of 0 (park the key to
    /// start none); [`Error::ReadOnly`]; storage errors.
    pub fn set_max_running(&self, queue: &str, key: &str, max: Option<u32>) -> Result<()> {
        enqueue::validate_queue(queue)?;
        enqueue::validate_key("concurrency key", Some(key))?;
        if max == Some(0) {
            return Err(Error::invalid(
                "max running",
                "it is 0; park the key to start none of its jobs",
            ));
        }
        let (queue, key) = (queue.to_owned(), key.to_owned());
        self.call("setting a key's maximum running", move |cx| {
            let now = cx.now();
            update(cx, &queue, Some(&key), |c| {
                c.max_running = max.filter(|&m| m > 1);
                // Jobs waiting aside for room run at the next claim if there is more now.
                c.wake_at = Some(now);
            })?;
            if max.is_some_and(|m| m > 1) {
                index::run_several(&mut cx.t, &control_key(&queue, Some(&key)), now)?;
            }
            Ok(())
        })
    }

    /// What holds back each queue and key now: pauses, parks, rate limits and their windows.
    ///
    /// # Errors
    /// Storage errors.
    pub fn controls(&self) -> Result<Vec<QueueControl>> {
        let now = self.now().0;
        self.read("reading the controls", |tx| read_controls(tx, now))
    }
}

/// Every control, as of `now`; none in a file of a format before the table (5 and older).
pub(crate) fn read_controls(tx: &redb::ReadTransaction, now: u64) -> Result<Vec<QueueControl>> {
    let Some(table) = read_table(tx, CONTROLS)? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for entry in table.iter().map_err(redb_failed)? {
        let (k, v) = entry.map_err(redb_failed)?;
        let control = decode_control(k.value(), v.value())?;
        let (queue, key) = parse_control_key(k.value())?;
        let view = QueueControl::of(queue, key, control, now);
        if view.paused
            || view.parked_until.is_some()
            || view.rate_limit.is_some()
            || view.max_running.is_some()
        {
            out.push(view);
        }
    }
    Ok(out)
}

/// (queue, key) of a control key.
fn parse_control_key(k: &[u8]) -> Result<(String, Option<String>)> {
    let bad = || Error::Corrupt {
        what: "controls table".into(),
        detail: "a key that is not (queue, concurrency key)".into(),
    };
    let (&len, rest) = k.split_first().ok_or_else(bad)?;
    let (queue, rest) = rest.split_at_checked(usize::from(len)).ok_or_else(bad)?;
    let queue = String::from_utf8_lossy(queue).into_owned();
    let key = key_of(&k[..=usize::from(len)], k).filter(|_| rest.len() > 2);
    Ok((queue, key))
}

/// What is wrong with the stored controls (for [`Store::check`]): an entry that does not
/// decode, or whose key is not (queue, concurrency key).
pub(crate) fn problems(tx: &redb::ReadTransaction) -> Result<Vec<(String, String)>> {
    let Some(table) = read_table(tx, CONTROLS)? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for entry in table.iter().map_err(redb_failed)? {
        let (k, v) = entry.map_err(redb_failed)?;
        let place = format!("control {:?}", String::from_utf8_lossy(k.value()));
        if let Err(e) = parse_control_key(k.value()) {
            out.push((place.clone(), e.to_string()));
        }
        if let Err(e) = decode_control(k.value(), v.value()) {
            out.push((place, e.to_string()));
        }
    }
    Ok(out)
}

/// The (queue, concurrency key) keys whose jobs were set aside while the key was held back:
/// their controls have a wake time (for [`Store::check`]).
pub(crate) fn waking(tx: &redb::ReadTransaction) -> Result<std::collections::HashSet<Vec<u8>>> {
    let Some(table) = read_table(tx, CONTROLS)? else {
        return Ok(Default::default());
    };
    let mut out = std::collections::HashSet::new();
    for entry in table.iter().map_err(redb_failed)? {
        let (k, v) = entry.map_err(redb_failed)?;
        if decode_control(k.value(), v.value())?.wake_at.is_some() {
            out.insert(k.value().to_vec());
        }
    }
    Ok(out)
}

/// The running counts of keys that may run several (for [`Store::check`]).
pub(crate) fn running_counts(
    tx: &redb::ReadTransaction,
) -> Result<std::collections::HashMap<Vec<u8>, u64>> {
    let Some(table) = read_table(tx, super::tables::RUNNING)? else {
        return Ok(Default::default());
    };
    let mut out = std::collections::HashMap::new();
    for entry in table.iter().map_err(redb_failed)? {
        let (k, v) = entry.map_err(redb_failed)?;
        out.insert(k.value().to_vec(), v.value());
    }
    Ok(out)
}
