//! Per-cell covariates from obs: the batch and label columns, the classifier's classes and the
//! presence mask of a merged file, checked before anything is written.

use anyhow::bail;

use scmz::data::{ColumnKind, Dataset};
use scmz::spec::TrainSpec;

/// Per-cell covariates taken from obs.
#[derive(Default)]
pub(crate) struct Covariates {
    pub batch: Option<(Vec<String>, Vec<i32>)>,
    pub labels: Option<(Vec<String>, Vec<i32>)>,
    pub presence: Option<Masks>,
    /// The classifier's label of each cell (-1: unlabelled) when one is trained.
    pub classes: Option<Vec<i64>>,
}

/// The classifier's labels (the label column's categories less the unlabelled one) and each
/// cell's label among them, -1 where its value is missing or `unlabeled`.
pub(crate) fn classes(labels: &(Vec<String>, Vec<i32>), unlabeled: Option<&str>) -> (Vec<String>, Vec<i64>) {
    let (cats, codes) = labels;
    let mut names = Vec::new();
    let map: Vec<i64> = cats
        .iter()
        .map(|c| {
            if Some(c.as_str()) == unlabeled {
                -1
            } else {
                names.push(c.clone());
                names.len() as i64 - 1
            }
        })
        .collect();
    let per_cell = codes
        .iter()
        .map(|&c| usize::try_from(c).ok().and_then(|c| map.get(c)).copied().unwrap_or(-1))
        .collect();
    (names, per_cell)
}

/// The presence mask of a merged file as one 0/1 row per input dataset, and each cell's dataset:
/// a minibatch's mask is a copy of rows, its distinct rows a few.
pub(crate) struct Masks {
    rows: Vec<f32>,
    n_genes: usize,
    dataset_of_cell: Vec<i32>,
}

impl Masks {
    pub fn new(p: &scmz::data::dataset::Presence, n_genes: usize) -> Self {
        let d = p.n_datasets;
        let mut rows = vec![0f32; d * n_genes];
        for g in 0..n_genes {
            for k in 0..d {
                rows[k * n_genes + g] = f32::from(u8::from(p.mask[g * d + k]));
            }
        }
        Masks {
            rows,
            n_genes,
            dataset_of_cell: p.dataset_of_cell.clone(),
        }
    }

    pub fn dataset(&self, cell: usize) -> usize {
        self.dataset_of_cell[cell] as usize
    }

    pub fn row(&self, dataset: usize) -> &[f32] {
        &self.rows[dataset * self.n_genes..(dataset + 1) * self.n_genes]
    }
}

pub(crate) fn categorical(ds: &Dataset, key: &str, flag: &str) -> anyhow::Result<(Vec<String>, Vec<i32>)> {
    match ds.info().obs_column(key).map(|c| &c.kind) {
        Some(ColumnKind::Categorical { categories, codes, .. }) => Ok((categories.clone(), codes.clone())),
        Some(_) => bail!(
            "{}: obs column `{key}` is not categorical; {flag} needs categories",
            ds.path().display()
        ),
        None => {
            let have: Vec<&str> = ds.info().label_columns().map(|c| c.name.as_str()).collect();
            bail!(
                "{}: no obs column `{key}` for {flag}; label-like columns: {}",
                ds.path().display(),
                have.join(", ")
            )
        }
    }
}

/// The obs columns `--batch-key` and `--label-key` name: categorical, and some cell labelled (a
/// reference with no labels has nothing to transfer). Checked before anything is written.
pub(crate) fn check_columns(ds: &Dataset, args: &TrainSpec) -> anyhow::Result<()> {
    if let Some(key) = args.batch_key.as_deref() {
        categorical(ds, key, "--batch-key")?;
    }
    if let Some(key) = args.label_key.as_deref() {
        let (_, codes) = categorical(ds, key, "--label-key")?;
        if !codes.iter().any(|&c| c >= 0) {
            bail!(
                "{}: obs column `{}` has no value in any cell (all missing); --label-key needs labelled cells: use another column or leave it out",
                ds.path().display(),
                scmz::files::printable(key)
            );
        }
    }
    Ok(())
}
