//! Gene identifiers across datasets and models: the offline reference tables, matching one gene
//! list against another through the best shared key, the overlap report, and merging datasets
//! over the union of their genes with a presence mask. Builds on `data`.

pub mod matching;
pub mod merge;
pub mod overlap;
pub mod reference;
pub mod selection;

pub use matching::{match_genes, to_model_space, GeneList, Matching, Route};
pub use overlap::{compare_datasets, compare_lists, OverlapReport};
