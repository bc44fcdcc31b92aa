//! A run before its first epoch: settings, data and zoo checked (all that `--check-only` does),
//! then the run folder locked, the covariates read, the model built or resumed from its
//! checkpoint and the run's start recorded in its event log.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use tch::{nn, Device};

use scmz::data::{Dataset, OpenOptions};
use scmz::events::{Event, EventLog};
use scmz::spec::{DeviceChoice, Norm, TrainSpec};
use scmz::zoo::manifest::Architecture;
use scmz::zoo::Zoo;

use crate::model::stored::load_stored;
use crate::model::vae::{Pass, Vae};
use crate::train::adam::Adam;
use crate::train::checkpoint::{lock_run, refuse_links, Checkpoint, DataPrint};
use crate::train::covariates::{categorical, check_columns, classes, Covariates, Masks};
use crate::train::loader::is_validation;
use crate::train::trace::Trace;

/// Everything a run holds between its epochs.
pub(crate) struct Run {
    pub args: TrainSpec,
    /// The dataset's path, for messages and the manifest.
    pub path: PathBuf,
    pub dev: Device,
    pub zoo: Zoo,
    /// Shared with the reader threads.
    pub ds: Arc<Dataset>,
    pub cov: Arc<Covariates>,
    pub arch: Architecture,
    pub max_epochs: usize,
    /// Cells on the training side of the seeded split.
    pub n_train: usize,
    pub first_epoch: usize,
    pub vs: nn::VarStore,
    pub vae: Vae,
    pub opt: Adam,
    pub trace: Option<Trace>,
    pub train_pass: Pass,
    pub state: Checkpoint,
    /// Seconds of training before this session (from the checkpoint).
    pub seconds_before: f64,
    pub run_dir: PathBuf,
    pub log: EventLog,
    /// One engine per run folder, held until this process ends.
    _lock: std::fs::File,
}

pub fn device(choice: DeviceChoice) -> anyhow::Result<Device> {
    Ok(match choice {
        DeviceChoice::Auto => Device::cuda_if_available(),
        DeviceChoice::Cpu => Device::Cpu,
        DeviceChoice::Cuda => {
            if !tch::Cuda::is_available() {
                bail!("--device cuda: libtorch sees no CUDA device here; use --device cpu or auto");
            }
            Device::Cuda(0)
        }
    })
}

/// The dataset, opened and checked against the settings; `Ok(None)` for `--check-only` once all
/// is checked (so `--detach` refuses what the job would).
pub(crate) fn checked(args: &TrainSpec) -> anyhow::Result<Option<(Dataset, Zoo, Device)>> {
    scmz::zoo::check_name(&args.name).map_err(anyhow::Error::msg)?;
    if args.resume && args.restart {
        bail!("--resume continues the interrupted run and --restart discards it: give one of them");
    }
    if args.data.len() > 1 {
        bail!("train takes one dataset; combine several with `scmz merge A B ... -o merged.h5ad` first");
    }
    let path = &args.data[0];
    // Before anything is written.
    let dev = device(args.device)?;
    let open = OpenOptions {
        layer: args.layer.clone(),
        genome: args.genome.clone(),
        ..Default::default()
    };
    let zoo = Zoo::new(args.zoo.clone().unwrap_or_else(scmz::zoo::default_zoo));
    if zoo.model_dir(&args.name).join("manifest.json").exists() && !args.overwrite {
        bail!(
            "model `{}` already exists in {}; pass --overwrite to replace it",
            args.name,
            zoo.dir.display()
        );
    }
    let ds = Dataset::open_with(path, &open)?;
    check_columns(&ds, args)?;
    let n_train = check_split(&ds, args)?;
    if args.batch_size < 2 && args.norm == Norm::Batch {
        bail!("--batch-size 1: BatchNorm needs at least 2 cells a minibatch; use 2 or more, or --norm layer");
    }
    if !args.check_only {
        return Ok(Some((ds, zoo, dev)));
    }
    if !args.force {
        ds.require_counts()
            .map_err(|e| anyhow::anyhow!("{e}; pass --force to train anyway"))?;
    }
    let run_dir = zoo.run_dir(&args.name);
    refuse_links(&run_dir, &args.name)?;
    if run_dir.exists() {
        drop(lock_run(&run_dir, &args.name)?);
        refuse_interrupted(&run_dir, args)?;
        // `--detach` refuses a resume with other settings before it queues the job (the data
        // is compared when the job starts, once `--genes` has selected).
        if args.resume && run_dir.join("checkpoint.json").exists() {
            checked_checkpoint(&run_dir, args, None)?;
            return Ok(None);
        }
    }
    // In the terminal of `--detach` too, not only in the job's log. (Before `--genes`, which
    // selects genes, not cells.)
    warn_long_warmup(args, n_train, epochs_for(args, ds.n_cells()));
    Ok(None)
}

/// `--epochs`, or by default as many as make about 8M cell passes (scvi-tools' rule), 1 to 400.
fn epochs_for(args: &TrainSpec, n_cells: usize) -> usize {
    args.epochs
        .unwrap_or_else(|| ((20_000.0 / n_cells as f64 * 400.0).round() as usize).clamp(1, 400))
}

/// A step-size warm-up longer than the whole run (`n_train` cells an epoch) is warned about: the
/// step size never reaches `--lr`.
fn warn_long_warmup(args: &TrainSpec, n_train: usize, max_epochs: usize) {
    let steps = n_train.div_ceil(args.batch_size) * max_epochs;
    if args.lr_warmup > steps {
        say!(
            "warning: --lr-warmup {} steps is longer than the whole run ({max_epochs} epoch{} of {} steps): the step size never reaches --lr {}; use a shorter warm-up or more epochs",
            args.lr_warmup,
            if max_epochs == 1 { "" } else { "s" },
            steps / max_epochs,
            args.lr
        );
    }
}

/// An interrupted run of the name (its checkpoint) is continued or discarded only when asked.
fn refuse_interrupted(run_dir: &std::path::Path, args: &TrainSpec) -> anyhow::Result<()> {
    let json = run_dir.join("checkpoint.json");
    if !json.exists() || args.resume || args.restart {
        return Ok(());
    }
    // A damaged checkpoint is still an interrupted run: --restart discards it.
    let done = std::fs::read(&json)
        .ok()
        .and_then(|b| serde_json::from_slice::<Checkpoint>(&b).ok())
        .map_or(String::new(), |c| format!(" (epoch {} done)", c.epoch + 1));
    bail!(
        "an interrupted run of `{}` exists{done}; pass --resume to continue it or --restart to start over",
        args.name
    )
}

/// Enough cells on each side of the seeded 90/10 split for a step and a validation: a file of
/// one or two cells otherwise "trains" a model that learned nothing. Gives the cells to train on.
fn check_split(ds: &Dataset, args: &TrainSpec) -> anyhow::Result<usize> {
    let n_cells = ds.n_cells();
    let n_val = (0..n_cells).filter(|&i| is_validation(args.seed, i)).count();
    let n_train = n_cells - n_val;
    // A minibatch of one cell is left out where BatchNorm needs two.
    let least = if args.norm == Norm::Batch { 2 } else { 1 };
    if n_train < least || n_val == 0 {
        bail!(
            "{}: {n_cells} cell{}: {n_train} to train on and {n_val} held out for validation (1 in 10, by --seed); training needs at least {least} and 1: use a file with more cells (10 or more)",
            ds.path().display(),
            if n_cells == 1 { "" } else { "s" }
        );
    }
    Ok(n_train)
}

impl Run {
    /// The run, ready for its first epoch (or the one after its checkpoint with `--resume`).
    pub fn start(args: TrainSpec, mut ds: Dataset, zoo: Zoo, dev: Device) -> anyhow::Result<Run> {
        let path = args.data[0].clone();
        let dup = scmz::data::dataset::GeneTable::duplicates(&ds.info().cell_ids);
        if !dup.is_empty() {
            say!(
                "warning: {}: {} duplicated cell ids in obs ({}); labels and latents keyed by cell id will mix them up",
                path.display(),
                dup.len(),
                scmz::files::printable(&scmz::data::dataset::preview(&dup, 3))
            );
        }
        if let Some(keep) = args.genes.keep(&ds)? {
            let n = keep.iter().filter(|&&k| k).count();
            say!("genes: {n} of {} ({})", ds.n_genes(), args.genes);
            ds.keep_genes(&keep);
        }
        if !args.force {
            ds.require_counts()
                .map_err(|e| anyhow::anyhow!("{e}; pass --force to train anyway"))?;
        }
        let data = DataPrint::of(&ds);
        let run_dir = zoo.run_dir(&args.name);
        // Before --restart may remove the folder.
        let lock = lock_run(&run_dir, &args.name)?;
        let ckpt_json = run_dir.join("checkpoint.json");
        let resuming = ckpt_json.exists() && args.resume;
        if args.resume && !resuming {
            say!(
                "--resume: `{}` has no interrupted run to continue; starting a new one",
                args.name
            );
        }
        refuse_interrupted(&run_dir, &args)?;
        if args.restart && run_dir.exists() {
            std::fs::remove_dir_all(&run_dir)?;
        }
        std::fs::create_dir_all(&run_dir)?;
        let n_cells = ds.n_cells();
        let (cov, class_names) = covariates(&ds, &args)?;
        let max_epochs = epochs_for(&args, n_cells);
        let arch = Architecture {
            n_genes: ds.n_genes(),
            n_hidden: args.n_hidden,
            n_latent: args.n_latent,
            n_layers: args.n_layers,
            dropout: args.dropout,
            norm: args.norm,
            likelihood: args.likelihood,
            batch_categories: cov.batch.as_ref().map(|b| b.0.clone()).unwrap_or_default(),
            masked_input: cov.presence.is_some() || args.gene_dropout > 0.0,
            classifier_labels: class_names,
            layout: Default::default(),
        };
        set_threads(ds.n_genes());
        tch::manual_seed(args.seed as i64);
        let vs = nn::VarStore::new(dev);
        let vae = Vae::new(&vs.root(), arch.clone());
        let mut opt = Adam::new(&vs, args.lr, args.weight_decay, 0.01);
        opt.warmup = args.lr_warmup as i64;
        let trace = Trace::start(&vs)?;
        let train_pass = match trace.as_ref().and_then(|t| t.fixed_noise) {
            Some(tenths) => Pass::TrainFixed { tenths },
            None => Pass::Train,
        };
        // Read and checked before anything is written into the run folder.
        let resumed = resuming
            .then(|| checked_checkpoint(&run_dir, &args, Some(&data)))
            .transpose()?;
        let log = EventLog::append_to(&run_dir.join("events.jsonl"))?;
        let n_val = (0..n_cells).filter(|&i| is_validation(args.seed, i)).count();
        // A resumed run was warned when it started; its --epochs may only stop it.
        if resumed.is_none() {
            warn_long_warmup(&args, n_cells - n_val, max_epochs);
        }
        let mut run = Run {
            path,
            dev,
            zoo,
            ds: Arc::new(ds),
            cov: Arc::new(cov),
            arch,
            max_epochs,
            n_train: n_cells - n_val,
            first_epoch: 0,
            vs,
            vae,
            opt,
            trace,
            train_pass,
            state: Checkpoint::default(),
            seconds_before: 0.0,
            run_dir,
            log,
            _lock: lock,
            args,
        };
        match resumed {
            Some(state) => run.resume(state)?,
            None => {
                run.state.settings = Some(serde_json::to_value(&run.args)?);
                run.state.data = Some(data);
            }
        }
        let job = std::env::var("SCMZ_JOB_ID").ok();
        // One id for the run, however many jobs resume it: readers of a log that runs with this
        // name share keep to their own (`events::of_job`).
        let id = run.state.run.clone().unwrap_or_else(|| {
            job.clone()
                .unwrap_or_else(|| format!("{}-{}", scmz::events::now_rfc3339(), std::process::id()))
        });
        run.state.run = Some(id.clone());
        run.log.write(Event::Start {
            name: run.args.name.clone(),
            config: serde_json::to_value(&run.args)?,
            device: format!("{dev:?}").to_lowercase(),
            data: vec![run.path.display().to_string()],
            n_train: run.n_train,
            n_val,
            first_epoch: run.first_epoch,
            max_epochs: run.max_epochs,
            run: Some(id),
            job,
        })?;
        Ok(run)
    }

    /// Weights, optimiser moments and state from the run's checkpoint.
    fn resume(&mut self, state: Checkpoint) -> anyhow::Result<()> {
        // Files a killed run was writing (`.NAME.XXXX.tmp`): the run's lock is held, so no one
        // writes them now.
        for e in std::fs::read_dir(&self.run_dir)?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && name.ends_with(".tmp") && e.path().is_file() {
                std::fs::remove_file(e.path()).with_context(|| format!("removing {}", e.path().display()))?;
            }
        }
        self.state = state;
        self.seconds_before = self.state.seconds;
        load_stored(&self.vs, &self.run_dir.join(self.state.weights_file())).context("loading the checkpoint")?;
        // Checkpoints from before the optimiser state was kept resume with fresh moments.
        let adam = self.run_dir.join(self.state.optimizer_file());
        if adam.exists() {
            self.opt.load(&adam).context("loading the optimiser state")?;
        }
        self.first_epoch = self.state.epoch + 1;
        if self.first_epoch >= self.max_epochs {
            say!(
                "resuming `{}` from its checkpoint: {} epochs done, --epochs {}: saved as it is",
                self.args.name,
                self.first_epoch,
                self.max_epochs
            );
            // The model's record says it ran the epochs it ran, of as many.
            self.max_epochs = self.first_epoch;
            return Ok(());
        }
        say!(
            "resuming `{}` from its checkpoint: epoch {} of {} done{}",
            self.args.name,
            self.first_epoch,
            self.max_epochs,
            self.state
                .best_val
                .map_or(String::new(), |b| format!(", best validation ELBO {b:.2}"))
        );
        Ok(())
    }

    /// The KL term's weight in `epoch` (linear warm-up over `--kl-warmup` epochs).
    pub fn kl_weight(&self, epoch: usize) -> f64 {
        if self.args.kl_warmup == 0 {
            1.0
        } else {
            (epoch as f64 / self.args.kl_warmup as f64).min(1.0)
        }
    }
}

/// The run's checkpoint, read and checked. One that points at files the run does not have, or
/// holds what no run writes (an edited or damaged `checkpoint.json`), is refused before anything
/// is written: resuming from it would end the run without its model and remove the files it does
/// have.
fn checked_checkpoint(
    run_dir: &std::path::Path,
    args: &TrainSpec,
    data: Option<&DataPrint>,
) -> anyhow::Result<Checkpoint> {
    let json = run_dir.join("checkpoint.json");
    let s: Checkpoint = serde_json::from_slice(&std::fs::read(&json)?)
        .with_context(|| format!("{}: damaged; run again with --restart", json.display()))?;
    let damaged = |what: String| {
        anyhow::anyhow!(
            "{}: {what}; the checkpoint is damaged or was edited: run again with --restart",
            json.display()
        )
    };
    if let Some(b) = s.best_epoch.filter(|&b| b > s.epoch) {
        return Err(damaged(format!(
            "best epoch {} comes after its last epoch {}",
            b + 1,
            s.epoch + 1
        )));
    }
    if !(s.seconds.is_finite() && s.seconds >= 0.0) {
        return Err(damaged(format!("{} seconds of training", s.seconds)));
    }
    for file in [Some(s.weights_file()), s.best_file()].into_iter().flatten() {
        if !run_dir.join(&file).is_file() {
            return Err(damaged(format!("it names {file}, which the run folder does not hold")));
        }
    }
    if let Some(started) = &s.settings {
        let changed = changed_settings(started, &serde_json::to_value(args)?);
        if !changed.is_empty() {
            bail!(
                "`{}` was started with {}; --resume continues a run with its own settings: give them again, or pass --restart to start over with these",
                args.name,
                changed.join(", ")
            );
        }
    }
    if let (Some(started), Some(now)) = (&s.data, data) {
        if started != now {
            let other = |same_count: bool, same_ids: bool| if same_count && !same_ids { "other " } else { "" };
            bail!(
                "`{}` was started on {} cells and {} genes; {} with --genes {} gives {} {}cells and {} {}genes: --resume continues a run on the data it started with; give that again, or pass --restart to start over on this",
                args.name,
                started.cells,
                started.genes,
                args.data[0].display(),
                args.genes,
                now.cells,
                other(started.cells == now.cells, started.cells_sha256 == now.cells_sha256),
                now.genes,
                other(started.genes == now.genes, started.genes_sha256 == now.genes_sha256),
            );
        }
    }
    Ok(s)
}

/// Settings a resumed run may change: how long it goes on, where it runs and how it reads.
const RESUMABLE_WITH_OTHER: &[&str] = &[
    "data",
    "zoo",
    "epochs",
    "patience",
    "device",
    "resume",
    "restart",
    "overwrite",
    "check_only",
    "chunk_rows",
    "reference_cells",
    // Compared by what it selects (`DataPrint`): one file may be named several ways.
    "genes",
];

/// The settings (as `TrainSpec` JSON) `given` changes from those a run `started` with, each as
/// the flag and the value it started with: `--lr 0.005 (given 0.001)`.
fn changed_settings(started: &serde_json::Value, given: &serde_json::Value) -> Vec<String> {
    let (Some(started), Some(given)) = (started.as_object(), given.as_object()) else {
        return Vec::new();
    };
    let shown = |v: Option<&serde_json::Value>| match v {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(scmz::files::printable(s).into_owned()),
        Some(v) => Some(v.to_string()),
    };
    // A setting newer than the run's scmz is not compared: the run had none.
    started
        .keys()
        .filter(|k| !RESUMABLE_WITH_OTHER.contains(&k.as_str()))
        .filter(|k| started.get(*k) != given.get(*k))
        .map(|k| {
            let flag = format!("--{}", k.replace('_', "-"));
            match (shown(started.get(k)), shown(given.get(k))) {
                (Some(s), Some(g)) => format!("{flag} {s} (given {g})"),
                (Some(s), None) => format!("{flag} {s} (given none)"),
                (None, g) => format!("no {flag} (given {})", g.unwrap_or_default()),
            }
        })
        .collect()
}

/// The batch and label columns, the presence mask, and with `--classifier` each cell's class and
/// the classes' names.
fn covariates(ds: &Dataset, args: &TrainSpec) -> anyhow::Result<(Covariates, Vec<String>)> {
    let mut cov = Covariates {
        batch: args
            .batch_key
            .as_deref()
            .map(|k| categorical(ds, k, "--batch-key"))
            .transpose()?,
        labels: args
            .label_key
            .as_deref()
            .map(|k| categorical(ds, k, "--label-key"))
            .transpose()?,
        presence: ds.presence()?.map(|p| Masks::new(&p, ds.n_genes())),
        classes: None,
    };
    if !args.classifier {
        return Ok((cov, Vec::new()));
    }
    let labels = cov.labels.as_ref().context("--classifier needs --label-key")?;
    let (names, per_cell) = classes(labels, args.unlabeled_category.as_deref());
    let labelled = per_cell.iter().filter(|&&c| c >= 0).count();
    if names.len() < 2 || labelled == 0 {
        bail!(
            "{}: --classifier needs at least 2 label values in obs column `{}` and labelled cells ({} values, {labelled} labelled cells)",
            ds.path().display(),
            args.label_key.as_deref().unwrap_or_default(),
            names.len()
        );
    }
    say!(
        "classifier: {} labels, {labelled} of {} cells labelled",
        names.len(),
        ds.n_cells()
    );
    cov.classes = Some(per_cell);
    Ok((cov, names))
}

/// libtorch threads for training. With few genes the steps are small and the reader thread needs a
/// core of its own (an OpenMP worker preempted by it stalls the others): 2 cores, 1,000 genes, 27k
/// vs 17k cells/s. With many genes the steps are large and every core pays (20,000 genes: 1,839 vs
/// 1,465 cells/s). OMP_NUM_THREADS still decides when set.
fn set_threads(n_genes: usize) {
    if std::env::var_os("OMP_NUM_THREADS").is_some() {
        return;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = if n_genes >= 2000 {
        cores
    } else {
        cores.saturating_sub(1).max(1)
    };
    tch::set_num_threads(threads as i32);
}
