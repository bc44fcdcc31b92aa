//! `scmz export NAME --format scvi-tools -o DIR`: a zoo model as the folder scvi-tools'
//! `model.save()` writes (`DIR/model.pt`), which `scvi.model.SCVI.load(DIR, adata=...)` loads:
//! a torch zip whose pickle holds the state dict under scvi-tools' names, the genes, and the
//! `attr_dict` (settings and the AnnData registry) scvi-tools checks a query against.
//!
//! The pickle is written by hand (`Pickler`, protocol 2, the opcodes torch itself writes); it
//! holds only data and the two constructors any torch file names (`_rebuild_tensor_v2` and
//! `OrderedDict`), with plain lists where scvi-tools keeps NumPy arrays (it reads both).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::import::{expected_shapes, name_map};
use crate::spec::{Likelihood, Norm};
use crate::zoo::manifest::{Architecture, Manifest};
use crate::zoo::{sha256_file, Zoo};

/// The scvi-tools version whose files these are (checked by loading them in it).
pub const FORMAT_VERSION: &str = "1.4.2";

/// What an export wrote.
#[derive(Debug)]
pub struct Report {
    pub file: PathBuf,
    pub class: &'static str,
    /// What scvi-tools will not have of the model, said to the user.
    pub notes: Vec<String>,
}

/// A pickled value: the few kinds a scvi-tools model file holds.
enum P {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    List(Vec<P>),
    Tuple(Vec<P>),
    Dict(Vec<(String, P)>),
    OrderedDict(Vec<(String, P)>),
    /// A tensor over storage `data/<key>`: its shape and whether it holds int64 (else float32).
    Tensor {
        key: String,
        shape: Vec<usize>,
        long: bool,
    },
}

fn s(v: &str) -> P {
    P::Str(v.to_string())
}

fn dict(items: Vec<(&str, P)>) -> P {
    P::Dict(items.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

/// Protocol 2 pickles, as `torch.save` writes them (no memo: nothing is shared).
#[derive(Default)]
struct Pickler {
    out: Vec<u8>,
}

impl Pickler {
    fn global(&mut self, module: &str, name: &str) {
        self.out.push(b'c');
        self.out.extend(format!("{module}\n{name}\n").bytes());
    }

    fn value(&mut self, v: &P) {
        match v {
            P::None => self.out.push(b'N'),
            P::Bool(b) => self.out.push(if *b { 0x88 } else { 0x89 }),
            P::Int(i) => match i32::try_from(*i) {
                Ok(i) => {
                    self.out.push(b'J');
                    self.out.extend(i.to_le_bytes());
                }
                Err(_) => {
                    // LONG1: 8 little-endian two's-complement bytes.
                    self.out.extend([0x8a, 8]);
                    self.out.extend(i.to_le_bytes());
                }
            },
            P::Float(f) => {
                self.out.push(b'G');
                self.out.extend(f.to_be_bytes());
            }
            P::Str(t) => {
                self.out.push(b'X');
                self.out.extend((t.len() as u32).to_le_bytes());
                self.out.extend(t.bytes());
            }
            P::List(items) => {
                self.out.push(b']');
                if !items.is_empty() {
                    self.out.push(b'(');
                    items.iter().for_each(|i| self.value(i));
                    self.out.push(b'e');
                }
            }
            P::Tuple(items) => {
                self.out.push(b'(');
                items.iter().for_each(|i| self.value(i));
                self.out.push(b't');
            }
            P::Dict(items) => {
                self.out.push(b'}');
                self.set_items(items);
            }
            P::OrderedDict(items) => {
                self.global("collections", "OrderedDict");
                self.out.extend([b')', b'R']);
                self.set_items(items);
            }
            P::Tensor { key, shape, long } => {
                self.global("torch._utils", "_rebuild_tensor_v2");
                self.out.push(b'(');
                // The storage, by persistent id: ('storage', type, key, location, numel).
                self.out.push(b'(');
                self.value(&s("storage"));
                self.global("torch", if *long { "LongStorage" } else { "FloatStorage" });
                self.value(&s(key));
                self.value(&s("cpu"));
                self.value(&P::Int(shape.iter().product::<usize>() as i64));
                self.out.extend([b't', b'Q']);
                self.value(&P::Int(0));
                let strides: Vec<P> = (0..shape.len())
                    .map(|d| P::Int(shape[d + 1..].iter().product::<usize>() as i64))
                    .collect();
                self.value(&P::Tuple(shape.iter().map(|&n| P::Int(n as i64)).collect()));
                self.value(&P::Tuple(strides));
                self.value(&P::Bool(false));
                self.value(&P::OrderedDict(Vec::new()));
                self.out.extend([b't', b'R']);
            }
        }
    }

    fn set_items(&mut self, items: &[(String, P)]) {
        if items.is_empty() {
            return;
        }
        self.out.push(b'(');
        for (k, v) in items {
            self.value(&s(k));
            self.value(v);
        }
        self.out.push(b'u');
    }

    fn finish(mut self, root: &P) -> Vec<u8> {
        self.out.extend([0x80, 2]);
        self.value(root);
        self.out.push(b'.');
        self.out
    }
}

/// The state dict being written: tensors in order and their raw little-endian storages.
#[derive(Default)]
struct StateDict {
    items: Vec<(String, P)>,
    storages: Vec<(String, Vec<u8>)>,
}

impl StateDict {
    fn floats(&mut self, name: &str, shape: Vec<usize>, data: &[u8]) {
        let key = self.storages.len().to_string();
        self.storages.push((key.clone(), data.to_vec()));
        self.items.push((
            name.to_string(),
            P::Tensor {
                key,
                shape,
                long: false,
            },
        ));
    }

    fn filled(&mut self, name: &str, shape: Vec<usize>, value: f32) {
        let n: usize = shape.iter().product();
        let data: Vec<u8> = std::iter::repeat_n(value.to_le_bytes(), n).flatten().collect();
        self.floats(name, shape, &data);
    }

    /// A layer (`<layer>.0` linear, `<layer>.1` BatchNorm) that scvi-tools builds and this
    /// model does not use: zero weights, BatchNorm as initialised.
    fn neutral_layer(&mut self, layer: &str, n_in: usize, h: usize, norm: Norm) {
        self.filled(&format!("{layer}.0.weight"), vec![h, n_in], 0.0);
        self.filled(&format!("{layer}.0.bias"), vec![h], 0.0);
        if norm == Norm::Batch {
            for (p, v) in [
                ("weight", 1.0),
                ("bias", 0.0),
                ("running_mean", 0.0),
                ("running_var", 1.0),
            ] {
                self.filled(&format!("{layer}.1.{p}"), vec![h], v);
            }
            self.long(&format!("{layer}.1.num_batches_tracked"), 0);
        }
    }

    fn long(&mut self, name: &str, value: i64) {
        let key = self.storages.len().to_string();
        self.storages.push((key.clone(), value.to_le_bytes().to_vec()));
        self.items.push((
            name.to_string(),
            P::Tensor {
                key,
                shape: Vec::new(),
                long: true,
            },
        ));
    }
}

/// Why scvi-tools cannot hold model `m` the same, if it cannot.
fn refusal(m: &Manifest) -> Option<String> {
    let a = &m.architecture;
    if a.masked_input {
        return Some(
            "reads a presence mask beside the counts (trained on datasets with different genes, or with --gene-dropout); scvi-tools' SCVI has no such input"
                .into(),
        );
    }
    if a.layout.decoder_layers != a.n_layers.max(1) {
        return Some(format!(
            "has a {}-layer encoder and a {}-layer decoder; scvi-tools' n_layers sets both (train with --n-layers 1 to export)",
            a.n_layers, a.layout.decoder_layers
        ));
    }
    None
}

/// The scvi-tools name of each BatchNorm (`<layer>.1`) of the architecture.
fn batch_norms(a: &Architecture, names: &BTreeMap<String, String>) -> Vec<String> {
    if a.norm != Norm::Batch {
        return Vec::new();
    }
    names
        .values()
        .filter_map(|t| t.strip_suffix(".running_mean").map(String::from))
        .collect()
}

/// Writes zoo model `name` as a scvi-tools model in `out` (`out/model.pt`): SCANVI for a model
/// with a classifier head of scvi-tools' shape, SCVI otherwise.
pub fn export(zoo: &Zoo, name: &str, out: &Path, overwrite: bool) -> Result<Report, String> {
    let m = zoo.load(name).map_err(|e| e.to_string())?;
    if let Some(why) = refusal(&m) {
        return Err(format!("model `{name}` {why}; export to scvi-tools refused"));
    }
    if out.exists() && !out.is_dir() {
        return Err(format!(
            "{}: is not a folder; give -o a folder to write model.pt in",
            out.display()
        ));
    }
    let file = out.join("model.pt");
    if file.exists() && !overwrite {
        return Err(format!(
            "{}: already there; pick another -o or add --overwrite",
            file.display()
        ));
    }
    let a = &m.architecture;
    let mut notes = Vec::new();
    let n_labels = a.classifier_labels.len();
    // A classifier head becomes SCANVI's where scvi-tools' has its shape: as many hidden
    // layers as the model (or none: `linear_classifier`).
    let scanvi = n_labels > 0 && (a.layout.classifier_layers == a.n_layers.max(1) || a.layout.classifier_layers == 0);
    if n_labels > 0 && !scanvi {
        notes.push(format!(
            "the classifier head ({n_labels} labels, {} hidden layer(s)) is not exported: scvi-tools' SCANVI gives its classifier as many layers as the model ({}); written as SCVI",
            a.layout.classifier_layers, a.n_layers
        ));
    }
    let class = if scanvi { "SCANVI" } else { "SCVI" };
    let weights_path = zoo.model_dir(name).join(&m.weights.file);
    let at = |e: &dyn std::fmt::Display| format!("{}: {e}", weights_path.display());
    if sha256_file(&weights_path).map_err(|e| e.to_string())? != m.weights.sha256 {
        return Err(at(
            &"does not match the sha256 its manifest gives; the model is damaged",
        ));
    }
    let bytes = std::fs::read(&weights_path).map_err(|e| at(&e))?;
    let weights = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| {
        at(&format!(
            "is not a valid safetensors file ({e}); import or train the model again"
        ))
    })?;
    let names = name_map(a);
    let shapes = expected_shapes(a);
    let (g, h) = (a.n_genes, a.n_hidden);
    let nb = a.batch_categories.len();
    let mut sd = StateDict::default();
    // scvi-tools' order: px_r, the z encoder, the l encoder, the decoder.
    let mut theirs: Vec<(&String, &String)> = names.iter().map(|(o, t)| (t, o)).collect();
    let rank = |t: &str| match t {
        "px_r" => 0,
        t if t.starts_with("library_log_") => 0,
        t if t.starts_with("z_encoder") => 1,
        t if t.starts_with("l_encoder") => 2,
        t if t.starts_with("decoder") => 3,
        t if t.starts_with("classifier") => 4,
        _ => 5,
    };
    theirs.sort_by(|x, y| (rank(x.0), x.0).cmp(&(rank(y.0), y.0)));
    let norms = batch_norms(a, &names);
    let mut l_encoder_done = false;
    for (t, o) in theirs {
        if rank(t) == 4 && !scanvi {
            continue; // SCVI has no classifier (said in the notes)
        }
        if rank(t) == 3 && !l_encoder_done && !a.layout.learned_library {
            l_encoder_done = true;
            // The library-size encoder scvi-tools always builds; unused where the library size
            // is observed (as in every model scmz has), so its weights are neutral.
            let n_in = g + if a.layout.encode_batch { nb } else { 0 };
            let layer = "l_encoder.encoder.fc_layers.Layer 0";
            sd.neutral_layer(layer, n_in, h, a.norm);
            for p in ["mean_encoder", "var_encoder"] {
                sd.filled(&format!("l_encoder.{p}.weight"), vec![1, h], 0.0);
                sd.filled(&format!("l_encoder.{p}.bias"), vec![1], 0.0);
            }
        }
        let view = weights
            .tensor(o)
            .map_err(|_| at(&format!("has no `{o}`; the file does not belong to model `{name}`")))?;
        let want = &shapes[o];
        if view.dtype() != safetensors::Dtype::F32 || view.shape() != want.as_slice() {
            return Err(at(&format!(
                "`{o}` is {:?} {:?}, the model's architecture says F32 {want:?}",
                view.dtype(),
                view.shape()
            )));
        }
        sd.floats(t, want.clone(), view.data());
        if let Some(bn) = t.strip_suffix(".running_var").filter(|b| norms.iter().any(|n| n == b)) {
            sd.long(&format!("{bn}.num_batches_tracked"), 0);
        }
        if t == "decoder.px_scale_decoder.0.bias" {
            // The decoders of dispersions scvi-tools builds whatever the settings, and of
            // zero-inflation when the model has none: unused by this model's settings.
            sd.filled("decoder.px_r_decoder.weight", vec![g, h], 0.0);
            sd.filled("decoder.px_r_decoder.bias", vec![g], 0.0);
            if a.likelihood != Likelihood::Zinb {
                sd.filled("decoder.px_dropout_decoder.weight", vec![g, h], 0.0);
                sd.filled("decoder.px_dropout_decoder.bias", vec![g], 0.0);
            }
        }
    }
    if scanvi {
        // What SCANVI builds for training on unlabelled cells (a second latent layer given the
        // label, and the label prior): unused by its latents and predictions, so neutral.
        sd.filled("y_prior", vec![1, n_labels], 1.0 / n_labels as f32);
        let l = a.n_latent;
        for (part, layers, heads) in [
            (
                "encoder_z2_z1",
                "encoder_z2_z1.encoder",
                ["mean_encoder", "var_encoder"],
            ),
            (
                "decoder_z1_z2",
                "decoder_z1_z2.decoder",
                ["mean_decoder", "var_decoder"],
            ),
        ] {
            for i in 0..a.n_layers.max(1) {
                let layer = format!("{layers}.fc_layers.Layer {i}");
                let n_in = if i == 0 { l } else { h } + n_labels;
                sd.neutral_layer(&layer, n_in, h, a.norm);
            }
            for head in heads {
                sd.filled(&format!("{part}.{head}.weight"), vec![l, h], 0.0);
                sd.filled(&format!("{part}.{head}.bias"), vec![l], 0.0);
            }
        }
    }
    // No `pyro_param_store`: scvi-tools 1.4 saves one and reads it only when there (1.0 refuses
    // it as an unexpected key of the state dict).

    let genes: Vec<P> = m.genes.names.iter().map(|n| s(n)).collect();
    let n_cells: usize = m.datasets.iter().map(|d| d.n_cells).sum();
    let (batch_mapping, batch_key) = match &m.training.batch_key {
        Some(k) if nb > 0 => (a.batch_categories.iter().map(|c| s(c)).collect(), s(k)),
        _ => (vec![P::Int(0)], s("_scvi_batch")),
    };
    let label_key = m.training.label_key.clone().unwrap_or_else(|| "labels".into());
    // The unlabelled category scvi-tools adds after the labels: one that is not a label.
    let unlabeled = ["Unknown", "unlabeled", "scmz_unlabeled"]
        .into_iter()
        .find(|u| !a.classifier_labels.iter().any(|c| c == u))
        .unwrap_or("scmz_unlabeled_category")
        .to_string();
    let mut setup = vec![("layer", P::None)];
    if scanvi {
        setup.push(("labels_key", s(&label_key)));
        setup.push(("unlabeled_category", s(&unlabeled)));
    }
    setup.push((
        "batch_key",
        match &m.training.batch_key {
            Some(k) if nb > 0 => s(k),
            _ => P::None,
        },
    ));
    if !scanvi {
        setup.push(("labels_key", P::None));
    }
    setup.extend([
        ("size_factor_key", P::None),
        ("categorical_covariate_keys", P::None),
        ("continuous_covariate_keys", P::None),
    ]);
    let field = |attr: P, state: P, summary: P| {
        dict(vec![
            ("data_registry", attr),
            ("state_registry", state),
            ("summary_stats", summary),
        ])
    };
    let obs_field = |key: &str| dict(vec![("attr_name", s("obs")), ("attr_key", s(key))]);
    let registry = dict(vec![
        ("scvi_version", s(FORMAT_VERSION)),
        ("model_name", s(class)),
        ("setup_args", dict(setup)),
        (
            "field_registries",
            dict(vec![
                (
                    "X",
                    field(
                        dict(vec![("attr_name", s("X")), ("attr_key", P::None)]),
                        dict(vec![
                            ("n_obs", P::Int(n_cells as i64)),
                            ("n_vars", P::Int(g as i64)),
                            ("column_names", P::List(m.genes.names.iter().map(|n| s(n)).collect())),
                        ]),
                        dict(vec![("n_vars", P::Int(g as i64)), ("n_cells", P::Int(n_cells as i64))]),
                    ),
                ),
                (
                    "batch",
                    field(
                        obs_field("_scvi_batch"),
                        dict(vec![
                            ("categorical_mapping", P::List(batch_mapping)),
                            ("original_key", batch_key),
                        ]),
                        dict(vec![("n_batch", P::Int(nb.max(1) as i64))]),
                    ),
                ),
                (
                    "labels",
                    if scanvi {
                        let mut mapping: Vec<P> = a.classifier_labels.iter().map(|c| s(c)).collect();
                        mapping.push(s(&unlabeled));
                        field(
                            obs_field("_scvi_labels"),
                            dict(vec![
                                ("categorical_mapping", P::List(mapping)),
                                ("original_key", s(&label_key)),
                                ("unlabeled_category", s(&unlabeled)),
                            ]),
                            dict(vec![("n_labels", P::Int(n_labels as i64 + 1))]),
                        )
                    } else {
                        field(
                            obs_field("_scvi_labels"),
                            dict(vec![
                                ("categorical_mapping", P::List(vec![P::Int(0)])),
                                ("original_key", s("_scvi_labels")),
                            ]),
                            dict(vec![("n_labels", P::Int(1))]),
                        )
                    },
                ),
                (
                    "size_factor",
                    field(P::Dict(Vec::new()), P::Dict(Vec::new()), P::Dict(Vec::new())),
                ),
                (
                    "extra_categorical_covs",
                    field(
                        P::Dict(Vec::new()),
                        P::Dict(Vec::new()),
                        dict(vec![("n_extra_categorical_covs", P::Int(0))]),
                    ),
                ),
                (
                    "extra_continuous_covs",
                    field(
                        P::Dict(Vec::new()),
                        P::Dict(Vec::new()),
                        dict(vec![("n_extra_continuous_covs", P::Int(0))]),
                    ),
                ),
            ]),
        ),
        ("setup_method_name", s("setup_anndata")),
    ]);
    let (batch_norm, layer_norm) = match a.norm {
        Norm::Batch => ("both", "none"),
        Norm::Layer => ("none", "both"),
    };
    let init = dict(vec![
        (
            "kwargs",
            dict(vec![(
                "kwargs",
                dict(
                    vec![
                        ("encode_covariates", P::Bool(a.layout.encode_batch)),
                        ("deeply_inject_covariates", P::Bool(a.layout.batch_every_layer)),
                        ("use_batch_norm", s(batch_norm)),
                        ("use_layer_norm", s(layer_norm)),
                    ]
                    .into_iter()
                    .chain(scanvi.then(|| ("latent_distribution", s("normal"))))
                    .collect(),
                ),
            )]),
        ),
        (
            "non_kwargs",
            dict(
                [
                    ("n_hidden", P::Int(h as i64)),
                    ("n_latent", P::Int(a.n_latent as i64)),
                    ("n_layers", P::Int(a.n_layers.max(1) as i64)),
                    ("dropout_rate", P::Float(a.dropout)),
                    (
                        "dispersion",
                        s(if a.layout.dispersion_per_batch {
                            "gene-batch"
                        } else {
                            "gene"
                        }),
                    ),
                    ("gene_likelihood", s(&a.likelihood.to_string())),
                    ("use_observed_lib_size", P::Bool(!a.layout.learned_library)),
                ]
                .into_iter()
                .chain(if scanvi {
                    vec![("linear_classifier", P::Bool(a.layout.classifier_layers == 0))]
                } else {
                    vec![("latent_distribution", s("normal"))]
                })
                .collect(),
            ),
        ),
    ]);
    let attr = dict(vec![
        ("init_params_", init),
        ("is_trained_", P::Bool(true)),
        ("registry_", registry),
        ("get_normalized_function_name_", s("get_normalized_expression")),
    ]);
    let root = dict(vec![
        ("model_state_dict", P::OrderedDict(sd.items)),
        ("var_names", P::List(genes)),
        ("attr_dict", attr),
    ]);
    let pickle = Pickler::default().finish(&root);

    // The torch zip: every entry under one folder, stored, as torch writes them.
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::FileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let mut entries: Vec<(String, &[u8])> = vec![
        ("model/data.pkl".into(), &pickle),
        ("model/byteorder".into(), b"little"),
    ];
    for (k, b) in &sd.storages {
        entries.push((format!("model/data/{k}"), b));
    }
    entries.push(("model/version".into(), b"3\n"));
    let ofile = |e: &dyn std::fmt::Display| format!("{}: {e}", file.display());
    for (n, b) in entries {
        zip.start_file(n, opts).map_err(|e| ofile(&e))?;
        zip.write_all(b).map_err(|e| ofile(&e))?;
    }
    let data = zip.finish().map_err(|e| ofile(&e))?.into_inner();
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    crate::files::write_atomic(&file, &data).map_err(|e| e.to_string())?;
    Ok(Report { file, class, notes })
}
