//! The scVI-style variational autoencoder: an encoder on log1p counts (optionally with a
//! presence mask and a one-hot batch) to a Gaussian latent, a decoder to a softmax gene scale
//! times the observed library size, and an NB / ZINB / Poisson likelihood with gene-wise
//! dispersion. Genes outside the mask are unmeasured: they enter the encoder as zero (with the
//! mask telling it so) and never enter the loss.

use tch::{nn, nn::Module, nn::ModuleT, Device, Kind, Tensor};

use crate::fused::{self, lgamma_digamma_diff};
use crate::stored::TRANSPOSED;
use crate::tensor::{cpu_slice, sparse_by_gene_times_rows, sparse_times_dense_par};

use scmz::spec::Likelihood;
use scmz::zoo::manifest::Architecture;

const EPS: f64 = 1e-8;
/// The floor of the latent variance (scvi-tools' `var_eps`).
const VAR_EPS: f64 = 1e-4;

enum Norm {
    Batch(nn::BatchNorm),
    Layer(nn::LayerNorm),
}

/// A linear layer initialised as PyTorch's `nn.Linear` (and so scvi-tools) does: weights and bias
/// uniform in +-1/sqrt(fan_in). (tch's default draws weights with the ReLU gain, sqrt(6) times
/// wider, which trains measurably worse here: validation ELBO on mouse_10k after 10 epochs
/// 227.4 vs 221.6 for scvi-tools on the same cells.)
fn linear<'a>(p: impl std::borrow::Borrow<nn::Path<'a>>, n_in: i64, n_out: i64) -> nn::Linear {
    let bound = 1.0 / (n_in as f64).sqrt();
    let init = nn::Init::Uniform { lo: -bound, up: bound };
    let cfg = nn::LinearConfig {
        ws_init: init,
        bs_init: Some(init),
        bias: true,
    };
    nn::linear(p, n_in, n_out, cfg)
}

/// The encoder's first linear map, its weight kept inputs x outputs (`weight_t`): the sparse
/// product over the nonzeros reads, and its gradient writes, one contiguous row per gene. Model
/// files keep PyTorch's outputs x inputs `weight` (see `stored::stored_variables`).
#[derive(Debug)]
struct InputLinear {
    wt: Tensor,
    bs: Tensor,
}

impl InputLinear {
    fn new(p: nn::Path, n_in: i64, n_out: i64) -> Self {
        let bound = 1.0 / (n_in as f64).sqrt();
        let init = nn::Init::Uniform { lo: -bound, up: bound };
        InputLinear {
            wt: p.var(&format!("weight{TRANSPOSED}"), &[n_in, n_out], init),
            bs: p.var("bias", &[n_out], init),
        }
    }
}

impl Module for InputLinear {
    fn forward(&self, x: &Tensor) -> Tensor {
        x.matmul(&self.wt) + &self.bs
    }
}

/// A linear map, then normalisation, ReLU and dropout.
struct Block<L: Module = nn::Linear> {
    linear: L,
    norm: Norm,
    dropout: f64,
}

impl<L: Module> Block<L> {
    fn new(p: nn::Path, linear: impl FnOnce(nn::Path) -> L, n_out: i64, norm: scmz::spec::Norm, dropout: f64) -> Self {
        let linear = linear(&p / "linear");
        let norm = if norm == scmz::spec::Norm::Layer {
            let cfg = nn::LayerNormConfig {
                elementwise_affine: false,
                ..Default::default()
            };
            Norm::Layer(nn::layer_norm(&p / "norm", vec![n_out], cfg))
        } else {
            // PyTorch's BatchNorm1d starts its scale at 1; tch's default draws it uniform in
            // [0, 1), which halves the layer's signal on average and all but silences some units:
            // on Kang CTRL -> STIM the latents then transfer labels markedly worse per epoch.
            let cfg = nn::BatchNormConfig {
                momentum: 0.01,
                eps: 1e-3,
                ws_init: nn::Init::Const(1.0),
                bs_init: nn::Init::Const(0.0),
                ..Default::default()
            };
            Norm::Batch(nn::batch_norm1d(&p / "norm", n_out, cfg))
        };
        Block { linear, norm, dropout }
    }

    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        self.activate(self.linear.forward(x), train)
    }

    /// Normalisation, ReLU and dropout after the linear map.
    fn activate(&self, h: Tensor, train: bool) -> Tensor {
        let h = match &self.norm {
            Norm::Batch(b) => b.forward_t(&h, train),
            Norm::Layer(l) => l.forward(&h),
        };
        let step = TRACE_DROPOUT_STEP.load(std::sync::atomic::Ordering::Relaxed);
        if train && self.dropout > 0.0 && step >= 0 {
            return h.relu() * fixed_dropout_mask(h.size()[0], h.size()[1], step, self.dropout);
        }
        h.relu().dropout(self.dropout, train)
    }
}

/// `[h, batch]`, or `h` without a batch.
fn with_batch(h: Tensor, batch: Option<&Tensor>) -> Tensor {
    match batch {
        Some(b) => Tensor::cat(&[&h, b], 1),
        None => h,
    }
}

/// Diagnostics (`SCMZ_TRACE_DIR`): when set to a step number, dropout drops a fixed pattern
/// instead of a random one (`fixed_dropout_mask`), so that `scripts/bench_parity.py` can replay
/// training with dropout step for step; -1 (always, outside that script) is off.
pub static TRACE_DROPOUT_STEP: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(-1);

/// Unit j of cell i is dropped at `step` when (131 i + 71 j + 17 step) mod 10 is 0: a tenth of
/// the units, scaled by 1 / (1 - p) as dropout does (p must be 0.1).
fn fixed_dropout_mask(n: i64, h: i64, step: i64, p: f64) -> Tensor {
    let keep: Vec<f32> = (0..n)
        .flat_map(|i| {
            (0..h).map(move |j| {
                if (131 * i + 71 * j + 17 * step) % 10 == 0 {
                    0.0
                } else {
                    1.0
                }
            })
        })
        .collect();
    Tensor::from_slice(&keep).view([n, h]) / (1.0 - p)
}

pub struct Vae {
    pub arch: Architecture,
    /// The encoder's first layer, then its others.
    input: Block<InputLinear>,
    encoder: Vec<Block>,
    mean: nn::Linear,
    logvar: nn::Linear,
    /// The first decoder layer, then the others (`arch.layout.decoder_layers`).
    decoder: Vec<Block>,
    scale: nn::Linear,
    zi_logits: Option<nn::Linear>,
    /// Gene-wise log inverse dispersion.
    log_theta: Tensor,
    /// scANVI's classifier on the latent mean (`arch.classifier_labels`), trained with the VAE.
    classifier: Option<Classifier>,
}

/// A cell-type classifier on the latent mean, shaped as scANVI's (hidden blocks of the
/// encoder's width, normalisation, ReLU and dropout, one for scmz's own models, then a linear map
/// to one logit per type).
struct Classifier {
    hidden: Vec<Block>,
    out: nn::Linear,
}

impl Classifier {
    fn logits(&self, mu: &Tensor, train: bool) -> Tensor {
        let h = self.hidden.iter().fold(mu.shallow_clone(), |h, b| b.forward(&h, train));
        self.out.forward(&h)
    }
}

/// Weight of the classification loss against the per-cell ELBO (scANVI's `classification_ratio`).
pub const CLASSIFICATION_RATIO: f64 = 50.0;

/// How a pass runs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Pass {
    /// Dropout, BatchNorm on the batch's statistics, a sampled latent.
    Train,
    /// Evaluation (running statistics, no dropout) decoding a sampled latent: the ELBO's
    /// single-sample estimate, as scvi-tools validates.
    Elbo,
    /// Evaluation decoding the latent mean.
    Mean,
    /// Training (dropout, batch statistics) decoding the latent mean plus `tenths / 10` standard
    /// deviations in every dimension instead of a random draw: deterministic steps (with no
    /// dropout), for replaying them step for step in scvi-tools (`SCMZ_TRACE_DIR`,
    /// `scripts/bench_parity.py`); a non-zero shift exercises the gradient through the variance.
    TrainFixed { tenths: i8 },
}

impl Pass {
    fn train(self) -> bool {
        matches!(self, Pass::Train | Pass::TrainFixed { .. })
    }
}

/// The nonzero counts of a minibatch: the encoder's first layer and the likelihood terms whose
/// cost follows the nonzeros use them instead of the dense cells x genes matrix.
pub struct SparseX {
    /// Cells in the minibatch and genes of the model.
    pub n_rows: i64,
    pub n_cols: i64,
    /// The nonzeros ordered by gene, for the first layer's products (built on the reader thread).
    pub by_gene: std::sync::Arc<ByGene>,
    /// Gene of each nonzero entry.
    pub genes: Tensor,
    /// Each nonzero count, its cell (row in the batch) and its flat index `row * genes + gene`.
    pub values: Tensor,
    pub rows: Tensor,
    pub flat: Tensor,
}

/// One minibatch on the device.
pub struct Input<'a> {
    /// The same counts as nonzeros (likelihood); None: computed densely.
    pub sparse: Option<&'a SparseX>,
    /// Per cell, the sum of lgamma(x + 1) over measured genes (a constant of the likelihood,
    /// computed from the nonzeros); None: computed densely here.
    pub lgamma_x1: Option<&'a Tensor>,
    /// Counts, cells x genes; None: built from `sparse` where a computation needs them dense
    /// (on a GPU; nothing on the CPU does).
    pub x: Option<&'a Tensor>,
    /// 1 where a gene was measured for the cell (enters the loss); None: all measured.
    pub measured: Option<&'a Tensor>,
    /// `measured` as its distinct rows, when the caller has them (see `MaskGroups`).
    pub measured_groups: Option<&'a MaskGroups>,
    /// 1 where the encoder may see the gene (measured and not dropped out); None: `measured`.
    pub visible: Option<&'a Tensor>,
    /// One-hot batch, cells x n_batch.
    pub batch: Option<&'a Tensor>,
    /// Per cell its classifier label (int64), -1 where unlabelled; None: no classification loss.
    pub labels: Option<&'a Tensor>,
}

/// A minibatch's presence mask as its distinct rows: cell `i`'s mask is `rows[index[i]]`. Cells
/// of one input dataset of a merged file share a row, so the encoder's product with the mask
/// costs a few rows (one per dataset in the batch) instead of one per cell.
pub struct MaskGroups {
    /// Distinct rows x genes.
    pub rows: Tensor,
    /// Per cell (int64).
    pub index: Tensor,
}

/// Whether autograd records operations now (false inside `tch::no_grad`).
fn grad_mode() -> bool {
    let probe = Tensor::zeros([1], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    (&probe * 1.0).requires_grad()
}

/// A minibatch's nonzeros gene by gene (a stable counting sort of the row-order ones): their
/// row-order index, cell, gene and log1p(count).
pub struct ByGene {
    pub order: Vec<u32>,
    pub rows: Vec<i64>,
    pub genes: Vec<i64>,
    pub log1p: Vec<f32>,
}

impl ByGene {
    pub fn new(rows: &[i64], genes: &[i64], values: &[f32], n_cols: usize) -> Self {
        let order = gene_order(genes, n_cols);
        let n = order.len();
        let (mut by_rows, mut by_genes, mut log1p) = (vec![0i64; n], vec![0i64; n], vec![0f32; n]);
        let table = log1p_table();
        for (i, &k) in order.iter().enumerate() {
            let k = k as usize;
            by_rows[i] = rows[k];
            by_genes[i] = genes[k];
            let v = values[k];
            // Counts are mostly small integers: a table lookup instead of a libm call.
            let c = v as usize;
            log1p[i] = if c < table.len() && c as f32 == v {
                table[c]
            } else {
                v.ln_1p()
            };
        }
        ByGene {
            rows: by_rows,
            genes: by_genes,
            log1p,
            order,
        }
    }
}

/// ln(1 + k) for k = 0..1024.
fn log1p_table() -> &'static [f32] {
    static TABLE: std::sync::OnceLock<Vec<f32>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| (0..1024).map(|k| (k as f32).ln_1p()).collect())
}

/// The order of nonzeros by gene (a stable counting sort), `genes` in row order.
fn gene_order(genes: &[i64], n_cols: usize) -> Vec<u32> {
    let mut start = vec![0u32; n_cols + 1];
    for &g in genes {
        start[g as usize + 1] += 1;
    }
    for j in 0..n_cols {
        start[j + 1] += start[j];
    }
    let mut order = vec![0u32; genes.len()];
    for (k, &g) in genes.iter().enumerate() {
        let slot = &mut start[g as usize];
        order[*slot as usize] = k as u32;
        *slot += 1;
    }
    order
}

impl Input<'_> {
    /// The counts as a dense cells x genes tensor (on the device of the nonzeros).
    pub fn dense_x(&self) -> Tensor {
        if let Some(x) = self.x {
            return x.shallow_clone();
        }
        let sp = self.sparse.expect("a minibatch has its counts dense or as nonzeros");
        Tensor::zeros([sp.n_rows * sp.n_cols], (Kind::Float, sp.values.device()))
            .index_add(0, &sp.flat, &sp.values)
            .view([sp.n_rows, sp.n_cols])
    }

    fn n_rows(&self) -> i64 {
        match (self.sparse, self.x) {
            (Some(sp), _) => sp.n_rows,
            (None, Some(x)) => x.size()[0],
            (None, None) => 0,
        }
    }
}

/// Per-cell means over the minibatch.
pub struct Losses {
    pub recon: Tensor,
    pub kl: Tensor,
    pub total: Tensor,
    /// Mean KL per latent dimension.
    pub kl_per_dim: Tensor,
    /// Mean cross-entropy of the classifier over the batch's labelled cells (None: no classifier,
    /// or no labelled cell); in `total` times `CLASSIFICATION_RATIO`.
    pub ce: Option<Tensor>,
    /// Set when the encoder's first layer ran over the nonzeros outside autograd (see `backward`).
    sparse_first: Option<SparseFirst>,
}

/// What the gradient of a first layer computed over the nonzeros needs: the layer's output from
/// the counts (an autograd leaf, whose gradient autograd fills) and each nonzero's input value.
struct SparseFirst {
    out: Tensor,
    /// The nonzeros gene by gene, and their input values when a mask changed them.
    by_gene: std::sync::Arc<ByGene>,
    weights: Option<Vec<f32>>,
}

impl Vae {
    pub fn new(vs: &nn::Path, arch: Architecture) -> Self {
        let g = arch.n_genes as i64;
        let nb = arch.batch_categories.len() as i64;
        let h = arch.n_hidden as i64;
        let l = arch.n_latent as i64;
        let lay = &arch.layout;
        let n_in = if arch.masked_input { 2 * g } else { g } + if lay.encode_batch { nb } else { 0 };
        // Width of the batch one-hot that layers after the first take.
        let deep = if lay.batch_every_layer { nb } else { 0 };
        let enc_deep = if lay.encode_batch { deep } else { 0 };
        let input = Block::new(
            vs / "encoder" / 0,
            |p| InputLinear::new(p, n_in, h),
            h,
            arch.norm,
            arch.dropout,
        );
        let encoder = (1..arch.n_layers.max(1))
            .map(|i| {
                Block::new(
                    vs / "encoder" / i,
                    |p| linear(p, h + enc_deep, h),
                    h,
                    arch.norm,
                    arch.dropout,
                )
            })
            .collect();
        let mean = linear(vs / "z_mean", h, l);
        let logvar = linear(vs / "z_logvar", h, l);
        let first = Block::new(vs / "decoder", |p| linear(p, l + nb, h), h, arch.norm, 0.0);
        let decoder = std::iter::once(first)
            .chain(
                (1..lay.decoder_layers.max(1))
                    .map(|i| Block::new(vs / "decoder" / i, |p| linear(p, h + deep, h), h, arch.norm, 0.0)),
            )
            .collect();
        let scale = linear(vs / "px_scale", h, g);
        let zi_logits = (arch.likelihood == Likelihood::Zinb).then(|| linear(vs / "px_dropout", h, g));
        let log_theta = vs.var("px_log_theta", &[g], nn::Init::Randn { mean: 0.0, stdev: 1.0 });
        let n_labels = arch.classifier_labels.len() as i64;
        let n_cls = lay.classifier_layers;
        let classifier = (n_labels > 0).then(|| Classifier {
            hidden: (0..n_cls)
                .map(|i| {
                    let n_in = if i == 0 { l } else { h };
                    Block::new(
                        vs / "classifier" / i,
                        |p| linear(p, n_in, h),
                        h,
                        arch.norm,
                        arch.dropout,
                    )
                })
                .collect(),
            out: linear(vs / "classifier" / "out", if n_cls == 0 { l } else { h }, n_labels),
        });
        Vae {
            arch,
            input,
            encoder,
            mean,
            logvar,
            decoder,
            scale,
            zi_logits,
            log_theta,
            classifier,
        }
    }

    /// The classifier's probabilities (cells x labels) for latent means, in evaluation mode;
    /// None for a model without a classifier.
    pub fn classify(&self, mu: &Tensor) -> Option<Tensor> {
        self.classifier
            .as_ref()
            .map(|c| c.logits(mu, false).softmax(-1, Kind::Float))
    }

    /// The classifier's most probable label (an index into `arch.classifier_labels`) and its
    /// probability for each latent mean; None for a model without a classifier.
    pub fn predict(&self, mu: &Tensor) -> Option<(Vec<i64>, Vec<f64>)> {
        // The latents may come from the CPU (training's held-out metrics) for a model on a GPU.
        let mu = mu.to_device(self.log_theta.device());
        let probs = tch::no_grad(|| self.classify(&mu))?.to_device(Device::Cpu);
        let (p, k) = probs.max_dim(1, false);
        Some((
            Vec::<i64>::try_from(k).expect("int64 labels"),
            Vec::<f64>::try_from(p.to_kind(Kind::Double)).expect("float probabilities"),
        ))
    }

    /// Latent mean and log-variance.
    pub fn encode(&self, input: &Input, train: bool) -> (Tensor, Tensor) {
        let (mu, logvar, _) = self.encode_parts(input, train);
        (mu, logvar)
    }

    fn encode_parts(&self, input: &Input, train: bool) -> (Tensor, Tensor, Option<SparseFirst>) {
        let (h, sparse_first) = self.first_layer(input);
        let mut h = self.input.activate(h, train);
        let deep = self.arch.layout.batch_every_layer && self.arch.layout.encode_batch;
        for block in &self.encoder {
            h = block.forward(&with_batch(h, input.batch.filter(|_| deep)), train);
        }
        (
            self.mean.forward(&h),
            // Variance exp(h) + 1e-4, as scvi-tools' encoder: a floor under the latent noise.
            (self.logvar.forward(&h).clamp_max(12.0).exp() + VAR_EPS).log(),
            sparse_first,
        )
    }

    /// The encoder's first linear map of `[log1p(x) * visible, visible, batch]`.
    ///
    /// On the CPU the counts' part runs over the nonzeros (cost nonzeros x hidden instead of
    /// cells x genes x hidden, the largest product of a whole-transcriptome model) outside
    /// autograd; when training, its output is a leaf whose gradient `backward` turns into the
    /// weight's. The mask and batch parts stay products under autograd (the mask's over its
    /// distinct rows when the caller has them).
    fn first_layer(&self, input: &Input) -> (Tensor, Option<SparseFirst>) {
        let lin = &self.input.linear;
        let g = self.arch.n_genes as i64;
        let visible = self.arch.masked_input.then(|| {
            input
                .visible
                .or(input.measured)
                .map(Tensor::shallow_clone)
                .unwrap_or_else(|| {
                    let dev = self.log_theta.device();
                    Tensor::ones([input.n_rows(), self.arch.n_genes as i64], (Kind::Float, dev))
                })
        });
        let sp = match input.sparse {
            Some(sp) if sp.values.device() == Device::Cpu => sp,
            _ => {
                let mut h = input.dense_x().log1p();
                if let Some(v) = &visible {
                    h = Tensor::cat(&[&h * v, v.shallow_clone()], 1);
                }
                if let Some(b) = input.batch.filter(|_| self.arch.layout.encode_batch) {
                    h = Tensor::cat(&[&h, b], 1);
                }
                return (lin.forward(&h), None);
            }
        };
        // Gene by gene, so that each weight row is read once and the batch's rows stay in cache;
        // genes the encoder may not see get weight 0.
        let bg = sp.by_gene.clone();
        let weights = visible.as_ref().map(|v| {
            let vis = v.reshape([-1]).index_select(0, &sp.flat).contiguous();
            let vis = cpu_slice::<f32>(&vis);
            bg.order
                .iter()
                .zip(&bg.log1p)
                .map(|(&k, &w)| w * vis[k as usize])
                .collect::<Vec<f32>>()
        });
        let n_hidden = self.arch.n_hidden;
        let wt = lin.wt.detach();
        let mut out = vec![0f32; sp.n_rows as usize * n_hidden];
        let w = weights.as_deref().unwrap_or(&bg.log1p);
        sparse_by_gene_times_rows(&bg.rows, &bg.genes, w, cpu_slice(&wt), n_hidden, &mut out);
        let mut hx = Tensor::from_slice(&out).view([sp.n_rows, n_hidden as i64]);
        let track = lin.wt.requires_grad() && grad_mode();
        if track {
            hx = hx.set_requires_grad(true);
        }
        let mut h = &hx + &lin.bs;
        let mut next = g;
        if let Some(v) = &visible {
            let wm = lin.wt.narrow(0, g, g);
            h = &h
                + match (input.visible, input.measured_groups) {
                    (None, Some(mg)) => mg.rows.matmul(&wm).index_select(0, &mg.index),
                    _ => v.matmul(&wm),
                };
            next += g;
        }
        if let Some(b) = input.batch.filter(|_| self.arch.layout.encode_batch) {
            h = &h + b.matmul(&lin.wt.narrow(0, next, b.size()[1]));
        }
        (
            h,
            track.then_some(SparseFirst {
                out: hx,
                by_gene: bg,
                weights,
            }),
        )
    }

    /// The decoder's last hidden layer for latents `z` (the batch one-hot in its first layer, or
    /// in every layer for models laid out so).
    fn decode_hidden(&self, z: Tensor, batch: Option<&Tensor>, train: bool) -> Tensor {
        let every = self.arch.layout.batch_every_layer;
        let mut h = z;
        for (i, block) in self.decoder.iter().enumerate() {
            h = block.forward(&with_batch(h, batch.filter(|_| i == 0 || every)), train);
        }
        h
    }

    /// Gradients of `losses.total` for `params` (undefined for those it does not reach), the
    /// encoder's first weight included when its counts' part ran over the nonzeros.
    pub fn backward(&self, losses: &Losses, params: &[Tensor]) -> Vec<Tensor> {
        let Some(sf) = &losses.sparse_first else {
            return Tensor::run_backward(&[&losses.total], params, false, false);
        };
        let mut inputs: Vec<Tensor> = params.iter().map(Tensor::shallow_clone).collect();
        inputs.push(sf.out.shallow_clone());
        let mut grads = Tensor::run_backward(&[&losses.total], &inputs, false, false);
        let d_out = grads.pop().expect("one gradient per input").contiguous();
        let wt = &self.input.linear.wt;
        let Some(i) = params.iter().position(|p| p.data_ptr() == wt.data_ptr()) else {
            return grads;
        };
        // Added to autograd's gradient (mask and batch rows) when there is one.
        let dw = if grads[i].defined() {
            grads[i].contiguous()
        } else {
            wt.zeros_like()
        };
        let (g, n_hidden) = (self.arch.n_genes, self.arch.n_hidden);
        // SAFETY: a contiguous f32 CPU tensor of at least g x n_hidden elements, owned here.
        let dst = unsafe { std::slice::from_raw_parts_mut(dw.data_ptr() as *mut f32, g * n_hidden) };
        let bg = &sf.by_gene;
        let w = sf.weights.as_deref().unwrap_or(&bg.log1p);
        sparse_times_dense_par(&bg.genes, &bg.rows, w, cpu_slice(&d_out), n_hidden, dst);
        grads[i] = dw;
        grads
    }

    pub fn losses(&self, input: &Input, kl_weight: f64, pass: Pass) -> Losses {
        let train = pass.train();
        let (mu, logvar, sparse_first) = self.encode_parts(input, train);
        let z = if pass == Pass::Mean {
            mu.shallow_clone()
        } else if let Pass::TrainFixed { tenths } = pass {
            &mu + (&logvar * 0.5).exp() * (f64::from(tenths) / 10.0)
        } else {
            &mu + (&logvar * 0.5).exp() * mu.randn_like()
        };
        // scANVI's classification loss: on the latent mean of the labelled cells.
        let ce = match (&self.classifier, input.labels) {
            (Some(c), Some(y)) => {
                let idx = y.ge(0).nonzero().squeeze_dim(1);
                (idx.size()[0] > 0).then(|| {
                    c.logits(&mu, train)
                        .index_select(0, &idx)
                        .cross_entropy_for_logits(&y.index_select(0, &idx))
                })
            }
            _ => None,
        };
        let h = self.decode_hidden(z, input.batch, train);
        let theta = self.log_theta.exp();
        let (ll_cell, surrogate) = match input.sparse {
            Some(sp) if sp.values.device() == Device::Cpu && self.arch.likelihood != Likelihood::Zinb => {
                self.fused_ll(sp, &h, &theta, input.measured)
            }
            _ => self.tensor_ll(input, &h, &theta),
        };
        // The constant lgamma(x + 1) term, from the nonzeros when the caller has it.
        let lgamma_x1 = match (input.lgamma_x1, input.measured) {
            (Some(l), _) => l.shallow_clone(),
            (None, Some(m)) => ((input.dense_x() + 1.0).lgamma() * m).sum_dim_intlist(1, false, Kind::Float),
            (None, None) => (input.dense_x() + 1.0).lgamma().sum_dim_intlist(1, false, Kind::Float),
        };
        let recon = -ll_cell + lgamma_x1;
        let kl_dims = ((&mu * &mu) + logvar.exp() - &logvar - 1.0) * 0.5;
        let kl = kl_dims.sum_dim_intlist(1, false, Kind::Float);
        let mut total = (&recon + &kl * kl_weight).mean(Kind::Float);
        if let Some(s) = surrogate {
            total = &total + s;
        }
        if let Some(ce) = &ce {
            total = &total + ce * CLASSIFICATION_RATIO;
        }
        Losses {
            recon: recon.mean(Kind::Float),
            kl: kl.mean(Kind::Float),
            total,
            kl_per_dim: kl_dims.mean_dim(0, false, Kind::Float),
            ce,
            sparse_first,
        }
    }

    /// Per-cell log-likelihood on the CPU by `fused` (NB, Poisson), and when training a
    /// zero-valued surrogate carrying its gradient (logits and dispersion) back to autograd.
    fn fused_ll(
        &self,
        sp: &SparseX,
        h: &Tensor,
        theta: &Tensor,
        measured: Option<&Tensor>,
    ) -> (Tensor, Option<Tensor>) {
        let logits = self.scale.forward(h);
        let a = logits.detach().contiguous();
        let theta_c = theta.detach().contiguous();
        let (n, g) = (sp.n_rows as usize, self.arch.n_genes);
        let measured = measured.map(|m| m.contiguous());
        let measured_nz = measured
            .as_ref()
            .map(|m| m.reshape([-1]).index_select(0, &sp.flat).contiguous());
        let (rows, genes, values) = (
            cpu_slice::<i64>(&sp.rows),
            cpu_slice::<i64>(&sp.genes),
            cpu_slice::<f32>(&sp.values),
        );
        let mask_nz = measured_nz.as_ref().map(cpu_slice::<f32>);
        let mut library = vec![0f32; n];
        for (k, (&r, &v)) in rows.iter().zip(values).enumerate() {
            if mask_nz.is_none_or(|m| m[k] != 0.0) {
                library[r as usize] += v;
            }
        }
        let poisson = self.arch.likelihood == Likelihood::Poisson;
        let batch = fused::Batch {
            logits: cpu_slice(&a),
            n_genes: g,
            library: &library,
            theta: cpu_slice(&theta_c),
            measured: measured.as_ref().map(cpu_slice::<f32>),
            rows,
            genes,
            values,
            poisson,
            grad_scale: -1.0 / n as f32,
            // Gradients are wanted when autograd tracks the logits (training, fine-tuning).
            want_grad: logits.requires_grad(),
        };
        let grad = Tensor::empty([n as i64, g as i64], (Kind::Float, Device::Cpu));
        // SAFETY: a fresh contiguous f32 CPU tensor of n * g elements, written only here.
        let grad_buf = unsafe { std::slice::from_raw_parts_mut(grad.data_ptr() as *mut f32, n * g) };
        let threads = tch::get_num_threads().max(1) as usize;
        let batch_wants_grad = batch.want_grad;
        let out = fused::likelihood(&batch, threads, grad_buf);
        let ll = Tensor::from_slice(&out.ll);
        let dtheta = out.grad_theta;
        if !batch_wants_grad {
            return (ll, None);
        }
        let s = logits.reshape([-1]).dot(&grad.reshape([-1]));
        let mut surrogate = &s - s.detach();
        if !poisson && self.log_theta.requires_grad() {
            let coef = Tensor::from_slice(&dtheta) * &theta_c * (-1.0 / n as f64);
            let s = (&self.log_theta * coef).sum(Kind::Float);
            surrogate += &s - s.detach();
        }
        (ll, Some(surrogate))
    }

    /// Per-cell log-likelihood as tensor operations under autograd (any device, any likelihood).
    fn tensor_ll(&self, input: &Input, h: &Tensor, theta: &Tensor) -> (Tensor, Option<Tensor>) {
        let x = &input.dense_x();
        let mut scale = self.scale.forward(h).softmax(-1, Kind::Float);
        if let Some(m) = input.measured {
            // Renormalise over the genes the cell's dataset measured.
            scale = &scale * m;
            scale = &scale / scale.sum_dim_intlist(1, true, Kind::Float).clamp_min(EPS);
        }
        let library = match input.measured {
            Some(m) => (x * m).sum_dim_intlist(1, true, Kind::Float),
            None => x.sum_dim_intlist(1, true, Kind::Float),
        };
        let mu_x = &scale * &library;
        let zi = self.zi_logits.as_ref().map(|z| z.forward(h));
        // A zero-valued term whose gradient is the one of the lgamma terms computed by hand.
        let mut surrogate = None;
        let ll_cell = match input.sparse {
            Some(sp) => {
                let (ll, s) = self.sparse_ll(sp, &mu_x, theta, zi.as_ref(), input.measured);
                surrogate = s;
                ll
            }
            None => {
                let ll = match self.arch.likelihood {
                    Likelihood::Poisson => x * (&mu_x + EPS).log() - &mu_x,
                    Likelihood::Zinb => log_zinb(x, &mu_x, theta, zi.as_ref().expect("zinb head")),
                    Likelihood::Nb => log_nb(x, &mu_x, theta),
                };
                match input.measured {
                    Some(m) => ll * m,
                    None => ll,
                }
                .sum_dim_intlist(1, false, Kind::Float)
            }
        };
        (ll_cell, surrogate)
    }
}

impl Vae {
    /// Per-cell log-likelihood (without lgamma(x + 1)) computed as "every gene at a zero count"
    /// densely plus a correction at the nonzero counts only: lgamma and the x-dependent terms,
    /// the expensive part, then cost nonzeros instead of cells x genes.
    ///
    /// On the CPU, `lgamma(x + theta) - lgamma(theta)` at the nonzeros is computed in Rust (a few
    /// logs for the small integer counts of real data instead of libtorch's lgamma and, in the
    /// backward pass, two digammas per nonzero); its gradient enters through the returned
    /// zero-valued surrogate, to be added to the mean loss when gradients are wanted.
    fn sparse_ll(
        &self,
        sp: &SparseX,
        mu: &Tensor,
        theta: &Tensor,
        zi: Option<&Tensor>,
        measured: Option<&Tensor>,
    ) -> (Tensor, Option<Tensor>) {
        let at = |t: &Tensor| t.reshape([-1]).index_select(0, &sp.flat);
        let measured_nz = measured.map(at);
        let theta_nz = theta.index_select(0, &sp.genes);
        let mu_nz = at(mu);
        let xv = &sp.values;
        let by_hand = sp.values.device() == Device::Cpu && self.arch.likelihood != Likelihood::Poisson;
        let mut surrogate = None;
        let lgamma_nz = |theta_nz: &Tensor| (xv + theta_nz).lgamma() - theta_nz.lgamma();
        let mut lgamma_cell = None;
        if by_hand {
            let theta_cpu = theta.detach().contiguous();
            let mask = measured_nz.as_ref().map(|m| m.contiguous());
            let (cell, dtheta) = lgamma_terms(
                cpu_slice(&sp.rows),
                cpu_slice(&sp.genes),
                cpu_slice(xv),
                mask.as_ref().map(cpu_slice),
                cpu_slice(&theta_cpu),
                sp.n_rows as usize,
            );
            lgamma_cell = Some(Tensor::from_slice(&cell));
            if self.log_theta.requires_grad() && grad_mode() {
                // d(mean loss)/d(log theta) = -theta * sum over nonzeros of d/dtheta, over cells.
                let coef = Tensor::from_slice(&dtheta) * &theta_cpu * (-1.0 / sp.n_rows as f64);
                let s = (&self.log_theta * coef).sum(Kind::Float);
                surrogate = Some(&s - s.detach());
            }
        }
        let (zero, extra) = match self.arch.likelihood {
            Likelihood::Poisson => (-mu, xv * (&mu_nz + EPS).log()),
            Likelihood::Zinb => {
                let pi = zi.expect("zinb head");
                let softplus_pi = (-pi).softplus();
                let log_theta_mu = (theta + mu + EPS).log();
                let pi_theta_log = -pi + theta * ((theta + EPS).log() - &log_theta_mu);
                let case_zero = pi_theta_log.softplus() - &softplus_pi;
                let mut case_non_zero =
                    -at(&softplus_pi) + at(&pi_theta_log) + xv * ((&mu_nz + EPS).log() - at(&log_theta_mu));
                if !by_hand {
                    case_non_zero += lgamma_nz(&theta_nz);
                }
                let extra = case_non_zero - at(&case_zero);
                (case_zero, extra)
            }
            _ => {
                let log_theta_mu = (theta + mu + EPS).log();
                let zero = theta * ((theta + EPS).log() - &log_theta_mu);
                let mut extra = xv * ((&mu_nz + EPS).log() - at(&log_theta_mu));
                if !by_hand {
                    extra += lgamma_nz(&theta_nz);
                }
                (zero, extra)
            }
        };
        let (zero, extra) = match (measured, &measured_nz) {
            (Some(m), Some(m_nz)) => (zero * m, extra * m_nz),
            _ => (zero, extra),
        };
        let per_cell = zero
            .sum_dim_intlist(1, false, Kind::Float)
            .index_add(0, &sp.rows, &extra);
        let ll = match lgamma_cell {
            Some(l) => per_cell + l,
            None => per_cell,
        };
        (ll, surrogate)
    }
}

/// Over the nonzeros `(row, gene, x)` (those with `mask` 1 when given), per cell the sum of
/// `lgamma(x + theta) - lgamma(theta)` and per gene the sum of its derivative in theta,
/// `digamma(x + theta) - digamma(theta)`.
fn lgamma_terms(
    rows: &[i64],
    genes: &[i64],
    x: &[f32],
    mask: Option<&[f32]>,
    theta: &[f32],
    n_rows: usize,
) -> (Vec<f32>, Vec<f32>) {
    // Nonzeros are in row order: two threads take a contiguous half each when there are many.
    let part = |lo: usize, hi: usize| {
        let mut cell = vec![0f64; n_rows];
        let mut dtheta = vec![0f64; theta.len()];
        for k in lo..hi {
            if mask.is_some_and(|m| m[k] == 0.0) {
                continue;
            }
            let g = genes[k] as usize;
            let (v, d) = lgamma_digamma_diff(x[k] as f64, theta[g] as f64);
            cell[rows[k] as usize] += v;
            dtheta[g] += d;
        }
        (cell, dtheta)
    };
    let n = x.len();
    let (mut cell, mut dtheta) = if n >= 50_000 && tch::get_num_threads() > 1 {
        let ((mut c0, mut d0), (c1, d1)) = std::thread::scope(|s| {
            let h = s.spawn(|| part(n / 2, n));
            (part(0, n / 2), h.join().expect("lgamma worker"))
        });
        for (a, b) in c0.iter_mut().zip(c1) {
            *a += b;
        }
        for (a, b) in d0.iter_mut().zip(d1) {
            *a += b;
        }
        (c0, d0)
    } else {
        part(0, n)
    };
    (
        cell.drain(..).map(|v| v as f32).collect(),
        dtheta.drain(..).map(|v| v as f32).collect(),
    )
}

/// The likelihoods below leave out `-lgamma(x + 1)`, which does not depend on the model: the
/// caller adds it per cell (see `Vae::losses`).
///
/// Negative binomial log-likelihood with mean `mu` and inverse dispersion `theta` (per gene).
fn log_nb(x: &Tensor, mu: &Tensor, theta: &Tensor) -> Tensor {
    let log_theta_mu = (theta + mu + EPS).log();
    theta * ((theta + EPS).log() - &log_theta_mu) + x * ((mu + EPS).log() - &log_theta_mu) + (x + theta).lgamma()
        - theta.lgamma()
}

/// Zero-inflated NB; `pi` are the logits of the zero-inflation probability.
fn log_zinb(x: &Tensor, mu: &Tensor, theta: &Tensor, pi: &Tensor) -> Tensor {
    let softplus_pi = (-pi).softplus();
    let log_theta_mu = (theta + mu + EPS).log();
    let pi_theta_log = -pi + theta * ((theta + EPS).log() - &log_theta_mu);
    let case_zero = pi_theta_log.softplus() - &softplus_pi;
    let case_non_zero =
        -&softplus_pi + &pi_theta_log + x * ((mu + EPS).log() - &log_theta_mu) + (x + theta).lgamma() - theta.lgamma();
    let is_zero = x.lt(EPS).to_kind(Kind::Float);
    &is_zero * case_zero + (1.0 - &is_zero) * case_non_zero
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arch(likelihood: &str) -> Architecture {
        Architecture {
            n_genes: 50,
            n_hidden: 16,
            n_latent: 4,
            n_layers: 1,
            dropout: 0.1,
            norm: scmz::spec::Norm::Batch,
            likelihood: clap::ValueEnum::from_str(likelihood, false).expect("a likelihood"),
            batch_categories: Vec::new(),
            masked_input: true,
            classifier_labels: Vec::new(),
            layout: Default::default(),
        }
    }

    #[test]
    fn lgamma_and_digamma_differences_match_libtorch() {
        for &t in &[1e-3f64, 0.07, 0.5, 1.0, 3.7, 12.0, 250.0, 1e4] {
            for &x in &[0.0f64, 1.0, 2.0, 7.0, 16.0, 17.0, 0.5, 33.3, 400.0, 12345.0] {
                let (v, d) = lgamma_digamma_diff(x, t);
                let tt = Tensor::from_slice(&[t, x + t]);
                let lg = Vec::<f64>::try_from(tt.lgamma()).unwrap();
                let dg = Vec::<f64>::try_from(tt.digamma()).unwrap();
                let (ev, ed) = (lg[1] - lg[0], dg[1] - dg[0]);
                // lgamma to 1e-6 relative (a single-precision log inside), digamma to 1e-9.
                assert!(
                    (v - ev).abs() <= 1e-6 * ev.abs().max(1.0),
                    "lgamma x={x} t={t}: {v} vs {ev}"
                );
                assert!(
                    (d - ed).abs() <= 1e-9 * ed.abs().max(1.0),
                    "digamma x={x} t={t}: {d} vs {ed}"
                );
            }
        }
    }

    /// Many nonzeros take the two-thread path; the sums match a direct computation.
    #[test]
    fn lgamma_terms_on_two_threads_match_direct_sums() {
        let (n_rows, n_genes) = (300usize, 500usize);
        let (mut rows, mut genes, mut x) = (Vec::new(), Vec::new(), Vec::new());
        for r in 0..n_rows {
            for g in (r % 3..n_genes).step_by(3) {
                rows.push(r as i64);
                genes.push(g as i64);
                x.push(((r * 7 + g) % 40 + 1) as f32);
            }
        }
        assert!(x.len() >= 50_000);
        let theta: Vec<f32> = (0..n_genes).map(|g| 0.1 + (g % 17) as f32).collect();
        let (cell, dtheta) = lgamma_terms(&rows, &genes, &x, None, &theta, n_rows);
        let mut c = vec![0f64; n_rows];
        let mut d = vec![0f64; n_genes];
        for k in 0..x.len() {
            let (v, dv) = lgamma_digamma_diff(x[k] as f64, theta[genes[k] as usize] as f64);
            c[rows[k] as usize] += v;
            d[genes[k] as usize] += dv;
        }
        for (a, b) in cell.iter().zip(&c) {
            assert!((*a as f64 - b).abs() <= 1e-5 * b.abs().max(1.0), "{a} vs {b}");
        }
        for (a, b) in dtheta.iter().zip(&d) {
            assert!((*a as f64 - b).abs() <= 1e-5 * b.abs().max(1.0), "{a} vs {b}");
        }
    }

    /// A minibatch with a mask, a visibility and a batch covariate.
    fn masked_input<'a>(
        sparse: Option<&'a SparseX>,
        x: &'a Tensor,
        measured: &'a Tensor,
        visible: &'a Tensor,
        batch: &'a Tensor,
    ) -> Input<'a> {
        Input {
            sparse,
            lgamma_x1: None,
            x: Some(x),
            measured: Some(measured),
            measured_groups: None,
            visible: Some(visible),
            batch: Some(batch),
            labels: None,
        }
    }

    fn sparse_of(x: &Tensor) -> SparseX {
        let (n, g) = (x.size()[0], x.size()[1]);
        let nz = x.reshape([-1]).nonzero().squeeze_dim(1);
        let genes = nz.remainder(g);
        SparseX {
            n_rows: n,
            n_cols: g,
            by_gene: std::sync::Arc::new(ByGene::new(
                &Vec::<i64>::try_from(nz.divide_scalar_mode(g, "floor")).unwrap(),
                &Vec::<i64>::try_from(&genes).unwrap(),
                &Vec::<f32>::try_from(x.reshape([-1]).index_select(0, &nz)).unwrap(),
                g as usize,
            )),
            genes: nz.remainder(g),
            values: x.reshape([-1]).index_select(0, &nz),
            rows: nz.divide_scalar_mode(g, "floor"),
            flat: nz,
        }
    }

    /// The first layer over the nonzeros (outside autograd, its gradient by hand) and the lgamma
    /// terms computed in Rust give the same losses and gradients as the dense computation under
    /// autograd, with a mask, gene dropout and a batch covariate in play, for each likelihood.
    #[test]
    fn sparse_first_layer_matches_dense_autograd() {
        let _rng = crate::TORCH_RNG_TESTS.lock().unwrap_or_else(|e| e.into_inner());
        for likelihood in ["nb", "zinb", "poisson"] {
            sparse_matches_dense(likelihood);
        }
    }

    fn sparse_matches_dense(likelihood: &str) {
        tch::manual_seed(5);
        let mut a = arch(likelihood);
        a.batch_categories = vec!["a".into(), "b".into()];
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let vae = Vae::new(&vs.root(), a);
        let params: Vec<Tensor> = vs.trainable_variables();
        let x = Tensor::randint(6, [8, 50], (Kind::Float, tch::Device::Cpu))
            * Tensor::rand([8, 50], (Kind::Float, tch::Device::Cpu)).ge(0.6);
        let measured = Tensor::rand([8, 50], (Kind::Float, tch::Device::Cpu))
            .ge(0.2)
            .to_kind(Kind::Float);
        let visible = &measured * Tensor::rand([8, 50], (Kind::Float, tch::Device::Cpu)).ge(0.3);
        let batch = Tensor::from_slice(&[0i64, 1, 1, 0, 1, 0, 0, 1])
            .one_hot(2)
            .to_kind(Kind::Float);
        let sp = sparse_of(&x);
        let run = |sparse: Option<&SparseX>| {
            let input = masked_input(sparse, &x, &measured, &visible, &batch);
            tch::manual_seed(11);
            let l = vae.losses(&input, 0.7, Pass::Train);
            assert_eq!(l.sparse_first.is_some(), sparse.is_some());
            let grads = vae.backward(&l, &params);
            (l.total.double_value(&[]), grads)
        };
        let (dense_loss, dense_grads) = run(None);
        let (sparse_loss, sparse_grads) = run(Some(&sp));
        // Evaluation (no autograd, the fused pass without gradients) gives the same values too.
        let eval = |sparse: Option<&SparseX>| {
            let input = masked_input(sparse, &x, &measured, &visible, &batch);
            let l = tch::no_grad(|| vae.losses(&input, 1.0, Pass::Mean));
            (l.recon.double_value(&[]), l.kl.double_value(&[]))
        };
        let (a, b) = (eval(None), eval(Some(&sp)));
        assert!(
            (a.0 - b.0).abs() < 1e-3 * a.0.abs() && (a.1 - b.1).abs() < 1e-5,
            "{likelihood}: {a:?} vs {b:?}"
        );
        assert!(
            (dense_loss - sparse_loss).abs() < 1e-3 * dense_loss.abs(),
            "{likelihood}: {dense_loss} vs {sparse_loss}"
        );
        for (d, s) in dense_grads.iter().zip(&sparse_grads) {
            assert_eq!(d.defined(), s.defined(), "{likelihood}");
            if !d.defined() {
                continue;
            }
            assert_eq!(d.size(), s.size());
            let diff = f64::try_from((d - s).abs().max()).unwrap();
            let scale = f64::try_from(d.abs().max()).unwrap();
            assert!(
                diff <= 1e-4 * scale.max(1.0),
                "{likelihood}: gradient differs by {diff} (scale {scale})"
            );
        }
    }

    /// The mask given as its distinct rows (a merged file's datasets) gives the same losses and
    /// gradients as the per-cell mask.
    #[test]
    fn mask_groups_match_the_per_cell_mask() {
        let _rng = crate::TORCH_RNG_TESTS.lock().unwrap_or_else(|e| e.into_inner());
        tch::manual_seed(9);
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let vae = Vae::new(&vs.root(), arch("nb"));
        let params: Vec<Tensor> = vs.trainable_variables();
        let x = Tensor::randint(6, [8, 50], (Kind::Float, tch::Device::Cpu))
            * Tensor::rand([8, 50], (Kind::Float, tch::Device::Cpu)).ge(0.5);
        let groups = MaskGroups {
            rows: Tensor::rand([3, 50], (Kind::Float, tch::Device::Cpu))
                .ge(0.3)
                .to_kind(Kind::Float),
            index: Tensor::from_slice(&[0i64, 2, 2, 1, 0, 1, 2, 0]),
        };
        let measured = groups.rows.index_select(0, &groups.index);
        let sp = sparse_of(&x);
        let run = |g: Option<&MaskGroups>| {
            let input = Input {
                sparse: Some(&sp),
                lgamma_x1: None,
                x: Some(&x),
                measured: Some(&measured),
                measured_groups: g,
                visible: None,
                batch: None,
                labels: None,
            };
            tch::manual_seed(4);
            let l = vae.losses(&input, 0.5, Pass::Train);
            let grads = vae.backward(&l, &params);
            (l.total.double_value(&[]), grads)
        };
        let (a, ga) = run(None);
        let (b, gb) = run(Some(&groups));
        assert!((a - b).abs() <= 1e-5 * a.abs(), "{a} vs {b}");
        for (d, s) in ga.iter().zip(&gb) {
            assert_eq!(d.defined(), s.defined());
            if d.defined() {
                let diff = f64::try_from((d - s).abs().max()).unwrap();
                assert!(diff <= 1e-5 * f64::try_from(d.abs().max()).unwrap().max(1.0), "{diff}");
            }
        }
    }

    /// A gene a cell's dataset did not measure changes nothing, whatever value sits in it.
    #[test]
    fn unmeasured_genes_never_enter_the_loss() {
        let _rng = crate::TORCH_RNG_TESTS.lock().unwrap_or_else(|e| e.into_inner());
        tch::manual_seed(3);
        for likelihood in ["nb", "zinb", "poisson"] {
            let vs = nn::VarStore::new(tch::Device::Cpu);
            let vae = Vae::new(&vs.root(), arch(likelihood));
            let x = Tensor::randint(20, [8, 50], (Kind::Float, tch::Device::Cpu));
            let measured = Tensor::rand([8, 50], (Kind::Float, tch::Device::Cpu))
                .ge(0.3)
                .to_kind(Kind::Float);
            let junk = Tensor::randint(1000, [8, 50], (Kind::Float, tch::Device::Cpu));
            let unmeasured: Tensor = 1.0 - &measured;
            let x2: Tensor = &x * &measured + &junk * &unmeasured;
            assert!(bool::try_from(x2.ne_tensor(&x).any()).unwrap());
            let loss = |x: &Tensor| {
                let l = vae.losses(
                    &Input {
                        sparse: None,
                        lgamma_x1: None,
                        x: Some(x),
                        measured: Some(&measured),
                        measured_groups: None,
                        visible: None,
                        batch: None,
                        labels: None,
                    },
                    1.0,
                    Pass::Mean,
                );
                (l.recon.double_value(&[]), l.kl.double_value(&[]))
            };
            let (a, b) = (loss(&x), loss(&x2));
            assert!(
                (a.0 - b.0).abs() < 1e-3 && (a.1 - b.1).abs() < 1e-5,
                "{likelihood}: {a:?} vs {b:?}"
            );
            // And measured genes do matter.
            let x3: Tensor = &x + &measured;
            assert!((loss(&x3).0 - a.0).abs() > 1e-2, "{likelihood}");
        }
    }

    /// The replay passes of `scripts/bench_parity.py` are deterministic (no random draw), a noise
    /// shift moves the latent the decoder sees, and the fixed dropout pattern drops a tenth.
    #[test]
    fn trace_passes_are_deterministic() {
        let _rng = crate::TORCH_RNG_TESTS.lock().unwrap_or_else(|e| e.into_inner());
        tch::manual_seed(3);
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let vae = Vae::new(&vs.root(), arch("nb"));
        let x = Tensor::randint(6, [8, 50], (Kind::Float, tch::Device::Cpu));
        let measured = Tensor::ones([8, 50], (Kind::Float, tch::Device::Cpu));
        let batch = Tensor::zeros([8, 0], (Kind::Float, tch::Device::Cpu));
        let input = masked_input(None, &x, &measured, &measured, &batch);
        let loss = |pass: Pass| vae.losses(&input, 1.0, pass).recon.double_value(&[]);
        TRACE_DROPOUT_STEP.store(4, std::sync::atomic::Ordering::Relaxed);
        let fixed = [
            loss(Pass::TrainFixed { tenths: 0 }),
            loss(Pass::TrainFixed { tenths: 0 }),
        ];
        let shifted = loss(Pass::TrainFixed { tenths: 10 });
        TRACE_DROPOUT_STEP.store(-1, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(fixed[0], fixed[1]);
        assert_ne!(fixed[0], shifted);
        let random = [loss(Pass::Train), loss(Pass::Train)];
        assert_ne!(random[0], random[1]);
        let mask = fixed_dropout_mask(128, 128, 7, 0.1);
        let dropped = mask.eq(0.0).to_kind(Kind::Float).mean(Kind::Float).double_value(&[]);
        assert!((dropped - 0.1).abs() < 0.01, "{dropped}");
    }

    /// BatchNorm layers start as PyTorch's (and scvi-tools'): scale 1, shift 0. (tch's default
    /// scale is uniform in [0, 1); with it the latents transferred labels worse per epoch.)
    #[test]
    fn batch_norm_starts_at_scale_one() {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let mut a = arch("nb");
        a.classifier_labels = vec!["x".into(), "y".into()];
        let _vae = Vae::new(&vs.root(), a);
        let norms: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(n, _)| n.contains("norm.weight") || n.contains("norm.bias"))
            .collect();
        // Encoder, decoder and classifier.
        assert_eq!(norms.len(), 6, "{:?}", norms.iter().map(|n| &n.0).collect::<Vec<_>>());
        for (name, t) in norms {
            let want = if name.ends_with("weight") { 1.0 } else { 0.0 };
            let off = f64::try_from((&t - want).abs().max()).unwrap();
            assert_eq!(off, 0.0, "{name}");
        }
    }

    /// The classifier head learns labels from the latent; unlabelled cells (-1) add nothing to
    /// its loss, and a batch of only unlabelled cells has none (its weights get no gradient).
    #[test]
    fn classifier_learns_labels_and_ignores_unlabelled_cells() {
        let _rng = crate::TORCH_RNG_TESTS.lock().unwrap_or_else(|e| e.into_inner());
        tch::manual_seed(3);
        let mut a = arch("nb");
        a.masked_input = false;
        a.classifier_labels = vec!["low".into(), "high".into()];
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let vae = Vae::new(&vs.root(), a);
        let mut opt = crate::adam::Adam::new(&vs, 3e-3, 0.0, 1e-8);
        // Two cell types: counts concentrated on the first or the last 25 genes.
        let n = 64;
        let profile = Tensor::cat(
            &[
                Tensor::ones([n / 2, 25], (Kind::Float, Device::Cpu)) * 4.0,
                Tensor::ones([n / 2, 25], (Kind::Float, Device::Cpu)) * 0.2,
            ],
            1,
        );
        let x = Tensor::cat(&[profile.shallow_clone(), profile.flip([1])], 0).poisson();
        let truth: Vec<i64> = (0..n).map(|i| i64::from(i >= n / 2)).collect();
        // A quarter of the cells unlabelled.
        let given: Vec<i64> = truth
            .iter()
            .enumerate()
            .map(|(i, &t)| if i % 4 == 0 { -1 } else { t })
            .collect();
        let labels = Tensor::from_slice(&given);
        fn input<'a>(x: &'a Tensor, labels: Option<&'a Tensor>) -> Input<'a> {
            Input {
                sparse: None,
                lgamma_x1: None,
                x: Some(x),
                measured: None,
                measured_groups: None,
                visible: None,
                batch: None,
                labels,
            }
        }
        for _ in 0..150 {
            let l = vae.losses(&input(&x, Some(&labels)), 0.1, Pass::Train);
            let g = vae.backward(&l, opt.params());
            opt.step(&g);
        }
        let (mu, _) = tch::no_grad(|| vae.encode(&input(&x, None), false));
        let pred = Vec::<i64>::try_from(vae.classify(&mu).unwrap().argmax(1, false)).unwrap();
        let unlabelled_right = (0..n as usize).filter(|&i| i % 4 == 0 && pred[i] == truth[i]).count();
        assert_eq!(
            unlabelled_right,
            n as usize / 4,
            "the unlabelled cells' types: {pred:?}"
        );

        // The loss is the mean cross-entropy over the labelled cells alone.
        let l = tch::no_grad(|| vae.losses(&input(&x, Some(&labels)), 1.0, Pass::Mean));
        let probs = Vec::<f64>::try_from(vae.classify(&mu).unwrap().to_kind(Kind::Double).flatten(0, 1)).unwrap();
        let labelled: Vec<usize> = (0..n as usize).filter(|&i| given[i] >= 0).collect();
        let by_hand = -labelled
            .iter()
            .map(|&i| probs[i * 2 + given[i] as usize].ln())
            .sum::<f64>()
            / labelled.len() as f64;
        let ce = l.ce.as_ref().unwrap().double_value(&[]);
        assert!((ce - by_hand).abs() < 1e-5, "{ce} vs {by_hand}");
        let none = Tensor::full([n], -1, (Kind::Int64, Device::Cpu));
        let l = vae.losses(&input(&x, Some(&none)), 1.0, Pass::Train);
        assert!(l.ce.is_none());
        let names: Vec<String> = {
            let mut v: Vec<(String, Tensor)> = vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v.into_iter().map(|(n, _)| n).collect()
        };
        let grads = vae.backward(&l, opt.params());
        for (name, g) in names.iter().zip(&grads) {
            if name.starts_with("classifier") {
                assert!(!g.defined(), "{name} has a gradient from unlabelled cells");
            }
        }
    }

    /// On real minibatches (Kang PBMCs, 14,053 genes, raw counts), at initialisation and after
    /// training steps, the CPU fast paths (first layer over the nonzeros, fused NB likelihood with
    /// its fast exp/ln and lgamma sums) give the loss and gradients libtorch's autograd computes
    /// densely: no bias in what training follows.
    #[test]
    fn fast_paths_match_autograd_on_real_kang_minibatches() {
        let _rng = crate::TORCH_RNG_TESTS.lock().unwrap_or_else(|e| e.into_inner());
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/kang_sample.h5ad");
        let ds = scmz::data::Dataset::open(&path).unwrap();
        let g = ds.n_genes();
        tch::manual_seed(1);
        let mut a = arch("nb");
        a.n_genes = g;
        a.n_hidden = 128;
        a.n_latent = 10;
        a.masked_input = false;
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let vae = Vae::new(&vs.root(), a);
        let mut opt = crate::adam::Adam::new(&vs, 1e-3, 1e-6, 0.01);
        let cov = crate::train::Covariates::default();
        let batches: Vec<crate::train::Prepared> = (0..2)
            .map(|k| {
                let b = crate::loader::Batch {
                    x: ds.read_rows(k * 128, (k + 1) * 128).unwrap(),
                    rows: (k * 128..(k + 1) * 128).collect(),
                };
                crate::train::prepare(&b, &cov, g)
            })
            .collect();
        let dense: Vec<Tensor> = batches.iter().map(|p| p.input().dense_x()).collect();
        let compare = |when: &str, params: &[Tensor]| {
            for (p, x) in batches.iter().zip(&dense) {
                let run = |fast: bool| {
                    let mut input = p.input();
                    if !fast {
                        input = Input {
                            sparse: None,
                            lgamma_x1: None,
                            x: Some(x),
                            ..input
                        };
                    }
                    tch::manual_seed(7);
                    let l = vae.losses(&input, 0.3, Pass::Train);
                    assert_eq!(l.sparse_first.is_some(), fast);
                    (l.total.double_value(&[]), vae.backward(&l, params))
                };
                let ((fast_loss, fast), (slow_loss, slow)) = (run(true), run(false));
                assert!(
                    (fast_loss - slow_loss).abs() < 1e-4 * slow_loss.abs(),
                    "{when}: loss {fast_loss} vs {slow_loss}"
                );
                // A bias feeding BatchNorm has no gradient but rounding noise: errors are
                // measured against each parameter's gradient and, for those, the model's.
                let total = slow
                    .iter()
                    .map(|s| f64::try_from(s.to_kind(Kind::Double).norm()).unwrap().powi(2))
                    .sum::<f64>()
                    .sqrt();
                for (f, s) in fast.iter().zip(&slow) {
                    let (f, s) = (f.to_kind(Kind::Double), s.to_kind(Kind::Double));
                    let err = f64::try_from((&f - &s).norm()).unwrap();
                    let norm = f64::try_from(s.norm()).unwrap();
                    assert!(
                        err <= 1e-3 * norm + 1e-6 * total,
                        "{when}: gradient off by {err} of {norm} (all: {total})"
                    );
                    if norm > 1e-4 * total {
                        let cos = f64::try_from((&f * &s).sum(Kind::Double)).unwrap()
                            / (norm * f64::try_from(f.norm()).unwrap());
                        assert!(cos > 0.99999, "{when}: cosine {cos}");
                    }
                }
            }
        };
        compare("at initialisation", opt.params());
        for _ in 0..20 {
            for p in &batches {
                tch::manual_seed(7);
                let l = vae.losses(&p.input(), 0.3, Pass::Train);
                let grads = vae.backward(&l, opt.params());
                opt.step(&grads);
            }
        }
        compare("after 40 steps", opt.params());
    }
}
