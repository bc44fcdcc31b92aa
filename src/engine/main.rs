//! `scmz-engine`: the process that runs libtorch. Training, projection and anything else that
//! needs `tch` live here, apart from the `scmz` front end, so that the CLI and the TUI start in
//! milliseconds and never carry libtorch's memory. `scmz` starts this binary as a child process
//! (the job model of scmz: long work survives the terminal that started it).

/// A line for the person at the terminal, on standard error. A terminal that has gone (`scmz train
/// 2>&1 | head`, a closed SSH session) must not stop the work, so a failed write is dropped where
/// `eprintln!` would panic.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// [`say!`] without the line's end (progress redrawn in place after `\r`).
macro_rules! say_inline {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stderr(), $($arg)*);
    }};
}

/// A line of a result on standard output, through [`scmz::files::report_line`] (a reader that has
/// gone is no error); in a function that returns `anyhow::Result`.
macro_rules! report {
    ($($arg:tt)*) => {
        scmz::files::report_line(&format!($($arg)*)).map_err(|e| {
            anyhow::anyhow!("cannot print the result on standard output: {}", scmz::files::describe(&e))
        })?
    };
}

mod apply;
mod kernels;
mod model;
mod tensor;
mod train;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "scmz-engine", version, about = "libtorch worker of scmz (started by `scmz`)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Devices libtorch sees, as JSON.
    Devices,
    /// Train a model and save it in the zoo.
    Train(Box<scmz::spec::TrainSpec>),
    /// Project a dataset with a zoo model: latent, transferred labels, predicted mapping quality.
    Project(Box<scmz::spec::ProjectSpec>),
    /// Pretrained model or one trained from scratch, scored on held-out cells of DATA.
    Compare(Box<scmz::spec::CompareSpec>),
    /// Latent means of the first cells of a dataset under a zoo model, as JSON.
    Encode {
        /// Model name.
        #[arg(long)]
        model: String,
        #[arg(long)]
        zoo: Option<PathBuf>,
        data: PathBuf,
        #[arg(long, default_value_t = 10)]
        cells: usize,
        #[arg(long)]
        batch_key: Option<String>,
    },
    /// Times training steps on one minibatch held in memory (the compute floor, without reading),
    /// and apart from them reading and preparing a minibatch.
    BenchStep {
        path: PathBuf,
        #[arg(long, default_value_t = 200)]
        steps: usize,
        #[arg(long, default_value_t = 128)]
        batch_size: usize,
        #[arg(long, value_enum, default_value_t)]
        likelihood: scmz::spec::Likelihood,
    },
    /// Runs a libtorch computation on the first cells of a dataset and checks it against Rust.
    Selftest {
        path: PathBuf,
        #[arg(long, default_value_t = 64)]
        cells: usize,
    },
}

/// Unit tests that seed libtorch's global generator and compare runs hold this, and so do those
/// that draw from it (building a model draws its weights) while another may be comparing (tests
/// run on parallel threads of one process).
#[cfg(test)]
pub(crate) static TORCH_RNG_TESTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn main() {
    tune_malloc();
    scmz::data::guard::install();
    // In a job and in a terminal alike (Ctrl-C reaches the engine too): a stop ends every phase
    // with the outputs being written removed.
    watch_job();
    if let Err(e) = run(parse_cli()) {
        let msg = format!("{e:#}");
        let line = msg.split_whitespace().collect::<Vec<_>>().join(" ");
        say!("error: {}", scmz::files::printable(&line));
        exit_now(1);
    }
}

/// The command line. Run by `scmz` (`SCMZ_FRONT_END`), usage, help and errors name `scmz`, the
/// command the user typed (`scmz train --help` printed `Usage: scmz-engine train`).
fn parse_cli() -> Cli {
    use clap::{CommandFactory, FromArgMatches};
    let mut cmd = Cli::command();
    if std::env::var_os("SCMZ_FRONT_END").is_some() {
        cmd = cmd.name("scmz").bin_name("scmz");
    }
    Cli::from_arg_matches(&cmd.get_matches()).unwrap_or_else(|e| e.exit())
}

/// Ends the process at once, without exit handlers: HDF5 tears its library down in one (atexit),
/// and a reader thread still inside a read then crashes the process (a cancelled run under load
/// ended killed by a signal instead of with its exit code). Whatever the engine writes is on disk
/// by then (event log lines are flushed, checkpoints joined); stdout and stderr are flushed here.
pub(crate) fn exit_now(code: i32) -> ! {
    use std::io::Write;
    // No destructor runs after this: the outputs being written go now (`files::Pending`).
    scmz::files::remove_pending();
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: _exit only ends the process.
    unsafe { libc::_exit(code) }
}

/// SIGTERM (a cancel, or the death signal when a job's supervisor is killed) or SIGINT must end
/// the engine in every phase: a training run answers it at its next step with a checkpoint; before
/// its epochs start (reading, gene selection), and in the other commands, this thread does, after
/// recording the end when the supervisor is gone (so the queue moves on then too).
fn watch_job() {
    train::stop::install_stop_handlers();
    std::thread::spawn(|| loop {
        std::thread::sleep(std::time::Duration::from_millis(100));
        if train::stop::stop_requested() && !train::stop::TRAINING.load(std::sync::atomic::Ordering::SeqCst) {
            hand_over_if_orphaned(Err("before it had saved anything"));
            exit_now(143);
        }
    });
}

/// The exit of a training (alone or in a comparison): a cancelled one ends the process with 143
/// (SIGTERM's status) once its end is recorded when its supervisor is gone.
fn finish(outcome: train::Outcome) -> anyhow::Result<()> {
    match outcome {
        train::Outcome::Cancelled(kept) => {
            hand_over_if_orphaned(Err(&kept));
            exit_now(143);
        }
        train::Outcome::Checked => Ok(()),
        train::Outcome::Finished | train::Outcome::StoppedEarly => {
            hand_over_if_orphaned(Ok(()));
            Ok(())
        }
    }
}

/// How a job's engine ended, for `hand_over_if_orphaned`: `Ok` saved its result, `Err` stopped
/// early (the text says what was kept).
pub(crate) type Ending<'a> = Result<(), &'a str>;

/// When this engine runs a job whose supervisor is gone (killed, so the engine got its death
/// signal and stopped at its next step, or finished a save it had begun), no one else would record
/// the end or start what waits in the queue. The engine records it, then becomes `scmz jobs
/// schedule` by exec, so that the next job's engine starts only once this one is no more. Returns
/// when the engine runs no job or its supervisor lives (which then records the end itself).
pub(crate) fn hand_over_if_orphaned(ending: Ending) {
    use std::os::unix::process::CommandExt;
    let (Some(id), Some(dir)) = (std::env::var_os("SCMZ_JOB_ID"), std::env::var_os("SCMZ_JOBS_DIR")) else {
        return;
    };
    let reg = scmz::jobs::Registry::new(PathBuf::from(dir));
    let id = id.to_string_lossy();
    let Ok(mut job) = reg.load(&id) else {
        return;
    };
    if job.state.is_final()
        || job
            .supervisor_pid
            .is_some_and(|p| scmz::jobs::is_process(p, job.supervisor_start))
    {
        return;
    }
    job.ended = Some(scmz::events::now_rfc3339());
    match ending {
        Ok(()) => {
            job.state = scmz::jobs::JobState::Done;
            job.exit_code = Some(0);
            job.reason = None;
        }
        Err(kept) => {
            job.state = scmz::jobs::JobState::Failed;
            job.exit_code = Some(143);
            job.reason = Some(format!(
                "its supervisor was killed; the engine stopped with it ({kept}): `scmz jobs resume {id}` continues"
            ));
        }
    }
    if let Err(e) = reg.save(&job) {
        say!("error: recording the end of job {id}: {e}");
        return;
    }
    if job.backend != "local" {
        return;
    }
    let Ok(engine) = std::env::current_exe() else {
        return;
    };
    let err = std::process::Command::new(engine.with_file_name("scmz"))
        .args(["jobs", "schedule", "--dir"])
        .arg(&reg.dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .exec();
    say!("error: starting the next queued job: {err}");
}

/// libtorch allocates each intermediate tensor with malloc and frees it a moment later. glibc
/// serves blocks above 128 KiB with fresh mmap'ed pages (a page fault per 4 KiB on first touch)
/// and trims the heap top eagerly; a model step's tensors (128 cells x 1,000 genes = 512 KiB)
/// then pay the kernel every time: 3.9 vs 3.3 ms per step on mouse_10k. Keep such blocks in the
/// heap instead, reused from one step to the next.
fn tune_malloc() {
    // SAFETY: mallopt only adjusts allocator parameters; called before any other thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
        libc::mallopt(libc::M_TOP_PAD, 16 << 20);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Devices => {
            report!("{}", tensor::devices_json());
            Ok(())
        }
        Command::Train(args) => finish(train::train(*args)?),
        Command::Project(args) => apply::project::project(*args),
        Command::Compare(args) => finish(apply::compare::compare(*args)?),
        Command::Encode {
            model,
            zoo,
            data,
            cells,
            batch_key,
        } => {
            let zoo = scmz::zoo::Zoo::new(zoo.unwrap_or_else(scmz::zoo::default_zoo));
            zoo.load(&model)?;
            let (ids, latent) =
                apply::encode::encode_dataset(&zoo.model_dir(&model), &data, cells, batch_key.as_deref())?;
            report!("{}", serde_json::json!({ "cell_ids": ids, "latent": latent }));
            Ok(())
        }
        Command::BenchStep {
            path,
            steps,
            batch_size,
            likelihood,
        } => train::bench::bench_step(&path, steps, batch_size, likelihood),
        Command::Selftest { path, cells } => {
            let ds = scmz::data::Dataset::open(&path)?;
            let chunk = ds.read_rows(0, cells)?;
            let from_torch = tensor::log_library_size(&chunk, tch::Device::Cpu);
            let from_rust: Vec<f32> = chunk.row_sums().iter().map(|s| (s.max(1.0) as f32).ln()).collect();
            let max_diff = from_torch
                .iter()
                .zip(&from_rust)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            report!(
                "{}",
                serde_json::json!({ "cells": chunk.n_rows(), "genes": chunk.n_cols, "max_abs_diff": max_diff,
                    "first_log_library_size": from_torch.first() })
            );
            anyhow::ensure!(max_diff < 1e-4, "libtorch and Rust disagree by {max_diff}");
            Ok(())
        }
    }
}
