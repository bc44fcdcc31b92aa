//! Background jobs that outlive the terminal. A job is a folder under the user state directory
//! (`SCMZ_STATE_DIR`): `job.json` (written atomically), `stdout.log`, `stderr.log`. The local
//! backend starts a supervisor (`scmz` itself, in its own session, so it survives the SSH session
//! ending) that runs `scmz-engine`, waits for it and records how it ended. Anything that lists
//! jobs notices a supervisor that died without recording an end and marks the job failed.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::events::now_rfc3339;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Running,
    Done,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn is_final(self) -> bool {
        matches!(self, JobState::Done | JobState::Failed | JobState::Cancelled)
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: String,
    /// `train` or `project`.
    pub kind: String,
    /// Model name the job produces or uses.
    pub name: Option<String>,
    /// Arguments of `scmz-engine <kind>`.
    pub args: Vec<String>,
    /// `local` (Slurm comes later).
    pub backend: String,
    pub state: JobState,
    pub created: String,
    pub started: Option<String>,
    pub ended: Option<String>,
    /// The supervising `scmz` process and the engine it runs.
    pub supervisor_pid: Option<u32>,
    pub pid: Option<u32>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// Why the job failed or was cancelled, in one line.
    pub reason: Option<String>,
    /// The run's event log, for progress.
    pub events: Option<PathBuf>,
    /// `gpu` or `cpu`: which slot limit the job counts against.
    #[serde(default = "cpu_slot")]
    pub slot: String,
}

fn cpu_slot() -> String {
    "cpu".into()
}

/// How many jobs of each slot may run at once: `SCMZ_MAX_GPU_JOBS` (default 1) and
/// `SCMZ_MAX_CPU_JOBS` (default 1: a training job already uses every core).
pub fn slot_limit(slot: &str) -> usize {
    let (var, default) = if slot == "gpu" {
        ("SCMZ_MAX_GPU_JOBS", 1)
    } else {
        ("SCMZ_MAX_CPU_JOBS", 1)
    };
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(default)
}

/// An exclusive lock on the registry (flock on `.lock`), released when dropped: two scmz
/// processes never start the same queued job or write the same record at once.
pub struct RegistryLock {
    _file: std::fs::File,
}

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("job `{0}` not found; `scmz jobs` lists them")]
    NotFound(String),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: damaged job file ({message})")]
    Bad { path: String, message: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> JobError + '_ {
    move |source| JobError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The jobs folder: `SCMZ_STATE_DIR/jobs`, else the user state (or data) directory.
pub fn default_dir() -> PathBuf {
    crate::dirs::state_dir().join("jobs")
}

/// Whether a process is alive (signal 0 probes without sending anything). A zombie (ended but not
/// yet reaped by its parent) counts as ended.
pub fn alive(pid: u32) -> bool {
    // SAFETY: kill with signal 0 only checks for existence and permission.
    let exists = unsafe { libc::kill(pid as libc::pid_t, 0) } == 0;
    if !exists {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => true,
    }
}

pub struct Registry {
    pub dir: PathBuf,
}

impl Registry {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Registry { dir: dir.into() }
    }

    pub fn job_dir(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    pub fn lock(&self) -> Result<RegistryLock, JobError> {
        use std::os::unix::io::AsRawFd;
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let path = self.dir.join(".lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io(&path))?;
        // SAFETY: flock on a descriptor we own; blocks until the lock is ours.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io(&path)(std::io::Error::last_os_error()));
        }
        Ok(RegistryLock { _file: file })
    }

    /// Queued jobs that may start now under the slot limits, oldest first, marked running (the
    /// caller starts their supervisors). Holds the registry lock while deciding.
    pub fn take_startable(&self) -> Result<Vec<Job>, JobError> {
        let _lock = self.lock()?;
        let jobs: Vec<Job> = self.list().into_iter().filter_map(Result::ok).collect();
        let mut running: std::collections::HashMap<String, usize> = Default::default();
        for j in jobs.iter().filter(|j| j.state == JobState::Running) {
            *running.entry(j.slot.clone()).or_default() += 1;
        }
        let mut out = Vec::new();
        for mut j in jobs.into_iter().filter(|j| j.state == JobState::Queued) {
            let n = running.entry(j.slot.clone()).or_default();
            if *n < slot_limit(&j.slot) {
                *n += 1;
                j.state = JobState::Running;
                j.started = Some(now_rfc3339());
                self.save(&j)?;
                out.push(j);
            }
        }
        Ok(out)
    }

    /// A new queued job with a fresh id (time + pid, sortable).
    pub fn create(
        &self,
        kind: &str,
        name: Option<String>,
        args: Vec<String>,
        events: Option<PathBuf>,
    ) -> Result<Job, JobError> {
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let stamp = now_rfc3339()
            .replace([':', '-'], "")
            .replace('T', "-")
            .trim_end_matches('Z')
            .to_string();
        let mut n = 0;
        let id = loop {
            let id = format!(
                "{stamp}-{}{}",
                std::process::id() % 10_000,
                if n == 0 { String::new() } else { format!("-{n}") }
            );
            let dir = self.job_dir(&id);
            // create_dir fails if it exists: two scmz processes never get the same id.
            match std::fs::create_dir(&dir) {
                Ok(()) => break id,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => n += 1,
                Err(e) => return Err(io(&dir)(e)),
            }
        };
        let job = Job {
            id,
            kind: kind.to_string(),
            name,
            args,
            backend: "local".into(),
            state: JobState::Queued,
            created: now_rfc3339(),
            started: None,
            ended: None,
            supervisor_pid: None,
            pid: None,
            exit_code: None,
            signal: None,
            reason: None,
            events,
            slot: cpu_slot(),
        };
        self.save(&job)?;
        Ok(job)
    }

    /// Writes job.json atomically (temporary file, then rename).
    pub fn save(&self, job: &Job) -> Result<(), JobError> {
        let path = self.job_dir(&job.id).join("job.json");
        let tmp = path.with_extension(format!("json.{}.tmp", std::process::id()));
        let bytes = serde_json::to_vec_pretty(job).expect("job serialises");
        std::fs::write(&tmp, bytes).map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))
    }

    pub fn load(&self, id: &str) -> Result<Job, JobError> {
        let path = self.job_dir(id).join("job.json");
        let bytes = std::fs::read(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => JobError::NotFound(id.to_string()),
            _ => io(&path)(e),
        })?;
        serde_json::from_slice(&bytes).map_err(|e| JobError::Bad {
            path: path.display().to_string(),
            message: e.to_string(),
        })
    }

    /// Every job, oldest first, with dead supervisors detected and recorded.
    pub fn list(&self) -> Vec<Result<Job, JobError>> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut ids: Vec<String> = entries
            .flatten()
            .filter(|e| e.path().join("job.json").exists())
            .map(|e| e.file_name().to_string_lossy().to_string())
            .collect();
        ids.sort();
        ids.iter()
            .map(|id| self.load(id).and_then(|j| self.check_alive(j)))
            .collect()
    }

    /// A job that says running but whose supervisor is gone ended without recording it.
    pub fn check_alive(&self, mut job: Job) -> Result<Job, JobError> {
        let never_started =
            job.supervisor_pid.is_none() && job.started.as_deref().is_some_and(|t| t < now_minus_minute().as_str());
        if job.state == JobState::Running && (job.supervisor_pid.is_some_and(|p| !alive(p)) || never_started) {
            job.state = JobState::Failed;
            job.ended = Some(now_rfc3339());
            job.reason =
                Some("the job's processes ended without recording an exit (killed, or the machine restarted)".into());
            self.save(&job)?;
        }
        Ok(job)
    }
}

fn now_minus_minute() -> String {
    // RFC 3339 strings of the same format sort by time.
    let t = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
    crate::events::rfc3339(t)
}

/// Records how the engine ended: exit code 0 done, 143 (SIGTERM handled) cancelled, else failed.
pub fn finish(job: &mut Job, status: std::process::ExitStatus) {
    use std::os::unix::process::ExitStatusExt;
    job.ended = Some(now_rfc3339());
    job.exit_code = status.code();
    job.signal = status.signal();
    job.state = match (status.code(), status.signal()) {
        (Some(0), _) => JobState::Done,
        (Some(143), _) | (_, Some(libc::SIGTERM)) => JobState::Cancelled,
        _ => JobState::Failed,
    };
    job.reason = match (job.state, status.code(), status.signal()) {
        (JobState::Done, _, _) => None,
        (JobState::Cancelled, _, _) => {
            Some("cancelled; the last checkpoint is kept: `scmz jobs resume` continues".into())
        }
        (_, _, Some(sig)) => Some(format!(
            "killed by signal {sig}{}",
            if sig == libc::SIGKILL { " (SIGKILL)" } else { "" }
        )),
        (_, Some(code), _) => Some(format!("exited with code {code}; see `scmz jobs logs {}`", job.id)),
        _ => Some("ended for an unknown reason".into()),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_round_trip_and_dead_supervisors_are_detected() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::new(dir.path());
        let mut a = reg.create("train", Some("m".into()), vec!["x".into()], None).unwrap();
        let b = reg.create("train", None, Vec::new(), None).unwrap();
        assert_ne!(a.id, b.id);
        assert_eq!(reg.load(&a.id).unwrap(), a);
        // A supervisor pid that cannot exist.
        a.state = JobState::Running;
        a.supervisor_pid = Some(u32::MAX / 2);
        reg.save(&a).unwrap();
        let listed: Vec<Job> = reg.list().into_iter().map(Result::unwrap).collect();
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0].state, JobState::Failed);
        assert!(listed[0].reason.as_deref().unwrap().contains("without recording"));
        assert!(alive(std::process::id()));
        assert!(matches!(reg.load("nope"), Err(JobError::NotFound(_))));
    }
}
