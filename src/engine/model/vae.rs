//! The scVI-style variational autoencoder: an encoder on log1p counts (optionally with a
//! presence mask and a one-hot batch) to a Gaussian latent, a decoder to a softmax gene scale
//! times the observed library size, and an NB / ZINB / Poisson likelihood with gene-wise
//! dispersion. Genes outside the mask are unmeasured: they enter the encoder as zero (with the
//! mask telling it so) and never enter the loss. Imported scvi-tools models may instead learn the
//! library size (a second, one-layer encoder and a per-batch prior) and keep one dispersion per
//! gene and batch; those compute their likelihood under autograd, without the fused kernels.

mod likelihood;
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;

use tch::{nn, nn::Module, Device, Kind, Tensor};

use crate::kernels::fused;
use crate::kernels::math::lgamma_digamma_diff;
use crate::kernels::sparse::{sparse_by_gene_times_rows, sparse_times_dense_par};
use crate::model::input::{grad_mode, ByGene, Input, SparseX};
use crate::model::layers::{linear, with_batch, Block, InputLinear, Norm, NORM_MOMENTUM};
use crate::tensor::cpu_slice;
use likelihood::{log_nb, log_zinb};

use scmz::spec::Likelihood;
use scmz::zoo::manifest::Architecture;

const EPS: f64 = 1e-8;
/// The floor of the latent variance (scvi-tools' `var_eps`).
const VAR_EPS: f64 = 1e-4;

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
    /// Log inverse dispersion: per gene, or genes x batches (`layout.dispersion_per_batch`).
    log_theta: Tensor,
    /// The library-size encoder of models that learn the library size (`layout.learned_library`).
    library: Option<LibraryEncoder>,
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

/// scvi-tools' `l_encoder`: a one-layer encoder of the same input as the latent's, to the
/// log-normal posterior of the library size, and the per-batch log-normal prior it is pulled to
/// (scvi-tools' `library_log_means` / `library_log_vars`, fixed from the training data).
struct LibraryEncoder {
    block: Block,
    mean: nn::Linear,
    logvar: nn::Linear,
    /// 1 x batches (at least one column); not trained.
    prior_mean: Tensor,
    prior_var: Tensor,
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
        let theta_dims: Vec<i64> = if lay.dispersion_per_batch {
            vec![g, nb.max(1)]
        } else {
            vec![g]
        };
        let log_theta = vs.var("px_log_theta", &theta_dims, nn::Init::Randn { mean: 0.0, stdev: 1.0 });
        let library = lay.learned_library.then(|| LibraryEncoder {
            block: Block::new(
                vs / "library" / 0,
                |p| linear(p, g + if lay.encode_batch { nb } else { 0 }, h),
                h,
                arch.norm,
                arch.dropout,
            ),
            mean: linear(vs / "l_mean", h, 1),
            logvar: linear(vs / "l_logvar", h, 1),
            prior_mean: vs.zeros_no_train("library_log_means", &[1, nb.max(1)]),
            prior_var: vs.ones_no_train("library_log_vars", &[1, nb.max(1)]),
        });
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
            library,
            classifier,
        }
    }

    /// The model's BatchNorm layers (none with layer normalisation).
    fn batch_norms(&self) -> Vec<&nn::BatchNorm> {
        std::iter::once(&self.input.norm)
            .chain(self.encoder.iter().map(|b| &b.norm))
            .chain(self.decoder.iter().map(|b| &b.norm))
            .chain(self.library.iter().map(|l| &l.block.norm))
            .chain(self.classifier.iter().flat_map(|c| c.hidden.iter().map(|b| &b.norm)))
            .filter_map(|n| match n {
                Norm::Batch(b) => Some(b),
                Norm::Layer(_) => None,
            })
            .collect()
    }

    /// Sets BatchNorm's running statistics, which encoding and validation use, to the mean of
    /// the statistics of `inputs` (minibatches of training cells, of one size) in a training pass
    /// with the present weights, as "precise BatchNorm" does (Wu and Johnson, 2021). Running
    /// averages lag behind weights that move fast, and over the last few minibatches they
    /// describe the last few chunks read rather than the data. Nothing changes without an input.
    pub fn population_norms<'a>(&self, inputs: impl IntoIterator<Item = Input<'a>>) {
        let norms = self.batch_norms();
        if norms.is_empty() {
            return;
        }
        tch::no_grad(|| {
            let mut sums: Vec<(Tensor, Tensor)> = norms
                .iter()
                .map(|b| (b.running_mean.zeros_like(), b.running_var.zeros_like()))
                .collect();
            let mut n = 0usize;
            for input in inputs {
                // From zero, a training pass leaves momentum x the batch's statistics.
                for b in &norms {
                    let _ = b.running_mean.shallow_clone().zero_();
                    let _ = b.running_var.shallow_clone().zero_();
                }
                self.normalised_layers(&input);
                for ((mean, var), b) in sums.iter_mut().zip(&norms) {
                    *mean += &b.running_mean / NORM_MOMENTUM;
                    *var += &b.running_var / NORM_MOMENTUM;
                }
                n += 1;
            }
            if n > 0 {
                for ((mean, var), b) in sums.iter().zip(&norms) {
                    b.running_mean.shallow_clone().copy_(&(mean / n as f64));
                    b.running_var.shallow_clone().copy_(&(var / n as f64));
                }
            }
        });
    }

    /// A training pass through every layer that normalises (not the likelihood: the gene scale,
    /// the costly part, comes after the last), as `losses` runs them.
    fn normalised_layers(&self, input: &Input) {
        let (mu, logvar, _) = self.encode_parts(input, true);
        if let Some(c) = &self.classifier {
            let _ = c.logits(&mu, true);
        }
        let _ = self.library_posterior(input, true);
        let z = &mu + (&logvar * 0.5).exp() * mu.randn_like();
        let _ = self.decode_hidden(z, input.batch, true);
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

    /// Mean and log-variance of the log library size's posterior, for a model that learns it.
    fn library_posterior(&self, input: &Input, train: bool) -> Option<(Tensor, Tensor)> {
        let le = self.library.as_ref()?;
        let x = input.dense_x().log1p();
        let h = le.block.forward(
            &with_batch(x, input.batch.filter(|_| self.arch.layout.encode_batch)),
            train,
        );
        let logvar = (le.logvar.forward(&h).clamp_max(12.0).exp() + VAR_EPS).log();
        Some((le.mean.forward(&h), logvar))
    }

    /// Per cell (cells x 1), the prior's mean and variance of the log library size.
    fn library_prior(le: &LibraryEncoder, batch: Option<&Tensor>) -> (Tensor, Tensor) {
        match batch {
            Some(b) => (b.matmul(&le.prior_mean.tr()), b.matmul(&le.prior_var.tr())),
            None => (le.prior_mean.narrow(1, 0, 1), le.prior_var.narrow(1, 0, 1)),
        }
    }

    /// The inverse dispersion: per gene, or per cell and gene from its batch.
    fn theta(&self, batch: Option<&Tensor>) -> Tensor {
        if !self.arch.layout.dispersion_per_batch {
            return self.log_theta.exp();
        }
        match batch {
            Some(b) => b.matmul(&self.log_theta.tr()).exp(),
            None => self.log_theta.narrow(1, 0, 1).tr().exp(),
        }
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
        // The log library size of a model that learns it: its posterior's mean or a draw, as z.
        let library = self.library_posterior(input, train);
        let log_library = library.as_ref().map(|(m, lv)| match pass {
            Pass::Mean => m.shallow_clone(),
            Pass::TrainFixed { tenths } => m + (lv * 0.5).exp() * (f64::from(tenths) / 10.0),
            _ => m + (lv * 0.5).exp() * m.randn_like(),
        });
        let h = self.decode_hidden(z, input.batch, train);
        let theta = self.theta(input.batch);
        let by_autograd = library.is_some() || self.arch.layout.dispersion_per_batch;
        let (ll_cell, surrogate) = match input.sparse {
            Some(sp)
                if sp.values.device() == Device::Cpu && self.arch.likelihood != Likelihood::Zinb && !by_autograd =>
            {
                self.fused_ll(sp, &h, &theta, input.measured)
            }
            _ => self.tensor_ll(input, &h, &theta, log_library.map(|l| l.exp()).as_ref()),
        };
        // The constant lgamma(x + 1) term, from the nonzeros when the caller has it.
        let lgamma_x1 = match (input.lgamma_x1, input.measured) {
            (Some(l), _) => l.shallow_clone(),
            (None, Some(m)) => ((input.dense_x() + 1.0).lgamma() * m).sum_dim_intlist(1, false, Kind::Float),
            (None, None) => (input.dense_x() + 1.0).lgamma().sum_dim_intlist(1, false, Kind::Float),
        };
        let recon = -ll_cell + lgamma_x1;
        let kl_dims = ((&mu * &mu) + logvar.exp() - &logvar - 1.0) * 0.5;
        let kl_z = kl_dims.sum_dim_intlist(1, false, Kind::Float);
        // The library's KL, as scvi-tools: in the ELBO, never scaled by the warm-up.
        let kl_library = match (&self.library, &library) {
            (Some(le), Some((m, lv))) => {
                let (pm, pv) = Self::library_prior(le, input.batch);
                let kl = ((pv.log() - lv) + (lv.exp() + (m - pm).square()) / pv - 1.0) * 0.5;
                Some(kl.sum_dim_intlist(1, false, Kind::Float))
            }
            _ => None,
        };
        let mut total = match &kl_library {
            Some(kl_l) => (&recon + &kl_z * kl_weight + kl_l).mean(Kind::Float),
            None => (&recon + &kl_z * kl_weight).mean(Kind::Float),
        };
        let kl = match kl_library {
            Some(kl_l) => kl_z + kl_l,
            None => kl_z,
        };
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

    /// Per-cell log-likelihood as tensor operations under autograd (any device, any likelihood),
    /// with the observed library size unless `learned` (cells x 1) is given.
    fn tensor_ll(
        &self,
        input: &Input,
        h: &Tensor,
        theta: &Tensor,
        learned: Option<&Tensor>,
    ) -> (Tensor, Option<Tensor>) {
        let x = &input.dense_x();
        let mut scale = self.scale.forward(h).softmax(-1, Kind::Float);
        if let Some(m) = input.measured {
            // Renormalise over the genes the cell's dataset measured.
            scale = &scale * m;
            scale = &scale / scale.sum_dim_intlist(1, true, Kind::Float).clamp_min(EPS);
        }
        let library = match (learned, input.measured) {
            (Some(l), _) => l.shallow_clone(),
            (None, Some(m)) => (x * m).sum_dim_intlist(1, true, Kind::Float),
            (None, None) => x.sum_dim_intlist(1, true, Kind::Float),
        };
        let mu_x = &scale * &library;
        let zi = self.zi_logits.as_ref().map(|z| z.forward(h));
        // A zero-valued term whose gradient is the one of the lgamma terms computed by hand.
        let mut surrogate = None;
        // A dispersion per cell (from its batch) is not the sparse path's per-gene one.
        let ll_cell = match input.sparse.filter(|_| theta.dim() == 1) {
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
