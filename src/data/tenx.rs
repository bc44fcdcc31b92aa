//! 10x Genomics HDF5: Cell Ranger 2 (`<genome>/{genes,gene_names,barcodes,...}`) and Cell
//! Ranger 3+ (`matrix/features/{id,name,feature_type}`). The sparse matrix is genes x cells in
//! CSC form, which is cells x genes in CSR form: served directly.

use std::path::Path;

use hdf5::File;

use super::dataset::{DatasetInfo, Format, GeneTable, MatrixInfo, OpenOptions, Source};
use super::error::{Context, DataError, Result};
use super::h5;
use super::matrix::{kept, H5Matrix, MatrixEncoding};
use super::values::sample_values;
use crate::files::printable;

pub const GENE_EXPRESSION: &str = "Gene Expression";

pub(crate) fn open(path: &Path, file: File, version: u8, opts: &OpenOptions) -> Result<(DatasetInfo, Source)> {
    let (group, genome) = if version == 3 {
        ("matrix".to_string(), None)
    } else {
        let genomes: Vec<String> = file
            .member_names()
            .at(path, "/")?
            .into_iter()
            .filter(|g| file.group(g).map(|g| g.link_exists("genes")).unwrap_or(false))
            .collect();
        let g = match &opts.genome {
            Some(want) => genomes.iter().find(|g| *g == want).cloned().ok_or_else(|| {
                DataError::file(path, format!("holds no genome `{}`", printable(want)))
                    .hint(format!("choose one of: {}", printable(&genomes.join(", "))))
            })?,
            None => genomes
                .first()
                .cloned()
                .ok_or_else(|| DataError::file(path, "no genome group with `genes`"))?,
        };
        (g.clone(), Some(g))
    };
    let other_genomes: Vec<String> = if version == 3 {
        Vec::new()
    } else {
        file.member_names()
            .unwrap_or_default()
            .into_iter()
            .filter(|n| Some(n) != genome.as_ref())
            .filter(|n| file.group(n).map(|g| g.link_exists("genes")).unwrap_or(false))
            .collect()
    };
    let strings = |name: &str| -> Result<Vec<String>> {
        let el = format!("{group}/{name}");
        let ds = file.dataset(&el).at(path, &el)?;
        h5::strings_at(path, &ds, &el)
    };
    let shape_el = format!("{group}/shape");
    let shape = file
        .dataset(&shape_el)
        .and_then(|d| d.read_raw::<i64>())
        .at(path, &shape_el)?;
    if shape.len() != 2 || shape.iter().any(|&v| v < 0) {
        return Err(DataError::at(
            path,
            &shape_el,
            format!("is {shape:?}, expected [genes, cells]"),
        ));
    }
    let (n_features, n_cells) = (shape[0] as usize, shape[1] as usize);
    let barcodes = strings("barcodes")?;
    let (ids_el, ids, mut columns) = if version == 3 {
        let ids = strings("features/id")?;
        let mut cols = vec![("name".to_string(), strings("features/name")?)];
        if file.link_exists(&format!("{group}/features/feature_type")) {
            cols.push(("feature_type".to_string(), strings("features/feature_type")?));
        }
        (format!("{group}/features/id"), ids, cols)
    } else {
        let ids = strings("genes")?;
        (
            format!("{group}/genes"),
            ids,
            vec![("gene_names".to_string(), strings("gene_names")?)],
        )
    };
    if ids.len() != n_features {
        return Err(DataError::at(
            path,
            &ids_el,
            format!("lists {} features but shape says {n_features}", ids.len()),
        ));
    }
    if barcodes.len() != n_cells {
        return Err(DataError::at(
            path,
            &format!("{group}/barcodes"),
            format!("lists {} barcodes but shape says {n_cells}", barcodes.len()),
        ));
    }
    let mut matrix = H5Matrix::open(path, &file, &group, MatrixEncoding::Csr, (n_cells, n_features))?;
    let mut index = ids;
    let mut warnings = Vec::new();
    if !other_genomes.is_empty() {
        warnings.push(format!(
            "holds {} genomes: serving `{}`; --genome {} serves {}",
            other_genomes.len() + 1,
            printable(genome.as_deref().unwrap_or_default()),
            printable(&other_genomes[0]),
            if other_genomes.len() == 1 {
                "the other"
            } else {
                "another"
            }
        ));
    }
    if let Some(types) = columns
        .iter()
        .find(|(n, _)| n == "feature_type")
        .map(|(_, v)| v.clone())
    {
        let keep: Vec<bool> = types
            .iter()
            .map(|t| opts.all_features || t == GENE_EXPRESSION)
            .collect();
        let dropped = keep.iter().filter(|k| !**k).count();
        if dropped > 0 {
            warnings.push(format!(
                "{dropped} non-gene features (antibody, CRISPR, ...) left out; --all-features keeps them"
            ));
            matrix.keep_columns(&keep);
            index = kept(index, &keep);
            columns = columns.into_iter().map(|(n, v)| (n, kept(v, &keep))).collect();
        }
    }
    let values = sample_values(matrix.n_rows, matrix.nnz, |a, b| matrix.read_rows(path, &file, a, b))?;
    let info = DatasetInfo {
        path: path.to_path_buf(),
        format: Format::TenxH5 { version, genome },
        n_cells,
        n_genes: matrix.n_cols,
        cell_ids: barcodes,
        genes: GeneTable::new(ids_el, index, columns),
        obs: Vec::new(),
        matrices: vec![MatrixInfo {
            location: "matrix".into(),
            encoding: MatrixEncoding::Csr,
            n_cells,
            n_genes: matrix.n_cols,
            nnz: matrix.nnz,
        }],
        matrix: "matrix".into(),
        matrix_reason: "the only matrix in a 10x file".into(),
        values,
        warnings,
    };
    Ok((info, Source::H5 { file, matrix }))
}
