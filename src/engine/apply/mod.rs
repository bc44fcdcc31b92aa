//! A trained model applied: loaded and encoding cells (`encode`), projecting a dataset with gene
//! matching, label transfer and the mapping prediction (`project`), fine-tuned to new batches
//! (`finetune`), and scored against one trained from scratch (`compare`).

pub mod compare;
pub mod encode;
pub mod encoder;
pub mod finetune;
pub mod project;
pub mod transfer;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
