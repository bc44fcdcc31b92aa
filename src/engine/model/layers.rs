//! The layers the VAE is built of: linear layers initialised as PyTorch's, a first layer that
//! also takes the presence mask, blocks of linear, normalisation, ReLU and dropout.

use tch::{nn, nn::Module, nn::ModuleT, Tensor};

use crate::model::stored::TRANSPOSED;

/// BatchNorm's running averages move 1 % toward each training batch's statistics, as in
/// scvi-tools; training replaces them at each epoch's end (`Vae::population_norms`, which relies
/// on this value) unless `--norm-cells 0`.
pub(crate) const NORM_MOMENTUM: f64 = 0.01;

pub(crate) enum Norm {
    Batch(nn::BatchNorm),
    Layer(nn::LayerNorm),
}

/// A linear layer initialised as PyTorch's `nn.Linear` (and so scvi-tools) does: weights and bias
/// uniform in +-1/sqrt(fan_in). (tch's default draws weights with the ReLU gain, sqrt(6) times
/// wider, which trains measurably worse here: validation ELBO on mouse_10k after 10 epochs
/// 227.4 vs 221.6 for scvi-tools on the same cells.)
pub(crate) fn linear<'a>(p: impl std::borrow::Borrow<nn::Path<'a>>, n_in: i64, n_out: i64) -> nn::Linear {
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
pub(crate) struct InputLinear {
    pub wt: Tensor,
    pub bs: Tensor,
}

impl InputLinear {
    pub fn new(p: nn::Path, n_in: i64, n_out: i64) -> Self {
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
pub(crate) struct Block<L: Module = nn::Linear> {
    pub linear: L,
    pub norm: Norm,
    pub dropout: f64,
}

impl<L: Module> Block<L> {
    pub fn new(
        p: nn::Path,
        linear: impl FnOnce(nn::Path) -> L,
        n_out: i64,
        norm: scmz::spec::Norm,
        dropout: f64,
    ) -> Self {
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
                momentum: NORM_MOMENTUM,
                eps: 1e-3,
                ws_init: nn::Init::Const(1.0),
                bs_init: nn::Init::Const(0.0),
                ..Default::default()
            };
            Norm::Batch(nn::batch_norm1d(&p / "norm", n_out, cfg))
        };
        Block { linear, norm, dropout }
    }

    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        self.activate(self.linear.forward(x), train)
    }

    /// Normalisation, ReLU and dropout after the linear map.
    pub fn activate(&self, h: Tensor, train: bool) -> Tensor {
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
pub(crate) fn with_batch(h: Tensor, batch: Option<&Tensor>) -> Tensor {
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
pub(crate) fn fixed_dropout_mask(n: i64, h: i64, step: i64, p: f64) -> Tensor {
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
