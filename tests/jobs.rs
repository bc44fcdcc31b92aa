//! Background jobs with real detached processes: they outlive the command that started them,
//! report SIGKILL as a failure that `resume` finishes, and end `cancelled` with a checkpoint.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{data, stderr, stdout};
use serde_json::Value;

fn scmz(args: &[&str], root: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_scmz"))
        .args(args)
        .env("SCMZ_ZOO", root.join("zoo"))
        .env("SCMZ_STATE_DIR", root.join("state"))
        .env("SCMZ_CONFIG", root.join("config.toml"))
        .env_remove("SCMZ_MAX_CPU_JOBS")
        .output()
        .unwrap()
}

fn jobs(root: &Path) -> Vec<Value> {
    let o = scmz(&["jobs", "--json"], root);
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn job(root: &Path, id: &str) -> Value {
    jobs(root).into_iter().find(|j| j["id"] == id).unwrap()
}

fn wait_for(root: &Path, id: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let t = Instant::now();
    loop {
        let j = job(root, id);
        if ok(&j) {
            return j;
        }
        assert!(t.elapsed() < Duration::from_secs(180), "job {id} never {what}: {j:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn submit(root: &Path, name: &str, epochs: &str) -> String {
    let pbmc = data("pbmc68k_counts.h5ad");
    let o = scmz(
        &[
            "train",
            pbmc.to_str().unwrap(),
            "--name",
            name,
            "--epochs",
            epochs,
            "--detach",
        ],
        root,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    out.split_whitespace().nth(1).unwrap().to_string()
}

fn checkpointed(root: &Path, name: &str) -> bool {
    std::fs::read_to_string(root.join("zoo/.runs").join(name).join("events.jsonl"))
        .is_ok_and(|l| l.matches("\"event\":\"checkpoint\"").count() >= 2)
}

#[test]
fn a_detached_training_job_finishes_after_its_parent_has_exited() {
    let root = tempfile::tempdir().unwrap();
    // `scmz train --detach` has returned (and exited) by the time the job runs.
    let id = submit(root.path(), "bg", "15");
    let j = wait_for(root.path(), &id, "finished", |j| j["state"] == "done");
    assert_eq!(j["exit_code"], 0);
    assert!(root.path().join("zoo/bg/manifest.json").exists());
    // The record keeps the zoo of the submission: a resume with another SCMZ_ZOO uses it too.
    assert_eq!(j["spec"]["zoo"], root.path().join("zoo").to_str().unwrap(), "{j:#}");
    let o = scmz(&["jobs"], root.path());
    assert!(stdout(&o).contains("epoch 15/15"), "{}", stdout(&o));
    let o = scmz(&["jobs", "logs", &id], root.path());
    assert!(stdout(&o).contains("model `bg` saved"), "{}", stdout(&o));
}

#[test]
fn sigkill_is_reported_as_failed_and_resume_finishes_the_run() {
    let root = tempfile::tempdir().unwrap();
    // Submitted with a relative dataset path from a folder of its own, resumed from another.
    let here = root.path().join("here");
    std::fs::create_dir_all(&here).unwrap();
    std::fs::copy(data("pbmc68k_counts.h5ad"), here.join("cells.h5ad")).unwrap();
    let in_folder = |dir: &Path, args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_scmz"))
            .args(args)
            .current_dir(dir)
            .env("SCMZ_ZOO", root.path().join("zoo"))
            .env("SCMZ_STATE_DIR", root.path().join("state"))
            .env("SCMZ_CONFIG", root.path().join("config.toml"))
            .env_remove("SCMZ_MAX_CPU_JOBS")
            .output()
            .unwrap()
    };
    let o = in_folder(
        &here,
        &[
            "train",
            "cells.h5ad",
            "--name",
            "killed",
            "--epochs",
            "300",
            "--patience",
            "0",
            "--detach",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let id = stdout(&o).split_whitespace().nth(1).unwrap().to_string();
    let j = wait_for(root.path(), &id, "checkpointed", |j| {
        j["state"] == "running" && checkpointed(root.path(), "killed")
    });
    let pid = j["pid"].as_i64().unwrap() as i32;
    // SAFETY: kill(2) on the job's engine, whose pid its record gives.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let j = wait_for(root.path(), &id, "failed", |j| j["state"] == "failed");
    assert_eq!(j["signal"], 9);
    assert!(j["reason"].as_str().unwrap().contains("SIGKILL"), "{j:#}");
    assert!(!root.path().join("zoo/killed").exists());
    // Two resumes at once: one job continues the run, the other is refused.
    let resume = || {
        Command::new(env!("CARGO_BIN_EXE_scmz"))
            .args(["jobs", "resume", &id])
            .current_dir("/")
            .env("SCMZ_ZOO", root.path().join("zoo"))
            .env("SCMZ_STATE_DIR", root.path().join("state"))
            .env("SCMZ_CONFIG", root.path().join("config.toml"))
            .env_remove("SCMZ_MAX_CPU_JOBS")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (resume(), resume());
    let both = [a.wait_with_output().unwrap(), b.wait_with_output().unwrap()];
    let (ok, refused): (Vec<&Output>, Vec<&Output>) = both.iter().partition(|o| o.status.success());
    assert_eq!((ok.len(), refused.len()), (1, 1), "{:?}", both.map(|o| stderr(&o)));
    let new_id = stdout(ok[0]).split_whitespace().nth(1).unwrap().to_string();
    let why = stderr(refused[0]);
    assert!(
        why.contains(&format!("resumed already, as job {new_id}")) || why.contains(&format!("already (job {new_id})")),
        "{why}"
    );
    // And later: a second resume names the job that continues it.
    let again = in_folder(Path::new("/"), &["jobs", "resume", &id]);
    assert_eq!(again.status.code(), Some(1), "{}", stdout(&again));
    assert!(
        stderr(&again).contains(&format!("resumed already, as job {new_id}")),
        "{}",
        stderr(&again)
    );
    wait_for(root.path(), &new_id, "finished", |j| j["state"] == "done");
    assert!(root.path().join("zoo/killed/manifest.json").exists());
    // The killed job keeps the progress it had; the one that resumed it shows the end.
    let o = scmz(&["jobs"], root.path());
    let row = |id: &str| {
        stdout(&o)
            .lines()
            .find(|l| l.split_whitespace().next() == Some(id))
            .unwrap_or_default()
            .to_string()
    };
    assert!(row(&new_id).contains("epoch 300/300"), "{}", stdout(&o));
    assert!(
        row(&id).contains("failed") && !row(&id).contains("epoch 300/300"),
        "{}",
        stdout(&o)
    );
    let o = scmz(&["jobs", "logs", &new_id], root.path());
    assert!(
        stdout(&o).contains("resuming `killed` from its checkpoint: epoch"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn cancel_leaves_a_cancelled_job_a_checkpoint_and_no_model() {
    let root = tempfile::tempdir().unwrap();
    let id = submit(root.path(), "stopme", "400");
    wait_for(root.path(), &id, "checkpointed", |j| {
        j["state"] == "running" && checkpointed(root.path(), "stopme")
    });
    let o = scmz(&["jobs", "cancel", &id], root.path());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("cancelled"), "{}", stdout(&o));
    let j = job(root.path(), &id);
    assert_eq!(j["state"], "cancelled");
    // checkpoint.json names the epoch's weights, and they are there.
    let run = root.path().join("zoo/.runs/stopme");
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("checkpoint.json")).unwrap()).unwrap();
    let epoch = state["epoch"].as_u64().unwrap();
    assert!(run.join(format!("checkpoint-{epoch}.safetensors")).exists());
    assert!(run.join(format!("optimizer-{epoch}.safetensors")).exists());
    assert!(!root.path().join("zoo/stopme").exists());
}

#[test]
fn with_one_slot_two_jobs_run_one_after_the_other() {
    let root = tempfile::tempdir().unwrap();
    let pbmc = data("pbmc68k_counts.h5ad");
    let submit_limited = |name: &str, epochs: &str| {
        Command::new(env!("CARGO_BIN_EXE_scmz"))
            .args([
                "train",
                pbmc.to_str().unwrap(),
                "--name",
                name,
                "--epochs",
                epochs,
                "--device",
                "cpu",
                "--detach",
            ])
            .env("SCMZ_ZOO", root.path().join("zoo"))
            .env("SCMZ_STATE_DIR", root.path().join("state"))
            .env("SCMZ_MAX_CPU_JOBS", "1")
            .output()
            .unwrap()
    };
    let id_of = |o: Output| {
        assert!(o.status.success(), "{}", stderr(&o));
        stdout(&o).split_whitespace().nth(1).unwrap().to_string()
    };
    let first = id_of(submit_limited("one", "400"));
    let second = id_of(submit_limited("two", "10"));
    assert_eq!(
        job(root.path(), &second)["state"],
        "queued",
        "the second job did not wait for the slot"
    );
    // What it waits for is said.
    let listed = Command::new(env!("CARGO_BIN_EXE_scmz"))
        .arg("jobs")
        .env("SCMZ_ZOO", root.path().join("zoo"))
        .env("SCMZ_STATE_DIR", root.path().join("state"))
        .env("SCMZ_MAX_CPU_JOBS", "1")
        .output()
        .unwrap();
    let row = stdout(&listed)
        .lines()
        .find(|l| l.starts_with(&second))
        .unwrap_or_default()
        .to_string();
    assert!(
        row.contains("waiting for a cpu slot: 1 of 1 running (SCMZ_MAX_CPU_JOBS), 0 ahead"),
        "{}",
        stdout(&listed)
    );
    // One job per run: a second job for a queued run is refused, naming the first; for a
    // running one, the check before queueing finds its engine (or, before the engine has
    // locked the run, the queue finds the job).
    let o = submit_limited("two", "10");
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let want = format!("a job for model `two` is queued already (job {second})");
    assert!(stderr(&o).contains(&want), "{}", stderr(&o));
    // So is a run in this terminal: the queued job would fail when its turn came.
    let here = Command::new(env!("CARGO_BIN_EXE_scmz"))
        .args(["train", pbmc.to_str().unwrap(), "--name", "two", "--epochs", "1"])
        .env("SCMZ_ZOO", root.path().join("zoo"))
        .env("SCMZ_STATE_DIR", root.path().join("state"))
        .output()
        .unwrap();
    assert_eq!(here.status.code(), Some(1), "{}", stdout(&here));
    assert!(stderr(&here).contains(&want), "{}", stderr(&here));
    assert!(!root.path().join("zoo/two").exists());
    let o = submit_limited("one", "10");
    assert!(!o.status.success(), "{}", stdout(&o));
    let running = format!("a job for model `one` is running already (job {first})");
    assert!(
        stderr(&o).contains(&running) || stderr(&o).contains("a run named `one` is in progress"),
        "{}",
        stderr(&o)
    );
    assert_eq!(jobs(root.path()).len(), 2);
    // The finishing first job starts the second: nothing here calls the scheduler with the limit.
    let a = wait_for(root.path(), &first, "finished", |j| j["state"] == "done");
    let b = wait_for(root.path(), &second, "finished", |j| j["state"] == "done");
    assert!(
        b["started"].as_str().unwrap() >= a["ended"].as_str().unwrap(),
        "{a:#} {b:#}"
    );
    assert_eq!(a["slot"], "cpu");
}

#[test]
fn a_detached_projection_writes_its_output() {
    let root = tempfile::tempdir().unwrap();
    let pbmc = data("pbmc68k_counts.h5ad");
    let o = scmz(
        &[
            "train",
            pbmc.to_str().unwrap(),
            "--name",
            "m",
            "--epochs",
            "3",
            "--label-key",
            "bulk_labels",
        ],
        root.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = root.path().join("projected.h5ad");
    let o = scmz(
        &[
            "project",
            pbmc.to_str().unwrap(),
            "--model",
            "m",
            "-o",
            out.to_str().unwrap(),
            "--detach",
        ],
        root.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let id = stdout(&o).split_whitespace().nth(1).unwrap().to_string();
    let j = wait_for(root.path(), &id, "finished", |j| j["state"] == "done");
    assert_eq!((j["kind"].as_str(), j["name"].as_str()), (Some("project"), Some("m")));
    let ds = scmz::data::Dataset::open(&out).unwrap();
    assert!(ds.info().obs_column("scmz_label").is_some());
}

#[test]
fn a_local_sweep_runs_side_by_side_under_the_configured_limit_and_logs_follow_to_the_end() {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("config.toml"), "[jobs]\nmax_cpu_jobs = 2\n").unwrap();
    let pbmc = data("pbmc68k_counts.h5ad");
    let o = scmz(
        &[
            "train",
            pbmc.to_str().unwrap(),
            "--name",
            "sw",
            "--epochs",
            "60",
            "--device",
            "cpu",
            "--sweep",
            "n_latent=4,6",
        ],
        root.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let ids: Vec<String> = stdout(&o)
        .lines()
        .map(|l| l.split_whitespace().nth(1).unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 2, "{}", stdout(&o));
    // `logs --follow` returns once the job has ended, with everything it wrote.
    let o = scmz(&["jobs", "logs", &ids[0], "--follow"], root.path());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("model `sw-n_latent-4` saved"), "{}", stdout(&o));
    let a = wait_for(root.path(), &ids[0], "finished", |j| j["state"] == "done");
    let b = wait_for(root.path(), &ids[1], "finished", |j| j["state"] == "done");
    // Two CPU slots from the config file: the second started before the first ended (the times are
    // to the second, so each job trains long enough to span several).
    assert!(
        b["started"].as_str().unwrap() < a["ended"].as_str().unwrap(),
        "{a:#} {b:#}"
    );
    for (name, latent) in [("sw-n_latent-4", 4), ("sw-n_latent-6", 6)] {
        let m: Value =
            serde_json::from_slice(&std::fs::read(root.path().join("zoo").join(name).join("manifest.json")).unwrap())
                .unwrap();
        assert_eq!(m["architecture"]["n_latent"], latent, "{m:#}");
    }
    // A typo in the config file is one line naming the key.
    std::fs::write(root.path().join("config.toml"), "[jobs]\nmax_cpu_job = 2\n").unwrap();
    let o = scmz(
        &["train", pbmc.to_str().unwrap(), "--name", "x", "--detach"],
        root.path(),
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("config.toml") && stderr(&o).contains("max_cpu_job"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_run_started_in_a_terminal_is_listed_beside_jobs() {
    let root = tempfile::tempdir().unwrap();
    let zoo = root.path().join("zoo");
    let pbmc = data("pbmc68k_counts.h5ad");
    // A foreground `scmz train` (no --detach): no job record.
    let mut child = Command::new(env!("CARGO_BIN_EXE_scmz"))
        .args([
            "train",
            pbmc.to_str().unwrap(),
            "--name",
            "fg",
            "--epochs",
            "20000",
            "--patience",
            "0",
        ])
        .env("SCMZ_ZOO", &zoo)
        .env("SCMZ_STATE_DIR", root.path().join("state"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let events = zoo.join(".runs/fg/events.jsonl");
    let t = Instant::now();
    while !events.exists() {
        assert!(t.elapsed() < Duration::from_secs(60), "no event log");
        std::thread::sleep(Duration::from_millis(100));
    }
    let runs = scmz::jobs::terminal_runs(&zoo, &[]);
    assert_eq!(runs.len(), 1);
    assert_eq!((runs[0].id.as_str(), runs[0].backend.as_str()), ("run:fg", "terminal"));
    assert_eq!(runs[0].state, scmz::jobs::JobState::Running);
    assert_eq!(runs[0].events.as_deref(), Some(events.as_path()));
    let lock = zoo.join(".runs/fg.lock");
    let holder = std::fs::read_to_string(&lock).unwrap();
    let engine: u32 = holder.rsplit(' ').next().unwrap().trim().parse().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    // The engine dies with the `scmz train` that started it (kill -9 included).
    let t = Instant::now();
    while scmz::jobs::alive(engine) {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the engine outlived `scmz train`"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // A log that stopped growing two minutes ago: an interrupted run, resumable.
    let old = std::ffi::CString::new(events.to_str().unwrap()).unwrap();
    let two_minutes_ago = libc::timeval {
        tv_sec: (std::time::SystemTime::now() - Duration::from_secs(120))
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as libc::time_t,
        tv_usec: 0,
    };
    // SAFETY: a valid C path and an array of the two times utimes reads.
    let set = unsafe { libc::utimes(old.as_ptr(), [two_minutes_ago, two_minutes_ago].as_ptr()) };
    assert_eq!(set, 0);
    let runs = scmz::jobs::terminal_runs(&zoo, &[]);
    assert_eq!(runs[0].state, scmz::jobs::JobState::Failed);
    assert!(
        runs[0].reason.as_deref().unwrap().contains("--resume"),
        "{:?}",
        runs[0].reason
    );
}

/// `jobs cancel` at once after submitting, while the job's supervisor may still be starting: the
/// job ends cancelled (not "failed", not trained to the end), whichever moment the cancel hit.
#[test]
fn a_cancel_right_after_submitting_cancels() {
    let root = tempfile::tempdir().unwrap();
    let id = submit(root.path(), "quick", "40");
    let o = scmz(&["jobs", "cancel", &id], root.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let j = wait_for(root.path(), &id, "ended", |j| {
        matches!(j["state"].as_str(), Some("cancelled" | "failed" | "done"))
    });
    assert_eq!(j["state"], "cancelled", "{j:#}");
    assert!(!root.path().join("zoo/quick").exists());
}
