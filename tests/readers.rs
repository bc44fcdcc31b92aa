//! Every real file in tests/data opens and reads the same matrices as its twin or as anndata.
#![allow(clippy::unwrap_used)]

mod common;

use common::{data, run_python};
use scmz::data::{ColumnKind, Dataset, Format, H5adLayout, OpenOptions, ValueKind};

/// Each row of a chunk as (gene, value) pairs sorted by gene.
fn chunk_rows(chunk: &scmz::data::CsrChunk) -> Vec<Vec<(u32, f32)>> {
    (0..chunk.n_rows())
        .map(|i| {
            let (idx, val) = chunk.row(i);
            let mut r: Vec<(u32, f32)> = idx.iter().copied().zip(val.iter().copied()).collect();
            r.sort_by_key(|e| e.0);
            r
        })
        .collect()
}

fn sorted_rows(ds: &Dataset) -> Vec<Vec<(u32, f32)>> {
    chunk_rows(&ds.read_all().unwrap())
}

#[test]
fn every_shared_file_opens() {
    let files = [
        ("pbmc68k_counts.h5ad", 700, 765),
        ("pbmc68k_reduced.h5ad", 700, 765),
        ("mouse_10k_subset.h5ad", 10_000, 1000),
        ("celltypist_sample_counts.h5ad", 559, 32_786),
        ("anndata/v0.7.0.h5ad", 30, 20),
        ("10x/1.2.0/filtered_gene_bc_matrices_h5.h5", 12, 343),
        ("10x/1.2.0/filtered_gene_bc_matrices/hg19_chr21", 12, 343),
        ("10x/3.0.0/filtered_feature_bc_matrix.h5", 1107, 507),
        ("10x/3.0.0/filtered_feature_bc_matrix", 1107, 507),
        ("10x/int-ids", 5, 6),
    ];
    for (f, cells, genes) in files {
        let ds = Dataset::open(data(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert_eq!((ds.n_cells(), ds.n_genes()), (cells, genes), "{f}");
        assert_eq!(ds.info().cell_ids.len(), cells, "{f}");
        assert_eq!(ds.info().genes.index.len(), genes, "{f}");
        let all = ds.read_all().unwrap();
        assert_eq!(all.n_rows(), cells, "{f}");
        assert!(all.nnz() > 0, "{f}");
    }
}

#[test]
fn tenx_h5_and_matrix_market_twins_are_identical() {
    for (h5, mtx, version) in [
        (
            "10x/1.2.0/filtered_gene_bc_matrices_h5.h5",
            "10x/1.2.0/filtered_gene_bc_matrices/hg19_chr21",
            2,
        ),
        (
            "10x/3.0.0/filtered_feature_bc_matrix.h5",
            "10x/3.0.0/filtered_feature_bc_matrix",
            3,
        ),
    ] {
        let a = Dataset::open(data(h5)).unwrap();
        let b = Dataset::open(data(mtx)).unwrap();
        assert!(matches!(a.info().format, Format::TenxH5 { version: v, .. } if v == version));
        assert!(matches!(b.info().format, Format::TenxMtx { version: v, .. } if v == version));
        assert_eq!(a.info().cell_ids, b.info().cell_ids);
        assert_eq!(a.info().genes.index, b.info().genes.index);
        assert_eq!(a.info().genes.symbols(), b.info().genes.symbols());
        assert_eq!(sorted_rows(&a), sorted_rows(&b), "{h5} vs {mtx}");
    }
    // v3 ids are Ensembl, names are symbols.
    let v3 = Dataset::open(data("10x/3.0.0/filtered_feature_bc_matrix.h5")).unwrap();
    assert_eq!(v3.info().genes.gene_id_key.as_deref(), Some("index"));
    assert_eq!(v3.info().genes.symbol_key.as_deref(), Some("name"));
}

#[test]
fn counts_and_normalised_are_told_apart() {
    let reduced = Dataset::open(data("pbmc68k_reduced.h5ad")).unwrap();
    assert_eq!(
        reduced.info().format,
        Format::H5ad {
            layout: H5adLayout::Legacy
        }
    );
    assert!(matches!(reduced.info().values, ValueKind::Normalised { .. }));
    // raw.X is log-normalised: still not counts, and said so.
    let raw = Dataset::open_with(
        data("pbmc68k_reduced.h5ad"),
        &OpenOptions {
            layer: Some("raw".into()),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(raw.info().matrix, "raw/X");
    match &raw.info().values {
        ValueKind::Normalised { reason } => assert!(reason.contains("log-normalised"), "{reason}"),
        v => panic!("raw.X taken for {v:?}"),
    }
    let counts = Dataset::open(data("pbmc68k_counts.h5ad")).unwrap();
    assert_eq!(counts.info().values, ValueKind::Counts);
    let labels = counts.info().obs_column("bulk_labels").unwrap();
    assert!(labels.is_label_like());
    match &labels.kind {
        ColumnKind::Categorical {
            categories,
            counts,
            codes,
            ..
        } => {
            assert_eq!(categories.len(), 10);
            assert_eq!(counts.iter().sum::<u64>(), 700);
            assert_eq!(codes.len(), 700);
        }
        k => panic!("bulk_labels read as {k:?}"),
    }
    // Legacy categories come from uns/<col>_categories and agree with the modern file.
    let legacy = reduced.info().obs_column("bulk_labels").unwrap();
    assert_eq!(legacy.top_categories(3), labels.top_categories(3));
}

#[test]
fn duplicated_symbols_are_reported_and_ensembl_ids_found() {
    let ds = Dataset::open(data("mouse_10k_subset.h5ad")).unwrap();
    let genes = &ds.info().genes;
    assert_eq!(genes.gene_id_key.as_deref(), Some("gene_ids"));
    assert!(genes.gene_ids().unwrap()[0].starts_with("ENSMUSG"));
    let summary = scmz::data::catalog::Summary::from_info(ds.info());
    assert_eq!(summary.duplicated_genes, vec!["Rp1".to_string()]);
    assert_eq!(summary.species.as_deref(), Some("mouse"));
    assert!(summary
        .warnings
        .iter()
        .any(|w| w.contains("Rp1") && w.contains("gene_ids")));
}

#[test]
fn streaming_gives_the_same_cell_sums_as_reading_whole_and_as_anndata() {
    let path = data("mouse_10k_subset.h5ad");
    let ds = Dataset::open(&path).unwrap();
    let whole = ds.read_all().unwrap().row_sums();
    let mut streamed = Vec::new();
    let mut largest = 0;
    for chunk in ds.chunks(512) {
        let chunk = chunk.unwrap();
        assert!(chunk.n_rows() <= 512);
        largest = largest.max(chunk.heap_bytes());
        streamed.extend(chunk.row_sums());
    }
    assert_eq!(streamed, whole);
    // 512 cells of ~70 genes each: a few hundred KiB, not the whole 5.5 MB matrix.
    assert!(largest < 1 << 20, "largest chunk {largest} bytes");
    let py = run_python(
        "import sys, anndata; a = anndata.read_h5ad(sys.argv[1]); print('\\n'.join(str(float(v)) for v in a.X.sum(axis=1).A1))",
        &[&path],
    );
    let expected: Vec<f64> = py.lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(expected.len(), whole.len());
    for (a, b) in expected.iter().zip(&whole) {
        assert!((a - b).abs() < 1e-3, "{a} vs {b}");
    }
}

#[test]
fn csc_and_dense_matrices_stream_like_csr() {
    let dir = tempfile::tempdir().unwrap();
    let csc = dir.path().join("csc.h5ad");
    let dense = dir.path().join("dense.h5ad");
    run_python(
        "import sys, anndata; a = anndata.read_h5ad(sys.argv[1]); b = a.copy(); b.X = a.X.tocsc(); b.write_h5ad(sys.argv[2]); c = a.copy(); c.X = a.X.toarray(); c.write_h5ad(sys.argv[3])",
        &[&data("pbmc68k_counts.h5ad"), &csc, &dense],
    );
    let reference = Dataset::open(data("pbmc68k_counts.h5ad")).unwrap();
    let want = sorted_rows(&reference);
    for p in [&csc, &dense] {
        let ds = Dataset::open(p).unwrap();
        assert_eq!(ds.info().values, ValueKind::Counts);
        let mut got = Vec::new();
        for chunk in ds.chunks(97) {
            got.extend(chunk_rows(&chunk.unwrap()));
        }
        assert_eq!(got, want, "{}", p.display());
    }
}

#[test]
fn layers_and_raw_are_chosen_and_reported() {
    let ds = Dataset::open(data("pbmc68k_counts.h5ad")).unwrap();
    assert_eq!(ds.info().matrix, "X");
    assert!(ds.info().matrices.iter().any(|m| m.location == "layers/counts"));
    let layer = Dataset::open_with(
        data("pbmc68k_counts.h5ad"),
        &OpenOptions {
            layer: Some("counts".into()),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(layer.info().matrix, "layers/counts");
    assert_eq!(layer.read_all().unwrap(), ds.read_all().unwrap());
    let err = Dataset::open_with(
        data("pbmc68k_counts.h5ad"),
        &OpenOptions {
            layer: Some("spliced".into()),
            ..Default::default()
        },
    )
    .err()
    .unwrap();
    assert!(
        err.to_string().contains("layers/spliced") && err.to_string().contains("layers/counts"),
        "{err}"
    );
    // anndata 0.7: raw/X has its own gene list (40 genes vs 20).
    let raw = Dataset::open_with(
        data("anndata/v0.7.0.h5ad"),
        &OpenOptions {
            layer: Some("raw".into()),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!((raw.n_cells(), raw.n_genes()), (30, 40));
    let v07 = Dataset::open(data("anndata/v0.7.0.h5ad")).unwrap();
    assert_eq!(
        v07.info().format,
        Format::H5ad {
            layout: H5adLayout::V07
        }
    );
    assert!(v07.info().obs_column("obs_cat").unwrap().is_label_like());
}

#[test]
fn libtorch_runs_in_the_engine_process() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_scmz-engine"))
        .args([
            "selftest",
            data("pbmc68k_counts.h5ad").to_str().unwrap(),
            "--cells",
            "100",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((v["cells"].as_u64(), v["genes"].as_u64()), (Some(100), Some(765)));
    assert!(v["max_abs_diff"].as_f64().unwrap() < 1e-4);
}

#[test]
fn the_catalog_does_not_follow_symlinked_folders_or_walk_too_deep() {
    let root = tempfile::tempdir().unwrap();
    let inner = root.path().join("a");
    std::fs::create_dir_all(&inner).unwrap();
    std::fs::copy(data("pbmc68k_counts.h5ad"), inner.join("p.h5ad")).unwrap();
    // A link back up: following it would never end.
    std::os::unix::fs::symlink(root.path(), inner.join("loop")).unwrap();
    let mut deep = root.path().to_path_buf();
    for i in 0..12 {
        deep = deep.join(format!("d{i}"));
    }
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::copy(data("pbmc68k_counts.h5ad"), deep.join("too_deep.h5ad")).unwrap();
    let found = scmz::data::catalog::find_datasets(&[root.path().to_path_buf()]);
    assert_eq!(found, [inner.join("p.h5ad")]);
}

/// anndata 0.13 with pandas 3 writes string indices and columns as `nullable-string-array`
/// groups (`values` + `mask`); they read as the strings they hold, and as the same cells and
/// genes as the plain-string file they were cut from.
#[test]
fn nullable_string_arrays_of_anndata_0_13_are_read() {
    let ds = Dataset::open(data("anndata/nullable_strings.h5ad")).unwrap();
    let full = Dataset::open(data("kang_sample.h5ad")).unwrap();
    assert_eq!((ds.n_cells(), ds.n_genes()), (40, 300));
    assert_eq!(ds.info().cell_ids[..], full.info().cell_ids[..40]);
    assert_eq!(ds.info().genes.index[..], full.info().genes.index[..300]);
    let first = ds.read_rows(0, 40).unwrap();
    let same = full.read_rows(0, 40).unwrap();
    let keep = |c: &scmz::data::CsrChunk| -> Vec<(usize, u32, f32)> {
        (0..c.n_rows())
            .flat_map(|r| {
                let (i, v) = c.row(r);
                i.iter()
                    .zip(v)
                    .filter(|(&g, _)| g < 300)
                    .map(move |(&g, &x)| (r, g, x))
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    assert_eq!(keep(&first), keep(&same));
}

/// A Cell Ranger 2 file with two genome groups: the first is served with a word about the
/// other, `--genome` picks either, and an unknown genome is refused with the list.
#[test]
fn a_cell_ranger_2_file_with_two_genomes_names_both() {
    let dir = tempfile::tempdir().unwrap();
    let two = dir.path().join("two.h5");
    std::fs::copy(data("10x/1.2.0/filtered_gene_bc_matrices_h5.h5"), &two).unwrap();
    run_python(
        "import h5py, sys, numpy as np\n\
         f = h5py.File(sys.argv[1], 'r+')\n\
         f.copy('hg19_chr21', 'mm10_chr1')\n\
         g = f['mm10_chr1']\n\
         ids = [b'ENSMUSG%011d' % i for i in range(len(g['genes']))]\n\
         del g['genes']\n\
         g['genes'] = np.array(ids)\n",
        &[&two],
    );
    // Whether a dataset's gene table holds ids with this prefix (the second genome's only).
    let has = |ds: &Dataset, prefix: &str| {
        let g = &ds.info().genes;
        g.index
            .iter()
            .chain(g.columns.iter().flat_map(|(_, v)| v))
            .any(|x| x.starts_with(prefix))
    };
    let first = Dataset::open(&two).unwrap();
    assert!(!has(&first, "ENSMUSG"));
    let w = first.info().warnings.join("; ");
    assert!(w.contains("holds 2 genomes") && w.contains("--genome mm10_chr1"), "{w}");
    let opts = OpenOptions {
        genome: Some("mm10_chr1".into()),
        ..Default::default()
    };
    let other = Dataset::open_with(&two, &opts).unwrap();
    assert!(has(&other, "ENSMUSG"));
    assert_eq!(sorted_rows(&first), sorted_rows(&other));
    let opts = OpenOptions {
        genome: Some("hg38".into()),
        ..Default::default()
    };
    let e = Dataset::open_with(&two, &opts).err().unwrap().to_string();
    assert!(
        e.contains("no genome `hg38`") && e.contains("hg19_chr21, mm10_chr1"),
        "{e}"
    );
}

/// Rows a pass kept in memory (`hold_rows`) are served as the file serves them, with a gene
/// subset too; rows that do not cover the matrix are not kept, and `release_rows` reads the file
/// again.
#[test]
fn rows_held_in_memory_read_as_the_file() {
    let file = Dataset::open(data("pbmc68k_counts.h5ad")).unwrap();
    let mut held = Dataset::open(data("pbmc68k_counts.h5ad")).unwrap();
    let n = file.n_cells();
    let chunks: Vec<_> = held.chunks(96).map(Result::unwrap).collect();
    // Not the whole matrix: ignored (reads still come from the file, so they stay right).
    held.hold_rows(chunks[1..].to_vec());
    assert!(!held.holds_rows());
    held.hold_rows(chunks.clone());
    assert!(held.holds_rows());
    for (a, b) in [(0, 96), (90, 200), (650, 700), (699, 1000)] {
        assert_eq!(
            held.read_rows(a, b).unwrap(),
            file.read_rows(a, b).unwrap(),
            "rows {a}..{b}"
        );
    }
    // Kept genes apply to held rows as to read ones.
    let keep: Vec<bool> = (0..file.n_genes()).map(|g| g % 3 == 0).collect();
    let mut subset = Dataset::open(data("pbmc68k_counts.h5ad")).unwrap();
    subset.keep_genes(&keep);
    held.keep_genes(&keep);
    assert_eq!(held.read_rows(0, n).unwrap(), subset.read_rows(0, n).unwrap());
    held.release_rows();
    assert!(!held.holds_rows());
    assert_eq!(held.read_rows(5, 50).unwrap(), subset.read_rows(5, 50).unwrap());
}
