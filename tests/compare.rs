//! `scmz compare`: a model pretrained on one half of the PBMCs against one trained from scratch on
//! the other half, over an overlap sweep; every number computed and identical for the same seed.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::{data, run_python, stderr};
use serde_json::Value;

#[test]
fn pretrained_versus_scratch_over_an_overlap_sweep_is_reproducible() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    run_python(
        "import sys, os, anndata; a = anndata.read_h5ad(sys.argv[1]); \
         a[::2].copy().write_h5ad(os.path.join(sys.argv[2], 'pre.h5ad')); \
         a[1::2].copy().write_h5ad(os.path.join(sys.argv[2], 'new.h5ad'))",
        &[&data("pbmc68k_counts.h5ad"), d],
    );
    let zoo = d.join("zoo");
    let o = Command::new(env!("CARGO_BIN_EXE_scmz"))
        .args([
            "train",
            d.join("pre.h5ad").to_str().unwrap(),
            "--name",
            "pre",
            "--epochs",
            "40",
            "--gene-dropout",
            "0.3",
        ])
        .env("SCMZ_ZOO", &zoo)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let run = || -> Value {
        let o = Command::new(env!("CARGO_BIN_EXE_scmz"))
            .args([
                "compare",
                d.join("new.h5ad").to_str().unwrap(),
                "--model",
                "pre",
                "--label-key",
                "bulk_labels",
            ])
            .args(["--overlaps", "100,70,50,30", "--seeds", "1", "--epochs", "10", "--json"])
            .env("SCMZ_ZOO", &zoo)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let (a, b) = (run(), run());
    let rows = a["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 4);
    let shared: Vec<u64> = rows.iter().map(|r| r["shared_genes"].as_u64().unwrap()).collect();
    assert_eq!(shared[0], 765);
    assert!(shared.windows(2).all(|w| w[1] < w[0]), "{shared:?}");
    for r in rows {
        for key in [
            "pretrained_ll",
            "scratch_ll",
            "pretrained_accuracy",
            "scratch_accuracy",
            "ari",
        ] {
            assert!(r[key].as_f64().is_some_and(f64::is_finite), "{key} in {r}");
        }
    }
    let strip = |v: &Value| -> Vec<Value> {
        v["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let mut r = r.clone();
                r["pretrained_seconds"] = Value::Null;
                r["scratch_seconds"] = Value::Null;
                r
            })
            .collect()
    };
    assert_eq!(strip(&a), strip(&b), "same seed, different numbers");
    assert_eq!(a["verdicts"].as_array().unwrap().len(), 4);
    // The result is kept with the model, for the TUI's chart.
    let kept: Value = serde_json::from_slice(&std::fs::read(zoo.join("pre/comparisons/new.json")).unwrap()).unwrap();
    assert_eq!(kept["rows"], b["rows"]);
    assert_eq!(kept["verdicts"], b["verdicts"]);
    eprintln!("{}", serde_json::to_string_pretty(&a).unwrap());
}

/// A model trained with batches compares too (the scoring fed its decoder no batch columns and
/// the engine panicked on a shape mismatch): the held-out cells are its first batch, as in
/// `scmz project`.
#[test]
fn a_model_with_batches_compares() {
    let dir = tempfile::tempdir().unwrap();
    let zoo = dir.path().join("zoo");
    let input = data("pbmc68k_counts.h5ad");
    let scmz = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_scmz"))
            .args(args)
            .env("SCMZ_ZOO", &zoo)
            .output()
            .unwrap()
    };
    let d = input.to_str().unwrap();
    let o = scmz(&["train", d, "--name", "bat", "--epochs", "2", "--batch-key", "phase"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = scmz(&[
        "compare", d, "--model", "bat", "--epochs", "1", "--seeds", "1", "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let row = &v["rows"][0];
    assert!(row["pretrained_ll"].as_f64().unwrap().is_finite(), "{v:#}");
    assert!(row["scratch_ll"].as_f64().unwrap().is_finite(), "{v:#}");
}

/// A pair whose overlap is far below what a projection accepts is compared, but says so first:
/// the sweep's "100 %" is of the few genes found.
#[test]
fn a_low_overlap_is_named_before_the_comparison() {
    let dir = tempfile::tempdir().unwrap();
    let zoo = dir.path().join("zoo");
    let from = data("zoo/pbmc-tiny");
    std::fs::create_dir_all(zoo.join("pbmc-tiny")).unwrap();
    for f in [
        "manifest.json",
        "weights.safetensors",
        "reference.safetensors",
        "history.jsonl",
    ] {
        std::fs::copy(from.join(f), zoo.join("pbmc-tiny").join(f)).unwrap();
    }
    let o = Command::new(env!("CARGO_BIN_EXE_scmz"))
        .args(["compare", data("mouse_10k_subset.h5ad").to_str().unwrap()])
        .args(["--model", "pbmc-tiny", "--epochs", "1", "--seeds", "1", "--json"])
        .env("SCMZ_ZOO", &zoo)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("warning: only 2.0 % of model `pbmc-tiny`'s genes (15 of 765)") && err.contains("--force"),
        "{err}"
    );
}
