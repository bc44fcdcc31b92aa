//! AnnData `.h5ad` in all three on-disk generations: modern (anndata >= 0.8), 0.7
//! (`__categories`) and pre-0.7 (compound `obs`/`var`, `uns/<col>_categories`, `raw.X`).

use std::path::Path;

use hdf5::types::TypeDescriptor;
use hdf5::{File, Group};

use super::dataset::{
    choose_matrix, ColumnKind, DatasetInfo, Format, GeneTable, H5adLayout, MatrixInfo, ObsColumn, OpenOptions, Source,
};
use super::error::{Context, DataError, Result};
use super::h5;
use super::matrix::{H5Matrix, MatrixEncoding};
use super::values::{sample_values, ValueKind};
use super::writer::ColumnValues;

/// Encodings this reader understands, for the error message about others.
const KNOWN: &str =
    "csr_matrix, csc_matrix, array, dataframe, categorical, string-array, nullable-integer, nullable-boolean";

pub(crate) fn open(path: &Path, file: File, layout: H5adLayout, opts: &OpenOptions) -> Result<(DatasetInfo, Source)> {
    check_encoding_version(path, "/", &file)?;
    let mut found: Vec<(MatrixInfo, H5Matrix)> = Vec::new();
    let raw_x = if layout == H5adLayout::Legacy { "raw.X" } else { "raw/X" };
    if h5::has(&file, "X") {
        found.push(matrix_at(path, &file, "X", "X")?);
    }
    if h5::is_group(&file, "layers") {
        let layers = file.group("layers").at(path, "layers")?;
        for name in layers.member_names().at(path, "layers")? {
            let el = format!("layers/{name}");
            found.push(matrix_at(path, &file, &el, &el)?);
        }
    }
    if file.link_exists(raw_x) {
        found.push(matrix_at(path, &file, raw_x, "raw/X")?);
    }
    let infos: Vec<MatrixInfo> = found.iter().map(|(i, _)| i.clone()).collect();
    if infos.is_empty() && opts.layer.is_none() {
        return without_matrix(path, file, layout);
    }
    let (chosen, reason, values) = choose_matrix(path, &infos, opts.layer.as_deref(), |i| {
        let m = &found[i].1;
        sample_values(m.n_rows, m.nnz, |a, b| m.read_rows(path, &file, a, b))
    })?;
    let matrix = found[chosen].1.clone();
    let location = infos[chosen].location.clone();

    let var_element = match (location.as_str(), layout) {
        ("raw/X", H5adLayout::Legacy) => "raw.var",
        ("raw/X", _) => "raw/var",
        _ => "var",
    };
    let (obs_index_name, cell_ids, obs_columns) = read_frame(path, &file, "obs", false)?;
    let (var_index_name, genes, var_columns) = read_frame(path, &file, var_element, true)?;
    if cell_ids.len() != matrix.n_rows {
        return Err(DataError::at(
            path,
            &obs_index_name,
            format!(
                "lists {} cells but `{}` has {} rows",
                cell_ids.len(),
                matrix.element,
                matrix.n_rows
            ),
        ));
    }
    if genes.len() != matrix.n_cols {
        return Err(DataError::at(
            path,
            &var_index_name,
            format!(
                "lists {} genes but `{}` has {} columns",
                genes.len(),
                matrix.element,
                matrix.n_cols
            ),
        ));
    }
    let gene_columns = var_columns
        .into_iter()
        .filter_map(|c| c.strings().map(|s| (c.name.clone(), s)))
        .collect();
    let obs = obs_columns.into_iter().map(Column::into_obs).collect();
    let info = DatasetInfo {
        path: path.to_path_buf(),
        format: Format::H5ad { layout },
        n_cells: matrix.n_rows,
        n_genes: matrix.n_cols,
        cell_ids,
        genes: GeneTable::new(var_index_name, genes, gene_columns),
        obs,
        matrices: infos,
        matrix: location,
        matrix_reason: reason,
        values,
        warnings: Vec::new(),
    };
    Ok((info, Source::H5 { file, matrix }))
}

/// A file with no matrix at all (anndata writes `X` as None this way): its shape and metadata,
/// from `obs` and `var`, with a source that refuses to be read.
fn without_matrix(path: &Path, file: File, layout: H5adLayout) -> Result<(DatasetInfo, Source)> {
    let (_, cell_ids, obs_columns) = read_frame(path, &file, "obs", false)?;
    let (var_index_name, genes, var_columns) = read_frame(path, &file, "var", true)?;
    let gene_columns = var_columns
        .into_iter()
        .filter_map(|c| c.strings().map(|s| (c.name.clone(), s)))
        .collect();
    let info = DatasetInfo {
        path: path.to_path_buf(),
        format: Format::H5ad { layout },
        n_cells: cell_ids.len(),
        n_genes: genes.len(),
        cell_ids,
        genes: GeneTable::new(var_index_name, genes, gene_columns),
        obs: obs_columns.into_iter().map(Column::into_obs).collect(),
        matrices: Vec::new(),
        matrix: "none".into(),
        matrix_reason: NO_MATRIX.into(),
        values: ValueKind::Normalised {
            reason: NO_MATRIX.into(),
        },
        warnings: vec![format!("{NO_MATRIX}: there is nothing to train on or project")],
    };
    Ok((info, Source::NoMatrix))
}

/// Why a file without a matrix serves nothing.
pub(crate) const NO_MATRIX: &str = "the file holds no matrix (X is None, no layers, no raw/X)";

/// AnnData's encodings have all been 0.x (the file 0.1.0, csr/csc 0.1.0, array and dataframe
/// 0.2.0): a later major version is a layout this scmz cannot know, refused rather than misread.
fn check_encoding_version(path: &Path, element: &str, loc: &hdf5::Location) -> Result<()> {
    let Some(v) = h5::attr_string(loc, "encoding-version") else {
        return Ok(());
    };
    let major = v.split('.').next().and_then(|m| m.trim().parse::<u64>().ok());
    if major == Some(0) {
        return Ok(());
    }
    Err(DataError::at(
        path,
        element,
        format!(
            "has encoding-version `{}`, which this scmz does not know (it reads AnnData's 0.x encodings)",
            crate::files::printable(&v)
        ),
    )
    .hint("written by a newer or foreign writer; save it again with anndata, or update scmz"))
}

/// Describes the matrix stored at HDF5 path `element`, shown to users as `location`.
fn matrix_at(path: &Path, file: &File, element: &str, location: &str) -> Result<(MatrixInfo, H5Matrix)> {
    let (encoding, shape) = if let Ok(g) = file.group(element) {
        let enc = h5::attr_string(&g, "encoding-type")
            .or_else(|| h5::attr_string(&g, "h5sparse_format").map(|f| format!("{f}_matrix")));
        let encoding = match enc.as_deref() {
            Some("csr_matrix") => MatrixEncoding::Csr,
            Some("csc_matrix") => MatrixEncoding::Csc,
            Some(other) => {
                return Err(
                    DataError::at(path, element, format!("has unknown encoding-type `{other}`"))
                        .hint(format!("scmz reads {KNOWN}; rewrite the file with anndata >= 0.8")),
                )
            }
            None => {
                return Err(DataError::at(path, element, "is a group without `encoding-type`")
                    .hint("not an AnnData matrix; rewrite the file with anndata"))
            }
        };
        check_encoding_version(path, element, &g)?;
        let shape = h5::attr_ints(&g, "shape")
            .or_else(|| h5::attr_ints(&g, "h5sparse_shape"))
            .filter(|s| s.len() == 2 && s.iter().all(|&v| v >= 0))
            .ok_or_else(|| DataError::at(path, element, "has no valid `shape` attribute"))?;
        (encoding, (shape[0] as usize, shape[1] as usize))
    } else {
        let ds = file.dataset(element).at(path, element)?;
        match h5::attr_string(&ds, "encoding-type").as_deref() {
            None | Some("array") => {}
            Some(other) => {
                return Err(
                    DataError::at(path, element, format!("has unknown encoding-type `{other}`"))
                        .hint(format!("scmz reads {KNOWN}")),
                )
            }
        }
        check_encoding_version(path, element, &ds)?;
        let s = ds.shape();
        if s.len() != 2 {
            return Err(DataError::at(
                path,
                element,
                format!("is a {}-D array, not a matrix", s.len()),
            ));
        }
        if !matches!(
            ds.dtype().and_then(|t| t.to_descriptor()),
            Ok(TypeDescriptor::Float(_) | TypeDescriptor::Integer(_) | TypeDescriptor::Unsigned(_))
        ) {
            return Err(DataError::at(path, element, "is not a numeric array"));
        }
        (MatrixEncoding::Dense, (s[0], s[1]))
    };
    let m = H5Matrix::open(path, file, element, encoding, shape)?;
    let info = MatrixInfo {
        location: location.to_string(),
        encoding,
        n_cells: m.n_rows,
        n_genes: m.n_cols,
        nnz: m.nnz,
    };
    Ok((info, m))
}

/// A dataframe column as read: strings are kept only where asked for (var), categorical codes
/// always (to count cells per category).
pub(crate) struct Column {
    pub name: String,
    pub data: ColumnData,
}

pub(crate) enum ColumnData {
    Strings(Option<Vec<String>>),
    Categorical {
        categories: Vec<String>,
        codes: Vec<i64>,
        ordered: bool,
    },
    Numeric(String),
    Boolean,
    Other(String),
}

impl Column {
    /// The column as strings per row, for string and categorical columns.
    fn strings(&self) -> Option<Vec<String>> {
        match &self.data {
            ColumnData::Strings(s) => s.clone(),
            ColumnData::Categorical { categories, codes, .. } => Some(
                codes
                    .iter()
                    .map(|&c| {
                        usize::try_from(c)
                            .ok()
                            .and_then(|c| categories.get(c))
                            .cloned()
                            .unwrap_or_default()
                    })
                    .collect(),
            ),
            _ => None,
        }
    }

    fn into_obs(self) -> ObsColumn {
        let kind = match self.data {
            ColumnData::Strings(_) => ColumnKind::String,
            ColumnData::Categorical {
                categories,
                codes,
                ordered,
            } => {
                let mut counts = vec![0u64; categories.len()];
                for &c in &codes {
                    if let Some(n) = usize::try_from(c).ok().and_then(|c| counts.get_mut(c)) {
                        *n += 1;
                    }
                }
                let codes = codes.into_iter().map(|c| c as i32).collect();
                ColumnKind::Categorical {
                    categories,
                    counts,
                    ordered,
                    codes,
                }
            }
            ColumnData::Numeric(dtype) => ColumnKind::Numeric { dtype },
            ColumnData::Boolean => ColumnKind::Boolean,
            ColumnData::Other(encoding) => ColumnKind::Other { encoding },
        };
        ObsColumn { name: self.name, kind }
    }
}

/// Reads a dataframe: (index element, index, columns).
fn read_frame(
    path: &Path,
    file: &File,
    element: &str,
    want_strings: bool,
) -> Result<(String, Vec<String>, Vec<Column>)> {
    if !file.link_exists(element) {
        return Err(DataError::at(path, element, "is missing").hint("the file is not a complete AnnData file"));
    }
    if let Ok(g) = file.group(element) {
        check_encoding_version(path, element, &g)?;
        read_frame_group(path, file, &g, element, want_strings)
    } else {
        read_frame_compound(path, file, element, want_strings)
    }
}

fn read_frame_group(
    path: &Path,
    file: &File,
    g: &Group,
    element: &str,
    want_strings: bool,
) -> Result<(String, Vec<String>, Vec<Column>)> {
    if let Some(enc) = h5::attr_string(g, "encoding-type") {
        if enc != "dataframe" {
            return Err(DataError::at(
                path,
                element,
                format!("has encoding-type `{enc}`, expected `dataframe`"),
            ));
        }
    }
    let index_key = h5::attr_string(g, "_index").unwrap_or_else(|| "_index".to_string());
    let index_el = format!("{element}/{index_key}");
    if !g.link_exists(&index_key) {
        return Err(DataError::at(path, &index_el, "is missing: the dataframe has no index")
            .hint("rewrite the file with anndata (it writes `_index`)"));
    }
    // anndata 0.13 with pandas 3 writes string indices as `nullable-string-array` groups.
    let index = match g.group(&index_key) {
        Ok(ig) => nullable_strings(path, &ig, &index_el)?,
        Err(_) => {
            let index_ds = g.dataset(&index_key).at(path, &index_el)?;
            h5::strings_at(path, &index_ds, &index_el)?
        }
    };
    let mut names = h5::attr_strings(g, "column-order");
    if names.is_empty() {
        names = g
            .member_names()
            .at(path, element)?
            .into_iter()
            .filter(|n| n != &index_key && n != "__categories")
            .collect();
    }
    let mut cols = Vec::new();
    for name in names {
        let el = format!("{element}/{name}");
        if !g.link_exists(&name) {
            return Err(DataError::at(path, &el, "is listed in column-order but missing"));
        }
        let data = read_column(path, file, g, &name, &el, index.len(), want_strings)?;
        cols.push(Column { name, data });
    }
    Ok((index_el, index, cols))
}

/// A `nullable-string-array` group (`values` strings, `mask` true where missing) as strings,
/// missing ones empty.
fn nullable_strings(path: &Path, g: &Group, el: &str) -> Result<Vec<String>> {
    let values_el = format!("{el}/values");
    let values = g.dataset("values").at(path, &values_el)?;
    let mut out = h5::strings_at(path, &values, &values_el)?;
    if let Ok(mask) = g.dataset("mask") {
        let mask = mask.read_raw::<bool>().at(path, &format!("{el}/mask"))?;
        if mask.len() != out.len() {
            return Err(DataError::at(
                path,
                &format!("{el}/mask"),
                format!("has {} entries for {} values", mask.len(), out.len()),
            ));
        }
        for (v, m) in out.iter_mut().zip(mask) {
            if m {
                v.clear();
            }
        }
    }
    Ok(out)
}

fn read_column(
    path: &Path,
    file: &File,
    frame: &Group,
    name: &str,
    el: &str,
    n: usize,
    want_strings: bool,
) -> Result<ColumnData> {
    if let Ok(g) = frame.group(name) {
        let enc = h5::attr_string(&g, "encoding-type").unwrap_or_default();
        return match enc.as_str() {
            "categorical" => {
                let codes_el = format!("{el}/codes");
                let codes = g
                    .dataset("codes")
                    .and_then(|d| d.read_raw::<i64>())
                    .at(path, &codes_el)?;
                let cats = g.dataset("categories").at(path, &format!("{el}/categories"))?;
                let categories = category_strings(path, &cats, &format!("{el}/categories"))?;
                check_codes(path, &codes_el, &codes, categories.len(), n)?;
                let ordered = h5::attr_bool(&g, "ordered").unwrap_or(false);
                Ok(ColumnData::Categorical {
                    categories,
                    codes,
                    ordered,
                })
            }
            "nullable-integer" => Ok(ColumnData::Numeric("nullable int".into())),
            "nullable-boolean" => Ok(ColumnData::Boolean),
            "nullable-string-array" => Ok(ColumnData::Strings(if want_strings {
                Some(nullable_strings(path, &g, el)?)
            } else {
                None
            })),
            other => Err(DataError::at(path, el, format!("has unknown encoding-type `{other}`"))
                .hint(format!("scmz reads {KNOWN}"))),
        };
    }
    let ds = frame.dataset(name).at(path, el)?;
    if h5::len(&ds) != n {
        return Err(DataError::at(
            path,
            el,
            format!("has {} rows but the index has {n}", h5::len(&ds)),
        ));
    }
    let enc = h5::attr_string(&ds, "encoding-type");
    let desc = ds.dtype().and_then(|t| t.to_descriptor()).at(path, el)?;
    // anndata 0.7: categorical codes point at `__categories/<name>`.
    if ds.attr("categories").is_ok() {
        let cat_el = format!("{}/__categories/{name}", frame.name().trim_start_matches('/'));
        let cats = file.dataset(&cat_el).at(path, &cat_el)?;
        let categories = category_strings(path, &cats, &cat_el)?;
        let codes = ds.read_raw::<i64>().at(path, el)?;
        check_codes(path, el, &codes, categories.len(), n)?;
        let ordered = h5::attr_bool(&cats, "ordered").unwrap_or(false);
        return Ok(ColumnData::Categorical {
            categories,
            codes,
            ordered,
        });
    }
    match (enc.as_deref(), &desc) {
        (
            Some("string-array") | None,
            TypeDescriptor::VarLenUnicode
            | TypeDescriptor::VarLenAscii
            | TypeDescriptor::FixedAscii(_)
            | TypeDescriptor::FixedUnicode(_),
        ) => Ok(ColumnData::Strings(if want_strings {
            Some(h5::strings_at(path, &ds, el)?)
        } else {
            None
        })),
        (Some("array") | None, TypeDescriptor::Boolean) => Ok(ColumnData::Boolean),
        (
            Some("array") | None,
            d @ (TypeDescriptor::Integer(_) | TypeDescriptor::Unsigned(_) | TypeDescriptor::Float(_)),
        ) => Ok(ColumnData::Numeric(d.to_string())),
        (Some(e @ ("string-array" | "array")), d) => Ok(ColumnData::Other(format!("{e} of {d}"))),
        (Some(other), _) => {
            Err(DataError::at(path, el, format!("has unknown encoding-type `{other}`"))
                .hint(format!("scmz reads {KNOWN}")))
        }
        (None, d) => Ok(ColumnData::Other(d.to_string())),
    }
}

/// Categories may be strings or numbers (clusters named 0, 1, 2 ...).
fn category_strings(path: &Path, ds: &hdf5::Dataset, el: &str) -> Result<Vec<String>> {
    if let Ok(s) = h5::read_strings(ds) {
        return Ok(s);
    }
    if let Ok(v) = ds.read_raw::<i64>() {
        return Ok(v.iter().map(|x| x.to_string()).collect());
    }
    let v = ds.read_raw::<f64>().at(path, el)?;
    Ok(v.iter().map(|x| x.to_string()).collect())
}

fn check_codes(path: &Path, el: &str, codes: &[i64], n_categories: usize, n: usize) -> Result<()> {
    if codes.len() != n {
        return Err(DataError::at(
            path,
            el,
            format!("has {} rows but the index has {n}", codes.len()),
        ));
    }
    if let Some(c) = codes.iter().find(|&&c| c < -1 || c >= n_categories as i64) {
        return Err(DataError::at(
            path,
            el,
            format!("holds code {c} but there are {n_categories} categories"),
        ));
    }
    Ok(())
}

/// Pre-0.7: `obs`/`var` are compound datasets; categorical codes are integer fields whose
/// categories sit in `uns/<field>_categories`.
fn read_frame_compound(
    path: &Path,
    file: &File,
    element: &str,
    want_strings: bool,
) -> Result<(String, Vec<String>, Vec<Column>)> {
    let ds = file.dataset(element).at(path, element)?;
    let fields = h5::compound_fields(&ds).at(path, element)?;
    let index_field = fields
        .iter()
        .find(|f| f.name == "index" || f.name == "_index")
        .ok_or_else(|| {
            DataError::at(path, element, "has no `index` field: the dataframe has no index")
                .hint("rewrite the file with anndata")
        })?;
    let index_el = format!("{element}/{}", index_field.name);
    let index = h5::read_field_strings(&ds, &index_field.name, &index_field.ty).at(path, &index_el)?;
    let n = index.len();
    let mut cols = Vec::new();
    for f in fields.iter().filter(|f| f.name != index_field.name) {
        let el = format!("{element}/{}", f.name);
        let cat_el = format!("uns/{}_categories", f.name);
        let data = match &f.ty {
            TypeDescriptor::Integer(_) | TypeDescriptor::Unsigned(_) if file.link_exists(&cat_el) => {
                let cats = file.dataset(&cat_el).at(path, &cat_el)?;
                let categories = category_strings(path, &cats, &cat_el)?;
                let codes = h5::read_field_i64(&ds, &f.name).at(path, &el)?;
                check_codes(path, &el, &codes, categories.len(), n)?;
                ColumnData::Categorical {
                    categories,
                    codes,
                    ordered: false,
                }
            }
            TypeDescriptor::Integer(_) | TypeDescriptor::Unsigned(_) | TypeDescriptor::Float(_) => {
                ColumnData::Numeric(f.ty.to_string())
            }
            TypeDescriptor::Boolean => ColumnData::Boolean,
            t @ (TypeDescriptor::FixedAscii(_) | TypeDescriptor::FixedUnicode(_)) => {
                ColumnData::Strings(if want_strings {
                    Some(h5::read_field_strings(&ds, &f.name, t).at(path, &el)?)
                } else {
                    None
                })
            }
            other => ColumnData::Other(other.to_string()),
        };
        cols.push(Column {
            name: f.name.clone(),
            data,
        });
    }
    Ok((index_el, index, cols))
}

/// The values of one `obs` column, for copying it into another file (merge). None when the
/// column does not exist or holds something other than strings, numbers, booleans or categories.
pub(crate) fn read_obs_values(path: &Path, file: &File, name: &str) -> Result<Option<ColumnValues>> {
    let el = format!("obs/{name}");
    if let Ok(g) = file.group("obs") {
        if let Ok(cg) = g.group(name) {
            if h5::attr_string(&cg, "encoding-type").as_deref() == Some("categorical") {
                let codes = cg.dataset("codes").and_then(|d| d.read_raw::<i64>()).at(path, &el)?;
                let cats = cg.dataset("categories").at(path, &el)?;
                let categories = category_strings(path, &cats, &el)?;
                return Ok(Some(ColumnValues::Categorical {
                    categories,
                    codes: codes.into_iter().map(|c| c as i32).collect(),
                    ordered: h5::attr_bool(&cg, "ordered").unwrap_or(false),
                }));
            }
            return Ok(None);
        }
        let Ok(ds) = g.dataset(name) else { return Ok(None) };
        if ds.attr("categories").is_ok() {
            let cat_el = format!("obs/__categories/{name}");
            let cats = file.dataset(&cat_el).at(path, &cat_el)?;
            let codes = ds.read_raw::<i64>().at(path, &el)?;
            return Ok(Some(ColumnValues::Categorical {
                categories: category_strings(path, &cats, &cat_el)?,
                codes: codes.into_iter().map(|c| c as i32).collect(),
                ordered: false,
            }));
        }
        let desc = ds.dtype().and_then(|t| t.to_descriptor()).at(path, &el)?;
        return Ok(match desc {
            TypeDescriptor::Boolean => Some(ColumnValues::Bool(ds.read_raw::<bool>().at(path, &el)?)),
            TypeDescriptor::Integer(_) | TypeDescriptor::Unsigned(_) => {
                Some(ColumnValues::Int(ds.read_raw::<i64>().at(path, &el)?))
            }
            TypeDescriptor::Float(_) => Some(ColumnValues::Float(ds.read_raw::<f64>().at(path, &el)?)),
            TypeDescriptor::VarLenUnicode
            | TypeDescriptor::VarLenAscii
            | TypeDescriptor::FixedAscii(_)
            | TypeDescriptor::FixedUnicode(_) => Some(ColumnValues::Strings(h5::strings_at(path, &ds, &el)?)),
            _ => None,
        });
    }
    // Pre-0.7 compound obs.
    let ds = file.dataset("obs").at(path, "obs")?;
    let fields = h5::compound_fields(&ds).at(path, "obs")?;
    let Some(f) = fields.iter().find(|f| f.name == name) else {
        return Ok(None);
    };
    let cat_el = format!("uns/{name}_categories");
    Ok(match &f.ty {
        TypeDescriptor::Integer(_) | TypeDescriptor::Unsigned(_) if file.link_exists(&cat_el) => {
            let cats = file.dataset(&cat_el).at(path, &cat_el)?;
            Some(ColumnValues::Categorical {
                categories: category_strings(path, &cats, &cat_el)?,
                codes: h5::read_field_i64(&ds, name)
                    .at(path, &el)?
                    .into_iter()
                    .map(|c| c as i32)
                    .collect(),
                ordered: false,
            })
        }
        TypeDescriptor::Integer(_) | TypeDescriptor::Unsigned(_) => {
            Some(ColumnValues::Int(h5::read_field_i64(&ds, name).at(path, &el)?))
        }
        TypeDescriptor::Float(_) => Some(ColumnValues::Float(h5::read_field_f64(&ds, name).at(path, &el)?)),
        t @ (TypeDescriptor::FixedAscii(_) | TypeDescriptor::FixedUnicode(_)) => Some(ColumnValues::Strings(
            h5::read_field_strings(&ds, name, t).at(path, &el)?,
        )),
        _ => None,
    })
}
