//! Gene matching, overlap reports and merging on the real files.
#![allow(clippy::unwrap_used)]

mod common;

use common::{data, run_python, scmz, stderr, stdout};
use scmz::data::{Dataset, OpenOptions};
use scmz::genes::merge::{merge, MergeOptions, PRESENCE};
use scmz::genes::{compare_datasets, Route};

fn open(rel: &str) -> Dataset {
    Dataset::open(data(rel)).unwrap()
}

#[test]
fn tenx_v2_and_v3_match_by_the_best_shared_key() {
    let v2 = open("10x/1.2.0/filtered_gene_bc_matrices_h5.h5");
    let v3 = open("10x/3.0.0/filtered_feature_bc_matrix.h5");
    let r = compare_datasets(&v2, &v3).unwrap();
    // The v2 file's `genes` hold symbols (hg19), so symbols are the key both sides share.
    assert_eq!(r.key, "symbol");
    assert!(r.reason.contains("only one side has Ensembl ids"), "{}", r.reason);
    assert_eq!(r.found, 274);
    // The v3 twin against itself by Ensembl id: every gene, by id.
    let mtx = open("10x/3.0.0/filtered_feature_bc_matrix");
    let r = compare_datasets(&mtx, &v3).unwrap();
    assert_eq!((r.key.as_str(), r.found), ("Ensembl id", 507));
    assert_eq!(r.routes, vec![(Route::GeneId, 507)]);
}

#[test]
fn pbmc_against_the_whole_transcriptome_sample() {
    let r = compare_datasets(&open("celltypist_sample_counts.h5ad"), &open("pbmc68k_counts.h5ad")).unwrap();
    assert_eq!((r.found, r.b_genes), (764, 765));
    assert_eq!(r.missing.len(), 1);
    assert!(r.missing[0].mean_in_b.unwrap() > 0.0);
    // Annotation drift is counted: 32,786 - 19,388 symbols of the sample are not GENCODE v44.
    assert_eq!(r.stale_symbols_a.as_ref().unwrap().0, 32_786 - 19_388);
    assert!(r
        .warnings
        .iter()
        .any(|w| w.contains("not GENCODE v44") && w.contains("RP11-")));
}

#[test]
fn mouse_against_human_goes_through_orthologs() {
    let r = compare_datasets(&open("mouse_10k_subset.h5ad"), &open("pbmc68k_counts.h5ad")).unwrap();
    assert_eq!(r.cross_species, Some(("mouse".into(), "human".into())));
    assert_eq!(r.routes, vec![(Route::Ortholog, 15)]);
    assert!(r.warnings.iter().any(|w| w.starts_with("cross-species")));
    assert!(r.warnings.iter().any(|w| w.contains("Rp1")), "{:?}", r.warnings);
    let back = compare_datasets(&open("pbmc68k_counts.h5ad"), &open("mouse_10k_subset.h5ad")).unwrap();
    assert_eq!(back.routes, vec![(Route::Ortholog, 15), (Route::CaseInsensitive, 2)]);
}

/// A copy of pbmc68k_counts keeping genes `keep` (Python slices), written by anndata.
fn subset(dir: &std::path::Path, name: &str, keep: &str, suffix: &str) -> std::path::PathBuf {
    let out = dir.join(name);
    run_python(
        &format!(
            "import sys, anndata; a = anndata.read_h5ad(sys.argv[1]); b = a[:, {keep}].copy(); \
             b.obs_names = [n + '{suffix}' for n in b.obs_names]; b.write_h5ad(sys.argv[2])"
        ),
        &[&data("pbmc68k_counts.h5ad"), &out],
    );
    out
}

#[test]
fn removing_genes_is_reported_exactly_and_coverage_matches_python() {
    let dir = tempfile::tempdir().unwrap();
    // Every third gene of the first 690 removed: 230 of 765 genes (30 %) gone.
    let partial = subset(
        dir.path(),
        "partial.h5ad",
        "[i for i in range(765) if not (i % 3 == 0 and i < 690)]",
        "",
    );
    let r = compare_datasets(&Dataset::open(&partial).unwrap(), &open("pbmc68k_counts.h5ad")).unwrap();
    assert_eq!(r.found, 535);
    assert_eq!(r.pct_b_found, 100.0 * 535.0 / 765.0);
    assert_eq!(r.pct_a_used, 100.0);
    // Counts-weighted coverage of the full data on the partial model's genes, computed by pandas.
    let r = compare_datasets(&open("pbmc68k_counts.h5ad"), &Dataset::open(&partial).unwrap()).unwrap();
    let py = run_python(
        "import sys, anndata; a = anndata.read_h5ad(sys.argv[1]); p = anndata.read_h5ad(sys.argv[2]); \
         X = a.X.astype('float64'); m = a.var_names.isin(p.var_names); print(repr(float(X[:, m].sum() / X.sum())))",
        &[&data("pbmc68k_counts.h5ad"), &partial],
    );
    let expected: f64 = py.trim().parse().unwrap();
    assert!(
        (r.counts_coverage.unwrap() - expected).abs() < 1e-9,
        "{:?} vs {expected}",
        r.counts_coverage
    );
    assert!(expected < 0.95 && expected > 0.3);
}

#[test]
fn merge_over_the_union_with_a_presence_mask() {
    let dir = tempfile::tempdir().unwrap();
    let a = subset(dir.path(), "a.h5ad", "0:500", "-a");
    let b = subset(dir.path(), "b.h5ad", "300:765", "-b");
    let out = dir.path().join("merged.h5ad");
    let inputs = vec![Dataset::open(&a).unwrap(), Dataset::open(&b).unwrap()];
    let s = merge(
        &inputs,
        &out,
        &MergeOptions {
            force: false,
            chunk_rows: 128,
        },
    )
    .unwrap();
    assert_eq!((s.n_cells, s.n_genes), (1400, 765));
    assert_eq!(s.inputs[1].shared_with_earlier, 200);
    let merged = Dataset::open(&out).unwrap();
    let full = open("pbmc68k_counts.h5ad");
    assert_eq!(merged.info().genes.index, full.info().genes.index);
    // Every count: the first 700 cells are a's genes 0..500, the next 700 b's genes 300..765.
    let m = merged.read_all().unwrap().to_dense();
    let f = full.read_all().unwrap().to_dense();
    for cell in 0..700 {
        for g in 0..765 {
            let want_a = if g < 500 { f[cell * 765 + g] } else { 0.0 };
            let want_b = if g >= 300 { f[cell * 765 + g] } else { 0.0 };
            assert_eq!(m[cell * 765 + g], want_a, "cell {cell} gene {g}");
            assert_eq!(m[(700 + cell) * 765 + g], want_b, "cell {} gene {g}", 700 + cell);
        }
    }
    let py = run_python(
        &format!(
            "import sys, anndata, numpy as np; m = anndata.read_h5ad(sys.argv[1]); p = m.varm['{PRESENCE}']; \
             assert p.shape == (765, 2); assert p[:500, 0].all() and not p[500:, 0].any(); \
             assert p[300:, 1].all() and not p[:300, 1].any(); \
             assert list(m.obs['dataset'].cat.categories) == ['a.h5ad', 'b.h5ad']; \
             assert (m.obs['bulk_labels'].astype(str).values[:700] == m.obs['bulk_labels'].astype(str).values[700:]).all(); \
             print(m.shape, m.uns['scmz_merge']['key'])"
        ),
        &[&out],
    );
    assert_eq!(py.trim(), "(1400, 765) symbol");
}

#[test]
fn merging_normalised_with_counts_is_refused_unless_forced() {
    let cache = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.h5ad");
    let args = |force: bool| {
        let mut v = vec![
            "merge".to_string(),
            data("pbmc68k_counts.h5ad").display().to_string(),
            data("pbmc68k_reduced.h5ad").display().to_string(),
            "-o".into(),
            out.display().to_string(),
        ];
        if force {
            v.push("--force".into());
        }
        v
    };
    let o = scmz(
        &args(false).iter().map(String::as_str).collect::<Vec<_>>(),
        cache.path(),
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("normalised") && stderr(&o).contains("--force"),
        "{}",
        stderr(&o)
    );
    assert!(!out.exists());
    let o = scmz(&args(true).iter().map(String::as_str).collect::<Vec<_>>(), cache.path());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("1,400 cells x 765 genes"));
}

#[test]
fn merge_of_the_whole_transcriptome_case_across_species() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("wt.h5ad");
    let inputs: Vec<Dataset> = [
        "celltypist_sample_counts.h5ad",
        "pbmc68k_counts.h5ad",
        "mouse_10k_subset.h5ad",
    ]
    .iter()
    .map(|f| open(f))
    .collect();
    let s = merge(&inputs, &out, &MergeOptions::default()).unwrap();
    assert_eq!(s.species.as_deref(), Some("human"));
    assert_eq!(s.inputs[1].shared_with_earlier, 764);
    assert!(s.inputs[2].shared_with_earlier > 500, "{:?}", s.inputs[2]);
    let merged = Dataset::open(&out).unwrap();
    assert_eq!(merged.n_cells(), 11_259);
    let total: f64 = merged.read_all().unwrap().row_sums().iter().sum();
    let inputs_total: f64 = inputs
        .iter()
        .map(|d| d.read_all().unwrap().row_sums().iter().sum::<f64>())
        .sum();
    assert_eq!(total, inputs_total, "no count lost or invented");
}

#[test]
fn overlap_cli_tables_json_files_and_zero_overlap() {
    let cache = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("genes.csv");
    let a = data("celltypist_sample_counts.h5ad");
    let b = data("pbmc68k_counts.h5ad");
    let o = scmz(
        &[
            "overlap",
            a.to_str().unwrap(),
            b.to_str().unwrap(),
            "--out",
            csv.to_str().unwrap(),
        ],
        cache.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("764 of 765 genes of B in A (99.9 %)"),
        "{}",
        stdout(&o)
    );
    let py = run_python(
        "import sys, pandas as pd; t = pd.read_csv(sys.argv[1]); print(len(t), int(t['found'].sum()), t.loc[~t['found'], 'gene'].iloc[0])",
        &[&csv],
    );
    assert_eq!(py.trim(), "765 764 TMBIM4-1");
    // Parquet, read back with polars.
    let pq = dir.path().join("pairs.parquet");
    let c = data("mouse_10k_subset.h5ad");
    let o = scmz(
        &[
            "overlap",
            a.to_str().unwrap(),
            b.to_str().unwrap(),
            c.to_str().unwrap(),
            "--out",
            pq.to_str().unwrap(),
        ],
        cache.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("99.9 (symbol)"), "{}", stdout(&o));
    use polars::prelude::*;
    let df = ParquetReader::new(std::fs::File::open(&pq).unwrap()).finish().unwrap();
    assert_eq!(df.height(), 6);
    // Zero overlap: one line naming both sides' identifiers and a fix.
    let o = scmz(
        &["overlap", data("10x/int-ids").to_str().unwrap(), b.to_str().unwrap()],
        cache.path(),
    );
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("no gene of pbmc68k_counts.h5ad") && err.contains("int-ids"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1);
    let o = scmz(
        &["overlap", a.to_str().unwrap(), b.to_str().unwrap(), "--out", "x.txt"],
        cache.path(),
    );
    assert!(stderr(&o).contains("use a .csv or .parquet"), "{}", stderr(&o));
    let _ = OpenOptions::default();
}
