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
