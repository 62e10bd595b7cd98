//! Any bytes decoded as a control request's body give a request or an error, never a panic;
//! a request that decodes encodes back to a body that decodes to the same request.

#![no_main]

use libfuzzer_sys::fuzz_target;
use quern::control::{decode_request, encode_request};

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = decode_request(data) {
        // Re-encoded, it is no longer than what it was decoded from (postcard writes the
        // shortest form), so it fits the limit too.
        let body = encode_request(&request).expect("a decoded request encodes");
        assert_eq!(decode_request(&body).ok(), Some(request));
    }
});
