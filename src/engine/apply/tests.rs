//! Imported scvi-tools models that learn the library size, or keep a dispersion per gene and
//! batch: their ELBO terms at the latent mean (and the library posterior's mean) are scvi-tools'
//! own, cell by cell (`at_mean.csv`, written by `scripts/make_scvi_fixtures.py`).

use std::path::{Path, PathBuf};

use tch::Device;

use scmz::data::{ColumnKind, Dataset};

use super::encode::{load_model, read_rows};
use crate::model::vae::Pass;
use crate::train::covariates::Covariates;
use crate::train::loader::Batch;
use crate::train::minibatch::prepare;

fn data(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(path)
}

/// Per cell (recon, KL of the latent plus KL of the library) as scvi-tools computed them.
fn scvi_terms(name: &str) -> Vec<(f64, f64)> {
    let text = std::fs::read_to_string(data(&format!("scvi-tools/{name}/at_mean.csv"))).unwrap();
    text.lines()
        .skip(1)
        .map(|l| {
            let v: Vec<f64> = l.split(',').map(|x| x.parse().unwrap()).collect();
            (v[0], v[1] + v[2])
        })
        .collect()
}

#[test]
fn imported_learned_library_and_batch_dispersion_give_scvi_tools_elbo_terms() {
    let _rng = crate::TORCH_RNG_TESTS.lock().unwrap_or_else(|e| e.into_inner());
    let ds = Dataset::open(data("pbmc68k_counts.h5ad")).unwrap();
    let n = ds.n_cells();
    let Some(ColumnKind::Categorical { categories, codes, .. }) = ds.info().obs_column("phase").map(|c| &c.kind) else {
        panic!("pbmc68k has a categorical `phase`");
    };
    for name in ["scvi_poisson_libsize", "scvi_nb_genebatch"] {
        let zoo_dir = tempfile::tempdir().unwrap();
        let zoo = scmz::zoo::Zoo::new(zoo_dir.path());
        let report = scmz::scvi_tools::import::import(&data(&format!("scvi-tools/{name}")), "m", &zoo).unwrap();
        let (m, _vs, vae) = load_model(&report.dir, Device::Cpu).unwrap();
        let lay = &m.architecture.layout;
        assert!(lay.learned_library, "{name}: learns the library size");
        assert_eq!(lay.dispersion_per_batch, name.contains("genebatch"), "{name}");
        let cats = m.architecture.batch_categories.clone();
        assert_eq!(cats.len(), 3, "{name}: the phases");
        let cell_batch: Vec<i32> = codes
            .iter()
            .map(|&c| cats.iter().position(|b| *b == categories[c as usize]).unwrap() as i32)
            .collect();
        let want = scvi_terms(name);
        assert_eq!(want.len(), n);
        // Cell by cell: a minibatch of one (evaluation mode reads no batch statistics).
        let mut worst = 0f64;
        tch::no_grad(|| {
            for (i, &(recon, kl)) in want.iter().enumerate() {
                let cov = Covariates {
                    batch: Some((cats.clone(), vec![cell_batch[i]])),
                    labels: None,
                    presence: None,
                    classes: None,
                };
                let b = Batch {
                    x: read_rows(&ds, &[i]).unwrap(),
                    rows: vec![0],
                };
                let p = prepare(&b, &cov, ds.n_genes()).to(Device::Cpu, 0.0);
                let l = vae.losses(&p.input(), 1.0, Pass::Mean);
                let (r, k) = (l.recon.double_value(&[]), l.kl.double_value(&[]));
                worst = worst
                    .max((r - recon).abs() / recon.abs().max(1.0))
                    .max((k - kl).abs() / kl.abs().max(1.0));
            }
        });
        eprintln!("{name}: ELBO terms within {worst:e} (relative) of scvi-tools'");
        assert!(
            worst < 1e-4,
            "{name}: ELBO terms differ from scvi-tools' by up to {worst:e} (relative)"
        );
    }
}
