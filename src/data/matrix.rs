//! Count matrices as streams of row (cell) chunks in CSR form, whatever the layout on disk:
//! CSR groups are sliced directly, CSC groups are scanned column block by column block, dense
//! arrays are read as row slabs. Every chunk is validated as it is read (monotone `indptr`,
//! column indices in range, finite values), so a damaged file fails with the element named.

use std::path::Path;

use hdf5::File;
use serde::{Deserialize, Serialize};

use super::error::{Context, DataError, Result};

/// Cells `first_row .. first_row + n_rows()` of a cells x genes matrix, in CSR form.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CsrChunk {
    pub first_row: usize,
    pub n_cols: usize,
    /// `n_rows + 1` offsets into `indices`/`data`, starting at 0.
    pub indptr: Vec<usize>,
    pub indices: Vec<u32>,
    pub data: Vec<f32>,
}

impl CsrChunk {
    pub fn empty(first_row: usize, n_cols: usize) -> Self {
        CsrChunk {
            first_row,
            n_cols,
            indptr: vec![0],
            indices: Vec::new(),
            data: Vec::new(),
        }
    }

    pub fn n_rows(&self) -> usize {
        self.indptr.len() - 1
    }

    pub fn nnz(&self) -> usize {
        self.data.len()
    }

    /// Column indices and values of row `i` of this chunk.
    pub fn row(&self, i: usize) -> (&[u32], &[f32]) {
        let (a, b) = (self.indptr[i], self.indptr[i + 1]);
        (&self.indices[a..b], &self.data[a..b])
    }

    /// Total of each row (library size when the values are counts).
    pub fn row_sums(&self) -> Vec<f64> {
        (0..self.n_rows())
            .map(|i| self.row(i).1.iter().map(|&v| v as f64).sum())
            .collect()
    }

    /// Appends one row given as (column, value) pairs.
    pub fn push_row(&mut self, entries: impl IntoIterator<Item = (u32, f32)>) {
        for (c, v) in entries {
            self.indices.push(c);
            self.data.push(v);
        }
        self.indptr.push(self.data.len());
    }

    /// Row-major dense copy (`n_rows * n_cols`), for small chunks and tests.
    pub fn to_dense(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.n_rows() * self.n_cols];
        for i in 0..self.n_rows() {
            let (idx, val) = self.row(i);
            for (&c, &v) in idx.iter().zip(val) {
                out[i * self.n_cols + c as usize] += v;
            }
        }
        out
    }

    /// Bytes held by the chunk's buffers.
    pub fn heap_bytes(&self) -> usize {
        self.indptr.len() * 8 + self.indices.len() * 4 + self.data.len() * 4
    }
}

/// Stored column -> served column (`u32::MAX`: dropped) for the columns to keep, and how many
/// are kept.
pub fn column_map(keep: &[bool]) -> (Vec<u32>, usize) {
    let mut next = 0u32;
    let map = keep
        .iter()
        .map(|&k| {
            if k {
                next += 1;
                next - 1
            } else {
                u32::MAX
            }
        })
        .collect();
    (map, next as usize)
}

/// The entries of `values` where `keep` is true.
pub(crate) fn kept<T>(values: Vec<T>, keep: &[bool]) -> Vec<T> {
    values
        .into_iter()
        .zip(keep)
        .filter(|(_, k)| **k)
        .map(|(v, _)| v)
        .collect()
}

/// How a matrix is laid out on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MatrixEncoding {
    Csr,
    Csc,
    Dense,
}

impl std::fmt::Display for MatrixEncoding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MatrixEncoding::Csr => "csr",
            MatrixEncoding::Csc => "csc",
            MatrixEncoding::Dense => "dense",
        })
    }
}

/// A cells x genes matrix inside an HDF5 file (AnnData `X`, a layer, `raw/X`, or a 10x matrix).
#[derive(Debug, Clone)]
pub struct H5Matrix {
    /// HDF5 path of the group (sparse) or dataset (dense).
    pub element: String,
    pub encoding: MatrixEncoding,
    pub n_rows: usize,
    /// Columns after `col_map` is applied.
    pub n_cols: usize,
    /// Stored entries (sparse) or `n_rows * n_cols` (dense).
    pub nnz: u64,
    /// Columns as stored on disk.
    file_cols: usize,
    /// Stored column -> served column, `u32::MAX` to drop it (10x non-gene features).
    col_map: Option<Vec<u32>>,
}

/// Reads integers in their stored width and widens them here: HDF5's own int32 -> int64
/// conversion is several times slower than this loop.
fn read_ints(ds: &hdf5::Dataset, range: std::ops::Range<usize>) -> hdf5::Result<Vec<i64>> {
    use hdf5::types::{IntSize, TypeDescriptor};
    match ds.dtype()?.to_descriptor()? {
        TypeDescriptor::Integer(IntSize::U4) => {
            Ok(ds.read_slice_1d::<i32, _>(range)?.iter().map(|&v| v as i64).collect())
        }
        TypeDescriptor::Unsigned(IntSize::U4) => {
            Ok(ds.read_slice_1d::<u32, _>(range)?.iter().map(|&v| v as i64).collect())
        }
        _ => Ok(ds.read_slice_1d::<i64, _>(range)?.to_vec()),
    }
}

/// An index outside its range: its position and value.
type BadIndex = Option<(usize, i64)>;

/// Column indices of a CSR matrix as u32, and the first one outside `0..limit` when there is
/// one. Read in the stored width and converted in place: CSR indices
/// are most of what a reader moves.
fn read_columns(ds: &hdf5::Dataset, range: std::ops::Range<usize>, limit: usize) -> hdf5::Result<(Vec<u32>, BadIndex)> {
    use hdf5::types::{IntSize, TypeDescriptor};
    // One pass that vectorises; the position is looked up only for a bad file.
    fn first_bad<T: Copy + Into<i64>>(v: &[T], limit: usize) -> BadIndex {
        let limit = limit as i64;
        let bad = v.iter().fold(false, |bad, &c| bad | !(0..limit).contains(&c.into()));
        bad.then(|| {
            let k = v
                .iter()
                .position(|&c| !(0..limit).contains(&c.into()))
                .expect("a bad index");
            (k, v[k].into())
        })
    }
    Ok(match ds.dtype()?.to_descriptor()? {
        TypeDescriptor::Integer(IntSize::U4) => {
            let v = ds.read_slice_1d::<i32, _>(range)?.into_raw_vec_and_offset().0;
            let bad = first_bad(&v, limit);
            (v.into_iter().map(|c| c as u32).collect(), bad)
        }
        TypeDescriptor::Unsigned(IntSize::U4) => {
            let v = ds.read_slice_1d::<u32, _>(range)?.into_raw_vec_and_offset().0;
            let bad = first_bad(&v, limit);
            (v, bad)
        }
        _ => {
            let v = ds.read_slice_1d::<i64, _>(range)?.into_raw_vec_and_offset().0;
            let bad = first_bad(&v, limit);
            (v.into_iter().map(|c| c as u32).collect(), bad)
        }
    })
}

/// Rows of a CSC matrix are gathered from this many stored entries at a time.
const CSC_BLOCK: usize = 1 << 20;

impl H5Matrix {
    /// Describes the sparse group or dense dataset at `element`, checking its shape and lengths.
    pub fn open(
        path: &Path,
        file: &File,
        element: &str,
        encoding: MatrixEncoding,
        shape: (usize, usize),
    ) -> Result<Self> {
        let (n_rows, n_cols) = shape;
        let nnz = match encoding {
            MatrixEncoding::Dense => {
                let ds = file.dataset(element).at(path, element)?;
                let s = ds.shape();
                if s.len() != 2 || s[0] != n_rows || s[1] != n_cols {
                    return Err(DataError::at(
                        path,
                        element,
                        format!("dense matrix has shape {s:?}, expected [{n_rows}, {n_cols}]"),
                    ));
                }
                (n_rows * n_cols) as u64
            }
            MatrixEncoding::Csr | MatrixEncoding::Csc => {
                let g = file.group(element).at(path, element)?;
                for part in ["data", "indices", "indptr"] {
                    if !g.link_exists(part) {
                        return Err(DataError::at(
                            path,
                            &format!("{element}/{part}"),
                            "missing from the sparse matrix group",
                        ));
                    }
                }
                let data = g.dataset("data").at(path, &format!("{element}/data"))?;
                let indices = g.dataset("indices").at(path, &format!("{element}/indices"))?;
                let indptr = g.dataset("indptr").at(path, &format!("{element}/indptr"))?;
                for (part, ds, ints) in [
                    ("data", &data, false),
                    ("indices", &indices, true),
                    ("indptr", &indptr, true),
                ] {
                    super::h5::numeric(ds, ints).map_err(|problem| {
                        DataError::at(path, &format!("{element}/{part}"), problem)
                            .hint("not a sparse matrix anndata writes; rewrite the file with anndata")
                    })?;
                }
                let nnz = data.size();
                if indices.size() != nnz {
                    return Err(DataError::at(
                        path,
                        &format!("{element}/indices"),
                        format!("has {} entries but data has {nnz}", indices.size()),
                    ));
                }
                let major = if encoding == MatrixEncoding::Csr {
                    n_rows
                } else {
                    n_cols
                };
                if indptr.size() != major + 1 {
                    return Err(DataError::at(
                        path,
                        &format!("{element}/indptr"),
                        format!(
                            "has {} entries but the shape [{n_rows}, {n_cols}] needs {}",
                            indptr.size(),
                            major + 1
                        ),
                    ));
                }
                let ends: Vec<i64> = if major == 0 {
                    indptr.read_raw::<i64>().at(path, &format!("{element}/indptr"))?
                } else {
                    let first = indptr
                        .read_slice_1d::<i64, _>(0..1)
                        .at(path, &format!("{element}/indptr"))?;
                    let last = indptr
                        .read_slice_1d::<i64, _>(major..major + 1)
                        .at(path, &format!("{element}/indptr"))?;
                    vec![first[0], last[0]]
                };
                if ends.first() != Some(&0) || ends.last().map(|&v| v as u64) != Some(nnz as u64) {
                    return Err(DataError::at(
                        path,
                        &format!("{element}/indptr"),
                        format!(
                            "runs from {} to {} but data has {nnz} entries (it must run from 0 to {nnz})",
                            ends.first().map_or("nothing".into(), i64::to_string),
                            ends.last().map_or("nothing".into(), i64::to_string)
                        ),
                    )
                    .hint("the matrix is inconsistent; rewrite it with anndata"));
                }
                nnz as u64
            }
        };
        Ok(H5Matrix {
            element: element.to_string(),
            encoding,
            n_rows,
            n_cols,
            nnz,
            file_cols: n_cols,
            col_map: None,
        })
    }

    /// Serves only the stored columns where `keep` is true (10x: Gene Expression features).
    pub fn keep_columns(&mut self, keep: &[bool]) {
        let (map, n) = column_map(keep);
        self.n_cols = n;
        self.col_map = Some(map);
    }

    /// Reads cells `start..end` as CSR.
    pub fn read_rows(&self, path: &Path, file: &File, start: usize, end: usize) -> Result<CsrChunk> {
        let end = end.min(self.n_rows);
        let start = start.min(end);
        match self.encoding {
            MatrixEncoding::Csr => self.read_csr(path, file, start, end),
            MatrixEncoding::Csc => self.read_csc(path, file, start, end),
            MatrixEncoding::Dense => self.read_dense(path, file, start, end),
        }
    }

    fn part(&self, name: &str) -> String {
        format!("{}/{name}", self.element)
    }

    fn read_csr(&self, path: &Path, file: &File, start: usize, end: usize) -> Result<CsrChunk> {
        let g = file.group(&self.element).at(path, &self.element)?;
        let el = self.part("indptr");
        let ptr = g
            .dataset("indptr")
            .and_then(|d| d.read_slice_1d::<i64, _>(start..end + 1))
            .at(path, &el)?;
        let (lo, hi) = (ptr[0], ptr[ptr.len() - 1]);
        if lo < 0 || hi < lo || hi as u64 > self.nnz || ptr.iter().zip(ptr.iter().skip(1)).any(|(a, b)| b < a) {
            return Err(DataError::at(
                path,
                &el,
                format!(
                    "is not a non-decreasing offset list within 0..={} (rows {start}..{end})",
                    self.nnz
                ),
            )
            .hint("the matrix is inconsistent; rewrite it with anndata"));
        }
        let (lo, hi) = (lo as usize, hi as usize);
        let (idx, bad_col) = g
            .dataset("indices")
            .and_then(|d| read_columns(&d, lo..hi, self.file_cols))
            .at(path, &self.part("indices"))?;
        let val = g
            .dataset("data")
            .and_then(|d| d.read_slice_1d::<f32, _>(lo..hi))
            .at(path, &self.part("data"))?
            .into_raw_vec_and_offset()
            .0;
        let ptr = ptr.as_slice().expect("a 1-d array read from a file is contiguous");
        // Checked in one pass each (the common case); the first bad entry is looked up for the
        // message only when there is one.
        let bad_val = val.iter().fold(false, |bad, v| bad | !v.is_finite());
        let row_of = |k: usize| start + ptr.partition_point(|&p| p as usize <= lo + k) - 1;
        if let Some((k, c)) = bad_col {
            self.column(path, c, row_of(k))?;
        }
        if bad_val {
            let k = val.iter().position(|v| !v.is_finite()).expect("a bad value");
            self.value(path, val[k], row_of(k))?;
        }
        let mut chunk = CsrChunk::empty(start, self.n_cols);
        match &self.col_map {
            None => {
                chunk.indices = idx;
                chunk.data = val;
                chunk.indptr = ptr.iter().map(|&p| p as usize - lo).collect();
            }
            Some(map) => {
                chunk.indices.reserve(hi - lo);
                chunk.data.reserve(hi - lo);
                for r in 0..end - start {
                    let (a, b) = (ptr[r] as usize - lo, ptr[r + 1] as usize - lo);
                    for (&c, &v) in idx[a..b].iter().zip(&val[a..b]) {
                        let c = map[c as usize];
                        if c != u32::MAX {
                            chunk.indices.push(c);
                            chunk.data.push(v);
                        }
                    }
                    chunk.indptr.push(chunk.data.len());
                }
            }
        }
        Ok(chunk)
    }

    fn column(&self, path: &Path, c: i64, row: usize) -> Result<u32> {
        if c < 0 || c as usize >= self.file_cols {
            return Err(DataError::at(
                path,
                &self.part("indices"),
                format!(
                    "holds column {c} in row {row}, but the matrix has {} columns",
                    self.file_cols
                ),
            )
            .hint("the matrix is inconsistent; rewrite it with anndata"));
        }
        Ok(match &self.col_map {
            Some(m) => m[c as usize],
            None => c as u32,
        })
    }

    fn value(&self, path: &Path, v: f32, row: usize) -> Result<f32> {
        if !v.is_finite() {
            return Err(
                DataError::at(path, &self.part("data"), format!("holds {v} in row {row}"))
                    .hint("NaN and infinite values are not expression values; fix or drop those cells"),
            );
        }
        Ok(v)
    }

    fn read_csc(&self, path: &Path, file: &File, start: usize, end: usize) -> Result<CsrChunk> {
        let g = file.group(&self.element).at(path, &self.element)?;
        let colptr = g
            .dataset("indptr")
            .and_then(|d| d.read_raw::<i64>())
            .at(path, &self.part("indptr"))?;
        if colptr.windows(2).map(|w| (w[0], w[1])).any(|(a, b)| b < a) {
            return Err(DataError::at(path, &self.part("indptr"), "is not non-decreasing")
                .hint("the matrix is inconsistent; rewrite it with anndata"));
        }
        let indices = g.dataset("indices").at(path, &self.part("indices"))?;
        let data = g.dataset("data").at(path, &self.part("data"))?;
        let mut rows: Vec<Vec<(u32, f32)>> = vec![Vec::new(); end - start];
        let nnz = self.nnz as usize;
        let mut col = 0usize;
        let mut lo = 0usize;
        while lo < nnz {
            let hi = (lo + CSC_BLOCK).min(nnz);
            let idx = read_ints(&indices, lo..hi).at(path, &self.part("indices"))?;
            let val = data.read_slice_1d::<f32, _>(lo..hi).at(path, &self.part("data"))?;
            for k in lo..hi {
                while col + 1 < colptr.len() && colptr[col + 1] as usize <= k {
                    col += 1;
                }
                let r = idx[k - lo];
                if r < 0 || r as usize >= self.n_rows {
                    return Err(DataError::at(
                        path,
                        &self.part("indices"),
                        format!("holds row {r}, but the matrix has {} rows", self.n_rows),
                    ));
                }
                let r = r as usize;
                if r >= start && r < end {
                    let v = self.value(path, val[k - lo], r)?;
                    let c = match &self.col_map {
                        Some(m) => m[col],
                        None => col as u32,
                    };
                    if c != u32::MAX {
                        rows[r - start].push((c, v));
                    }
                }
            }
            lo = hi;
        }
        let mut chunk = CsrChunk::empty(start, self.n_cols);
        for row in rows {
            chunk.push_row(row);
        }
        Ok(chunk)
    }

    fn read_dense(&self, path: &Path, file: &File, start: usize, end: usize) -> Result<CsrChunk> {
        let ds = file.dataset(&self.element).at(path, &self.element)?;
        let block = ds.read_slice_2d::<f32, _>((start..end, ..)).at(path, &self.element)?;
        let mut chunk = CsrChunk::empty(start, self.n_cols);
        for (r, row) in block.rows().into_iter().enumerate() {
            for (c, &v) in row.iter().enumerate() {
                if !v.is_finite() {
                    return Err(
                        DataError::at(path, &self.element, format!("holds {v} in row {}", start + r))
                            .hint("NaN and infinite values are not expression values; fix or drop those cells"),
                    );
                }
                if v != 0.0 {
                    chunk.indices.push(c as u32);
                    chunk.data.push(v);
                }
            }
            chunk.indptr.push(chunk.data.len());
        }
        Ok(chunk)
    }
}
