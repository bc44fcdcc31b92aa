//! Applying a model to unseen cells whose genes differ: reference/query split of real labelled
//! PBMCs, genes removed, mask vs zero, predicted vs measured label agreement, and a query named by
//! Ensembl ids against a model trained on symbols.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{data, run_python, stderr};
use scmz::data::{ColumnKind, Dataset};
use serde_json::Value;

fn labels(path: &Path, column: &str) -> Vec<String> {
    let ds = Dataset::open(path).unwrap();
    match &ds
        .info()
        .obs_column(column)
        .unwrap_or_else(|| panic!("no {column} in {}", path.display()))
        .kind
    {
        ColumnKind::Categorical { categories, codes, .. } => codes
            .iter()
            .map(|&c| categories.get(c as usize).cloned().unwrap_or_default())
            .collect(),
        k => panic!("{column}: {k:?}"),
    }
}

fn project(zoo: &Path, query: &Path, out: &Path, policy: &str, extra: &[&str]) -> Result<Value, String> {
    let mut args = vec![
        "project",
        query.to_str().unwrap(),
        "--model",
        "ref",
        "-o",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(&["--missing", policy, "--json"]);
    args.extend_from_slice(extra);
    let o = Command::new(env!("CARGO_BIN_EXE_scmz"))
        .args(&args)
        .env("SCMZ_ZOO", zoo)
        .output()
        .unwrap();
    if !o.status.success() {
        return Err(stderr(&o));
    }
    Ok(serde_json::from_slice(&o.stdout).unwrap())
}

/// Trains model `name` on `data` into `zoo` with the extra arguments; it must succeed.
fn train(zoo: &Path, data: &Path, name: &str, extra: &[&str]) {
    let o = Command::new(env!("CARGO_BIN_EXE_scmz"))
        .args(["train", data.to_str().unwrap(), "--name", name])
        .args(extra)
        .env("SCMZ_ZOO", zoo)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
}

fn share_equal(a: &[String], b: &[String]) -> f64 {
    a.iter().zip(b).filter(|(x, y)| x == y).count() as f64 / a.len() as f64
}

#[test]
fn reference_query_mapping_with_missing_genes_and_renamed_identifiers() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let table =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("src/genes/reference/gencode_v44_human_gene_id_to_symbol.csv.gz");
    run_python(
        r#"
import sys, os, gzip, anndata, numpy as np
src, out, table = sys.argv[1], sys.argv[2], sys.argv[3]
a = anndata.read_h5ad(src)
a[::2].copy().write_h5ad(os.path.join(out, 'ref.h5ad'))
q = a[1::2].copy()
q.write_h5ad(os.path.join(out, 'q100.h5ad'))
rng = np.random.default_rng(0)
for keep in (70, 50):
    idx = np.sort(rng.choice(a.n_vars, int(round(keep / 100 * a.n_vars)), replace=False))
    q[:, idx].copy().write_h5ad(os.path.join(out, f'q{keep}.h5ad'))
ids = {}
for line in gzip.open(table, 'rt'):
    gid, sym = line.strip().split(',')
    ids.setdefault(sym, gid)
keep = [i for i, s in enumerate(q.var_names) if s in ids]
sym = q[:, keep].copy()
sym.write_h5ad(os.path.join(out, 'q_symbols_same_genes.h5ad'))
ens = sym.copy()
ens.var_names = [ids[s] for s in sym.var_names]
ens.write_h5ad(os.path.join(out, 'q_ensembl.h5ad'))
print(len(keep))
"#,
        &[&data("pbmc68k_counts.h5ad"), d, &table],
    );
    let zoo = d.join("zoo");
    train(
        &zoo,
        &d.join("ref.h5ad"),
        "ref",
        &[
            "--epochs",
            "100",
            "--gene-dropout",
            "0.3",
            "--label-key",
            "bulk_labels",
            "--seed",
            "0",
        ],
    );

    let truth = labels(&d.join("q100.h5ad"), "bulk_labels");
    let mut full_labels: std::collections::HashMap<&str, Vec<String>> = Default::default();
    let mut table_rows = Vec::new();
    for q in ["q100", "q70", "q50"] {
        for policy in ["mask", "zero"] {
            let out: PathBuf = d.join(format!("{q}-{policy}.h5ad"));
            let r = project(&zoo, &d.join(format!("{q}.h5ad")), &out, policy, &["--force"]).unwrap();
            let got = labels(&out, "scmz_label");
            let acc = share_equal(&got, &truth);
            if q == "q100" {
                full_labels.insert(policy, got.clone());
            }
            let measured = share_equal(&got, &full_labels[policy]);
            let predicted = r["predicted_agreement"].as_f64().unwrap();
            table_rows.push(format!(
                "{q} {policy}: found {} of 765, accuracy {acc:.3}, predicted agreement {predicted:.3}, measured {measured:.3}, predicted displacement {:.3}",
                r["found"], r["predicted_displacement"].as_f64().unwrap()
            ));
            if q == "q100" {
                assert!(acc > 0.6, "all genes, {policy}: accuracy {acc} (majority class 0.34)");
                assert_eq!(r["found"], 765);
            } else {
                assert!(
                    (predicted - measured).abs() <= 0.1,
                    "{q} {policy}: predicted {predicted} vs measured {measured}"
                );
            }
        }
    }
    eprintln!("{}", table_rows.join("\n"));

    // Gene ids against a symbol model: matched through GENCODE without manual mapping.
    let r_ids = project(&zoo, &d.join("q_ensembl.h5ad"), &d.join("ids.h5ad"), "mask", &[]).unwrap();
    assert_eq!(r_ids["found"], 700, "{r_ids:#}");
    assert!(
        r_ids["key"].as_str().unwrap().starts_with("id to symbol (GENCODE v44)"),
        "{r_ids:#}"
    );
    let r_sym = project(
        &zoo,
        &d.join("q_symbols_same_genes.h5ad"),
        &d.join("sym.h5ad"),
        "mask",
        &[],
    )
    .unwrap();
    assert_eq!(r_sym["found"], 700);
    let acc_ids = share_equal(&labels(&d.join("ids.h5ad"), "scmz_label"), &truth);
    let acc_sym = share_equal(&labels(&d.join("sym.h5ad"), "scmz_label"), &truth);
    eprintln!("ensembl-id query accuracy {acc_ids:.3}, symbol query with the same genes {acc_sym:.3}");
    assert!((acc_ids - acc_sym).abs() <= 0.02, "{acc_ids} vs {acc_sym}");

    // `scmz overlap DATA MODEL` gives the same prediction before anything is applied.
    let o = Command::new(env!("CARGO_BIN_EXE_scmz"))
        .args(["overlap", d.join("q70.h5ad").to_str().unwrap(), "ref", "--json"])
        .env("SCMZ_ZOO", &zoo)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["found"], 536);
    let p70 = project(&zoo, &d.join("q70.h5ad"), &d.join("again.h5ad"), "mask", &["--force"]).unwrap();
    assert_eq!(v["predicted_agreement"], p70["predicted_agreement"]);

    // Below the overlap threshold: refused with the numbers, unless forced.
    let err = project(
        &zoo,
        &d.join("q50.h5ad"),
        &d.join("x.h5ad"),
        "mask",
        &["--min-overlap", "0.6"],
    )
    .unwrap_err();
    assert!(
        err.contains("382 of the model's 765 genes") && err.contains("--force"),
        "{err}"
    );
    assert!(!d.join("x.h5ad").exists());

    // Output opens in anndata with the latent in obsm and labels in obs; parquet as a table.
    let py = run_python(
        "import sys, anndata; a = anndata.read_h5ad(sys.argv[1]); \
         print(a.obsm['X_scmz'].shape, str(a.obs['scmz_label'].dtype), float(a.obs['scmz_label_confidence'].max()) <= 1.0)",
        &[&d.join("q70-mask.h5ad")],
    );
    assert_eq!(py.trim(), "(350, 10) category True");
    project(&zoo, &d.join("q70.h5ad"), &d.join("q70.parquet"), "mask", &["--force"]).unwrap();
    use polars::prelude::*;
    let df = ParquetReader::new(std::fs::File::open(d.join("q70.parquet")).unwrap())
        .finish()
        .unwrap();
    assert_eq!(df.shape(), (350, 13));
}

#[test]
fn a_query_from_a_new_batch_is_fine_tuned_on_its_own_parameters() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    run_python(
        r#"
import sys, os, anndata, numpy as np
a = anndata.read_h5ad(sys.argv[1])
r = a[::2].copy()
r.obs['batch'] = np.where(np.arange(r.n_obs) % 2 == 0, 'b1', 'b2')
r.obs['batch'] = r.obs['batch'].astype('category')
r.write_h5ad(os.path.join(sys.argv[2], 'ref.h5ad'))
q = a[1::2].copy()
q.X = q.X * 3  # a batch effect: three times the sequencing depth
q.write_h5ad(os.path.join(sys.argv[2], 'new_batch.h5ad'))
"#,
        &[&data("pbmc68k_counts.h5ad"), d],
    );
    let zoo = d.join("zoo");
    train(
        &zoo,
        &d.join("ref.h5ad"),
        "ref",
        &["--epochs", "40", "--batch-key", "batch", "--label-key", "bulk_labels"],
    );
    let out = d.join("tuned.h5ad");
    let r = project(&zoo, &d.join("new_batch.h5ad"), &out, "mask", &["--finetune", "15"]).unwrap();
    let (before, after) = (
        r["finetune_loss"][0].as_f64().unwrap(),
        r["finetune_loss"][1].as_f64().unwrap(),
    );
    eprintln!("fine-tuning the new batch: query ELBO per cell {before:.2} -> {after:.2}");
    assert!(after < before, "{before} -> {after}");
    assert_eq!(labels(&out, "scmz_label").len(), 350);
    // A model without a batch covariate cannot grow one.
    train(&zoo, &d.join("ref.h5ad"), "plain", &["--epochs", "2"]);
    let o = Command::new(env!("CARGO_BIN_EXE_scmz"))
        .args([
            "project",
            d.join("new_batch.h5ad").to_str().unwrap(),
            "--model",
            "plain",
            "-o",
        ])
        .args([d.join("x.h5ad").to_str().unwrap(), "--finetune", "3"])
        .env("SCMZ_ZOO", &zoo)
        .output()
        .unwrap();
    assert!(stderr(&o).contains("--batch-key"), "{}", stderr(&o));
}
