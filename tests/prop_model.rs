//! Model-based property tests: random sequences of operations run against the store and the
//! reference model in `tests/model`, compared after every step. `QUERN_PROPTEST_CASES` sets the
//! number of cases (default 256; CI runs the default, a soak runs thousands).

mod model;

use model::{Harness, Op, Spec};
use proptest::prelude::*;

fn spec() -> impl Strategy<Value = Spec> {
    (
        0u8..2,
        -2i8..3,
        prop_oneof![4 => Just(0u8), 1 => 1u8..90],
        1u8..4,
        proptest::option::weighted(0.4, 0u8..4),
        proptest::option::weighted(0.4, 0u8..3),
        // Payloads: mostly a byte, sometimes at the inline limit or just past it, rarely the
        // largest allowed.
        prop_oneof![40 => Just(0u8), 4 => Just(1u8), 4 => Just(2u8), 1 => Just(3u8)],
        proptest::option::weighted(0.1, 1u8..60),
        // An explicit run_at now and then, in the past or ahead.
        proptest::option::weighted(0.1, -60i16..60),
        // The unique key's mode: mostly change-safe, now and then strict; latest wins or
        // keep first; a debounce now and then.
        (
            proptest::bool::weighted(0.2),
            any::<bool>(),
            proptest::option::weighted(0.2, 1u8..40),
            0u8..4,
        ),
    )
        .prop_map(
            |(
                queue,
                priority,
                delay_secs,
                max_attempts,
                unique,
                ckey,
                payload,
                timeout_secs,
                run_at_secs,
                (strict, latest, debounce_secs, tag),
            )| Spec {
                queue,
                priority,
                delay_secs,
                max_attempts,
                unique,
                ckey,
                payload,
                timeout_secs,
                run_at_secs,
                strict,
                latest: latest && !strict,
                debounce_secs: debounce_secs.filter(|_| !strict),
                tag,
            },
        )
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => spec().prop_map(Op::Enqueue),
        2 => proptest::collection::vec(spec(), 0..6).prop_map(Op::EnqueueBatch),
        6 => (0u8..2, 0u8..5).prop_map(|(queue, n)| Op::Claim { queue, n }),
        3 => any::<u8>().prop_map(|lease| Op::Complete { lease }),
        3 => any::<u8>().prop_map(|lease| Op::Fail { lease }),
        1 => any::<u8>().prop_map(|lease| Op::Discard { lease }),
        2 => (any::<u8>(), 0u8..60).prop_map(|(lease, secs)| Op::Snooze { lease, secs }),
        2 => any::<u8>().prop_map(|lease| Op::Heartbeat { lease }),
        1 => (any::<u8>(), any::<bool>()).prop_map(|(lease, long)| Op::SetProgress { lease, long }),
        4 => prop_oneof![0u16..5, 5u16..40, 40u16..200].prop_map(|secs| Op::Advance { secs }),
        1 => (0u16..60).prop_map(|secs| Op::ClockBack { secs }),
        2 => Just(Op::PromoteDue),
        2 => Just(Op::RecoverExpired),
        1 => Just(Op::RecoverAbandoned),
        1 => any::<u8>().prop_map(|job| Op::Retry { job }),
        1 => any::<u8>().prop_map(|job| Op::Cancel { job }),
        1 => (0u16..120).prop_map(|secs| Op::Prune { secs }),
        1 => (0u16..120, 0u16..120, proptest::option::of(0u8..4)).prop_map(
            |(succeeded_secs, failed_secs, max_failed)| Op::ApplyRetention {
                succeeded_secs,
                failed_secs,
                max_failed,
            }
        ),
        1 => (proptest::collection::vec(spec(), 0..4), any::<bool>())
            .prop_map(|(specs, commit)| Op::Write { specs, commit }),
        1 => (0u8..2, proptest::option::weighted(0.7, 0u8..3), 1u8..90)
            .prop_map(|(queue, key, secs)| Op::Park { queue, key, secs }),
        1 => (0u8..2, proptest::option::weighted(0.7, 0u8..3))
            .prop_map(|(queue, key)| Op::Unpark { queue, key }),
        1 => (0u8..2, 0u8..3, proptest::option::weighted(0.8, 1u8..4))
            .prop_map(|(queue, key, max)| Op::SetMaxRunning { queue, key, max }),
        1 => (0u8..2).prop_map(|queue| Op::Pause { queue }),
        1 => (0u8..2).prop_map(|queue| Op::Resume { queue }),
        1 => (
            0u8..2,
            proptest::option::weighted(0.6, 0u8..3),
            proptest::option::weighted(0.8, 1u8..4),
            1u8..60,
        )
            .prop_map(|(queue, key, starts, period_secs)| Op::SetLimit {
                queue,
                key,
                starts,
                period_secs,
            }),
        2 => (any::<u8>(), 0u8..3, proptest::option::weighted(0.5, spec()), proptest::bool::weighted(0.8))
            .prop_map(|(lease, how, spec, commit)| Op::SettleInWrite { lease, how, spec, commit }),
        1 => Just(Op::Reopen),
    ]
}

/// The operations of a case, now and then with a batch larger than one segment holds.
fn ops() -> impl Strategy<Value = Vec<Op>> {
    (
        proptest::collection::vec(op(), 1..40),
        proptest::option::weighted(0.05, (0u8..2, 3_300u16..4_000, 0usize..40)),
    )
        .prop_map(|(mut ops, big)| {
            if let Some((queue, n, at)) = big {
                ops.insert(at.min(ops.len()), Op::BigBatch { queue, n });
            }
            ops
        })
}

fn cases() -> u32 {
    match std::env::var("QUERN_PROPTEST_CASES") {
        Err(_) => 256,
        Ok(v) => match v.trim().parse() {
            // No case run is no proof: refused, not passed.
            Ok(0) | Err(_) => {
                panic!("QUERN_PROPTEST_CASES must be a whole number above 0, not {v:?}")
            }
            Ok(n) => n,
        },
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        max_shrink_iters: 2_000,
        ..ProptestConfig::default()
    })]

    #[test]
    fn store_agrees_with_the_model_after_every_operation(ops in ops()) {
        let mut h = Harness::new();
        for (step, op) in ops.iter().enumerate() {
            if let Err(e) = h.apply(op) {
                prop_assert!(false, "step {step} {op:?}: {e}");
            }
        }
    }

    #[test]
    fn store_agrees_with_the_model_under_the_default_jittered_backoff(
        ops in proptest::collection::vec(op(), 1..40),
    ) {
        let mut h = Harness::with_default_backoff();
        for (step, op) in ops.iter().enumerate() {
            if let Err(e) = h.apply(op) {
                prop_assert!(false, "step {step} {op:?}: {e}");
            }
        }
    }
}

/// A batch past the most new jobs one transaction indexes (20,000): claims index it over
/// several commits, and the store agrees with the model at every step.
#[test]
fn a_batch_past_one_indexing_step_agrees_with_the_model() {
    let mut h = Harness::new();
    let ops = [
        Op::BigBatch {
            queue: 0,
            n: 20_050,
        },
        Op::Claim { queue: 1, n: 4 },
        Op::Claim { queue: 0, n: 4 },
        Op::Complete { lease: 0 },
        Op::Cancel { job: 255 },
        Op::Reopen,
        Op::Claim { queue: 0, n: 4 },
    ];
    for (step, op) in ops.iter().enumerate() {
        if let Err(e) = h.apply(op) {
            panic!("step {step} {op:?}: {e}");
        }
    }
}
