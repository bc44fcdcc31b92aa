//! Are the values raw counts? Decided from a sample of rows at the start, middle and end of the
//! matrix: counts are non-negative integers; anything else is normalised (and we say why).

use serde::{Deserialize, Serialize};

use super::error::Result;
use super::matrix::CsrChunk;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ValueKind {
    Counts,
    Normalised { reason: String },
}

impl ValueKind {
    pub fn is_counts(&self) -> bool {
        matches!(self, ValueKind::Counts)
    }

    pub fn label(&self) -> &'static str {
        match self {
            ValueKind::Counts => "counts",
            ValueKind::Normalised { .. } => "normalised",
        }
    }
}

/// Stored entries read per sample position (three positions).
const SAMPLE_ENTRIES: usize = 20_000;

/// Samples rows of a matrix of `n_rows` rows and `nnz` entries through `read(start, end)`.
pub fn sample_values(
    n_rows: usize,
    nnz: u64,
    mut read: impl FnMut(usize, usize) -> Result<CsrChunk>,
) -> Result<ValueKind> {
    if n_rows == 0 {
        return Ok(ValueKind::Counts);
    }
    let per_row = (nnz as usize / n_rows).max(1);
    let k = (SAMPLE_ENTRIES / per_row).clamp(1, n_rows);
    let mut starts = vec![0, n_rows.saturating_sub(k) / 2, n_rows.saturating_sub(k)];
    starts.dedup();
    let mut verdict = ValueKind::Counts;
    for s in starts {
        let chunk = read(s, (s + k).min(n_rows))?;
        if let Some(v) = classify(&chunk.data) {
            verdict = v;
            break;
        }
    }
    Ok(verdict)
}

/// None when every value is a non-negative integer, else the reason it is not counts.
pub fn classify(values: &[f32]) -> Option<ValueKind> {
    if let Some(v) = values.iter().find(|v| **v < 0.0) {
        return Some(ValueKind::Normalised {
            reason: format!("negative values (e.g. {v:.3}): scaled data"),
        });
    }
    if let Some(v) = values.iter().find(|v| v.fract() != 0.0) {
        let max = values.iter().cloned().fold(0f32, f32::max);
        let what = if max < 20.0 { "log-normalised" } else { "normalised" };
        return Some(ValueKind::Normalised {
            reason: format!("non-integer values (e.g. {v:.3}, max {max:.2}): {what}"),
        });
    }
    None
}
