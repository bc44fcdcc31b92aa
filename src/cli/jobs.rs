//! `scmz jobs` and `--detach`: submitting engine commands as jobs, supervising them, listing,
//! logs, cancel and resume.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use scmz::events::{read_log, Event};
use scmz::jobs::{alive, default_dir, finish, Job, JobState, Registry};

use super::table::Table;

fn registry() -> Registry {
    Registry::new(default_dir())
}

fn value_after(args: &[String], flag: &str) -> Option<String> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

/// Submits `scmz-engine <kind> <args>` as a detached job and returns its id.
pub fn submit(kind: &str, args: Vec<String>) -> anyhow::Result<Job> {
    let (name, events) = match kind {
        "train" => {
            let name = value_after(&args, "--name");
            let zoo = value_after(&args, "--zoo")
                .map(PathBuf::from)
                .unwrap_or_else(scmz::zoo::default_zoo);
            let events = name
                .as_ref()
                .map(|n| scmz::zoo::Zoo::new(zoo).run_dir(n).join("events.jsonl"));
            (name, events)
        }
        _ => (value_after(&args, "--model"), None),
    };
    let reg = registry();
    let mut job = reg.create(kind, name, args, events)?;
    job.slot = slot_of(&job.args).to_string();
    reg.save(&job)?;
    schedule(&reg)?;
    Ok(reg.load(&job.id)?)
}

/// `gpu` when the job will use CUDA: `--device cuda`, or `auto` on a machine with an NVIDIA GPU.
fn slot_of(args: &[String]) -> &'static str {
    match value_after(args, "--device").as_deref() {
        Some("cuda") => "gpu",
        Some("cpu") => "cpu",
        _ if Path::new("/dev/nvidia0").exists() => "gpu",
        _ => "cpu",
    }
}

/// Starts the queued jobs the slot limits allow (no daemon: submissions, ending jobs and
/// `scmz jobs` call this).
pub fn schedule(reg: &Registry) -> anyhow::Result<()> {
    for job in reg.take_startable()? {
        start(reg, &job)?;
    }
    Ok(())
}

/// Starts the supervisor of a job in its own session, detached from this terminal.
fn start(reg: &Registry, job: &Job) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.args(["jobs", "supervise", &job.id, "--dir"])
        .arg(&reg.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: setsid is async-signal-safe; it detaches the child from our session and terminal.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    cmd.spawn()?;
    Ok(())
}

/// Runs in the detached supervisor: starts the engine, waits, records the end.
pub fn supervise(id: &str, dir: PathBuf) -> anyhow::Result<()> {
    let reg = Registry::new(dir);
    let mut job = reg.load(id)?;
    let jd = reg.job_dir(id);
    let out = std::fs::File::create(jd.join("stdout.log"))?;
    let err = std::fs::File::create(jd.join("stderr.log"))?;
    let mut child = Command::new(super::models::engine_path())
        .arg(&job.kind)
        .args(&job.args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()?;
    job.state = JobState::Running;
    job.started = Some(scmz::events::now_rfc3339());
    job.supervisor_pid = Some(std::process::id());
    job.pid = Some(child.id());
    reg.save(&job)?;
    let status = child.wait()?;
    let mut job = reg.load(id)?;
    finish(&mut job, status);
    reg.save(&job)?;
    // The slot is free: start whatever waits for it.
    schedule(&reg)
}

/// "epoch 12/400" and the ETA, from the run's event log.
fn progress(job: &Job) -> (String, String) {
    // A finished training run's log moves into the model folder as history.jsonl.
    let history = |p: &PathBuf| {
        let zoo = p.parent()?.parent()?.parent()?;
        Some(zoo.join(job.name.as_ref()?).join("history.jsonl"))
    };
    let log = job
        .events
        .as_ref()
        .and_then(|p| read_log(p).ok().or_else(|| read_log(&history(p)?).ok()));
    let Some(events) = log else {
        return ("-".into(), "-".into());
    };
    let max = events.iter().rev().find_map(|r| match r.event {
        Event::Start { max_epochs, .. } => Some(max_epochs),
        _ => None,
    });
    match events.iter().rev().find_map(|r| match r.event {
        Event::Epoch { epoch, eta_s, .. } => Some((epoch, eta_s)),
        _ => None,
    }) {
        Some((e, eta)) => (
            format!("epoch {}/{}", e + 1, max.map_or("?".into(), |m| m.to_string())),
            if job.state == JobState::Running {
                format!("{:.0} s", eta)
            } else {
                "-".into()
            },
        ),
        None => ("starting".into(), "-".into()),
    }
}

pub fn list(json: bool) -> anyhow::Result<()> {
    let reg = registry();
    schedule(&reg)?;
    let jobs: Vec<Job> = reg.list().into_iter().collect::<Result<_, _>>()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&jobs)?);
        return Ok(());
    }
    if jobs.is_empty() {
        println!("no jobs (start one with `scmz train ... --detach`)");
        return Ok(());
    }
    let mut t = Table::new(&[
        "id", "kind", "model", "state", "progress", "eta", "slot", "backend", "note",
    ]);
    for j in &jobs {
        let (p, eta) = progress(j);
        t.row(vec![
            j.id.clone(),
            j.kind.clone(),
            j.name.clone().unwrap_or_default(),
            j.state.to_string(),
            p,
            eta,
            j.slot.clone(),
            j.backend.clone(),
            j.reason.clone().unwrap_or_default(),
        ]);
    }
    print!("{}", t.render());
    Ok(())
}

pub fn logs(id: &str, follow: bool) -> anyhow::Result<()> {
    let reg = registry();
    let path = reg.job_dir(id).join("stderr.log");
    let mut shown = 0usize;
    loop {
        let job = reg.check_alive(reg.load(id)?)?;
        if let Ok(text) = std::fs::read(&path) {
            if text.len() > shown {
                print!("{}", String::from_utf8_lossy(&text[shown..]).replace('\r', "\n"));
                shown = text.len();
            }
        }
        if !follow || job.state.is_final() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

pub fn cancel(id: &str, grace_s: u64) -> anyhow::Result<()> {
    let reg = registry();
    let job = reg.check_alive(reg.load(id)?)?;
    if job.state.is_final() {
        anyhow::bail!("job {id} already ended ({})", job.state);
    }
    if let Some(pid) = job.pid {
        // SAFETY: plain kill(2) on the engine process this job started.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        let t = Instant::now();
        while alive(pid) && t.elapsed() < Duration::from_secs(grace_s) {
            std::thread::sleep(Duration::from_millis(100));
        }
        if alive(pid) {
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
    }
    // Let the supervisor record the end.
    let t = Instant::now();
    loop {
        let job = reg.check_alive(reg.load(id)?)?;
        if job.state.is_final() || t.elapsed() > Duration::from_secs(5) {
            println!("job {id}: {}", job.state);
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn resume(id: &str) -> anyhow::Result<()> {
    let job = registry().load(id)?;
    if !job.state.is_final() {
        anyhow::bail!("job {id} is {}; cancel it first", job.state);
    }
    let mut args = job.args.clone();
    if job.kind == "train" && !args.iter().any(|a| a == "--resume") {
        args.push("--resume".into());
    }
    let new = submit(&job.kind, args)?;
    println!("job {} resumes job {id}", new.id);
    Ok(())
}
