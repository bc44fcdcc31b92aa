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
#[derive(clap::Args, Clone, Debug, PartialEq, Serialize, Deserialize)]
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
    /// Adam's step size. 5e-3 (scvi-tools: 1e-3) learns more per epoch: on Kang PBMCs, kNN label
    /// transfer to the stimulated cells after 10 epochs 0.73 instead of 0.48 (README, quality).
    #[arg(long, default_value_t = 5e-3, value_parser = learning_rate, allow_negative_numbers = true)]
    pub lr: f64,
    /// Steps (minibatches) over which Adam's step size rises linearly to --lr (0: none); without
    /// it the first steps at 5e-3 overshoot (validation ELBO after one epoch 15 % worse on Kang).
    #[arg(long, default_value_t = 75, value_parser = warmup_steps, allow_negative_numbers = true)]
    #[serde(default)]
    pub lr_warmup: usize,
    /// BatchNorm's statistics, which encoding and validation use, come from this many training
    /// cells (0, or 100 to 100,000), passed through the model at each epoch's end. 0 keeps running
    /// averages of the minibatches' statistics (momentum 0.01, as scvi-tools), which lag behind
    /// weights moving at 5e-3 and describe the last chunks of the file read.
    #[arg(long, default_value_t = 1024, value_parser = norm_cells, allow_negative_numbers = true)]
    #[serde(default)]
    pub norm_cells: usize,
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
    /// Epochs over which the KL term's weight rises linearly from 0 to 1 (scvi-tools: 400). 100
    /// keeps pace with a model that learns about 4x as much per epoch at --lr 5e-3: the held-out
    /// ELBO is then at or below scvi-tools' after every epoch measured (README, quality).
    #[arg(long, default_value_t = 100, value_parser = at_most_epochs, allow_negative_numbers = true)]
    pub kl_warmup: usize,
    /// Hide this share of genes from the encoder in every minibatch (learns partial gene sets).
    #[arg(long, default_value_t = 0.0, value_parser = share_below_one, allow_negative_numbers = true)]
    pub gene_dropout: f64,
    /// Stop after this many epochs without a better validation ELBO (0: never).
    #[arg(long, default_value_t = 45, value_parser = at_most_epochs, allow_negative_numbers = true)]
    pub patience: usize,
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub seed: u64,
    #[arg(long, value_enum, default_value_t)]
    pub device: DeviceChoice,
    /// Continue an interrupted run from its last checkpoint.
    #[arg(long, conflicts_with = "restart")]
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
    #[serde(default, skip_serializing)]
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
        Err(e) if *e.kind() == std::num::IntErrorKind::PosOverflow => Err(format!("`{s}` is far too large")),
        _ => Err(format!("`{s}` must be a whole number of at least 1")),
    }
}

/// Epochs: at least 1, at most a million (a longer run is a typo, not a plan).
pub fn epochs(s: &str) -> Result<usize, String> {
    match positive(s)? {
        n if n <= 1_000_000 => Ok(n),
        _ => Err(format!(
            "`{s}` epochs is more than 1,000,000: give a number of epochs to train"
        )),
    }
}

/// Epochs that may be none: fine-tuning, the KL warm-up, the patience; 0 to 1,000,000.
fn at_most_epochs(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n <= 1_000_000 => Ok(n),
        _ => Err(format!("`{s}` must be a whole number of epochs from 0 to 1,000,000")),
    }
}

/// Warm-up steps: 0 (none) to 1,000,000,000.
fn warmup_steps(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n <= 1_000_000_000 => Ok(n),
        _ => Err(format!("`{s}` must be a whole number of steps from 0 to 1,000,000,000")),
    }
}

/// Adam's step size: above 0 and at most 1 (above 1 every step overshoots and the loss becomes
/// NaN).
fn learning_rate(s: &str) -> Result<f64, String> {
    match positive_finite(s)? {
        v if v <= 1.0 => Ok(v),
        _ => Err(format!("`{s}` must be at most 1 (the default is 5e-3)")),
    }
}

/// Cells for BatchNorm's statistics: 0 (running averages), or 100 (fewer give noise: 2 cells at
/// batch size 2 left validation ELBO 11,574 where 1,024 gave 789) to 100,000 (they are kept in
/// memory).
fn norm_cells(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n == 0 || (100..=100_000).contains(&n) => Ok(n),
        _ => Err(format!(
            "`{s}` must be 0 (running averages) or a whole number of cells from 100 to 100,000"
        )),
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
        let (shown, name) = (data.display().to_string(), format!("--name={name}"));
        parse_spec(&[name, "--".into(), shown], false)
            .map(|s: TrainSpec| TrainSpec { data: vec![data], ..s })
            .expect("the defaults parse")
    }
}

impl ProjectSpec {
    /// The command line's defaults for projecting `data` with `model` (no output: give one, or
    /// set `predict_only`).
    pub fn defaults(data: PathBuf, model: String) -> Self {
        let (shown, model) = (data.display().to_string(), format!("--model={model}"));
        parse_spec(&[model, "--predict-only".into(), "--".into(), shown], false)
            .map(|s: ProjectSpec| ProjectSpec {
                predict_only: false,
                data,
                ..s
            })
            .expect("the defaults parse")
    }

    /// The mapping quality the engine predicts for `data` under `model`, as JSON, whatever the
    /// overlap (`scmz overlap DATA MODEL`, the TUI's Overlap screen).
    pub fn prediction(data: &std::path::Path, model: &str) -> Self {
        ProjectSpec {
            predict_only: true,
            json: true,
            force: true,
            ..ProjectSpec::defaults(data.to_path_buf(), model.to_string())
        }
    }
}

/// Parses the flags of one engine command (without the command's name) as clap would for
/// `scmz train` and the engine; `override_self`: a flag given again replaces its earlier value
/// (sweeps set a value over a spec's flags). The error is clap's first line without `error: `.
pub fn parse_spec<T: clap::Args + clap::FromArgMatches>(args: &[String], override_self: bool) -> Result<T, String> {
    let cmd = T::augment_args(clap::Command::new("scmz").no_binary_name(true)).args_override_self(override_self);
    let first_line = |e: clap::Error| {
        let text = e.to_string();
        let first = text.lines().next().unwrap_or("invalid arguments");
        first.trim_start_matches("error: ").to_string()
    };
    let m = cmd.try_get_matches_from(args).map_err(first_line)?;
    T::from_arg_matches(&m).map_err(first_line)
}

/// The flags that give `spec` when parsed (`parse_spec`): every argument of the struct whose
/// stored value is set, named as clap names it (`--batch-size=128`), the positional ones last
/// after `--`. Generic over the spec structs: an argument's id is its field's name in both clap
/// and serde. Hidden one-run switches that are not stored (`--check-only`) are left out.
fn spec_flags<T: clap::Args + Serialize>(spec: &T) -> Result<Vec<String>, String> {
    let value = serde_json::to_value(spec)
        .map_err(|e| format!("the settings cannot be written down ({e}); use UTF-8 file names"))?;
    let cmd = T::augment_args(clap::Command::new("scmz"));
    let (mut flags, mut positional) = (Vec::new(), Vec::new());
    for arg in cmd.get_arguments() {
        let Some(v) = value.get(arg.get_id().as_str()) else {
            continue;
        };
        let words: Vec<String> = match v {
            serde_json::Value::Null => continue,
            serde_json::Value::Bool(on) => {
                if *on {
                    flags.push(format!("--{}", arg.get_long().unwrap_or_default()));
                }
                continue;
            }
            serde_json::Value::Array(items) => items.iter().map(scalar).collect(),
            other => vec![scalar(other)],
        };
        match arg.get_long() {
            Some(long) => flags.extend(words.iter().map(|w| format!("--{long}={w}"))),
            None => positional.extend(words),
        }
    }
    if !positional.is_empty() {
        flags.push("--".into());
        flags.extend(positional);
    }
    Ok(flags)
}

fn scalar(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// What the front end asks of the engine: a command with its settings. The TUI's form, `scmz
/// train|project|compare`, sweeps and `scmz jobs resume` build one; a job's record holds it
/// (`"kind"` and `"spec"`), and the engine is started with its flags (`to_args`), which clap
/// parses back into the same spec.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "spec", rename_all = "lowercase")]
pub enum EngineRequest {
    Train(Box<TrainSpec>),
    Project(Box<ProjectSpec>),
    Compare(Box<CompareSpec>),
}

impl EngineRequest {
    /// The engine commands a job can run.
    pub const KINDS: [&'static str; 3] = ["train", "project", "compare"];

    pub fn kind(&self) -> &'static str {
        match self {
            EngineRequest::Train(_) => "train",
            EngineRequest::Project(_) => "project",
            EngineRequest::Compare(_) => "compare",
        }
    }

    /// Parses `scmz-engine KIND ARGS` (the job records of scmz before specs kept argv).
    pub fn parse(kind: &str, args: &[String]) -> Result<Self, String> {
        Self::parse_with(kind, args, false)
    }

    fn parse_with(kind: &str, args: &[String], override_self: bool) -> Result<Self, String> {
        Ok(match kind {
            "train" => EngineRequest::Train(Box::new(parse_spec(args, override_self)?)),
            "project" => EngineRequest::Project(Box::new(parse_spec(args, override_self)?)),
            "compare" => EngineRequest::Compare(Box::new(parse_spec(args, override_self)?)),
            other => {
                return Err(format!(
                    "`{other}` is not one of the engine commands scmz runs ({})",
                    Self::KINDS.join(", ")
                ))
            }
        })
    }

    /// The engine's command line: the command, then the spec's flags.
    pub fn to_args(&self) -> Result<Vec<String>, String> {
        let mut flags = match self {
            EngineRequest::Train(s) => spec_flags(s.as_ref())?,
            EngineRequest::Project(s) => spec_flags(s.as_ref())?,
            EngineRequest::Compare(s) => spec_flags(s.as_ref())?,
        };
        if self.is_check_only() {
            let at = flags.iter().position(|a| a == "--").unwrap_or(flags.len());
            flags.insert(at, "--check-only".into());
        }
        Ok(std::iter::once(self.kind().to_string()).chain(flags).collect())
    }

    /// The same request with the engine's `--check-only`: settings, data, model and outputs
    /// checked, nothing run (compare has none; it is returned unchanged).
    pub fn check_only(&self) -> Self {
        let mut r = self.clone();
        match &mut r {
            EngineRequest::Train(s) => s.check_only = true,
            EngineRequest::Project(s) => s.check_only = true,
            EngineRequest::Compare(_) => {}
        }
        r
    }

    /// Whether the request only checks (`--check-only`).
    pub fn is_check_only(&self) -> bool {
        match self {
            EngineRequest::Train(s) => s.check_only,
            EngineRequest::Project(s) => s.check_only,
            EngineRequest::Compare(_) => false,
        }
    }

    /// The model the request trains (train) or applies (project, compare).
    pub fn model_name(&self) -> &str {
        match self {
            EngineRequest::Train(s) => &s.name,
            EngineRequest::Project(s) => &s.model,
            EngineRequest::Compare(s) => &s.model,
        }
    }

    /// Names `zoo` where the request names none, so a job keeps the zoo of its submission whoever
    /// resumes it, with whatever `SCMZ_ZOO`.
    pub fn pin_zoo(&mut self, zoo: PathBuf) {
        let slot = match self {
            EngineRequest::Train(s) => &mut s.zoo,
            EngineRequest::Project(s) => &mut s.zoo,
            EngineRequest::Compare(s) => &mut s.zoo,
        };
        slot.get_or_insert(zoo);
    }

    pub fn zoo(&self) -> Option<&std::path::Path> {
        match self {
            EngineRequest::Train(s) => s.zoo.as_deref(),
            EngineRequest::Project(s) => s.zoo.as_deref(),
            EngineRequest::Compare(s) => s.zoo.as_deref(),
        }
    }

    /// Where the engine will compute (compare chooses as `auto` does).
    pub fn device(&self) -> DeviceChoice {
        match self {
            EngineRequest::Train(s) => s.device,
            EngineRequest::Project(s) => s.device,
            EngineRequest::Compare(_) => DeviceChoice::Auto,
        }
    }

    /// The request with one setting of a sweep: `key` is a flag's name without its dashes
    /// (`n_latent` or `n-latent`), `value` parsed as that flag's value; a training's model is
    /// named after the setting (`NAME-key-value`).
    pub fn with_setting(&self, key: &str, value: &str) -> Result<Self, String> {
        let mut args = self.to_args()?;
        let kind = args.remove(0);
        let flag = format!("--{}={value}", key.replace('_', "-"));
        // Before `--`: the positional arguments come last.
        let at = args.iter().position(|a| a == "--").unwrap_or(args.len());
        args.insert(at, flag);
        let mut next = Self::parse_with(&kind, &args, true)?;
        // Each setting writes its own model or output, named after the setting.
        let tag = format!("{key}-{}", name_part(value));
        match &mut next {
            EngineRequest::Train(s) => {
                s.name = format!("{}-{tag}", s.name);
                crate::zoo::check_name(&s.name)?;
            }
            EngineRequest::Project(s) => s.output = s.output.as_deref().map(|o| tagged(o, &tag)),
            EngineRequest::Compare(s) => s.out = s.out.as_deref().map(|o| tagged(o, &tag)),
        }
        Ok(next)
    }
}

/// A swept value as part of a model or file name: letters, digits, `.`, `_` and `-` kept,
/// anything else left out (`hvg:2000` -> `hvg2000`, a path -> its letters).
fn name_part(value: &str) -> String {
    let kept: String = value
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "._-".contains(*c))
        .collect();
    match kept.trim_start_matches('.') {
        "" => "x".into(),
        k => k.chars().take(40).collect(),
    }
}

/// `out.csv` with `tag` before its extension: `out-k-5.csv`.
fn tagged(path: &std::path::Path, tag: &str) -> PathBuf {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = match path.extension() {
        Some(ext) => format!("{stem}-{tag}.{}", ext.to_string_lossy()),
        None => format!("{stem}-{tag}"),
    };
    path.with_file_name(name)
}

/// Every setting of a sweep: `key=v1,v2,...` (several keys separated by `;` give their grid),
/// each value parsed as the engine parses that option.
pub fn expand_sweep(base: &EngineRequest, sweep: &str) -> Result<Vec<EngineRequest>, String> {
    let mut settings = vec![base.clone()];
    let mut swept: Vec<String> = Vec::new();
    if sweep.split(';').all(|p| p.trim().is_empty()) {
        return Err("--sweep: no setting; write KEY=V1,V2 (e.g. n_latent=10,20,30)".into());
    }
    for part in sweep.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, values) = part
            .split_once('=')
            .ok_or_else(|| format!("--sweep `{part}`: write KEY=V1,V2 (e.g. n_latent=10,20,30)"))?;
        let key = key.trim();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            return Err(format!(
                "--sweep: `{key}` is not a training option name (e.g. n_latent, lr)"
            ));
        }
        if key == "name" {
            return Err("--sweep: the model name is set per setting; sweep another option".into());
        }
        let canonical = key.replace('-', "_");
        if swept.contains(&canonical) {
            return Err(format!(
                "--sweep: `{key}` is swept twice; give all its values once ({key}=V1,V2,...)"
            ));
        }
        swept.push(canonical);
        let values: Vec<&str> = values.split(',').map(str::trim).collect();
        if values.iter().any(|v| v.is_empty()) {
            return Err(format!("--sweep `{part}`: an empty value; write KEY=V1,V2"));
        }
        let mut next = Vec::new();
        for base in &settings {
            for v in &values {
                next.push(
                    base.with_setting(key, v)
                        .map_err(|e| format!("--sweep `{part}`: {e}"))?,
                );
            }
        }
        settings = next;
    }
    // `n_latent=7,07` asks for one setting twice (under two names).
    let unnamed = |r: &EngineRequest| match r {
        EngineRequest::Train(s) => EngineRequest::Train(Box::new(TrainSpec {
            name: String::new(),
            ..s.as_ref().clone()
        })),
        other => other.clone(),
    };
    for (i, a) in settings.iter().enumerate() {
        if settings[..i].iter().any(|b| unnamed(b) == unnamed(a)) {
            return Err(format!(
                "--sweep `{sweep}`: two values give the same setting; give each once"
            ));
        }
    }
    Ok(settings)
}

/// `scmz project` and `scmz-engine project`.
#[derive(clap::Args, Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProjectSpec {
    /// The dataset to project: .h5ad, 10x .h5 or a 10x Matrix Market folder.
    pub data: PathBuf,
    /// The zoo model to apply (`scmz models` lists them).
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
    /// Matrix holding the raw counts: X, raw, or a layer name [default: the first holding raw counts].
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
    #[arg(long, default_value_t = 15, value_parser = positive, allow_negative_numbers = true)]
    pub k: usize,
    /// Batch category of the model to encode all cells as [default: each cell's own, from the
    /// query's column of the model's batch key; the model's first where it has none].
    #[arg(long)]
    pub batch_category: Option<String>,
    /// Fine-tune for a query from a new batch: add a batch category named after the data and train
    /// only its parameters on the query for this many epochs (batch models only).
    #[arg(long, default_value_t = 0, value_parser = at_most_epochs, allow_negative_numbers = true)]
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
#[derive(clap::Args, Clone, Debug, PartialEq, Serialize, Deserialize)]
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
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use clap::{Args, ValueEnum};

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

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    /// A request's flags parse back into the same request, for every argument of each command
    /// set away from its default (a field clap or serde named differently would be lost here).
    #[test]
    fn a_request_survives_its_command_line() {
        let train = words(
            "b.h5ad --name=-m --zoo z --layer counts --genome mm10 --batch-key b --label-key l \
             --likelihood zinb --epochs 7 --batch-size 64 --lr 0.002 --weight-decay 0.00001 --n-hidden 32 \
             --n-latent 5 --n-layers 2 --dropout 0.2 --norm layer --kl-warmup 9 --gene-dropout 0.3 \
             --patience 4 --seed 11 --device cuda --resume --overwrite --force --chunk-rows 100 \
             --reference-cells 50 --classifier --unlabeled-category Unknown --genes hvg:300 -- -weird.h5ad",
        );
        let project = words(
            "d.h5ad --model m --zoo z -o o.csv --overwrite --layer raw --genome g --missing zero \
             --min-overlap 0.3 --force --k 9 --batch-category c --finetune 3 --device cpu --json",
        );
        let compare = words(
            "d.h5ad --model m --zoo z --label-key l --holdout 0.3 --epochs 4 --seeds 3 \
             --overlaps 100,50 --json --out t.csv --overwrite",
        );
        for (kind, args) in [("train", train), ("project", project), ("compare", compare)] {
            let r = EngineRequest::parse(kind, &args).unwrap();
            let flags = r.to_args().unwrap();
            assert_eq!(flags[0], kind);
            assert_eq!(EngineRequest::parse(kind, &flags[1..]).unwrap(), r, "{flags:?}");
            let stored: EngineRequest = serde_json::from_value(serde_json::to_value(&r).unwrap()).unwrap();
            assert_eq!(stored, r);
            // Every argument the command has is stored (but the one-run `--check-only`).
            let value = serde_json::to_value(&r).unwrap();
            let cmd = match kind {
                "train" => TrainSpec::augment_args(clap::Command::new("t")),
                "project" => ProjectSpec::augment_args(clap::Command::new("t")),
                _ => CompareSpec::augment_args(clap::Command::new("t")),
            };
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                assert!(
                    id == "check_only" || value["spec"].get(id).is_some(),
                    "{kind}: {id} is not stored"
                );
            }
        }
        // --restart, which --resume excludes.
        let r = EngineRequest::parse("train", &words("b.h5ad --name m --restart")).unwrap();
        assert_eq!(EngineRequest::parse("train", &r.to_args().unwrap()[1..]).unwrap(), r);
        assert!(EngineRequest::parse("train", &words("b.h5ad --name m --restart --resume")).is_err());
        let r = EngineRequest::parse("project", &words("d.h5ad --model m -o o.csv")).unwrap();
        let checked = r.check_only().to_args().unwrap();
        assert!(checked.contains(&"--check-only".to_string()), "{checked:?}");
    }

    #[test]
    fn sweeps_expand_to_one_named_setting_each() {
        let base = EngineRequest::parse("train", &words("d.h5ad --name m --n-latent 5")).unwrap();
        let spec = |r: &EngineRequest| match r {
            EngineRequest::Train(s) => s.as_ref().clone(),
            _ => unreachable!(),
        };
        let s = expand_sweep(&base, "n_latent=10,20").unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!((spec(&s[0]).name.as_str(), spec(&s[0]).n_latent), ("m-n_latent-10", 10));
        assert_eq!(spec(&s[1]).name, "m-n_latent-20");
        let grid = expand_sweep(&base, "n_latent=10,20; lr=1e-3,1e-4").unwrap();
        assert_eq!(grid.len(), 4);
        assert_eq!(spec(&grid[3]).name, "m-n_latent-20-lr-1e-4");
        assert_eq!((spec(&grid[3]).lr, spec(&grid[3]).n_latent), (1e-4, 20));
        assert!(expand_sweep(&base, "n_latent").unwrap_err().contains("KEY=V1,V2"));
        assert!(expand_sweep(&base, "name=a,b").is_err());
        // Each value is parsed as the engine would; a key that is no option is named.
        assert!(expand_sweep(&base, "norm=lyer").unwrap_err().contains("lyer"));
        assert!(expand_sweep(&base, "bogus=1").unwrap_err().contains("--bogus"));
        // A key twice named its model after both and trained the last; an empty value was dropped.
        assert!(expand_sweep(&base, "lr=1e-3;lr=1e-4")
            .unwrap_err()
            .contains("swept twice"));
        assert!(expand_sweep(&base, "n_latent=10,,20")
            .unwrap_err()
            .contains("empty value"));
        assert!(expand_sweep(&base, " ; ").unwrap_err().contains("no setting"));
        // Values that are no name part are made one; one setting twice is refused.
        let g = expand_sweep(&base, "genes=all,hvg:100").unwrap();
        assert_eq!(spec(&g[1]).name, "m-genes-hvg100");
        assert!(expand_sweep(&base, "n_latent=7,07")
            .unwrap_err()
            .contains("same setting"));
        // Projections and comparisons write one output per setting.
        let p = EngineRequest::parse("project", &words("d.h5ad --model m -o out/p.csv")).unwrap();
        let outs: Vec<_> = expand_sweep(&p, "missing=mask,zero")
            .unwrap()
            .into_iter()
            .map(|r| match r {
                EngineRequest::Project(s) => s.output.unwrap(),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(
            outs,
            [
                PathBuf::from("out/p-missing-mask.csv"),
                PathBuf::from("out/p-missing-zero.csv")
            ]
        );
    }
}
