//! The data layer: dataset formats, format detection, metadata, the row-chunk CSR stream, the
//! h5ad writer and the catalog of local datasets. Imports nothing above it.

pub mod catalog;
pub mod dataset;
pub mod detect;
pub mod error;
pub mod gene_ids;
pub mod guard;
pub mod h5;
mod h5ad;
pub mod matrix;
mod mtx;
mod tenx;
pub mod values;
pub mod writer;

pub use dataset::{
    ColumnKind, Dataset, DatasetInfo, Format, GeneTable, H5adLayout, MatrixInfo, ObsColumn, OpenOptions,
};
pub use error::{DataError, Result};
pub use matrix::CsrChunk;
pub use values::ValueKind;

/// Nonzeros a reader may keep in memory to spare a later pass over the same file (the engine's
/// chunk cache, the gene selection's second pass): `SCMZ_DATA_CACHE_MB` (default 512; 0: none)
/// at 8 bytes a nonzero (a u32 column and an f32 value).
pub fn cache_budget_nnz() -> usize {
    let mb = env_number("SCMZ_DATA_CACHE_MB", 512).min(1 << 30) as usize;
    (mb << 20) / 8
}

/// A whole number from environment variable `var`, else `default`. A value that is not one is
/// said once a process, on stderr, with the default used (it was ignored without a word).
pub(crate) fn env_number(var: &str, default: u64) -> u64 {
    static SAID: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let Ok(v) = std::env::var(var) else {
        return default;
    };
    v.trim().parse().unwrap_or_else(|_| {
        let mut said = SAID.lock().unwrap_or_else(|e| e.into_inner());
        if !said.iter().any(|s| s == var) {
            said.push(var.to_string());
            eprintln!(
                "warning: {var}=`{}` is not a whole number; using {default}",
                crate::files::printable(&v)
            );
        }
        default
    })
}
