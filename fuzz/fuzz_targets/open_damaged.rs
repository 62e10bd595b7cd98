//! A quern database with bytes flipped, overwritten, pages lost or misplaced, or truncated,
//! per the input: opening it gives an error or a store whose operations return (a result or an
//! error), never a panic or a hang. See `common/damage.rs` for the edits and the oracle.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../common/damage.rs"]
mod damage;
#[path = "../common/input.rs"]
mod input;

fuzz_target!(
    init: {
        // libFuzzer's hook, which aborts, stays in place for every panic but one inside a
        // store's open, which quern catches on purpose and turns into an error.
        damage::record_panics();
    },
    |data: &[u8]| {
        let file = damage::damage_of(damage::BASE, data);
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("damaged.redb");
        std::fs::write(&path, &file).expect("write the damaged file");
        damage::exercise(&path);
    }
);
