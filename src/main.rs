//! The `scmz` binary: parses the command line and prints any error as one line.

/// `print!` for the front end's results. A reader that has gone ends the process through SIGPIPE
/// (see `main`); any other failure to write (a full disk behind `>`) is one line of error and exit
/// status 1, where `print!` would panic.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = write!(std::io::stdout().lock(), $($arg)*) {
            crate::stdout_failed(&e);
        }
    }};
}

/// [`out!`] with a line's end, for `println!`.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout().lock(), $($arg)*) {
            crate::stdout_failed(&e);
        }
    }};
}

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

/// Prints what a command did (jobs submitted, cancelled, resumed) once it is done. If standard
/// output fails, the same lines go to standard error with the error, so that a job's id is not
/// lost, and the exit status is 1.
fn announce(lines: &[String]) {
    use std::io::Write as _;
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    if let Err(e) = std::io::stdout().lock().write_all(text.as_bytes()) {
        eprintln!(
            "error: cannot print on standard output: {}; what the command did: {}",
            scmz::files::describe(&e),
            lines.join("; ")
        );
        std::process::exit(1);
    }
}

fn stdout_failed(e: &std::io::Error) -> ! {
    eprintln!(
        "error: cannot print the result on standard output: {}",
        scmz::files::describe(e)
    );
    std::process::exit(1);
}
