//! `scmz jobs` and `--detach`: submitting engine commands as jobs, supervising them, listing,
//! logs, cancel and resume.

use std::path::{Path, PathBuf};
use std::time::Duration;

use scmz::config::Config;
use scmz::events::{read_log, Event};
use scmz::jobs::{default_dir, Job, JobState, Registry, Submission};

use super::table::Table;

fn registry() -> Registry {
    Registry::new(default_dir())
}

/// scmz's job options of `train`, `project` and `compare`, which `submission` takes out of the
/// engine's command line (described here for help, completions and manual pages).
#[derive(clap::Args)]
pub struct JobFlags {
    /// Run as a background job that outlives this terminal and SSH session (`scmz jobs`).
    #[arg(long)]
    pub detach: bool,
    /// Where the job runs: local or slurm (default: `backend` in the config file, else local).
    #[arg(long, value_parser = ["local", "slurm"])]
    pub backend: Option<String>,
    /// One job per setting: `n_latent=10,20,30` sets `--n-latent` in each (and names its model
    /// after the setting); several keys separated by `;` give their grid.
    #[arg(long, value_name = "KEY=V1,V2,...")]
    pub sweep: Option<String>,
    /// Slurm partition (with --backend slurm).
    #[arg(long)]
    pub partition: Option<String>,
    /// Slurm time limit, e.g. 02:00:00 (with --backend slurm).
    #[arg(long)]
    pub time: Option<String>,
    /// Slurm memory, e.g. 32G (with --backend slurm).
    #[arg(long)]
    pub mem: Option<String>,
    /// GPUs to ask Slurm for (with --backend slurm).
    #[arg(long)]
    pub gpus: Option<u32>,
}

/// Removes `flag VALUE` (or `flag=VALUE`) from `args`, returning the value.
fn take_value(args: &mut Vec<String>, flag: &str) -> anyhow::Result<Option<String>> {
    if let Some(i) = args.iter().position(|a| a == flag) {
        if i + 1 >= args.len() {
            anyhow::bail!("{flag} needs a value");
        }
        let v = args.remove(i + 1);
        args.remove(i);
        return Ok(Some(v));
    }
    let prefix = format!("{flag}=");
    if let Some(i) = args.iter().position(|a| a.starts_with(&prefix)) {
        return Ok(Some(args.remove(i)[prefix.len()..].to_string()));
    }
    Ok(None)
}

/// Takes scmz's own job options out of an engine command line: `--detach`, `--backend`,
/// `--partition`, `--gpus`, `--time`, `--mem`, `--sweep`. `None` when the command should run in
/// this terminal (no `--detach` and no option that implies it).
pub fn submission(kind: &str, args: &mut Vec<String>) -> anyhow::Result<Option<Submission>> {
    let detach = match args.iter().position(|a| a == "--detach") {
        Some(i) => {
            args.remove(i);
            true
        }
        None => false,
    };
    let config = Config::load()?;
    let backend = take_value(args, "--backend")?;
    let sweep = take_value(args, "--sweep")?;
    let mut slurm = config.slurm.clone();
    let mut slurm_flag = false;
    if let Some(p) = take_value(args, "--partition")? {
        slurm.partition = Some(p);
        slurm_flag = true;
    }
    if let Some(t) = take_value(args, "--time")? {
        slurm.time = Some(t);
        slurm_flag = true;
    }
    if let Some(m) = take_value(args, "--mem")? {
        slurm.mem = Some(m);
        slurm_flag = true;
    }
    if let Some(g) = take_value(args, "--gpus")? {
        slurm.gpus = Some(
            g.parse()
                .map_err(|_| anyhow::anyhow!("--gpus {g}: give a number of GPUs"))?,
        );
        slurm_flag = true;
    }
    if !(detach || backend.is_some() || sweep.is_some() || slurm_flag) {
        return Ok(None);
    }
    let backend = backend
        .or(config.jobs.backend.clone())
        .unwrap_or_else(|| "local".into());
    if slurm_flag && backend != "slurm" {
        anyhow::bail!("--partition, --time, --mem and --gpus are Slurm options: add --backend slurm");
    }
    Ok(Some(Submission {
        kind: kind.to_string(),
        slot: slot_of(args).to_string(),
        args: args.clone(),
        backend,
        slurm,
        sweep,
        cwd: None,
    }))
}

/// Submits a job (or a sweep's jobs) and says how to follow them.
pub fn submit(req: &Submission) -> anyhow::Result<Vec<Job>> {
    let reg = registry();
    if req.backend == "slurm" {
        if let Some(note) = scmz::jobs::slurm::shared_filesystem_note(&reg.dir) {
            eprintln!("note: {note}");
        }
    }
    let jobs = reg.submit_request(req)?;
    for job in &jobs {
        let slurm = job
            .slurm_id
            .as_ref()
            .map(|s| format!(" as Slurm job {s}"))
            .unwrap_or_default();
        println!(
            "job {} submitted ({}{}{slurm}); follow it with `scmz jobs` or `scmz jobs logs {} --follow`",
            job.id,
            job.kind,
            job.name.as_ref().map(|n| format!(" {n}")).unwrap_or_default(),
            job.id
        );
    }
    Ok(jobs)
}

/// `gpu` when the job will use CUDA: `--device cuda`, or `auto` on a machine with an NVIDIA GPU.
fn slot_of(args: &[String]) -> &'static str {
    match args
        .iter()
        .position(|a| a == "--device")
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
    {
        Some("cuda") => "gpu",
        Some("cpu") => "cpu",
        _ if Path::new("/dev/nvidia0").exists() => "gpu",
        _ => "cpu",
    }
}

/// Runs in the detached supervisor (local) or the batch script (Slurm).
pub fn supervise(id: &str, dir: PathBuf) -> anyhow::Result<()> {
    scmz::jobs::supervise(&Registry::new(dir), id)?;
    Ok(())
}

/// "epoch 12/400", the ETA and the device, from the run's event log.
fn progress(job: &Job) -> (String, String, String) {
    let Some(mut events) = job.event_log().and_then(|p| read_log(&p).ok()) else {
        return ("-".into(), "-".into(), job.slot.clone());
    };
    // A run's log goes on after this job ended when another job resumes it: this job's
    // progress is what the log held when it ended (times are RFC 3339 in UTC, ordered as text).
    if let Some(end) = job.ended.as_deref() {
        events.retain(|r| r.t.as_str() <= end);
    }
    let start = events.iter().rev().find_map(|r| match &r.event {
        Event::Start { max_epochs, device, .. } => Some((*max_epochs, device.clone())),
        _ => None,
    });
    let device = start.as_ref().map_or(job.slot.clone(), |s| s.1.clone());
    match events.iter().rev().find_map(|r| match r.event {
        Event::Epoch { epoch, eta_s, .. } => Some((epoch, eta_s)),
        _ => None,
    }) {
        Some((e, eta)) => (
            format!("epoch {}/{}", e + 1, start.map_or("?".into(), |s| s.0.to_string())),
            if job.state == JobState::Running {
                format!("{:.0} s", eta)
            } else {
                "-".into()
            },
            device,
        ),
        None => ("starting".into(), "-".into(), device),
    }
}

pub fn list(json: bool) -> anyhow::Result<()> {
    let reg = registry();
    reg.schedule()?;
    // A damaged record is named, and the others are listed all the same.
    let (jobs, damaged): (Vec<_>, Vec<_>) = reg.list().into_iter().partition(Result::is_ok);
    let jobs: Vec<Job> = jobs.into_iter().flatten().collect();
    for e in damaged.into_iter().filter_map(Result::err) {
        eprintln!(
            "warning: {}; remove that job's folder or restore the file",
            scmz::files::printable(&e.to_string())
        );
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&jobs)?);
        return Ok(());
    }
    if jobs.is_empty() {
        println!("no jobs (start one with `scmz train ... --detach`)");
        return Ok(());
    }
    let mut t = Table::new(&[
        "id", "kind", "model", "state", "progress", "eta", "device", "backend", "note",
    ])
    .limit(2, 40);
    for j in &jobs {
        let (p, eta, device) = progress(j);
        t.row(vec![
            j.id.clone(),
            j.kind.clone(),
            j.name.clone().unwrap_or_default(),
            j.state.to_string(),
            p,
            eta,
            device,
            match &j.slurm_id {
                Some(id) => format!("{} {id}", j.backend),
                None => j.backend.clone(),
            },
            j.note_among(&jobs).unwrap_or_default(),
        ]);
    }
    print!("{}", t.render());
    Ok(())
}

pub fn logs(id: &str, follow: bool) -> anyhow::Result<()> {
    use std::io::Write;
    scmz::jobs::follow(&registry(), id, "stderr.log", follow, |bytes| {
        let mut out = std::io::stdout().lock();
        // Progress bars redraw with \r; a log reads better one line each.
        let _ = out.write_all(String::from_utf8_lossy(bytes).replace('\r', "\n").as_bytes());
        let _ = out.flush();
    })?;
    Ok(())
}

pub fn cancel(id: &str, grace_s: u64) -> anyhow::Result<()> {
    let job = registry().cancel(id, Duration::from_secs(grace_s))?;
    println!("job {id}: {}", job.state);
    Ok(())
}

pub fn resume(id: &str) -> anyhow::Result<()> {
    let job = registry().load(id)?;
    if !job.state.is_final() {
        anyhow::bail!("job {id} is {}; cancel it first", job.state);
    }
    if job.state == scmz::jobs::JobState::Done {
        anyhow::bail!("job {id} is done: its result is saved; there is nothing to resume");
    }
    if let Some(next) = &job.resumed_by {
        anyhow::bail!("job {id} was resumed already, as job {next}: follow that one (`scmz jobs logs {next}`), or resume it if it stopped");
    }
    let mut args = job.args.clone();
    if job.kind == "train" && !args.iter().any(|a| a == "--resume") {
        args.push("--resume".into());
    }
    let req = Submission {
        kind: job.kind.clone(),
        args,
        backend: job.backend.clone(),
        slurm: job.slurm.clone().unwrap_or_default(),
        sweep: None,
        slot: job.slot.clone(),
        cwd: job.cwd.clone(),
    };
    let reg = registry();
    for new in submit(&req)? {
        println!("job {} resumes job {id}", new.id);
        // Read again, under the queue's lock: the record may have changed while the new job was
        // queued (a second `resume` of it is refused by the submission: one job per run).
        let _lock = reg.lock()?;
        let mut old = reg.load(id)?;
        old.resumed_by = Some(new.id.clone());
        reg.save(&old)?;
    }
    Ok(())
}
