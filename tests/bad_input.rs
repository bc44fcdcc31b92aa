//! Damaged and malformed files, built from the real ones: each gives one line naming the file and
//! the element, a non-zero exit code and no panic.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

use common::{copy_of, scmz, stderr};
use hdf5::types::VarLenUnicode;

/// Runs `scmz inspect` (plus `extra` flags) and checks the one-line error mentions every `needle`.
fn fails_clearly(path: &Path, extra: &[&str], needles: &[&str]) {
    let cache = tempfile::tempdir().unwrap();
    let mut args = vec!["inspect", path.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = scmz(&args, cache.path());
    let err = stderr(&out);
    assert!(
        !out.status.success(),
        "succeeded on {}: {}",
        path.display(),
        common::stdout(&out)
    );
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    let name = path.file_name().unwrap().to_str().unwrap();
    assert!(err.contains(name), "file not named: {err}");
    for n in needles {
        assert!(err.contains(n), "`{n}` missing from: {err}");
    }
}

/// Sets the string attribute `name` of `g` to `value`, replacing any there.
fn set_text_attr(g: &hdf5::Group, name: &str, value: &str) {
    let _ = g.delete_attr(name);
    let v: VarLenUnicode = value.parse().unwrap();
    g.new_attr::<VarLenUnicode>()
        .create(name)
        .unwrap()
        .write_scalar(&v)
        .unwrap();
}

fn rw(path: &Path, f: impl FnOnce(&hdf5::File)) {
    let file = hdf5::File::open_rw(path).unwrap();
    f(&file);
    file.close().unwrap();
}

#[test]
fn truncated_file() {
    let (_d, p) = copy_of("pbmc68k_counts.h5ad");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    fails_clearly(&p, &[], &["truncated"]);
}

#[test]
fn not_hdf5_with_h5ad_name() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("table.h5ad");
    std::fs::write(&p, "cell,gene,count\nA,B,1\n").unwrap();
    fails_clearly(&p, &[], &["not an HDF5 file"]);
}

#[test]
fn unknown_encoding_type() {
    let (_d, p) = copy_of("pbmc68k_counts.h5ad");
    rw(&p, |f| {
        set_text_attr(&f.group("X").unwrap(), "encoding-type", "zarr_matrix");
    });
    fails_clearly(&p, &[], &["`X`", "zarr_matrix"]);
}

#[test]
fn indptr_inconsistent_with_shape_and_data() {
    let (_d, p) = copy_of("pbmc68k_counts.h5ad");
    rw(&p, |f| {
        let ptr = f.dataset("X/indptr").unwrap();
        let mut v = ptr.read_raw::<i32>().unwrap();
        v[10] = 0; // decreasing offsets inside the first rows
        ptr.write_raw(&v).unwrap();
    });
    fails_clearly(&p, &[], &["X/indptr", "non-decreasing"]);

    let (_d2, p2) = copy_of("pbmc68k_counts.h5ad");
    rw(&p2, |f| {
        f.unlink("X/indptr").unwrap();
        let short: Vec<i32> = (0..600).collect();
        f.group("X")
            .unwrap()
            .new_dataset_builder()
            .with_data(&short)
            .create("indptr")
            .unwrap();
    });
    fails_clearly(&p2, &[], &["X/indptr", "600 entries", "701"]);
}

#[test]
fn indices_out_of_range() {
    let (_d, p) = copy_of("pbmc68k_counts.h5ad");
    rw(&p, |f| {
        let idx = f.dataset("X/indices").unwrap();
        let mut v = idx.read_raw::<i32>().unwrap();
        v[3] = 5000;
        idx.write_raw(&v).unwrap();
    });
    fails_clearly(&p, &[], &["X/indices", "column 5000 in row 0", "765 columns"]);
}

#[test]
fn nan_and_infinite_values() {
    // In the first cell, and in the last of the file's 10,000 (the row is named either way).
    for (bad, last) in [(f32::NAN, false), (f32::INFINITY, true)] {
        let (_d, p) = copy_of("mouse_10k_subset.h5ad");
        rw(&p, |f| {
            let data = f.dataset("X/data").unwrap();
            let mut v = data.read_raw::<f32>().unwrap();
            let k = if last { v.len() - 1 } else { 7 };
            v[k] = bad;
            data.write_raw(&v).unwrap();
        });
        let row = if last { 9999 } else { 0 };
        fails_clearly(&p, &[], &["X/data", &format!("holds {bad} in row {row}")]);
    }
}

#[test]
fn negative_values_are_not_counts() {
    let (_d, p) = copy_of("pbmc68k_counts.h5ad");
    rw(&p, |f| {
        for m in ["X/data", "layers/counts/data"] {
            let data = f.dataset(m).unwrap();
            let mut v = data.read_raw::<f32>().unwrap();
            v[2] = -3.0;
            data.write_raw(&v).unwrap();
        }
    });
    // Opening works (scaled data is legitimate) but it is reported as normalised...
    let ds = scmz::data::Dataset::open(&p).unwrap();
    assert!(!ds.info().values.is_counts());
    // ...and anything that needs counts refuses it.
    fails_clearly(&p, &["--counts"], &["`X`", "negative values", "not raw counts"]);
}

#[test]
fn normalised_file_refused_where_counts_are_needed() {
    fails_clearly(
        &common::data("pbmc68k_reduced.h5ad"),
        &["--counts"],
        &["not raw counts", "raw/X"],
    );
}

#[test]
fn empty_matrix() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("empty.h5ad");
    let w = scmz::data::writer::H5adWriter::create(&p, 3).unwrap();
    let mut ann = scmz::data::writer::Annotations::default();
    ann.var.index = vec!["A".into(), "B".into(), "C".into()];
    w.finish(&ann).unwrap();
    fails_clearly(&p, &[], &["`X`", "empty"]);
}

#[test]
fn missing_index() {
    let (_d, p) = copy_of("pbmc68k_counts.h5ad");
    rw(&p, |f| f.unlink("obs/index").unwrap());
    fails_clearly(&p, &[], &["obs/index", "no index"]);
}

#[test]
fn duplicated_gene_names_without_a_unique_key() {
    let (_d, p) = copy_of("pbmc68k_counts.h5ad");
    rw(&p, |f| {
        let ds = f.dataset("var/index").unwrap();
        let mut names: Vec<VarLenUnicode> = ds.read_raw().unwrap();
        names[1] = names[0].clone();
        names[5] = names[4].clone();
        ds.write_raw(&names).unwrap();
    });
    fails_clearly(&p, &[], &["var/index", "2 duplicated", "HES4"]);
}

#[test]
fn truncated_matrix_market() {
    let d = tempfile::tempdir().unwrap();
    let src = common::data("10x/1.2.0/filtered_gene_bc_matrices/hg19_chr21");
    for f in ["genes.tsv", "barcodes.tsv"] {
        std::fs::copy(src.join(f), d.path().join(f)).unwrap();
    }
    let text = std::fs::read_to_string(src.join("matrix.mtx")).unwrap();
    let cut: String = text.lines().take(8).map(|l| format!("{l}\n")).collect();
    std::fs::write(d.path().join("matrix.mtx"), cut).unwrap();
    fails_clearly(&d.path().join("matrix.mtx"), &[], &["truncated"]);
}

/// Replaces dataset `name` with `data` (its attributes are lost; these parts have none).
fn replace<T: hdf5::H5Type>(f: &hdf5::File, name: &str, data: &[T]) {
    f.unlink(name).unwrap();
    let (group, leaf) = name.rsplit_once('/').unwrap();
    f.group(group)
        .unwrap()
        .new_dataset_builder()
        .with_data(data)
        .create(leaf)
        .unwrap();
}

#[test]
fn sparse_parts_of_the_wrong_type() {
    // Float indices would be truncated by HDF5's conversion without a word.
    let (_d, p) = copy_of("pbmc68k_counts.h5ad");
    rw(&p, |f| {
        let v: Vec<f64> = f
            .dataset("X/indices")
            .unwrap()
            .read_raw::<i32>()
            .unwrap()
            .iter()
            .map(|&c| c as f64 + 0.5)
            .collect();
        replace(f, "X/indices", &v);
    });
    fails_clearly(&p, &[], &["X/indices", "64-bit floats", "integers are needed"]);

    // Strings where the counts should be.
    let (_d2, p2) = copy_of("pbmc68k_counts.h5ad");
    rw(&p2, |f| {
        let n = f.dataset("X/data").unwrap().size();
        let v: Vec<VarLenUnicode> = (0..n).map(|_| "1".parse().unwrap()).collect();
        replace(f, "X/data", &v);
    });
    fails_clearly(&p2, &[], &["X/data", "strings", "numbers are needed"]);
}

#[test]
fn a_shape_of_floats_or_an_unknown_encoding_version() {
    let (_d, p) = copy_of("pbmc68k_counts.h5ad");
    rw(&p, |f| {
        let x = f.group("X").unwrap();
        let shape = x.attr("shape").unwrap().read_raw::<i64>().unwrap();
        x.delete_attr("shape").unwrap();
        let v: Vec<f64> = shape.iter().map(|&s| s as f64 + 0.5).collect();
        x.new_attr_builder().with_data(&v).create("shape").unwrap();
    });
    fails_clearly(&p, &[], &["`X`", "shape"]);

    let (_d2, p2) = copy_of("pbmc68k_counts.h5ad");
    rw(&p2, |f| {
        set_text_attr(&f.group("X").unwrap(), "encoding-version", "9.9.9");
    });
    fails_clearly(&p2, &[], &["`X`", "encoding-version `9.9.9`"]);

    // On the file itself and on obs, as on X.
    for (element, shown) in [("/", "`/`"), ("obs", "`obs`")] {
        let (_d3, p3) = copy_of("pbmc68k_counts.h5ad");
        rw(&p3, |f| {
            set_text_attr(&f.group(element).unwrap(), "encoding-version", "9.9.9");
        });
        fails_clearly(&p3, &[], &[shown, "encoding-version `9.9.9`"]);
    }
}

#[test]
fn genome_is_refused_where_a_file_has_no_genome_groups() {
    let (_d, p) = copy_of("pbmc68k_counts.h5ad");
    fails_clearly(&p, &["--genome", "hg19"], &["--genome hg19", "Cell Ranger 2"]);
}

/// Settings in the environment that are not numbers are said once, with the default used (they
/// were ignored without a word): the HDF5 watchdog's timeout and the readers' memory budget.
#[test]
fn settings_in_the_environment_that_are_not_numbers_are_said() {
    let zoo = tempfile::tempdir().unwrap();
    let data = common::data("pbmc68k_counts.h5ad");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_scmz"))
        .args([
            "train",
            data.to_str().unwrap(),
            "--name",
            "m",
            "--epochs",
            "1",
            "--genes",
            "hvg:100",
        ])
        .env("SCMZ_ZOO", zoo.path())
        .env("SCMZ_HDF5_TIMEOUT", "soon")
        .env("SCMZ_DATA_CACHE_MB", "lots")
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    for said in [
        "warning: SCMZ_HDF5_TIMEOUT=`soon` is not a whole number; using 120",
        "warning: SCMZ_DATA_CACHE_MB=`lots` is not a whole number; using 512",
    ] {
        assert!(err.contains(said), "`{said}` missing from: {err}");
    }
}
