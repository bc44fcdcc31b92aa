//! How a projection encodes the query's cells: in the model's gene space, missing genes masked or
//! zero-filled, each cell under its own batch (the query's column of the model's batch key) or
//! one chosen for all.

use anyhow::bail;
use tch::{Device, Kind, Tensor};

use scmz::data::{CsrChunk, Dataset};

use crate::model::vae::Vae;
use crate::train::covariates::Covariates;
use crate::train::loader::Batch;
use crate::train::minibatch::prepare;

/// How cells are encoded: which model genes they carry and how missing ones are presented.
pub(crate) struct Encoder<'a> {
    pub vae: &'a Vae,
    pub dev: Device,
    /// 1 for model genes the data has.
    pub found: Vec<f32>,
    pub mask: bool,
    pub batch: Option<(Vec<String>, CellBatch)>,
}

/// The batch each cell is encoded as: one for all, or each cell's own (the query's column of
/// the model's batch key), by row.
#[derive(Clone)]
pub(crate) enum CellBatch {
    All(usize),
    PerCell(std::sync::Arc<Vec<i32>>),
}

impl Encoder<'_> {
    /// Latent means of cells given in the model's gene space, the first being row `first`.
    pub fn encode(&self, x: &CsrChunk, hide: bool, first: usize) -> anyhow::Result<Vec<f32>> {
        let n = x.n_rows();
        let g = self.vae.arch.n_genes;
        let cov = Covariates {
            batch: self.batch.as_ref().map(|(cats, c)| {
                let codes = match c {
                    CellBatch::All(c) => vec![*c as i32; n],
                    CellBatch::PerCell(codes) => codes[first..first + n].to_vec(),
                };
                (cats.clone(), codes)
            }),
            labels: None,
            presence: None,
            classes: None,
        };
        // Hidden genes carry no counts, whatever the policy.
        let x = if hide {
            let mut y = CsrChunk::empty(0, g);
            for r in 0..n {
                let (idx, val) = x.row(r);
                y.push_row(
                    idx.iter()
                        .zip(val)
                        .filter(|(c, _)| self.found[**c as usize] > 0.0)
                        .map(|(c, v)| (*c, *v)),
                );
            }
            y
        } else {
            x.clone()
        };
        let b = Batch {
            x,
            rows: (0..n).collect(),
        };
        let mut p = prepare(&b, &cov, g).to(self.dev, 0.0);
        if self.vae.arch.masked_input {
            let visible = if hide && self.mask {
                Tensor::from_slice(&self.found)
                    .to_device(self.dev)
                    .view([1, g as i64])
                    .repeat([n as i64, 1])
            } else {
                Tensor::ones([n as i64, g as i64], (Kind::Float, self.dev))
            };
            p.visible = Some(visible);
        }
        let (mu, _) = tch::no_grad(|| self.vae.encode(&p.input(), false));
        Ok(Vec::<f32>::try_from(mu.to_device(Device::Cpu).flatten(0, 1))?)
    }
}

/// Each cell's batch when no `--batch-category` picks one: the query's own column of the model's
/// batch key where it has one (its values must be the model's batches), else the model's first
/// batch for all, said in a warning.
pub(crate) fn cell_batches(
    ds: &Dataset,
    data: &std::path::Path,
    key: Option<&str>,
    cats: &[String],
    warnings: &mut Vec<String>,
) -> anyhow::Result<CellBatch> {
    let first = || {
        format!(
            "every cell is encoded as the model's batch `{}` (pick another with --batch-category, or add the query's own with --finetune N)",
            cats[0]
        )
    };
    let Some(key) = key else {
        warnings.push(format!("the model does not name its batch key: {}", first()));
        return Ok(CellBatch::All(0));
    };
    // The column's values as text, as scvi-tools keeps a batch (integers as `0`, `1`...).
    let (categories, codes) = match ds.info().obs_column(key).map(|c| &c.kind) {
        Some(scmz::data::ColumnKind::Categorical { categories, codes, .. }) => (categories.clone(), codes.clone()),
        Some(_) => match ds.obs_values(key)? {
            Some(values) => as_categories(values),
            None => {
                warnings.push(format!(
                    "{}: obs column `{key}` (the model's batch key) cannot be read as batches: {}",
                    data.display(),
                    first()
                ));
                return Ok(CellBatch::All(0));
            }
        },
        None => {
            warnings.push(format!(
                "{}: no obs column `{key}` (the model's batch key): {}",
                data.display(),
                first()
            ));
            return Ok(CellBatch::All(0));
        }
    };
    let to_model: Vec<Option<i32>> = categories
        .iter()
        .map(|c| cats.iter().position(|m| m == c).map(|i| i as i32))
        .collect();
    let mut unknown: Vec<&str> = codes
        .iter()
        .filter_map(
            |&c| match usize::try_from(c).ok().and_then(|c| to_model.get(c).copied()) {
                Some(Some(_)) => None,
                Some(None) => Some(categories[c as usize].as_str()),
                None => Some("(missing)"),
            },
        )
        .collect();
    unknown.sort_unstable();
    unknown.dedup();
    if !unknown.is_empty() {
        bail!(
            "{}: obs `{key}` holds batches the model was not trained on ({}; its batches are {}): pick one with --batch-category, or fine-tune a new one with --finetune N",
            data.display(),
            unknown.iter().take(5).copied().collect::<Vec<_>>().join(", "),
            cats.join(", ")
        );
    }
    let per_cell = codes.iter().map(|&c| to_model[c as usize].unwrap_or(0)).collect();
    Ok(CellBatch::PerCell(std::sync::Arc::new(per_cell)))
}

/// An obs column's values as categories and codes, each value written as Python writes it
/// (`3`, `1.5`, `2.0`, `True`): how scvi-tools names the batches of a non-categorical column.
fn as_categories(values: scmz::data::writer::ColumnValues) -> (Vec<String>, Vec<i32>) {
    use scmz::data::writer::ColumnValues as V;
    let text: Vec<Option<String>> = match values {
        V::Categorical { categories, codes, .. } => {
            return (categories, codes);
        }
        V::Strings(v) => v.into_iter().map(Some).collect(),
        V::Int(v) => v.iter().map(|i| Some(i.to_string())).collect(),
        V::Bool(v) => v
            .iter()
            .map(|&b| Some(if b { "True" } else { "False" }.to_string()))
            .collect(),
        V::Float(v) => v
            .iter()
            .map(|f| {
                (!f.is_nan()).then(|| {
                    if f.fract() == 0.0 && f.abs() < 1e15 {
                        format!("{f:.1}")
                    } else {
                        f.to_string()
                    }
                })
            })
            .collect(),
    };
    let mut categories: Vec<String> = Vec::new();
    let mut index = std::collections::HashMap::new();
    let codes = text
        .into_iter()
        .map(|t| match t {
            None => -1,
            Some(t) => *index.entry(t.clone()).or_insert_with(|| {
                categories.push(t);
                categories.len() as i32 - 1
            }),
        })
        .collect();
    (categories, codes)
}
