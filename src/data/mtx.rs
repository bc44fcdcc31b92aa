//! 10x Matrix Market folders: `matrix.mtx[.gz]` (genes x cells, 1-based coordinates) with
//! `genes.tsv` (Cell Ranger 2) or `features.tsv[.gz]` (Cell Ranger 3+) and `barcodes.tsv[.gz]`.
//! Text cannot be sliced by row, so the first read parses the whole matrix into CSR; opening
//! reads the header and a sample of entries only.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::dataset::{DatasetInfo, Format, GeneTable, MatrixInfo, OpenOptions, Source};
use super::detect::mtx_file;
use super::error::{DataError, Result};
use super::matrix::{column_map, kept, CsrChunk, MatrixEncoding};
use super::tenx::GENE_EXPRESSION;
use super::values::{classify, ValueKind};

const SAMPLE_ENTRIES: usize = 100_000;

pub(crate) struct MtxMatrix {
    file: PathBuf,
    n_cells: usize,
    n_features: usize,
    nnz: usize,
    /// Stored feature (row of the file) -> served gene column, `u32::MAX` to drop.
    col_map: Vec<u32>,
    n_genes: usize,
    parsed: OnceLock<std::result::Result<CsrChunk, DataError>>,
}

fn open_text(path: &Path) -> Result<Box<dyn BufRead>> {
    let f = crate::files::open_regular(path).map_err(|e| DataError::file(path, e.message))?;
    let inner: Box<dyn Read> = if path.extension().is_some_and(|e| e == "gz") {
        Box::new(flate2::read::MultiGzDecoder::new(f))
    } else {
        Box::new(f)
    };
    Ok(Box::new(BufReader::with_capacity(1 << 16, inner)))
}

fn find(dir: &Path, names: &[&str]) -> Option<PathBuf> {
    names.iter().map(|n| dir.join(n)).find(|p| p.is_file())
}

fn read_tsv(path: &Path) -> Result<Vec<Vec<String>>> {
    let mut rows = Vec::new();
    for (i, line) in open_text(path)?.lines().enumerate() {
        let line = line.map_err(|e| DataError::at(path, &format!("line {}", i + 1), e.to_string()))?;
        if line.is_empty() {
            continue;
        }
        rows.push(line.split('\t').map(str::to_string).collect());
    }
    Ok(rows)
}

/// Header of a coordinate Matrix Market file: (genes, cells, entries, lines before the entries).
fn read_header(path: &Path, reader: &mut dyn BufRead) -> Result<(usize, usize, usize, usize)> {
    let mut line = String::new();
    let mut n = 0;
    let err = |n: usize, msg: &str| DataError::at(path, &format!("line {n}"), msg.to_string());
    loop {
        line.clear();
        n += 1;
        let read = reader.read_line(&mut line).map_err(|e| err(n, &e.to_string()))?;
        if read == 0 {
            return Err(err(n, "file ends before the size line").hint("the file is truncated; copy it again"));
        }
        if n == 1 {
            let h = line.to_ascii_lowercase();
            if !h.starts_with("%%matrixmarket matrix coordinate") {
                return Err(err(1, "is not a `%%MatrixMarket matrix coordinate` header")
                    .hint("scmz reads 10x sparse Matrix Market files"));
            }
            continue;
        }
        if line.starts_with('%') || line.trim().is_empty() {
            continue;
        }
        let parts: Vec<usize> = line.split_whitespace().filter_map(|p| p.parse().ok()).collect();
        if parts.len() != 3 {
            return Err(err(n, "size line must hold three integers: genes cells entries"));
        }
        return Ok((parts[0], parts[1], parts[2], n));
    }
}

/// Parses one entry line into (gene, cell, value), 0-based.
fn parse_entry(path: &Path, line: &str, n: usize, genes: usize, cells: usize) -> Result<(usize, usize, f32)> {
    let mut it = line.split_ascii_whitespace();
    let bad = |msg: String| DataError::at(path, &format!("line {n}"), msg);
    let (Some(g), Some(c)) = (it.next(), it.next()) else {
        return Err(bad(format!("`{}` is not `gene cell value`", line.trim())));
    };
    let g: usize = g
        .parse()
        .map_err(|_| bad(format!("gene index `{g}` is not a number")))?;
    let c: usize = c
        .parse()
        .map_err(|_| bad(format!("cell index `{c}` is not a number")))?;
    let v: f32 = match it.next() {
        Some(v) => v.parse().map_err(|_| bad(format!("value `{v}` is not a number")))?,
        None => 1.0,
    };
    if g == 0 || g > genes || c == 0 || c > cells {
        return Err(bad(format!("entry ({g}, {c}) is outside the {genes} x {cells} matrix")));
    }
    if !v.is_finite() {
        return Err(bad(format!("value {v} is not finite")));
    }
    Ok((g - 1, c - 1, v))
}

pub(crate) fn open(dir: &Path, opts: &OpenOptions) -> Result<(DatasetInfo, Source)> {
    let file = mtx_file(dir).ok_or_else(|| DataError::file(dir, "folder holds no matrix.mtx[.gz]"))?;
    let (features_file, version) = match find(dir, &["features.tsv.gz", "features.tsv"]) {
        Some(f) => (f, 3),
        None => (
            find(dir, &["genes.tsv", "genes.tsv.gz"])
                .ok_or_else(|| DataError::file(dir, "folder has matrix.mtx but no features.tsv or genes.tsv"))?,
            2,
        ),
    };
    let barcodes_file = find(dir, &["barcodes.tsv.gz", "barcodes.tsv"])
        .ok_or_else(|| DataError::file(dir, "folder has matrix.mtx but no barcodes.tsv"))?;

    let mut reader = open_text(&file)?;
    let (n_features, n_cells, nnz, header_lines) = read_header(&file, &mut reader)?;
    let features = read_tsv(&features_file)?;
    let barcodes: Vec<String> = read_tsv(&barcodes_file)?
        .into_iter()
        .map(|mut r| r.swap_remove(0))
        .collect();
    if features.len() != n_features {
        return Err(DataError::file(
            &features_file,
            format!(
                "lists {} features but {} says {n_features}",
                features.len(),
                file.display()
            ),
        ));
    }
    if barcodes.len() != n_cells {
        return Err(DataError::file(
            &barcodes_file,
            format!(
                "lists {} barcodes but {} says {n_cells}",
                barcodes.len(),
                file.display()
            ),
        ));
    }
    let column = |i: usize| -> Vec<String> { features.iter().map(|r| r.get(i).cloned().unwrap_or_default()).collect() };
    let ids = column(0);
    let mut columns = vec![(if version == 3 { "name" } else { "gene_names" }.to_string(), column(1))];
    let keep: Vec<bool> = if version == 3 && features.iter().all(|r| r.len() >= 3) {
        columns.push(("feature_type".into(), column(2)));
        features
            .iter()
            .map(|r| opts.all_features || r[2] == GENE_EXPRESSION)
            .collect()
    } else {
        vec![true; n_features]
    };
    let (col_map, n_genes) = column_map(&keep);
    let index = kept(ids, &keep);
    let columns = columns.into_iter().map(|(n, v)| (n, kept(v, &keep))).collect();
    let mut warnings = Vec::new();
    if n_genes < n_features {
        warnings.push(format!(
            "{} non-gene features left out; --all-features keeps them",
            n_features - n_genes
        ));
    }

    // Value check on the first entries only: opening stays cheap.
    let mut sample = Vec::with_capacity(SAMPLE_ENTRIES.min(nnz));
    let mut line = String::new();
    let mut n = header_lines;
    while sample.len() < SAMPLE_ENTRIES.min(nnz) {
        line.clear();
        n += 1;
        if reader
            .read_line(&mut line)
            .map_err(|e| DataError::at(&file, &format!("line {n}"), e.to_string()))?
            == 0
        {
            return Err(DataError::at(
                &file,
                &format!("line {n}"),
                format!("file ends after {} of {nnz} entries", sample.len()),
            )
            .hint("the file is truncated; copy it again"));
        }
        sample.push(parse_entry(&file, &line, n, n_features, n_cells)?.2);
    }
    if nnz == 0 || n_cells == 0 || n_genes == 0 {
        return Err(DataError::file(
            &file,
            format!("matrix is empty ({n_features} genes x {n_cells} cells, {nnz} entries)"),
        ));
    }
    let values = classify(&sample).unwrap_or(ValueKind::Counts);

    let matrix = MtxMatrix {
        file: file.clone(),
        n_cells,
        n_features,
        nnz,
        col_map,
        n_genes,
        parsed: OnceLock::new(),
    };
    let info = DatasetInfo {
        path: dir.to_path_buf(),
        format: Format::TenxMtx {
            version,
            gzipped: file.extension().is_some_and(|e| e == "gz"),
        },
        n_cells,
        n_genes,
        cell_ids: barcodes,
        genes: GeneTable::new(features_file.display().to_string(), index, columns),
        obs: Vec::new(),
        matrices: vec![MatrixInfo {
            location: "matrix".into(),
            encoding: MatrixEncoding::Csc,
            n_cells,
            n_genes,
            nnz: nnz as u64,
        }],
        matrix: "matrix".into(),
        matrix_reason: "the only matrix in a Matrix Market folder".into(),
        values,
        warnings,
    };
    Ok((info, Source::Mtx(matrix)))
}

impl MtxMatrix {
    pub(crate) fn read_rows(&self, start: usize, end: usize) -> Result<CsrChunk> {
        let all = self
            .parsed
            .get_or_init(|| self.parse())
            .as_ref()
            .map_err(Clone::clone)?;
        let end = end.min(self.n_cells);
        let start = start.min(end);
        let mut chunk = CsrChunk::empty(start, self.n_genes);
        for r in start..end {
            let (idx, val) = all.row(r);
            chunk.push_row(idx.iter().copied().zip(val.iter().copied()));
        }
        Ok(chunk)
    }

    fn parse(&self) -> std::result::Result<CsrChunk, DataError> {
        let mut reader = open_text(&self.file)?;
        let (_, _, _, mut n) = read_header(&self.file, &mut reader)?;
        let mut per_cell: Vec<Vec<(u32, f32)>> = vec![Vec::new(); self.n_cells];
        let mut line = String::new();
        let mut seen = 0;
        loop {
            line.clear();
            n += 1;
            let read = reader
                .read_line(&mut line)
                .map_err(|e| DataError::at(&self.file, &format!("line {n}"), e.to_string()))?;
            if read == 0 {
                break;
            }
            if line.trim().is_empty() {
                continue;
            }
            let (g, c, v) = parse_entry(&self.file, &line, n, self.n_features, self.n_cells)?;
            seen += 1;
            let col = self.col_map[g];
            if col != u32::MAX {
                per_cell[c].push((col, v));
            }
        }
        if seen != self.nnz {
            return Err(DataError::file(
                &self.file,
                format!("holds {seen} entries but its size line says {}", self.nnz),
            )
            .hint("the file is truncated or damaged; copy it again"));
        }
        let mut chunk = CsrChunk::empty(0, self.n_genes);
        for mut row in per_cell {
            row.sort_by_key(|e| e.0);
            chunk.push_row(row);
        }
        Ok(chunk)
    }
}
