//! The likelihood terms of the decoder: fused on the CPU (`kernels::fused`), over the nonzeros,
//! or dense under autograd (a GPU), for NB, ZINB and Poisson.

use super::*;
use crate::model::input::grad_mode;

impl Vae {
    /// Per-cell log-likelihood (without lgamma(x + 1)) computed as "every gene at a zero count"
    /// densely plus a correction at the nonzero counts only: lgamma and the x-dependent terms,
    /// the expensive part, then cost nonzeros instead of cells x genes.
    ///
    /// On the CPU, `lgamma(x + theta) - lgamma(theta)` at the nonzeros is computed in Rust (a few
    /// logs for the small integer counts of real data instead of libtorch's lgamma and, in the
    /// backward pass, two digammas per nonzero); its gradient enters through the returned
    /// zero-valued surrogate, to be added to the mean loss when gradients are wanted.
    pub(super) fn sparse_ll(
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
pub(super) fn lgamma_terms(
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
pub(super) fn log_nb(x: &Tensor, mu: &Tensor, theta: &Tensor) -> Tensor {
    let log_theta_mu = (theta + mu + EPS).log();
    theta * ((theta + EPS).log() - &log_theta_mu) + x * ((mu + EPS).log() - &log_theta_mu) + (x + theta).lgamma()
        - theta.lgamma()
}

/// Zero-inflated NB; `pi` are the logits of the zero-inflation probability.
pub(super) fn log_zinb(x: &Tensor, mu: &Tensor, theta: &Tensor, pi: &Tensor) -> Tensor {
    let softplus_pi = (-pi).softplus();
    let log_theta_mu = (theta + mu + EPS).log();
    let pi_theta_log = -pi + theta * ((theta + EPS).log() - &log_theta_mu);
    let case_zero = pi_theta_log.softplus() - &softplus_pi;
    let case_non_zero =
        -&softplus_pi + &pi_theta_log + x * ((mu + EPS).log() - &log_theta_mu) + (x + theta).lgamma() - theta.lgamma();
    let is_zero = x.lt(EPS).to_kind(Kind::Float);
    &is_zero * case_zero + (1.0 - &is_zero) * case_non_zero
}
