//! One epoch: the training pass over its minibatches (a step each, progress in the event log and
//! on a terminal), then the validation pass (the ELBO on held-out cells, KL per dimension and the
//! latent sample).

use std::io::IsTerminal;
use std::time::Instant;

use anyhow::bail;
use tch::{Device, Kind, Tensor};

use scmz::events::{Event, LossTerms};

use crate::model::vae::{Losses, Pass};
use crate::train::feed::Batches;
use crate::train::latent::{latent_event, LATENT_SAMPLE};
use crate::train::minibatch::Prepared;
use crate::train::setup::Run;
use crate::train::stop::stop_requested;

/// The training pass's result.
pub(crate) struct Trained {
    pub terms: LossTerms,
    pub cells_per_s: f64,
    /// Mean cross-entropy of the classifier head, where one is trained.
    pub classification: Option<f64>,
}

/// The validation pass's result: full KL, no dropout, no gene hiding.
pub(crate) struct Validated {
    pub terms: LossTerms,
    pub n_cells: usize,
    pub kl_per_dim: Vec<f64>,
}

/// Progress lines on a terminal, step events at most twice a second.
pub(crate) struct Progress {
    pub tty: bool,
    last_step_event: Instant,
}

impl Progress {
    pub fn new() -> Progress {
        Progress {
            tty: std::io::stderr().is_terminal(),
            last_step_event: Instant::now(),
        }
    }
}

pub(crate) fn terms(recon: f64, kl: f64, kl_weight: f64) -> LossTerms {
    LossTerms {
        recon,
        kl,
        total: recon + kl_weight * kl,
        elbo: recon + kl,
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
    fn add(&mut self, l: &Losses, m: usize) {
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

/// Minibatches kept from a training pass, a uniform sample (reservoir sampling) of those at
/// least half the batch size, about `--norm-cells` cells in all, for `Vae::population_norms`.
struct NormSample {
    kept: Vec<Prepared>,
    size: usize,
    min_cells: usize,
    seen: u64,
    rng: scmz::stats::Rng,
}

impl NormSample {
    fn new(args: &scmz::spec::TrainSpec, epoch: usize) -> NormSample {
        let size = args.norm_cells.div_ceil(args.batch_size.max(1));
        NormSample {
            kept: Vec::with_capacity(size),
            size,
            min_cells: (args.batch_size / 2).max(2),
            seen: 0,
            rng: scmz::stats::Rng::new(args.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
        }
    }

    fn offer(&mut self, p: Prepared) {
        if self.size == 0 || p.n < self.min_cells {
            return;
        }
        self.seen += 1;
        if self.kept.len() < self.size {
            self.kept.push(p);
        } else {
            let j = (self.rng.next_u64() % self.seen) as usize;
            if j < self.size {
                self.kept[j] = p;
            }
        }
    }
}

impl Run {
    /// The training pass of `epoch`: one optimiser step per minibatch. `None` when a stop was
    /// asked for (the epoch is left unfinished).
    pub fn train_epoch(
        &mut self,
        epoch: usize,
        batches: Batches,
        progress: &mut Progress,
    ) -> anyhow::Result<Option<Trained>> {
        let (dev, kl_weight) = (self.dev, self.kl_weight(epoch));
        let started = Instant::now();
        let (mut sr, mut sk, mut n) = (0.0, 0.0, 0usize);
        let (mut sce, mut nce) = (0.0, 0usize);
        // On a GPU the epoch's loss sums stay on the device (no wait for each step).
        let mut on_device = (dev != Device::Cpu && self.trace.is_none()).then(DeviceSums::default);
        let mut sample = NormSample::new(&self.args, epoch);
        for p in batches {
            let p = p.map_err(anyhow::Error::msg)?.to(dev, self.args.gene_dropout);
            if stop_requested() {
                return Ok(None);
            }
            if self.trace.as_ref().is_some_and(|t| t.fixed_dropout) {
                crate::model::layers::TRACE_DROPOUT_STEP
                    .store(self.state.step as i64, std::sync::atomic::Ordering::Relaxed);
            }
            let l = self.vae.losses(&p.input(), kl_weight, self.train_pass);
            let grads = self.vae.backward(&l, self.opt.params());
            self.opt.step(&grads);
            let m = p.n;
            let event_due = progress.last_step_event.elapsed().as_secs_f64() > 0.5;
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
                if let Some(t) = &mut self.trace {
                    t.step(epoch, &p.rows, r, k, kl_weight)?;
                }
                if !r.is_finite() || !k.is_finite() {
                    return Err(self.diverged(epoch, r));
                }
                if let Some(ce) = &l.ce {
                    sce += ce.double_value(&[]) * m as f64;
                    nce += m;
                }
                sr += r * m as f64;
                sk += k * m as f64;
            }
            n += m;
            self.state.step += 1;
            sample.offer(p);
            if event_due {
                progress.last_step_event = Instant::now();
                let cps = n as f64 / started.elapsed().as_secs_f64().max(1e-9);
                self.log.write(Event::Step {
                    step: self.state.step,
                    epoch,
                    loss: r + kl_weight * k,
                    recon: r,
                    kl: k,
                    cells_per_s: cps,
                })?;
                if progress.tty {
                    say_inline!(
                        "\repoch {}/{}  step {}  loss {:.1}  {:.0} cells/s   ",
                        epoch + 1,
                        self.max_epochs,
                        self.state.step,
                        r + kl_weight * k,
                        cps
                    );
                }
            }
        }
        if stop_requested() {
            return Ok(None);
        }
        self.vae.population_norms(sample.kept.iter().map(|p| p.input()));
        if let Some(sums) = on_device.take() {
            (sr, sk, sce, nce) = sums.read();
            if !sr.is_finite() || !sk.is_finite() {
                return Err(self.diverged(epoch, sr));
            }
        }
        let per_cell = |s: f64| s / n.max(1) as f64;
        Ok(Some(Trained {
            terms: terms(per_cell(sr), per_cell(sk), kl_weight),
            cells_per_s: n as f64 / started.elapsed().as_secs_f64().max(1e-9),
            classification: (nce > 0).then(|| sce / nce as f64),
        }))
    }

    /// Recorded in the event log, and said as the error that ends the run.
    fn diverged(&mut self, epoch: usize, loss: f64) -> anyhow::Error {
        let message = format!("loss became {loss} at epoch {epoch}");
        if let Err(e) = self.log.write(Event::Error { message }) {
            return e.into();
        }
        anyhow::anyhow!(
            "{}: training diverged in epoch {} (loss {loss}); lower --lr, or check that X holds raw counts of a sane size",
            self.path.display(),
            epoch + 1
        )
    }

    /// The validation pass of `epoch`: the ELBO's estimate from a sampled latent, as scvi-tools
    /// validates (decoding the mean instead reads several units better than the ELBO is). On
    /// some epochs (`latent_due`) it also records the latent sample.
    pub fn validate(&mut self, epoch: usize, batches: Batches) -> anyhow::Result<Validated> {
        let dev = self.dev;
        let (mut vr, mut vk, mut vn) = (0.0, 0.0, 0usize);
        let mut kl_dims = vec![0f64; self.args.n_latent];
        let latent_epoch = latent_due(epoch, self.max_epochs);
        let (mut sample_mu, mut sample_rows) = (Vec::<f32>::new(), Vec::<usize>::new());
        tch::no_grad(|| -> anyhow::Result<()> {
            for p in batches {
                let p = p.map_err(anyhow::Error::msg)?.to(dev, 0.0);
                let l = self.vae.losses(&p.input(), 1.0, Pass::Elbo);
                let m = p.n as f64;
                vr += l.recon.double_value(&[]) * m;
                vk += l.kl.double_value(&[]) * m;
                let per: Vec<f64> = Vec::<f64>::try_from(l.kl_per_dim.to_kind(Kind::Double).to_device(Device::Cpu))?;
                for (a, v) in kl_dims.iter_mut().zip(per) {
                    *a += v * m;
                }
                if latent_epoch && sample_rows.len() < LATENT_SAMPLE {
                    let mu = self.vae.encode(&p.input(), false).0;
                    let mu = mu.to_kind(Kind::Float).to_device(Device::Cpu);
                    sample_mu.extend(Vec::<f32>::try_from(mu.flatten(0, -1))?);
                    sample_rows.extend(&p.rows);
                }
                vn += p.n;
            }
            Ok(())
        })?;
        let val = terms(vr / vn.max(1) as f64, vk / vn.max(1) as f64, 1.0);
        if vn > 0 && !val.elbo.is_finite() {
            self.log.write(Event::Error {
                message: format!("validation ELBO became {} at epoch {epoch}", val.elbo),
            })?;
            bail!(
                "{}: training diverged in epoch {} (validation ELBO {}); nothing was saved: lower --lr, or check that X holds raw counts of a sane size",
                self.path.display(),
                epoch + 1,
                val.elbo
            );
        }
        for v in &mut kl_dims {
            *v /= vn.max(1) as f64;
        }
        if latent_epoch && !sample_rows.is_empty() {
            let event = latent_event(epoch, &sample_mu, &sample_rows, &self.args, &self.cov);
            self.log.write(event)?;
        }
        Ok(Validated {
            terms: val,
            n_cells: vn,
            kl_per_dim: kl_dims,
        })
    }
}

/// Whether `epoch` records the latent sample: every epoch of the first 16, then ever more
/// sparsely (about 8 per doubling of the epoch, never sparser than 40 a run) and the last planned
/// epoch. A run planned long and stopped early (or resumed far in) still shows a recent latent;
/// a million-epoch log holds about 140 samples, not 40 spread where the run never gets.
pub(crate) fn latent_due(epoch: usize, max_epochs: usize) -> bool {
    let step = (max_epochs / 40).max(1).min((epoch / 8).max(1).next_power_of_two());
    epoch.is_multiple_of(step) || epoch + 1 == max_epochs
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod latent_schedule {
    #[test]
    fn latent_samples_follow_the_run_where_it_goes() {
        let due = |max: usize, upto: usize| (0..upto).filter(|&e| super::latent_due(e, max)).collect::<Vec<_>>();
        // A short run: every epoch.
        assert_eq!(due(20, 20).len(), 20);
        // 400 epochs: no gap over 20 epochs, and the last.
        let d = due(400, 400);
        assert!(d.windows(2).all(|w| w[1] - w[0] <= 20) && d.contains(&399), "{d:?}");
        // Planned for 100,000, stopped at 341: a sample within the last 64 epochs.
        let d = due(100_000, 341);
        assert!(*d.last().unwrap() >= 341 - 64, "{d:?}");
        // A million epochs: about 8 per doubling.
        let n = due(1_000_000, 1_000_000).len();
        assert!((100..200).contains(&n), "{n}");
    }
}
