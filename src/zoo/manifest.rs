//! `manifest.json`: everything about a model a person or a later scmz needs, in plain JSON.
//! Schema changes bump `SCHEMA_VERSION` and add a step to `migrate`, so every model ever saved
//! keeps loading (the frozen fixture in `tests/data/zoo` guards that).

use serde::{Deserialize, Serialize};

pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Architecture {
    pub n_genes: usize,
    pub n_hidden: usize,
    pub n_latent: usize,
    pub n_layers: usize,
    pub dropout: f64,
    pub norm: crate::spec::Norm,
    pub likelihood: crate::spec::Likelihood,
    /// Categories of the batch covariate (empty: none).
    pub batch_categories: Vec<String>,
    /// The encoder takes `[log1p(x) * mask, mask]`: trained with a presence mask or gene dropout.
    pub masked_input: bool,
    /// Labels of the classifier head trained with the model (`--classifier`; empty: none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub classifier_labels: Vec<String>,
    /// Layer shapes of models that scmz did not train (imported from scvi-tools); scmz's own
    /// models have the default, which their manifests leave out.
    #[serde(default, skip_serializing_if = "Layout::is_scmz")]
    pub layout: Layout,
}

/// How the layers are laid out beyond `n_layers`: scmz's own models have one decoder layer, the
/// batch in the first layer of encoder and decoder, and a one-layer classifier; scvi-tools'
/// models repeat the decoder `n_layers` times, may leave the batch out of the encoder
/// (`encode_covariates`) and inject it into every layer (`deeply_inject_covariates`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Layout {
    pub decoder_layers: usize,
    /// The encoder sees the batch one-hot.
    pub encode_batch: bool,
    /// The batch one-hot enters every hidden layer, not only the first.
    pub batch_every_layer: bool,
    /// Hidden layers of the classifier head (0: a linear classifier).
    pub classifier_layers: usize,
    /// The library size is a latent variable (scvi-tools' `use_observed_lib_size=False`): a
    /// one-layer encoder gives its log-normal posterior, with a per-batch log-normal prior.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub learned_library: bool,
    /// One dispersion per gene and batch (scvi-tools' `dispersion="gene-batch"`), not per gene.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dispersion_per_batch: bool,
}

impl Default for Layout {
    fn default() -> Self {
        Layout {
            decoder_layers: 1,
            encode_batch: true,
            batch_every_layer: false,
            classifier_layers: 1,
            learned_library: false,
            dispersion_per_batch: false,
        }
    }
}

impl Layout {
    pub fn is_scmz(&self) -> bool {
        *self == Layout::default()
    }

    /// What changes the likelihood, for a model's one-line description (`, learned library size`).
    pub fn likelihood_notes(&self) -> String {
        let mut s = String::new();
        if self.learned_library {
            s.push_str(", learned library size");
        }
        if self.dispersion_per_batch {
            s.push_str(", dispersion per gene and batch");
        }
        s
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Training {
    pub max_epochs: usize,
    pub epochs_run: usize,
    pub best_epoch: Option<usize>,
    pub batch_size: usize,
    pub lr: f64,
    /// Steps over which the step size rose to `lr` (0 in manifests that predate it).
    #[serde(default)]
    pub lr_warmup_steps: usize,
    /// Training cells (at most) BatchNorm's statistics were computed from at each epoch's end (0
    /// for layer normalisation, and for BatchNorm, as in manifests that predate it, running
    /// averages at momentum 0.01, as scvi-tools).
    #[serde(default)]
    pub norm_cells: usize,
    pub weight_decay: f64,
    pub kl_warmup_epochs: usize,
    pub gene_dropout: f64,
    pub seed: u64,
    pub device: String,
    pub batch_key: Option<String>,
    pub label_key: Option<String>,
    pub seconds: f64,
    pub cells_per_s: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Genes {
    /// The names the model's columns go by.
    pub names: Vec<String>,
    pub gene_ids: Option<Vec<String>>,
    pub symbols: Option<Vec<String>>,
    pub species: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingData {
    pub path: String,
    pub sha256: String,
    pub n_cells: usize,
    pub matrix: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub best_val_elbo: Option<f64>,
    pub final_train: Option<crate::events::LossTerms>,
    pub final_val: Option<crate::events::LossTerms>,
    /// The classifier head on the held-out (validation) cells that have a label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classifier: Option<ClassifierMetrics>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassifierMetrics {
    pub n_cells: usize,
    pub accuracy: f64,
    /// Expected calibration error: |accuracy - mean probability| over ten probability bins,
    /// weighted by the bins' cells.
    pub ece: f64,
}

/// Expected calibration error of predictions with probability `conf` that were `correct`.
pub fn expected_calibration_error(conf: &[f64], correct: &[bool]) -> f64 {
    let n = conf.len().max(1) as f64;
    let mut bins = [(0usize, 0f64, 0usize); 10];
    for (&c, &ok) in conf.iter().zip(correct) {
        let b = ((c * 10.0).ceil() as usize).clamp(1, 10) - 1;
        bins[b].0 += 1;
        bins[b].1 += c;
        bins[b].2 += usize::from(ok);
    }
    bins.iter()
        .filter(|b| b.0 > 0)
        .map(|&(k, sum, ok)| k as f64 / n * (ok as f64 / k as f64 - sum / k as f64).abs())
        .sum()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileRef {
    pub file: String,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reference {
    /// Latent means of training cells (`latent`, cells x n_latent) in a safetensors file.
    pub file: String,
    pub sha256: String,
    pub n_cells: usize,
    pub cell_ids: Vec<String>,
    /// Label of each reference cell, when trained with `--label-key`.
    pub labels: Option<Vec<String>>,
    /// The file also holds the cells' counts in the model's gene order (`counts_indptr`,
    /// `counts_indices`, `counts_data`), used to predict mapping quality. Added after schema 1
    /// was first written; absent (false) in older models, which still load.
    #[serde(default)]
    pub counts: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub schema_version: u32,
    pub name: String,
    pub version: u32,
    pub created: String,
    pub scmz_version: String,
    pub architecture: Architecture,
    pub training: Training,
    pub genes: Genes,
    pub datasets: Vec<TrainingData>,
    pub metrics: Metrics,
    pub weights: FileRef,
    pub reference: Option<Reference>,
    /// Where a model that scmz did not train came from (`scmz import`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imported: Option<Imported>,
}

/// The origin of an imported model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Imported {
    /// The tool that saved it (`scvi-tools`) and its version there.
    pub tool: String,
    pub tool_version: String,
    /// Its class in that tool (`SCVI`, `SCANVI`).
    pub class: String,
    /// The file read, and its sha256.
    pub file: String,
    pub sha256: String,
    /// Its training history there, as the file keeps it (scvi-tools' `history_`): each logged
    /// quantity's values, one per epoch (or per logged step), by name (`elbo_train`, ...); null
    /// where the value was not a finite number.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub history: std::collections::BTreeMap<String, Vec<Option<f64>>>,
    /// The cells it was trained on, as its registry says (its data may not have come with it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_cells: Option<usize>,
}

impl Imported {
    /// `scvi-tools 1.4.2 SCVI, model.pt (sha256 0123456789ab)`.
    pub fn describe(&self) -> String {
        format!(
            "{} {} {}, {} (sha256 {})",
            self.tool,
            self.tool_version,
            self.class,
            self.file,
            &self.sha256[..self.sha256.len().min(12)]
        )
    }
}

/// Brings a manifest of any earlier schema to the current one.
pub fn migrate(mut value: serde_json::Value) -> Result<serde_json::Value, String> {
    let version = value
        .get("schema_version")
        .and_then(|v| v.as_u64())
        .ok_or("no schema_version")? as u32;
    if version > SCHEMA_VERSION {
        return Err(format!(
            "schema version {version} is newer than this scmz understands ({SCHEMA_VERSION}); upgrade scmz"
        ));
    }
    // Future steps go here: `if version < 2 { ...; value["schema_version"] = 2.into() }`.
    value["schema_version"] = SCHEMA_VERSION.into();
    Ok(value)
}

impl Manifest {
    /// The cells it was trained on: its datasets', or for an imported model without its data what
    /// its registry says; None when unknown.
    pub fn n_cells(&self) -> Option<usize> {
        match (&self.imported, self.datasets.is_empty()) {
            (Some(i), true) => i.n_cells,
            (None, true) => None,
            _ => Some(self.datasets.iter().map(|d| d.n_cells).sum()),
        }
    }

    /// The model's genes as a list to match datasets against.
    pub fn gene_list(&self) -> crate::genes::GeneList {
        crate::genes::GeneList {
            label: format!("model {}", self.name),
            names: self.genes.names.clone(),
            gene_ids: self.genes.gene_ids.clone(),
            symbols: self.genes.symbols.clone(),
            species: self.genes.species.clone(),
            id_key: self.genes.gene_ids.as_ref().map(|_| "gene_ids".to_string()),
            symbol_key: self.genes.symbols.as_ref().map(|_| "symbols".to_string()),
        }
    }
}
