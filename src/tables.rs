//! Tables for machines: a report becomes a polars `DataFrame`, written as CSV or Parquet by the
//! output file's extension, through a temporary file renamed into place.

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
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("table");
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| -> Result<(), TableError> {
        let file = std::fs::File::create(&tmp).map_err(|e| err(&e))?;
        if ext == "csv" {
            CsvWriter::new(file).finish(df).map_err(|e| err(&e))?;
        } else {
            ParquetWriter::new(file).finish(df).map_err(|e| err(&e))?;
        }
        std::fs::rename(&tmp, path).map_err(|e| err(&e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
