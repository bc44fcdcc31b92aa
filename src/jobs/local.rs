//! The local backend: the supervisor runs on this machine as a detached process in its own
//! session (`setsid`), so closing the terminal or losing the SSH connection does not stop it.

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{alive, now_minus_minute, Backend, Job, JobError, JobState, Registry};
use crate::events::now_rfc3339;

pub struct Local;

impl Backend for Local {
    fn name(&self) -> &'static str {
        "local"
    }

    fn start(&self, reg: &Registry, jobs: &mut [Job]) -> Result<(), JobError> {
        for job in jobs.iter() {
            let mut cmd = Command::new(&reg.scmz);
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
            let mut child = cmd.spawn().map_err(|e| {
                JobError::Backend(format!(
                    "{}: cannot start the job supervisor ({e}); reinstall scmz",
                    reg.scmz.display()
                ))
            })?;
            // The supervisor outlives us; reap it in the background if we live longer.
            std::thread::spawn(move || child.wait());
        }
        Ok(())
    }

    /// A job that says running but whose supervisor is gone ended without recording it.
    fn refresh(&self, reg: &Registry, mut job: Job) -> Result<Job, JobError> {
        let never_started =
            job.supervisor_pid.is_none() && job.started.as_deref().is_some_and(|t| t < now_minus_minute().as_str());
        if job.state == JobState::Running && (job.supervisor_pid.is_some_and(|p| !alive(p)) || never_started) {
            job.state = JobState::Failed;
            job.ended = Some(now_rfc3339());
            job.reason =
                Some("the job's processes ended without recording an exit (killed, or the machine restarted)".into());
            reg.save(&job)?;
        }
        Ok(job)
    }

    /// SIGTERM to the engine (it saves a checkpoint and exits), SIGKILL after `grace`.
    fn cancel(&self, _reg: &Registry, job: &Job, grace: Duration) -> Result<(), JobError> {
        if let Some(pid) = job.pid {
            // SAFETY: plain kill(2) on the engine process this job started.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
            let t = Instant::now();
            while alive(pid) && t.elapsed() < grace {
                std::thread::sleep(Duration::from_millis(100));
            }
            if alive(pid) {
                // SAFETY: as above.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            }
        }
        Ok(())
    }
}
