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
    /// The training history the file keeps (see `history`); None where a value was not finite.
    pub history: BTreeMap<String, Vec<Option<f64>>>,
}

/// The model file in `dir` (`model.pt` or `<prefix>model.pt`; in the layout of scvi-tools before
/// 0.15, `<prefix>model_params.pt`, read with the files beside it), or `dir` itself when it is a
/// file.
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
    let paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    let ending = |end: &str| -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = paths
            .iter()
            .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with(end)))
            .cloned()
            .collect();
        v.sort();
        v
    };
    let mut found = ending("model.pt");
    if found.is_empty() {
        found = ending(LEGACY_PARAMS);
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(format!(
            "{}: holds no `model.pt`; give the folder that scvi-tools' `model.save(dir)` wrote",
            dir.display()
        )),
        _ => Err(format!(
            "{}: holds several model files ({}); give the one to import",
            dir.display(),
            found
                .iter()
                .filter_map(|p| p.file_name())
                .map(|n| n.to_string_lossy())
                .collect::<Vec<_>>()
                .join(", ")
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
            "its {what} name `{first}` more than once ({} repeated name{} in all); they must be distinct",
            twice.len(),
            if twice.len() == 1 { "" } else { "s" }
        )),
    }
}

/// Reads a scvi-tools model file (for the layout before 0.15, its `model_params.pt`); errors name
/// the file and what is refused.
pub fn read(path: &Path) -> Result<ScviModel, String> {
    let at = |m: String| format!("{}: {m}", path.display());
    let file = TorchFile::open(path).map_err(at)?;
    if let Some(prefix) = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(LEGACY_PARAMS))
    {
        let root = legacy_root(path, prefix, &file)?;
        return interpret(&root, &file).map_err(at);
    }
    interpret(&file.root, &file).map_err(at)
}

/// The state dict of the layout of scvi-tools before 0.15; beside it `<prefix>var_names.csv`
/// (one gene per line) and `<prefix>attr.pkl` (a plain pickle of the model's attributes, its
/// AnnData set-up in `scvi_setup_dict_`).
const LEGACY_PARAMS: &str = "model_params.pt";

/// A file beside `params` read whole, if it is a regular file of at most `limit` bytes.
fn sibling(params: &Path, name: &str, limit: u64) -> Result<(PathBuf, Vec<u8>), String> {
    let path = params.with_file_name(name);
    let at = |m: &dyn std::fmt::Display| format!("{}: {m}", path.display());
    let meta = std::fs::metadata(&path).map_err(|e| {
        at(&format!(
            "{}; a model saved by scvi-tools before 0.15 has it beside `{}`",
            crate::files::describe(&e),
            params.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()
        ))
    })?;
    if !meta.is_file() || meta.len() > limit {
        return Err(at(&format!("is not a regular file of at most {} MB", limit >> 20)));
    }
    let bytes = std::fs::read(&path).map_err(|e| at(&crate::files::describe(&e)))?;
    Ok((path, bytes))
}

fn dict(items: Vec<(&str, Value)>) -> Value {
    let items = items.into_iter().map(|(k, v)| (Value::Str(k.into()), v)).collect();
    Value::Dict(std::rc::Rc::new(std::cell::RefCell::new(items)))
}

/// What `model.save()` of scvi-tools 0.15 and later keeps (`model_state_dict`, `var_names`,
/// `attr_dict` with a `registry_`), from the three files of the layout before it, as scvi-tools'
/// own `convert_legacy_save` makes it. The class is not saved in that layout: a state dict with a
/// classifier is SCANVI's, else SCVI's.
fn legacy_root(params: &Path, prefix: &str, file: &TorchFile) -> Result<Value, String> {
    let (names_path, names) = sibling(params, &format!("{prefix}var_names.csv"), 64 << 20)?;
    let genes: Vec<Value> = String::from_utf8_lossy(&names)
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.is_empty())
        .map(|l| Value::Str(l.to_string()))
        .collect();
    let names_at = |m: String| format!("{}: {m}", names_path.display());
    if genes.is_empty() {
        return Err(names_at("names no genes".into()));
    }
    // One gene per line, as many as the weights have (the genes of `px_r`, the dispersion).
    let weights_genes = match file.root.get("px_r") {
        Some(Value::Tensor(t)) => t.shape.first().map(|&g| g as usize),
        _ => None,
    };
    if let Some(g) = weights_genes.filter(|&g| g != genes.len()) {
        return Err(names_at(format!(
            "names {} genes where `{}`'s weights have {g}; it should hold one gene per line, no header",
            genes.len(),
            params.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()
        )));
    }
    let names: Vec<String> = genes.iter().filter_map(|g| g.as_str().map(String::from)).collect();
    distinct("genes (matched to a query's by name)", &names).map_err(names_at)?;
    let (attr_path, attr_bytes) = sibling(params, &format!("{prefix}attr.pkl"), 1 << 30)?;
    let at = |m: String| format!("{}: {m}", attr_path.display());
    let attr = super::pickle::load(&attr_bytes).map_err(at)?;
    let setup = need(&attr, "scvi_setup_dict_", "attr.pkl").map_err(at)?;
    for key in ["extra_categoricals", "extra_continuous_keys"] {
        let used = match setup.get(key) {
            Some(Value::Dict(_)) => setup.get(key).and_then(|d| d.get("keys")).and_then(|k| k.as_strings()),
            Some(v) => v.as_strings(),
            None => None,
        };
        if let Some(keys) = used.filter(|k| !k.is_empty()) {
            return Err(at(format!(
                "was set up with the covariates {} (`{key}`); scmz imports models whose only covariate is the batch",
                keys.join(", ")
            )));
        }
    }
    let stats = setup.get("summary_stats").unwrap_or(Value::None);
    let stat = |k: &str| stats.get(k).unwrap_or(Value::None);
    let mappings = setup.get("categorical_mappings").unwrap_or(Value::None);
    let field = |scvi_key: &str, n_key: &str, unlabeled: Option<Value>| -> Option<Value> {
        let m = mappings.get(scvi_key)?;
        let mut state = vec![
            ("categorical_mapping", m.get("mapping")?),
            ("original_key", m.get("original_key").unwrap_or(Value::None)),
        ];
        if let Some(u) = unlabeled {
            state.push(("unlabeled_category", u));
        }
        Some(dict(vec![
            ("state_registry", dict(state)),
            ("summary_stats", dict(vec![(n_key, stat(n_key))])),
        ]))
    };
    let classifier = file.root.entries().iter().any(|(k, _)| k.starts_with("classifier."));
    let mut fields = vec![(
        "X",
        dict(vec![("summary_stats", dict(vec![("n_cells", stat("n_cells"))]))]),
    )];
    if let Some(b) = field("_scvi_batch", "n_batch", None) {
        fields.push(("batch", b));
    }
    if let Some(l) = field("_scvi_labels", "n_labels", attr.get("unlabeled_category_")) {
        fields.push(("labels", l));
    }
    let registry = dict(vec![
        (
            "model_name",
            Value::Str(if classifier { "SCANVI" } else { "SCVI" }.into()),
        ),
        ("scvi_version", setup.get("scvi_version").unwrap_or(Value::None)),
        ("field_registries", dict(fields)),
    ]);
    let mut attr_items = attr.entries();
    attr_items.retain(|(k, _)| k != "scvi_setup_dict_");
    let mut attr_dict: Vec<(&str, Value)> = attr_items.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    attr_dict.push(("registry_", registry));
    Ok(dict(vec![
        ("model_state_dict", file.root.clone()),
        (
            "var_names",
            Value::List(std::rc::Rc::new(std::cell::RefCell::new(genes))),
        ),
        ("attr_dict", dict(attr_dict)),
    ]))
}

fn need(v: &Value, key: &str, whose: &str) -> Result<Value, String> {
    match v.get(key) {
        Some(x) if x.class().is_some() => Err(format!(
            "`{whose}[\"{key}\"]` is an object of `{}`, which scmz does not run; the file was not written by scvi-tools' `model.save()`",
            x.class().unwrap_or_default()
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

fn interpret(root: &Value, file: &TorchFile) -> Result<ScviModel, String> {
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
    let dispersion = pick("dispersion", s.text("dispersion", "gene")?, &["gene", "gene-batch"])?;
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
    if !(0.0..1.0).contains(&dropout) {
        return Err(format!("has `dropout_rate` = {dropout}, not a rate in [0, 1)"));
    }

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
            learned_library: !s.bool("use_observed_lib_size", true)?,
            dispersion_per_batch: dispersion == "gene-batch",
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
    // The library prior's variances (scvi-tools' `library_log_vars`) divide: they must be positive.
    if weights
        .get("library_log_vars")
        .is_some_and(|f| f.data.iter().any(|&v| v <= 0.0))
    {
        return Err("has `library_log_vars` that are not all positive: they are variances".into());
    }
    // Anything else in the state dict must be something scmz knows it can leave out.
    let used: std::collections::HashSet<&str> = names.values().map(String::as_str).collect();
    for k in tensors.keys() {
        if !used.contains(k.as_str()) && !ignorable(k, arch.layout.learned_library) {
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
        history: history(&attr),
    })
}

/// The training history in `attr_dict["history_"]`: a pandas DataFrame per logged quantity,
/// read as data (pandas is never run). A frame's numbers are those of its block
/// (`pandas._libs.internals._unpickle_block`'s first argument), NaN and infinities as None (a
/// diverged run logs them; JSON has no such numbers); frames without one readable column of
/// numbers are left out.
fn history(attr: &Value) -> BTreeMap<String, Vec<Option<f64>>> {
    let Some(h) = attr.get("history_") else {
        return BTreeMap::new();
    };
    h.entries()
        .into_iter()
        .filter_map(|(name, frame)| {
            let mut budget = 10_000;
            let mut seen = std::collections::HashSet::new();
            let block = find(&frame, 0, &mut budget, &mut seen, &|v| {
                v.class().as_deref() == Some("pandas._libs.internals._unpickle_block")
            })?;
            match block.get("__args__")? {
                Value::Tuple(args) => match args.first()? {
                    Value::Array(a) => match &*a.borrow() {
                        super::pickle::Array::Numbers(x) if !x.is_empty() => {
                            Some((name, x.iter().map(|v| Some(*v).filter(|v| v.is_finite())).collect()))
                        }
                        _ => None,
                    },
                    _ => None,
                },
                _ => None,
            }
        })
        .collect()
}

/// The first value under `v` (depth first, a few levels down) that `wanted` accepts, looking
/// into each container once (`seen`, by address: a pickle may refer to one many times) and at
/// no more than `budget` values in all.
fn find(
    v: &Value,
    depth: usize,
    budget: &mut usize,
    seen: &mut std::collections::HashSet<usize>,
    wanted: &dyn Fn(&Value) -> bool,
) -> Option<Value> {
    if *budget == 0 {
        return None;
    }
    *budget -= 1;
    if wanted(v) {
        return Some(v.clone());
    }
    if depth >= 8 {
        return None;
    }
    let items: Vec<Value> = match v {
        Value::Dict(d) => d.borrow().iter().map(|(_, x)| x.clone()).collect(),
        Value::List(l) => l.borrow().clone(),
        Value::Tuple(t) => t.to_vec(),
        _ => return None,
    };
    let address = super::pickle::address(v)?;
    if !seen.insert(address) {
        return None;
    }
    items.iter().find_map(|x| find(x, depth + 1, budget, seen, wanted))
}

/// The last value of history series `name` (None where it was not finite).
fn last(history: &BTreeMap<String, Vec<Option<f64>>>, name: &str) -> Option<f64> {
    history.get(name).and_then(|v| v.last().copied().flatten())
}

/// The loss terms of the last epoch, per cell, for `part` (`train` or `validation`), where the
/// history has all four.
fn final_terms(history: &BTreeMap<String, Vec<Option<f64>>>, part: &str) -> Option<crate::events::LossTerms> {
    let total = last(history, &format!("{part}_loss")).or_else(|| last(history, &format!("{part}_loss_epoch")))?;
    Some(crate::events::LossTerms {
        recon: last(history, &format!("reconstruction_loss_{part}"))?,
        kl: last(history, &format!("kl_local_{part}"))?,
        total,
        elbo: last(history, &format!("elbo_{part}"))?,
    })
}

/// Parts of scvi-tools models that computing latents, likelihoods and labels does not use:
/// BatchNorm's step counters, the library-size encoder and its prior (used, and so mapped, only
/// where the library size is learned), the per-cell dispersion head (unused with gene or
/// gene-batch dispersion), the zero-inflation head (kept for ZINB models, unused otherwise),
/// scANVI's label prior and its second-level latent (`z2`) networks.
fn ignorable(k: &str, learned_library: bool) -> bool {
    k.ends_with("num_batches_tracked")
        || (!learned_library && (k.starts_with("l_encoder.") || k.starts_with("library_log_")))
        || k.starts_with("decoder.px_r_decoder.")
        || k.starts_with("decoder.px_dropout_decoder.")
        || k.starts_with("encoder_z2_z1.")
        || k.starts_with("decoder_z1_z2.")
        || k == "y_prior"
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
    if arch.layout.learned_library {
        block("library.0", "l_encoder.encoder.fc_layers.Layer 0");
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
    if arch.layout.learned_library {
        for (ours, theirs) in [
            ("l_mean", "l_encoder.mean_encoder"),
            ("l_logvar", "l_encoder.var_encoder"),
        ] {
            m.insert(format!("{ours}.weight"), format!("{theirs}.weight"));
            m.insert(format!("{ours}.bias"), format!("{theirs}.bias"));
        }
        for k in ["library_log_means", "library_log_vars"] {
            m.insert(k.into(), k.into());
        }
    }
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
    if lay.learned_library {
        block("library.0".into(), g + enc_batch);
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
    m.insert(
        "px_log_theta".into(),
        if lay.dispersion_per_batch {
            vec![g, nb.max(1)]
        } else {
            vec![g]
        },
    );
    if lay.learned_library {
        for p in ["l_mean", "l_logvar"] {
            m.insert(format!("{p}.weight"), vec![1, h]);
            m.insert(format!("{p}.bias"), vec![1]);
        }
        m.insert("library_log_means".into(), vec![1, nb.max(1)]);
        m.insert("library_log_vars".into(), vec![1, nb.max(1)]);
    }
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
                .and_then(|n| n.strip_suffix(LEGACY_PARAMS).or_else(|| n.strip_suffix("model.pt")))
                .map(|prefix| format!("{prefix}adata.h5ad"))
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
                epochs_run: model.history.get("elbo_train").map_or(0, Vec::len),
                best_epoch: None,
                batch_size: 0,
                lr: 0.0,
                lr_warmup_steps: 0,
                norm_cells: 0,
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
                best_val_elbo: model
                    .history
                    .get("elbo_validation")
                    .and_then(|v| v.iter().copied().flatten().reduce(f64::min)),
                final_train: final_terms(&model.history, "train"),
                final_val: final_terms(&model.history, "validation"),
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
                history: model.history.clone(),
                n_cells: model.n_cells,
            }),
        };
        let json = serde_json::to_vec_pretty(&manifest).map_err(|e| at(&e))?;
        crate::files::write_atomic(&staging.join("manifest.json"), &json).map_err(|e| e.to_string())?;
        // Read back as any zoo model is read: a model scmz could not load is never installed.
        crate::zoo::load_dir(&staging)
            .map_err(|e| format!("the imported model reads back wrong ({e}); nothing was imported"))?;
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::cell::RefCell;
    use std::rc::Rc;

    use super::*;
    use crate::scvi_tools::pickle::Array;

    fn object(class: &str, args: Vec<Value>) -> Value {
        dict(vec![
            ("__class__", Value::Str(class.into())),
            ("__args__", Value::Tuple(Rc::new(args))),
        ])
    }

    /// A pandas frame as the pickle reader keeps it: its block's numbers under its manager.
    fn frame(values: Vec<f64>) -> Value {
        let numbers = Value::Array(Rc::new(RefCell::new(Array::Numbers(values))));
        let block = object("pandas._libs.internals._unpickle_block", vec![numbers]);
        let manager = object(
            "pandas.core.internals.managers.BlockManager",
            vec![Value::Tuple(Rc::new(vec![block]))],
        );
        dict(vec![
            ("__class__", Value::Str("pandas.core.frame.DataFrame".into())),
            ("_mgr", manager),
        ])
    }

    /// Values that are not finite (a diverged run) are kept as None, so that the manifest
    /// (JSON) holds them; a frame that refers to one list thousands of times over is searched
    /// once per container, at once.
    #[test]
    fn history_keeps_its_numbers_and_survives_shared_references() {
        let attr = dict(vec![(
            "history_",
            dict(vec![("elbo_train", frame(vec![3.0, f64::NAN, f64::INFINITY, 1.5]))]),
        )]);
        let h = history(&attr);
        assert_eq!(h["elbo_train"], vec![Some(3.0), None, None, Some(1.5)]);
        // 20 references at each of 8 levels: 20^8 paths, 8 containers.
        let mut x = Value::List(Rc::new(RefCell::new(Vec::new())));
        for _ in 0..8 {
            x = Value::List(Rc::new(RefCell::new(vec![x; 20])));
        }
        let attr = dict(vec![("history_", dict(vec![("elbo_train", x)]))]);
        let t0 = std::time::Instant::now();
        assert!(history(&attr).is_empty());
        assert!(t0.elapsed().as_secs() < 2, "took {:?}", t0.elapsed());
    }
}
