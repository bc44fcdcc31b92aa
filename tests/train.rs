//! Training on real data with real libtorch, the zoo on disk, resuming after kill -9, and the
//! frozen model fixture that every later scmz must keep loading.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{data, stderr, stdout};
use scmz::data::{ColumnKind, Dataset};
use scmz::events::{read_log, Event};
use serde_json::Value;

fn engine(args: &[&str], zoo: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_scmz-engine"))
        .args(args)
        .env("SCMZ_ZOO", zoo)
        .output()
        .unwrap()
}

fn scmz(args: &[&str], zoo: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_scmz"))
        .args(args)
        .env("SCMZ_ZOO", zoo)
        .output()
        .unwrap()
}

fn encode(zoo: &Path, model: &str, data: &Path, cells: usize) -> (Vec<String>, Vec<Vec<f32>>) {
    let o = engine(
        &[
            "encode",
            "--model",
            model,
            data.to_str().unwrap(),
            "--cells",
            &cells.to_string(),
        ],
        zoo,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    (
        serde_json::from_value(v["cell_ids"].clone()).unwrap(),
        serde_json::from_value(v["latent"].clone()).unwrap(),
    )
}

/// Majority label of the k nearest training points, for each query point.
fn knn_accuracy(train: &[Vec<f32>], train_y: &[i32], test: &[Vec<f32>], test_y: &[i32], k: usize) -> f64 {
    let mut correct = 0;
    for (q, y) in test.iter().zip(test_y) {
        let mut d: Vec<(f32, i32)> = train
            .iter()
            .zip(train_y)
            .map(|(p, &l)| (p.iter().zip(q).map(|(a, b)| (a - b) * (a - b)).sum::<f32>(), l))
            .collect();
        d.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut votes = std::collections::HashMap::new();
        for (_, l) in d.iter().take(k) {
            *votes.entry(*l).or_insert(0) += 1;
        }
        let best = votes.iter().max_by_key(|(l, n)| (**n, -**l)).map(|(l, _)| *l).unwrap();
        correct += usize::from(best == *y);
    }
    correct as f64 / test.len() as f64
}

#[test]
fn training_lowers_validation_loss_and_the_latent_separates_cell_types() {
    let zoo = tempfile::tempdir().unwrap();
    let pbmc = data("pbmc68k_counts.h5ad");
    let o = scmz(
        &[
            "train",
            pbmc.to_str().unwrap(),
            "--name",
            "pbmc",
            "--epochs",
            "60",
            "--label-key",
            "bulk_labels",
            "--seed",
            "1",
        ],
        zoo.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("model `pbmc` saved"), "{}", stderr(&o));
    // Validation ELBO per epoch, from the model's history.
    let history = read_log(&zoo.path().join("pbmc/history.jsonl")).unwrap();
    let val: Vec<f64> = history
        .iter()
        .filter_map(|r| match &r.event {
            Event::Epoch { val, .. } => Some(val.elbo),
            _ => None,
        })
        .collect();
    assert_eq!(val.len(), 60);
    assert!(val[59] < val[0] * 0.9, "validation ELBO {} -> {}", val[0], val[59]);
    assert!(matches!(history.last().unwrap().event, Event::End { .. }));
    assert!(!zoo.path().join(".runs/pbmc").exists(), "run folder left behind");

    // kNN label accuracy of held-out cells: latent vs 10 random projections of log1p counts.
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(zoo.path().join("pbmc/manifest.json")).unwrap()).unwrap();
    // The manifest records the step size and its warm-up the run used (the defaults here).
    let defaults = scmz::spec::TrainSpec::defaults(pbmc.clone(), "pbmc".into());
    assert_eq!(manifest["training"]["lr"], defaults.lr, "{manifest:#}");
    assert_eq!(
        manifest["training"]["lr_warmup_steps"], defaults.lr_warmup,
        "{manifest:#}"
    );
    // BatchNorm's statistics came from the default number of cells, or all there were to train on.
    let history = read_log(&zoo.path().join("pbmc/history.jsonl")).unwrap();
    let n_train = history
        .iter()
        .find_map(|r| match r.event {
            Event::Start { n_train, .. } => Some(n_train),
            _ => None,
        })
        .unwrap();
    let norm_cells = defaults.norm_cells.min(n_train);
    assert!(
        n_train < defaults.norm_cells,
        "{n_train}: the file should be smaller than the sample"
    );
    assert_eq!(manifest["training"]["norm_cells"], norm_cells, "{manifest:#}");
    let o = scmz(&["model", "show", "pbmc"], zoo.path());
    let shown = format!(
        "lr {} (warm-up {} steps), BatchNorm statistics from {} cells each epoch",
        defaults.lr,
        defaults.lr_warmup,
        scmz::human::thousands(norm_cells as u64)
    );
    assert!(stdout(&o).contains(&shown), "{}", stdout(&o));
    let reference: std::collections::HashSet<String> =
        serde_json::from_value(manifest["reference"]["cell_ids"].clone()).unwrap();
    let ds = Dataset::open(&pbmc).unwrap();
    let codes = match &ds.info().obs_column("bulk_labels").unwrap().kind {
        ColumnKind::Categorical { codes, .. } => codes.clone(),
        _ => unreachable!(),
    };
    let (ids, latent) = encode(zoo.path(), "pbmc", &pbmc, 700);
    let counts = ds.read_all().unwrap().to_dense();
    let mut seed = 12345u64;
    let mut gauss = || {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((seed >> 11) as f64 / (1u64 << 53) as f64) as f32 - 0.5
    };
    let proj: Vec<f32> = (0..765 * 10).map(|_| gauss()).collect();
    let random: Vec<Vec<f32>> = (0..700)
        .map(|c| {
            (0..10)
                .map(|k| (0..765).map(|g| (counts[c * 765 + g]).ln_1p() * proj[g * 10 + k]).sum())
                .collect()
        })
        .collect();
    let split = |v: &[Vec<f32>]| {
        let (mut tr, mut ty, mut te, mut tey) = (vec![], vec![], vec![], vec![]);
        for (i, id) in ids.iter().enumerate() {
            if reference.contains(id) {
                tr.push(v[i].clone());
                ty.push(codes[i]);
            } else {
                te.push(v[i].clone());
                tey.push(codes[i]);
            }
        }
        (tr, ty, te, tey)
    };
    let (tr, ty, te, tey) = split(&latent);
    assert!(te.len() >= 50, "held-out cells: {}", te.len());
    let acc_latent = knn_accuracy(&tr, &ty, &te, &tey, 15);
    let (tr, ty, te, tey) = split(&random);
    let acc_random = knn_accuracy(&tr, &ty, &te, &tey, 15);
    eprintln!("kNN accuracy on held-out cells: latent {acc_latent:.3}, random projections {acc_random:.3}");
    assert!(acc_latent > acc_random, "latent {acc_latent} vs random {acc_random}");

    // Saving then loading reproduces the latent: the reference sample stored at training time
    // equals a fresh encoding by the loaded model.
    let stored = tch::Tensor::read_safetensors(zoo.path().join("pbmc/reference.safetensors")).unwrap();
    let latent_t = &stored
        .iter()
        .find(|(n, _)| n == "latent")
        .expect("latent in reference.safetensors")
        .1;
    let stored: Vec<f32> = Vec::try_from(latent_t.flatten(0, 1)).unwrap();
    let ref_ids: Vec<String> = serde_json::from_value(manifest["reference"]["cell_ids"].clone()).unwrap();
    let pos = ids.iter().position(|i| i == &ref_ids[0]).unwrap();
    for (a, b) in latent[pos].iter().zip(&stored[..10]) {
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    }
    let (_, again) = encode(zoo.path(), "pbmc", &pbmc, 700);
    assert_eq!(again, latent);

    // The CLI lists it.
    let o = scmz(&["models"], zoo.path());
    assert!(
        stdout(&o).contains("pbmc") && stdout(&o).contains("bulk_labels"),
        "{}",
        stdout(&o)
    );
    let o = scmz(&["model", "show", "pbmc"], zoo.path());
    assert!(stdout(&o).contains("60 of 60 epochs"), "{}", stdout(&o));
}

/// Waits (two minutes at most) until the run has checkpointed epoch `epoch`.
fn wait_for_checkpoint(log: &Path, epoch: usize) {
    let t = Instant::now();
    while checkpoint_epoch(log).is_none_or(|e| e < epoch) {
        assert!(t.elapsed() < Duration::from_secs(120), "no checkpoint after 2 minutes");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn checkpoint_epoch(log: &Path) -> Option<usize> {
    read_log(log).ok()?.iter().rev().find_map(|r| match r.event {
        Event::Checkpoint { epoch } => Some(epoch),
        _ => None,
    })
}

/// A run without the step-size warm-up and with scvi-tools' running BatchNorm averages says so in
/// `model show`; a warm-up longer than the whole run is warned about.
#[test]
fn model_show_names_settings_turned_off_and_a_warm_up_longer_than_the_run_is_warned_about() {
    let zoo = tempfile::tempdir().unwrap();
    let pbmc = data("pbmc68k_counts.h5ad");
    let pbmc = pbmc.to_str().unwrap();
    let o = engine(
        &[
            "train",
            pbmc,
            "--name",
            "plain",
            "--epochs",
            "2",
            "--lr-warmup",
            "0",
            "--norm-cells",
            "0",
        ],
        zoo.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stderr(&o).contains("warm-up"), "{}", stderr(&o));
    let o = scmz(&["model", "show", "plain"], zoo.path());
    assert!(
        stdout(&o).contains("(no warm-up), BatchNorm running averages (momentum 0.01), KL warm-up 100 epochs,"),
        "{}",
        stdout(&o)
    );
    // pbmc68k: 700 cells, 630 to train on, 5 minibatches of 128 an epoch.
    let o = engine(&["train", pbmc, "--name", "short", "--epochs", "2"], zoo.path());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("warning: --lr-warmup 75 steps is longer than the whole run (2 epochs of 5 steps)"),
        "{}",
        stderr(&o)
    );
    let o = engine(&["train", pbmc, "--name", "long", "--epochs", "30"], zoo.path());
    assert!(o.status.success() && !stderr(&o).contains("warm-up"), "{}", stderr(&o));
    // The check `--detach` makes in the terminal before it queues the job warns too.
    let o = engine(
        &["train", pbmc, "--name", "queued", "--epochs", "3", "--check-only"],
        zoo.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stderr(&o)
            .matches("warning: --lr-warmup 75 steps is longer than the whole run (3 epochs of 5 steps)")
            .count(),
        1,
        "{}",
        stderr(&o)
    );
    assert!(!zoo.path().join("queued").exists());
}

#[test]
fn kill_9_then_resume_continues_and_the_zoo_never_holds_a_partial_model() {
    let zoo = tempfile::tempdir().unwrap();
    let pbmc = data("pbmc68k_counts.h5ad");
    let args = ["train", pbmc.to_str().unwrap(), "--name", "killed", "--epochs", "40"];
    let mut child = Command::new(env!("CARGO_BIN_EXE_scmz-engine"))
        .args(args)
        .env("SCMZ_ZOO", zoo.path())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let log = zoo.path().join(".runs/killed/events.jsonl");
    wait_for_checkpoint(&log, 2);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let done = checkpoint_epoch(&log).unwrap();
    assert!(done < 39, "finished before the kill");
    let names: Vec<String> = std::fs::read_dir(zoo.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(
        names,
        vec![".runs".to_string()],
        "the zoo shows something besides the run: {names:?}"
    );

    // Without --resume the user is told what to do.
    let o = engine(&args, zoo.path());
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--resume"), "{}", stderr(&o));

    // A resume with other settings is refused, naming each with the value the run started
    // with, before anything is written.
    let mut resume: Vec<&str> = args.to_vec();
    resume.push("--resume");
    let events = std::fs::read(&log).unwrap();
    let o = engine(
        &[&resume[..], &["--lr", "0.001", "--n-hidden", "64"]].concat(),
        zoo.path(),
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("--lr 0.005 (given 0.001)")
            && e.contains("--n-hidden 128 (given 64)")
            && e.contains("--restart")
            && !e.contains("--epochs")
            && e.lines().count() == 1,
        "{e}"
    );
    // So is a resume on other data (here other genes), and --resume with --restart (which would
    // discard the run); the checkpoint stays.
    let o = engine(&[&resume[..], &["--genes", "hvg:100"]].concat(), zoo.path());
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("was started on 700 cells and 765 genes")
            && stderr(&o).contains("gives 700 cells and 100 genes"),
        "{}",
        stderr(&o)
    );
    // The same cells and genes scaled (not counts), which --force lets through where a run starts.
    let reduced = data("pbmc68k_reduced.h5ad");
    let mut other = resume.clone();
    other[1] = reduced.to_str().unwrap();
    let o = engine(&[&other[..], &["--force"]].concat(), zoo.path());
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("--force false (given true)"), "{}", stderr(&o));
    for run in [engine, scmz] {
        let o = run(&[&resume[..], &["--restart"]].concat(), zoo.path());
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(stderr(&o).contains("cannot be used with"), "{}", stderr(&o));
    }
    assert!(zoo.path().join(".runs/killed/checkpoint.json").exists());
    assert_eq!(
        std::fs::read(&log).unwrap(),
        events,
        "the refused resume wrote to the run's log"
    );
    // How long it goes on may change. A file a kill left half-written is gone once the resumed
    // run has started (its start is logged after).
    let half = zoo.path().join(".runs/killed/.optimizer-1.safetensors.AbC123.tmp");
    std::fs::write(&half, b"half").unwrap();
    resume.extend(["--patience", "100"]);
    let child = Command::new(env!("CARGO_BIN_EXE_scmz-engine"))
        .args(&resume)
        .env("SCMZ_ZOO", zoo.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = || {
        read_log(&log).map_or(0, |l| {
            l.iter().filter(|r| matches!(r.event, Event::Start { .. })).count()
        })
    };
    let t = Instant::now();
    while started() < 2 && log.exists() && t.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(5));
    }
    // (The run may have ended and its folder gone into the zoo already.)
    assert!(!half.exists(), "the half-written file was left");
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let history = read_log(&zoo.path().join("killed/history.jsonl")).unwrap();
    let starts: Vec<usize> = history
        .iter()
        .filter_map(|r| match r.event {
            Event::Start { first_epoch, .. } => Some(first_epoch),
            _ => None,
        })
        .collect();
    let last_ckpt = history.iter().filter_map(|r| match r.event {
        Event::Checkpoint { epoch } => Some(epoch),
        _ => None,
    });
    assert_eq!(starts.len(), 2);
    assert!(
        starts[1] > done && starts[1] <= done + 2,
        "resumed at {} after checkpoint {done}",
        starts[1]
    );
    assert_eq!(last_ckpt.max(), Some(39));
    let o = scmz(&["model", "show", "killed"], zoo.path());
    assert!(stdout(&o).contains("40 of 40 epochs"), "{}", stdout(&o));
    // The same run uninterrupted ends with the same weights: the resume went on as it would have.
    let straight = ["train", pbmc.to_str().unwrap(), "--name", "straight", "--epochs", "40"];
    let o = engine(&straight, zoo.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let weights = |name: &str| std::fs::read(zoo.path().join(name).join("weights.safetensors")).unwrap();
    assert!(
        weights("killed") == weights("straight"),
        "the resumed run's weights differ"
    );
}

fn fixture_zoo() -> PathBuf {
    data("zoo")
}

#[test]
fn the_frozen_fixture_model_loads_and_reproduces_its_stored_latents() {
    let fixture: Value =
        serde_json::from_slice(&std::fs::read(fixture_zoo().join("fixture_latents.json")).unwrap()).unwrap();
    let want: Vec<Vec<f32>> = serde_json::from_value(fixture["latent"].clone()).unwrap();
    let want_ids: Vec<String> = serde_json::from_value(fixture["cell_ids"].clone()).unwrap();
    let (ids, got) = encode(&fixture_zoo(), "pbmc-tiny", &data("pbmc68k_counts.h5ad"), want.len());
    assert_eq!(ids, want_ids);
    for (a, b) in got.iter().flatten().zip(want.iter().flatten()) {
        assert!((a - b).abs() < 1e-4, "{a} vs {b}");
    }
    let o = scmz(
        &["models", "--zoo", fixture_zoo().to_str().unwrap()],
        Path::new("/nonexistent"),
    );
    assert!(o.status.success() && stdout(&o).contains("pbmc-tiny"), "{}", stderr(&o));
}

/// `project --device`: on the CPU the fixture's stored latents; `cuda` gives the same latents
/// where libtorch sees a GPU, and elsewhere is refused in words with nothing written.
#[test]
fn projection_on_each_device_gives_the_fixtures_latents() {
    let fixture: Value =
        serde_json::from_slice(&std::fs::read(fixture_zoo().join("fixture_latents.json")).unwrap()).unwrap();
    let want: Vec<Vec<f32>> = serde_json::from_value(fixture["latent"].clone()).unwrap();
    let out = tempfile::tempdir().unwrap();
    let project = |device: &str| -> (Output, PathBuf) {
        let csv = out.path().join(format!("{device}.csv"));
        let o = scmz(
            &[
                "project",
                data("pbmc68k_counts.h5ad").to_str().unwrap(),
                "--model",
                "pbmc-tiny",
                "-o",
                csv.to_str().unwrap(),
                "--device",
                device,
            ],
            &fixture_zoo(),
        );
        (o, csv)
    };
    let latents = |csv: &Path| -> Vec<Vec<f32>> {
        let text = std::fs::read_to_string(csv).unwrap();
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().unwrap().split(',').collect();
        let cols: Vec<usize> = (0..header.len())
            .filter(|&i| header[i].starts_with("latent_"))
            .collect();
        lines
            .take(want.len())
            .map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                cols.iter().map(|&i| f[i].parse().unwrap()).collect()
            })
            .collect()
    };
    let close = |got: &[Vec<f32>]| {
        assert_eq!(got.len(), want.len());
        for (a, b) in got.iter().flatten().zip(want.iter().flatten()) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
    };
    let (o, csv) = project("cpu");
    assert!(o.status.success(), "{}", stderr(&o));
    close(&latents(&csv));
    let devices: Value = serde_json::from_slice(&engine(&["devices"], &fixture_zoo()).stdout).unwrap();
    let (o, csv) = project("cuda");
    if devices["cuda"] == Value::Bool(true) {
        assert!(o.status.success(), "{}", stderr(&o));
        close(&latents(&csv));
    } else {
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        assert!(
            stderr(&o).contains("--device cuda") && stderr(&o).contains("no CUDA device"),
            "{}",
            stderr(&o)
        );
        assert!(!csv.exists());
        // Refused before anything is written or queued: a training run, a detached projection,
        // a fine-tuning (which itself runs on the CPU).
        let zoo = tempfile::tempdir().unwrap();
        let home = tempfile::tempdir().unwrap();
        let data = data("pbmc68k_counts.h5ad");
        let out = zoo.path().join("out.csv");
        let (data, out) = (data.to_str().unwrap(), out.to_str().unwrap());
        for args in [
            vec!["train", data, "--name", "t", "--epochs", "1", "--device", "cuda"],
            vec![
                "train", data, "--name", "t", "--epochs", "1", "--device", "cuda", "--detach",
            ],
            vec![
                "project",
                data,
                "--model",
                "pbmc-tiny",
                "-o",
                out,
                "--device",
                "cuda",
                "--detach",
            ],
            vec![
                "project",
                data,
                "--model",
                "pbmc-tiny",
                "-o",
                out,
                "--device",
                "cuda",
                "--finetune",
                "1",
            ],
        ] {
            let z = if args[0] == "train" {
                zoo.path().to_path_buf()
            } else {
                fixture_zoo()
            };
            let o = Command::new(env!("CARGO_BIN_EXE_scmz"))
                .args(&args)
                .env("SCMZ_ZOO", z)
                .env("SCMZ_DATA_DIR", home.path())
                .env("SCMZ_STATE_DIR", home.path())
                .output()
                .unwrap();
            assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
            assert!(stderr(&o).contains("no CUDA device"), "{args:?}: {}", stderr(&o));
            assert_eq!(
                std::fs::read_dir(zoo.path()).unwrap().count(),
                0,
                "{args:?} wrote into the zoo"
            );
            assert_eq!(
                std::fs::read_dir(home.path()).unwrap().count(),
                0,
                "{args:?} queued a job"
            );
        }
    }
    // A projection that only predicts writes nothing, so it takes no output.
    let o = scmz(
        &["project", "x.h5ad", "--model", "m", "--predict-only", "-o", "o.csv"],
        &fixture_zoo(),
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let o = scmz(
        &["project", "x.h5ad", "--model", "m", "-o", "o.csv", "--device", "gpu0"],
        &fixture_zoo(),
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("auto") && stderr(&o).contains("cuda"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_tampered_or_newer_model_is_refused_clearly() {
    let zoo = tempfile::tempdir().unwrap();
    let dir = zoo.path().join("pbmc-tiny");
    std::fs::create_dir(&dir).unwrap();
    for f in std::fs::read_dir(fixture_zoo().join("pbmc-tiny")).unwrap() {
        let f = f.unwrap();
        // The model's files (its comparisons folder is not needed here).
        if f.path().is_file() {
            std::fs::copy(f.path(), dir.join(f.file_name())).unwrap();
        }
    }
    let weights = dir.join("weights.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let n = bytes.len();
    bytes[n - 5] ^= 0xff;
    std::fs::write(&weights, bytes).unwrap();
    let o = scmz(&["model", "show", "pbmc-tiny"], zoo.path());
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("sha256") && stderr(&o).contains("weights.safetensors"),
        "{}",
        stderr(&o)
    );
    let o = engine(
        &[
            "encode",
            "--model",
            "pbmc-tiny",
            data("pbmc68k_counts.h5ad").to_str().unwrap(),
        ],
        zoo.path(),
    );
    assert!(!o.status.success() && stderr(&o).contains("sha256"), "{}", stderr(&o));
    // A manifest from a future scmz.
    std::fs::copy(fixture_zoo().join("pbmc-tiny/weights.safetensors"), &weights).unwrap();
    let mpath = dir.join("manifest.json");
    let mut m: Value = serde_json::from_slice(&std::fs::read(&mpath).unwrap()).unwrap();
    m["schema_version"] = 99.into();
    std::fs::write(&mpath, serde_json::to_vec(&m).unwrap()).unwrap();
    let o = scmz(&["model", "show", "pbmc-tiny"], zoo.path());
    assert!(stderr(&o).contains("newer than this scmz"), "{}", stderr(&o));
    let o = scmz(&["model", "show", "nope"], zoo.path());
    assert!(
        stderr(&o).contains("not found") && stderr(&o).contains("scmz models"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn normalised_data_is_refused_and_mouse_trains_end_to_end() {
    let zoo = tempfile::tempdir().unwrap();
    let o = scmz(
        &["train", data("pbmc68k_reduced.h5ad").to_str().unwrap(), "--name", "bad"],
        zoo.path(),
    );
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("not raw counts") && err.contains("--force"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let o = scmz(
        &[
            "train",
            data("mouse_10k_subset.h5ad").to_str().unwrap(),
            "--name",
            "mouse",
            "--epochs",
            "2",
            "--gene-dropout",
            "0.2",
        ],
        zoo.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let m: Value = serde_json::from_slice(&std::fs::read(zoo.path().join("mouse/manifest.json")).unwrap()).unwrap();
    assert_eq!(m["architecture"]["masked_input"], true);
    assert_eq!(m["datasets"][0]["n_cells"], 10000);
    assert_eq!(m["genes"]["species"], "mouse");
    assert!(m["genes"]["gene_ids"][0].as_str().unwrap().starts_with("ENSMUSG"));
}

#[test]
fn the_merged_whole_transcriptome_file_trains_with_its_presence_mask() {
    let zoo = tempfile::tempdir().unwrap();
    let merged = zoo.path().join("wt.h5ad");
    let inputs = [
        "celltypist_sample_counts.h5ad",
        "pbmc68k_counts.h5ad",
        "mouse_10k_subset.h5ad",
    ]
    .map(data);
    let mut args = vec!["merge"];
    args.extend(inputs.iter().map(|p| p.to_str().unwrap()));
    args.extend(["-o", merged.to_str().unwrap()]);
    let o = scmz(&args, zoo.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let o = scmz(
        &["train", merged.to_str().unwrap(), "--name", "wt", "--epochs", "1"],
        zoo.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let m: Value = serde_json::from_slice(&std::fs::read(zoo.path().join("wt/manifest.json")).unwrap()).unwrap();
    assert_eq!(m["architecture"]["n_genes"], 33_210);
    assert_eq!(
        m["architecture"]["masked_input"], true,
        "the presence mask must switch masking on"
    );
    assert!(m["metrics"]["best_val_elbo"].as_f64().is_some_and(f64::is_finite));
}

#[test]
fn sigterm_stops_training_cleanly_with_a_resumable_checkpoint() {
    let zoo = tempfile::tempdir().unwrap();
    let pbmc = data("pbmc68k_counts.h5ad");
    let args = ["train", pbmc.to_str().unwrap(), "--name", "stopped", "--epochs", "400"];
    let child = Command::new(env!("CARGO_BIN_EXE_scmz-engine"))
        .args(args)
        .env("SCMZ_ZOO", zoo.path())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let log = zoo.path().join(".runs/stopped/events.jsonl");
    wait_for_checkpoint(&log, 1);
    // SAFETY: kill(2) on the child this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(143), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--resume"));
    let events = read_log(&log).unwrap();
    assert!(matches!(&events.last().unwrap().event, Event::End { status, model: None, .. } if status == "cancelled"));
    assert!(
        !zoo.path().join("stopped").exists(),
        "a cancelled run left a model in the zoo"
    );
    // Resumed with --epochs no more than it has done, it is saved as it is, and its record keeps
    // the speed it trained at (no epoch ran in the second session).
    let done = checkpoint_epoch(&log).unwrap() + 1;
    let mut resume = args.to_vec();
    let epochs = done.to_string();
    resume[5] = &epochs;
    resume.push("--resume");
    let o = engine(&resume, zoo.path());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains(&format!("{done} epochs done")), "{}", stderr(&o));
    let m: Value = serde_json::from_slice(&std::fs::read(zoo.path().join("stopped/manifest.json")).unwrap()).unwrap();
    assert_eq!(m["training"]["epochs_run"].as_u64(), Some(done as u64), "{m}");
    assert!(m["training"]["cells_per_s"].as_f64().unwrap() > 0.0, "{m}");
    // A run saved for good leaves neither its folder nor its lock in `.runs`.
    let runs: Vec<_> = std::fs::read_dir(zoo.path().join(".runs"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(runs.is_empty(), "{runs:?}");
    let history = read_log(&zoo.path().join("stopped/history.jsonl")).unwrap();
    let first = history.iter().rev().find_map(|r| match r.event {
        Event::Start { first_epoch, .. } => Some(first_epoch),
        _ => None,
    });
    assert_eq!(first, Some(done));
}

/// A run that stops early saves its best epoch's weights, not its last: they encode cells as a
/// run of the same seed that ends at that epoch does.
#[test]
fn an_early_stopped_model_keeps_its_best_epoch() {
    let zoo = tempfile::tempdir().unwrap();
    let pbmc = data("pbmc68k_counts.h5ad");
    let train = |name: &str, epochs: usize, patience: usize| {
        let o = engine(
            &[
                "train",
                pbmc.to_str().unwrap(),
                "--name",
                name,
                "--epochs",
                &epochs.to_string(),
                "--patience",
                &patience.to_string(),
                "--lr",
                "0.03",
                "--kl-warmup",
                "0",
                "--n-hidden",
                "32",
            ],
            zoo.path(),
        );
        assert!(o.status.success(), "{}", stderr(&o));
        let m: Value =
            serde_json::from_slice(&std::fs::read(zoo.path().join(name).join("manifest.json")).unwrap()).unwrap();
        let t = &m["training"];
        (
            t["best_epoch"].as_u64().unwrap() as usize,
            t["epochs_run"].as_u64().unwrap() as usize,
        )
    };
    let (best, run) = train("early", 60, 1);
    assert!(
        best + 1 < run,
        "the run should stop after an epoch that is not its best: {best} of {run}"
    );
    // Its last epoch is its best (the weights in memory are saved).
    assert_eq!(train("to-best", best + 1, 0), (best, best + 1));
    let latent = |model: &str| encode(zoo.path(), model, &pbmc, 20).1;
    assert_eq!(latent("early"), latent("to-best"));
}
