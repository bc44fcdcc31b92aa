//! Training choices users make on real PBMCs: a classifier head trained with the model on
//! partly labelled cells (scANVI's objective), and the genes a model is trained on (highly
//! variable genes as scanpy picks them, or a list in a file).
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{data, run_python, stderr};
use serde_json::Value;

fn scmz(args: &[&str], zoo: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_scmz"))
        .args(args)
        .env("SCMZ_ZOO", zoo)
        .output()
        .unwrap()
}

fn manifest(zoo: &Path, name: &str) -> Value {
    serde_json::from_slice(&std::fs::read(zoo.join(name).join("manifest.json")).unwrap()).unwrap()
}

/// Splits of `pbmc68k_counts.h5ad`: even cells (a quarter of their labels missing) and odd cells.
fn pbmc_split(dir: &Path) {
    run_python(
        r#"
import sys, os, anndata, numpy as np
a = anndata.read_h5ad(sys.argv[1])
ref = a[::2].copy()
labels = ref.obs['bulk_labels'].astype(object).values
labels[::4] = np.nan
ref.obs['bulk_labels'] = labels
ref.obs['bulk_labels'] = ref.obs['bulk_labels'].astype('category')
ref.write_h5ad(os.path.join(sys.argv[2], 'ref.h5ad'))
a[1::2].copy().write_h5ad(os.path.join(sys.argv[2], 'query.h5ad'))
"#,
        &[&data("pbmc68k_counts.h5ad"), dir],
    );
}

#[test]
fn a_classifier_head_trained_on_partly_labelled_cells_labels_unseen_cells() {
    let dir = tempfile::tempdir().unwrap();
    let (d, zoo) = (dir.path(), dir.path().join("zoo"));
    pbmc_split(d);
    let o = scmz(
        &[
            "train",
            d.join("ref.h5ad").to_str().unwrap(),
            "--name",
            "cls",
            "--label-key",
            "bulk_labels",
            "--classifier",
            "--epochs",
            "60",
            "--seed",
            "0",
        ],
        &zoo,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("of 350 cells labelled"), "{err}");
    let m = manifest(&zoo, "cls");
    let labels: Vec<String> = serde_json::from_value(m["architecture"]["classifier_labels"].clone()).unwrap();
    assert_eq!(labels.len(), 10, "{labels:?}");
    assert!(!labels.iter().any(String::is_empty));
    let held_out = &m["metrics"]["classifier"];
    let (acc, ece) = (
        held_out["accuracy"].as_f64().unwrap(),
        held_out["ece"].as_f64().unwrap(),
    );
    assert!(held_out["n_cells"].as_u64().unwrap() > 10, "{held_out}");
    assert!(acc > 0.5 && (0.0..0.5).contains(&ece), "{held_out}");
    // Cells with a missing label are left out of the kNN reference.
    let reference: Vec<String> = serde_json::from_value(m["reference"]["labels"].clone()).unwrap();
    assert!(!reference.iter().any(String::is_empty));
    assert!(reference.len() <= 350 - 350 / 4 + 1, "{}", reference.len());

    // Projection writes the head's label and probability beside the kNN label.
    let out = d.join("query.csv");
    let o = scmz(
        &[
            "project",
            d.join("query.h5ad").to_str().unwrap(),
            "--model",
            "cls",
            "-o",
            out.to_str().unwrap(),
        ],
        &zoo,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let check = run_python(
        r#"
import sys, anndata, pandas as pd
t = pd.read_csv(sys.argv[1])
truth = anndata.read_h5ad(sys.argv[2]).obs['bulk_labels'].astype(str).values
p = t['scmz_classifier_probability']
print(round(float((t['scmz_classifier'].astype(str).values == truth).mean()), 3),
      round(float((t['scmz_label'].astype(str).values == truth).mean()), 3),
      bool(((p > 0) & (p <= 1)).all()), t['scmz_classifier'].nunique())
"#,
        &[&out, &d.join("query.h5ad")],
    );
    let v: Vec<&str> = check.split_whitespace().collect();
    eprintln!(
        "classifier accuracy {}, kNN accuracy {}, held out {acc:.3} (ECE {ece:.3})",
        v[0], v[1]
    );
    assert!(v[0].parse::<f64>().unwrap() > 0.6, "{check}");
    assert_eq!(v[2], "True", "{check}");

    // Without --label-key the flag is refused at parse time.
    let o = scmz(
        &[
            "train",
            d.join("ref.h5ad").to_str().unwrap(),
            "--name",
            "x",
            "--classifier",
        ],
        &zoo,
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--label-key"), "{}", stderr(&o));
}

#[test]
fn highly_variable_genes_match_scanpy_and_become_the_model_genes() {
    let dir = tempfile::tempdir().unwrap();
    let zoo = dir.path().join("zoo");
    let pbmc = data("pbmc68k_counts.h5ad");
    let o = scmz(
        &[
            "train",
            pbmc.to_str().unwrap(),
            "--name",
            "hvg",
            "--genes",
            "hvg:300",
            "--epochs",
            "3",
        ],
        &zoo,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let m = manifest(&zoo, "hvg");
    let names: Vec<String> = serde_json::from_value(m["genes"]["names"].clone()).unwrap();
    assert_eq!(names.len(), 300);
    assert_eq!(m["architecture"]["n_genes"], 300);
    let scanpy: std::collections::HashSet<String> = std::fs::read_to_string(data("pbmc68k_counts_hvg300_scanpy.txt"))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(str::to_string)
        .collect();
    let shared = names.iter().filter(|n| scanpy.contains(*n)).count();
    eprintln!("hvg:300 shares {shared} genes with scanpy's seurat_v3 selection");
    assert!(shared >= 290, "{shared} of 300 shared with scanpy");
    // The selection's passes leave the matrix in memory for the training that reads it next.
    let ds = scmz::data::Dataset::open(&pbmc).unwrap();
    let keep = scmz::genes::selection::GeneSelection::Hvg(300)
        .keep(&ds)
        .unwrap()
        .unwrap();
    assert_eq!(keep.iter().filter(|&&k| k).count(), 300);
    assert!(ds.holds_rows());

    // The whole dataset projects onto the panel model: its 300 genes found by name.
    let o = scmz(
        &[
            "project",
            pbmc.to_str().unwrap(),
            "--model",
            "hvg",
            "-o",
            dir.path().join("p.csv").to_str().unwrap(),
            "--json",
        ],
        &zoo,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["found"], 300, "{r:#}");

    // A gene list file: its genes, in the dataset's order; an unknown name is refused.
    let list = dir.path().join("genes.txt");
    let chosen = [names[5].as_str(), names[0].as_str(), names[42].as_str()];
    std::fs::write(&list, format!("# my panel\n{}\n\n", chosen.join("\n"))).unwrap();
    let o = scmz(
        &[
            "train",
            pbmc.to_str().unwrap(),
            "--name",
            "panel",
            "--genes",
            list.to_str().unwrap(),
            "--epochs",
            "1",
        ],
        &zoo,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let got: Vec<String> = serde_json::from_value(manifest(&zoo, "panel")["genes"]["names"].clone()).unwrap();
    let mut want: Vec<String> = chosen.iter().map(|s| s.to_string()).collect();
    want.sort_by_key(|g| names.iter().position(|n| n == g));
    assert_eq!(got, want);
    std::fs::write(&list, "CD3E\nNOT_A_GENE_1\n").unwrap();
    let o = scmz(
        &[
            "train",
            pbmc.to_str().unwrap(),
            "--name",
            "bad",
            "--genes",
            list.to_str().unwrap(),
        ],
        &zoo,
    );
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("genes.txt") && err.contains("NOT_A_GENE_1"), "{err}");
    assert!(!zoo.join("bad").exists());
    let o = scmz(
        &["train", pbmc.to_str().unwrap(), "--name", "bad", "--genes", "hvg:0"],
        &zoo,
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("hvg:N"), "{}", stderr(&o));
    // A list that is not there, or not a file, is named as the --genes file.
    let gone = zoo.join("gone.txt");
    for path in [gone.to_str().unwrap(), "/dev/null"] {
        let o = scmz(
            &["train", pbmc.to_str().unwrap(), "--name", "bad", "--genes", path],
            &zoo,
        );
        assert_eq!(o.status.code(), Some(1));
        assert!(
            stderr(&o).starts_with(&format!("error: {path}: ")) && stderr(&o).contains("(the --genes file)"),
            "{}",
            stderr(&o)
        );
    }
}
