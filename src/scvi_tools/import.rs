//! `scmz import`: a folder saved by scvi-tools' `model.save()` becomes an ordinary zoo model.
//! What the model file says (class, settings, genes, batch and label categories) is read from
//! its pickle without running it; the weights are renamed to scmz's layout, checked shape by
//! shape against the architecture they describe, and written once as safetensors.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::pickle::Value;
use super::torchzip::{Floats, TorchFile};
use crate::spec::{Likelihood, Norm};
use crate::zoo::manifest::{
    self, Architecture, FileRef, Genes, Imported, Layout, Manifest, Metrics, Training, TrainingData,
};
use crate::zoo::{sha256_file, Zoo};

/// What an import read and wrote.
#[derive(Debug)]
pub struct Report {
    pub dir: PathBuf,
    pub class: String,
    pub version: String,
    pub manifest: Manifest,
    /// What the user should know about the model that scmz does not act on.
    pub notes: Vec<String>,
}

/// A model read from a scvi-tools file, before it is written to the zoo.
pub struct ScviModel {
    pub class: String,
    pub version: String,
    pub arch: Architecture,
    pub genes: Vec<String>,
    pub batch_key: Option<String>,
    pub label_key: Option<String>,
    pub n_cells: Option<usize>,
    /// The AnnData layer it was trained on, when not X.
    pub layer: Option<String>,
    /// scmz's variable names (as model files keep them) and their values.
    pub weights: BTreeMap<String, Floats>,
}

/// The model file in `dir` (`model.pt` or `<prefix>model.pt`), or `dir` itself when it is a file.
pub fn model_file(dir: &Path) -> Result<PathBuf, String> {
    if dir.is_file() {
        return Ok(dir.to_path_buf());
    }
    if dir.exists() && !dir.is_dir() {
        return Err(format!(
            "{}: is neither a folder nor a regular file; give the folder scvi-tools' `model.save(dir)` wrote",
            dir.display()
        ));
    }
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {}", dir.display(), crate::files::describe(&e)))?;
    let mut found: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with("model.pt"))
        })
        .collect();
    found.sort();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 if dir.join("model_params.pt").exists() => Err(format!(
            "{}: holds the layout of scvi-tools before 0.15 (`model_params.pt`, `attr.pkl`), which scmz does not read yet; \
             load it in scvi-tools 0.15 or later and save it again (`model.save(dir)`)",
            dir.display()
        )),
        0 => Err(format!(
            "{}: holds no `model.pt`; give the folder that scvi-tools' `model.save(dir)` wrote",
            dir.display()
        )),
        _ => Err(format!(
            "{}: holds several model files ({}); give the one to import",
            dir.display(),
            found.iter().filter_map(|p| p.file_name()).map(|n| n.to_string_lossy()).collect::<Vec<_>>().join(", ")
        )),
    }
}

/// Refuses a list that names something twice.
fn distinct(what: &str, names: &[String]) -> Result<(), String> {
    let mut seen = std::collections::HashSet::new();
    let twice: Vec<&str> = names
        .iter()
        .filter(|n| !seen.insert(n.as_str()))
        .map(String::as_str)
        .collect();
    match twice.first() {
        None => Ok(()),
        Some(first) => Err(format!(
            "its {what} name `{first}` more than once ({} repeats in all); they must be distinct",
            twice.len()
        )),
    }
}

/// Reads a scvi-tools model file; errors name the file and what is refused.
pub fn read(path: &Path) -> Result<ScviModel, String> {
    let at = |m: String| format!("{}: {m}", path.display());
    let file = TorchFile::open(path).map_err(at)?;
    interpret(&file).map_err(at)
}

fn need(v: &Value, key: &str, whose: &str) -> Result<Value, String> {
    match v.get(key) {
        Some(Value::Opaque(name)) => Err(format!(
            "`{whose}[\"{key}\"]` is an object of `{name}`, which scmz does not run; the file was not written by scvi-tools' `model.save()`"
        )),
        Some(x) => Ok(x),
        None => Err(format!("has no `{whose}[\"{key}\"]`: it was not written by scvi-tools' `model.save()`")),
    }
}

/// A setting from `init_params_` (its plain settings or its `kwargs` / `model_kwargs`).
struct Settings(Vec<(String, Value)>);

impl Settings {
    fn get(&self, key: &str) -> Option<&Value> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    fn int(&self, key: &str, default: i64) -> Result<i64, String> {
        match self.get(key) {
            None | Some(Value::None) => Ok(default),
            Some(v) => v
                .as_int()
                .ok_or_else(|| format!("its setting `{key}` is {}, not a number", v.describe())),
        }
    }

    fn bool(&self, key: &str, default: bool) -> Result<bool, String> {
        match self.get(key) {
            None | Some(Value::None) => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| format!("its setting `{key}` is {}, not true or false", v.describe())),
        }
    }

    fn text(&self, key: &str, default: &str) -> Result<String, String> {
        match self.get(key) {
            None | Some(Value::None) => Ok(default.to_string()),
            Some(v) => v
                .as_str()
                .map(String::from)
                .ok_or_else(|| format!("its setting `{key}` is {}, not text", v.describe())),
        }
    }
}

fn settings(attr: &Value) -> Result<Settings, String> {
    let init = need(attr, "init_params_", "attr_dict")?;
    let mut out = Vec::new();
    for (k, v) in init.entries() {
        match k.as_str() {
            "non_kwargs" => out.extend(v.entries()),
            "kwargs" => {
                for (k2, v2) in v.entries() {
                    if matches!(v2, Value::Dict(_)) {
                        // scvi-tools nests `**model_kwargs` / `**kwargs` one level down.
                        out.extend(v2.entries());
                    } else {
                        out.push((k2, v2));
                    }
                }
            }
            _ => out.push((k, v)),
        }
    }
    Ok(Settings(out))
}

/// Settings whose value scmz reproduces, each with the values it accepts; any other setting
/// that is not None is refused by name, so that nothing silently changes what the model computes.
const KNOWN: &[&str] = &[
    "n_hidden",
    "n_latent",
    "n_layers",
    "dropout_rate",
    "dispersion",
    "gene_likelihood",
    "latent_distribution",
    "use_observed_lib_size",
    "encode_covariates",
    "deeply_inject_covariates",
    "use_batch_norm",
    "use_layer_norm",
    "linear_classifier",
    "log_variational",
    "datamodule",
    "adata",
];

fn interpret(file: &TorchFile) -> Result<ScviModel, String> {
    let root = &file.root;
    let attr = need(root, "attr_dict", "model.pt")?;
    let registry = need(&attr, "registry_", "attr_dict")?;
    let class = need(&registry, "model_name", "registry_")?
        .as_str()
        .unwrap_or_default()
        .to_string();
    let version = registry
        .get("scvi_version")
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default();
    if class != "SCVI" && class != "SCANVI" {
        return Err(format!(
            "holds a scvi-tools `{class}` model; scmz imports SCVI and SCANVI models"
        ));
    }
    let s = settings(&attr)?;
    for (k, v) in &s.0 {
        if !KNOWN.contains(&k.as_str()) && !matches!(v, Value::None) {
            return Err(format!(
                "sets `{k}` ({}), which changes the model in a way scmz does not reproduce yet; refused",
                v.describe()
            ));
        }
    }
    let setup = registry.get("setup_args");
    for key in [
        "size_factor_key",
        "categorical_covariate_keys",
        "continuous_covariate_keys",
    ] {
        if let Some(v) = setup
            .as_ref()
            .and_then(|s| s.get(key))
            .filter(|v| !matches!(v, Value::None))
        {
            return Err(format!(
                "was set up with `{key}` ({}); scmz imports models whose only covariate is the batch",
                v.as_strings()
                    .map(|s| s.join(", "))
                    .or(v.as_str().map(String::from))
                    .unwrap_or(v.describe())
            ));
        }
    }
    // The AnnData layer it was trained on: scmz finds a query's counts itself (X, count
    // layers, raw/X), so a named layer is only said.
    let layer = setup
        .as_ref()
        .and_then(|s| s.get("layer"))
        .and_then(|v| v.as_str().map(String::from));
    let pick = |key: &str, value: String, allowed: &[&str]| -> Result<String, String> {
        if allowed.contains(&value.as_str()) {
            Ok(value)
        } else {
            Err(format!(
                "has `{key}` = \"{value}\", which scmz does not import yet (it imports {})",
                allowed.join(", ")
            ))
        }
    };
    pick("dispersion", s.text("dispersion", "gene")?, &["gene"])?;
    let likelihood = match pick(
        "gene_likelihood",
        s.text("gene_likelihood", "zinb")?,
        &["nb", "zinb", "poisson"],
    )?
    .as_str()
    {
        "nb" => Likelihood::Nb,
        "poisson" => Likelihood::Poisson,
        _ => Likelihood::Zinb,
    };
    pick(
        "latent_distribution",
        s.text("latent_distribution", "normal")?,
        &["normal"],
    )?;
    if !s.bool("use_observed_lib_size", true)? {
        return Err(
            "learns the library size (`use_observed_lib_size=False`), which scmz does not import yet; \
             it imports models that use the observed library size"
                .into(),
        );
    }
    if !s.bool("log_variational", true)? {
        return Err(
            "encodes raw counts (`log_variational=False`); scmz imports models that encode log1p counts".into(),
        );
    }
    let bn = s.text("use_batch_norm", "both")?;
    let ln = s.text("use_layer_norm", "none")?;
    let norm = match (bn.as_str(), ln.as_str()) {
        ("both", "none") => Norm::Batch,
        ("none", "both") => Norm::Layer,
        _ => {
            return Err(format!(
                "normalises with use_batch_norm=\"{bn}\" and use_layer_norm=\"{ln}\"; scmz imports batch norm or layer norm in both encoder and decoder"
            ))
        }
    };
    let n_hidden = s.int("n_hidden", 128)?;
    let n_latent = s.int("n_latent", 10)?;
    let n_layers = s.int("n_layers", 1)?;
    if !(1..=16_384).contains(&n_hidden) || !(1..=16_384).contains(&n_latent) || !(1..=16).contains(&n_layers) {
        return Err(format!(
            "describes {n_hidden} hidden and {n_latent} latent units in {n_layers} layers, outside what scmz holds (1 to 16,384 units, 1 to 16 layers)"
        ));
    }
    let dropout = s.get("dropout_rate").and_then(Value::as_float).unwrap_or(0.1);

    let fields = need(&registry, "field_registries", "registry_")?;
    let categories = |field: &str| -> Option<(Vec<String>, Option<String>, Option<String>)> {
        let state = fields.get(field)?.get("state_registry")?;
        let cats = state.get("categorical_mapping")?.as_strings()?;
        let key = state.get("original_key").and_then(|v| v.as_str().map(String::from));
        let unlabeled = state
            .get("unlabeled_category")
            .and_then(|v| v.as_str().map(String::from));
        Some((cats, key, unlabeled))
    };
    let (batch_categories, batch_key) = match categories("batch") {
        Some((cats, key, _)) if cats.len() > 1 => (cats, key),
        _ => (Vec::new(), None),
    };
    distinct("batch categories", &batch_categories)?;
    let n_batch = fields
        .get("batch")
        .and_then(|b| b.get("summary_stats"))
        .and_then(|s| s.get("n_batch"))
        .and_then(|n| n.as_int());
    if let Some(n) = n_batch.filter(|&n| n != batch_categories.len().max(1) as i64) {
        return Err(format!(
            "says it has {n} batches but names {} ({}); the registry is inconsistent",
            batch_categories.len(),
            batch_categories.join(", ")
        ));
    }
    let (classifier_labels, label_key) = match (class.as_str(), categories("labels")) {
        ("SCANVI", Some((cats, key, unlabeled))) => {
            let labels: Vec<String> = cats.into_iter().filter(|c| Some(c) != unlabeled.as_ref()).collect();
            (labels, key)
        }
        ("SCANVI", None) => return Err("is a SCANVI model without label categories in its registry".into()),
        _ => (Vec::new(), None),
    };

    distinct("labels", &classifier_labels)?;
    let genes = need(root, "var_names", "model.pt")?
        .as_strings()
        .ok_or("its `var_names` are not a list of gene names")?;
    distinct("`var_names` (genes, matched to a query's by name)", &genes)?;
    let state = need(root, "model_state_dict", "model.pt")?;
    let mut tensors = BTreeMap::new();
    for (k, v) in state.entries() {
        if let Value::Tensor(t) = v {
            tensors.insert(k, t);
        }
    }
    let linear_classifier = s.bool("linear_classifier", false)?;
    let arch = Architecture {
        n_genes: genes.len(),
        n_hidden: n_hidden as usize,
        n_latent: n_latent as usize,
        n_layers: n_layers as usize,
        dropout,
        norm,
        likelihood,
        batch_categories,
        masked_input: false,
        classifier_labels,
        layout: Layout {
            decoder_layers: n_layers as usize,
            encode_batch: s.bool("encode_covariates", false)?,
            batch_every_layer: s.bool("deeply_inject_covariates", true)?,
            classifier_layers: if linear_classifier { 0 } else { n_layers as usize },
        },
    };
    let names = name_map(&arch);
    let expected = expected_shapes(&arch);
    let mut weights = BTreeMap::new();
    for (ours, theirs) in &names {
        let t = tensors
            .get(theirs)
            .ok_or_else(|| format!("has no `{theirs}` in its state dict, which a {class} with these settings has"))?;
        let f = file.floats(t)?;
        let want = &expected[ours];
        if &f.shape != want {
            return Err(format!(
                "has `{theirs}` of shape {:?} where its settings ({} genes, {} hidden, {} latent, {} batches) give {want:?}",
                f.shape,
                arch.n_genes,
                arch.n_hidden,
                arch.n_latent,
                arch.batch_categories.len()
            ));
        }
        if f.data.iter().any(|x| !x.is_finite()) {
            return Err(format!("has non-finite numbers in `{theirs}`"));
        }
        weights.insert(ours.clone(), f);
    }
    // Anything else in the state dict must be something scmz knows it can leave out.
    let used: std::collections::HashSet<&str> = names.values().map(String::as_str).collect();
    for k in tensors.keys() {
        if !used.contains(k.as_str()) && !ignorable(k) {
            return Err(format!(
                "has `{k}` in its state dict, a part scmz does not know; refused rather than dropped"
            ));
        }
    }
    let n_cells = fields
        .get("X")
        .and_then(|x| x.get("summary_stats"))
        .and_then(|s| s.get("n_cells"))
        .and_then(|v| v.as_int())
        .map(|n| n as usize);
    Ok(ScviModel {
        class,
        version,
        arch,
        genes,
        batch_key,
        label_key,
        n_cells,
        layer,
        weights,
    })
}

/// Parts of scvi-tools models that computing latents, likelihoods and labels does not use:
/// BatchNorm's step counters, the library-size encoder (unused with the observed library size),
/// the per-cell dispersion head (unused with gene dispersion), the zero-inflation head (kept for
/// ZINB models, unused otherwise), scANVI's label prior and its
/// second-level latent (`z2`) networks, the library prior's statistics, pyro's store.
fn ignorable(k: &str) -> bool {
    k.ends_with("num_batches_tracked")
        || k.starts_with("l_encoder.")
        || k.starts_with("decoder.px_r_decoder.")
        || k.starts_with("decoder.px_dropout_decoder.")
        || k.starts_with("encoder_z2_z1.")
        || k.starts_with("decoder_z1_z2.")
        || k == "y_prior"
        || k.starts_with("library_log_")
}

/// scmz's variable names (as model files keep them) -> scvi-tools' state dict names.
pub fn name_map(arch: &Architecture) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    let mut block = |ours: &str, theirs: &str| {
        m.insert(format!("{ours}.linear.weight"), format!("{theirs}.0.weight"));
        m.insert(format!("{ours}.linear.bias"), format!("{theirs}.0.bias"));
        if arch.norm == Norm::Batch {
            for p in ["weight", "bias", "running_mean", "running_var"] {
                m.insert(format!("{ours}.norm.{p}"), format!("{theirs}.1.{p}"));
            }
        }
    };
    for i in 0..arch.n_layers {
        block(
            &format!("encoder.{i}"),
            &format!("z_encoder.encoder.fc_layers.Layer {i}"),
        );
    }
    for i in 0..arch.layout.decoder_layers {
        let ours = if i == 0 {
            "decoder".to_string()
        } else {
            format!("decoder.{i}")
        };
        block(&ours, &format!("decoder.px_decoder.fc_layers.Layer {i}"));
    }
    if !arch.classifier_labels.is_empty() {
        for i in 0..arch.layout.classifier_layers {
            block(
                &format!("classifier.{i}"),
                &format!("classifier.classifier.0.fc_layers.Layer {i}"),
            );
        }
        let out = if arch.layout.classifier_layers == 0 {
            "classifier.classifier.0"
        } else {
            "classifier.classifier.1"
        };
        m.insert("classifier.out.weight".into(), format!("{out}.weight"));
        m.insert("classifier.out.bias".into(), format!("{out}.bias"));
    }
    for (ours, theirs) in [
        ("z_mean", "z_encoder.mean_encoder"),
        ("z_logvar", "z_encoder.var_encoder"),
        ("px_scale", "decoder.px_scale_decoder.0"),
    ] {
        m.insert(format!("{ours}.weight"), format!("{theirs}.weight"));
        m.insert(format!("{ours}.bias"), format!("{theirs}.bias"));
    }
    if arch.likelihood == Likelihood::Zinb {
        m.insert("px_dropout.weight".into(), "decoder.px_dropout_decoder.weight".into());
        m.insert("px_dropout.bias".into(), "decoder.px_dropout_decoder.bias".into());
    }
    m.insert("px_log_theta".into(), "px_r".into());
    m
}

/// The shape of every variable of a model of architecture `arch`, as model files keep them
/// (PyTorch's layout). The engine's tests check it against the model it builds.
pub fn expected_shapes(arch: &Architecture) -> BTreeMap<String, Vec<usize>> {
    let (g, h, l) = (arch.n_genes, arch.n_hidden, arch.n_latent);
    let nb = arch.batch_categories.len();
    let lay = &arch.layout;
    let deep = if lay.batch_every_layer { nb } else { 0 };
    let mut m = BTreeMap::new();
    let mut block = |name: String, n_in: usize| {
        m.insert(format!("{name}.linear.weight"), vec![h, n_in]);
        m.insert(format!("{name}.linear.bias"), vec![h]);
        if arch.norm == Norm::Batch {
            for p in ["weight", "bias", "running_mean", "running_var"] {
                m.insert(format!("{name}.norm.{p}"), vec![h]);
            }
        }
    };
    let enc_batch = if lay.encode_batch { nb } else { 0 };
    block(
        "encoder.0".into(),
        if arch.masked_input { 2 * g } else { g } + enc_batch,
    );
    for i in 1..arch.n_layers.max(1) {
        block(format!("encoder.{i}"), h + if lay.encode_batch { deep } else { 0 });
    }
    block("decoder".into(), l + nb);
    for i in 1..lay.decoder_layers.max(1) {
        block(format!("decoder.{i}"), h + deep);
    }
    let n_labels = arch.classifier_labels.len();
    if n_labels > 0 {
        for i in 0..lay.classifier_layers {
            block(format!("classifier.{i}"), if i == 0 { l } else { h });
        }
        m.insert(
            "classifier.out.weight".into(),
            vec![n_labels, if lay.classifier_layers == 0 { l } else { h }],
        );
        m.insert("classifier.out.bias".into(), vec![n_labels]);
    }
    m.insert("z_mean.weight".into(), vec![l, h]);
    m.insert("z_mean.bias".into(), vec![l]);
    m.insert("z_logvar.weight".into(), vec![l, h]);
    m.insert("z_logvar.bias".into(), vec![l]);
    m.insert("px_scale.weight".into(), vec![g, h]);
    m.insert("px_scale.bias".into(), vec![g]);
    if arch.likelihood == Likelihood::Zinb {
        m.insert("px_dropout.weight".into(), vec![g, h]);
        m.insert("px_dropout.bias".into(), vec![g]);
    }
    m.insert("px_log_theta".into(), vec![g]);
    m
}

/// Imports the scvi-tools model saved in `dir` into `zoo` as `name`.
pub fn import(dir: &Path, name: &str, zoo: &Zoo) -> Result<Report, String> {
    crate::zoo::check_name(name).map_err(|p| format!("--name `{name}`: {p}"))?;
    let path = model_file(dir)?;
    let model = read(&path)?;
    let sha256 = sha256_file(&path).map_err(|e| e.to_string())?;
    let at = |e: &dyn std::fmt::Display| format!("{}: {e}", zoo.dir.display());
    let staging = zoo.staging_dir(name).map_err(|e| e.to_string())?;
    let _pending = crate::files::Pending::new(&staging);
    let written = (|| -> Result<Manifest, String> {
        let weights = staging.join("weights.safetensors");
        let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = model
            .weights
            .iter()
            .map(|(k, f)| {
                (
                    k.clone(),
                    f.data.iter().flat_map(|x| x.to_le_bytes()).collect(),
                    f.shape.clone(),
                )
            })
            .collect();
        let views = bytes
            .iter()
            .map(|(k, b, s)| {
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).map(|v| (k.clone(), v))
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| at(&e))?;
        let data = safetensors::tensor::serialize(views, &None).map_err(|e| at(&e))?;
        crate::files::write_atomic(&weights, &data).map_err(|e| e.to_string())?;
        let list = crate::genes::GeneList::from_names(name, model.genes.clone());
        let adata = path.with_file_name(
            path.file_name()
                .and_then(|n| n.to_str())
                .map(|n| n.replace("model.pt", "adata.h5ad"))
                .unwrap_or_default(),
        );
        let datasets = if adata.is_file() {
            vec![TrainingData {
                path: std::fs::canonicalize(&adata)
                    .unwrap_or(adata.clone())
                    .display()
                    .to_string(),
                sha256: sha256_file(&adata).map_err(|e| e.to_string())?,
                n_cells: model.n_cells.unwrap_or(0),
                matrix: "X".into(),
            }]
        } else {
            Vec::new()
        };
        let manifest = Manifest {
            schema_version: manifest::SCHEMA_VERSION,
            name: name.to_string(),
            version: 1,
            created: crate::events::now_rfc3339(),
            scmz_version: env!("CARGO_PKG_VERSION").to_string(),
            architecture: model.arch.clone(),
            training: Training {
                max_epochs: 0,
                epochs_run: 0,
                best_epoch: None,
                batch_size: 0,
                lr: 0.0,
                weight_decay: 0.0,
                kl_warmup_epochs: 0,
                gene_dropout: 0.0,
                seed: 0,
                device: "scvi-tools".into(),
                batch_key: model.batch_key.clone(),
                label_key: model.label_key.clone(),
                seconds: 0.0,
                cells_per_s: 0.0,
            },
            genes: Genes {
                names: model.genes.clone(),
                gene_ids: list.gene_ids,
                symbols: list.symbols,
                species: list.species,
            },
            datasets,
            metrics: Metrics {
                best_val_elbo: None,
                final_train: None,
                final_val: None,
                classifier: None,
            },
            weights: FileRef {
                file: "weights.safetensors".into(),
                sha256: sha256_file(&weights).map_err(|e| e.to_string())?,
            },
            reference: None,
            imported: Some(Imported {
                tool: "scvi-tools".into(),
                tool_version: model.version.clone(),
                class: model.class.clone(),
                file: std::fs::canonicalize(&path)
                    .unwrap_or(path.clone())
                    .display()
                    .to_string(),
                sha256,
            }),
        };
        let json = serde_json::to_vec_pretty(&manifest).map_err(|e| at(&e))?;
        crate::files::write_atomic(&staging.join("manifest.json"), &json).map_err(|e| e.to_string())?;
        Ok(manifest)
    })();
    let manifest = match written {
        Ok(m) => m,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    let dir = zoo.install(&staging, name).map_err(|e| e.to_string())?;
    let notes = model
        .layer
        .iter()
        .map(|l| {
            format!(
                "it was trained on the layer `{l}`; scmz picks a query's raw counts itself (X, count layers, raw/X, said in each report): give --layer {l} to project where they differ"
            )
        })
        .collect();
    Ok(Report {
        dir,
        class: model.class,
        version: model.version,
        manifest,
        notes,
    })
}
