//! What runs where a job runs, whatever the backend: the supervisor (`scmz jobs supervise`) and
//! log following. Both use tokio: the supervisor waits for the engine while listening for
//! SIGTERM (forwarded to the engine, which checkpoints and exits), `follow` tails a job's log
//! until the job ends.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::{engine_path, finish, Job, JobError, JobState, Registry};
use crate::events::now_rfc3339;

fn runtime() -> Result<tokio::runtime::Runtime, JobError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| JobError::Backend(format!("cannot start the async runtime: {e}")))
}

/// Runs job `id` of `reg` to its end: starts `scmz-engine` on its request with its output in the
/// job folder, records the pids and host, forwards SIGTERM, and records how the engine ended.
/// Local jobs then start whatever waits for their slot.
pub fn supervise(reg: &Registry, id: &str) -> Result<Job, JobError> {
    let job = runtime()?.block_on(supervise_async(reg, id))?;
    if job.backend == "local" {
        reg.schedule()?;
    }
    Ok(job)
}

async fn supervise_async(reg: &Registry, id: &str) -> Result<Job, JobError> {
    use tokio::signal::unix::{signal, SignalKind};
    let jd = reg.job_dir(id);
    let file = |name: &str| {
        let p = jd.join(name);
        std::fs::File::create(&p).map_err(super::io(&p))
    };
    let (out, err) = (file("stdout.log")?, file("stderr.log")?);
    let lock = reg.lock()?;
    let mut job = reg.load(id)?;
    if job.state.is_final() {
        return Ok(job);
    }
    if job.cancel_requested {
        // Cancelled between submission and start.
        job.state = JobState::Cancelled;
        job.ended = Some(now_rfc3339());
        job.reason = Some("cancelled before it started".into());
        reg.save(&job)?;
        return Ok(job);
    }
    if let Some(cwd) = job.cwd.as_ref().filter(|d| !d.is_dir()) {
        job.state = JobState::Failed;
        job.ended = Some(now_rfc3339());
        job.reason = Some(format!(
            "the folder it was submitted from, {}, is gone (its relative paths meant files there); submit it again",
            crate::files::printable(&cwd.display().to_string())
        ));
        reg.save(&job)?;
        return Ok(job);
    }
    drop(lock);
    let engine = engine_path(&reg.scmz);
    let mut sigterm =
        signal(SignalKind::terminate()).map_err(|e| JobError::Backend(format!("cannot listen for SIGTERM: {e}")))?;
    let args = match job.request.to_args() {
        Ok(args) => args,
        Err(e) => return fail_to_start(reg, id, e),
    };
    let mut cmd = tokio::process::Command::from(super::engine_command(&engine));
    cmd.args(&args)
        .env("SCMZ_JOB_ID", &job.id)
        .env(
            "SCMZ_JOBS_DIR",
            std::path::absolute(&reg.dir).unwrap_or_else(|_| reg.dir.clone()),
        )
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    if let Some(cwd) = &job.cwd {
        cmd.current_dir(cwd);
    }
    // The engine must not outlive its supervisor (see `die_with_parent`). PDEATHSIG follows the
    // spawning thread: this runtime is single-threaded, so that thread is the supervisor's life.
    // SAFETY: the hook makes only async-signal-safe calls.
    unsafe {
        cmd.pre_exec(super::die_with_parent());
    }
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => return fail_to_start(reg, id, format!("{}: cannot start the engine ({e})", engine.display())),
    };
    // Read again, under the queue's lock so that a cancel saved meanwhile is not overwritten:
    // it may have asked for a stop since (it waits for these pids).
    let job = {
        let _lock = reg.lock()?;
        let mut job = reg.load(id)?;
        job.state = JobState::Running;
        job.started.get_or_insert_with(now_rfc3339);
        job.supervisor_pid = Some(std::process::id());
        job.supervisor_start = super::start_time(std::process::id());
        job.pid = child.id();
        job.pid_start = child.id().and_then(super::start_time);
        job.host = super::hostname();
        reg.save(&job)?;
        job
    };
    if job.cancel_requested {
        if let Some(pid) = child.id() {
            // The engine we started: it checkpoints and exits on SIGTERM.
            super::send_signal(pid, rustix::process::Signal::TERM);
        }
    }
    let status = tokio::select! {
        status = child.wait() => status,
        _ = sigterm.recv() => {
            if let Some(pid) = child.id() {
                super::send_signal(pid, rustix::process::Signal::TERM);
            }
            child.wait().await
        }
    }
    .map_err(|e| JobError::Backend(format!("waiting for the engine: {e}")))?;
    // Reload: `cancel` may have set cancel_requested meanwhile.
    let _lock = reg.lock()?;
    let mut job = reg.load(id)?;
    finish(&mut job, status);
    explain_failure(&mut job, &reg.job_dir(id).join("stderr.log"));
    reg.save(&job)?;
    Ok(job)
}

/// Records a job whose engine could not be started as failed, with why (it was taken for one
/// whose supervisor was killed).
fn fail_to_start(reg: &Registry, id: &str, why: String) -> Result<Job, JobError> {
    let _lock = reg.lock()?;
    let mut job = reg.load(id)?;
    job.state = JobState::Failed;
    job.ended = Some(now_rfc3339());
    job.reason = Some(format!("the engine could not be started: {why}"));
    reg.save(&job)?;
    Ok(job)
}

/// A job that failed with an exit code says why in its reason, in one line: the engine's last
/// `error:` line from its stderr log ("exited with code 1" alone hid it behind `scmz jobs logs`).
pub(crate) fn explain_failure(job: &mut Job, stderr_log: &Path) {
    if job.state != JobState::Failed || job.signal.is_some() || !matches!(job.exit_code, Some(c) if c != 143) {
        return;
    }
    let Some(line) = last_error_line(stderr_log) else {
        return;
    };
    let code = job.exit_code.unwrap_or_default();
    job.reason = Some(format!("{line} (exit code {code}; `scmz jobs logs {}`)", job.id));
}

/// The last line of `path` that starts with `error: `, without it, at most 400 characters,
/// printable; read from the file's last 64 KiB.
fn last_error_line(path: &Path) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(64 << 10))).ok()?;
    let mut tail = Vec::new();
    f.read_to_end(&mut tail).ok()?;
    let text = String::from_utf8_lossy(&tail);
    let line = text.lines().rev().find_map(|l| l.trim().strip_prefix("error: "))?;
    let line = crate::files::printable(line.trim());
    Some(match line.char_indices().nth(400) {
        Some((i, _)) => format!("{}...", &line[..i]),
        None => line.into_owned(),
    })
}

/// Prints (through `out`) what job `id` writes to `file` in its folder (`stderr.log`: the engine's
/// progress and errors), from the start, until the job ends when `follow` is set. Returns the job
/// as it ended (or as it is, without `follow`).
pub fn follow(reg: &Registry, id: &str, file: &str, follow: bool, out: impl FnMut(&[u8])) -> Result<Job, JobError> {
    reg.load(id)?;
    runtime()?.block_on(follow_async(reg, id, &reg.job_dir(id).join(file), follow, out))
}

async fn follow_async(
    reg: &Registry,
    id: &str,
    path: &Path,
    follow: bool,
    mut out: impl FnMut(&[u8]),
) -> Result<Job, JobError> {
    let mut shown = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        // Read the record first: bytes written before the job ended are then all on disk.
        let job = reg.refresh(reg.load(id)?)?;
        if let Ok(mut f) = tokio::fs::File::open(path).await {
            let mut buf = Vec::new();
            if f.seek(std::io::SeekFrom::Start(shown)).await.is_ok() && f.read_to_end(&mut buf).await.is_ok() {
                shown += buf.len() as u64;
                if !buf.is_empty() {
                    out(&buf);
                }
            }
        }
        if !follow || job.state.is_final() {
            return Ok(job);
        }
    }
}
