//! Fuzz input -> a bounded sequence of model operations.
//!
//! Shared by the `ops_model` fuzz target and the corpus replay in `tests/fuzz_corpus.rs`: both
//! include this file (and `input.rs`, as `crate::input`) by path, with the model of
//! `tests/model` as `crate::model`, so that a corpus file means the same operations in both.
//! An operation is a byte choosing its kind, then a byte per field.

use crate::input::Input;
use crate::model::{Op, Spec};

/// The most operations one input runs.
pub const MAX_OPS: usize = 64;
/// The most jobs in one enqueue batch.
pub const MAX_BATCH: usize = 6;

/// The operations `data` encodes: at most [`MAX_OPS`], one per leading byte and its fields;
/// at most one batch past a segment and [`MAX_LARGEST`] payloads of the largest size, so that
/// an input stays within the fuzzer's time and memory limits.
pub fn ops(data: &[u8]) -> Vec<Op> {
    let mut input = Input::new(data);
    let mut ops = Vec::new();
    let (mut big, mut largest) = (false, 0);
    let mut cap = |spec: &mut Spec| {
        if spec.payload % 4 == 3 {
            largest += 1;
            if largest > MAX_LARGEST {
                spec.payload = 0;
            }
        }
    };
    while !input.is_empty() && ops.len() < MAX_OPS {
        let mut op = op(&mut input);
        match &mut op {
            Op::BigBatch { .. } if big => continue,
            Op::BigBatch { .. } => big = true,
            Op::Enqueue(spec) => cap(spec),
            Op::EnqueueBatch(specs) | Op::Write { specs, .. } => {
                specs.iter_mut().for_each(&mut cap)
            }
            Op::SettleInWrite {
                spec: Some(spec), ..
            } => cap(spec),
            _ => {}
        }
        ops.push(op);
    }
    ops
}

/// The most payloads of the largest size (4 MiB) one input enqueues.
const MAX_LARGEST: usize = 2;

/// One operation. The weights follow `tests/prop_model.rs`: claims and enqueues often, a
/// reopen (the slowest step) rarely.
fn op(input: &mut Input<'_>) -> Op {
    match input.below(44) {
        0..=5 => Op::Enqueue(spec(input)),
        6..=7 => {
            let n = input.below(MAX_BATCH as u8 + 1);
            Op::EnqueueBatch((0..n).map(|_| spec(input)).collect())
        }
        8..=13 => Op::Claim {
            queue: input.below(2),
            n: input.below(5),
        },
        14..=16 => Op::Complete {
            lease: input.byte(),
        },
        17..=18 => Op::Fail {
            lease: input.byte(),
        },
        19 => Op::Discard {
            lease: input.byte(),
        },
        20..=21 => Op::Snooze {
            lease: input.byte(),
            secs: input.below(60),
        },
        22 => Op::Heartbeat {
            lease: input.byte(),
        },
        // Up to 255 s: past the backoff (10 s) and the lease TTL (30 s) in one step or a few.
        23..=25 => Op::Advance {
            secs: u16::from(input.byte()),
        },
        26 => Op::PromoteDue,
        27 => Op::RecoverExpired,
        28 => Op::Retry { job: input.byte() },
        29 => Op::Cancel { job: input.byte() },
        30 => Op::Prune {
            secs: u16::from(input.below(120)),
        },
        31 => Op::Reopen,
        32 => Op::SetProgress {
            lease: input.byte(),
            long: input.below(2) == 1,
        },
        33 => Op::ClockBack {
            secs: u16::from(input.below(60)),
        },
        34 => {
            let (succeeded_secs, failed_secs) = (input.below(120), input.below(120));
            let max = input.below(6);
            Op::ApplyRetention {
                succeeded_secs: u16::from(succeeded_secs),
                failed_secs: u16::from(failed_secs),
                max_failed: (max < 4).then_some(max),
            }
        }
        35 => {
            let commit = input.below(2) == 1;
            let n = input.below(4);
            Op::Write {
                specs: (0..n).map(|_| spec(input)).collect(),
                commit,
            }
        }
        36 => {
            let (lease, how, commit) = (input.byte(), input.below(3), input.below(5) > 0);
            let spec = (input.below(2) == 1).then(|| spec(input));
            Op::SettleInWrite {
                lease,
                how,
                spec,
                commit,
            }
        }
        // Backpressure: parks, pauses and rate limits of a queue or one of its keys.
        37 => Op::Park {
            queue: input.below(2),
            key: key(input),
            secs: 1 + input.below(90),
        },
        38 => Op::Unpark {
            queue: input.below(2),
            key: key(input),
        },
        39 => Op::Pause {
            queue: input.below(2),
        },
        40 => Op::Resume {
            queue: input.below(2),
        },
        41 => Op::SetLimit {
            queue: input.below(2),
            key: key(input),
            starts: (input.below(5) > 0).then(|| 1 + input.below(3)),
            period_secs: 1 + input.below(60),
        },
        43 => Op::RecoverAbandoned,
        // A batch past one segment (about 3,200 small jobs each): rare, being slow.
        _ => Op::BigBatch {
            queue: input.below(2),
            n: 3_300 + u16::from(input.byte()),
        },
    }
}

/// A concurrency key of a control op, or none (the queue itself).
fn key(input: &mut Input<'_>) -> Option<u8> {
    let k = input.below(4);
    (k < 3).then_some(k)
}

/// A job: nine bytes, one a field.
fn spec(input: &mut Input<'_>) -> Spec {
    let queue = input.below(2);
    let priority = input.below(5) as i8 - 2;
    // Mostly due now, as in the property test; otherwise up to 89 s ahead.
    let delay = input.byte();
    let delay_secs = if delay < 192 { 0 } else { delay % 90 };
    let max_attempts = 1 + input.below(3);
    let unique = input.byte();
    let ckey = input.byte();
    // Mostly a one-byte payload; 1 in 16 at the inline limit, past it, or the largest.
    let payload = input.byte();
    let timeout = input.byte();
    let run_at = input.byte();
    // The unique key's mode from the same byte's other bits: change-safe keeping the first
    // payload, latest wins, with a debounce, or strict.
    let mode = (unique >> 2) % 4;
    Spec {
        queue,
        priority,
        delay_secs,
        max_attempts,
        strict: mode == 3,
        latest: mode == 1,
        debounce_secs: (mode == 2).then_some(1 + ckey % 30),
        tag: payload % 4,
        unique: (unique >= 160).then_some(unique % 4),
        ckey: (ckey >= 160).then_some(ckey % 3),
        payload: if payload >= 240 { 1 + payload % 3 } else { 0 },
        timeout_secs: (timeout >= 224).then_some(1 + timeout % 60),
        run_at_secs: (run_at >= 224).then(|| i16::from(run_at % 120) - 60),
    }
}
