//! The `scmz` binary: parses the command line and prints any error as one line.

mod cli;
mod tui;

use clap::Parser;

fn main() {
    // Exit quietly when the reader of a pipe goes away (`scmz datasets | head`), as Unix tools do.
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    scmz::data::guard::install();
    let args = cli::Cli::parse();
    if let Err(e) = cli::run(args) {
        let msg = format!("{e:#}");
        let line = msg.split_whitespace().collect::<Vec<_>>().join(" ");
        eprintln!("error: {}", scmz::files::printable(&line));
        std::process::exit(1);
    }
}
