//! The command line: clap commands that call the library and print tables or JSON. No domain
//! logic lives here.

mod bench;
mod datasets;
mod inspect;
mod jobs;
pub(crate) mod models;
mod overlap;
mod table;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use scmz::spec::EngineRequest;

#[derive(Parser)]
#[command(
    name = "scmz",
    version,
    about = "The single-cell model zoo: train, keep and apply scVI-like models"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Theme of the terminal UI: dark, light, high-contrast, or a .toml file.
    #[arg(long, global = true)]
    theme: Option<String>,
    /// Draw the terminal UI with ASCII only (no braille or box-drawing characters).
    #[arg(long, global = true)]
    ascii: bool,
}

#[derive(Subcommand)]
enum Command {
    /// The terminal UI (also what `scmz` alone opens): datasets, models, overlap, jobs.
    Ui {
        /// Folders to find datasets in [default: .]
        dirs: Vec<PathBuf>,
        /// The zoo folder (default: $SCMZ_ZOO, else ~/.local/share/scmz/zoo).
        #[arg(long)]
        zoo: Option<PathBuf>,
        /// The bundled demo: when the zoo is empty, start a short training job on this dataset.
        #[arg(long, value_name = "DATASET")]
        demo: Option<PathBuf>,
    },
    /// Scan folders (recursively) for datasets and list them.
    Datasets {
        /// Folders or files to scan [default: .]
        dirs: Vec<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Ignore the metadata cache and open every file.
        #[arg(long)]
        no_cache: bool,
        /// Internal: summarise the files named on stdin (see `catalog::serve_worker`).
        #[arg(long, hide = true)]
        worker: bool,
    },
    /// Everything known about one dataset.
    Inspect {
        path: PathBuf,
        #[command(flatten)]
        open: OpenArgs,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Fail unless the matrix holds raw counts (for scripts).
        #[arg(long)]
        counts: bool,
    },
    /// How much of B's gene set A has, and through which key; with more than two datasets, the
    /// pairwise matrix.
    Overlap {
        /// A (the data) then B (the reference), or several datasets.
        #[arg(required = true, num_args = 2..)]
        paths: Vec<PathBuf>,
        #[command(flatten)]
        open: OpenArgs,
        /// Print JSON instead of a table or text.
        #[arg(long)]
        json: bool,
        /// Also write the table to FILE.csv or FILE.parquet.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Replace an existing --out file.
        #[arg(long)]
        overwrite: bool,
    },
    /// Merge datasets over the union of their genes, recording which genes each measured.
    Merge {
        #[arg(required = true, num_args = 2..)]
        paths: Vec<PathBuf>,
        /// The merged .h5ad to write.
        #[arg(short, long)]
        output: PathBuf,
        #[command(flatten)]
        open: OpenArgs,
        /// Merge normalised data with raw counts anyway.
        #[arg(long)]
        force: bool,
        /// Replace an existing output file (never one of the inputs).
        #[arg(long)]
        overwrite: bool,
        /// Print JSON instead of a table or text.
        #[arg(long)]
        json: bool,
    },
    /// Train a model on a dataset and keep it in the zoo.
    Train {
        #[command(flatten)]
        spec: Box<scmz::spec::TrainSpec>,
        #[command(flatten)]
        job: jobs::JobFlags,
    },
    /// Apply a zoo model to a dataset: latent, transferred labels, predicted mapping quality.
    Project {
        #[command(flatten)]
        spec: Box<scmz::spec::ProjectSpec>,
        #[command(flatten)]
        job: jobs::JobFlags,
    },
    /// Pretrained model vs one trained from scratch on DATA, scored on held-out cells.
    Compare {
        #[command(flatten)]
        spec: Box<scmz::spec::CompareSpec>,
        #[command(flatten)]
        job: jobs::JobFlags,
    },
    /// Shell completions on stdout: `scmz completions bash > ~/.local/share/bash-completion/completions/scmz`
    /// (`scripts/install.sh` installs them for bash, zsh and fish).
    Completions { shell: clap_complete::Shell },
    /// The manual pages (roff): scmz(1) on stdout, or one page per command written into --dir.
    #[command(hide = true)]
    Man {
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Background jobs (`scmz train ... --detach`).
    Jobs {
        #[command(subcommand)]
        command: Option<JobsCommand>,
        /// Print JSON instead of a table or text.
        #[arg(long)]
        json: bool,
    },
    /// The models in the zoo.
    Models {
        /// The zoo folder (default: $SCMZ_ZOO, else ~/.local/share/scmz/zoo).
        #[arg(long)]
        zoo: Option<PathBuf>,
        /// Print JSON instead of a table or text.
        #[arg(long)]
        json: bool,
    },
    /// One model of the zoo.
    #[command(subcommand)]
    Model(ModelCommand),
    /// Bring a scvi-tools model (SCVI or SCANVI, saved with `model.save(DIR)`) into the zoo. Its
    /// `model.pt` is read without running the pickle inside.
    Import {
        /// The folder `model.save()` wrote (or its `model.pt`); before scvi-tools 0.15, the folder
        /// with `model_params.pt`, `var_names.csv` and `attr.pkl`.
        dir: PathBuf,
        /// The model's name in the zoo.
        #[arg(long)]
        name: String,
        /// The zoo folder (default: $SCMZ_ZOO, else ~/.local/share/scmz/zoo).
        #[arg(long)]
        zoo: Option<PathBuf>,
        /// Replace a model of that name.
        #[arg(long)]
        overwrite: bool,
    },
    /// Write a zoo model for another tool: `--format scvi-tools` writes the folder scvi-tools'
    /// `SCVI.load(DIR, adata=...)` reads.
    Export {
        /// The model's name in the zoo.
        name: String,
        /// The tool to write for.
        #[arg(long, value_enum)]
        format: ExportFormat,
        /// The folder to write (`DIR/model.pt`); made if missing.
        #[arg(short, long)]
        out: PathBuf,
        /// The zoo folder (default: $SCMZ_ZOO, else ~/.local/share/scmz/zoo).
        #[arg(long)]
        zoo: Option<PathBuf>,
        /// Replace a `model.pt` already in DIR.
        #[arg(long)]
        overwrite: bool,
    },
    /// Benchmarks whose figures go into issues and release notes.
    #[command(subcommand)]
    Bench(bench::Bench),
    /// Versions of scmz and HDF5, and the devices libtorch sees (asked of `scmz-engine`).
    Version,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ExportFormat {
    /// scvi-tools' SCVI (`model.pt`).
    ScviTools,
}

#[derive(Subcommand)]
enum JobsCommand {
    /// The job's log (the engine's progress and errors).
    Logs {
        id: String,
        /// Keep printing until the job ends.
        #[arg(long)]
        follow: bool,
    },
    /// Stop a job: SIGTERM (it keeps its last checkpoint), SIGKILL after the grace period.
    Cancel {
        id: String,
        /// Seconds between SIGTERM and SIGKILL, 0 to 3600.
        #[arg(long, default_value_t = 30, value_parser = grace_seconds, allow_negative_numbers = true)]
        grace: u64,
    },
    /// Start an ended job again (training continues from its checkpoint).
    Resume { id: String },
    /// Runs a job in the foreground of a detached session (started by scmz itself).
    #[command(hide = true)]
    Supervise {
        id: String,
        #[arg(long)]
        dir: PathBuf,
    },
    /// Starts the queued jobs the slot limits allow (run by an engine whose supervisor died).
    #[command(hide = true)]
    Schedule {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Keeps the queue moving while local jobs wait (started detached by a submission).
    #[command(hide = true)]
    Watch {
        #[arg(long)]
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum ModelCommand {
    /// Everything the manifest says about a model.
    Show {
        name: String,
        /// The zoo folder (default: $SCMZ_ZOO, else ~/.local/share/scmz/zoo).
        #[arg(long)]
        zoo: Option<PathBuf>,
        /// Print JSON instead of a table or text.
        #[arg(long)]
        json: bool,
    },
}

/// How to open a dataset.
#[derive(clap::Args, Clone, Default)]
pub struct OpenArgs {
    /// Matrix to use: X, raw, or a layer name [default: the first holding raw counts]
    #[arg(long)]
    layer: Option<String>,
    /// 10x v3: keep every feature type, not only Gene Expression.
    #[arg(long)]
    all_features: bool,
    /// Cell Ranger 2 HDF5 with several genomes: the genome to use [default: the first].
    #[arg(long)]
    genome: Option<String>,
}

impl OpenArgs {
    fn options(&self) -> scmz::data::OpenOptions {
        scmz::data::OpenOptions {
            layer: self.layer.clone(),
            all_features: self.all_features,
            genome: self.genome.clone(),
        }
    }
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    let ui = |dirs: Vec<PathBuf>, zoo: Option<PathBuf>, demo: Option<PathBuf>| {
        // A folder that is not there is said, not shown as an empty catalog.
        for d in &dirs {
            match std::fs::metadata(d) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => anyhow::bail!(
                    "{}: a file, not a folder; open the folder that holds it, or see it with `scmz inspect {}`",
                    d.display(),
                    d.display()
                ),
                Err(e) => anyhow::bail!("{}: cannot open the folder ({e}); check the path", d.display()),
            }
        }
        crate::tui::run(crate::tui::Options {
            data_dirs: if dirs.is_empty() {
                vec![PathBuf::from(".")]
            } else {
                dirs
            },
            zoo: zoo.unwrap_or_else(scmz::zoo::default_zoo),
            theme: cli.theme.clone(),
            ascii: cli.ascii,
            demo,
        })
    };
    match cli.command {
        None => {
            use std::io::IsTerminal;
            if std::io::stdout().is_terminal() && std::io::stdin().is_terminal() {
                return ui(Vec::new(), None, None);
            }
            use clap::CommandFactory;
            Cli::command().print_help()?;
            Ok(())
        }
        Some(Command::Ui { dirs, zoo, demo }) => ui(dirs, zoo, demo),
        Some(Command::Datasets { worker: true, .. }) => Ok(scmz::data::catalog::serve_worker()?),
        Some(Command::Datasets {
            dirs, json, no_cache, ..
        }) => datasets::run(dirs, json, no_cache),
        Some(Command::Inspect {
            path,
            open,
            json,
            counts,
        }) => inspect::run(&path, &open.options(), json, counts),
        Some(Command::Overlap {
            paths,
            open,
            json,
            out,
            overwrite,
        }) => {
            scmz::files::remove_pending_on_signal();
            overlap::overlap(&paths, &open.options(), json, out.as_deref(), overwrite)
        }
        Some(Command::Merge {
            paths,
            output,
            open,
            force,
            overwrite,
            json,
        }) => {
            scmz::files::remove_pending_on_signal();
            overlap::merge_cmd(&paths, &output, &open.options(), force, overwrite, json)
        }
        Some(Command::Completions { shell }) => {
            // Into memory first: clap_complete panics on a failed write.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut documented_command(), "scmz", &mut script);
            out!("{}", String::from_utf8_lossy(&script));
            Ok(())
        }
        Some(Command::Man { dir }) => man(dir.as_deref()),
        Some(Command::Train { spec, job }) => engine(EngineRequest::Train(spec), job),
        Some(Command::Project { spec, job }) => engine(EngineRequest::Project(spec), job),
        Some(Command::Compare { spec, job }) => engine(EngineRequest::Compare(spec), job),
        Some(Command::Jobs { command, json }) => match command {
            None => jobs::list(json),
            Some(JobsCommand::Logs { id, follow }) => jobs::logs(&id, follow),
            Some(JobsCommand::Cancel { id, grace }) => jobs::cancel(&id, grace),
            Some(JobsCommand::Resume { id }) => jobs::resume(&id),
            Some(JobsCommand::Supervise { id, dir }) => jobs::supervise(&id, dir),
            Some(JobsCommand::Schedule { dir }) => Ok(scmz::jobs::Registry::new(dir).schedule()?),
            Some(JobsCommand::Watch { dir }) => {
                Ok(scmz::jobs::Registry::new(dir).watch_queue(std::time::Duration::from_secs(1))?)
            }
        },
        Some(Command::Models { zoo, json }) => models::list(zoo, json),
        Some(Command::Model(ModelCommand::Show { name, zoo, json })) => models::show(zoo, &name, json),
        Some(Command::Import {
            dir,
            name,
            zoo,
            overwrite,
        }) => {
            scmz::files::remove_pending_on_signal();
            models::import(&dir, &name, zoo, overwrite)
        }
        Some(Command::Export {
            name,
            format: ExportFormat::ScviTools,
            out,
            zoo,
            overwrite,
        }) => {
            scmz::files::remove_pending_on_signal();
            models::export(&name, &out, zoo, overwrite)
        }
        Some(Command::Bench(b)) => bench::run(b),
        Some(Command::Version) => {
            outln!("scmz {}", env!("CARGO_PKG_VERSION"));
            outln!("hdf5 {}", hdf5_version());
            let engine = scmz::jobs::this_engine();
            // Everything that trains or projects runs there: an engine that cannot start is an
            // error (with its reason), not a line of the report.
            match engine_answer(&engine, &["devices"], std::time::Duration::from_secs(60)) {
                Ok(o) if o.status.success() && String::from_utf8_lossy(&o.stdout).trim_start().starts_with('{') => {
                    out!("libtorch devices: {}", String::from_utf8_lossy(&o.stdout));
                    Ok(())
                }
                Ok(o) if o.status.success() => anyhow::bail!(
                    "{}: the engine answered something other than its devices ({}); reinstall with scripts/install.sh",
                    engine.display(),
                    scmz::files::printable(
                        String::from_utf8_lossy(&o.stdout)
                            .lines()
                            .next()
                            .unwrap_or("nothing")
                            .trim()
                    )
                ),
                Ok(o) => {
                    let why = String::from_utf8_lossy(&o.stderr);
                    let why = why.lines().find(|l| !l.trim().is_empty()).unwrap_or("no message");
                    anyhow::bail!(
                        "{}: the engine does not start ({}: {}); run scripts/setup.sh, or reinstall with scripts/install.sh",
                        engine.display(),
                        o.status,
                        scmz::files::printable(why.trim())
                    )
                }
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => anyhow::bail!(
                    "{}: the engine hangs ({e}); check `{} devices` by hand",
                    engine.display(),
                    engine.display()
                ),
                Err(e) => anyhow::bail!(
                    "{}: cannot run the engine ({e}); it must sit beside scmz: reinstall with scripts/install.sh",
                    engine.display()
                ),
            }
        }
    }
}

fn engine(request: EngineRequest, flags: jobs::JobFlags) -> anyhow::Result<()> {
    let args = |r: &EngineRequest| r.to_args().map_err(|e| anyhow::anyhow!(e));
    if let Some(req) = jobs::submission(&request, flags)? {
        if request.is_check_only() {
            anyhow::bail!(
                "--check-only checks in this terminal and runs nothing: leave out --detach, --backend and --sweep"
            );
        }
        // What the engine would refuse at once is refused now, not after the job's turn comes:
        // every setting of a sweep is parsed as the engine would, and the first checked in full.
        let mut first = req.request.clone();
        if let Some(sweep) = &req.sweep {
            let settings = scmz::spec::expand_sweep(&req.request, sweep)
                .map_err(|e| anyhow::anyhow!("{e}; sweep options of `scmz {} --help`", request.kind()))?;
            first = settings.into_iter().next().unwrap_or(first);
        }
        check_before_queueing(&first, None)?;
        jobs::submit(&req)?;
        return Ok(());
    }
    if !request.is_check_only() {
        jobs::registry().refuse_job_holding(&request)?;
    }
    let code = models::run_engine(&args(&request)?)?;
    if code != 0 {
        std::process::exit(code);
    }
    Ok(())
}

/// What the engine would refuse at once (settings, data, model, zoo, outputs: its
/// `--check-only`) is refused before a job is queued, not when its turn comes. Comparisons have
/// no such check.
/// `cwd`: the folder the request's relative paths are relative to (None: this one).
pub fn check_before_queueing(request: &EngineRequest, cwd: Option<&std::path::Path>) -> anyhow::Result<()> {
    if request.kind() == "compare" {
        return Ok(());
    }
    let args = request.check_only().to_args().map_err(|e| anyhow::anyhow!(e))?;
    let code = models::run_engine_in(&args, cwd)?;
    if code != 0 {
        std::process::exit(code);
    }
    Ok(())
}

/// The whole command line as users type it, for completions and manual pages.
pub fn documented_command() -> clap::Command {
    use clap::CommandFactory;
    Cli::command()
}

/// scmz(1), and with `dir` also scmz-COMMAND(1) for each command, written there.
fn man(dir: Option<&std::path::Path>) -> anyhow::Result<()> {
    let cmd = documented_command();
    let render = |c: clap::Command| -> anyhow::Result<Vec<u8>> {
        let mut out = Vec::new();
        clap_mangen::Man::new(c).render(&mut out)?;
        Ok(out)
    };
    let Some(dir) = dir else {
        use std::io::Write;
        std::io::stdout().write_all(&render(cmd)?)?;
        return Ok(());
    };
    std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("{}: cannot create: {e}", dir.display()))?;
    // A page for every command a page names (`scmz-jobs-logs` too), none for `help` or the
    // hidden ones, so that no SEE ALSO points at a page that is not there.
    fn pages_of(cmd: &clap::Command, page: &str, typed: &str, out: &mut Vec<(String, clap::Command)>) {
        let mut shown = cmd.clone().disable_help_subcommand(true);
        for hidden in cmd.get_subcommands().filter(|s| s.is_hide_set()) {
            shown = shown.mut_subcommand(hidden.get_name(), |s| s.hide(true));
        }
        for sub in cmd
            .get_subcommands()
            .filter(|s| !s.is_hide_set() && s.get_name() != "help")
        {
            let (p, t) = (
                format!("{page}-{}", sub.get_name()),
                format!("{typed} {}", sub.get_name()),
            );
            pages_of(sub, &p, &t, out);
        }
        out.push((
            page.to_string(),
            shown.name(page.to_string()).bin_name(typed.to_string()),
        ));
    }
    let mut pages = Vec::new();
    pages_of(&cmd, "scmz", "scmz", &mut pages);
    for (name, page) in pages {
        let path = dir.join(format!("{name}.1"));
        scmz::files::write_atomic(&path, &render(page)?)?;
    }
    Ok(())
}

/// Runs the engine with `args` and its output captured, killed after `limit` (an engine that
/// hangs, a libtorch stuck finding devices, must not hang `scmz version`).
fn engine_answer(
    engine: &std::path::Path,
    args: &[&str],
    limit: std::time::Duration,
) -> std::io::Result<std::process::Output> {
    use std::process::Stdio;
    let mut child = scmz::jobs::engine_command(engine)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let t = std::time::Instant::now();
    while child.try_wait()?.is_none() {
        if t.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("it gave no answer in {} s", limit.as_secs()),
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output()
}

/// `jobs cancel --grace`: whole seconds, at most an hour (a checkpoint takes seconds).
fn grace_seconds(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(n) if n <= 3600 => Ok(n),
        _ => Err(format!("`{s}` must be a whole number of seconds from 0 to 3600")),
    }
}

fn hdf5_version() -> String {
    let v = hdf5::library_version();
    format!("{}.{}.{}", v.0, v.1, v.2)
}
