//! The real `scmz` binary in a real terminal (tmux): it opens on the datasets, switches
//! screens, filters, shows help, quits on `q` and leaves the terminal usable. tmux is installed
//! when missing (as root, with apt); without it the test says why and passes as skipped.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn tmux_available() -> Result<(), String> {
    if Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return Ok(());
    }
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "tmux"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success())
    };
    // A fresh machine may have no package lists yet.
    if root && (install() || (Command::new("apt-get").args(["update", "-qq"]).status().is_ok() && install())) {
        return Ok(());
    }
    Err("tmux is not installed and cannot be installed here (needs root and apt-get)".into())
}

struct Tmux {
    socket: String,
    session: String,
}

impl Tmux {
    fn cmd(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .unwrap()
    }

    fn pane(&self) -> String {
        String::from_utf8_lossy(&self.cmd(&["capture-pane", "-p", "-t", &self.session]).stdout).to_string()
    }

    fn keys(&self, keys: &[&str]) {
        for k in keys {
            self.cmd(&["send-keys", "-t", &self.session, k]);
            std::thread::sleep(Duration::from_millis(60));
        }
    }

    fn wait_for(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let t = Instant::now();
        loop {
            let p = self.pane();
            if ok(&p) {
                return p;
            }
            assert!(t.elapsed() < Duration::from_secs(20), "never saw {what}:\n{p}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn alive(&self) -> bool {
        self.cmd(&["has-session", "-t", &self.session]).status.success()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
    }
}

#[test]
fn the_tui_in_a_real_terminal_navigates_filters_helps_and_quits() {
    if let Err(why) = tmux_available() {
        println!("skipped: {why}");
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let t = Tmux {
        socket: format!("scmz-test-{}", std::process::id()),
        session: "ui".into(),
    };
    // The binary itself runs in the pane; when it exits, the session ends.
    let cmd = format!(
        "env SCMZ_STATE_DIR={state} SCMZ_CACHE_DIR={cache} SCMZ_CONFIG={config} {bin} ui {data} --zoo {zoo}",
        state = root.path().join("state").display(),
        cache = root.path().join("cache").display(),
        config = root.path().join("config.toml").display(),
        bin = env!("CARGO_BIN_EXE_scmz"),
        data = data.display(),
        zoo = data.join("zoo").display(),
    );
    let o = t.cmd(&["new-session", "-d", "-s", "ui", "-x", "100", "-y", "30", &cmd]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let p = t.wait_for("the catalog", |p| {
        p.contains("pbmc68k_counts.h5ad") && p.contains("mouse_10k")
    });
    assert!(p.contains("1 Datasets"), "{p}");
    t.keys(&["2"]);
    t.wait_for("the zoo", |p| p.contains("pbmc-tiny") && p.contains("val ELBO"));
    t.keys(&["1", "/", "p", "b", "m", "c", "Enter"]);
    let p = t.wait_for("the filtered table", |p| p.contains("matching \"pbmc\""));
    assert!(!p.contains("mouse_10k"), "{p}");
    t.keys(&["?"]);
    t.wait_for("the help", |p| p.contains("any key closes this help"));
    t.keys(&["Escape", "4"]);
    t.wait_for("the jobs screen", |p| p.contains("No jobs"));
    // A key is on screen at once, also one that follows another within the redraw throttle's
    // 100 ms (it used to wait for the next 250 ms tick: 70 to 250 ms).
    let mut took: Vec<Duration> = (0..7)
        .map(|_| {
            t.cmd(&["send-keys", "-t", &t.session, "2"]);
            std::thread::sleep(Duration::from_millis(30));
            let before = t.pane();
            let t0 = Instant::now();
            t.cmd(&["send-keys", "-t", &t.session, "4"]);
            while t.pane() == before && t0.elapsed() < Duration::from_secs(2) {
                std::thread::sleep(Duration::from_millis(1));
            }
            t0.elapsed()
        })
        .collect();
    took.sort();
    assert!(took[3] < Duration::from_millis(60), "key to screen: {took:?}");
    t.keys(&["q"]);
    let t0 = Instant::now();
    while t.alive() && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!t.alive(), "scmz did not quit on q:\n{}", t.pane());
}

/// `scmz` with the test's folders, as a user's shell would run it.
fn scmz_cli(env: &[(&str, &Path)], args: &[&str]) -> std::process::Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_scmz"));
    for (k, v) in env {
        c.env(k, v);
    }
    c.args(args).output().unwrap()
}

/// The job id `--detach` printed (`job ID submitted ...`).
fn submitted(o: &std::process::Output) -> String {
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}{}", String::from_utf8_lossy(&o.stderr));
    out.split_whitespace().nth(1).unwrap().to_string()
}

/// The epoch the Jobs screen's monitor shows (`epoch 25/300`).
fn shown_epoch(pane: &str) -> Option<usize> {
    let at = pane.find("epoch ")?;
    pane[at + 6..].split('/').next()?.trim().parse().ok()
}

/// At 80x24, over a folder of 56 datasets: the Jobs monitor keeps advancing while the pairwise
/// overlap matrix computes; a job that fails when it starts (its batch column gone from the
/// file by then) shows its reason; `p` on the Overlap screen projects the pair and the job's
/// panel names the file written.
#[test]
fn at_80x24_the_monitor_advances_failures_explain_and_projections_land() {
    if let Err(why) = tmux_available() {
        println!("skipped: {why}");
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let folder = root.path().join("datasets");
    std::fs::create_dir(&folder).unwrap();
    for i in 0..54 {
        std::fs::copy(data.join("kang_sample.h5ad"), folder.join(format!("k{i:02}.h5ad"))).unwrap();
    }
    std::fs::copy(data.join("pbmc68k_counts.h5ad"), folder.join("pbmc.h5ad")).unwrap();
    std::fs::copy(data.join("pbmc68k_counts.h5ad"), folder.join("later.h5ad")).unwrap();
    let (state, cache, zoo, out) = (
        root.path().join("state"),
        root.path().join("cache"),
        root.path().join("zoo"),
        root.path().join("share"),
    );
    let config = root.path().join("config.toml");
    let env: Vec<(&str, &Path)> = vec![
        ("SCMZ_STATE_DIR", &state),
        ("SCMZ_CACHE_DIR", &cache),
        ("SCMZ_ZOO", &zoo),
        ("SCMZ_DATA_DIR", &out),
        ("SCMZ_CONFIG", &config),
        ("SCMZ_MAX_CPU_JOBS", Path::new("1")),
    ];
    // The zoo's model to project with, and a long run that holds the one CPU slot.
    std::fs::create_dir(&zoo).unwrap();
    let o = Command::new("cp")
        .args([
            "-r",
            data.join("zoo/pbmc-tiny").to_str().unwrap(),
            zoo.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let pbmc = folder.join("pbmc.h5ad");
    let long = submitted(&scmz_cli(
        &env,
        &[
            "train",
            pbmc.to_str().unwrap(),
            "--name",
            "long",
            "--epochs",
            "5000",
            "--patience",
            "5000",
            "--n-hidden",
            "16",
            "--detach",
        ],
    ));
    // Queued behind it: its batch column is gone by the time it starts.
    let later = folder.join("later.h5ad");
    let bad = submitted(&scmz_cli(
        &env,
        &[
            "train",
            later.to_str().unwrap(),
            "--name",
            "bad",
            "--batch-key",
            "phase",
            "--detach",
        ],
    ));
    std::fs::copy(data.join("kang_sample.h5ad"), &later).unwrap();

    let t = Tmux {
        socket: format!("scmz-test-80-{}", std::process::id()),
        session: "ui".into(),
    };
    let vars: String = env.iter().map(|(k, v)| format!("{k}={} ", v.display())).collect();
    let cmd = format!("env {vars}{} ui {}", env!("CARGO_BIN_EXE_scmz"), folder.display());
    let o = t.cmd(&["new-session", "-d", "-s", "ui", "-x", "80", "-y", "24", &cmd]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    t.wait_for("the catalog", |p| p.contains("Datasets 56 of 56"));
    // The matrix over all 56 datasets, then the Jobs screen: the monitor of the long run.
    t.keys(&["3", "m", "4"]);
    let p = t.wait_for("the jobs", |p| p.contains("Jobs (2)"));
    assert!(p.contains("waiting for a cpu slot"), "the queued job says why: {p}");
    t.keys(&["j"]);
    let first = shown_epoch(&t.wait_for("an epoch", |p| p.contains("Run long") && shown_epoch(p).is_some())).unwrap();
    let p = t.wait_for("the epoch to advance twice", |p| {
        shown_epoch(p).is_some_and(|e| e >= first + 2)
    });
    assert!(p.contains("Run long"), "{p}");
    // The long run ends; the queued one starts and fails: its reason is on the screen.
    let o = scmz_cli(&env, &["jobs", "cancel", &long]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    t.keys(&["k"]);
    let p = t.wait_for("the failed job's reason", |p| {
        p.contains("failed") && p.contains("phase")
    });
    assert!(p.contains(&bad[..8]), "{p}");
    // Overlap: the first dataset (sorted by name) is one of the copies; filter to pbmc.h5ad,
    // open its overlap with the zoo's model and project.
    t.keys(&["1", "/", "p", "b", "m", "c", "Enter", "o"]);
    t.wait_for("the overlap report", |p| p.contains("pbmc-tiny") && p.contains("found"));
    // p waits for the pair's overlap; a refresh landing in between can make it say so once.
    for _ in 0..5 {
        t.keys(&["p"]);
        let p = t.wait_for("the projection starting", |p| {
            p.contains("projecting into") || p.contains("still being computed")
        });
        if p.contains("projecting into") {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    t.wait_for("the projection starting", |p| p.contains("projecting into"));
    t.keys(&["4"]);
    let written = out.join("projections/pbmc.pbmc-tiny.h5ad");
    let t0 = Instant::now();
    while !written.exists() && t0.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        written.exists(),
        "no projection at {}:\n{}",
        written.display(),
        t.pane()
    );
    let p = t.wait_for("the projection's output", |p| {
        p.contains("written to") && p.contains("projections")
    });
    assert!(p.contains("project"), "{p}");
    t.keys(&["q"]);
}
