//! The fuzz input, read from the front, for the mappings in `ops.rs` and `damage.rs`.
//!
//! Every input is valid: past its end every byte reads 0, as with `arbitrary::Unstructured`.
//! A mutation of one input byte changes one field of what it maps to. Included by path from the
//! fuzz targets and from `tests/fuzz_corpus.rs`, as `crate::input`.

#![allow(dead_code)]

/// The fuzz input, read from the front.
pub struct Input<'a> {
    rest: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Input { rest: data }
    }

    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    /// The next byte, or 0 once the input is spent.
    pub fn byte(&mut self) -> u8 {
        match self.rest.split_first() {
            Some((&b, rest)) => {
                self.rest = rest;
                b
            }
            None => 0,
        }
    }

    /// The next byte modulo `n` (`n` > 0).
    pub fn below(&mut self, n: u8) -> u8 {
        self.byte() % n
    }

    /// The next three bytes, big-endian.
    pub fn u24(&mut self) -> u32 {
        u32::from_be_bytes([0, self.byte(), self.byte(), self.byte()])
    }
}
