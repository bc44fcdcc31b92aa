//! The Slurm backend against a real Slurm: `scripts/slurm-cluster.sh` starts a single-node
//! cluster (munged, slurmctld, slurmd; installed with apt when missing), the tests submit real
//! jobs through the real `sbatch`, and the daemons are stopped by pid at the end. Where the
//! cluster cannot be started (not root, no apt) the test prints why and is skipped, except under
//! CI (`CI` set), where it must run.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{data, stderr, stdout};
use serde_json::Value;

const CLUSTER_DIR: &str = "/tmp/scmz-slurm-test";

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/slurm-cluster.sh")
}

/// The cluster, stopped when dropped (also when a test panics).
struct Cluster {
    conf: String,
}

impl Cluster {
    fn start() -> Result<Cluster, String> {
        let o = Command::new(script())
            .arg("start")
            .env("SCMZ_SLURM_DIR", CLUSTER_DIR)
            .env("SCMZ_SLURM_PORT", "6827")
            .output()
            .map_err(|e| e.to_string())?;
        if !o.status.success() {
            return Err(String::from_utf8_lossy(&o.stderr).trim().to_string());
        }
        let conf = String::from_utf8_lossy(&o.stdout)
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("export SLURM_CONF=").map(str::to_string))
            .ok_or("slurm-cluster.sh printed no SLURM_CONF")?;
        Ok(Cluster { conf })
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(script())
            .arg("stop")
            .env("SCMZ_SLURM_DIR", CLUSTER_DIR)
            .env("SCMZ_SLURM_PORT", "6827")
            .output();
    }
}

struct Env<'a> {
    root: &'a Path,
    conf: &'a str,
}

impl Env<'_> {
    fn scmz(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_scmz"))
            .args(args)
            .env("SCMZ_ZOO", self.root.join("zoo"))
            .env("SCMZ_STATE_DIR", self.root.join("state"))
            .env("SCMZ_CONFIG", self.root.join("config.toml"))
            .env("SLURM_CONF", self.conf)
            .output()
            .unwrap()
    }

    fn train(&self, name: &str, extra: &[&str]) -> Vec<String> {
        let pbmc = data("pbmc68k_counts.h5ad");
        let mut args = vec!["train", pbmc.to_str().unwrap(), "--name", name, "--backend", "slurm"];
        args.extend(extra);
        let o = self.scmz(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        stdout(&o)
            .lines()
            .map(|l| l.split_whitespace().nth(1).unwrap().to_string())
            .collect()
    }

    fn job(&self, id: &str) -> Value {
        let o = self.scmz(&["jobs", "--json"]);
        assert!(o.status.success(), "{}", stderr(&o));
        let all: Vec<Value> = serde_json::from_slice(&o.stdout).unwrap();
        all.into_iter().find(|j| j["id"] == id).unwrap()
    }

    fn wait(&self, id: &str, what: &str, secs: u64, ok: impl Fn(&Value) -> bool) -> Value {
        let t = Instant::now();
        loop {
            let j = self.job(id);
            if ok(&j) {
                return j;
            }
            assert!(t.elapsed() < Duration::from_secs(secs), "job {id} never {what}: {j:#}");
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

fn time_limit(conf: &str) {
    let root = tempfile::tempdir().unwrap();
    let env = Env {
        root: root.path(),
        conf,
    };
    // Far more epochs than a minute allows; Slurm stops it at its --time.
    let id = env
        .train("slow", &["--epochs", "20000", "--patience", "0", "--time", "1"])
        .remove(0);
    // The job records a failure when Slurm's SIGTERM stops it; the next listing that finds Slurm
    // done with it adds Slurm's reason.
    let j = env.wait(id.as_str(), "failed at its time limit", 200, |j| {
        j["state"] == "failed" && j["reason"].as_str().is_some_and(|r| r.contains("TIMEOUT"))
    });
    assert!(j["reason"].as_str().unwrap().contains("over its time limit"), "{j:#}");
    // The job checkpointed before Slurm stopped it: resume continues (not run here: it would need
    // another minute), and the zoo holds no partial model.
    assert!(root.path().join("zoo/.runs/slow/checkpoint.json").exists());
    assert!(!root.path().join("zoo/slow").exists());
}

fn completes_and_cancels(conf: &str) {
    let root = tempfile::tempdir().unwrap();
    let env = Env {
        root: root.path(),
        conf,
    };
    // Cancel: a long run, cancelled once it has checkpointed.
    let long = env.train("stopme", &["--epochs", "20000", "--patience", "0"]).remove(0);
    env.wait(&long, "checkpointed", 120, |j| {
        j["state"] == "running"
            && std::fs::read_to_string(root.path().join("zoo/.runs/stopme/events.jsonl"))
                .is_ok_and(|l| l.contains("\"event\":\"checkpoint\""))
    });
    let o = env.scmz(&["jobs", "cancel", &long]);
    assert!(o.status.success(), "{}", stderr(&o));
    let j = env.wait(&long, "cancelled", 60, |j| {
        j["state"].as_str().is_some_and(|s| s != "running")
    });
    assert_eq!(j["state"], "cancelled", "{j:#}");
    assert!(!root.path().join("zoo/stopme").exists());
    // A short run lands in the zoo; the job list shows the backend and Slurm's id.
    let id = env.train("short", &["--epochs", "5", "--mem", "1G"]).remove(0);
    let j = env.wait(&id, "finished", 180, |j| j["state"] == "done");
    let sid = j["slurm_id"].as_str().unwrap().to_string();
    assert!(root.path().join("zoo/short/manifest.json").exists());
    let table = stdout(&env.scmz(&["jobs"]));
    assert!(table.contains("slurm") && table.contains(&sid), "{table}");
    let script = std::fs::read_to_string(root.path().join("state/jobs").join(&id).join("job.sbatch")).unwrap();
    assert!(script.contains("#SBATCH --mem=1G"), "{script}");
    let logs = stdout(&env.scmz(&["jobs", "logs", &id, "--follow"]));
    assert!(logs.contains("model `short` saved"), "{logs}");
}

fn sweep(conf: &str) {
    let root = tempfile::tempdir().unwrap();
    let env = Env {
        root: root.path(),
        conf,
    };
    let ids = env.train("sw", &["--epochs", "3", "--sweep", "n_latent=4,6"]);
    assert_eq!(ids.len(), 2);
    let mut array = Vec::new();
    for id in &ids {
        let j = env.wait(id, "finished", 240, |j| j["state"] == "done");
        array.push(j["slurm_id"].as_str().unwrap().to_string());
    }
    // One Slurm array, one task per setting.
    let base = array[0].split('_').next().unwrap().to_string();
    assert_eq!(array, [format!("{base}_0"), format!("{base}_1")]);
    let o = env.scmz(&["models", "--json"]);
    let models: Vec<Value> = serde_json::from_slice(&o.stdout).unwrap();
    let mut latents: Vec<(String, u64)> = models
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap().to_string(),
                m["architecture"]["n_latent"].as_u64().unwrap(),
            )
        })
        .collect();
    latents.sort();
    assert_eq!(latents, [("sw-n_latent-4".into(), 4), ("sw-n_latent-6".into(), 6)]);
    assert!(models.iter().all(|m| m["metrics"]["best_val_elbo"].is_number()));
}

fn errors(conf: &str) {
    let root = tempfile::tempdir().unwrap();
    let env = Env {
        root: root.path(),
        conf,
    };
    let pbmc = data("pbmc68k_counts.h5ad");
    let o = env.scmz(&[
        "train",
        pbmc.to_str().unwrap(),
        "--name",
        "x",
        "--backend",
        "slurm",
        "--partition",
        "nosuch",
    ]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("invalid partition"), "{err}");
    let o = env.scmz(&["jobs", "--json"]);
    let jobs: Vec<Value> = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(jobs[0]["state"], "failed");
    assert!(jobs[0]["reason"].as_str().unwrap().contains("invalid partition"));
}

/// `kill -9` of the supervisor inside the Slurm job: the engine stops with it and the job says
/// so (not "ended by Slurm (FAILED, ...)").
fn supervisor_killed(conf: &str) {
    let root = tempfile::tempdir().unwrap();
    let env = Env {
        root: root.path(),
        conf,
    };
    let id = env.train("orphan", &["--epochs", "20000", "--patience", "0"]).remove(0);
    let j = env.wait(&id, "checkpointed", 120, |j| {
        j["state"] == "running"
            && j["pid"].is_u64()
            && std::fs::read_to_string(root.path().join("zoo/.runs/orphan/events.jsonl"))
                .is_ok_and(|l| l.contains("\"event\":\"checkpoint\""))
    });
    let (sup, engine) = (j["supervisor_pid"].as_u64().unwrap(), j["pid"].as_u64().unwrap());
    // SAFETY: kill(2) on the supervisor of this test's job (the single node is this machine).
    unsafe { libc::kill(sup as i32, libc::SIGKILL) };
    let j = env.wait(&id, "ended", 60, |j| j["state"] != "running");
    assert_eq!(j["state"], "failed", "{j:#}");
    assert!(
        j["reason"].as_str().unwrap().contains("its supervisor was killed"),
        "{j:#}"
    );
    let t = Instant::now();
    while scmz::jobs::alive(engine as u32) {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the engine outlived its supervisor"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn slurm_jobs_complete_cancel_time_out_sweep_and_fail_clearly() {
    let cluster = match Cluster::start() {
        Ok(c) => c,
        Err(why) if std::env::var_os("CI").is_none() => {
            println!("skipped: cannot start a single-node Slurm here: {why}");
            return;
        }
        Err(why) => panic!("CI must run the Slurm tests, but the cluster did not start: {why}"),
    };
    let conf = cluster.conf.clone();
    // The time-limit case takes 60 to 90 s of Slurm's clock: run it beside the others.
    std::thread::scope(|s| {
        let handles = [
            s.spawn(|| time_limit(&conf)),
            s.spawn(|| completes_and_cancels(&conf)),
            s.spawn(|| sweep(&conf)),
            s.spawn(|| errors(&conf)),
            s.spawn(|| supervisor_killed(&conf)),
        ];
        for h in handles {
            if let Err(e) = h.join() {
                std::panic::resume_unwind(e);
            }
        }
    });
    drop(cluster);
}

#[test]
fn without_slurm_the_backend_says_what_is_missing() {
    let root = tempfile::tempdir().unwrap();
    let pbmc = data("pbmc68k_counts.h5ad");
    let o = Command::new(env!("CARGO_BIN_EXE_scmz"))
        .args(["train", pbmc.to_str().unwrap(), "--name", "x", "--backend", "slurm"])
        .env("SCMZ_ZOO", root.path().join("zoo"))
        .env("SCMZ_STATE_DIR", root.path().join("state"))
        .env("SCMZ_CONFIG", root.path().join("config.toml"))
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("`sbatch` not found on PATH"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}
