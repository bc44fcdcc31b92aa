//! Tables for machines: a report becomes a polars `DataFrame`, written as CSV or Parquet by the
//! output file's extension, through `files::AtomicFile` (whole or absent).

use std::path::Path;

use polars::prelude::*;

#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("{0}: unknown table format; use a .csv or .parquet file name")]
    Format(String),
    #[error("{path}: cannot write the table: {message}")]
    Write { path: String, message: String },
}

/// Writes `df` to `path` (`.csv` or `.parquet`).
pub fn write_table(df: &mut DataFrame, path: &Path) -> Result<(), TableError> {
    let shown = path.display().to_string();
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    if ext != "csv" && ext != "parquet" {
        return Err(TableError::Format(shown));
    }
    let err = |e: &dyn std::fmt::Display| TableError::Write {
        path: shown.clone(),
        message: e.to_string(),
    };
    let mut f = crate::files::AtomicFile::create(path).map_err(|e| TableError::Write {
        path: shown.clone(),
        message: e.message,
    })?;
    if ext == "csv" {
        CsvWriter::new(f.file()).finish(df).map_err(|e| err(&e))?;
    } else {
        ParquetWriter::new(f.file()).finish(df).map_err(|e| err(&e))?;
    }
    f.commit().map_err(|e| TableError::Write {
        path: shown,
        message: e.message,
    })
}
