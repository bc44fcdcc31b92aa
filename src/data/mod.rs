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
    let mb = std::env::var("SCMZ_DATA_CACHE_MB")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(512);
    (mb << 20) / 8
}
