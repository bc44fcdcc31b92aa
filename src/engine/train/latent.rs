//! The latent sample of the run's event log: validation cells' latent means on their first two
//! principal components, coloured by label or batch, for the TUI's scatter.

use scmz::events::Event;
use scmz::spec::TrainSpec;

use crate::train::covariates::Covariates;

/// Validation cells whose latent means the event log keeps for the TUI's scatter.
pub(crate) const LATENT_SAMPLE: usize = 400;

/// The latent sample as an event: means (`rows.len()` x d, row-major) on their first two
/// principal components, coloured by label, else batch.
pub(crate) fn latent_event(epoch: usize, mu: &[f32], rows: &[usize], args: &TrainSpec, cov: &Covariates) -> Event {
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
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
