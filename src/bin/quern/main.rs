//! `quern`: inspect and operate a live quern database. See `quern --help`.
//!
//! - `args.rs`: the command line, parsed (clap).
//! - `commands.rs`: runs one command on a database; exit codes.
//! - `render.rs`: tables, text and JSON for people and tools.
//! - `escape.rs`: text from users made safe for a terminal.
//! - `time.rs`: times and durations as the utility prints them.

mod args;
mod commands;
mod escape;
mod render;
mod time;

fn main() {
    // Every failure is one line on stderr. The store turns redb's panics on a damaged file into
    // errors, but the default hook would print each first; a panic of our own is caught below
    // and reported as one line too.
    std::panic::set_hook(Box::new(|_| {}));
    let code = match std::panic::catch_unwind(commands::main) {
        Ok(code) => code,
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".to_owned());
            eprintln!("quern: internal error: {}", escape::escape(&message));
            commands::FAILURE
        }
    };
    std::process::exit(code);
}
