//! A sequence of operations decoded from the input (at most 64, batches of at most 6) runs
//! against a real store and the reference model of `tests/model`, compared after every step.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../common/input.rs"]
mod input;
#[path = "../../tests/model/mod.rs"]
mod model;
#[path = "../common/ops.rs"]
mod ops;

fuzz_target!(|data: &[u8]| {
    let ops = ops::ops(data);
    if ops.is_empty() {
        return;
    }
    let mut h = model::Harness::new();
    for (step, op) in ops.iter().enumerate() {
        if let Err(e) = h.apply(op) {
            panic!("step {step} {op:?}: {e}\nall operations: {ops:?}");
        }
    }
});
