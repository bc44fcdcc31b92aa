//! A zoo model loaded for inference, and latent means of a dataset's cells under it.

use std::path::Path;

use anyhow::{bail, Context};
use tch::{nn, Device};

use scmz::data::Dataset;
use scmz::zoo::manifest::Manifest;

use crate::model::stored::load_stored;
use crate::model::vae::Vae;
use crate::train::covariates::{categorical, Covariates};
use crate::train::loader::Batch;
use crate::train::minibatch::prepare;

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

/// Latent means (row-major, rows in the order given) of the given cells.
pub(crate) fn encode_rows(
    vae: &Vae,
    ds: &Dataset,
    cov: &Covariates,
    rows: &[usize],
    dev: Device,
) -> anyhow::Result<Vec<f32>> {
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
