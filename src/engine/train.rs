//! The training loop: streamed minibatches, a seeded 90/10 train/validation split, validation
//! ELBO every epoch, early stopping, an atomic checkpoint every epoch (`--resume` continues from
//! it), the run's event log, and at the end a model folder installed into the zoo in one rename.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

use scmz::data::{ColumnKind, Dataset, OpenOptions};
use scmz::events::{Event, EventLog, LossTerms};
use scmz::spec::{DeviceChoice, Likelihood, Norm, TrainSpec};
use scmz::zoo::manifest::{self, Architecture, FileRef, Genes, Manifest, Metrics, Reference, Training, TrainingData};
use scmz::zoo::{sha256_file, Zoo};

use crate::adam::{write_atomic, Adam};
use crate::loader::{batches_on, is_validation, replay, Batch, Cache, LoaderConfig, Reader, Split};
use crate::stored::{load_stored, stored_variables};
use crate::tensor::{cpu_slice, filled};
use crate::vae::{ByGene, Input, MaskGroups, Pass, SparseX, Vae};

#[derive(Clone, Serialize, Deserialize)]
struct Checkpoint {
    epoch: usize,
    best_epoch: Option<usize>,
    best_val: Option<f64>,
    since_best: usize,
    step: u64,
    seconds: f64,
    /// The weights, moments and best weights are files named by epoch (`checkpoint-E`,
    /// `optimizer-E`, `best-B`), which this json, written last, points at: a checkpoint is one
    /// unit whenever the run is killed. False in checkpoints of older scmz (fixed names).
    #[serde(default)]
    epoch_files: bool,
}

impl Checkpoint {
    fn weights_file(&self) -> String {
        if self.epoch_files {
            format!("checkpoint-{}.safetensors", self.epoch)
        } else {
            "checkpoint.safetensors".into()
        }
    }

    fn optimizer_file(&self) -> String {
        if self.epoch_files {
            format!("optimizer-{}.safetensors", self.epoch)
        } else {
            "optimizer.safetensors".into()
        }
    }

    /// The best weights so far, if any epoch was validated.
    fn best_file(&self) -> Option<String> {
        let b = self.best_epoch?;
        Some(if self.epoch_files {
            format!("best-{b}.safetensors")
        } else {
            "best.safetensors".into()
        })
    }
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
fn classes(labels: &(Vec<String>, Vec<i32>), unlabeled: Option<&str>) -> (Vec<String>, Vec<i64>) {
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

    fn dataset(&self, cell: usize) -> usize {
        self.dataset_of_cell[cell] as usize
    }

    fn row(&self, dataset: usize) -> &[f32] {
        &self.rows[dataset * self.n_genes..(dataset + 1) * self.n_genes]
    }
}

fn categorical(ds: &Dataset, key: &str, flag: &str) -> anyhow::Result<(Vec<String>, Vec<i32>)> {
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
fn check_columns(ds: &Dataset, args: &TrainSpec) -> anyhow::Result<()> {
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

/// Enough cells on each side of the seeded 90/10 split for a step and a validation: a file of
/// one or two cells otherwise "trains" a model that learned nothing.
fn check_split(ds: &Dataset, args: &TrainSpec) -> anyhow::Result<()> {
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
    Ok(())
}

/// Tensors for one minibatch.
pub(crate) struct Prepared {
    pub n: usize,
    /// The cells' rows in the dataset.
    pub rows: Vec<usize>,
    sparse: SparseX,
    lgamma_x1: Tensor,
    pub measured: Option<Tensor>,
    measured_groups: Option<MaskGroups>,
    pub visible: Option<Tensor>,
    batch: Option<Tensor>,
    labels: Option<Tensor>,
}

/// Builds the minibatch's tensors on the CPU (on the reader thread); `to` moves them to the device
/// and hides genes for gene dropout.
pub(crate) fn prepare(b: &Batch, cov: &Covariates, n_genes: usize) -> Prepared {
    prepare_for(b, cov, n_genes, Device::Cpu)
}

/// `prepare` for training on `dev`: for a GPU the nonzeros are not sorted by gene (only the
/// CPU's first layer reads that order) and the tensors are put in page-locked memory, from which
/// the copy to the device does not wait for the steps before it.
pub(crate) fn prepare_for(b: &Batch, cov: &Covariates, n_genes: usize, target: Device) -> Prepared {
    let dev = Device::Cpu;
    let c = &b.x;
    let (n, nnz) = (c.n_rows(), c.nnz());
    // The nonzeros' genes, cells and flat indices, written straight into their tensors.
    let genes = filled::<i64>(nnz, |out| {
        for (o, &g) in out.iter_mut().zip(&c.indices) {
            *o = g as i64;
        }
    });
    let each_nonzero = |out: &mut [i64], f: &dyn Fn(usize, u32) -> i64| {
        for r in 0..n {
            let (a, z) = (c.indptr[r], c.indptr[r + 1]);
            for (o, &g) in out[a..z].iter_mut().zip(&c.indices[a..z]) {
                *o = f(r, g);
            }
        }
    };
    let rows = filled::<i64>(nnz, |out| each_nonzero(out, &|r, _| r as i64));
    let flat = filled::<i64>(nnz, |out| each_nonzero(out, &|r, g| (r * n_genes) as i64 + g as i64));
    // Per cell, the sum of ln(x!) over its measured genes.
    let lgamma: Vec<f32> = (0..n)
        .map(|r| {
            let (idx, val) = c.row(r);
            let sum: f64 = match &cov.presence {
                None => sum4(val.iter().map(|&v| ln_factorial(v as f64))),
                Some(p) => {
                    let m = p.row(p.dataset(b.rows[r]));
                    sum4(
                        idx.iter()
                            .zip(val)
                            .filter(|(&g, _)| m[g as usize] != 0.0)
                            .map(|(_, &v)| ln_factorial(v as f64)),
                    )
                }
            };
            sum as f32
        })
        .collect();
    let by_gene = if target == Device::Cpu {
        ByGene::new(cpu_slice(&rows), cpu_slice(&genes), &c.data, n_genes)
    } else {
        ByGene::new(&[], &[], &[], n_genes)
    };
    let sparse = SparseX {
        n_rows: n as i64,
        n_cols: n_genes as i64,
        by_gene: std::sync::Arc::new(by_gene),
        genes: genes.to_device(dev),
        values: Tensor::from_slice(&c.data).to_device(dev),
        rows: rows.to_device(dev),
        flat: flat.to_device(dev),
    };
    let lgamma_x1 = Tensor::from_slice(&lgamma).to_device(dev);
    let measured = cov.presence.as_ref().map(|p| {
        filled::<f32>(n * n_genes, |m| {
            for (out, &row) in m.chunks_mut(n_genes).zip(&b.rows) {
                out.copy_from_slice(p.row(p.dataset(row)));
            }
        })
        .view([n as i64, n_genes as i64])
    });
    // The same mask as its distinct rows (datasets in order of first appearance).
    let measured_groups = cov.presence.as_ref().map(|p| {
        let mut seen: Vec<usize> = Vec::new();
        let index: Vec<i64> = b
            .rows
            .iter()
            .map(|&row| {
                let d = p.dataset(row);
                let k = seen.iter().position(|&s| s == d).unwrap_or_else(|| {
                    seen.push(d);
                    seen.len() - 1
                });
                k as i64
            })
            .collect();
        let rows = filled::<f32>(seen.len() * n_genes, |m| {
            for (out, &d) in m.chunks_mut(n_genes).zip(&seen) {
                out.copy_from_slice(p.row(d));
            }
        });
        MaskGroups {
            rows: rows.view([seen.len() as i64, n_genes as i64]),
            index: Tensor::from_slice(&index),
        }
    });
    let visible = None;
    let batch = cov.batch.as_ref().map(|(cats, codes)| {
        let c: Vec<i64> = b.rows.iter().map(|&r| codes[r].max(0) as i64).collect();
        Tensor::from_slice(&c)
            .to_device(dev)
            .one_hot(cats.len() as i64)
            .to_kind(Kind::Float)
    });
    let labels = cov
        .classes
        .as_ref()
        .map(|c| Tensor::from_slice(&b.rows.iter().map(|&r| c[r]).collect::<Vec<i64>>()));
    let p = Prepared {
        n: b.rows.len(),
        rows: b.rows.clone(),
        sparse,
        lgamma_x1,
        measured,
        measured_groups,
        visible,
        batch,
        labels,
    };
    if target == Device::Cpu {
        p
    } else {
        p.map(|t| t.pin_memory(target))
    }
}

/// Prepared minibatches, from a reader on a thread or on the calling one.
type Batches = Box<dyn Iterator<Item = Result<Prepared, String>>>;

/// Cells per validation minibatch (at least; the training batch size when larger). BatchNorm
/// uses its running statistics in evaluation, so the result does not depend on it.
const VALIDATION_BATCH: usize = 512;

/// Diagnostics, not a user feature: with `SCMZ_TRACE_DIR` set, training writes its initial
/// weights there (`init.safetensors`, PyTorch's layout) and every step's cells and loss terms
/// (`steps.jsonl`), so that `scripts/bench_parity.py` can replay the same steps in scvi-tools from
/// the same weights; `SCMZ_TRACE_NOISE=T` decodes the latent mean plus T/10 standard deviations
/// instead of a random draw (deterministic steps).
struct Trace {
    steps: std::io::BufWriter<std::fs::File>,
    fixed_noise: Option<i8>,
    /// `SCMZ_TRACE_DROPOUT=fixed`: dropout drops a fixed pattern (`vae::fixed_dropout_mask`).
    fixed_dropout: bool,
}

impl Trace {
    fn start(vs: &nn::VarStore) -> anyhow::Result<Option<Trace>> {
        let Some(dir) = std::env::var_os("SCMZ_TRACE_DIR").map(PathBuf::from) else {
            return Ok(None);
        };
        std::fs::create_dir_all(&dir)
            .map_err(|e| anyhow::anyhow!("{}: cannot create: {}", dir.display(), scmz::files::describe(&e)))?;
        write_atomic(&stored_variables(vs), &dir.join("init.safetensors"))?;
        let f = std::fs::File::create(dir.join("steps.jsonl"))
            .with_context(|| format!("{}: cannot create steps.jsonl", dir.display()))?;
        Ok(Some(Trace {
            steps: std::io::BufWriter::new(f),
            fixed_noise: std::env::var("SCMZ_TRACE_NOISE").ok().and_then(|v| v.parse().ok()),
            fixed_dropout: std::env::var("SCMZ_TRACE_DROPOUT").is_ok_and(|v| v == "fixed"),
        }))
    }

    fn step(&mut self, epoch: usize, rows: &[usize], recon: f64, kl: f64, kl_weight: f64) -> anyhow::Result<()> {
        use std::io::Write;
        let line = serde_json::json!({"epoch": epoch, "rows": rows, "recon": recon, "kl": kl, "kl_weight": kl_weight});
        writeln!(self.steps, "{line}")?;
        Ok(())
    }
}

/// Validation cells whose latent means the event log keeps for the TUI's scatter.
const LATENT_SAMPLE: usize = 400;

/// The latent sample as an event: means (`rows.len()` x d, row-major) on their first two
/// principal components, coloured by label, else batch.
fn latent_event(epoch: usize, mu: &[f32], rows: &[usize], args: &TrainSpec, cov: &Covariates) -> Event {
    let n = rows.len().min(LATENT_SAMPLE);
    let d = mu.len() / rows.len().max(1);
    let (pcs, explained) = principal_components(&mu[..n * d], d);
    let (key, cats) = match (&cov.labels, &cov.batch) {
        (Some(l), _) => (args.label_key.clone(), Some(l)),
        (None, Some(b)) => (args.batch_key.clone(), Some(b)),
        _ => (None, None),
    };
    let round = |v: f32| (v * 1000.0).round() / 1000.0;
    Event::Latent {
        epoch,
        key,
        categories: cats.map(|c| c.0.clone()).unwrap_or_default(),
        codes: rows[..n].iter().map(|&r| cats.map_or(-1, |c| c.1[r])).collect(),
        points: pcs.iter().map(|p| [round(p[0]), round(p[1])]).collect(),
        explained: [round(explained[0]), round(explained[1])],
    }
}

/// Projections of the rows of `x` (n x d) on their first two principal components (power
/// iteration on the d x d covariance; d is the latent size, about 10), and the share of variance
/// each explains. Each component's sign is fixed (largest loading positive) so the picture does
/// not flip between epochs.
fn principal_components(x: &[f32], d: usize) -> (Vec<[f32; 2]>, [f32; 2]) {
    let n = x.len() / d.max(1);
    if n < 2 || d == 0 {
        return (vec![[0.0, 0.0]; n], [0.0, 0.0]);
    }
    let mean: Vec<f64> = (0..d)
        .map(|j| (0..n).map(|i| x[i * d + j] as f64).sum::<f64>() / n as f64)
        .collect();
    let mut cov = vec![0f64; d * d];
    for i in 0..n {
        for a in 0..d {
            let va = x[i * d + a] as f64 - mean[a];
            for b in 0..d {
                cov[a * d + b] += va * (x[i * d + b] as f64 - mean[b]) / (n - 1) as f64;
            }
        }
    }
    let total: f64 = (0..d).map(|j| cov[j * d + j]).sum::<f64>().max(1e-12);
    let mut comps = Vec::new();
    let mut share = [0f32; 2];
    for (k, s) in share.iter_mut().enumerate() {
        let mut v: Vec<f64> = (0..d).map(|j| 1.0 + j as f64 * 0.1 + k as f64).collect();
        let mut lambda = 0.0;
        for _ in 0..200 {
            let mut w: Vec<f64> = (0..d).map(|a| (0..d).map(|b| cov[a * d + b] * v[b]).sum()).collect();
            let norm = w.iter().map(|x| x * x).sum::<f64>().sqrt();
            if norm < 1e-12 {
                break;
            }
            w.iter_mut().for_each(|x| *x /= norm);
            lambda = norm;
            v = w;
        }
        let big = v
            .iter()
            .cloned()
            .fold(0f64, |m, x| if x.abs() > m.abs() { x } else { m });
        if big < 0.0 {
            v.iter_mut().for_each(|x| *x = -*x);
        }
        *s = (lambda / total) as f32;
        // Deflate so the next round finds the next component.
        for a in 0..d {
            for b in 0..d {
                cov[a * d + b] -= lambda * v[a] * v[b];
            }
        }
        comps.push(v);
    }
    let points = (0..n)
        .map(|i| {
            let p = |c: &Vec<f64>| (0..d).map(|j| (x[i * d + j] as f64 - mean[j]) * c[j]).sum::<f64>() as f32;
            [p(&comps[0]), p(&comps[1])]
        })
        .collect();
    (points, share)
}

/// A sum with four accumulators (one chain of dependent additions is four times slower).
fn sum4(values: impl Iterator<Item = f64>) -> f64 {
    let mut acc = [0f64; 4];
    for (i, v) in values.enumerate() {
        acc[i & 3] += v;
    }
    (acc[0] + acc[1]) + (acc[2] + acc[3])
}

/// ln(x!) = lgamma(x + 1): a sum of logs for the small integer counts of real data, Stirling's
/// series with correction terms otherwise (accurate to about 1e-10 once shifted past 10).
fn ln_factorial(x: f64) -> f64 {
    static TABLE: std::sync::OnceLock<Vec<f64>> = std::sync::OnceLock::new();
    // `as` saturates (negative and NaN to 0): the comparison keeps only exact small integers.
    let k = x as usize;
    if k < 1024 && k as f64 == x {
        let t = TABLE.get_or_init(|| {
            let mut t = vec![0.0; 1024];
            for k in 2..1024 {
                t[k] = t[k - 1] + (k as f64).ln();
            }
            t
        });
        return t[k];
    }
    let (mut z, mut shift) = (x + 1.0, 0.0);
    while z < 10.0 {
        shift -= z.ln();
        z += 1.0;
    }
    let inv = 1.0 / z;
    let inv2 = inv * inv;
    shift + (z - 0.5) * z.ln() - z + 0.5 * (2.0 * std::f64::consts::PI).ln() + inv / 12.0 - inv * inv2 / 360.0
        + inv * inv2 * inv2 / 1260.0
}

impl Prepared {
    /// Each tensor replaced by `f(tensor)`.
    fn map(self, f: impl Fn(Tensor) -> Tensor) -> Prepared {
        Prepared {
            n: self.n,
            rows: self.rows,
            sparse: SparseX {
                n_rows: self.sparse.n_rows,
                n_cols: self.sparse.n_cols,
                by_gene: self.sparse.by_gene,
                genes: f(self.sparse.genes),
                values: f(self.sparse.values),
                rows: f(self.sparse.rows),
                flat: f(self.sparse.flat),
            },
            lgamma_x1: f(self.lgamma_x1),
            measured: self.measured.map(&f),
            measured_groups: self.measured_groups.map(|g| MaskGroups {
                rows: f(g.rows),
                index: f(g.index),
            }),
            visible: self.visible.map(&f),
            batch: self.batch.map(&f),
            labels: self.labels.map(&f),
        }
    }

    pub(crate) fn to(self, dev: Device, gene_dropout: f64) -> Prepared {
        let mut p = if dev == Device::Cpu {
            self
        } else {
            // From page-locked memory (`prepare_for`) the copy is queued behind the running steps.
            self.map(|t| t.to_device_(dev, t.kind(), true, false))
        };
        if gene_dropout > 0.0 {
            let keep = Tensor::rand([p.sparse.n_rows, p.sparse.n_cols], (Kind::Float, dev))
                .ge(gene_dropout)
                .to_kind(Kind::Float);
            p.visible = Some(match &p.measured {
                Some(m) => keep * m,
                None => keep,
            });
        }
        p
    }

    pub(crate) fn input(&self) -> Input<'_> {
        Input {
            sparse: Some(&self.sparse),
            lgamma_x1: Some(&self.lgamma_x1),
            x: None,
            measured: self.measured.as_ref(),
            measured_groups: self.measured_groups.as_ref(),
            visible: self.visible.as_ref(),
            batch: self.batch.as_ref(),
            labels: self.labels.as_ref(),
        }
    }
}

/// An epoch's training loss sums (cells x mean) kept on the device, read once at its end.
#[derive(Default)]
struct DeviceSums {
    recon: Option<Tensor>,
    kl: Option<Tensor>,
    ce: Option<Tensor>,
    n_ce: usize,
}

impl DeviceSums {
    fn add(&mut self, l: &crate::vae::Losses, m: usize) {
        let add = |acc: &mut Option<Tensor>, t: &Tensor| {
            let t = t.detach().to_kind(Kind::Double) * m as f64;
            *acc = Some(match acc.take() {
                Some(a) => a + t,
                None => t,
            });
        };
        add(&mut self.recon, &l.recon);
        add(&mut self.kl, &l.kl);
        if let Some(ce) = &l.ce {
            add(&mut self.ce, ce);
            self.n_ce += m;
        }
    }

    /// (recon sum, KL sum, cross-entropy sum, cells with a label).
    fn read(self) -> (f64, f64, f64, usize) {
        let v = |t: Option<Tensor>| t.map_or(0.0, |t| t.double_value(&[]));
        (v(self.recon), v(self.kl), v(self.ce), self.n_ce)
    }
}

/// Set by SIGTERM or SIGINT: training stops after the current step, keeping the last epoch's
/// checkpoint, so `--resume` continues from there (`scmz jobs cancel` and Ctrl-C both land here).
static STOP: std::sync::LazyLock<std::sync::Arc<std::sync::atomic::AtomicBool>> =
    std::sync::LazyLock::new(Default::default);
/// Set when the epoch loop starts: from then on the loop answers a stop (with a checkpoint), and
/// after it the save runs to its end; before it, `crate::watch_job` does.
pub(crate) static TRAINING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// SIGTERM and SIGINT set `STOP` (`signal-hook`'s flag handler), once per process.
pub(crate) fn install_stop_handlers() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        for sig in [libc::SIGTERM, libc::SIGINT] {
            if let Err(e) = signal_hook::flag::register(sig, std::sync::Arc::clone(&STOP)) {
                eprintln!("warning: cannot handle signal {sig} ({e}); a cancel will lose the current epoch");
            }
        }
    });
    // A stop that came while the engine was starting (`jobs::die_with_parent`) lands now.
    scmz::jobs::unblock_sigterm();
}

pub(crate) fn stop_requested() -> bool {
    STOP.load(std::sync::atomic::Ordering::SeqCst)
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

fn terms(recon: f64, kl: f64, kl_weight: f64) -> LossTerms {
    LossTerms {
        recon,
        kl,
        total: recon + kl_weight * kl,
        elbo: recon + kl,
    }
}

/// One epoch's checkpoint: copies of the weights and optimiser moments, and the run state.
struct Snapshot {
    weights: Vec<(String, Tensor)>,
    optimizer: Vec<(String, Tensor)>,
    /// Also the best weights so far.
    best: bool,
    state: Checkpoint,
}

/// Writes checkpoints on a thread of its own, in order, each file atomically and
/// `checkpoint.json` last, so a killed run always resumes from a complete epoch. At most one
/// snapshot waits while another is written (a whole-transcriptome model's checkpoint is tens of
/// MB, written while the next epoch trains).
struct CheckpointWriter {
    tx: Option<std::sync::mpsc::SyncSender<Snapshot>>,
    handle: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl CheckpointWriter {
    /// Writes into `run_dir`, and appends to the run's event log (`events.jsonl` there) that a
    /// checkpoint is on disk once it is: only then may a resume start after it.
    fn start(run_dir: PathBuf) -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Snapshot>(1);
        let handle = std::thread::spawn(move || -> anyhow::Result<()> {
            // Lines are appended whole (one write each), so this log and the training thread's
            // do not interleave within a line.
            let mut log = EventLog::append_to(&run_dir.join("events.jsonl"))?;
            for s in rx {
                let state = Checkpoint {
                    epoch_files: true,
                    ..s.state
                };
                let checkpoint = run_dir.join(state.weights_file());
                write_atomic(&s.weights, &checkpoint)?;
                if let (true, Some(name)) = (s.best, state.best_file()) {
                    // The same bytes: a second name for the checkpoint's file, written out where
                    // links are refused.
                    let best = run_dir.join(name);
                    let _ = std::fs::remove_file(&best);
                    if std::fs::hard_link(&checkpoint, &best).is_err() {
                        write_atomic(&s.weights, &best)?;
                    }
                }
                write_atomic(&s.optimizer, &run_dir.join(state.optimizer_file()))?;
                write_json_atomic(&run_dir.join("checkpoint.json"), &state)?;
                remove_other_checkpoints(&run_dir, &state);
                log.write(Event::Checkpoint { epoch: s.state.epoch })?;
            }
            Ok(())
        });
        CheckpointWriter {
            tx: Some(tx),
            handle: Some(handle),
        }
    }

    fn write(&mut self, s: Snapshot) -> anyhow::Result<()> {
        let sent = self.tx.as_ref().is_some_and(|tx| tx.send(s).is_ok());
        if !sent {
            // The thread stopped: its error says why.
            self.finish()?;
            bail!("the checkpoint writer stopped");
        }
        Ok(())
    }

    /// Waits until every checkpoint is on disk.
    fn finish(&mut self) -> anyhow::Result<()> {
        self.tx = None;
        match self.handle.take() {
            Some(h) => h
                .join()
                .map_err(|_| anyhow::anyhow!("the checkpoint writer panicked"))?
                .context("writing a checkpoint"),
            None => Ok(()),
        }
    }
}

/// Takes the run's lock (`.runs/NAME.lock`, beside its folder), or says who holds it: two
/// engines training one run would overwrite each other's checkpoints.
/// Nothing is written through a link planted in the zoo (a shared filesystem, say): not the
/// run's lock, not its folder, not the folder of runs.
fn refuse_links(run_dir: &Path, name: &str) -> anyhow::Result<()> {
    let lock = run_dir.with_file_name(format!("{name}.lock"));
    let linked = |p: &Path| std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink());
    for p in [run_dir.parent(), Some(run_dir), Some(lock.as_path())]
        .into_iter()
        .flatten()
    {
        if linked(p) {
            bail!(
                "{}: is a symbolic link; scmz does not write through links in the zoo: remove it and run again",
                p.display()
            );
        }
    }
    Ok(())
}

fn lock_run(run_dir: &Path, name: &str) -> anyhow::Result<std::fs::File> {
    use std::io::{Read, Seek, Write};
    use std::os::unix::fs::OpenOptionsExt;
    let path = run_dir.with_file_name(format!("{name}.lock"));
    refuse_links(run_dir, name)?;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| anyhow::anyhow!("{}: cannot create: {}", parent.display(), scmz::files::describe(&e)))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .with_context(|| format!("{}: cannot open the run's lock", path.display()))?;
    match f.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = f.read_to_string(&mut holder);
            bail!(
                "a run named `{name}` is in progress ({}); wait for it to end or cancel it (`scmz jobs`)",
                holder.trim()
            );
        }
        Err(std::fs::TryLockError::Error(e)) => {
            bail!("{}: cannot lock the run: {}", path.display(), scmz::files::describe(&e))
        }
    }
    let job = std::env::var("SCMZ_JOB_ID")
        .map(|j| format!("job {j}, "))
        .unwrap_or_default();
    let _ = f.set_len(0);
    let _ = f.rewind();
    let _ = write!(f, "{job}engine pid {}", std::process::id());
    Ok(f)
}

fn write_json_atomic(path: &Path, value: &impl Serialize) -> anyhow::Result<()> {
    Ok(scmz::files::write_atomic(path, &serde_json::to_vec_pretty(value)?)?)
}

/// Removes the checkpoint files `state` does not point at (older epochs', and the fixed names of
/// an older scmz's checkpoint it resumed from).
fn remove_other_checkpoints(run_dir: &Path, state: &Checkpoint) {
    let keep = [
        Some(state.weights_file()),
        Some(state.optimizer_file()),
        state.best_file(),
    ];
    let Ok(entries) = std::fs::read_dir(run_dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let ours = ["checkpoint", "optimizer", "best"]
            .iter()
            .any(|p| name.starts_with(p) && name.ends_with(".safetensors"));
        if ours && !keep.iter().any(|k| k.as_deref() == Some(name.as_str())) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// How a training run ended; only the binary's `main` turns it into an exit status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The model is in the zoo after the epochs asked for.
    Finished,
    /// The model is in the zoo: no better validation ELBO for `--patience` epochs.
    StoppedEarly,
    /// Settings, data and zoo checked (`--check-only`); nothing trained.
    Checked,
    /// Stopped by SIGTERM or SIGINT; the text says what was kept (a checkpoint or nothing).
    Cancelled(String),
}

pub fn train(args: TrainSpec) -> anyhow::Result<Outcome> {
    scmz::zoo::check_name(&args.name).map_err(anyhow::Error::msg)?;
    if args.data.len() > 1 {
        bail!("train takes one dataset; combine several with `scmz merge A B ... -o merged.h5ad` first");
    }
    let path = args.data[0].clone();
    // Before anything is written (and by `--check-only`, so `--detach` refuses it too).
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
    let mut ds = Dataset::open_with(&path, &open)?;
    check_columns(&ds, &args)?;
    check_split(&ds, &args)?;
    if args.check_only {
        if !args.force {
            ds.require_counts()
                .map_err(|e| anyhow::anyhow!("{e}; pass --force to train anyway"))?;
        }
        if args.batch_size < 2 && args.norm == Norm::Batch {
            bail!("--batch-size 1: BatchNorm needs at least 2 cells a minibatch; use 2 or more, or --norm layer");
        }
        let run_dir = zoo.run_dir(&args.name);
        refuse_links(&run_dir, &args.name)?;
        if run_dir.exists() {
            drop(lock_run(&run_dir, &args.name)?);
            if run_dir.join("checkpoint.json").exists() && !args.resume && !args.restart {
                bail!(
                    "an interrupted run of `{}` exists; pass --resume to continue it or --restart to start over",
                    args.name
                );
            }
        }
        return Ok(Outcome::Checked);
    }
    if args.batch_size < 2 && args.norm == Norm::Batch {
        bail!("--batch-size 1: BatchNorm needs at least 2 cells a minibatch; use 2 or more, or --norm layer");
    }
    let dup = scmz::data::dataset::GeneTable::duplicates(&ds.info().cell_ids);
    if !dup.is_empty() {
        eprintln!(
            "warning: {}: {} duplicated cell ids in obs ({}); labels and latents keyed by cell id will mix them up",
            path.display(),
            dup.len(),
            scmz::files::printable(&scmz::data::dataset::preview(&dup, 3))
        );
    }
    if let Some(keep) = args.genes.keep(&ds)? {
        let n = keep.iter().filter(|&&k| k).count();
        eprintln!("genes: {n} of {} ({})", ds.n_genes(), args.genes);
        ds.keep_genes(&keep);
    }
    // Shared with the reader threads.
    let ds = std::sync::Arc::new(ds);
    if !args.force {
        ds.require_counts()
            .map_err(|e| anyhow::anyhow!("{e}; pass --force to train anyway"))?;
    }
    let run_dir = zoo.run_dir(&args.name);
    // One engine per run folder, held until this process ends (before --restart may remove it).
    let _run_lock = lock_run(&run_dir, &args.name)?;
    let ckpt_json = run_dir.join("checkpoint.json");
    let resuming = ckpt_json.exists();
    if resuming && !args.resume && !args.restart {
        let c: Checkpoint = serde_json::from_slice(&std::fs::read(&ckpt_json)?)?;
        bail!(
            "an interrupted run of `{}` exists (epoch {} done); pass --resume to continue it or --restart to start over",
            args.name,
            c.epoch + 1
        );
    }
    if args.restart && run_dir.exists() {
        std::fs::remove_dir_all(&run_dir)?;
    }
    std::fs::create_dir_all(&run_dir)?;

    let info = ds.info().clone();
    let n_cells = info.n_cells;
    let n_genes = info.n_genes;
    let cov = std::sync::Arc::new(Covariates {
        batch: args
            .batch_key
            .as_deref()
            .map(|k| categorical(&ds, k, "--batch-key"))
            .transpose()?,
        labels: args
            .label_key
            .as_deref()
            .map(|k| categorical(&ds, k, "--label-key"))
            .transpose()?,
        presence: ds.presence()?.map(|p| Masks::new(&p, n_genes)),
        classes: None,
    });
    let (classifier_labels, cov) = if args.classifier {
        let labels = cov.labels.as_ref().expect("clap: --classifier requires --label-key");
        let (names, per_cell) = classes(labels, args.unlabeled_category.as_deref());
        let labelled = per_cell.iter().filter(|&&c| c >= 0).count();
        if names.len() < 2 || labelled == 0 {
            bail!(
                "{}: --classifier needs at least 2 label values in obs column `{}` and labelled cells ({} values, {labelled} labelled cells)",
                path.display(),
                args.label_key.as_deref().unwrap_or_default(),
                names.len()
            );
        }
        eprintln!(
            "classifier: {} labels, {labelled} of {n_cells} cells labelled",
            names.len()
        );
        let mut c = std::sync::Arc::into_inner(cov).expect("not shared yet");
        c.classes = Some(per_cell);
        (names, std::sync::Arc::new(c))
    } else {
        (Vec::new(), cov)
    };
    let max_epochs = args
        .epochs
        .unwrap_or_else(|| ((20_000.0 / n_cells as f64 * 400.0).round() as usize).clamp(1, 400));
    let arch = Architecture {
        n_genes,
        n_hidden: args.n_hidden,
        n_latent: args.n_latent,
        n_layers: args.n_layers,
        dropout: args.dropout,
        norm: args.norm,
        likelihood: args.likelihood,
        batch_categories: cov.batch.as_ref().map(|b| b.0.clone()).unwrap_or_default(),
        masked_input: cov.presence.is_some() || args.gene_dropout > 0.0,
        classifier_labels,
        layout: Default::default(),
    };
    set_threads(n_genes);
    tch::manual_seed(args.seed as i64);
    let vs = nn::VarStore::new(dev);
    let vae = Vae::new(&vs.root(), arch.clone());
    let mut opt = Adam::new(&vs, args.lr, args.weight_decay, 0.01);
    let mut trace = Trace::start(&vs)?;
    let train_pass = match trace.as_ref().and_then(|t| t.fixed_noise) {
        Some(tenths) => Pass::TrainFixed { tenths },
        None => Pass::Train,
    };

    let mut state = Checkpoint {
        epoch: 0,
        best_epoch: None,
        best_val: None,
        since_best: 0,
        step: 0,
        seconds: 0.0,
        epoch_files: true,
    };
    let mut first_epoch = 0;
    if resuming && args.resume {
        state = serde_json::from_slice(&std::fs::read(&ckpt_json)?)
            .with_context(|| format!("{}: damaged; run again with --restart", ckpt_json.display()))?;
        load_stored(&vs, &run_dir.join(state.weights_file())).context("loading the checkpoint")?;
        // Checkpoints from before the optimiser state was kept resume with fresh moments.
        let adam = run_dir.join(state.optimizer_file());
        if adam.exists() {
            opt.load(&adam).context("loading the optimiser state")?;
        }
        first_epoch = state.epoch + 1;
        eprintln!(
            "resuming `{}` from its checkpoint: epoch {} of {} done{}",
            args.name,
            first_epoch,
            max_epochs,
            state
                .best_val
                .map_or(String::new(), |b| format!(", best validation ELBO {b:.2}"))
        );
    }
    let n_val = (0..n_cells).filter(|&i| is_validation(args.seed, i)).count();
    let mut log = EventLog::append_to(&run_dir.join("events.jsonl"))?;
    log.write(Event::Start {
        name: args.name.clone(),
        config: serde_json::to_value(&args)?,
        device: format!("{dev:?}").to_lowercase(),
        data: vec![path.display().to_string()],
        n_train: n_cells - n_val,
        n_val,
        first_epoch,
        max_epochs,
    })?;
    // Shared by training and validation passes: whichever reads a chunk first keeps it.
    let chunk_cache = std::sync::Arc::new(crate::loader::ChunkCache::new(n_cells, args.chunk_rows));
    let loader = |split: Split, shuffle: bool| LoaderConfig {
        dataset: ds.clone(),
        batch_size: args.batch_size,
        chunk_rows: args.chunk_rows,
        buffer_chunks: 8,
        seed: args.seed,
        split,
        shuffle,
        chunks: Some(chunk_cache.clone()),
    };
    // On the CPU with every core in libtorch's pool, a reader on a thread of its own preempts
    // compute threads mid-product, and each stall holds up the others at the product's end: at
    // 20,000 genes a step took 30.5 ms with the reader running beside it, 26.4 ms without, for
    // 1.7 ms of reading and preparing. There the training thread prepares minibatches between
    // steps itself; its file reads too from a local disk, else (a network filesystem, or one it
    // cannot tell) a few chunks ahead on a thread, to hide the latency (3-8 % slower from the
    // page cache). Elsewhere (a GPU, or a core left free of libtorch) readers run ahead on threads.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let read_here = dev == Device::Cpu && tch::get_num_threads() as usize >= cores;
    let read_ahead = !matches!(scmz::dirs::filesystem_kind(&path), Some(("local", _)));
    let reader = move |cfg: LoaderConfig, epoch: usize| {
        let r = Reader::new(cfg, epoch);
        if read_ahead {
            r.prefetch()
        } else {
            r
        }
    };
    // On a GPU, minibatches are prepared on several threads (one keeps up with about 100,000
    // cells/s at 2,000 genes, short of what the device takes).
    let workers = if dev == Device::Cpu {
        1
    } else {
        cores.saturating_sub(2).clamp(1, 8)
    };
    let train_batches = |epoch: usize| -> Batches {
        let c = cov.clone();
        let make = move |b: Batch| prepare_for(&b, &c, n_genes, dev);
        let cfg = loader(Split::Train, true);
        if read_here {
            Box::new(reader(cfg, epoch).map(move |b| b.map(&make)))
        } else {
            batches_on(cfg, epoch, make, workers)
        }
    };
    let val_cache = std::sync::Arc::new(std::sync::Mutex::new(Cache::Empty));
    let val_batches = |epoch: usize| -> Batches {
        let c = cov.clone();
        if let Cache::Ready(cached) = &*val_cache.lock().expect("validation cache") {
            let cached = cached.clone();
            if read_here {
                return Box::new((0..cached.len()).map(move |i| Ok(prepare(&cached[i], &c, n_genes))));
            }
            return Box::new(replay(cached, move |b| prepare_for(&b, &c, n_genes, dev)).into_iter());
        }
        let cache = val_cache.clone();
        let make = move |b: Batch| {
            cache.lock().expect("validation cache").offer(&b);
            prepare_for(&b, &c, n_genes, dev)
        };
        // Evaluation needs no minibatch noise: larger batches, fewer and larger products.
        let mut cfg = loader(Split::Validation, false);
        cfg.batch_size = cfg.batch_size.max(VALIDATION_BATCH);
        if read_here {
            Box::new(reader(cfg, epoch).map(move |b| b.map(&make)))
        } else {
            batches_on(cfg, epoch, make, workers)
        }
    };
    let mut next_train = None;
    let mut checkpoints = CheckpointWriter::start(run_dir.clone());
    let tty = std::io::stderr().is_terminal();
    let started = Instant::now();
    let mut last_step_event = Instant::now();
    let mut final_train = None;
    let mut final_val = None;
    let mut epochs_run = first_epoch;
    let mut cells_per_s = 0.0;
    install_stop_handlers();
    TRAINING.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut outcome = Outcome::Finished;
    for epoch in first_epoch..max_epochs {
        let kl_weight = if args.kl_warmup == 0 {
            1.0
        } else {
            (epoch as f64 / args.kl_warmup as f64).min(1.0)
        };
        let t_epoch = Instant::now();
        let (mut sr, mut sk, mut n) = (0.0, 0.0, 0usize);
        let (mut sce, mut nce) = (0.0, 0usize);
        // On a GPU the epoch's loss sums stay on the device (no wait for each step).
        let mut on_device = (dev != Device::Cpu && trace.is_none()).then(DeviceSums::default);
        // Readers on threads run ahead: this epoch's training batches were started with the last
        // epoch; this epoch's validation batches and the next epoch's training batches start now,
        // while this epoch trains (each reader holds a bounded number of batches).
        let rx = next_train.take().unwrap_or_else(|| train_batches(epoch));
        let val_rx = val_batches(epoch);
        if epoch + 1 < max_epochs && !read_here {
            next_train = Some(train_batches(epoch + 1));
        }
        for p in rx {
            let p = p.map_err(anyhow::Error::msg)?.to(dev, args.gene_dropout);
            if stop_requested() {
                break;
            }
            let input = p.input();
            if trace.as_ref().is_some_and(|t| t.fixed_dropout) {
                crate::vae::TRACE_DROPOUT_STEP.store(state.step as i64, std::sync::atomic::Ordering::Relaxed);
            }
            let l = vae.losses(&input, kl_weight, train_pass);
            let grads = vae.backward(&l, opt.params());
            opt.step(&grads);
            let m = p.n;
            let event_due = last_step_event.elapsed().as_secs_f64() > 0.5;
            if let Some(sums) = &mut on_device {
                sums.add(&l, m);
            }
            // Read back each step where that costs nothing (the CPU), else only when shown.
            let (r, k) = if on_device.is_none() || event_due {
                (l.recon.double_value(&[]), l.kl.double_value(&[]))
            } else {
                (0.0, 0.0)
            };
            if on_device.is_none() {
                if let Some(t) = &mut trace {
                    t.step(epoch, &p.rows, r, k, kl_weight)?;
                }
                if !r.is_finite() || !k.is_finite() {
                    log.write(Event::Error {
                        message: format!("loss became {r} at epoch {epoch}"),
                    })?;
                    bail!(
                        "{}: training diverged in epoch {} (loss {r}); lower --lr, or check that X holds raw counts of a sane size",
                        path.display(),
                        epoch + 1
                    );
                }
                if let Some(ce) = &l.ce {
                    sce += ce.double_value(&[]) * m as f64;
                    nce += m;
                }
                sr += r * m as f64;
                sk += k * m as f64;
            }
            n += m;
            state.step += 1;
            if event_due {
                last_step_event = Instant::now();
                let cps = n as f64 / t_epoch.elapsed().as_secs_f64().max(1e-9);
                log.write(Event::Step {
                    step: state.step,
                    epoch,
                    loss: r + kl_weight * k,
                    recon: r,
                    kl: k,
                    cells_per_s: cps,
                })?;
                if tty {
                    eprint!(
                        "\repoch {}/{max_epochs}  step {}  loss {:.1}  {:.0} cells/s   ",
                        epoch + 1,
                        state.step,
                        r + kl_weight * k,
                        cps
                    );
                }
            }
        }
        if stop_requested() {
            checkpoints.finish()?;
            log.write(Event::End {
                status: "cancelled".into(),
                best_epoch: state.best_epoch,
                best_val_elbo: state.best_val,
                model: None,
            })?;
            let kept = if ckpt_json.exists() {
                format!("the checkpoint of epoch {} is kept", state.epoch + 1)
            } else {
                "no epoch had finished, so there is no checkpoint".to_string()
            };
            let again = if ckpt_json.exists() {
                "; run again with --resume to continue"
            } else {
                ""
            };
            eprintln!("\ncancelled during epoch {}: {kept}{again}", epoch + 1);
            return Ok(Outcome::Cancelled(kept));
        }
        if let Some(sums) = on_device.take() {
            (sr, sk, sce, nce) = sums.read();
            if !sr.is_finite() || !sk.is_finite() {
                log.write(Event::Error {
                    message: format!("loss became {sr} at epoch {epoch}"),
                })?;
                bail!(
                    "{}: training diverged in epoch {} (loss {sr}); lower --lr, or check that X holds raw counts of a sane size",
                    path.display(),
                    epoch + 1
                );
            }
        }
        let train_secs = t_epoch.elapsed().as_secs_f64();
        cells_per_s = n as f64 / train_secs.max(1e-9);
        let train_terms = terms(sr / n.max(1) as f64, sk / n.max(1) as f64, kl_weight);
        // Validation: full KL, no dropout, no gene hiding.
        let (mut vr, mut vk, mut vn) = (0.0, 0.0, 0usize);
        let mut kl_dims = vec![0f64; args.n_latent];
        let latent_epoch = epoch % (max_epochs / 40).max(1) == 0;
        let (mut sample_mu, mut sample_rows) = (Vec::<f32>::new(), Vec::<usize>::new());
        tch::no_grad(|| -> anyhow::Result<()> {
            for p in val_rx {
                let p = p.map_err(anyhow::Error::msg)?.to(dev, 0.0);
                // The ELBO's estimate from a sampled latent, as scvi-tools validates (decoding the
                // mean instead reads several units better than the ELBO is).
                let l = vae.losses(&p.input(), 1.0, Pass::Elbo);
                let m = p.n as f64;
                vr += l.recon.double_value(&[]) * m;
                vk += l.kl.double_value(&[]) * m;
                let per: Vec<f64> = Vec::<f64>::try_from(l.kl_per_dim.to_kind(Kind::Double).to_device(Device::Cpu))?;
                for (a, v) in kl_dims.iter_mut().zip(per) {
                    *a += v * m;
                }
                if latent_epoch && sample_rows.len() < LATENT_SAMPLE {
                    let mu = vae
                        .encode(&p.input(), false)
                        .0
                        .to_kind(Kind::Float)
                        .to_device(Device::Cpu);
                    sample_mu.extend(Vec::<f32>::try_from(mu.flatten(0, -1))?);
                    sample_rows.extend(&p.rows);
                }
                vn += p.n;
            }
            Ok(())
        })?;
        val_cache.lock().expect("validation cache").seal();
        // The chosen genes' chunks are in memory now: the whole matrix the gene selection kept
        // (`Dataset::hold_rows`) is no longer needed.
        if chunk_cache.ready() {
            ds.release_rows();
        }
        let val_terms = terms(vr / vn.max(1) as f64, vk / vn.max(1) as f64, 1.0);
        if vn > 0 && !val_terms.elbo.is_finite() {
            log.write(Event::Error {
                message: format!("validation ELBO became {} at epoch {epoch}", val_terms.elbo),
            })?;
            bail!(
                "{}: training diverged in epoch {} (validation ELBO {}); nothing was saved: lower --lr, or check that X holds raw counts of a sane size",
                path.display(),
                epoch + 1,
                val_terms.elbo
            );
        }
        for v in &mut kl_dims {
            *v /= vn.max(1) as f64;
        }
        let elapsed = state.seconds + started.elapsed().as_secs_f64();
        let per_epoch = started.elapsed().as_secs_f64() / (epoch + 1 - first_epoch) as f64;
        let eta = per_epoch * (max_epochs - epoch - 1) as f64;
        if latent_epoch && !sample_rows.is_empty() {
            log.write(latent_event(epoch, &sample_mu, &sample_rows, &args, &cov))?;
        }
        log.write(Event::Epoch {
            epoch,
            train: train_terms,
            val: val_terms,
            kl_weight,
            kl_per_dim: kl_dims,
            cells_per_s,
            elapsed_s: elapsed,
            eta_s: eta,
        })?;
        let improved = vn > 0 && state.best_val.is_none_or(|b| val_terms.elbo < b);
        let best = improved || vn == 0;
        if best {
            state.best_val = (vn > 0).then_some(val_terms.elbo);
            state.best_epoch = Some(epoch);
            state.since_best = 0;
        } else {
            state.since_best += 1;
        }
        state.epoch = epoch;
        state.seconds = state.seconds.max(0.0);
        // Copies now, files written by the checkpoint thread while the next epoch trains.
        checkpoints.write(Snapshot {
            weights: stored_variables(&vs),
            optimizer: opt.snapshot(),
            best,
            state: state.clone(),
        })?;
        final_train = Some(train_terms);
        final_val = Some(val_terms);
        epochs_run = epoch + 1;
        let classification = if nce > 0 {
            format!("  classifier loss {:.3}", sce / nce as f64)
        } else {
            String::new()
        };
        let line = format!(
            "epoch {}/{max_epochs}  train {:.2}  val elbo {:.2}{classification}  {:.0} cells/s  ETA {}",
            epoch + 1,
            train_terms.total,
            val_terms.elbo,
            cells_per_s,
            scmz::events::format_duration(eta)
        );
        if tty {
            eprint!("\r{line}      ");
        } else {
            eprintln!("{line}");
        }
        if args.patience > 0 && state.since_best >= args.patience {
            eprintln!("\nearly stop: no better validation ELBO for {} epochs", args.patience);
            outcome = Outcome::StoppedEarly;
            break;
        }
    }
    if tty {
        eprintln!();
    }
    checkpoints.finish()?;
    // The model keeps the best validation weights (in memory already when the last epoch was it).
    if let (Some(b), Some(file)) = (state.best_epoch, state.best_file()) {
        if b + 1 != epochs_run {
            load_stored(&vs, &run_dir.join(file))?;
        }
    }
    let seconds = state.seconds + started.elapsed().as_secs_f64();
    let staging = zoo.staging_dir(&args.name)?;
    let _staging_pending = scmz::files::Pending::new(&staging);
    let result = (|| -> anyhow::Result<PathBuf> {
        let weights = staging.join("weights.safetensors");
        write_atomic(&stored_variables(&vs), &weights)?;
        let reference = reference_sample(&vae, &ds, &cov, &args, dev, &staging)?;
        std::fs::copy(run_dir.join("events.jsonl"), staging.join("history.jsonl"))?;
        let g = &info.genes;
        let species = scmz::genes::GeneList::from_table(&args.name, g).species;
        let manifest = Manifest {
            schema_version: manifest::SCHEMA_VERSION,
            name: args.name.clone(),
            version: 1,
            created: scmz::events::now_rfc3339(),
            scmz_version: env!("CARGO_PKG_VERSION").to_string(),
            architecture: arch.clone(),
            training: Training {
                max_epochs,
                epochs_run,
                best_epoch: state.best_epoch,
                batch_size: args.batch_size,
                lr: args.lr,
                weight_decay: args.weight_decay,
                kl_warmup_epochs: args.kl_warmup,
                gene_dropout: args.gene_dropout,
                seed: args.seed,
                device: format!("{dev:?}").to_lowercase(),
                batch_key: args.batch_key.clone(),
                label_key: args.label_key.clone(),
                seconds,
                cells_per_s,
            },
            genes: Genes {
                names: g.index.clone(),
                gene_ids: g.gene_ids().map(<[String]>::to_vec),
                symbols: g.symbols().map(<[String]>::to_vec),
                species,
            },
            datasets: vec![TrainingData {
                path: std::fs::canonicalize(&path)
                    .unwrap_or(path.clone())
                    .display()
                    .to_string(),
                sha256: if path.is_file() {
                    sha256_file(&path)?
                } else {
                    String::new()
                },
                n_cells,
                matrix: info.matrix.clone(),
            }],
            metrics: Metrics {
                best_val_elbo: state.best_val,
                final_train,
                final_val,
                classifier: classifier_metrics(&vae, &ds, &cov, args.seed, dev)?,
            },
            weights: FileRef {
                file: "weights.safetensors".into(),
                sha256: sha256_file(&weights)?,
            },
            reference: Some(reference),
            imported: None,
        };
        scmz::files::write_atomic(&staging.join("manifest.json"), &serde_json::to_vec_pretty(&manifest)?)?;
        Ok(zoo.install(&staging, &args.name)?)
    })();
    let model_dir = match result {
        Ok(d) => d,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            log.write(Event::Error { message: e.to_string() })?;
            return Err(e);
        }
    };
    log.write(Event::End {
        status: "done".into(),
        best_epoch: state.best_epoch,
        best_val_elbo: state.best_val,
        model: Some(model_dir.display().to_string()),
    })?;
    let history = std::fs::read(run_dir.join("events.jsonl"))?;
    scmz::files::write_atomic(&model_dir.join("history.jsonl"), &history)?;
    std::fs::remove_dir_all(&run_dir)?;
    eprintln!(
        "model `{}` saved in {} ({} epochs, best validation ELBO {:.2} at epoch {})",
        args.name,
        model_dir.display(),
        epochs_run,
        state.best_val.unwrap_or(f64::NAN),
        state.best_epoch.map_or(0, |e| e + 1)
    );
    Ok(outcome)
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

/// The given cells' counts as one CSR chunk, in the order given.
pub fn read_rows(ds: &Dataset, rows: &[usize]) -> anyhow::Result<scmz::data::CsrChunk> {
    let mut out = scmz::data::CsrChunk::empty(0, ds.n_genes());
    let mut order: Vec<(usize, usize)> = rows.iter().copied().enumerate().map(|(k, r)| (r, k)).collect();
    order.sort_unstable();
    let mut per: Vec<Vec<(u32, f32)>> = vec![Vec::new(); rows.len()];
    for group in order.chunks(1024) {
        let (lo, hi) = (group[0].0, group[group.len() - 1].0 + 1);
        // One read for a dense enough span, one per cell otherwise: memory stays bounded.
        if hi - lo <= 8 * group.len() {
            let span = ds.read_rows(lo, hi)?;
            for &(r, k) in group {
                let (idx, val) = span.row(r - lo);
                per[k] = idx.iter().copied().zip(val.iter().copied()).collect();
            }
        } else {
            for &(r, k) in group {
                let c = ds.read_rows(r, r + 1)?;
                per[k] = c.row(0).0.iter().copied().zip(c.row(0).1.iter().copied()).collect();
            }
        }
    }
    for row in per {
        out.push_row(row);
    }
    Ok(out)
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
    eprintln!(
        "classifier on {} held-out labelled cells: accuracy {accuracy:.3}, expected calibration error {ece:.3}",
        rows.len()
    );
    Ok(Some(manifest::ClassifierMetrics {
        n_cells: rows.len(),
        accuracy,
        ece,
    }))
}

/// Latent means (row-major, rows in the order given) of the given cells.
fn encode_rows(vae: &Vae, ds: &Dataset, cov: &Covariates, rows: &[usize], dev: Device) -> anyhow::Result<Vec<f32>> {
    let l = vae.arch.n_latent;
    let mut out = Vec::with_capacity(rows.len() * l);
    tch::no_grad(|| -> anyhow::Result<()> {
        for group in rows.chunks(512) {
            let b = Batch {
                x: read_rows(ds, group)?,
                rows: group.to_vec(),
            };
            let p = prepare(&b, cov, ds.n_genes()).to(dev, 0.0);
            let (mu, _) = vae.encode(&p.input(), false);
            out.extend(Vec::<f32>::try_from(mu.to_device(Device::Cpu).flatten(0, 1))?);
        }
        Ok(())
    })?;
    Ok(out)
}

/// Times `steps` optimiser steps on the first `batch_size` cells (printed as JSON).
pub fn bench_step(path: &Path, steps: usize, batch_size: usize, likelihood: Likelihood) -> anyhow::Result<()> {
    let ds = Dataset::open(path)?;
    let arch = Architecture {
        n_genes: ds.n_genes(),
        n_hidden: 128,
        n_latent: 10,
        n_layers: 1,
        dropout: 0.1,
        norm: Norm::Batch,
        likelihood,
        batch_categories: Vec::new(),
        masked_input: false,
        classifier_labels: Vec::new(),
        layout: Default::default(),
    };
    let vs = nn::VarStore::new(Device::Cpu);
    let vae = Vae::new(&vs.root(), arch);
    let mut opt = Adam::new(&vs, 1e-3, 1e-6, 0.01);
    // The reader thread's share per minibatch: reading its rows and preparing them (means of 10).
    let t = Instant::now();
    for _ in 0..10 {
        ds.read_rows(0, batch_size)?;
    }
    let read_ms = t.elapsed().as_secs_f64() * 1e2;
    let b = Batch {
        x: ds.read_rows(0, batch_size)?,
        rows: (0..batch_size).collect(),
    };
    let cov = Covariates {
        batch: None,
        labels: None,
        presence: None,
        classes: None,
    };
    let mut p = prepare(&b, &cov, ds.n_genes());
    let t = Instant::now();
    for _ in 0..10 {
        p = prepare(&b, &cov, ds.n_genes());
    }
    let prep_ms = t.elapsed().as_secs_f64() * 1e2;
    let t = Instant::now();
    for _ in 0..steps {
        let input = p.input();
        let l = vae.losses(&input, 0.5, Pass::Train);
        let grads = vae.backward(&l, opt.params());
        opt.step(&grads);
    }
    let step_ms = t.elapsed().as_secs_f64() * 1e3 / steps as f64;
    println!(
        "{}",
        serde_json::json!({ "genes": ds.n_genes(), "batch": batch_size, "read_ms": read_ms, "prepare_ms": prep_ms, "step_ms": step_ms,
            "cells_per_s": batch_size as f64 / step_ms * 1e3, "threads": tch::get_num_threads() })
    );
    Ok(())
}

/// Loads a zoo model for inference.
pub fn load_model(dir: &Path, dev: Device) -> anyhow::Result<(Manifest, nn::VarStore, Vae)> {
    let m = scmz::zoo::load_dir(dir)?;
    let vs = nn::VarStore::new(dev);
    let vae = Vae::new(&vs.root(), m.architecture.clone());
    load_stored(&vs, &dir.join(&m.weights.file)).with_context(|| format!("{}: loading weights", dir.display()))?;
    Ok((m, vs, vae))
}

/// Latent means of the first `cells` cells of a dataset whose genes are the model's, in order.
pub fn encode_dataset(
    dir: &Path,
    data: &Path,
    cells: usize,
    batch_key: Option<&str>,
) -> anyhow::Result<(Vec<String>, Vec<Vec<f32>>)> {
    let (m, _vs, vae) = load_model(dir, Device::Cpu)?;
    let ds = Dataset::open(data)?;
    if ds.info().genes.index != m.genes.names {
        bail!(
            "{}: its genes differ from model `{}`'s; align them first (projection with gene matching comes with `scmz project`)",
            data.display(),
            m.name
        );
    }
    let cov = Covariates {
        batch: batch_key.map(|k| categorical(&ds, k, "--batch-key")).transpose()?,
        labels: None,
        presence: None,
        classes: None,
    };
    let rows: Vec<usize> = (0..cells.min(ds.n_cells())).collect();
    let flat = encode_rows(&vae, &ds, &cov, &rows, Device::Cpu)?;
    let l = m.architecture.n_latent;
    Ok((
        rows.iter().map(|&r| ds.info().cell_ids[r].clone()).collect(),
        flat.chunks(l).map(<[f32]>::to_vec).collect(),
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn ln_factorial_matches_libtorch_lgamma() {
        for x in [0.0, 1.0, 2.0, 3.0, 7.0, 63.0, 64.0, 100.0, 12345.0, 0.5, 2.7, 9.99] {
            let want = tch::Tensor::from(x + 1.0).lgamma().double_value(&[]);
            let got = super::ln_factorial(x);
            assert!((got - want).abs() < 1e-8 * want.abs().max(1.0), "{x}: {got} vs {want}");
        }
    }

    #[test]
    fn principal_components_find_the_main_axes() {
        // Points along (1, 1, 0) with small noise along (1, -1, 0) and none on the third axis.
        let mut x = Vec::new();
        for i in 0..50 {
            let t = i as f32 - 25.0;
            let e = if i % 2 == 0 { 0.5 } else { -0.5 };
            x.extend([t + e, t - e, 0.0]);
        }
        let (p, share) = super::principal_components(&x, 3);
        assert_eq!(p.len(), 50);
        assert!(
            share[0] > 0.99 && share[1] > 0.0 && share[0] + share[1] <= 1.0 + 1e-5,
            "{share:?}"
        );
        // The first component orders the points as t does; the second is the small alternation.
        assert!(p.windows(2).all(|w| w[1][0] > w[0][0]));
        assert!((p[0][1].abs() - 0.5f32 * 2f32.sqrt()).abs() < 0.1, "{:?}", p[0]);
    }
}
