//! Any bytes decoded as a stored job, a format 1 inbox entry, or each kind of index key and
//! value give a value or an error, never a panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use quern::__decode;

fuzz_target!(|data: &[u8]| {
    let _ = __decode::record(data);
    let _ = __decode::inbox(data);
    let _ = __decode::keys(data);
});
