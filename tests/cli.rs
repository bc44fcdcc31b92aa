//! The command line as a user runs it: scans, the metadata cache, inspect and the benchmark.
#![allow(clippy::unwrap_used)]

mod common;

use common::{data, scmz, stderr, stdout};
use scmz::data::Dataset;
use serde_json::Value;

#[test]
fn datasets_lists_every_bundled_file_and_caches_metadata() {
    let cache = tempfile::tempdir().unwrap();
    let root = data("");
    let out = scmz(&["datasets", root.to_str().unwrap(), "--json"], cache.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let rows: Vec<Value> = serde_json::from_str(&stdout(&out)).unwrap();
    // 12 data files, and the AnnData scvi-tools saved beside a model fixture.
    assert_eq!(rows.len(), 13, "{rows:#?}");
    assert!(rows.iter().any(|r| r["path"]
        .as_str()
        .unwrap()
        .ends_with("scvi-tools/scvi_nb_1layer/adata.h5ad")));
    // anndata 0.13's nullable-string layout is listed like any other file.
    assert!(rows
        .iter()
        .any(|r| r["path"].as_str().unwrap().ends_with("nullable_strings.h5ad") && r["error"].is_null()));
    let by_name = |n: &str| {
        rows.iter()
            .find(|r| r["path"].as_str().unwrap().ends_with(n))
            .unwrap()
            .clone()
    };
    let pbmc = by_name("pbmc68k_counts.h5ad");
    assert_eq!(pbmc["values"], "counts");
    assert_eq!(pbmc["label_columns"][0]["name"], "bulk_labels");
    assert_eq!(pbmc["label_columns"][0]["n_categories"], 10);
    assert_eq!(by_name("pbmc68k_reduced.h5ad")["values"], "normalised");
    assert_eq!(by_name("pbmc68k_reduced.h5ad")["format"], "h5ad (pre-0.7)");
    let mouse = by_name("mouse_10k_subset.h5ad");
    assert_eq!(
        (mouse["species"].as_str(), mouse["gene_id_key"].as_str()),
        (Some("mouse"), Some("gene_ids"))
    );
    assert_eq!(mouse["duplicated_genes"][0], "Rp1");
    assert_eq!(by_name("filtered_feature_bc_matrix.h5")["gene_id_kind"], "ensembl");
    assert_eq!(by_name("int-ids")["gene_id_kind"], "integer");
    assert!(rows.iter().all(|r| r["cached"].is_null() && r["error"].is_null()));

    // Unchanged files are served from the cache without being opened.
    let again: Vec<Value> = serde_json::from_str(&stdout(&scmz(
        &["datasets", root.to_str().unwrap(), "--json"],
        cache.path(),
    )))
    .unwrap();
    assert!(again.iter().all(|r| r["cached"] == true), "{again:#?}");
    assert_eq!(again.len(), rows.len());
    // The library says the same without a process boundary: no dataset opened on a cached scan.
    let before = scmz::data::dataset::datasets_opened();
    let cache_file = cache.path().join("catalog.json");
    let rows = scmz::data::catalog::scan(std::slice::from_ref(&root), Some(&cache_file), None);
    assert!(rows.iter().all(|r| r.cached));
    assert_eq!(scmz::data::dataset::datasets_opened(), before);
}

#[test]
fn a_changed_file_is_read_again() {
    let cache = tempfile::tempdir().unwrap();
    let (dir, p) = common::copy_of("pbmc68k_counts.h5ad");
    let scan = || -> Vec<Value> {
        serde_json::from_str(&stdout(&scmz(
            &["datasets", dir.path().to_str().unwrap(), "--json"],
            cache.path(),
        )))
        .unwrap()
    };
    assert!(scan()[0]["cached"].is_null());
    assert_eq!(scan()[0]["cached"], true);
    std::fs::copy(data("mouse_10k_subset.h5ad"), &p).unwrap();
    let third = scan();
    assert!(third[0]["cached"].is_null());
    assert_eq!(third[0]["n_cells"], 10000);
}

#[test]
fn datasets_table_and_broken_files() {
    let cache = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(data("pbmc68k_counts.h5ad"), dir.path().join("good.h5ad")).unwrap();
    std::fs::write(dir.path().join("bad.h5ad"), "not hdf5").unwrap();
    let out = scmz(&["datasets", dir.path().to_str().unwrap()], cache.path());
    let text = stdout(&out);
    assert!(
        text.contains("good.h5ad") && text.contains("bulk_labels (10)"),
        "{text}"
    );
    // The table on stdout, the reasons on stderr (a script piping the table gets the table).
    assert!(
        text.contains("bad.h5ad") && !text.contains("not an HDF5 file"),
        "{text}"
    );
    assert!(stderr(&out).contains("not an HDF5 file"), "{}", stderr(&out));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("1 of 2 datasets could not be read"));
}

#[test]
fn inspect_describes_one_dataset() {
    let cache = tempfile::tempdir().unwrap();
    let out = scmz(
        &["inspect", data("pbmc68k_counts.h5ad").to_str().unwrap()],
        cache.path(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for needle in [
        "700 cells x 765 genes",
        "raw counts",
        "layers/counts",
        "bulk_labels: categorical, 10 categories",
        "Dendritic (240)",
    ] {
        assert!(text.contains(needle), "`{needle}` missing:\n{text}");
    }
    let out = scmz(
        &["inspect", "--json", data("mouse_10k_subset.h5ad").to_str().unwrap()],
        cache.path(),
    );
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["info"]["genes"]["gene_id_key"], "gene_ids");
    assert_eq!(v["summary"]["duplicated_genes"][0], "Rp1");
}

#[test]
fn bench_read_reports_timings_and_memory() {
    let cache = tempfile::tempdir().unwrap();
    let out = scmz(
        &[
            "bench",
            "read",
            data("pbmc68k_counts.h5ad").to_str().unwrap(),
            "--repeat",
            "1",
            "--chunk-rows",
            "100",
        ],
        cache.path(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert!(v["open_ms"].as_f64().unwrap() > 0.0);
    let total: f64 = Dataset::open(data("pbmc68k_counts.h5ad"))
        .unwrap()
        .read_all()
        .unwrap()
        .row_sums()
        .iter()
        .sum();
    assert_eq!(v["sum_of_values"].as_f64().unwrap(), total);
}

/// Help and usage errors of the commands the engine runs name `scmz`, the command typed.
#[test]
fn engine_commands_name_scmz_in_their_help_and_errors() {
    let cache = tempfile::tempdir().unwrap();
    for command in ["train", "project", "compare"] {
        let o = scmz(&[command, "--help"], cache.path());
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(
            stdout(&o).contains(&format!("Usage: scmz {command} ")),
            "{}",
            stdout(&o)
        );
        assert!(!stdout(&o).contains("scmz-engine"), "{}", stdout(&o));
    }
    let o = scmz(&["train", "--epochs", "3"], cache.path());
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("Usage: scmz train "), "{}", stderr(&o));
    assert!(!stderr(&o).contains("scmz-engine"), "{}", stderr(&o));
}

/// `scmz version` fails, saying why, when its engine cannot start (a libtorch that moved): the
/// install's check relies on it.
#[test]
fn version_fails_with_the_reason_when_the_engine_cannot_start() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let scmz_bin = dir.path().join("scmz");
    std::fs::copy(env!("CARGO_BIN_EXE_scmz"), &scmz_bin).unwrap();
    let engine = dir.path().join("scmz-engine");
    std::fs::write(
        &engine,
        "#!/bin/sh\necho 'scmz-engine: error while loading shared libraries: libtorch_cpu.so: cannot open shared object file' >&2\nexit 127\n",
    )
    .unwrap();
    std::fs::set_permissions(&engine, std::fs::Permissions::from_mode(0o755)).unwrap();
    let o = std::process::Command::new(&scmz_bin).arg("version").output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let err = stderr(&o);
    assert!(
        err.contains("the engine does not start") && err.contains("libtorch_cpu.so"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    // An engine that answers something else is not taken for one.
    std::fs::write(&engine, "#!/bin/sh\necho garbage\n").unwrap();
    let o = std::process::Command::new(&scmz_bin).arg("version").output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stderr(&o).contains("garbage"), "{}", stderr(&o));
    std::fs::remove_file(&engine).unwrap();
    let o = std::process::Command::new(&scmz_bin).arg("version").output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("cannot run the engine"), "{}", stderr(&o));
}

/// `scmz ui` on a folder that is not there says so (it showed the hint for an empty folder).
#[test]
fn ui_names_a_folder_that_is_not_there() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("does-not-exist");
    let o = scmz(&["ui", missing.to_str().unwrap()], dir.path());
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(
        stderr(&o).contains("does-not-exist") && stderr(&o).contains("No such file or directory"),
        "{}",
        stderr(&o)
    );
    let file = data("pbmc68k_counts.h5ad");
    let o = scmz(&["ui", file.to_str().unwrap()], dir.path());
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("not a folder"), "{}", stderr(&o));
}
