//! `scmz-engine bench-step`: the compute floor of a training step, apart from reading.

use std::path::Path;
use std::time::Instant;

use tch::{nn, Device};

use scmz::data::Dataset;
use scmz::spec::{Likelihood, Norm};
use scmz::zoo::manifest::Architecture;

use crate::model::vae::{Pass, Vae};
use crate::train::adam::Adam;
use crate::train::covariates::Covariates;
use crate::train::loader::Batch;
use crate::train::minibatch::prepare;

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
    report!(
        "{}",
        serde_json::json!({ "genes": ds.n_genes(), "batch": batch_size, "read_ms": read_ms, "prepare_ms": prep_ms, "step_ms": step_ms,
            "cells_per_s": batch_size as f64 / step_ms * 1e3, "threads": tch::get_num_threads() })
    );
    Ok(())
}
