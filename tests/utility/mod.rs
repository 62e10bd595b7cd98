//! Running the `quern` binary from the utility's tests.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

/// Runs `quern` with `args`, to its end.
pub fn quern(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_quern"))
        .args(args)
        .output()
        .expect("run quern")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A path as an argument.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}
