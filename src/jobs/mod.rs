//! Background jobs that outlive the terminal. A job is a folder under the user state directory
//! (`SCMZ_STATE_DIR`): `job.json` (written atomically), `stdout.log`, `stderr.log`. Wherever a job
//! runs, the same supervisor (`scmz jobs supervise`, see [`supervise`]) runs `scmz-engine`, waits
//! for it under tokio, forwards SIGTERM and records how it ended in `job.json`. Where that
//! supervisor runs is a [`Backend`]: [`local::Local`] starts it as a detached process in its own
//! session (it survives the SSH session ending), [`slurm::Slurm`] submits it with `sbatch`. The
//! registry, the logs, `scmz jobs` and the TUI only see `Job` records and the [`Backend`] trait.
//! Anything that lists jobs asks the job's backend to refresh it: a dead local supervisor or a
//! Slurm job that ended without recording it is marked failed with the reason.

pub mod local;
pub mod slurm;
mod supervise;

pub use supervise::{follow, supervise};

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{Config, SlurmConfig};
use crate::events::now_rfc3339;
use crate::spec::{expand_sweep, DeviceChoice, EngineRequest};

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
    /// What the engine runs: `"kind"` (train, project or compare) and its `"spec"`.
    #[serde(flatten)]
    pub request: EngineRequest,
    /// Model name the job produces or uses.
    pub name: Option<String>,
    /// `local` or `slurm`.
    pub backend: String,
    /// The Slurm job id (`123`, or `123_4` for a task of an array).
    #[serde(default)]
    pub slurm_id: Option<String>,
    /// The Slurm options the job was submitted with (kept for `resume`).
    #[serde(default)]
    pub slurm: Option<SlurmConfig>,
    /// Set by `scmz jobs cancel` before the job is signalled, so that a SIGTERM from elsewhere (a
    /// time limit, preemption) is not mistaken for a cancel.
    #[serde(default)]
    pub cancel_requested: bool,
    /// The host the engine runs on.
    #[serde(default)]
    pub host: Option<String>,
    pub state: JobState,
    pub created: String,
    pub started: Option<String>,
    pub ended: Option<String>,
    /// The supervising `scmz` process and the engine it runs.
    pub supervisor_pid: Option<u32>,
    pub pid: Option<u32>,
    /// When those processes started (`start_time`): with the pid, it names one process for
    /// good, so a reused pid is never signalled. Absent in records of older scmz.
    #[serde(default)]
    pub supervisor_start: Option<u64>,
    #[serde(default)]
    pub pid_start: Option<u64>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// Why the job failed or was cancelled, in one line.
    pub reason: Option<String>,
    /// The run's event log, for progress.
    pub events: Option<PathBuf>,
    /// `gpu` or `cpu`: which slot limit the job counts against.
    #[serde(default = "cpu_slot")]
    pub slot: String,
    /// The folder the job was submitted from: its engine runs there, so that relative paths in
    /// its arguments mean what they meant (also when resumed from elsewhere). Absent in records
    /// of older scmz.
    #[serde(default)]
    pub cwd: Option<PathBuf>,
    /// The job that resumed this one (`scmz jobs resume`), so that it is resumed once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed_by: Option<String>,
}

impl Job {
    /// A queued local job with nothing recorded yet.
    pub fn new(id: String, request: EngineRequest, events: Option<PathBuf>) -> Job {
        Job {
            id,
            name: Some(request.model_name().to_string()),
            request,
            backend: "local".into(),
            slurm_id: None,
            slurm: None,
            cancel_requested: false,
            host: None,
            state: JobState::Queued,
            created: now_rfc3339(),
            started: None,
            ended: None,
            supervisor_pid: None,
            pid: None,
            supervisor_start: None,
            pid_start: None,
            exit_code: None,
            signal: None,
            reason: None,
            events,
            slot: cpu_slot(),
            cwd: None,
            resumed_by: None,
        }
    }

    /// `train`, `project` or `compare`.
    pub fn kind(&self) -> &'static str {
        self.request.kind()
    }

    /// Why a job that was stopped (cancelled, or by SIGTERM from outside: `how`) ended, and what
    /// `scmz jobs resume` does for it: a training continues from its last checkpoint, other jobs
    /// run again from the start.
    pub fn stopped_reason(&self, how: &str) -> String {
        if self.kind() == "train" {
            format!(
                "{how}; the last checkpoint (if an epoch had finished) is kept: `scmz jobs resume {}` continues",
                self.id
            )
        } else {
            format!("{how}: `scmz jobs resume {}` runs it again", self.id)
        }
    }

    /// What to tell about how the job ended: its reason, and for a job resumed since, the job
    /// that continues it (its reason's "`scmz jobs resume` continues" is done with).
    pub fn note(&self) -> Option<String> {
        match (&self.resumed_by, &self.reason) {
            (Some(next), Some(r)) => {
                let why = r.split("`scmz jobs resume").next().unwrap_or(r);
                Some(format!(
                    "{}; resumed as job {next}",
                    why.trim_end_matches([' ', ';', ':'])
                ))
            }
            (Some(next), None) => Some(format!("resumed as job {next}")),
            (None, r) => r.clone(),
        }
    }

    /// [`Job::note`], or for a local job still queued, what it waits for (`all`: the jobs
    /// listed with it): "waiting for a cpu slot: 1 of 1 running, 2 ahead".
    pub fn note_among(&self, all: &[Job]) -> Option<String> {
        if self.state != JobState::Queued || self.backend != "local" {
            return self.note();
        }
        let same = |j: &&Job| j.backend == "local" && j.slot == self.slot;
        let running = all.iter().filter(same).filter(|j| j.state == JobState::Running).count();
        let ahead = all
            .iter()
            .filter(same)
            .filter(|j| j.state == JobState::Queued && j.id < self.id)
            .count();
        let limit = Config::load()
            .ok()
            .and_then(|c| slot_limit(&self.slot, &c).ok())
            .map_or("?".to_string(), |n| n.to_string());
        let var = if self.slot == "gpu" {
            "SCMZ_MAX_GPU_JOBS"
        } else {
            "SCMZ_MAX_CPU_JOBS"
        };
        Some(format!(
            "waiting for a {} slot: {running} of {limit} running ({var}), {ahead} ahead",
            self.slot
        ))
    }

    /// This job's part of its run's event log: the records of its run (`events::of_job`), up to
    /// the job's end where it ended (a job that resumed the run writes on after it).
    pub fn own_records(&self, records: &[crate::events::Record]) -> Vec<crate::events::Record> {
        let mut own = crate::events::of_job(records, self.engine_job_id());
        // A log whose runs name no job (older scmz, or a model copied in) is given whole: of it,
        // only what came after this job was made (a job that failed before its run started
        // showed the curves of an earlier model of its name).
        let named = records
            .iter()
            .any(|r| matches!(&r.event, crate::events::Event::Start { job: Some(_), .. }));
        if !named && self.engine_job_id().is_some() {
            own.retain(|r| crate::events::not_after(&self.created, &r.t));
        }
        if let Some(end) = self.ended.as_deref() {
            own.retain(|r| crate::events::not_after(&r.t, end));
        }
        own
    }

    /// The id its engine knows it by (`SCMZ_JOB_ID`); None for a run started in a terminal.
    pub fn engine_job_id(&self) -> Option<&str> {
        (self.backend != "terminal").then_some(self.id.as_str())
    }

    /// The run's event log: where the engine writes it while training, then the model's
    /// `history.jsonl` (the log moves there when the model is saved).
    pub fn event_log(&self) -> Option<PathBuf> {
        let events = self.events.as_ref()?;
        if events.exists() {
            return Some(events.clone());
        }
        let zoo = events.parent()?.parent()?.parent()?;
        Some(zoo.join(self.name.as_ref()?).join("history.jsonl"))
    }
}

/// The event log of the run a training request trains (its zoo relative to `cwd`, where the
/// engine runs); none for other requests.
fn run_log_of(request: &EngineRequest, cwd: Option<&Path>) -> Option<PathBuf> {
    let EngineRequest::Train(spec) = request else {
        return None;
    };
    let zoo = spec
        .zoo
        .as_ref()
        .map(|z| cwd.map_or(z.clone(), |c| c.join(z)))
        .unwrap_or_else(crate::zoo::default_zoo);
    Some(crate::zoo::Zoo::new(zoo).run_dir(&spec.name).join("events.jsonl"))
}

fn cpu_slot() -> String {
    "cpu".into()
}

/// How many local jobs of each slot may run at once: `SCMZ_MAX_GPU_JOBS` / `SCMZ_MAX_CPU_JOBS`,
/// else `max_gpu_jobs` / `max_cpu_jobs` in the config file, else 1 (one GPU job at a time; a
/// training job already uses every core). A variable that is not a count of 1 or more is refused
/// (it was read as 1 without a word).
pub fn slot_limit(slot: &str, config: &Config) -> Result<usize, JobError> {
    let (var, configured) = if slot == "gpu" {
        ("SCMZ_MAX_GPU_JOBS", config.jobs.max_gpu_jobs)
    } else {
        ("SCMZ_MAX_CPU_JOBS", config.jobs.max_cpu_jobs)
    };
    limit_of(var, std::env::var(var).ok(), configured).map_err(JobError::Backend)
}

fn limit_of(var: &str, env: Option<String>, configured: Option<usize>) -> Result<usize, String> {
    match env.filter(|v| !v.is_empty()) {
        Some(v) => match v.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            Err(e) if *e.kind() == std::num::IntErrorKind::PosOverflow => Err(format!(
                "{var}={}: too large a count; set, e.g., {var}=2",
                crate::files::printable(&v)
            )),
            _ => Err(format!(
                "{var}={}: not a count of 1 or more; unset it or set, e.g., {var}=2",
                crate::files::printable(&v)
            )),
        },
        None => Ok(configured.unwrap_or(1)),
    }
}

/// Where a job runs. The registry, `scmz jobs` and the TUI talk to jobs only through this.
pub trait Backend {
    fn name(&self) -> &'static str;
    /// Starts the supervisors of jobs whose records exist (a local job the slot limits let run,
    /// or every job of one Slurm submission, as an array when there are several).
    fn start(&self, reg: &Registry, jobs: &mut [Job]) -> Result<(), JobError>;
    /// Brings a job's record up to date with what the backend knows (a dead process, a job the
    /// scheduler ended), saving it when it changed.
    fn refresh(&self, reg: &Registry, job: Job) -> Result<Job, JobError>;
    /// Asks a running or queued job to stop; it keeps its last checkpoint.
    fn cancel(&self, reg: &Registry, job: &Job, grace: Duration) -> Result<(), JobError>;
}

/// The backend a job record names.
pub fn backend_of(job: &Job) -> Box<dyn Backend> {
    match job.backend.as_str() {
        "slurm" => Box::new(slurm::Slurm),
        _ => Box::new(local::Local),
    }
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
    #[error("{0}")]
    Backend(String),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    File(#[from] crate::files::FileError),
}

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> JobError + '_ {
    move |source| JobError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The jobs folder: `SCMZ_STATE_DIR/jobs`, else the user state (or data) directory.
pub fn default_dir() -> PathBuf {
    crate::dirs::state_dir().join("jobs")
}

/// A lock file of the registry, opened (created when missing) for flock.
fn open_lock_file(path: &Path) -> Result<std::fs::File, JobError> {
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(io(path))
}

/// A job's id: its creation time to the second, the creating process's id (last four digits,
/// zero-padded so that ids of one second still sort as text) and, after a clash, a count.
fn job_id(stamp: &str, pid: u32, n: u32) -> String {
    let pid = pid % 10_000;
    match n {
        0 => format!("{stamp}-{pid:04}"),
        n => format!("{stamp}-{pid:04}-{n}"),
    }
}

fn pid_of(pid: u32) -> Option<rustix::process::Pid> {
    i32::try_from(pid).ok().and_then(rustix::process::Pid::from_raw)
}

/// Sends `sig` to process `pid` (callers check first that it is the process they mean); false
/// when it is gone or not this user's.
pub fn send_signal(pid: u32, sig: rustix::process::Signal) -> bool {
    pid_of(pid).is_some_and(|p| rustix::process::kill_process(p, sig).is_ok())
}

/// Whether a process is alive (signal 0 probes without sending anything). A zombie (ended but not
/// yet reaped by its parent) counts as ended.
pub fn alive(pid: u32) -> bool {
    let exists = pid_of(pid).is_some_and(|p| rustix::process::test_kill_process(p).is_ok());
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

/// A `pre_exec` hook for the engine's child process: it gets SIGTERM (it checkpoints and exits)
/// when its parent, the process spawning it, dies, `kill -9` included, and exits at once if the
/// parent died before the hook ran. SIGTERM stays blocked (pending) until the engine's handler is
/// in place (`unblock_sigterm`): one arriving while libtorch loads, before `main`, would otherwise
/// end the engine without a word, and no one would record the job's end or move the queue. Only
/// async-signal-safe calls (sigprocmask, prctl, getppid, _exit).
pub fn die_with_parent() -> impl FnMut() -> std::io::Result<()> + Send + Sync + 'static {
    let parent = std::process::id() as libc::pid_t;
    move || {
        // SAFETY: plain syscalls in the forked child before exec, on a signal set on its stack.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            if libc::getppid() != parent {
                libc::_exit(143);
            }
        }
        Ok(())
    }
}

/// Lets SIGTERM through to the calling thread again (blocked by `die_with_parent` until the
/// engine can answer it); one that arrived meanwhile is delivered now.
pub fn unblock_sigterm() {
    // SAFETY: pthread_sigmask on a signal set on the stack.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
    }
}

/// When process `pid` started, in clock ticks after boot (`/proc/PID/stat`, field 22).
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces and parentheses): state is field 3.
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().nth(22 - 3).and_then(|s| s.parse().ok())
}

/// Whether `pid` is alive and still the process recorded as starting at `start` (a pid reused by
/// another process is not). Records without a start time (older scmz) also need the process to
/// be an scmz binary.
pub fn is_process(pid: u32, start: Option<u64>) -> bool {
    if !alive(pid) {
        return false;
    }
    match start {
        Some(s) => start_time(pid) == Some(s),
        None => std::fs::read_link(format!("/proc/{pid}/exe"))
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().starts_with("scmz")))
            .unwrap_or(false),
    }
}

/// What `scmz train|project ... --detach` asks for: the engine command, where to run it, and an
/// optional sweep (`n_latent=10,20,30`: one job per value, each its own model).
#[derive(Debug, Clone)]
pub struct Submission {
    pub request: EngineRequest,
    /// `local` or `slurm`.
    pub backend: String,
    pub slurm: SlurmConfig,
    pub sweep: Option<String>,
    /// `cpu` or `gpu`: which local slot the jobs take.
    pub slot: String,
    /// The folder relative paths in the request are relative to (None: the current one).
    pub cwd: Option<PathBuf>,
}

impl Submission {
    /// A local job of `request`, in the slot its device takes.
    pub fn local(request: EngineRequest) -> Self {
        Submission {
            slot: slot_of(request.device()).to_string(),
            request,
            backend: "local".into(),
            slurm: SlurmConfig::default(),
            sweep: None,
            cwd: None,
        }
    }
}

/// `gpu` when a job will use CUDA: `cuda`, or `auto` on a machine with an NVIDIA GPU.
pub fn slot_of(device: DeviceChoice) -> &'static str {
    match device {
        DeviceChoice::Cuda => "gpu",
        DeviceChoice::Cpu => "cpu",
        DeviceChoice::Auto if has_gpu() => "gpu",
        DeviceChoice::Auto => "cpu",
    }
}

/// Whether this machine has an NVIDIA GPU (its driver's first device node), as a local job's
/// `--device auto` will find it.
pub fn has_gpu() -> bool {
    Path::new("/dev/nvidia0").exists()
}

/// This machine's name, as job records keep it (`Job::host`).
pub(crate) fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
}

/// The running `scmz`'s path. Rebuilt or reinstalled while it runs, Linux names it `PATH
/// (deleted)`: then the binary now at PATH, which is the same program, newer.
pub fn running_scmz() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("scmz"));
    match exe.to_str().and_then(|p| p.strip_suffix(" (deleted)")) {
        Some(p) if Path::new(p).is_file() => PathBuf::from(p),
        _ => exe,
    }
}

/// The `scmz-engine` that sits next to the `scmz` binary `scmz`.
pub fn engine_path(scmz: &Path) -> PathBuf {
    scmz.with_file_name("scmz-engine")
}

/// The `scmz-engine` installed beside the running `scmz`.
pub fn this_engine() -> PathBuf {
    engine_path(&running_scmz())
}

/// The engine at `engine` as a command, with the environment it runs best in. libtorch's OpenMP
/// workers spin for a while after each parallel region (`GOMP_SPINCOUNT`, 300,000 by default)
/// before sleeping; between regions the engine runs its own loops (the likelihood, the sparse
/// first layer, the optimiser) and its reader, which then compete with a spinning worker for
/// the same cores. A short spin: 20,000 genes, 2 threads, 37.8 -> 33.0 ms per step. libgomp
/// reads the variable when it loads, before the engine's `main`, so every spawner sets it here;
/// a value the user set is kept.
pub fn engine_command(engine: &Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(engine);
    if std::env::var_os("GOMP_SPINCOUNT").is_none() && std::env::var_os("OMP_WAIT_POLICY").is_none() {
        cmd.env("GOMP_SPINCOUNT", "1000");
    }
    cmd
}

pub struct Registry {
    pub dir: PathBuf,
    /// The `scmz` binary whose hidden `jobs supervise` command supervises a job.
    pub scmz: PathBuf,
}

impl Registry {
    /// A registry in `dir` whose jobs are supervised by the running `scmz` binary.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Registry {
            dir: dir.into(),
            scmz: running_scmz(),
        }
    }

    pub fn job_dir(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    pub fn lock(&self) -> Result<RegistryLock, JobError> {
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let path = self.dir.join(".lock");
        if path.is_dir() {
            return Err(JobError::Backend(format!(
                "{}: is a folder, where scmz keeps the lock of its job queue; remove it",
                path.display()
            )));
        }
        let file = open_lock_file(&path)?;
        // flock(2): blocks until the lock is ours; released with the descriptor, however we end.
        file.lock().map_err(io(&path))?;
        Ok(RegistryLock { _file: file })
    }

    /// Queued jobs that may start now under the slot limits, oldest first, marked running (the
    /// caller starts their supervisors). Holds the registry lock while deciding.
    pub fn take_startable(&self) -> Result<Vec<Job>, JobError> {
        let config = Config::load()?;
        let _lock = self.lock()?;
        // Only local jobs take slots: Slurm's are not asked about here.
        let jobs: Vec<Job> = self
            .records()
            .into_iter()
            .filter_map(Result::ok)
            .filter(|j| j.backend == "local")
            .map(|j| self.refresh(j))
            .collect::<Result<_, _>>()?;
        let mut running: std::collections::HashMap<String, usize> = Default::default();
        for j in jobs.iter().filter(|j| j.state == JobState::Running) {
            *running.entry(j.slot.clone()).or_default() += 1;
        }
        let mut out = Vec::new();
        for mut j in jobs.into_iter().filter(|j| j.state == JobState::Queued) {
            let n = running.entry(j.slot.clone()).or_default();
            if *n < slot_limit(&j.slot, &config)? {
                *n += 1;
                j.state = JobState::Running;
                j.started = Some(now_rfc3339());
                self.save(&j)?;
                out.push(j);
            }
        }
        Ok(out)
    }

    /// Starts the queued local jobs the slot limits allow. There is no daemon: submissions, ending
    /// jobs and anything listing jobs call this.
    pub fn schedule(&self) -> Result<(), JobError> {
        self.start_startable()?;
        // Whatever still waits has a watcher (one killed is replaced here).
        if self.has_queued_local() {
            local::start_watcher(self)?;
        }
        Ok(())
    }

    fn start_startable(&self) -> Result<(), JobError> {
        let mut jobs = self.take_startable()?;
        for job in jobs.iter_mut() {
            if let Err(e) = local::Local.start(self, std::slice::from_mut(job)) {
                // Taken as running, never started: failed with the reason, and its slot free.
                let _lock = self.lock()?;
                let mut j = self.load(&job.id)?;
                if j.state == JobState::Running && j.supervisor_pid.is_none() {
                    j.state = JobState::Failed;
                    j.ended = Some(now_rfc3339());
                    j.reason = Some(e.to_string());
                    self.save(&j)?;
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// Whether a local job waits for a slot.
    fn has_queued_local(&self) -> bool {
        self.records()
            .into_iter()
            .filter_map(Result::ok)
            .any(|j| j.backend == "local" && j.state == JobState::Queued)
    }

    /// The queue's watcher (`scmz jobs watch`, started detached by a submission that left a job
    /// queued): while a local job waits, it calls [`Registry::schedule`] every second, so the
    /// queue moves on however the running job ends, even when its supervisor and engine are
    /// killed together and nothing is left to say so. One per registry (a lock it holds); it
    /// exits when nothing waits.
    pub fn watch_queue(&self, every: Duration) -> Result<(), JobError> {
        let Some(mut held) = self.watcher_lock()? else {
            return Ok(()); // another watcher is at work
        };
        loop {
            if !self.dir.is_dir() {
                return Ok(()); // the jobs folder was removed: nothing to watch, nothing to recreate
            }
            self.start_startable()?;
            if !self.has_queued_local() {
                // A submission that queued a job just now found the lock held and left it to
                // us: look once more after letting go, and take it back if a job waits.
                drop(held);
                if !self.has_queued_local() {
                    return Ok(());
                }
                match self.watcher_lock()? {
                    Some(again) => held = again,
                    None => return Ok(()),
                }
            }
            std::thread::sleep(every);
        }
    }

    /// The watcher's lock (`.watcher.lock`), or None while another process holds it.
    fn watcher_lock(&self) -> Result<Option<std::fs::File>, JobError> {
        let path = self.dir.join(".watcher.lock");
        let file = open_lock_file(&path)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(file)),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(io(&path)(e)),
        }
    }

    /// Records and starts jobs: local ones queue for a slot, Slurm ones are submitted at once
    /// (several as one array). Returns them as saved.
    pub fn submit(&self, mut jobs: Vec<Job>) -> Result<Vec<Job>, JobError> {
        let Some(first) = jobs.first() else {
            return Ok(jobs);
        };
        if first.backend == "local" {
            self.schedule()?;
        } else {
            if let Err(e) = backend_of(first).start(self, &mut jobs) {
                for j in jobs.iter_mut() {
                    j.state = JobState::Failed;
                    j.ended = Some(now_rfc3339());
                    j.reason = Some(e.to_string());
                    self.save(j)?;
                }
                return Err(e);
            }
        }
        jobs.iter().map(|j| self.load(&j.id)).collect()
    }

    /// Creates the jobs of a submission (one per sweep setting) and starts or queues them.
    pub fn submit_request(&self, req: &Submission) -> Result<Vec<Job>, JobError> {
        let settings = match &req.sweep {
            Some(sweep) => expand_sweep(&req.request, sweep).map_err(JobError::Backend)?,
            None => vec![req.request.clone()],
        };
        if req.backend != "local" && req.backend != "slurm" {
            return Err(JobError::Backend(format!(
                "unknown backend `{}`: use local or slurm",
                req.backend
            )));
        }
        // Nothing is queued where the queue could not be scheduled (a bad slot limit in the
        // environment or the config refuses the submission, not the queue after it); the lock
        // also keeps two submissions of one run from both finding it free.
        if req.backend == "local" {
            let config = Config::load()?;
            slot_limit("cpu", &config)?;
            slot_limit("gpu", &config)?;
        }
        let lock = self.lock()?;
        let cwd = req.cwd.clone().or_else(|| std::env::current_dir().ok());
        let mut jobs: Vec<Job> = Vec::new();
        for mut request in settings {
            // The zoo of the submission's environment, kept in the record (relative to `cwd`,
            // where the engine runs, when `SCMZ_ZOO` is).
            request.pin_zoo(crate::zoo::default_zoo());
            let events = run_log_of(&request, cwd.as_deref());
            if let Some(events) = &events {
                self.refuse_second_job_of(events, request.model_name(), &jobs)?;
            }
            let mut job = self.create(request, events)?;
            job.slot = req.slot.clone();
            job.backend = req.backend.clone();
            job.cwd = cwd.clone();
            if req.backend == "slurm" {
                job.slurm = Some(req.slurm.clone());
            }
            self.save(&job)?;
            jobs.push(job);
        }
        drop(lock);
        self.submit(jobs)
    }

    /// A training started in this terminal is refused while a job for the same run is queued or
    /// running: the job would fail when its turn came (its model saved meanwhile), or, with
    /// `--overwrite`, replace the model trained here.
    pub fn refuse_job_holding(&self, request: &EngineRequest) -> Result<(), JobError> {
        let mut request = request.clone();
        request.pin_zoo(crate::zoo::default_zoo());
        let cwd = std::env::current_dir().ok();
        let Some(events) = run_log_of(&request, cwd.as_deref()) else {
            return Ok(());
        };
        // No jobs were ever made here: nothing to lock or read.
        if !self.dir.is_dir() {
            return Ok(());
        }
        let lock = self.lock()?;
        let refused = self.refuse_second_job_of(&events, request.model_name(), &[]);
        drop(lock);
        refused
    }

    /// A training run is one job at a time: refuses a second while one for the same run
    /// (`events`: the run's event log, zoo and name) is queued or running. The caller holds the
    /// lock; `pending` are the jobs of this submission so far.
    fn refuse_second_job_of(&self, events: &Path, name: &str, pending: &[Job]) -> Result<(), JobError> {
        let same = |j: &Job| j.events.as_deref() == Some(events);
        if pending.iter().any(same) {
            return Err(JobError::Backend(format!(
                "model `{}` is named twice in this submission: give each setting its own --name",
                crate::files::printable(name)
            )));
        }
        for job in self.records().into_iter().filter_map(Result::ok).filter(|j| same(j)) {
            let job = self.refresh(job)?;
            if !job.state.is_final() {
                return Err(JobError::Backend(format!(
                    "a job for model `{}` is {} already (job {}): follow it with `scmz jobs logs {} --follow`, or cancel it with `scmz jobs cancel {}`",
                    crate::files::printable(name),
                    job.state,
                    job.id,
                    job.id,
                    job.id
                )));
            }
        }
        Ok(())
    }

    /// What `scmz jobs resume ID` submits: the ended job's request again (a training from its
    /// checkpoint), on its backend; refused for a job still running, done, or resumed already.
    pub fn resume_submission(&self, id: &str) -> Result<Submission, JobError> {
        let job = self.load(id)?;
        if !job.state.is_final() {
            return Err(JobError::Backend(format!("job {id} is {}; cancel it first", job.state)));
        }
        if job.state == JobState::Done {
            return Err(JobError::Backend(format!(
                "job {id} is done: its result is saved; there is nothing to resume"
            )));
        }
        if let Some(next) = &job.resumed_by {
            return Err(JobError::Backend(format!(
                "job {id} was resumed already, as job {next}: follow that one (`scmz jobs logs {next}`), or resume it if it stopped"
            )));
        }
        let mut request = job.request.clone();
        if let EngineRequest::Train(spec) = &mut request {
            spec.resume = true;
            spec.restart = false;
        }
        Ok(Submission {
            request,
            backend: job.backend.clone(),
            slurm: job.slurm.clone().unwrap_or_default(),
            sweep: None,
            slot: job.slot.clone(),
            cwd: job.cwd.clone(),
        })
    }

    /// Records that job `id` is continued by job `next` (read again under the queue's lock: the
    /// record may have changed while the new job was queued).
    pub fn mark_resumed(&self, id: &str, next: &str) -> Result<(), JobError> {
        let _lock = self.lock()?;
        let mut old = self.load(id)?;
        old.resumed_by = Some(next.to_string());
        self.save(&old)
    }

    /// Resumes job `id` without checking its request first (the CLI checks it with the
    /// engine): the jobs submitted.
    pub fn resume(&self, id: &str) -> Result<Vec<Job>, JobError> {
        let req = self.resume_submission(id)?;
        let jobs = self.submit_request(&req)?;
        for new in &jobs {
            self.mark_resumed(id, &new.id)?;
        }
        Ok(jobs)
    }

    /// Cancels a job through its backend and waits (up to `grace` plus a few seconds) until its
    /// record says how it ended.
    pub fn cancel(&self, id: &str, grace: Duration) -> Result<Job, JobError> {
        let mut job = {
            let _lock = self.lock()?;
            let mut job = self.refresh(self.load(id)?)?;
            if job.state.is_final() {
                return Err(JobError::Backend(format!("job {id} already ended ({})", job.state)));
            }
            job.cancel_requested = true;
            if job.state == JobState::Queued && job.backend == "local" {
                job.state = JobState::Cancelled;
                job.ended = Some(now_rfc3339());
                job.reason = Some("cancelled before it started".into());
            }
            self.save(&job)?;
            job
        };
        if job.state.is_final() {
            return Ok(job);
        }
        backend_of(&job).cancel(self, &job, grace)?;
        let t = std::time::Instant::now();
        while t.elapsed() < grace + Duration::from_secs(10) {
            job = self.refresh(self.load(id)?)?;
            if job.state.is_final() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(job)
    }

    /// The job's record brought up to date by its backend.
    pub fn refresh(&self, job: Job) -> Result<Job, JobError> {
        backend_of(&job).refresh(self, job)
    }

    /// A new queued job with a fresh id (time + pid, sortable), run by `backend`.
    pub fn create(&self, request: EngineRequest, events: Option<PathBuf>) -> Result<Job, JobError> {
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let stamp = now_rfc3339()
            .replace([':', '-'], "")
            .replace('T', "-")
            .trim_end_matches('Z')
            .to_string();
        let mut n = 0;
        let id = loop {
            let id = job_id(&stamp, std::process::id(), n);
            let dir = self.job_dir(&id);
            // create_dir fails if it exists: two scmz processes never get the same id.
            match std::fs::create_dir(&dir) {
                Ok(()) => break id,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => n += 1,
                Err(e) => return Err(io(&dir)(e)),
            }
        };
        let job = Job::new(id, request, events);
        self.save(&job)?;
        Ok(job)
    }

    /// Writes job.json atomically (temporary file, then rename).
    pub fn save(&self, job: &Job) -> Result<(), JobError> {
        let path = self.job_dir(&job.id).join("job.json");
        let bytes = serde_json::to_vec_pretty(job).expect("job serialises");
        Ok(crate::files::write_atomic(&path, &bytes)?)
    }

    pub fn load(&self, id: &str) -> Result<Job, JobError> {
        // An id names one folder of the registry, nothing through `..` or `/`.
        if id.is_empty() || id.starts_with('.') || id.contains('/') {
            return Err(JobError::NotFound(crate::files::printable(id).into_owned()));
        }
        let path = self.job_dir(id).join("job.json");
        if std::fs::symlink_metadata(&path).is_ok() {
            crate::files::require_regular(&path).map_err(|e| JobError::Bad {
                path: path.display().to_string(),
                message: e.message,
            })?;
        }
        let bytes = std::fs::read(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => JobError::NotFound(id.to_string()),
            _ => io(&path)(e),
        })?;
        let bad = |message: String| JobError::Bad {
            path: path.display().to_string(),
            message,
        };
        let mut record: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
        // A record is run as the engine command its kind names: an edited kind must not pick
        // another command.
        let kind = record
            .get("kind")
            .and_then(|k| k.as_str())
            .unwrap_or_default()
            .to_string();
        if !EngineRequest::KINDS.contains(&kind.as_str()) {
            return Err(bad(format!(
                "its kind `{}` is not one scmz runs as a job ({})",
                crate::files::printable(&kind),
                EngineRequest::KINDS.join(", ")
            )));
        }
        migrate_args(&mut record, &kind).map_err(bad)?;
        let job: Job = serde_json::from_value(record).map_err(|e| bad(e.to_string()))?;
        // Its times order its progress against its run's log: one that is not a time is named.
        let times = [
            ("created", Some(&job.created)),
            ("started", job.started.as_ref()),
            ("ended", job.ended.as_ref()),
        ];
        for (field, t) in times {
            if let Some(t) = t.filter(|t| crate::events::seconds_since(t).is_none()) {
                return Err(bad(format!(
                    "its `{field}` time `{}` is not an RFC 3339 time",
                    crate::files::printable(t)
                )));
            }
        }
        Ok(job)
    }

    /// Every job record as written, oldest first.
    pub fn records(&self) -> Vec<Result<Job, JobError>> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut ids: Vec<String> = entries
            .flatten()
            .filter(|e| e.path().join("job.json").exists())
            .map(|e| e.file_name().to_string_lossy().to_string())
            .collect();
        ids.sort();
        ids.iter().map(|id| self.load(id)).collect()
    }

    /// Every job, oldest first, brought up to date by its backend (dead supervisors detected,
    /// Slurm's view of pending and ended jobs).
    pub fn list(&self) -> Vec<Result<Job, JobError>> {
        self.records()
            .into_iter()
            .map(|j| j.and_then(|j| self.refresh(j)))
            .collect()
    }
}

/// Records of scmz before typed specs kept the engine's command line (`"args"`): it is parsed
/// as the engine parsed it into the spec they hold now.
fn migrate_args(record: &mut serde_json::Value, kind: &str) -> Result<(), String> {
    let Some(obj) = record.as_object_mut() else {
        return Ok(());
    };
    if obj.contains_key("spec") {
        return Ok(());
    }
    let Some(args) = obj.remove("args") else {
        return Ok(());
    };
    let mut args: Vec<String> =
        serde_json::from_value(args).map_err(|e| format!("its `args` are not a command line ({e})"))?;
    // Older `scmz jobs resume` appended `--resume`, after a `--` too.
    if args.contains(&"--".to_string()) && args.last().is_some_and(|a| a == "--resume") {
        args.pop();
        args.insert(0, "--resume".into());
    }
    let request = EngineRequest::parse(kind, &args).map_err(|e| format!("its `args` do not parse ({e})"))?;
    let spec = serde_json::to_value(&request)
        .ok()
        .and_then(|mut v| v.get_mut("spec").map(serde_json::Value::take))
        .ok_or("its `args` cannot be written as a spec; use UTF-8 file names")?;
    obj.insert("spec".into(), spec);
    Ok(())
}

/// Training runs in a zoo that no job record covers: started in a terminal with `scmz train`
/// (without `--detach`), perhaps from another SSH session. They are shown beside jobs as rows of
/// backend `terminal`, id `run:NAME`: running while their event log grows (the engine writes a
/// step event every half second), else interrupted (`--resume` continues them).
pub fn terminal_runs(zoo: &Path, jobs: &[Job]) -> Vec<Job> {
    let Ok(entries) = std::fs::read_dir(zoo.join(".runs")) else {
        return Vec::new();
    };
    let mut out: Vec<Job> = entries
        .flatten()
        .filter_map(|e| {
            let events = e.path().join("events.jsonl");
            let modified = std::fs::metadata(&events).and_then(|m| m.modified()).ok()?;
            if jobs.iter().any(|j| j.events.as_deref() == Some(events.as_path())) {
                return None;
            }
            let name = e.file_name().to_string_lossy().to_string();
            let idle = modified.elapsed().unwrap_or_default();
            let running = idle < Duration::from_secs(60);
            // Shown, never run: the spec names the run; its settings are in the run's log.
            let mut spec = crate::spec::TrainSpec::defaults("-".into(), name.clone());
            spec.data.clear();
            spec.zoo = Some(zoo.to_path_buf());
            let mut job = Job::new(
                format!("run:{name}"),
                EngineRequest::Train(Box::new(spec)),
                Some(events),
            );
            job.backend = "terminal".into();
            job.created = crate::events::rfc3339(modified);
            job.state = if running { JobState::Running } else { JobState::Failed };
            job.reason = (!running).then(|| {
                format!("interrupted (started in a terminal); `scmz train ... --name {name} --resume` continues")
            });
            Some(job)
        })
        .collect();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

/// Records how the engine ended: exit code 0 done; 143 (SIGTERM handled, checkpoint kept)
/// cancelled when `scmz jobs cancel` asked for it, else failed (a time limit, preemption or a
/// stray kill); anything else failed.
pub fn finish(job: &mut Job, status: std::process::ExitStatus) {
    use std::os::unix::process::ExitStatusExt;
    job.ended = Some(now_rfc3339());
    job.exit_code = status.code();
    job.signal = status.signal();
    let terminated = matches!(
        (status.code(), status.signal()),
        (Some(143), _) | (_, Some(libc::SIGTERM))
    );
    job.state = match status.code() {
        Some(0) => JobState::Done,
        _ if terminated && job.cancel_requested => JobState::Cancelled,
        _ => JobState::Failed,
    };
    job.reason = match (job.state, status.code(), status.signal()) {
        (JobState::Done, _, _) => None,
        (JobState::Cancelled, _, _) => Some(job.stopped_reason("cancelled")),
        _ if terminated => {
            Some(job.stopped_reason("stopped by SIGTERM from outside scmz (a time limit, preemption or kill)"))
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
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn train(name: &str) -> EngineRequest {
        EngineRequest::Train(Box::new(crate::spec::TrainSpec::defaults("d.h5ad".into(), name.into())))
    }

    /// Ids of one second sort in the order of their process ids whatever their digit count
    /// (a job of pid 991 was once listed after one of pid 1009 created in the same second, so
    /// the Jobs screen showed the newer job second and counted the older one "ahead" of it).
    #[test]
    fn ids_of_one_second_sort_as_numbers_do() {
        let ids: Vec<String> = [(991, 0), (1009, 0), (1009, 1), (7, 0), (123_456, 0)]
            .iter()
            .map(|&(pid, n)| job_id("20261206-231156", pid, n))
            .collect();
        assert_eq!(ids[0], "20261206-231156-0991");
        assert_eq!(ids[2], "20261206-231156-1009-1");
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(sorted, [&ids[3], &ids[0], &ids[1], &ids[2], &ids[4]].map(String::clone));
        assert!(job_id("20261206-231156", 9999, 0) < job_id("20261206-231157", 1, 0));
    }

    /// Records of scmz before specs (`"args"`) load as the spec their command line gave; a
    /// command line the engine would refuse makes the record damaged, named.
    /// A record whose times are not times is named damaged (its progress is cut by them).
    #[test]
    fn a_record_with_a_garbage_time_is_damaged() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::new(dir.path());
        let request = EngineRequest::Train(Box::new(crate::spec::TrainSpec::defaults("d.h5ad".into(), "m".into())));
        let mut job = reg.create(request, None).unwrap();
        job.ended = Some("2026-12-06 04:09:33".into());
        reg.save(&job).unwrap();
        let e = reg.load(&job.id).unwrap_err().to_string();
        assert!(
            e.contains("damaged") && e.contains("`ended` time `2026-12-06 04:09:33`"),
            "{e}"
        );
        job.ended = Some(crate::events::now_rfc3339());
        reg.save(&job).unwrap();
        assert!(reg.load(&job.id).is_ok());
        // Ids are folder names of the registry, nothing that walks out of it or back in.
        for id in [format!("{}/../{}", job.id, job.id), "..".into(), String::new()] {
            assert!(matches!(reg.load(&id), Err(JobError::NotFound(_))), "{id}");
        }
    }

    /// Every spawner starts the engine with a short OpenMP spin, unless the user chose one.
    #[test]
    fn the_engine_starts_with_a_short_spin() {
        let cmd = engine_command(Path::new("scmz-engine"));
        let spin = cmd
            .get_envs()
            .find(|(k, _)| *k == "GOMP_SPINCOUNT")
            .and_then(|(_, v)| v.map(|v| v.to_string_lossy().into_owned()));
        let chosen = std::env::var_os("GOMP_SPINCOUNT").is_some() || std::env::var_os("OMP_WAIT_POLICY").is_some();
        assert_eq!(spin, (!chosen).then(|| "1000".to_string()));
    }

    #[test]
    fn records_with_a_command_line_load_as_specs() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::new(dir.path());
        let job = reg.create(train("m"), None).unwrap();
        let path = reg.job_dir(&job.id).join("job.json");
        let mut old: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        old.as_object_mut().unwrap().remove("spec");
        old["args"] = serde_json::json!(["x.h5ad", "--name", "old", "--n-latent", "7", "--norm", "layer"]);
        std::fs::write(&path, serde_json::to_vec(&old).unwrap()).unwrap();
        let EngineRequest::Train(spec) = reg.load(&job.id).unwrap().request else {
            panic!("not a training")
        };
        assert_eq!((spec.name.as_str(), spec.n_latent), ("old", 7));
        assert_eq!(spec.norm, crate::spec::Norm::Layer);
        assert_eq!(spec.data, [PathBuf::from("x.h5ad")]);
        old["args"] = serde_json::json!(["--name", "old", "--", "-x.h5ad", "--resume"]);
        std::fs::write(&path, serde_json::to_vec(&old).unwrap()).unwrap();
        let EngineRequest::Train(spec) = reg.load(&job.id).unwrap().request else {
            panic!("not a training")
        };
        assert!(spec.resume);
        assert_eq!(spec.data, [PathBuf::from("-x.h5ad")]);
        old["args"] = serde_json::json!(["x.h5ad", "--name", "old", "--norm", "lyer"]);
        std::fs::write(&path, serde_json::to_vec(&old).unwrap()).unwrap();
        let e = reg.load(&job.id).unwrap_err().to_string();
        assert!(e.contains("job.json") && e.contains("lyer"), "{e}");
    }

    #[test]
    fn jobs_round_trip_and_dead_supervisors_are_detected() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::new(dir.path());
        let mut a = reg.create(train("m"), None).unwrap();
        let b = reg.create(train("n"), None).unwrap();
        assert_ne!(a.id, b.id);
        assert_eq!(reg.load(&a.id).unwrap(), a);
        // A supervisor pid that cannot exist.
        a.state = JobState::Running;
        a.supervisor_pid = Some(u32::MAX / 2);
        reg.save(&a).unwrap();
        let listed: Vec<Job> = reg.list().into_iter().map(Result::unwrap).collect();
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0].state, JobState::Failed);
        assert!(listed[0].reason.as_deref().unwrap().contains("supervisor was killed"));
        assert!(alive(std::process::id()));
        assert!(matches!(reg.load("nope"), Err(JobError::NotFound(_))));
    }

    /// A job that exited with an error code says the engine's error in its reason.
    #[test]
    fn a_failed_job_gives_the_engines_error_as_its_reason() {
        use std::os::unix::process::ExitStatusExt;
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("stderr.log");
        std::fs::write(
            &log,
            "epoch 1/5 ...\nerror: x.h5ad: obs has no column `nosuch`; name one of: cell_type\n\n",
        )
        .unwrap();
        let mut j = Job::new("a".into(), train("m"), None);
        finish(&mut j, std::process::ExitStatus::from_raw(1 << 8));
        assert!(j.reason.as_deref().unwrap().starts_with("exited with code 1"));
        supervise::explain_failure(&mut j, &log);
        assert_eq!(
            j.reason.as_deref(),
            Some("x.h5ad: obs has no column `nosuch`; name one of: cell_type (exit code 1; `scmz jobs logs a`)")
        );
        // A cancel, a kill or a log without an error line keeps its own reason.
        let mut k = Job::new("b".into(), train("m"), None);
        finish(&mut k, std::process::ExitStatus::from_raw(9));
        let before = k.reason.clone();
        supervise::explain_failure(&mut k, &log);
        assert_eq!(k.reason, before);
        std::fs::write(&log, "no error here\n").unwrap();
        let mut n = Job::new("c".into(), train("m"), None);
        finish(&mut n, std::process::ExitStatus::from_raw(2 << 8));
        let before = n.reason.clone();
        supervise::explain_failure(&mut n, &log);
        assert_eq!(n.reason, before);
    }

    /// `resume` submits an ended training again from its checkpoint, on its backend; it refuses
    /// a job still running, one done, and one resumed already.
    #[test]
    fn resume_submits_an_ended_job_again_and_refuses_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::new(dir.path());
        let mut j = Job::new("a".into(), train("m"), None);
        for (state, why) in [
            (JobState::Running, "cancel it first"),
            (JobState::Done, "nothing to resume"),
        ] {
            j.state = state;
            std::fs::create_dir_all(reg.job_dir(&j.id)).unwrap();
            reg.save(&j).unwrap();
            let e = reg.resume_submission("a").unwrap_err().to_string();
            assert!(e.contains(why), "{e}");
        }
        j.state = JobState::Failed;
        reg.save(&j).unwrap();
        let req = reg.resume_submission("a").unwrap();
        assert!(matches!(&req.request, EngineRequest::Train(s) if s.resume && !s.restart));
        reg.mark_resumed("a", "b").unwrap();
        let e = reg.resume_submission("a").unwrap_err().to_string();
        assert!(e.contains("resumed already, as job b"), "{e}");
    }

    /// A job whose supervisor cannot start (scmz moved while running) is recorded failed with
    /// the reason, not running for ever with its slot taken.
    #[test]
    fn a_job_that_cannot_start_is_failed_not_running() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry {
            dir: dir.path().to_path_buf(),
            scmz: dir.path().join("gone/scmz"),
        };
        let e = reg
            .submit_request(&Submission::local(train("m")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot start the job supervisor"), "{e}");
        let jobs: Vec<Job> = reg.records().into_iter().map(Result::unwrap).collect();
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs[0].state, JobState::Failed, "{:?}", jobs[0]);
        assert!(jobs[0].reason.as_deref().unwrap().contains("cannot start"));
    }

    /// Of a log whose runs name no job (a model copied in, older scmz), a job sees only what
    /// came after it was made: one that failed before its run started showed an earlier run.
    #[test]
    fn a_job_does_not_take_an_older_unnamed_run_for_its_own() {
        let rec = |t: &str| crate::events::Record {
            t: t.into(),
            event: crate::events::Event::Checkpoint { epoch: 0 },
        };
        let log = vec![rec("2026-11-25T10:00:00Z"), rec("2026-11-25T12:00:00Z")];
        let mut j = Job::new("a".into(), train("m"), None);
        j.created = "2026-11-25T11:00:00Z".into();
        assert_eq!(j.own_records(&log).len(), 1);
        j.created = "2026-11-25T13:00:00Z".into();
        assert!(j.own_records(&log).is_empty());
    }

    /// Only a training keeps a checkpoint; a stopped projection is run again by `resume`.
    #[test]
    fn a_stopped_job_says_what_resume_does_for_its_kind() {
        let t = Job::new("a".into(), train("m"), None).stopped_reason("cancelled");
        assert!(t.contains("checkpoint") && t.contains("scmz jobs resume a"), "{t}");
        let spec = crate::spec::ProjectSpec::defaults("d.h5ad".into(), "m".into());
        let p = Job::new("b".into(), EngineRequest::Project(Box::new(spec)), None).stopped_reason("cancelled");
        assert_eq!(p, "cancelled: `scmz jobs resume b` runs it again");
    }

    #[test]
    fn a_resumed_job_names_the_job_that_continues_it() {
        let mut j = Job::new("a".into(), train("m"), None);
        j.reason = Some("cancelled; the last checkpoint is kept: `scmz jobs resume a` continues".into());
        assert_eq!(j.note().unwrap(), j.reason.clone().unwrap());
        j.resumed_by = Some("b".into());
        assert_eq!(
            j.note().unwrap(),
            "cancelled; the last checkpoint is kept; resumed as job b"
        );
        j.reason = None;
        assert_eq!(j.note().unwrap(), "resumed as job b");
    }

    #[test]
    fn slot_limits_come_from_the_config_file_unless_the_environment_says() {
        let c = Config::parse("[jobs]\nmax_cpu_jobs = 3\n").unwrap();
        if std::env::var_os("SCMZ_MAX_CPU_JOBS").is_none() {
            assert_eq!(slot_limit("cpu", &c).unwrap(), 3);
        }
        if std::env::var_os("SCMZ_MAX_GPU_JOBS").is_none() {
            assert_eq!(slot_limit("gpu", &c).unwrap(), 1);
        }
        let v = "SCMZ_MAX_CPU_JOBS";
        assert_eq!(limit_of(v, Some("4".into()), Some(3)), Ok(4));
        assert_eq!(limit_of(v, Some(String::new()), Some(3)), Ok(3));
        assert_eq!(limit_of(v, None, None), Ok(1));
        for bad in ["0", "abc", "-1", "2.5"] {
            let e = limit_of(v, Some(bad.into()), Some(3)).unwrap_err();
            assert!(e.starts_with(&format!("SCMZ_MAX_CPU_JOBS={bad}: not a count")), "{e}");
        }
        let e = Config::parse("[jobs]\nmax_gpu_jobs = 0\n").unwrap_err();
        assert!(e.contains("max_gpu_jobs = 0") && e.contains("at least 1"), "{e}");
    }
}
