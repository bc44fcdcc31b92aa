//! The local backend: the supervisor runs on this machine as a detached process in its own
//! session (`setsid`), so closing the terminal or losing the SSH connection does not stop it.

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::Signal;

use super::{is_process, Backend, Job, JobError, JobState, Registry};
use crate::events::now_rfc3339;

pub struct Local;

/// A detached process in a session of its own: `scmz ARGS`, its output discarded.
fn detached(reg: &Registry, args: &[&str]) -> Command {
    let mut cmd = Command::new(&reg.scmz);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: the hook only calls setsid(2), which is async-signal-safe; it detaches the child
    // from our session and terminal.
    unsafe {
        cmd.pre_exec(|| {
            let _ = rustix::process::setsid();
            Ok(())
        });
    }
    cmd
}

/// Starts the queue's watcher ([`Registry::watch_queue`]); one already at work keeps the job.
pub fn start_watcher(reg: &Registry) -> Result<(), JobError> {
    let mut child = detached(reg, &["jobs", "watch", "--dir"])
        .arg(&reg.dir)
        .spawn()
        .map_err(|e| {
            JobError::Backend(format!(
                "{}: cannot start the queue's watcher ({e}); if scmz was moved or reinstalled while running, start it again",
                reg.scmz.display()
            ))
        })?;
    std::thread::spawn(move || child.wait());
    Ok(())
}

impl Backend for Local {
    fn name(&self) -> &'static str {
        "local"
    }

    fn start(&self, reg: &Registry, jobs: &mut [Job]) -> Result<(), JobError> {
        for job in jobs.iter() {
            let mut cmd = detached(reg, &["jobs", "supervise", &job.id, "--dir"]);
            let mut child = cmd.arg(&reg.dir).spawn().map_err(|e| {
                JobError::Backend(format!(
                    "{}: cannot start the job supervisor ({e}); if scmz was moved or reinstalled while running, start it again",
                    reg.scmz.display()
                ))
            })?;
            // Recorded at once, so that a cancel arriving before the supervisor has recorded
            // itself finds it alive and leaves the ending to it (it reads the cancel first).
            let pid = child.id();
            {
                let _lock = reg.lock()?;
                let mut j = reg.load(&job.id)?;
                if j.supervisor_pid.is_none() && !j.state.is_final() {
                    j.supervisor_pid = Some(pid);
                    j.supervisor_start = super::start_time(pid);
                    reg.save(&j)?;
                }
            }
            // The supervisor outlives us; reap it in the background if we live longer.
            std::thread::spawn(move || child.wait());
        }
        Ok(())
    }

    /// A job that says running but whose supervisor is gone ended without recording it. Its
    /// engine stops with it (SIGTERM at the supervisor's death, then a checkpoint); until the
    /// engine is gone too the job stays running, so that no other engine starts in its place.
    fn refresh(&self, reg: &Registry, mut job: Job) -> Result<Job, JobError> {
        if job.state != JobState::Running {
            return Ok(job);
        }
        let never_started = job.supervisor_pid.is_none()
            && job
                .started
                .as_deref()
                .and_then(crate::events::seconds_since)
                .is_some_and(|s| s > 60.0);
        let supervisor_gone = job.supervisor_pid.is_some_and(|p| !is_process(p, job.supervisor_start));
        if !(supervisor_gone || never_started) {
            return Ok(job);
        }
        if let Some(pid) = job.pid.filter(|&p| is_process(p, job.pid_start)) {
            // An engine of an older scmz has no death signal: stop it now (verified as this job's).
            super::send_signal(pid, Signal::TERM);
            return Ok(job);
        }
        job.state = JobState::Failed;
        job.ended = Some(now_rfc3339());
        job.reason = Some(if supervisor_gone {
            format!(
                "its supervisor was killed (or the machine restarted); the engine stopped with it; `scmz jobs resume {}` continues from the last checkpoint",
                job.id
            )
        } else {
            "its supervisor never started".into()
        });
        reg.save(&job)?;
        Ok(job)
    }

    /// SIGTERM to the engine (it saves a checkpoint and exits), SIGKILL after `grace`; only to
    /// the process the job started (pid and start time), never to a pid reused since.
    fn cancel(&self, reg: &Registry, job: &Job, grace: Duration) -> Result<(), JobError> {
        // Started a moment ago: its supervisor may not have recorded itself and its engine yet.
        // Wait for them (it reads the cancel before it records and signals its engine then).
        let mut job = job.clone();
        let t = Instant::now();
        while job.supervisor_pid.is_none() && !job.state.is_final() && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(50));
            job = reg.load(&job.id)?;
        }
        if job.state.is_final() {
            return Ok(());
        }
        let job = &job;
        let Some(pid) = job.pid.filter(|&p| is_process(p, job.pid_start)) else {
            if job.supervisor_pid.is_some_and(|p| is_process(p, job.supervisor_start)) {
                // The engine is not started yet, or gone: the supervisor records the end.
                return Ok(());
            }
            let mut j = reg.load(&job.id)?;
            if !j.state.is_final() {
                j.state = JobState::Failed;
                j.ended = Some(now_rfc3339());
                j.reason = Some("its process is gone (nothing was signalled)".into());
                reg.save(&j)?;
            }
            return Ok(());
        };
        // The verified engine process this job started.
        super::send_signal(pid, Signal::TERM);
        let t = Instant::now();
        while is_process(pid, job.pid_start) && t.elapsed() < grace {
            std::thread::sleep(Duration::from_millis(100));
        }
        if is_process(pid, job.pid_start) {
            super::send_signal(pid, Signal::KILL);
        }
        Ok(())
    }
}
