//! Model files: the variables of a model as safetensors, under PyTorch's names and layouts
//! whatever layout a variable has in memory. The encoder's first weight is held transposed in
//! memory (see `layers::InputLinear`); files keep it outputs x inputs, as they always have, so
//! models, checkpoints and optimiser states written before and after read the same.

use std::collections::HashMap;
use std::path::Path;

use tch::{nn, Device, Tensor};

/// Suffix of a variable held transposed in memory (its file name drops it).
pub const TRANSPOSED: &str = "_t";

/// A variable's name in model files, and whether it is held transposed in memory.
pub fn file_name(name: &str) -> (&str, bool) {
    match name.strip_suffix(TRANSPOSED) {
        Some(base) => (base, true),
        None => (name, false),
    }
}

/// A copy on the CPU of variable `name` as model files keep it: PyTorch's layout, a linear
/// layer's weight outputs x inputs (so files written before the first layer was held transposed,
/// and after, read the same).
pub fn to_file(name: &str, t: &Tensor) -> (String, Tensor) {
    let (base, transposed) = file_name(name);
    let t = t.detach().to_device(Device::Cpu);
    (
        base.to_string(),
        if transposed { t.tr().contiguous() } else { t.copy() },
    )
}

/// The tensor a model file keeps under `name`'s file name, in memory layout; an error names the
/// file and the variable when it is missing or its shape differs from `like`.
pub fn from_file(file: &HashMap<String, Tensor>, path: &Path, name: &str, like: &Tensor) -> anyhow::Result<Tensor> {
    let (base, transposed) = file_name(name);
    let t = file.get(base).ok_or_else(|| {
        anyhow::anyhow!(
            "{}: no `{base}`; the file does not belong to this model",
            path.display()
        )
    })?;
    // Shapes as the file has them.
    let mut want = like.size();
    if transposed {
        want.reverse();
    }
    anyhow::ensure!(
        t.size() == want,
        "{}: `{base}` has shape {:?}, the model expects {want:?}",
        path.display(),
        t.size(),
    );
    Ok(if transposed { t.tr() } else { t.shallow_clone() })
}

/// Every variable of `vs` (weights and BatchNorm statistics) as model files keep them.
pub fn stored_variables(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    tch::no_grad(|| {
        let mut v: Vec<_> = vs.variables().iter().map(|(n, t)| to_file(n, t)).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    })
}

/// Reads a safetensors file scmz wrote (weights, moments, reference), with a damaged or foreign
/// file refused in one line that names it, and every floating-point tensor checked to be finite.
pub fn read_safetensors(path: &Path) -> anyhow::Result<Vec<(String, Tensor)>> {
    use safetensors::SafeTensorError as E;
    let named = Tensor::read_safetensors(path).map_err(|e| {
        let why = match &e {
            tch::TchError::Io(io) => scmz::files::describe(io),
            tch::TchError::SafeTensorError { err, .. } => match err {
                E::IoError(io) => scmz::files::describe(io),
                E::HeaderTooSmall | E::InvalidHeaderLength | E::MetadataIncompleteBuffer => {
                    "is cut short (its header or data end early)".into()
                }
                E::HeaderTooLarge => "has a header larger than safetensors allows".into(),
                E::InvalidHeader | E::InvalidHeaderStart | E::InvalidHeaderDeserialization | E::JsonError(_) => {
                    "has a header that is not safetensors' JSON".into()
                }
                E::TensorInvalidInfo | E::InvalidOffset(_) | E::InvalidTensorView(..) | E::ValidationOverflow => {
                    "describes a tensor its data does not hold (shape, type or offsets do not fit)".into()
                }
                other => format!("is not a valid safetensors file ({other:?})"),
            },
            other => format!("cannot be read ({other})"),
        };
        anyhow::anyhow!(
            "{}: {why}; the file is damaged: train or install the model again",
            path.display()
        )
    })?;
    for (name, t) in &named {
        if t.is_floating_point() && tch::no_grad(|| t.isfinite().all().int64_value(&[])) == 0 {
            anyhow::bail!(
                "{}: tensor `{}` holds NaN or infinite values; the model is damaged: train or install it again",
                path.display(),
                scmz::files::printable(name)
            );
        }
    }
    Ok(named)
}

/// Loads a model file (from `stored_variables`, or a `VarStore` save of the same names) into `vs`.
pub fn load_stored(vs: &nn::VarStore, path: &Path) -> anyhow::Result<()> {
    let file: HashMap<String, Tensor> = read_safetensors(path)?.into_iter().collect();
    tch::no_grad(|| {
        for (name, mut t) in vs.variables() {
            let src = from_file(&file, path, &name, &t)?;
            t.copy_(&src);
        }
        Ok(())
    })
}

/// Named tensors as safetensors, whole or not at all (`files::AtomicFile`: a full disk leaves
/// the previous file and no temporary one).
pub fn write_atomic(named: &[(String, Tensor)], path: &Path) -> anyhow::Result<()> {
    let f = scmz::files::AtomicFile::create(path)?;
    Tensor::write_safetensors(named, f.path())
        .map_err(|e| anyhow::anyhow!("{}: cannot write: {}", path.display(), tch_io_reason(&e)))?;
    f.commit()?;
    Ok(())
}

/// The reason of a failed tch write, as the OS says it where there is one.
fn tch_io_reason(e: &tch::TchError) -> String {
    match e {
        tch::TchError::Io(io)
        | tch::TchError::SafeTensorError {
            err: safetensors::SafeTensorError::IoError(io),
            ..
        } => scmz::files::describe(io),
        other => other.to_string(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::model::vae::Vae;
    use crate::train::adam::Adam;
    use scmz::zoo::manifest::Architecture;

    fn model() -> (nn::VarStore, Vae) {
        let arch = Architecture {
            n_genes: 30,
            n_hidden: 8,
            n_latent: 3,
            n_layers: 2,
            dropout: 0.1,
            norm: scmz::spec::Norm::Batch,
            likelihood: scmz::spec::Likelihood::Nb,
            batch_categories: vec!["a".into(), "b".into()],
            masked_input: true,
            classifier_labels: Vec::new(),
            layout: Default::default(),
        };
        let vs = nn::VarStore::new(Device::Cpu);
        let vae = Vae::new(&vs.root(), arch);
        (vs, vae)
    }

    /// Files keep PyTorch's names and layouts (the first weight outputs x inputs, as files
    /// written before it was held transposed); weights and optimiser moments read back exactly.
    #[test]
    fn files_keep_pytorch_layout_and_read_back() {
        let _rng = crate::TORCH_RNG_TESTS.lock().unwrap_or_else(|e| e.into_inner());
        tch::manual_seed(1);
        let dir = tempfile::tempdir().unwrap();
        let (vs, _vae) = model();
        let stored = stored_variables(&vs);
        let first = stored
            .iter()
            .find(|(n, _)| n == "encoder.0.linear.weight")
            .expect("first weight");
        // 8 hidden x (30 genes + 30 mask + 2 batches).
        assert_eq!(first.1.size(), [8, 62]);
        assert!(stored.iter().all(|(n, _)| !n.ends_with(TRANSPOSED)));
        let held = &vs.variables()["encoder.0.linear.weight_t"];
        assert!(first.1.equal(&held.tr()));
        let path = dir.path().join("w.safetensors");
        write_atomic(&stored, &path).unwrap();
        tch::manual_seed(2);
        let (other, _) = model();
        assert!(!other.variables()["encoder.0.linear.weight_t"].equal(held));
        load_stored(&other, &path).unwrap();
        for (name, t) in vs.variables() {
            assert!(t.equal(&other.variables()[&name]), "{name}");
        }
        // Moments: one step on a made-up gradient, then a fresh optimiser loads the snapshot.
        let mut opt = Adam::new(&vs, 1e-3, 0.0, 1e-8);
        let grads: Vec<Tensor> = opt.params().iter().map(|p| p.randn_like()).collect();
        opt.step(&grads);
        let moments = dir.path().join("o.safetensors");
        write_atomic(&opt.snapshot(), &moments).unwrap();
        let file: HashMap<String, Tensor> = Tensor::read_safetensors(&moments).unwrap().into_iter().collect();
        assert_eq!(file["m.encoder.0.linear.weight"].size(), [8, 62]);
        let mut again = Adam::new(&other, 1e-3, 0.0, 1e-8);
        again.load(&moments).unwrap();
        for ((a, b), name) in again.snapshot().iter().zip(opt.snapshot()).zip(0..) {
            assert_eq!(a.0, b.0);
            assert!(a.1.equal(&b.1), "{name}: {}", a.0);
        }
    }

    /// The names and shapes scvi-tools' models are imported under (`expected_shapes`) are those
    /// of the model the engine builds, for scmz's own layout and scvi-tools' (layers, a learned
    /// library size, a dispersion per batch, a classifier, zero inflation, layer norm).
    #[test]
    fn imported_shapes_are_those_of_the_model_built() {
        let _rng = crate::TORCH_RNG_TESTS.lock().unwrap_or_else(|e| e.into_inner());
        use scmz::zoo::manifest::{Architecture, Layout};
        let base = Architecture {
            n_genes: 30,
            n_hidden: 8,
            n_latent: 3,
            n_layers: 1,
            dropout: 0.1,
            norm: scmz::spec::Norm::Batch,
            likelihood: scmz::spec::Likelihood::Nb,
            batch_categories: vec!["a".into(), "b".into()],
            masked_input: false,
            classifier_labels: Vec::new(),
            layout: Layout::default(),
        };
        let scvi = Layout {
            decoder_layers: 2,
            encode_batch: false,
            batch_every_layer: true,
            classifier_layers: 2,
            learned_library: true,
            dispersion_per_batch: true,
        };
        let variants = [
            base.clone(),
            Architecture {
                n_layers: 2,
                layout: scvi.clone(),
                classifier_labels: vec!["x".into(), "y".into(), "z".into()],
                ..base.clone()
            },
            Architecture {
                n_layers: 2,
                likelihood: scmz::spec::Likelihood::Zinb,
                norm: scmz::spec::Norm::Layer,
                batch_categories: Vec::new(),
                layout: Layout {
                    encode_batch: true,
                    ..scvi.clone()
                },
                ..base.clone()
            },
        ];
        for arch in variants {
            let vs = nn::VarStore::new(Device::Cpu);
            let _vae = Vae::new(&vs.root(), arch.clone());
            let built: std::collections::BTreeMap<String, Vec<usize>> = stored_variables(&vs)
                .into_iter()
                .map(|(n, t)| (n, t.size().iter().map(|&d| d as usize).collect()))
                .collect();
            assert_eq!(built, scmz::scvi_tools::import::expected_shapes(&arch), "{arch:?}");
        }
    }

    /// A file of another model fails naming the file and the variable.
    #[test]
    fn a_file_of_another_model_is_refused_by_name() {
        let _rng = crate::TORCH_RNG_TESTS.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let (vs, _vae) = model();
        let mut stored = stored_variables(&vs);
        stored.retain(|(n, _)| n != "px_log_theta");
        write_atomic(&stored, &path).unwrap();
        let err = load_stored(&vs, &path).unwrap_err().to_string();
        assert!(err.contains("w.safetensors") && err.contains("`px_log_theta`"), "{err}");
        let mut stored = stored_variables(&vs);
        stored.retain(|(n, _)| n != "encoder.0.linear.weight");
        stored.push((
            "encoder.0.linear.weight".into(),
            Tensor::zeros([8, 61], tch::kind::FLOAT_CPU),
        ));
        write_atomic(&stored, &path).unwrap();
        let err = load_stored(&vs, &path).unwrap_err().to_string();
        assert!(
            err.contains("`encoder.0.linear.weight` has shape [8, 61], the model expects [8, 62]"),
            "{err}"
        );
    }
}
