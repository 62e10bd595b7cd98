//! `quern`: inspect and operate a live quern database. See `quern --help`.

#[path = "../cli/mod.rs"]
mod cli;

fn main() {
    std::process::exit(cli::main());
}
