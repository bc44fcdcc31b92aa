//! The end of a run: the model folder (weights, the reference sample labels are transferred
//! from, the manifest, the history) written in the zoo's staging area and installed in one rename.

use std::path::{Path, PathBuf};

use tch::{Device, Tensor};

use scmz::data::Dataset;
use scmz::events::Event;
use scmz::spec::TrainSpec;
use scmz::zoo::manifest::{self, FileRef, Genes, Manifest, Metrics, Reference, Training, TrainingData};
use scmz::zoo::sha256_file;

use crate::apply::encode::{encode_rows, read_rows};
use crate::model::stored::{stored_variables, write_atomic};
use crate::model::vae::Vae;
use crate::train::covariates::Covariates;
use crate::train::epoch::{Trained, Validated};
use crate::train::loader::is_validation;
use crate::train::setup::Run;

impl Run {
    /// The model folder, written in the zoo's staging area and installed in one rename; then the
    /// run's folder goes. `last`: the last epoch's results and the number of epochs run by then.
    pub fn save(
        &mut self,
        last: Option<(&Trained, &Validated, usize)>,
        epochs_run: usize,
        seconds: f64,
    ) -> anyhow::Result<()> {
        let name = self.args.name.clone();
        let staging = self.zoo.staging_dir(&name)?;
        let _staging_pending = scmz::files::Pending::new(&staging);
        let model_dir = match self.write_model(&staging, last, epochs_run, seconds) {
            Ok(d) => d,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&staging);
                self.log.write(Event::Error { message: e.to_string() })?;
                return Err(e);
            }
        };
        self.log.write(Event::End {
            status: "done".into(),
            best_epoch: self.state.best_epoch,
            best_val_elbo: self.state.best_val,
            model: Some(model_dir.display().to_string()),
        })?;
        let history = std::fs::read(self.run_dir.join("events.jsonl"))?;
        scmz::files::write_atomic(&model_dir.join("history.jsonl"), &history)?;
        std::fs::remove_dir_all(&self.run_dir)?;
        crate::train::checkpoint::remove_lock(&self.run_dir, &self.args.name);
        say!(
            "model `{name}` saved in {} ({epochs_run} epochs, best validation ELBO {:.2} at epoch {})",
            model_dir.display(),
            self.state.best_val.unwrap_or(f64::NAN),
            self.state.best_epoch.map_or(0, |e| e + 1)
        );
        Ok(())
    }

    fn write_model(
        &self,
        staging: &Path,
        last: Option<(&Trained, &Validated, usize)>,
        epochs_run: usize,
        seconds: f64,
    ) -> anyhow::Result<PathBuf> {
        let (args, dev, path) = (&self.args, self.dev, &self.path);
        let weights = staging.join("weights.safetensors");
        write_atomic(&stored_variables(&self.vs), &weights)?;
        let reference = reference_sample(&self.vae, &self.ds, &self.cov, args, dev, staging)?;
        std::fs::copy(self.run_dir.join("events.jsonl"), staging.join("history.jsonl"))?;
        let info = self.ds.info();
        let g = &info.genes;
        let species = scmz::genes::GeneList::from_table(&args.name, g).species;
        let manifest = Manifest {
            schema_version: manifest::SCHEMA_VERSION,
            name: args.name.clone(),
            version: 1,
            created: scmz::events::now_rfc3339(),
            scmz_version: env!("CARGO_PKG_VERSION").to_string(),
            architecture: self.arch.clone(),
            training: Training {
                max_epochs: self.max_epochs,
                epochs_run,
                best_epoch: self.state.best_epoch,
                batch_size: args.batch_size,
                lr: args.lr,
                lr_warmup_steps: args.lr_warmup,
                // The cells the statistics came from: no more than there are to train on, and
                // none for layer normalisation, which keeps no statistics.
                norm_cells: match self.arch.norm {
                    scmz::spec::Norm::Layer => 0,
                    scmz::spec::Norm::Batch => args.norm_cells.min(self.n_train),
                },
                weight_decay: args.weight_decay,
                kl_warmup_epochs: args.kl_warmup,
                gene_dropout: args.gene_dropout,
                seed: args.seed,
                device: format!("{dev:?}").to_lowercase(),
                batch_key: args.batch_key.clone(),
                label_key: args.label_key.clone(),
                seconds,
                // A resume saved as it is ran no epoch: the speed of the last epoch on record.
                cells_per_s: match last {
                    Some(l) => l.0.cells_per_s,
                    None => scmz::events::read_log(&self.run_dir.join("events.jsonl"))
                        .unwrap_or_default()
                        .iter()
                        .rev()
                        .find_map(|r| match r.event {
                            scmz::events::Event::Epoch { cells_per_s, .. } => Some(cells_per_s),
                            _ => None,
                        })
                        .unwrap_or(0.0),
                },
            },
            genes: Genes {
                names: g.index.clone(),
                gene_ids: g.gene_ids().map(<[String]>::to_vec),
                symbols: g.symbols().map(<[String]>::to_vec),
                species,
            },
            datasets: vec![TrainingData {
                path: std::fs::canonicalize(path)
                    .unwrap_or(path.clone())
                    .display()
                    .to_string(),
                sha256: if path.is_file() {
                    sha256_file(path)?
                } else {
                    String::new()
                },
                n_cells: info.n_cells,
                matrix: info.matrix.clone(),
            }],
            metrics: Metrics {
                best_val_elbo: self.state.best_val,
                final_train: last.map(|l| l.0.terms),
                final_val: last.map(|l| l.1.terms),
                classifier: classifier_metrics(&self.vae, &self.ds, &self.cov, args.seed, dev)?,
            },
            weights: FileRef {
                file: "weights.safetensors".into(),
                sha256: sha256_file(&weights)?,
            },
            reference: Some(reference),
            imported: None,
        };
        scmz::files::write_atomic(&staging.join("manifest.json"), &serde_json::to_vec_pretty(&manifest)?)?;
        Ok(self.zoo.install(staging, &args.name)?)
    }
}

/// Latent means of up to `reference_cells` training cells (every k-th), with their labels.
#[allow(clippy::too_many_arguments)]
fn reference_sample(
    vae: &Vae,
    ds: &Dataset,
    cov: &Covariates,
    args: &TrainSpec,
    dev: Device,
    dir: &Path,
) -> anyhow::Result<Reference> {
    let n = ds.n_cells();
    // Cells without a label (a missing value, or the unlabelled category) are left out of the
    // reference the labels are transferred from.
    let unlabelled = |i: usize| match (&cov.classes, &cov.labels) {
        (Some(c), _) => c[i] < 0,
        (None, Some((_, codes))) => codes[i] < 0,
        (None, None) => false,
    };
    let train_rows: Vec<usize> = (0..n)
        .filter(|&i| !is_validation(args.seed, i) && !unlabelled(i))
        .collect();
    let step = (train_rows.len() / args.reference_cells.max(1)).max(1);
    let chosen: Vec<usize> = train_rows
        .iter()
        .step_by(step)
        .take(args.reference_cells)
        .copied()
        .collect();
    let latent = encode_rows(vae, ds, cov, &chosen, dev)?;
    let t = Tensor::from_slice(&latent).view([chosen.len() as i64, args.n_latent as i64]);
    let file = dir.join("reference.safetensors");
    let counts = read_rows(ds, &chosen)?;
    let indptr = Tensor::from_slice(&counts.indptr.iter().map(|&v| v as i64).collect::<Vec<_>>());
    let indices = Tensor::from_slice(&counts.indices.iter().map(|&v| v as i64).collect::<Vec<_>>());
    let data = Tensor::from_slice(&counts.data);
    Tensor::write_safetensors(
        &[
            ("latent", &t),
            ("counts_indptr", &indptr),
            ("counts_indices", &indices),
            ("counts_data", &data),
        ],
        &file,
    )?;
    Ok(Reference {
        file: "reference.safetensors".into(),
        sha256: sha256_file(&file)?,
        n_cells: chosen.len(),
        cell_ids: chosen.iter().map(|&i| ds.info().cell_ids[i].clone()).collect(),
        counts: true,
        labels: cov.labels.as_ref().map(|(cats, codes)| {
            chosen
                .iter()
                .map(|&i| cats.get(codes[i].max(0) as usize).cloned().unwrap_or_default())
                .collect()
        }),
    })
}

/// The classifier head on the validation cells that have a label (None without a classifier).
fn classifier_metrics(
    vae: &Vae,
    ds: &Dataset,
    cov: &Covariates,
    seed: u64,
    dev: Device,
) -> anyhow::Result<Option<manifest::ClassifierMetrics>> {
    let Some(classes) = cov.classes.as_ref().filter(|_| vae.arch.classifier_labels.len() > 1) else {
        return Ok(None);
    };
    let rows: Vec<usize> = (0..ds.n_cells())
        .filter(|&i| is_validation(seed, i) && classes[i] >= 0)
        .collect();
    if rows.is_empty() {
        return Ok(None);
    }
    let latent = encode_rows(vae, ds, cov, &rows, dev)?;
    let mu = Tensor::from_slice(&latent).view([rows.len() as i64, vae.arch.n_latent as i64]);
    let (pred, conf) = vae.predict(&mu).expect("a classifier");
    let correct: Vec<bool> = pred.iter().zip(&rows).map(|(&k, &r)| k == classes[r]).collect();
    let accuracy = correct.iter().filter(|&&c| c).count() as f64 / rows.len() as f64;
    let ece = manifest::expected_calibration_error(&conf, &correct);
    say!(
        "classifier on {} held-out labelled cells: accuracy {accuracy:.3}, expected calibration error {ece:.3}",
        rows.len()
    );
    Ok(Some(manifest::ClassifierMetrics {
        n_cells: rows.len(),
        accuracy,
        ece,
    }))
}
