//! scArches-style fine-tuning for a query from a new batch: the model gains one batch category,
//! whose columns in every layer that takes the batch (the encoder's and decoder's first layers
//! in scmz's own models; every decoder layer, and maybe no encoder layer, in imported ones) are
//! the only parameters trained (on the query); everything else stays frozen.

use tch::{nn, Device, Tensor};

use scmz::data::CsrChunk;

use crate::model::vae::{Pass, Vae};
use crate::train::covariates::Covariates;
use crate::train::loader::Batch;
use crate::train::minibatch::prepare;

pub struct Finetuned {
    /// Owns the variables the model uses.
    _vs: nn::VarStore,
    pub vae: Vae,
    /// Index of the new batch category.
    pub batch: usize,
    /// Mean ELBO per query cell before and after.
    pub loss_before: f64,
    pub loss_after: f64,
}

/// The dimension along which a grown weight has the new batch's inputs.
fn grown_dim(t: &Tensor, old: &Tensor) -> i64 {
    if t.size()[0] != old.size()[0] {
        0
    } else {
        1
    }
}

/// Mean ELBO over `cells` with the new batch, genes outside `found` neither seen nor scored.
fn elbo(vae: &Vae, cells: &[CsrChunk], found: &Tensor, mask: bool, cats: &[String], batch: usize) -> f64 {
    let (mut sum, mut n) = (0.0, 0usize);
    for c in cells {
        let l = step_losses(vae, c, found, mask, cats, batch, 1.0);
        sum += (l.0.double_value(&[]) + l.1.double_value(&[])) * c.n_rows() as f64;
        n += c.n_rows();
    }
    sum / n.max(1) as f64
}

fn step_losses(
    vae: &Vae,
    c: &CsrChunk,
    found: &Tensor,
    mask: bool,
    cats: &[String],
    batch: usize,
    kl_weight: f64,
) -> (Tensor, Tensor, Tensor) {
    let n = c.n_rows();
    let cov = Covariates {
        batch: Some((cats.to_vec(), vec![batch as i32; n])),
        labels: None,
        presence: None,
        classes: None,
    };
    let b = Batch {
        x: c.clone(),
        rows: (0..n).collect(),
    };
    let mut p = prepare(&b, &cov, c.n_cols).to(Device::Cpu, 0.0);
    let measured = found.view([1, -1]).repeat([n as i64, 1]);
    if vae.arch.masked_input {
        p.visible = Some(if mask {
            measured.shallow_clone()
        } else {
            measured.ones_like()
        });
    }
    p.measured = Some(measured);
    let l = vae.losses(&p.input(), kl_weight, Pass::Mean);
    (l.recon, l.kl, l.total)
}

/// The new batch's prior on the log library size, for a model that learns it: the mean and
/// variance of the query cells' log library sizes, as scvi-tools sets each batch's from its cells.
fn set_library_prior(vs: &nn::VarStore, cells: &[CsrChunk], batch: usize) -> anyhow::Result<()> {
    let logs: Vec<f64> = cells
        .iter()
        .flat_map(|c| c.row_sums())
        .filter(|&s| s > 0.0)
        .map(f64::ln)
        .collect();
    anyhow::ensure!(
        !logs.is_empty(),
        "the query's cells have no counts in the model's genes"
    );
    let n = logs.len() as f64;
    let mean = logs.iter().sum::<f64>() / n;
    let var = logs.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / n;
    let vars = vs.variables();
    for (name, value) in [("library_log_means", mean), ("library_log_vars", var.max(1e-4))] {
        let t = vars
            .get(name)
            .ok_or_else(|| anyhow::anyhow!("the model has no `{name}`"))?;
        tch::no_grad(|| {
            let _ = t.narrow(1, batch as i64, 1).fill_(value);
        });
    }
    Ok(())
}

/// Adds batch `name` to the model and trains its parameters on `cells` (model gene space).
pub fn add_batch(
    old_vs: &nn::VarStore,
    old: &Vae,
    name: &str,
    cells: &[CsrChunk],
    found: &[f32],
    mask: bool,
    epochs: usize,
) -> anyhow::Result<Finetuned> {
    let mut arch = old.arch.clone();
    if arch.batch_categories.is_empty() {
        anyhow::bail!("the model has no batch covariate; train it with --batch-key to fine-tune new batches");
    }
    if arch.batch_categories.iter().any(|c| c == name) {
        anyhow::bail!("batch `{name}` is already one of the model's batches; project with --batch-category {name}");
    }
    arch.batch_categories.push(name.to_string());
    let cats = arch.batch_categories.clone();
    let batch = cats.len() - 1;
    let mut vs = nn::VarStore::new(Device::Cpu);
    let vae = Vae::new(&vs.root(), arch);
    let old_vars = old_vs.variables();
    tch::no_grad(|| {
        for (name, mut t) in vs.variables() {
            let Some(o) = old_vars.get(&name) else { continue };
            if t.size() == o.size() {
                t.copy_(o);
            } else {
                let dim = grown_dim(&t, o);
                let _ = t.zero_();
                t.narrow(dim, 0, o.size()[dim as usize]).copy_(o);
            }
        }
    });
    if vae.arch.layout.learned_library {
        set_library_prior(&vs, cells, batch)?;
    }
    let found_t = Tensor::from_slice(found);
    let loss_before = elbo(&vae, cells, &found_t, mask, &cats, batch);
    vs.freeze();
    // The weights that take the batch grew by one input, the new batch's: the last, as the
    // batch one-hot comes after a layer's other inputs (the encoder's first weight is held inputs
    // x outputs, its last row; the others outputs x inputs, their last column).
    let grown: Vec<(Tensor, i64)> = vs
        .variables()
        .into_iter()
        .filter_map(|(n, t)| {
            let o = old_vars.get(&n)?;
            // A learned library's prior is set from the query above, not trained.
            (t.size() != o.size() && !n.starts_with("library_log_")).then(|| {
                let dim = grown_dim(&t, o);
                (t.set_requires_grad(true), dim)
            })
        })
        .collect();
    anyhow::ensure!(!grown.is_empty(), "fine-tuning found no layer that takes the batch");
    // 1 at the new batch's inputs, 0 elsewhere.
    let masks: Vec<Tensor> = grown
        .iter()
        .map(|(w, dim)| {
            let n = w.size()[*dim as usize];
            w.zeros_like().index_fill(*dim, &Tensor::from(n - 1), 1.0)
        })
        .collect();
    let grown: Vec<Tensor> = grown.into_iter().map(|(w, _)| w).collect();
    // Adam on the new columns only (the frozen store has no other trainable tensors).
    let (lr, b1, b2, eps) = (1e-2, 0.9, 0.999, 1e-8);
    let mut moments: Vec<(Tensor, Tensor)> = grown.iter().map(|w| (w.zeros_like(), w.zeros_like())).collect();
    let mut t = 0;
    for _ in 0..epochs {
        for c in cells.iter().filter(|c| c.n_rows() > 1) {
            for w in &grown {
                let mut g = w.grad();
                if g.defined() {
                    let _ = g.zero_();
                }
            }
            let (_, _, total) = step_losses(&vae, c, &found_t, mask, &cats, batch, 1.0);
            total.backward();
            t += 1;
            tch::no_grad(|| {
                for ((w, colmask), (m, v)) in grown.iter().zip(&masks).zip(moments.iter_mut()) {
                    let g = w.grad() * colmask;
                    *m = &*m * b1 + &g * (1.0 - b1);
                    *v = &*v * b2 + &g * &g * (1.0 - b2);
                    let mhat = &*m / (1.0 - f64::powi(b1, t));
                    let vhat = &*v / (1.0 - f64::powi(b2, t));
                    let mut w = w.shallow_clone();
                    let _ = w.f_sub_(&(mhat / (vhat.sqrt() + eps) * lr));
                }
            });
        }
    }
    let loss_after = elbo(&vae, cells, &found_t, mask, &cats, batch);
    Ok(Finetuned {
        _vs: vs,
        vae,
        batch,
        loss_before,
        loss_after,
    })
}
