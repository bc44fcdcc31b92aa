//! Files scmz writes open in Python anndata with the shapes, names and values we wrote.
#![allow(clippy::unwrap_used)]

mod common;

use common::{data, run_python};
use scmz::data::writer::{
    write_copy_with, Additions, Annotations, ColumnValues, Frame, FrameColumn, H5adWriter, Obsm, UnsValue,
};
use scmz::data::{ColumnKind, Dataset, OpenOptions};

#[test]
fn new_anndata_round_trips_through_python() {
    let src = Dataset::open(data("pbmc68k_counts.h5ad")).unwrap();
    let info = src.info();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("new.h5ad");
    let n = 100;
    let mut w = H5adWriter::create(&out, info.n_genes).unwrap();
    // Written in uneven chunks to exercise appending.
    for (a, b) in [(0, 33), (33, 34), (34, 100)] {
        w.append(&src.read_rows(a, b).unwrap()).unwrap();
    }
    let labels: Vec<String> = match &info.obs_column("bulk_labels").unwrap().kind {
        ColumnKind::Categorical { categories, codes, .. } => {
            codes[..n].iter().map(|&c| categories[c as usize].clone()).collect()
        }
        _ => unreachable!(),
    };
    let obsm: Vec<f32> = (0..n * 3).map(|i| i as f32 * 0.5).collect();
    let ann = Annotations {
        obs: Frame {
            index: info.cell_ids[..n].to_vec(),
            columns: vec![
                FrameColumn {
                    name: "label".into(),
                    values: ColumnValues::categorical_from(&labels),
                },
                FrameColumn {
                    name: "note".into(),
                    values: ColumnValues::Strings((0..n).map(|i| format!("cell {i}")).collect()),
                },
                FrameColumn {
                    name: "score".into(),
                    values: ColumnValues::Float((0..n).map(|i| i as f64 / 10.0).collect()),
                },
                FrameColumn {
                    name: "kept".into(),
                    values: ColumnValues::Bool((0..n).map(|i| i % 2 == 0).collect()),
                },
            ],
        },
        var: Frame {
            index: info.genes.index.clone(),
            columns: vec![FrameColumn {
                name: "symbol".into(),
                values: ColumnValues::Strings(info.genes.index.clone()),
            }],
        },
        obsm: vec![Obsm {
            name: "X_test".into(),
            n_cols: 3,
            values: obsm,
        }],
        varm: Vec::new(),
        uns: vec![(
            "scmz".into(),
            UnsValue::Dict(vec![
                ("model".into(), UnsValue::String("demo".into())),
                ("version".into(), UnsValue::Int(1)),
                ("loss".into(), UnsValue::Float(1.5)),
            ]),
        )],
    };
    w.finish(&ann).unwrap();
    assert!(!std::fs::read_dir(dir.path())
        .unwrap()
        .any(|e| e.unwrap().file_name().to_string_lossy().contains(".tmp")));
    let py = r#"
import sys, anndata, numpy as np
a = anndata.read_h5ad(sys.argv[1]); src = anndata.read_h5ad(sys.argv[2])[:100]
assert a.shape == (100, 765), a.shape
assert list(a.obs_names) == list(src.obs_names)
assert list(a.var_names) == list(src.var_names)
assert (a.X.toarray() == src.X.toarray()).all()
assert list(a.obs['label'].astype(str)) == list(src.obs['bulk_labels'].astype(str))
assert str(a.obs['label'].dtype) == 'category'
assert a.obs['note'][5] == 'cell 5' and abs(a.obs['score'].iloc[7] - 0.7) < 1e-12 and bool(a.obs['kept'].iloc[2])
assert np.allclose(a.obsm['X_test'][1], [1.5, 2.0, 2.5])
assert a.uns['scmz']['model'] == 'demo' and a.uns['scmz']['version'] == 1 and a.uns['scmz']['loss'] == 1.5
assert list(a.var['symbol']) == list(src.var_names)
print('ok')
"#;
    assert_eq!(run_python(py, &[&out, &data("pbmc68k_counts.h5ad")]).trim(), "ok");
    // And scmz reads back what it wrote.
    let back = Dataset::open(&out).unwrap();
    assert_eq!(
        back.read_all().unwrap().to_dense(),
        src.read_rows(0, n).unwrap().to_dense()
    );
}

fn additions(n: usize) -> Additions {
    Additions {
        obs: vec![FrameColumn {
            name: "predicted".into(),
            values: ColumnValues::categorical_from(
                &(0..n)
                    .map(|i| if i % 3 == 0 { "T" } else { "B" }.to_string())
                    .collect::<Vec<_>>(),
            ),
        }],
        obsm: vec![Obsm {
            name: "X_scmz".into(),
            n_cols: 2,
            values: (0..n * 2).map(|i| i as f32).collect(),
        }],
    }
}

const CHECK_COPY: &str = r#"
import sys, anndata, numpy as np
a = anndata.read_h5ad(sys.argv[1]); src = anndata.read_h5ad(sys.argv[2])
ref = src.raw.to_adata() if sys.argv[3] == 'raw' else src
assert a.shape == ref.shape, (a.shape, ref.shape)
assert list(a.obs_names) == list(src.obs_names)
assert list(a.var_names) == list(ref.var_names)
X = a.X.toarray() if hasattr(a.X, 'toarray') else a.X
R = ref.X.toarray() if hasattr(ref.X, 'toarray') else ref.X
assert np.allclose(X, R), 'X differs'
assert list(a.obs['predicted'][:4]) == ['T', 'B', 'B', 'T']
assert a.obsm['X_scmz'].shape == (a.n_obs, 2) and a.obsm['X_scmz'][1, 1] == 3.0
for col in sys.argv[4:]:
    assert list(a.obs[col].astype(str)) == list(src.obs[col].astype(str)), col
print('ok')
"#;

#[test]
fn copy_of_modern_h5ad_keeps_everything_and_adds() {
    let src_path = data("pbmc68k_counts.h5ad");
    let ds = Dataset::open(&src_path).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("with_latent.h5ad");
    write_copy_with(&ds, &out, &additions(ds.n_cells())).unwrap();
    let r = run_python(
        CHECK_COPY,
        &[
            &out,
            &src_path,
            std::path::Path::new("X"),
            std::path::Path::new("bulk_labels"),
            std::path::Path::new("louvain"),
        ],
    );
    assert_eq!(r.trim(), "ok");
    // Layers survive the byte copy.
    let back = Dataset::open_with(
        &out,
        &OpenOptions {
            layer: Some("counts".into()),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(back.info().matrix, "layers/counts");
    assert!(write_copy_with(&ds, &src_path, &additions(700))
        .unwrap_err()
        .problem
        .starts_with("is the input"));
}

#[test]
fn copy_of_legacy_and_10x_files_is_converted() {
    let dir = tempfile::tempdir().unwrap();
    let legacy = data("pbmc68k_reduced.h5ad");
    let ds = Dataset::open_with(
        &legacy,
        &OpenOptions {
            layer: Some("raw".into()),
            ..Default::default()
        },
    )
    .unwrap();
    let out = dir.path().join("legacy.h5ad");
    write_copy_with(&ds, &out, &additions(700)).unwrap();
    let r = run_python(
        CHECK_COPY,
        &[
            &out,
            &legacy,
            std::path::Path::new("raw"),
            std::path::Path::new("bulk_labels"),
            std::path::Path::new("phase"),
        ],
    );
    assert_eq!(r.trim(), "ok");

    let tenx = data("10x/3.0.0/filtered_feature_bc_matrix");
    let ds = Dataset::open(&tenx).unwrap();
    let out = dir.path().join("tenx.h5ad");
    write_copy_with(&ds, &out, &additions(ds.n_cells())).unwrap();
    let back = Dataset::open(&out).unwrap();
    assert_eq!(back.info().cell_ids, ds.info().cell_ids);
    assert_eq!(back.info().genes.index, ds.info().genes.index);
    assert_eq!(back.info().genes.symbols(), ds.info().genes.symbols());
    assert_eq!(back.read_all().unwrap().to_dense(), ds.read_all().unwrap().to_dense());
    let py = "import sys, anndata; a = anndata.read_h5ad(sys.argv[1]); print(a.shape, a.var['name'].iloc[0], a.obsm['X_scmz'].shape)";
    assert_eq!(run_python(py, &[&out]).trim(), "(1107, 507) CH507-9B2.2 (1107, 2)");
}
