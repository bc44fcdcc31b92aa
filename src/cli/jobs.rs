//! `scmz jobs` and `--detach`: submitting engine commands as jobs, supervising them, listing,
//! logs, cancel and resume.

use std::path::PathBuf;
use std::time::Duration;

use scmz::config::Config;
use scmz::events::{read_log, Event};
use scmz::jobs::{default_dir, Job, JobState, Registry, Submission};
use scmz::spec::EngineRequest;

use super::table::Table;

pub(crate) fn registry() -> Registry {
    Registry::new(default_dir())
}

/// scmz's job options of `train`, `project` and `compare`: where and how the engine runs, beside
/// what it runs (`scmz::spec`).
#[derive(clap::Args, Clone, Debug)]
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

/// The submission `flags` ask for, of `request`: `None` when the command should run in this
/// terminal (no `--detach` and no option that implies it).
pub fn submission(request: &EngineRequest, flags: JobFlags) -> anyhow::Result<Option<Submission>> {
    let config = Config::load()?;
    let mut slurm = config.slurm.clone();
    let slurm_flag = flags.partition.is_some() || flags.time.is_some() || flags.mem.is_some() || flags.gpus.is_some();
    slurm.partition = flags.partition.or(slurm.partition);
    slurm.time = flags.time.or(slurm.time);
    slurm.mem = flags.mem.or(slurm.mem);
    slurm.gpus = flags.gpus.or(slurm.gpus);
    if !(flags.detach || flags.backend.is_some() || flags.sweep.is_some() || slurm_flag) {
        return Ok(None);
    }
    let backend = flags
        .backend
        .or(config.jobs.backend.clone())
        .unwrap_or_else(|| "local".into());
    if slurm_flag && backend != "slurm" {
        anyhow::bail!("--partition, --time, --mem and --gpus are Slurm options: add --backend slurm");
    }
    Ok(Some(Submission {
        backend,
        slurm,
        sweep: flags.sweep,
        ..Submission::local(request.clone())
    }))
}

/// Submits a job (or a sweep's jobs) and says how to follow them.
pub fn submit(req: &Submission) -> anyhow::Result<Vec<Job>> {
    let (jobs, lines) = submit_quietly(req)?;
    crate::announce(&lines);
    Ok(jobs)
}

/// [`submit`], with the lines that say how to follow the jobs returned, not printed.
fn submit_quietly(req: &Submission) -> anyhow::Result<(Vec<Job>, Vec<String>)> {
    let reg = registry();
    if req.backend == "slurm" {
        if let Some(note) = scmz::jobs::slurm::shared_filesystem_note(&reg.dir) {
            eprintln!("note: {note}");
        }
    }
    let jobs = reg.submit_request(req)?;
    let lines: Vec<String> = jobs
        .iter()
        .map(|job| {
            let slurm = job
                .slurm_id
                .as_ref()
                .map(|s| format!(" as Slurm job {s}"))
                .unwrap_or_default();
            format!(
                "job {} submitted ({}{}{slurm}); follow it with `scmz jobs` or `scmz jobs logs {} --follow`",
                job.id,
                job.kind(),
                job.name.as_ref().map(|n| format!(" {n}")).unwrap_or_default(),
                job.id
            )
        })
        .collect();
    Ok((jobs, lines))
}

/// Runs in the detached supervisor (local) or the batch script (Slurm).
pub fn supervise(id: &str, dir: PathBuf) -> anyhow::Result<()> {
    scmz::jobs::supervise(&Registry::new(dir), id)?;
    Ok(())
}

/// "epoch 12/400", the ETA and the device, from the run's event log.
fn progress(job: &Job) -> (String, String, String) {
    let Some(events) = job.event_log().and_then(|p| read_log(&p).ok()) else {
        return ("-".into(), "-".into(), job.slot.clone());
    };
    let replaced = !events.is_empty();
    let events = job.own_records(&events);
    if replaced && events.is_empty() {
        // Nothing of this job's own yet: it has not started (a queued resume has the log of the
        // run it continues), or a later run of this name restarted or replaced its run.
        let what = match job.state {
            JobState::Queued => "-",
            JobState::Running => "starting",
            _ => "replaced",
        };
        return (what.into(), "-".into(), job.slot.clone());
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
        outln!("{}", serde_json::to_string_pretty(&jobs)?);
        return Ok(());
    }
    if jobs.is_empty() {
        outln!("no jobs (start one with `scmz train ... --detach`)");
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
            j.kind().to_string(),
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
    out!("{}", t.render());
    Ok(())
}

pub fn logs(id: &str, follow: bool) -> anyhow::Result<()> {
    use std::io::Write;
    scmz::jobs::follow(&registry(), id, "stderr.log", follow, |bytes| {
        let mut out = std::io::stdout().lock();
        // Progress bars redraw with \r; a log reads better one line each.
        if let Err(e) = out
            .write_all(String::from_utf8_lossy(bytes).replace('\r', "\n").as_bytes())
            .and_then(|()| out.flush())
        {
            crate::stdout_failed(&e);
        }
    })?;
    Ok(())
}

pub fn cancel(id: &str, grace_s: u64) -> anyhow::Result<()> {
    let job = registry().cancel(id, Duration::from_secs(grace_s))?;
    crate::announce(&[format!("job {id}: {}", job.state)]);
    Ok(())
}

pub fn resume(id: &str) -> anyhow::Result<()> {
    let reg = registry();
    let req = reg.resume_submission(id)?;
    // An edited record, or a failure that would come again (a bad key), is refused now.
    // In the folder it was submitted from; one that is gone fails the job with that reason.
    if req.cwd.as_deref().is_none_or(std::path::Path::is_dir) {
        super::check_before_queueing(&req.request, req.cwd.as_deref())?;
    }
    let (jobs, mut lines) = submit_quietly(&req)?;
    for new in jobs {
        // A second `resume` of it is refused by the submission: one job per run.
        reg.mark_resumed(id, &new.id)?;
        lines.push(format!("job {} resumes job {id}", new.id));
    }
    crate::announce(&lines);
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A resume waits with the log of the run it continues, which another job started: it is
    /// queued or starting, not "replaced" (that is for a job whose run a later one took over).
    #[test]
    fn a_job_without_records_of_its_own_is_replaced_only_once_it_has_ended() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("zoo/.runs/m/events.jsonl");
        std::fs::create_dir_all(log.parent().unwrap()).unwrap();
        let spec = scmz::spec::TrainSpec::defaults("d.h5ad".into(), "m".into());
        let config = serde_json::to_value(&spec).unwrap();
        let start = serde_json::json!({"t": "2026-12-07T01:00:00Z", "event": "start", "name": "m",
            "config": config, "device": "cpu", "data": ["d.h5ad"], "n_train": 9, "n_val": 1,
            "first_epoch": 0, "max_epochs": 5, "run": "r1", "job": "first"});
        std::fs::write(&log, format!("{start}\n")).unwrap();
        let mut job = Job::new("second".into(), EngineRequest::Train(Box::new(spec)), Some(log.clone()));
        job.created = "2026-12-07T01:05:00Z".into();
        for (state, shown) in [
            (JobState::Queued, "-"),
            (JobState::Running, "starting"),
            (JobState::Done, "replaced"),
            (JobState::Failed, "replaced"),
        ] {
            job.state = state;
            assert_eq!(progress(&job).0, shown, "{state}");
        }
    }
}
