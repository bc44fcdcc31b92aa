//! Choices shared by the front end, the engine and the files they write, as types: each parses
//! from the command line (`clap::ValueEnum`: an unknown value fails at parse time listing the
//! valid ones) and reads and writes as the same lowercase word in manifests and job records
//! (serde), so that a typo can neither train nor be stored. Torch-free.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::genes::selection::GeneSelection;

/// The count model of the decoder.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Likelihood {
    /// Negative binomial (scVI's default).
    #[default]
    Nb,
    /// Zero-inflated negative binomial.
    Zinb,
    Poisson,
}

/// The normalisation of each hidden layer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Norm {
    /// BatchNorm (scVI's default; needs minibatches of two cells or more).
    #[default]
    Batch,
    /// LayerNorm.
    Layer,
}

/// Where the engine computes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// CUDA when libtorch sees a GPU, else the CPU.
    #[default]
    Auto,
    Cpu,
    Cuda,
}

/// How projection presents the model genes a dataset lacks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Missing {
    /// The encoder is told they are unmeasured (models trained with a presence mask or gene
    /// dropout).
    #[default]
    Mask,
    /// As zero counts.
    Zero,
}

/// The word the command line and the files use.
fn word(v: &impl clap::ValueEnum) -> String {
    v.to_possible_value()
        .map(|p| p.get_name().to_string())
        .unwrap_or_default()
}

macro_rules! display_as_word {
    ($($t:ty),*) => {$(
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&word(self))
            }
        }
    )*};
}
display_as_word!(Likelihood, Norm, DeviceChoice, Missing);

/// `scmz train` and `scmz-engine train`: one struct, parsed by both (the front end flattens it).
#[derive(clap::Args, Clone, Debug, Serialize, Deserialize)]
pub struct TrainSpec {
    /// The dataset to train on (merge several first with `scmz merge`).
    #[arg(required = true)]
    pub data: Vec<PathBuf>,
    /// Name of the model in the zoo.
    #[arg(long)]
    pub name: String,
    /// The zoo folder (default: $SCMZ_ZOO, else ~/.local/share/scmz/zoo).
    #[arg(long)]
    pub zoo: Option<PathBuf>,
    /// Matrix to train on: X, raw, or a layer name [default: the first holding raw counts].
    #[arg(long)]
    pub layer: Option<String>,
    /// Cell Ranger 2 HDF5 with several genomes: the genome to train on [default: the first].
    #[arg(long)]
    #[serde(default)]
    pub genome: Option<String>,
    /// obs column with the batch covariate.
    #[arg(long)]
    pub batch_key: Option<String>,
    /// obs column with cell labels, kept with the reference sample for label transfer.
    #[arg(long)]
    pub label_key: Option<String>,
    #[arg(long, value_enum, default_value_t)]
    pub likelihood: Likelihood,
    /// Default: min(round(20000 / cells * 400), 400), as scvi-tools.
    #[arg(long, value_parser = epochs, allow_negative_numbers = true)]
    pub epochs: Option<usize>,
    #[arg(long, default_value_t = 128, value_parser = positive, allow_negative_numbers = true)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 1e-3, value_parser = learning_rate, allow_negative_numbers = true)]
    pub lr: f64,
    #[arg(long, default_value_t = 1e-6, value_parser = non_negative, allow_negative_numbers = true)]
    pub weight_decay: f64,
    #[arg(long, default_value_t = 128, value_parser = width, allow_negative_numbers = true)]
    pub n_hidden: usize,
    #[arg(long, default_value_t = 10, value_parser = width, allow_negative_numbers = true)]
    pub n_latent: usize,
    #[arg(long, default_value_t = 1, value_parser = layers, allow_negative_numbers = true)]
    pub n_layers: usize,
    #[arg(long, default_value_t = 0.1, value_parser = share_below_one, allow_negative_numbers = true)]
    pub dropout: f64,
    #[arg(long, value_enum, default_value_t)]
    pub norm: Norm,
    /// Epochs over which the KL weight rises from 0 to 1.
    #[arg(long, default_value_t = 400, allow_negative_numbers = true)]
    pub kl_warmup: usize,
    /// Hide this share of genes from the encoder in every minibatch (learns partial gene sets).
    #[arg(long, default_value_t = 0.0, value_parser = share_below_one, allow_negative_numbers = true)]
    pub gene_dropout: f64,
    /// Stop after this many epochs without a better validation ELBO (0: never).
    #[arg(long, default_value_t = 45, allow_negative_numbers = true)]
    pub patience: usize,
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub seed: u64,
    #[arg(long, value_enum, default_value_t)]
    pub device: DeviceChoice,
    /// Continue an interrupted run from its last checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Discard an interrupted run of the same name and start over.
    #[arg(long)]
    pub restart: bool,
    /// Replace a model of the same name in the zoo.
    #[arg(long)]
    pub overwrite: bool,
    /// Check the settings, the dataset and the zoo, then stop (`scmz train --detach` runs this
    /// before it queues a job).
    #[arg(long, hide = true)]
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub check_only: bool,
    /// Train on values that are not raw counts.
    #[arg(long)]
    pub force: bool,
    /// Cells per chunk read from disk.
    #[arg(long, default_value_t = 1024, value_parser = positive, allow_negative_numbers = true)]
    pub chunk_rows: usize,
    /// Reference cells kept with the model for label transfer.
    #[arg(long, default_value_t = 2000, allow_negative_numbers = true)]
    pub reference_cells: usize,
    /// Train a cell-type classifier on the --label-key labels with the model (scANVI's
    /// semi-supervised objective: cells whose label is missing or --unlabeled-category enter only
    /// the ELBO); `project` then writes its label and probability.
    #[arg(long, requires = "label_key")]
    #[serde(default)]
    pub classifier: bool,
    /// The --label-key value that marks a cell as unlabelled (missing values always do).
    #[arg(long, requires = "classifier")]
    #[serde(default)]
    pub unlabeled_category: Option<String>,
    /// Genes to train on: all, hvg:N (the N most variable by Seurat v3's method on raw counts, as
    /// scanpy's flavor="seurat_v3"), or a file naming one gene per line.
    #[arg(long, default_value = "all")]
    #[serde(default)]
    pub genes: GeneSelection,
}

/// A layer width within what a model can hold (1 to 16,384).
fn width(s: &str) -> Result<usize, String> {
    at_most(s, 16_384)
}

/// A number of hidden layers (1 to 16).
fn layers(s: &str) -> Result<usize, String> {
    at_most(s, 16)
}

fn at_most(s: &str, max: usize) -> Result<usize, String> {
    match positive(s)? {
        n if n <= max => Ok(n),
        _ => Err(format!("`{s}` is more than {max}")),
    }
}

/// A whole number of at least 1 (sizes, epochs).
fn positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("`{s}` must be a whole number of at least 1")),
    }
}

/// Epochs: at least 1, at most a million (a longer run is a typo, not a plan).
fn epochs(s: &str) -> Result<usize, String> {
    match positive(s)? {
        n if n <= 1_000_000 => Ok(n),
        _ => Err(format!(
            "`{s}` epochs is more than 1,000,000: give a number of epochs to train"
        )),
    }
}

/// Adam's step size: above 0 and at most 1 (scvi-tools trains at 1e-3; above 1 every step
/// overshoots and the loss becomes NaN).
fn learning_rate(s: &str) -> Result<f64, String> {
    match positive_finite(s)? {
        v if v <= 1.0 => Ok(v),
        _ => Err(format!("`{s}` must be at most 1 (the default is 1e-3)")),
    }
}

fn finite(s: &str) -> Result<f64, String> {
    s.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
        .ok_or_else(|| format!("`{s}` is not a finite number"))
}

fn positive_finite(s: &str) -> Result<f64, String> {
    let v = finite(s)?;
    if v > 0.0 {
        Ok(v)
    } else {
        Err(format!("`{s}` must be above 0"))
    }
}

fn non_negative(s: &str) -> Result<f64, String> {
    let v = finite(s)?;
    if v >= 0.0 {
        Ok(v)
    } else {
        Err(format!("`{s}` must be 0 or more"))
    }
}

/// A share in [0, 1) (dropout rates).
/// A share in [0, 1].
fn share(s: &str) -> Result<f64, String> {
    let v = finite(s)?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("`{s}` must be between 0 and 1"))
    }
}

/// A percentage of genes, 1 to 100.
fn percent(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(v) if (1..=100).contains(&v) => Ok(v),
        _ => Err(format!("`{s}` must be a whole number from 1 to 100")),
    }
}

/// Seeds of a comparison: at least one (none compares nothing), at most 100.
fn seeds(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(n) if (1..=100).contains(&n) => Ok(n),
        _ => Err(format!("`{s}` must be a whole number from 1 to 100")),
    }
}

/// A held-out share: above 0 (something to score on) and below 1 (something to train on).
fn holdout(s: &str) -> Result<f64, String> {
    match share_below_one(s) {
        Ok(v) if v > 0.0 => Ok(v),
        _ => Err(format!("`{s}` must be above 0 and below 1")),
    }
}

fn share_below_one(s: &str) -> Result<f64, String> {
    let v = finite(s)?;
    if (0.0..1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("`{s}` must be at least 0 and below 1"))
    }
}

impl TrainSpec {
    /// The command line's defaults for training `data` as `name`.
    pub fn defaults(data: PathBuf, name: String) -> Self {
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            args: TrainSpec,
        }
        let data = data.display().to_string();
        <Wrapper as clap::Parser>::parse_from(["train", data.as_str(), "--name", name.as_str()]).args
    }

    /// Parses an engine command line of `train` (without the command), as the engine would:
    /// the error is clap's first line (`error: invalid value ...`), without its usage block.
    pub fn parse_args(args: &[String]) -> Result<Self, String> {
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            args: TrainSpec,
        }
        let argv = std::iter::once("scmz train".to_string()).chain(args.iter().cloned());
        <Wrapper as clap::Parser>::try_parse_from(argv)
            .map(|w| w.args)
            .map_err(|e| {
                let text = e.to_string();
                let first = text.lines().next().unwrap_or("invalid arguments");
                first.trim_start_matches("error: ").to_string()
            })
    }
}

/// `scmz project` and `scmz-engine project`.
#[derive(clap::Args, Clone, Debug, Serialize, Deserialize)]
pub struct ProjectSpec {
    pub data: PathBuf,
    #[arg(long)]
    pub model: String,
    /// The zoo folder (default: $SCMZ_ZOO, else ~/.local/share/scmz/zoo).
    #[arg(long)]
    pub zoo: Option<PathBuf>,
    /// Output: a copy of DATA with obsm['X_scmz'] (.h5ad), or a table of cell id + latent (.parquet/.csv).
    #[arg(
        short,
        long,
        required_unless_present = "predict_only",
        conflicts_with = "predict_only"
    )]
    pub output: Option<PathBuf>,
    /// Replace an existing output file (never the input).
    #[arg(long)]
    pub overwrite: bool,
    /// Only report the overlap and the predicted mapping quality; encode and write nothing.
    #[arg(long)]
    pub predict_only: bool,
    #[arg(long)]
    pub layer: Option<String>,
    /// Cell Ranger 2 HDF5 with several genomes: the genome to project [default: the first].
    #[arg(long)]
    pub genome: Option<String>,
    /// Genes the dataset lacks: `mask` (the encoder is told they are unmeasured) or `zero`.
    #[arg(long, value_enum, default_value_t)]
    pub missing: Missing,
    /// Refuse when fewer than this share of the model's genes are found (unless --force).
    #[arg(long, default_value_t = 0.5, value_parser = share, allow_negative_numbers = true)]
    pub min_overlap: f64,
    /// Project despite a low overlap or non-count values.
    #[arg(long)]
    pub force: bool,
    /// Neighbours for label transfer.
    #[arg(long, default_value_t = 15)]
    pub k: usize,
    /// Batch category of the model to encode the cells as [default: the first].
    #[arg(long)]
    pub batch_category: Option<String>,
    /// Fine-tune for a query from a new batch: add a batch category named after the data and train
    /// only its parameters on the query for this many epochs (batch models only).
    #[arg(long, default_value_t = 0)]
    pub finetune: usize,
    /// Where to encode: a GPU when libtorch sees one (auto), cpu or cuda. Fine-tuning runs on the
    /// CPU.
    #[arg(long, value_enum, default_value_t)]
    #[serde(default)]
    pub device: DeviceChoice,
    /// Check the settings, the model, the dataset and the output, then stop (`scmz project
    /// --detach` runs this before it queues a job).
    #[arg(long, hide = true)]
    #[serde(default, skip_serializing)]
    pub check_only: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `scmz compare` and `scmz-engine compare`.
#[derive(clap::Args, Clone, Debug, Serialize, Deserialize)]
pub struct CompareSpec {
    pub data: PathBuf,
    #[arg(long)]
    pub model: String,
    /// The zoo folder (default: $SCMZ_ZOO, else ~/.local/share/scmz/zoo).
    #[arg(long)]
    pub zoo: Option<PathBuf>,
    /// obs column with labels for the kNN accuracy.
    #[arg(long)]
    pub label_key: Option<String>,
    /// Share of cells held out for scoring (above 0, below 1).
    #[arg(long, default_value_t = 0.2, value_parser = holdout, allow_negative_numbers = true)]
    pub holdout: f64,
    /// Epoch budget of the model trained from scratch.
    #[arg(long, default_value_t = 50, value_parser = epochs, allow_negative_numbers = true)]
    pub epochs: usize,
    /// Seeds to repeat with (run-to-run noise), 1 to 100.
    #[arg(long, default_value_t = 2, value_parser = seeds, allow_negative_numbers = true)]
    pub seeds: u64,
    /// Shares (%) of the model's genes left visible in the data.
    #[arg(long, default_value = "100", value_delimiter = ',', value_parser = percent, allow_negative_numbers = true)]
    pub overlaps: Vec<u32>,
    #[arg(long)]
    pub json: bool,
    /// Also write the table to FILE.csv or FILE.parquet.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Replace an existing --out file.
    #[arg(long)]
    pub overwrite: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::ValueEnum;

    /// The command line, the files and messages use one word per choice; others are refused.
    #[test]
    fn one_word_per_choice() {
        for l in Likelihood::value_variants() {
            let w = l.to_string();
            assert_eq!(serde_json::to_string(l).unwrap(), format!("\"{w}\""));
            assert_eq!(Likelihood::from_str(&w, false).unwrap(), *l);
        }
        assert_eq!(Norm::Layer.to_string(), "layer");
        assert_eq!(DeviceChoice::Cuda.to_string(), "cuda");
        assert!(serde_json::from_str::<Norm>("\"lyer\"").is_err());
        assert!(Norm::from_str("lyer", false).is_err());
    }
}
