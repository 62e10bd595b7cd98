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
    )
        .prop_map(
            |(queue, priority, delay_secs, max_attempts, unique, ckey)| Spec {
                queue,
                priority,
                delay_secs,
                max_attempts,
                unique,
                ckey,
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
        4 => prop_oneof![0u16..5, 5u16..40, 40u16..200].prop_map(|secs| Op::Advance { secs }),
        2 => Just(Op::PromoteDue),
        2 => Just(Op::RecoverExpired),
        1 => any::<u8>().prop_map(|job| Op::Retry { job }),
        1 => any::<u8>().prop_map(|job| Op::Cancel { job }),
        1 => (0u16..120).prop_map(|secs| Op::Prune { secs }),
        1 => Just(Op::Reopen),
    ]
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
    fn store_agrees_with_the_model_after_every_operation(ops in proptest::collection::vec(op(), 1..60)) {
        let mut h = Harness::new();
        for (step, op) in ops.iter().enumerate() {
            if let Err(e) = h.apply(op) {
                prop_assert!(false, "step {step} {op:?}: {e}");
            }
        }
    }
}
