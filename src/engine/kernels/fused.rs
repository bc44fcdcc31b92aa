//! The decoder's likelihood and its gradient in one pass over each cell, on the CPU.
//!
//! Under autograd, softmax -> times library -> NB log-likelihood costs some fifteen tensor
//! operations forward and as many backward, each a full pass over cells x genes; for a
//! whole-transcriptome model (20,000 genes) they cost more than the decoder's matrix products.
//! Here one loop per cell computes the log-likelihood, its gradient with respect to the decoder's
//! logits and to the dispersion, with vectorisable exp/log, splitting cells over threads when the
//! model is wide. The caller feeds the gradients back to autograd through a zero-valued surrogate.
//!
//! With `m` the genes the cell's dataset measured, `s = softmax over m of a`, `mu = l * s`,
//! `t = theta + mu`: NB: `ll = sum_m theta (log theta - log t) + x (log mu - log t)
//! + lgamma(x + theta) - lgamma(theta)` (the last two at the nonzeros only); Poisson:
//! `ll = sum_m x log mu - mu`. Both leave out `-lgamma(x + 1)`, which the model does not change.
//! With `q_g = mu_g d ll / d mu_g`, the gradient in the logits is `q_g - s_g sum q`.

use super::math::{fast_exp, fast_ln, lgamma_digamma_diff, ln_f64, product_form};

const EPS: f32 = 1e-8;

/// One minibatch's input: logits and masks cells x genes, row-major; nonzeros in row order.
pub struct Batch<'a> {
    pub logits: &'a [f32],
    pub n_genes: usize,
    pub library: &'a [f32],
    /// Per gene (NB only).
    pub theta: &'a [f32],
    pub measured: Option<&'a [f32]>,
    pub rows: &'a [i64],
    pub genes: &'a [i64],
    pub values: &'a [f32],
    pub poisson: bool,
    /// Factor on the logits' gradient (e.g. -1/cells for a mean negative log-likelihood).
    pub grad_scale: f32,
    /// False: the log-likelihood only (evaluation); `grad` then holds the scale, no gradients.
    pub want_grad: bool,
}

pub struct Output {
    /// Per cell (without `-lgamma(x + 1)`).
    pub ll: Vec<f32>,
    /// d (sum over cells of ll) / d theta, per gene.
    pub grad_theta: Vec<f32>,
}

/// Writes `grad_scale * d ll_cell / d logits` (cells x genes) into `grad`.
pub fn likelihood(b: &Batch, threads: usize, grad: &mut [f32]) -> Output {
    let g = b.n_genes;
    let n = b.library.len();
    let mut starts = vec![0usize; n + 1];
    for &r in b.rows {
        starts[r as usize + 1] += 1;
    }
    for r in 0..n {
        starts[r + 1] += starts[r];
    }
    // Per gene: ln(theta), then the constant part of d ll / d theta, ln(theta) + theta / theta.
    let mut ln_theta: Vec<f32> = b.theta.iter().map(|&t| fast_ln(t + EPS)).collect();
    ln_theta.extend(b.theta.iter().map(|&t| fast_ln(t + EPS) + t / (t + EPS)));
    let mut ll = vec![0f32; n];
    assert_eq!(grad.len(), n * g, "gradient buffer size");
    // Below ~4,000 genes a step is too short to pay for starting threads.
    let threads = if g * n < 4000 * 128 {
        1
    } else {
        threads.clamp(1, n.max(1))
    };
    let per = n.div_ceil(threads);
    let mut parts: Vec<Vec<f32>> = Vec::new();
    std::thread::scope(|scope| {
        let mut handles = Vec::new();
        let mut rest_ll: &mut [f32] = &mut ll;
        let mut rest_grad: &mut [f32] = grad;
        let mut r0 = 0;
        while r0 < n {
            let k = per.min(n - r0);
            let (ll_part, tail_ll) = rest_ll.split_at_mut(k);
            let (grad_part, tail_grad) = rest_grad.split_at_mut(k * g);
            rest_ll = tail_ll;
            rest_grad = tail_grad;
            let (starts, ln_theta) = (&starts, &ln_theta);
            let mut work = move || {
                let mut sc = Scratch {
                    ones: vec![1f32; g],
                    q: vec![0f32; g],
                    tmp: vec![0f32; g],
                    gt: vec![0f32; g],
                    nz: Nonzeros::default(),
                };
                for (i, (llr, gr)) in ll_part.iter_mut().zip(grad_part.chunks_mut(g)).enumerate() {
                    let r = r0 + i;
                    *llr = row_dispatch(b, r, starts[r]..starts[r + 1], ln_theta, gr, &mut sc);
                }
                sc.gt
            };
            if r0 + k >= n {
                parts.push(work());
            } else {
                handles.push(scope.spawn(work));
            }
            r0 += k;
        }
        for h in handles {
            parts.push(h.join().expect("likelihood worker"));
        }
    });
    let mut grad_theta = vec![0f32; g];
    for p in parts {
        for (a, b) in grad_theta.iter_mut().zip(p) {
            *a += b;
        }
    }
    Output { ll, grad_theta }
}

/// One worker's rows: `ones` stands for the mask when there is none, `gt` accumulates
/// d ll / d theta over its cells, `q` and `tmp` are scratch rows.
struct Scratch {
    ones: Vec<f32>,
    q: Vec<f32>,
    tmp: Vec<f32>,
    gt: Vec<f32>,
    nz: Nonzeros,
}

/// One cell's measured nonzeros, gathered so that their logarithms run as one vector loop (a
/// logarithm per nonzero in a scalar loop waits on its polynomial's latency each time): gene,
/// count, mu, theta + mu, and for NB the product `prod_{j < x} (theta + j)` whose log is
/// `lgamma(x + theta) - lgamma(theta)`, with `digamma(x + theta) - digamma(theta)` beside it.
#[derive(Default)]
struct Nonzeros {
    gene: Vec<usize>,
    x: Vec<f32>,
    mu: Vec<f32>,
    t: Vec<f32>,
    prod: Vec<f64>,
    dg: Vec<f64>,
    ln_mu: Vec<f32>,
    ln_t: Vec<f32>,
    ln_prod: Vec<f64>,
}

impl Nonzeros {
    fn clear(&mut self) {
        self.gene.clear();
        self.x.clear();
        self.mu.clear();
        self.t.clear();
        self.prod.clear();
        self.dg.clear();
    }
}

crate::kernels::avx2_dispatch! {
    /// `row`, compiled for 8-wide vectors where the CPU has them.
    fn row_dispatch(
        b: &Batch,
        r: usize,
        nz: std::ops::Range<usize>,
        ln_theta: &[f32],
        grad: &mut [f32],
        sc: &mut Scratch,
    ) -> f32 = row;
}

/// One cell: returns its log-likelihood, writes d ll / d logits into `grad`, adds d ll / d theta
/// into `sc.gt`.
#[inline(always)]
fn row(b: &Batch, r: usize, nz: std::ops::Range<usize>, ln_theta: &[f32], grad: &mut [f32], sc: &mut Scratch) -> f32 {
    let Scratch { ones, q, tmp, gt, .. } = sc;
    let g = b.n_genes;
    let a = &b.logits[r * g..(r + 1) * g];
    let m = b.measured.map_or(&ones[..], |m| &m[r * g..(r + 1) * g]);
    let l = b.library[r];
    // Equal-length slices and index loops: the compiler drops the bounds checks and vectorises.
    let (grad, q, tmp, gt) = (&mut grad[..g], &mut q[..g], &mut tmp[..g], &mut gt[..g]);
    let (m, theta, c_theta, ln_theta) = (&m[..g], &b.theta[..g], &ln_theta[g..2 * g], &ln_theta[..g]);
    // Softmax over the measured genes; `grad` holds the scale s for now.
    let mx = max8(a);
    for j in 0..g {
        grad[j] = fast_exp(a[j] - mx) * m[j];
    }
    let inv = 1.0 / sum8(grad).max(EPS);
    // Dense part: every measured gene as if at a zero count; `grad` becomes the scale.
    if b.poisson {
        for j in 0..g {
            grad[j] *= inv;
            let mu = l * grad[j];
            tmp[j] = -mu * m[j];
            q[j] = -mu * m[j];
        }
    } else if !b.want_grad {
        for j in 0..g {
            let (th, w) = (theta[j], m[j]);
            let s = grad[j] * inv;
            grad[j] = s;
            tmp[j] = w * th * (ln_theta[j] - fast_ln(th + l * s + EPS));
        }
    } else {
        for j in 0..g {
            let (th, w) = (theta[j], m[j]);
            let s = grad[j] * inv;
            grad[j] = s;
            let mu = l * s;
            let t = th + mu + EPS;
            let inv_t = 1.0 / t;
            let ln_t = fast_ln(t);
            let th_inv_t = th * inv_t;
            tmp[j] = w * th * (ln_theta[j] - ln_t);
            q[j] = -w * mu * th_inv_t;
            gt[j] += w * (c_theta[j] - ln_t - th_inv_t);
        }
    }
    let mut ll = sum8(tmp);
    // Nonzero counts: gathered, their logarithms in vector loops, then accumulated.
    let nzs = &mut sc.nz;
    nzs.clear();
    // lgamma(x + theta) - lgamma(theta) of the counts whose product form does not apply.
    let mut ll_rare = 0f64;
    for k in nz {
        let gi = b.genes[k] as usize;
        if m[gi] == 0.0 {
            continue;
        }
        let x = b.values[k];
        let mu = l * grad[gi];
        nzs.gene.push(gi);
        nzs.x.push(x);
        nzs.mu.push(mu);
        if !b.poisson {
            let th = b.theta[gi];
            nzs.t.push(th + mu + EPS);
            match product_form(x as f64, th as f64) {
                Some((p, d)) => {
                    nzs.prod.push(p);
                    nzs.dg.push(d);
                }
                None => {
                    let (v, d) = lgamma_digamma_diff(x as f64, th as f64);
                    ll_rare += v;
                    nzs.prod.push(1.0);
                    nzs.dg.push(d);
                }
            }
        }
    }
    let n_nz = nzs.gene.len();
    nzs.ln_mu.clear();
    nzs.ln_mu.extend(nzs.mu.iter().map(|&mu| fast_ln(mu + EPS)));
    let ln_mu = &nzs.ln_mu[..n_nz];
    let (x, mu) = (&nzs.x[..n_nz], &nzs.mu[..n_nz]);
    if b.poisson {
        for i in 0..n_nz {
            ll += x[i] * ln_mu[i];
            if b.want_grad {
                q[nzs.gene[i]] += x[i] * mu[i] / (mu[i] + EPS);
            }
        }
    } else {
        nzs.ln_t.clear();
        nzs.ln_t.extend(nzs.t.iter().map(|&t| fast_ln(t)));
        nzs.ln_prod.clear();
        nzs.ln_prod.extend(nzs.prod.iter().map(|&p| ln_f64(p)));
        let (t, ln_t, ln_prod) = (&nzs.t[..n_nz], &nzs.ln_t[..n_nz], &nzs.ln_prod[..n_nz]);
        let mut ll_lgamma = ll_rare;
        for i in 0..n_nz {
            ll += x[i] * (ln_mu[i] - ln_t[i]);
            ll_lgamma += ln_prod[i];
            if b.want_grad {
                let gi = nzs.gene[i];
                q[gi] += mu[i] * (x[i] / (mu[i] + EPS) - x[i] / t[i]);
                gt[gi] += (nzs.dg[i] - (x[i] / t[i]) as f64) as f32;
            }
        }
        ll += ll_lgamma as f32;
    }
    if !b.want_grad {
        return ll;
    }
    let total_q = sum8(q);
    let k = b.grad_scale;
    for (s, &qg) in grad.iter_mut().zip(q.iter()) {
        *s = k * (qg - *s * total_q);
    }
    ll
}

/// Sum with eight independent accumulators (vectorises; a plain fold would not).
#[inline(always)]
fn sum8(v: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = v.chunks_exact(8);
    let rest: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for i in 0..8 {
            acc[i] += c[i];
        }
    }
    acc.iter().sum::<f32>() + rest
}

#[inline(always)]
fn max8(v: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let chunks = v.chunks_exact(8);
    let rest = chunks.remainder().iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    for c in chunks {
        for i in 0..8 {
            acc[i] = if c[i] > acc[i] { c[i] } else { acc[i] };
        }
    }
    acc.iter().fold(rest, |m, &x| m.max(x))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod timing {
    use super::*;

    #[test]
    #[ignore]
    fn time_kernel() {
        let (n, g) = (128usize, 20000usize);
        let logits: Vec<f32> = (0..n * g).map(|i| ((i * 7919) % 1000) as f32 / 300.0 - 1.5).collect();
        let theta: Vec<f32> = (0..g).map(|i| 0.5 + (i % 13) as f32).collect();
        let library = vec![3000f32; n];
        let mut rows = Vec::new();
        let mut genes = Vec::new();
        for r in 0..n {
            for j in (r % 11..g).step_by(11) {
                rows.push(r as i64);
                genes.push(j as i64);
            }
        }
        let values = vec![2f32; rows.len()];
        let b = Batch {
            logits: &logits,
            n_genes: g,
            library: &library,
            theta: &theta,
            measured: None,
            rows: &rows,
            genes: &genes,
            values: &values,
            poisson: false,
            grad_scale: 1.0,
            want_grad: true,
        };
        let mut grad = vec![0f32; n * g];
        for threads in [1, 2] {
            let t = std::time::Instant::now();
            for _ in 0..20 {
                likelihood(&b, threads, &mut grad);
            }
            eprintln!("threads {threads}: {:.2} ms", t.elapsed().as_secs_f64() * 1e3 / 20.0);
        }
    }
}
