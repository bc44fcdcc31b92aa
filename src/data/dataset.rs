//! `Dataset`: one count matrix (cells x genes) with its metadata, whatever the file format.
//! Opening reads metadata only; the matrix is served as a stream of CSR row chunks.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::{Deserialize, Serialize};

use super::error::{DataError, Result};
use super::gene_ids::{self, GeneIdSummary};
use super::matrix::{CsrChunk, H5Matrix, MatrixEncoding};
use super::values::ValueKind;
use super::{detect, h5ad, mtx, tenx};

/// How many datasets this process has opened (lets tests prove that cached scans open none).
static OPENED: AtomicUsize = AtomicUsize::new(0);

pub fn datasets_opened() -> usize {
    OPENED.load(Ordering::Relaxed)
}

/// The on-disk format of a dataset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Format {
    H5ad { layout: H5adLayout },
    TenxH5 { version: u8, genome: Option<String> },
    TenxMtx { version: u8, gzipped: bool },
}

/// AnnData on-disk generations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum H5adLayout {
    /// anndata >= 0.8: `encoding-type` on everything, categoricals as groups.
    Modern,
    /// anndata 0.7: dataframe groups, categories in `__categories`.
    V07,
    /// before 0.7: compound `obs`/`var` datasets, `uns/<col>_categories`, `raw.X`.
    Legacy,
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Format::H5ad {
                layout: H5adLayout::Modern,
            } => write!(f, "h5ad (anndata >= 0.8)"),
            Format::H5ad {
                layout: H5adLayout::V07,
            } => write!(f, "h5ad (anndata 0.7)"),
            Format::H5ad {
                layout: H5adLayout::Legacy,
            } => write!(f, "h5ad (pre-0.7)"),
            Format::TenxH5 { version, .. } => write!(f, "10x h5 v{version}"),
            Format::TenxMtx { version, .. } => write!(f, "10x mtx v{version}"),
        }
    }
}

/// The gene (var) table: the index plus every string column, with the keys recognised as
/// Ensembl ids and as symbols.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GeneTable {
    /// Where the index came from (`var/_index`, `features/id`, `genes.tsv column 1`).
    pub index_name: String,
    pub index: Vec<String>,
    pub columns: Vec<(String, Vec<String>)>,
    /// Name of the key (`index` or a column name) holding Ensembl ids, if any.
    pub gene_id_key: Option<String>,
    /// Name of the key holding gene symbols, if any.
    pub symbol_key: Option<String>,
    /// Summary of the index's identifiers.
    pub index_kind: GeneIdSummary,
}

impl GeneTable {
    pub fn new(index_name: String, index: Vec<String>, columns: Vec<(String, Vec<String>)>) -> Self {
        let index_kind = gene_ids::classify(&index);
        let mut t = GeneTable {
            index_name,
            index,
            columns,
            gene_id_key: None,
            symbol_key: None,
            index_kind,
        };
        let kinds: Vec<(String, gene_ids::GeneIdKind)> = t
            .keys()
            .map(|(k, v)| (k.to_string(), gene_ids::classify(v).kind))
            .collect();
        for (key, kind) in kinds {
            if t.gene_id_key.is_none() && kind == gene_ids::GeneIdKind::Ensembl {
                t.gene_id_key = Some(key);
            } else if t.symbol_key.is_none() && kind == gene_ids::GeneIdKind::Symbol {
                t.symbol_key = Some(key);
            }
        }
        t
    }

    /// `("index", index)` followed by every column.
    pub fn keys(&self) -> impl Iterator<Item = (&str, &[String])> {
        std::iter::once(("index", self.index.as_slice()))
            .chain(self.columns.iter().map(|(n, v)| (n.as_str(), v.as_slice())))
    }

    pub fn key(&self, name: &str) -> Option<&[String]> {
        self.keys().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    pub fn gene_ids(&self) -> Option<&[String]> {
        self.gene_id_key.as_deref().and_then(|k| self.key(k))
    }

    pub fn symbols(&self) -> Option<&[String]> {
        self.symbol_key.as_deref().and_then(|k| self.key(k))
    }

    /// Values that occur more than once in the given key, in first-seen order.
    pub fn duplicates(values: &[String]) -> Vec<String> {
        let mut seen = std::collections::HashSet::new();
        let mut dup = std::collections::BTreeSet::new();
        let mut out = Vec::new();
        for v in values {
            if !seen.insert(v.as_str()) && dup.insert(v.as_str()) {
                out.push(v.clone());
            }
        }
        out
    }
}

/// One `obs` column: name and what it holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObsColumn {
    pub name: String,
    pub kind: ColumnKind,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ColumnKind {
    /// Categories with the number of cells in each (missing values not counted) and each cell's
    /// code (-1: missing). Codes stay out of the catalog cache.
    Categorical {
        categories: Vec<String>,
        counts: Vec<u64>,
        ordered: bool,
        #[serde(skip)]
        codes: Vec<i32>,
    },
    Numeric {
        dtype: String,
    },
    Boolean,
    String,
    Other {
        encoding: String,
    },
}

impl ObsColumn {
    /// A column that could hold cell labels or batches: categorical with 2..=500 categories.
    pub fn is_label_like(&self) -> bool {
        matches!(&self.kind, ColumnKind::Categorical { categories, .. } if (2..=500).contains(&categories.len()))
    }

    /// Categories sorted by cell count, largest first.
    pub fn top_categories(&self, n: usize) -> Vec<(String, u64)> {
        match &self.kind {
            ColumnKind::Categorical { categories, counts, .. } => {
                let mut v: Vec<_> = categories.iter().cloned().zip(counts.iter().copied()).collect();
                v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
                v.truncate(n);
                v
            }
            _ => Vec::new(),
        }
    }
}

/// One matrix found in the file (`X`, `layers/<name>`, `raw/X`, 10x `matrix`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MatrixInfo {
    pub location: String,
    pub encoding: MatrixEncoding,
    pub n_cells: usize,
    pub n_genes: usize,
    pub nnz: u64,
}

/// Everything known about a dataset without reading its matrix (beyond a small value sample).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetInfo {
    pub path: PathBuf,
    pub format: Format,
    pub n_cells: usize,
    pub n_genes: usize,
    pub cell_ids: Vec<String>,
    pub genes: GeneTable,
    pub obs: Vec<ObsColumn>,
    /// Every matrix in the file.
    pub matrices: Vec<MatrixInfo>,
    /// The matrix served by this `Dataset`, and why it was chosen.
    pub matrix: String,
    pub matrix_reason: String,
    pub values: ValueKind,
    /// Things the user should know that do not stop the dataset from being used.
    pub warnings: Vec<String>,
}

impl DatasetInfo {
    pub fn label_columns(&self) -> impl Iterator<Item = &ObsColumn> {
        self.obs.iter().filter(|c| c.is_label_like())
    }

    pub fn obs_column(&self, name: &str) -> Option<&ObsColumn> {
        self.obs.iter().find(|c| c.name == name)
    }

    pub fn selected_matrix(&self) -> Option<&MatrixInfo> {
        self.matrices.iter().find(|m| m.location == self.matrix)
    }
}

/// Which genes each cell's dataset measured (a merged file's presence mask).
#[derive(Debug, Clone)]
pub struct Presence {
    pub n_datasets: usize,
    /// Row-major genes x datasets.
    pub mask: Vec<bool>,
    pub dataset_of_cell: Vec<i32>,
}

/// Choices the user can make when opening.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// Which matrix to serve: `X`, `raw` / `raw/X`, or a layer name (`counts` or `layers/counts`).
    pub layer: Option<String>,
    /// 10x v3: serve every feature type, not only `Gene Expression`.
    pub all_features: bool,
    /// Cell Ranger 2 HDF5 with several genome groups: the one to serve [default: the first].
    pub genome: Option<String>,
}

pub(crate) enum Source {
    H5 {
        file: hdf5::File,
        matrix: H5Matrix,
    },
    Mtx(mtx::MtxMatrix),
    /// An AnnData file with no matrix: metadata only.
    NoMatrix,
}

/// An opened dataset: metadata plus a way to stream its matrix.
pub struct Dataset {
    info: DatasetInfo,
    source: Source,
    /// Served genes when a subset was chosen (`keep_genes`): stored column -> served column
    /// (`u32::MAX`: left out), and the stored columns kept.
    genes_kept: Option<(Vec<u32>, Vec<usize>)>,
    /// The whole matrix in memory, as a pass over it kept it (`hold_rows`): reads are served
    /// from here instead of the file until `release_rows`.
    held: std::sync::Mutex<Option<std::sync::Arc<Held>>>,
}

/// Every row of the matrix (all stored genes) in chunks of `rows` rows, in order.
struct Held {
    rows: usize,
    chunks: Vec<CsrChunk>,
}

impl Dataset {
    pub fn open(path: impl AsRef<Path>) -> Result<Dataset> {
        Self::open_with(path, &OpenOptions::default())
    }

    pub fn open_with(path: impl AsRef<Path>, opts: &OpenOptions) -> Result<Dataset> {
        let path = path.as_ref();
        if !path.exists() {
            return Err(DataError::file(path, "no such file or directory"));
        }
        OPENED.fetch_add(1, Ordering::Relaxed);
        let _guard = super::guard::enter(path);
        let detected = detect::detect(path)?;
        if let (Some(g), false) = (&opts.genome, matches!(detected, detect::Detected::TenxH5(_, 2))) {
            return Err(DataError::file(
                path,
                format!(
                    "--genome {} applies to Cell Ranger 2 .h5 files, which keep one group per genome; this file has none",
                    crate::files::printable(g)
                ),
            )
            .hint("leave out --genome (a Cell Ranger 3 file lists every genome's features together)"));
        }
        let (info, source) = match detected {
            detect::Detected::H5ad(file, layout) => h5ad::open(path, file, layout, opts)?,
            detect::Detected::TenxH5(file, version) => tenx::open(path, file, version, opts)?,
            detect::Detected::TenxMtx(dir) => mtx::open(&dir, opts)?,
        };
        let ds = Dataset {
            info,
            source,
            genes_kept: None,
            held: Default::default(),
        };
        ds.check_not_empty()?;
        ds.check_genes()?;
        Ok(ds)
    }

    fn check_not_empty(&self) -> Result<()> {
        let i = &self.info;
        if matches!(self.source, Source::NoMatrix) {
            // Shown for its metadata; reading it says why there is nothing to read.
            return Ok(());
        }
        let nnz = i.selected_matrix().map_or(0, |m| m.nnz);
        if i.n_cells == 0 || i.n_genes == 0 || nnz == 0 {
            return Err(DataError::at(
                &i.path,
                &i.matrix,
                format!(
                    "is empty ({} cells x {} genes, {nnz} stored values)",
                    i.n_cells, i.n_genes
                ),
            )
            .hint("choose another matrix with --layer or another file"));
        }
        Ok(())
    }

    /// Fails unless the served matrix holds raw counts, saying why and what to do.
    /// The refusal for a file that holds no matrix.
    fn no_matrix(&self) -> DataError {
        DataError::file(&self.info.path, super::h5ad::NO_MATRIX)
            .hint("there is nothing to train on or project; use the file the counts are in")
    }

    pub fn require_counts(&self) -> Result<()> {
        if matches!(self.source, Source::NoMatrix) {
            return Err(self.no_matrix());
        }
        match &self.info.values {
            ValueKind::Counts => Ok(()),
            ValueKind::Normalised { reason } => {
                let others: Vec<&str> = self
                    .info
                    .matrices
                    .iter()
                    .map(|m| m.location.as_str())
                    .filter(|l| *l != self.info.matrix)
                    .collect();
                let hint = if others.is_empty() {
                    "count models need raw UMI counts; use the file the counts came from".to_string()
                } else {
                    format!(
                        "count models need raw UMI counts; try --layer with one of: {}",
                        others.join(", ")
                    )
                };
                Err(DataError::at(
                    &self.info.path,
                    &self.info.matrix,
                    format!("holds normalised values, not raw counts ({reason})"),
                )
                .hint(hint))
            }
        }
    }

    pub fn info(&self) -> &DatasetInfo {
        &self.info
    }

    pub fn into_info(self) -> DatasetInfo {
        self.info
    }

    pub fn path(&self) -> &Path {
        &self.info.path
    }

    pub fn n_cells(&self) -> usize {
        self.info.n_cells
    }

    pub fn n_genes(&self) -> usize {
        self.info.n_genes
    }

    /// Cells `start..end` of the served matrix as CSR.
    /// Keeps `chunks` (every row of the matrix as a whole pass read it, all genes, each chunk
    /// but the last of the same number of rows) to serve later reads from memory: a second
    /// pass then costs no reading (a dense, compressed file, a decompression). Ignored unless
    /// they cover the matrix so.
    pub fn hold_rows(&self, chunks: Vec<CsrChunk>) {
        let rows = chunks.first().map_or(0, CsrChunk::n_rows);
        let mut next = 0;
        let whole = rows > 0
            && chunks.iter().enumerate().all(|(i, c)| {
                let ok = c.first_row == next && (c.n_rows() == rows || i + 1 == chunks.len());
                next += c.n_rows();
                ok
            })
            && next == self.n_cells();
        if whole {
            *self.held.lock().expect("held rows") = Some(std::sync::Arc::new(Held { rows, chunks }));
        }
    }

    /// Whether reads are served from rows `hold_rows` kept.
    pub fn holds_rows(&self) -> bool {
        self.held.lock().expect("held rows").is_some()
    }

    /// Drops what `hold_rows` kept: reads go to the file again.
    pub fn release_rows(&self) {
        *self.held.lock().expect("held rows") = None;
    }

    /// Rows `start..end` (all genes) from what `hold_rows` kept, when it kept something.
    fn held_rows(&self, start: usize, end: usize) -> Option<CsrChunk> {
        let held = self.held.lock().expect("held rows").clone()?;
        let end = end.min(self.n_cells());
        let n_cols = held.chunks.first()?.n_cols;
        let mut out = CsrChunk::empty(start, n_cols);
        for r in start..end {
            let (idx, val) = held.chunks[r / held.rows].row(r % held.rows);
            out.indices.extend_from_slice(idx);
            out.data.extend_from_slice(val);
            out.indptr.push(out.data.len());
        }
        Some(out)
    }

    pub fn read_rows(&self, start: usize, end: usize) -> Result<CsrChunk> {
        let held = self.held_rows(start, end);
        let chunk = match (&self.source, held) {
            (_, Some(c)) => Ok(c),
            (Source::H5 { file, matrix }, None) => {
                let _guard = super::guard::enter(&self.info.path);
                matrix.read_rows(&self.info.path, file, start, end)
            }
            (Source::Mtx(m), None) => m.read_rows(start, end),
            (Source::NoMatrix, None) => Err(self.no_matrix()),
        }?;
        Ok(match &self.genes_kept {
            None => chunk,
            Some((map, kept)) => {
                let mut out = CsrChunk::empty(chunk.first_row, kept.len());
                for r in 0..chunk.n_rows() {
                    let (idx, val) = chunk.row(r);
                    out.push_row(
                        idx.iter()
                            .zip(val)
                            .filter(|(&c, _)| map[c as usize] != u32::MAX)
                            .map(|(&c, &v)| (map[c as usize], v)),
                    );
                }
                out
            }
        })
    }

    /// Serves only the genes where `keep` is true (one entry per served gene), in their order:
    /// the matrix's columns, the gene table and the presence mask. `keep` must keep a gene.
    pub fn keep_genes(&mut self, keep: &[bool]) {
        assert_eq!(keep.len(), self.info.n_genes, "one entry per gene");
        let before: Vec<usize> = match &self.genes_kept {
            Some((_, kept)) => kept.clone(),
            None => (0..self.info.n_genes).collect(),
        };
        let kept: Vec<usize> = before.iter().zip(keep).filter(|(_, k)| **k).map(|(&c, _)| c).collect();
        let stored = match &self.genes_kept {
            Some((map, _)) => map.len(),
            None => self.info.n_genes,
        };
        let mut map = vec![u32::MAX; stored];
        for (i, &c) in kept.iter().enumerate() {
            map[c] = i as u32;
        }
        let g = &self.info.genes;
        let index = super::matrix::kept(g.index.clone(), keep);
        let columns = g
            .columns
            .iter()
            .map(|(n, v)| (n.clone(), super::matrix::kept(v.clone(), keep)))
            .collect();
        self.info.genes = GeneTable::new(g.index_name.clone(), index, columns);
        self.info.n_genes = kept.len();
        self.genes_kept = Some((map, kept));
    }

    /// The values of an `obs` column (None for formats without obs, or unsupported columns).
    pub fn obs_values(&self, name: &str) -> Result<Option<super::writer::ColumnValues>> {
        match (&self.source, &self.info.format) {
            (Source::H5 { file, .. }, Format::H5ad { .. }) => {
                let _guard = super::guard::enter(&self.info.path);
                h5ad::read_obs_values(&self.info.path, file, name)
            }
            _ => Ok(None),
        }
    }

    /// The presence mask of a merged file (`varm/scmz_presence`, genes x datasets) with each cell's
    /// dataset code (`obs/dataset`): which genes each cell's dataset measured. None elsewhere.
    pub fn presence(&self) -> Result<Option<Presence>> {
        let Source::H5 { file, .. } = &self.source else {
            return Ok(None);
        };
        let el = "varm/scmz_presence";
        if !file.link_exists(el) {
            return Ok(None);
        }
        let ds = file
            .dataset(el)
            .map_err(|e| DataError::at(&self.info.path, el, e.to_string()))?;
        let shape = ds.shape();
        let stored_genes = self.genes_kept.as_ref().map_or(self.info.n_genes, |(map, _)| map.len());
        if shape.len() != 2 || shape[0] != stored_genes {
            return Err(DataError::at(
                &self.info.path,
                el,
                format!("has shape {shape:?}, expected [genes, datasets]"),
            ));
        }
        let mut mask = ds
            .read_raw::<bool>()
            .map_err(|e| DataError::at(&self.info.path, el, e.to_string()))?;
        if let Some((_, kept)) = &self.genes_kept {
            mask = kept
                .iter()
                .flat_map(|&g| mask[g * shape[1]..(g + 1) * shape[1]].to_vec())
                .collect();
        }
        let codes = match self.info.obs_column("dataset").map(|c| &c.kind) {
            Some(ColumnKind::Categorical { codes, .. }) if codes.iter().all(|&c| c >= 0 && (c as usize) < shape[1]) => {
                codes.clone()
            }
            _ => {
                return Err(DataError::at(
                    &self.info.path,
                    "obs/dataset",
                    "is missing or does not match the presence mask",
                )
                .hint("write merged files with `scmz merge`"))
            }
        };
        Ok(Some(Presence {
            n_datasets: shape[1],
            mask,
            dataset_of_cell: codes,
        }))
    }

    /// The whole matrix in one chunk.
    pub fn read_all(&self) -> Result<CsrChunk> {
        self.read_rows(0, self.n_cells())
    }

    /// The matrix as consecutive chunks of `rows` cells; memory is bounded by the chunk.
    pub fn chunks(&self, rows: usize) -> Chunks<'_> {
        Chunks {
            ds: self,
            next: 0,
            rows: rows.max(1),
        }
    }

    /// Duplicated gene names are fine while another key identifies every gene uniquely.
    fn check_genes(&self) -> Result<()> {
        let genes = &self.info.genes;
        let dup = GeneTable::duplicates(&genes.index);
        if dup.is_empty() {
            return Ok(());
        }
        let unique_key = genes
            .columns
            .iter()
            .find(|(_, v)| GeneTable::duplicates(v).is_empty())
            .map(|(n, _)| n.clone());
        if unique_key.is_none() {
            return Err(DataError::at(
                &self.info.path,
                &genes.index_name,
                format!(
                    "holds {} duplicated gene names ({}) and no other gene column is unique",
                    dup.len(),
                    preview(&dup, 5)
                ),
            )
            .hint("make the names unique (anndata: var_names_make_unique) or add a column of unique gene ids"));
        }
        Ok(())
    }
}

/// The first `n` items joined by commas, then ", ..." when there are more.
pub fn preview(items: &[String], n: usize) -> String {
    let mut s = items.iter().take(n).cloned().collect::<Vec<_>>().join(", ");
    if items.len() > n {
        s.push_str(", ...");
    }
    s
}

/// Iterator over row chunks of a dataset.
pub struct Chunks<'a> {
    ds: &'a Dataset,
    next: usize,
    rows: usize,
}

impl Iterator for Chunks<'_> {
    type Item = Result<CsrChunk>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.ds.n_cells() {
            return None;
        }
        let end = (self.next + self.rows).min(self.ds.n_cells());
        let chunk = self.ds.read_rows(self.next, end);
        self.next = if chunk.is_ok() { end } else { usize::MAX };
        Some(chunk)
    }
}

/// Picks the matrix to serve: the user's `--layer`, else the first that holds counts in the order
/// X, counts-named layers, raw/X, other layers; else X. Returns (index, reason, its values).
pub(crate) fn choose_matrix(
    path: &Path,
    candidates: &[MatrixInfo],
    requested: Option<&str>,
    mut values: impl FnMut(usize) -> Result<ValueKind>,
) -> Result<(usize, String, ValueKind)> {
    if candidates.is_empty() {
        return Err(DataError::file(path, "holds no matrix (no X, layers or raw/X)"));
    }
    if let Some(req) = requested {
        let want = match req {
            "raw" | "raw.X" => "raw/X".to_string(),
            "X" | "raw/X" => req.to_string(),
            l if l.starts_with("layers/") => l.to_string(),
            l => format!("layers/{l}"),
        };
        let i = candidates
            .iter()
            .position(|m| m.location == want || m.location == req)
            .ok_or_else(|| {
                let have: Vec<_> = candidates.iter().map(|m| m.location.clone()).collect();
                DataError::at(path, &want, "no such matrix in the file")
                    .hint(format!("choose one of: {}", have.join(", ")))
            })?;
        return Ok((i, "chosen with --layer".to_string(), values(i)?));
    }
    let counts_name = |l: &str| {
        let l = l.to_ascii_lowercase();
        l.contains("count") || l.contains("raw") || l.contains("umi")
    };
    let mut order: Vec<usize> = Vec::new();
    let push = |order: &mut Vec<usize>, pred: &dyn Fn(&str) -> bool| {
        for (i, m) in candidates.iter().enumerate() {
            if pred(&m.location) && !order.contains(&i) {
                order.push(i);
            }
        }
    };
    push(&mut order, &|l| l == "X" || l == "matrix");
    push(&mut order, &|l| l.starts_with("layers/") && counts_name(l));
    push(&mut order, &|l| l == "raw/X");
    push(&mut order, &|_| true);
    let mut rejected = Vec::new();
    let mut first = None;
    for &i in &order {
        let v = values(i)?;
        if v.is_counts() {
            let reason = if rejected.is_empty() {
                "holds raw counts".to_string()
            } else {
                format!("holds raw counts ({} does not)", rejected.join(", "))
            };
            return Ok((i, reason, v));
        }
        rejected.push(candidates[i].location.clone());
        first.get_or_insert(v);
    }
    let v = first.expect("at least one candidate");
    Ok((order[0], "no matrix holds raw counts; serving the first".to_string(), v))
}
