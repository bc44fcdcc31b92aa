//! Writes `.h5ad` in the modern encoding (anndata >= 0.8): a CSR `X` streamed chunk by chunk,
//! `obs`/`var` dataframes with string, numeric and categorical columns, `obsm` and `uns`.
//! Everything goes to a temporary sibling first and is renamed into place at the end, so a
//! failure or a crash never leaves a half-written file under the final name.

use std::path::{Path, PathBuf};

use hdf5::types::VarLenUnicode;
use hdf5::{File, Group, Location};

use super::dataset::{ColumnKind, Dataset, Format, H5adLayout};
use super::error::{Context, DataError, Result};
use super::matrix::CsrChunk;

/// A dataframe to write: index plus columns of the same length.
#[derive(Debug, Clone, Default)]
pub struct Frame {
    pub index: Vec<String>,
    pub columns: Vec<FrameColumn>,
}

#[derive(Debug, Clone)]
pub struct FrameColumn {
    pub name: String,
    pub values: ColumnValues,
}

#[derive(Debug, Clone)]
pub enum ColumnValues {
    Strings(Vec<String>),
    /// Codes index `categories`; -1 marks a missing value.
    Categorical {
        categories: Vec<String>,
        codes: Vec<i32>,
        ordered: bool,
    },
    Float(Vec<f64>),
    Int(Vec<i64>),
    Bool(Vec<bool>),
}

impl ColumnValues {
    fn len(&self) -> usize {
        match self {
            ColumnValues::Strings(v) => v.len(),
            ColumnValues::Categorical { codes, .. } => codes.len(),
            ColumnValues::Float(v) => v.len(),
            ColumnValues::Int(v) => v.len(),
            ColumnValues::Bool(v) => v.len(),
        }
    }

    /// Categorical column from per-row labels, categories in first-seen order.
    pub fn categorical_from(labels: &[String]) -> Self {
        let mut categories: Vec<String> = Vec::new();
        let mut lookup = std::collections::HashMap::new();
        let codes = labels
            .iter()
            .map(|l| {
                *lookup.entry(l.clone()).or_insert_with(|| {
                    categories.push(l.clone());
                    categories.len() as i32 - 1
                })
            })
            .collect();
        ColumnValues::Categorical {
            categories,
            codes,
            ordered: false,
        }
    }
}

/// A dense `obsm` entry, row-major `n_rows x n_cols`.
#[derive(Debug, Clone)]
pub struct Obsm {
    pub name: String,
    pub n_cols: usize,
    pub values: Vec<f32>,
}

#[derive(Debug, Clone)]
pub enum UnsValue {
    String(String),
    Float(f64),
    Int(i64),
    Dict(Vec<(String, UnsValue)>),
}

/// A boolean `varm` entry, row-major `n_genes x n_cols` (the merge's presence mask).
#[derive(Debug, Clone)]
pub struct VarmMask {
    pub name: String,
    pub n_cols: usize,
    pub values: Vec<bool>,
}

/// Everything but `X`.
#[derive(Debug, Clone, Default)]
pub struct Annotations {
    pub obs: Frame,
    pub var: Frame,
    pub obsm: Vec<Obsm>,
    pub varm: Vec<VarmMask>,
    pub uns: Vec<(String, UnsValue)>,
}

/// The output being written (`files::AtomicFile`): HDF5 writes the temporary sibling by path;
/// `commit` fsyncs and renames it, and dropping it uncommitted removes it.
struct TempFile {
    file: crate::files::AtomicFile,
    out: PathBuf,
}

impl TempFile {
    fn new(out: &Path) -> Result<Self> {
        let file = crate::files::AtomicFile::create(out).map_err(|e| DataError::file(out, e.message))?;
        Ok(TempFile {
            out: out.to_path_buf(),
            file,
        })
    }

    /// The temporary file HDF5 writes.
    fn tmp(&self) -> &Path {
        self.file.path()
    }

    fn commit(self) -> Result<()> {
        self.file.commit().map_err(|e| DataError::file(&self.out, e.message))
    }
}

const CHUNK: usize = 1 << 16;

/// Streams a CSR `X` into a new `.h5ad`, then writes the annotations and renames it into place.
pub struct H5adWriter {
    temp: TempFile,
    file: File,
    n_cols: usize,
    n_rows: usize,
    nnz: usize,
}

fn str_attr(loc: &Location, name: &str, value: &str) -> hdf5::Result<()> {
    if loc.attr(name).is_ok() {
        loc.delete_attr(name)?;
    }
    let v: VarLenUnicode = value.parse().map_err(|e| hdf5::Error::from(format!("{e}")))?;
    loc.new_attr::<VarLenUnicode>().create(name)?.write_scalar(&v)
}

fn encoding(loc: &Location, kind: &str, version: &str) -> hdf5::Result<()> {
    str_attr(loc, "encoding-type", kind)?;
    str_attr(loc, "encoding-version", version)
}

fn vlen(values: &[String]) -> hdf5::Result<Vec<VarLenUnicode>> {
    values
        .iter()
        .map(|s| {
            s.parse::<VarLenUnicode>()
                .map_err(|e| hdf5::Error::from(format!("{e}")))
        })
        .collect()
}

fn write_strings(g: &Group, name: &str, values: &[String]) -> hdf5::Result<()> {
    let ds = g.new_dataset_builder().with_data(&vlen(values)?).create(name)?;
    encoding(&ds, "string-array", "0.2.0")
}

fn extendable<T: hdf5::H5Type>(g: &Group, name: &str) -> hdf5::Result<hdf5::Dataset> {
    g.new_dataset::<T>().chunk(CHUNK).shape(0..).create(name)
}

fn append<T: hdf5::H5Type>(ds: &hdf5::Dataset, at: usize, values: &[T]) -> hdf5::Result<()> {
    if values.is_empty() {
        return Ok(());
    }
    ds.resize(at + values.len())?;
    ds.write_slice(values, at..at + values.len())
}

impl H5adWriter {
    pub fn create(out: &Path, n_cols: usize) -> Result<Self> {
        let temp = TempFile::new(out)?;
        let file = super::h5::create_unlocked(temp.tmp()).at(temp.tmp(), "/")?;
        let w = H5adWriter {
            temp,
            file,
            n_cols,
            n_rows: 0,
            nnz: 0,
        };
        let x = w.file.create_group("X").at(out, "X")?;
        extendable::<f32>(&x, "data").at(out, "X/data")?;
        extendable::<i32>(&x, "indices").at(out, "X/indices")?;
        let indptr = extendable::<i64>(&x, "indptr").at(out, "X/indptr")?;
        append(&indptr, 0, &[0i64]).at(out, "X/indptr")?;
        Ok(w)
    }

    fn out(&self) -> &Path {
        &self.temp.out
    }

    /// Appends the rows of `chunk` (its columns must match the writer's).
    pub fn append(&mut self, chunk: &CsrChunk) -> Result<()> {
        let out = self.temp.out.clone();
        if chunk.n_cols != self.n_cols {
            return Err(DataError::at(
                &out,
                "X",
                format!("chunk has {} columns, file has {}", chunk.n_cols, self.n_cols),
            ));
        }
        let x = self.file.group("X").at(&out, "X")?;
        let indices: Vec<i32> = chunk.indices.iter().map(|&i| i as i32).collect();
        let indptr: Vec<i64> = chunk.indptr[1..].iter().map(|&p| (p + self.nnz) as i64).collect();
        x.dataset("data")
            .and_then(|d| append(&d, self.nnz, &chunk.data))
            .at(&out, "X/data")?;
        x.dataset("indices")
            .and_then(|d| append(&d, self.nnz, &indices))
            .at(&out, "X/indices")?;
        x.dataset("indptr")
            .and_then(|d| append(&d, self.n_rows + 1, &indptr))
            .at(&out, "X/indptr")?;
        self.n_rows += chunk.n_rows();
        self.nnz += chunk.nnz();
        Ok(())
    }

    /// Writes the annotations, closes the file and renames it into place.
    pub fn finish(self, ann: &Annotations) -> Result<()> {
        let out = self.out().to_path_buf();
        if ann.obs.index.len() != self.n_rows {
            return Err(DataError::at(
                &out,
                "obs",
                format!("has {} rows but X has {}", ann.obs.index.len(), self.n_rows),
            ));
        }
        if ann.var.index.len() != self.n_cols {
            return Err(DataError::at(
                &out,
                "var",
                format!("has {} rows but X has {} columns", ann.var.index.len(), self.n_cols),
            ));
        }
        {
            let f = &self.file;
            (|| -> hdf5::Result<()> {
                encoding(f, "anndata", "0.1.0")?;
                let x = f.group("X")?;
                encoding(&x, "csr_matrix", "0.1.0")?;
                x.new_attr_builder()
                    .with_data(&[self.n_rows as i64, self.n_cols as i64])
                    .create("shape")?;
                Ok(())
            })()
            .at(&out, "X")?;
            write_frame(f, "obs", &ann.obs).at(&out, "obs")?;
            write_frame(f, "var", &ann.var).at(&out, "var")?;
            let obsm = dict(f, "obsm").at(&out, "obsm")?;
            for m in &ann.obsm {
                write_obsm(&obsm, m, self.n_rows).at(&out, &format!("obsm/{}", m.name))?;
            }
            let varm = dict(f, "varm").at(&out, "varm")?;
            for m in &ann.varm {
                write_mask(&varm, m, self.n_cols).at(&out, &format!("varm/{}", m.name))?;
            }
            for name in ["layers", "obsp", "varp"] {
                dict(f, name).at(&out, name)?;
            }
            let uns = dict(f, "uns").at(&out, "uns")?;
            write_uns(&uns, &ann.uns).at(&out, "uns")?;
        }
        let H5adWriter { temp, file, .. } = self;
        file.close().at(&out, "/")?;
        temp.commit()
    }
}

fn dict(f: &Group, name: &str) -> hdf5::Result<Group> {
    let g = f.create_group(name)?;
    encoding(&g, "dict", "0.1.0")?;
    Ok(g)
}

fn write_obsm(g: &Group, m: &Obsm, n_rows: usize) -> hdf5::Result<()> {
    if m.values.len() != n_rows * m.n_cols {
        return Err(hdf5::Error::from(format!(
            "has {} values, expected {n_rows} x {}",
            m.values.len(),
            m.n_cols
        )));
    }
    if g.link_exists(&m.name) {
        g.unlink(&m.name)?;
    }
    let arr = ndarray::Array2::from_shape_vec((n_rows, m.n_cols), m.values.clone())
        .map_err(|e| hdf5::Error::from(e.to_string()))?;
    let ds = g.new_dataset_builder().with_data(&arr).create(m.name.as_str())?;
    encoding(&ds, "array", "0.2.0")
}

fn write_mask(g: &Group, m: &VarmMask, n_rows: usize) -> hdf5::Result<()> {
    if m.values.len() != n_rows * m.n_cols {
        return Err(hdf5::Error::from(format!(
            "has {} values, expected {n_rows} x {}",
            m.values.len(),
            m.n_cols
        )));
    }
    let arr = ndarray::Array2::from_shape_vec((n_rows, m.n_cols), m.values.clone())
        .map_err(|e| hdf5::Error::from(e.to_string()))?;
    let ds = g.new_dataset_builder().with_data(&arr).create(m.name.as_str())?;
    encoding(&ds, "array", "0.2.0")
}

fn write_uns(g: &Group, items: &[(String, UnsValue)]) -> hdf5::Result<()> {
    for (name, v) in items {
        match v {
            UnsValue::String(s) => {
                let ds = g.new_dataset::<VarLenUnicode>().create(name.as_str())?;
                ds.write_scalar(
                    &s.parse::<VarLenUnicode>()
                        .map_err(|e| hdf5::Error::from(format!("{e}")))?,
                )?;
                encoding(&ds, "string", "0.2.0")?;
            }
            UnsValue::Float(x) => {
                let ds = g.new_dataset::<f64>().create(name.as_str())?;
                ds.write_scalar(x)?;
                encoding(&ds, "numeric-scalar", "0.2.0")?;
            }
            UnsValue::Int(x) => {
                let ds = g.new_dataset::<i64>().create(name.as_str())?;
                ds.write_scalar(x)?;
                encoding(&ds, "numeric-scalar", "0.2.0")?;
            }
            UnsValue::Dict(inner) => {
                let sub = dict(g, name)?;
                write_uns(&sub, inner)?;
            }
        }
    }
    Ok(())
}

fn write_frame(f: &Group, name: &str, frame: &Frame) -> hdf5::Result<()> {
    let g = f.create_group(name)?;
    encoding(&g, "dataframe", "0.2.0")?;
    str_attr(&g, "_index", "_index")?;
    write_strings(&g, "_index", &frame.index)?;
    for c in &frame.columns {
        write_column(&g, c, frame.index.len())?;
    }
    set_column_order(&g, &frame.columns.iter().map(|c| c.name.clone()).collect::<Vec<_>>())
}

fn set_column_order(g: &Group, names: &[String]) -> hdf5::Result<()> {
    if g.attr("column-order").is_ok() {
        g.delete_attr("column-order")?;
    }
    if names.is_empty() {
        // anndata writes an empty column order as an empty float array.
        g.new_attr::<f64>().shape(0).create("column-order")?;
        return Ok(());
    }
    g.new_attr_builder().with_data(&vlen(names)?).create("column-order")?;
    Ok(())
}

fn write_array<T: hdf5::H5Type>(g: &Group, name: &str, values: &[T]) -> hdf5::Result<()> {
    let ds = g.new_dataset_builder().with_data(values).create(name)?;
    encoding(&ds, "array", "0.2.0")
}

fn write_column(g: &Group, c: &FrameColumn, n: usize) -> hdf5::Result<()> {
    if c.values.len() != n {
        return Err(hdf5::Error::from(format!(
            "column {} has {} rows, index has {n}",
            c.name,
            c.values.len()
        )));
    }
    if g.link_exists(&c.name) {
        g.unlink(&c.name)?;
    }
    let name = c.name.as_str();
    match &c.values {
        ColumnValues::Strings(v) => write_strings(g, name, v),
        ColumnValues::Categorical {
            categories,
            codes,
            ordered,
        } => {
            let cg = g.create_group(name)?;
            encoding(&cg, "categorical", "0.2.0")?;
            cg.new_attr::<bool>().create("ordered")?.write_scalar(ordered)?;
            write_strings(&cg, "categories", categories)?;
            write_array(&cg, "codes", codes)
        }
        ColumnValues::Float(v) => write_array(g, name, v),
        ColumnValues::Int(v) => write_array(g, name, v),
        ColumnValues::Bool(v) => write_array(g, name, v),
    }
}

/// What to add to a copy of a dataset.
#[derive(Debug, Clone, Default)]
pub struct Additions {
    pub obs: Vec<FrameColumn>,
    pub obsm: Vec<Obsm>,
}

/// Writes a copy of `ds` at `out` with `add` added. A modern `.h5ad` is copied byte for byte and
/// amended; every other format is converted (served matrix, cell and gene ids, gene columns,
/// categorical obs columns).
pub fn write_copy_with(ds: &Dataset, out: &Path, add: &Additions) -> Result<()> {
    let info = ds.info();
    // Whatever the caller checked: never over the input (a path, link or hard link to it).
    crate::files::check_output(out, &[&info.path], true).map_err(|e| DataError::file(out, e.message))?;
    if info.format
        == (Format::H5ad {
            layout: H5adLayout::Modern,
        })
    {
        let temp = TempFile::new(out)?;
        std::fs::copy(&info.path, temp.tmp())
            .map_err(|e| DataError::file(out, format!("cannot write: {}", crate::files::describe(&e))))?;
        {
            let f = super::h5::open_rw_unlocked(temp.tmp()).at(out, "/")?;
            amend(&f, out, info.n_cells, add)?;
            f.close().at(out, "/")?;
        }
        return temp.commit();
    }
    convert(ds, out, add)
}

/// Adds obs columns and obsm entries to an open modern `.h5ad`.
fn amend(f: &File, out: &Path, n_cells: usize, add: &Additions) -> Result<()> {
    {
        {
            let obs = f.group("obs").at(out, "obs")?;
            let mut order = super::h5::attr_strings(&obs, "column-order");
            for c in &add.obs {
                write_column(&obs, c, n_cells).at(out, &format!("obs/{}", c.name))?;
                if !order.contains(&c.name) {
                    order.push(c.name.clone());
                }
            }
            set_column_order(&obs, &order).at(out, "obs")?;
            let obsm = match f.group("obsm") {
                Ok(g) => g,
                Err(_) => dict(f, "obsm").at(out, "obsm")?,
            };
            for m in &add.obsm {
                write_obsm(&obsm, m, n_cells).at(out, &format!("obsm/{}", m.name))?;
            }
        }
    }
    Ok(())
}

/// Converts any dataset to a new modern `.h5ad` with the additions.
fn convert(ds: &Dataset, out: &Path, add: &Additions) -> Result<()> {
    let info = ds.info();
    let mut w = H5adWriter::create(out, info.n_genes)?;
    for chunk in ds.chunks(4096) {
        w.append(&chunk?)?;
    }
    let mut obs_cols: Vec<FrameColumn> = info
        .obs
        .iter()
        .filter_map(|c| match &c.kind {
            ColumnKind::Categorical {
                categories,
                codes,
                ordered,
                ..
            } if codes.len() == info.n_cells => Some(FrameColumn {
                name: c.name.clone(),
                values: ColumnValues::Categorical {
                    categories: categories.clone(),
                    codes: codes.clone(),
                    ordered: *ordered,
                },
            }),
            _ => None,
        })
        .filter(|c| !add.obs.iter().any(|a| a.name == c.name))
        .collect();
    obs_cols.extend(add.obs.iter().cloned());
    let var_cols = info
        .genes
        .columns
        .iter()
        .map(|(n, v)| FrameColumn {
            name: n.clone(),
            values: ColumnValues::Strings(v.clone()),
        })
        .collect();
    w.finish(&Annotations {
        obs: Frame {
            index: info.cell_ids.clone(),
            columns: obs_cols,
        },
        var: Frame {
            index: info.genes.index.clone(),
            columns: var_cols,
        },
        obsm: add.obsm.clone(),
        varm: Vec::new(),
        uns: Vec::new(),
    })
}
