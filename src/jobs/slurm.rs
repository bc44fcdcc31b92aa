//! The Slurm backend: a job's supervisor runs on a compute node, submitted with `sbatch` (one
//! batch script per submission in the first job's folder; several jobs form one job array).
//! The job folder must sit on a filesystem the compute nodes share: the supervisor writes the
//! job's record, logs and event log there, so `scmz jobs`, `logs --follow` and the TUI read
//! Slurm jobs exactly as local ones. State comes from the job's own record first, then from
//! `squeue`, `scontrol show job` and `sacct` (when the cluster keeps accounting) for jobs that are
//! pending or that Slurm ended before they could record it (time limit, node failure).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::{Backend, Job, JobError, JobState, Registry};
use crate::config::SlurmConfig;
use crate::events::now_rfc3339;

pub struct Slurm;

/// Runs a Slurm client command; `Err` holds one line saying what went wrong.
fn slurm_cmd(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program).args(args).output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            format!(
                "`{program}` not found on PATH: the slurm backend needs Slurm's client commands (run scmz on a \
                 login node of the cluster, or use --backend local)"
            )
        } else {
            format!("cannot run `{program}`: {e}")
        }
    })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        let line = err
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(|l| {
                l.trim_start_matches(&format!("{program}: "))
                    .trim_start_matches("error: ")
            })
            .collect::<Vec<_>>()
            .join("; ");
        Err(format!("{program} failed: {line}"))
    }
}

/// A word for a POSIX shell, single-quoted.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The batch script that runs the supervisors of `jobs` (an array when there are several).
pub fn batch_script(reg: &Registry, jobs: &[Job], opts: &SlurmConfig) -> String {
    let first = &jobs[0];
    let jd = reg.job_dir(&first.id);
    let mut s = String::from("#!/bin/sh\n");
    let name = format!("scmz-{}-{}", first.kind(), first.name.as_deref().unwrap_or("job"));
    s += &format!("#SBATCH --job-name={}\n", name.replace(char::is_whitespace, "_"));
    let pattern = if jobs.len() > 1 {
        "slurm-%A_%a.out"
    } else {
        "slurm-%j.out"
    };
    s += &format!("#SBATCH --output={}\n", jd.join(pattern).display());
    if jobs.len() > 1 {
        s += &format!("#SBATCH --array=0-{}\n", jobs.len() - 1);
    }
    if let Some(p) = &opts.partition {
        s += &format!("#SBATCH --partition={p}\n");
    }
    if let Some(t) = &opts.time {
        s += &format!("#SBATCH --time={t}\n");
    }
    if let Some(m) = &opts.mem {
        s += &format!("#SBATCH --mem={m}\n");
    }
    if let Some(g) = opts.gpus.filter(|&g| g > 0) {
        s += &format!("#SBATCH --gres=gpu:{g}\n");
    }
    for e in &opts.extra {
        s += &format!("#SBATCH {e}\n");
    }
    s += "# Written by scmz: runs the job's supervisor, which starts scmz-engine (CUDA when the node has it)\n";
    s += "# and records the job's state, logs and event log in the job folder.\n";
    let supervise = |id: &str| {
        format!(
            "exec {} jobs supervise {} --dir {}",
            quote(&reg.scmz.display().to_string()),
            quote(id),
            quote(&reg.dir.display().to_string())
        )
    };
    if jobs.len() == 1 {
        s += &supervise(&first.id);
        s += "\n";
    } else {
        s += "case \"$SLURM_ARRAY_TASK_ID\" in\n";
        for (i, j) in jobs.iter().enumerate() {
            s += &format!("  {i}) {} ;;\n", supervise(&j.id));
        }
        s += "esac\necho \"scmz: no job for array task $SLURM_ARRAY_TASK_ID\" >&2\nexit 1\n";
    }
    s
}

/// A note when the job folder may not be visible from the compute nodes: it is on a local
/// filesystem and the cluster has nodes other than this machine. `None` when it is shared, or
/// when the only node is this machine.
pub fn shared_filesystem_note(dir: &Path) -> Option<String> {
    let here = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    // Without Slurm's clients the submission itself fails, with its own message.
    let nodes = slurm_cmd("sinfo", &["-h", "-o", "%n"]).ok()?;
    let nodes: std::collections::BTreeSet<&str> = nodes.split_whitespace().collect();
    if !nodes.is_empty() && nodes.iter().all(|n| *n == here.trim()) {
        return None;
    }
    let kind = crate::dirs::filesystem_kind(dir);
    match kind {
        Some(("network", _)) => None,
        Some((_, name)) => Some(format!(
            "{} is on a local filesystem ({name}); the compute nodes must see it: set SCMZ_STATE_DIR (and SCMZ_ZOO) \
             to a shared path",
            dir.display()
        )),
        None => Some(format!(
            "cannot tell whether {} is on a filesystem the compute nodes share; if it is not, set SCMZ_STATE_DIR \
             (and SCMZ_ZOO) to a shared path",
            dir.display()
        )),
    }
}

/// Slurm's view of a job: its state word (PENDING, RUNNING, COMPLETED, TIMEOUT, ...) and reason.
pub fn slurm_state(slurm_id: &str) -> Result<Option<(String, String)>, String> {
    let q = slurm_cmd("squeue", &["-h", "-j", slurm_id, "-o", "%T|%r"]).unwrap_or_default();
    if let Some(line) = q.lines().find(|l| !l.trim().is_empty()) {
        let (state, reason) = line.split_once('|').unwrap_or((line, ""));
        return Ok(Some((state.trim().to_string(), reason.trim().to_string())));
    }
    if let Ok(text) = slurm_cmd("scontrol", &["show", "job", slurm_id]) {
        let field = |key: &str| {
            text.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .map(|v| v.to_string())
        };
        if let Some(state) = field("JobState=") {
            return Ok(Some((state, field("Reason=").unwrap_or_default())));
        }
    }
    // Clusters with accounting remember jobs long after scontrol forgets them.
    match slurm_cmd("sacct", &["-n", "-X", "-P", "-j", slurm_id, "-o", "State,Reason"]) {
        Ok(text) => Ok(text.lines().find(|l| !l.trim().is_empty()).map(|l| {
            let (state, reason) = l.split_once('|').unwrap_or((l, ""));
            // sacct writes "CANCELLED by 0".
            let state = state.split_whitespace().next().unwrap_or("").to_string();
            (state, reason.trim().to_string())
        })),
        Err(e) if e.contains("not found on PATH") => Err(e),
        Err(_) => Ok(None),
    }
}

fn is_final_slurm_state(s: &str) -> bool {
    matches!(
        s,
        "COMPLETED"
            | "FAILED"
            | "CANCELLED"
            | "TIMEOUT"
            | "NODE_FAIL"
            | "OUT_OF_MEMORY"
            | "PREEMPTED"
            | "BOOT_FAIL"
            | "DEADLINE"
            | "SPECIAL_EXIT"
            | "REVOKED"
    )
}

/// Why Slurm ended a job, in words a user can act on.
fn reason_for(state: &str, reason: &str) -> String {
    let detail = if reason.is_empty() || reason == "None" {
        String::new()
    } else {
        format!(", {reason}")
    };
    match state {
        "TIMEOUT" => format!(
            "over its time limit (Slurm: TIMEOUT{detail}); `scmz jobs resume` continues from the last checkpoint"
        ),
        "NODE_FAIL" => format!("its node failed (Slurm: NODE_FAIL{detail}); `scmz jobs resume` continues"),
        "OUT_OF_MEMORY" => format!("out of memory (Slurm: OUT_OF_MEMORY{detail}); resume with a larger --mem"),
        "PREEMPTED" => format!("preempted (Slurm: PREEMPTED{detail}); `scmz jobs resume` continues"),
        "CANCELLED" => format!("cancelled outside scmz (Slurm: CANCELLED{detail})"),
        _ => format!("ended by Slurm ({state}{detail}) before the job recorded its end; see the slurm-*.out file in the job folder"),
    }
}

impl Backend for Slurm {
    fn name(&self) -> &'static str {
        "slurm"
    }

    fn start(&self, reg: &Registry, jobs: &mut [Job]) -> Result<(), JobError> {
        let opts = jobs[0].slurm.clone().unwrap_or_default();
        let script = batch_script(reg, jobs, &opts);
        let path = reg.job_dir(&jobs[0].id).join("job.sbatch");
        std::fs::write(&path, script).map_err(super::io(&path))?;
        let out = slurm_cmd("sbatch", &["--parsable", &path.display().to_string()]).map_err(JobError::Backend)?;
        // `--parsable` prints "id" or "id;cluster".
        let id = out.trim().split(';').next().unwrap_or("").trim().to_string();
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
            return Err(JobError::Backend(format!(
                "sbatch printed no job id (got `{}`)",
                out.trim()
            )));
        }
        let array = jobs.len() > 1;
        for (i, j) in jobs.iter_mut().enumerate() {
            j.slurm_id = Some(if array { format!("{id}_{i}") } else { id.clone() });
            reg.save(j)?;
        }
        Ok(())
    }

    fn refresh(&self, reg: &Registry, job: Job) -> Result<Job, JobError> {
        let Some(sid) = job.slurm_id.clone() else {
            return Ok(job);
        };
        let refine = job.state == JobState::Failed
            && job
                .reason
                .as_deref()
                .is_some_and(|r| r.starts_with("stopped by SIGTERM"));
        if job.state.is_final() && !refine {
            // The job's own record is the final word.
            return Ok(job);
        }
        let Ok(Some((state, reason))) = slurm_state(&sid) else {
            return Ok(job);
        };
        let mut job = job;
        if refine {
            // While Slurm cleans up, the state reads COMPLETING but the reason already says why.
            let state = if reason == "TimeLimit" {
                "TIMEOUT"
            } else {
                state.as_str()
            };
            if matches!(state, "TIMEOUT" | "PREEMPTED" | "NODE_FAIL") {
                job.reason = Some(reason_for(state, &reason));
                reg.save(&job)?;
            }
            return Ok(job);
        }
        if state == "PENDING" && job.state == JobState::Queued {
            let note = format!("pending in Slurm ({reason})");
            if job.reason.as_deref() != Some(note.as_str()) {
                job.reason = Some(note);
                reg.save(&job)?;
            }
            return Ok(job);
        }
        if !is_final_slurm_state(&state) {
            return Ok(job);
        }
        // Slurm says it ended; the supervisor may have recorded it just now.
        let mut job = reg.load(&job.id)?;
        if job.state.is_final() {
            return Ok(job);
        }
        // Its engine still runs here (its supervisor was killed: it stops at its next step and
        // records why itself), so Slurm's word waits until it is gone.
        let here = super::hostname();
        if job.host.is_some() && job.host == here && job.pid.is_some_and(|p| super::is_process(p, job.pid_start)) {
            return Ok(job);
        }
        // Even COMPLETED is a failure here: the batch script ended but the supervisor never
        // recorded the end.
        job.state = if state == "CANCELLED" && job.cancel_requested {
            JobState::Cancelled
        } else {
            JobState::Failed
        };
        job.reason = Some(if job.state == JobState::Cancelled {
            if job.started.is_some() {
                job.stopped_reason("cancelled")
            } else {
                "cancelled before it started".into()
            }
        } else if state == "COMPLETED" {
            "the Slurm job ended without the job recording its end; see the slurm-*.out file in the job folder".into()
        } else {
            reason_for(&state, &reason)
        });
        job.ended = Some(now_rfc3339());
        reg.save(&job)?;
        Ok(job)
    }

    fn cancel(&self, _reg: &Registry, job: &Job, _grace: Duration) -> Result<(), JobError> {
        let Some(sid) = &job.slurm_id else {
            return Err(JobError::Backend(format!("job {} has no Slurm job id", job.id)));
        };
        // Slurm sends SIGTERM (the supervisor forwards it; the engine checkpoints), then SIGKILL
        // after the cluster's KillWait.
        slurm_cmd("scancel", &[sid]).map_err(JobError::Backend)?;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn batch_scripts_request_what_was_asked_and_run_the_supervisor() {
        let dir = tempfile::tempdir().unwrap();
        let mut reg = Registry::new(dir.path());
        reg.scmz = "/opt/it's/scmz".into();
        let a = reg.create(crate::jobs::tests::train("m-a"), None).unwrap();
        let b = reg.create(crate::jobs::tests::train("m-b"), None).unwrap();
        let opts = SlurmConfig {
            partition: Some("gpu".into()),
            time: Some("01:00:00".into()),
            mem: Some("8G".into()),
            gpus: Some(2),
            extra: vec!["--account=lab".into()],
        };
        let one = batch_script(&reg, std::slice::from_ref(&a), &opts);
        for line in [
            "#SBATCH --partition=gpu",
            "#SBATCH --time=01:00:00",
            "#SBATCH --mem=8G",
            "#SBATCH --gres=gpu:2",
            "#SBATCH --account=lab",
            "exec '/opt/it'\\''s/scmz' jobs supervise",
        ] {
            assert!(one.contains(line), "{line} missing from\n{one}");
        }
        assert!(!one.contains("--array"));
        let two = batch_script(&reg, &[a.clone(), b.clone()], &SlurmConfig::default());
        assert!(two.contains("#SBATCH --array=0-1"), "{two}");
        assert!(
            two.contains(&format!("  1) exec '/opt/it'\\''s/scmz' jobs supervise '{}'", b.id)),
            "{two}"
        );
        assert!(!two.contains("--partition"));
        // Every branch ends with `;;` and the script is valid POSIX shell.
        assert_eq!(two.matches(" ;;\n").count(), 2, "{two}");
        let path = dir.path().join("t.sh");
        std::fs::write(&path, &two).unwrap();
        let ok = std::process::Command::new("sh").arg("-n").arg(&path).status().unwrap();
        assert!(ok.success(), "{two}");
    }

    #[test]
    fn slurm_reasons_are_actionable() {
        assert!(reason_for("TIMEOUT", "TimeLimit").contains("time limit"));
        assert!(reason_for("OUT_OF_MEMORY", "").contains("--mem"));
        assert!(is_final_slurm_state("TIMEOUT") && !is_final_slurm_state("PENDING"));
    }
}
