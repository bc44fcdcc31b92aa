//! `scmz compare DATA --model NAME`: does the pretrained model beat one trained from scratch on
//! this dataset? Holds out cells (seeded), trains a fresh model of the same architecture on the
//! rest, maps the data with the pretrained model (missing genes masked) and scores both on the
//! held-out cells; `--overlaps` repeats it with part of the model's genes hidden from the data.

use std::path::Path;
use std::time::Instant;

use anyhow::bail;
use anyhow::Context;
use tch::{Device, Kind, Tensor};

use scmz::data::writer::{Annotations, ColumnValues, Frame, FrameColumn, H5adWriter};
use scmz::data::{ColumnKind, CsrChunk, Dataset};
use scmz::genes::overlap::label;
use scmz::genes::{compare_lists, GeneList};
use scmz::zoo::Zoo;

use crate::apply::encode::load_model;
use crate::apply::transfer::knn_labels;
use crate::model::vae::{Pass, Vae};
use crate::train::covariates::Covariates;
use crate::train::loader::{Batch, Rng};
use crate::train::minibatch::prepare;
use crate::train::{train, Outcome};
use scmz::genes::to_model_space;
use scmz::spec::{CompareSpec, TrainSpec};

use scmz::stats::{ari, kmeans};
use scmz::zoo::comparison::{Comparison, ComparisonRow as Row};

/// Mean log-likelihood per cell over the genes where `shared` is 1, and latent means. A model
/// trained with batches (`batches`: its categories) sees the cells as its first batch, as
/// `scmz project` does by default.
fn score(
    vae: &Vae,
    x: &CsrChunk,
    shared: &[f32],
    visible: Option<&[f32]>,
    batches: &[String],
) -> anyhow::Result<(f64, Vec<f32>)> {
    let n = x.n_rows();
    let g = x.n_cols;
    let cov = Covariates {
        batch: (!batches.is_empty()).then(|| (batches.to_vec(), vec![0; n])),
        labels: None,
        presence: None,
        classes: None,
    };
    let mut p = prepare(
        &Batch {
            x: x.clone(),
            rows: (0..n).collect(),
        },
        &cov,
        g,
    )
    .to(Device::Cpu, 0.0);
    let row = |v: &[f32]| Tensor::from_slice(v).view([1, g as i64]).repeat([n as i64, 1]);
    if vae.arch.masked_input {
        p.visible = Some(
            visible
                .map(row)
                .unwrap_or_else(|| Tensor::ones([n as i64, g as i64], (Kind::Float, Device::Cpu))),
        );
    }
    p.measured = Some(row(shared));
    let (l, mu) = tch::no_grad(|| {
        let l = vae.losses(&p.input(), 1.0, Pass::Mean);
        let (mu, _) = vae.encode(&p.input(), false);
        (l.recon.double_value(&[]), mu)
    });
    Ok((-l, Vec::<f32>::try_from(mu.flatten(0, 1))?))
}

fn write_subset(
    ds: &Dataset,
    rows: &[usize],
    keep: &[bool],
    labels: Option<(&str, &[String], &[i32])>,
    out: &Path,
) -> anyhow::Result<()> {
    let (cols, n_keep) = scmz::data::matrix::column_map(keep);
    let mut w = H5adWriter::create(out, n_keep)?;
    let all = crate::apply::encode::read_rows(ds, rows)?;
    let mut x = CsrChunk::empty(0, n_keep);
    for r in 0..all.n_rows() {
        let (idx, val) = all.row(r);
        x.push_row(
            idx.iter()
                .zip(val)
                .filter(|(c, _)| cols[**c as usize] != u32::MAX)
                .map(|(c, v)| (cols[*c as usize], *v)),
        );
    }
    w.append(&x)?;
    let kept = |values: &[String]| -> Vec<String> {
        values
            .iter()
            .zip(keep)
            .filter(|(_, k)| **k)
            .map(|(g, _)| g.clone())
            .collect()
    };
    let table = &ds.info().genes;
    let genes = kept(&table.index);
    // The gene columns too (Ensembl ids, symbols): where the index repeats a name (mouse `Rp1`),
    // the ids keep the genes apart, as in the user's file.
    let var_cols = table
        .columns
        .iter()
        .map(|(name, values)| FrameColumn {
            name: name.clone(),
            values: ColumnValues::Strings(kept(values)),
        })
        .collect();
    let mut obs_cols = Vec::new();
    if let Some((name, cats, codes)) = labels {
        obs_cols.push(FrameColumn {
            name: name.to_string(),
            values: ColumnValues::Categorical {
                categories: cats.to_vec(),
                codes: rows.iter().map(|&r| codes[r]).collect(),
                ordered: false,
            },
        });
    }
    w.finish(&Annotations {
        obs: Frame {
            index: rows.iter().map(|&r| ds.info().cell_ids[r].clone()).collect(),
            columns: obs_cols,
        },
        var: Frame {
            index: genes,
            columns: var_cols,
        },
        ..Default::default()
    })?;
    Ok(())
}

/// Compares, then writes the report; a cancel during a training ends it with that training's
/// outcome (the temporary folder goes with it).
pub fn compare(mut args: CompareSpec) -> anyhow::Result<Outcome> {
    // `--overlaps 100,100` means one overlap (a repeat would only repeat its rows).
    let mut seen = std::collections::HashSet::new();
    args.overlaps.retain(|p| seen.insert(*p));
    let zoo = Zoo::new(args.zoo.clone().unwrap_or_else(scmz::zoo::default_zoo));
    if let Some(out) = &args.out {
        // The model's own files are inputs too.
        scmz::files::check_output(
            out,
            &[&args.data, &zoo.model_dir(&args.model), &zoo.dir],
            args.overwrite,
        )?;
    }
    zoo.load(&args.model)?;
    let (m, _vs, vae) = load_model(&zoo.model_dir(&args.model), Device::Cpu)?;
    let ds = Dataset::open(&args.data)?;
    ds.require_counts()?;
    let overlap = compare_lists(&GeneList::from_table(label(&ds), &ds.info().genes), &m.gene_list());
    let share = overlap.pct_b_found;
    let matching = overlap.matching.expect("matching");
    if matching.found() == 0 {
        bail!(
            "{}: no gene of model `{}` found; see `scmz overlap {} {}`",
            args.data.display(),
            m.name,
            args.data.display(),
            m.name
        );
    }
    // The sweep's overlaps are shares of the genes found: say how few those are, where a
    // projection would be refused (`scmz project --min-overlap`, 50 % by default).
    if share < 50.0 {
        say!(
            "warning: only {share:.1} % of model `{}`'s genes ({} of {}) are in {}; the overlaps below are shares of those, and `scmz project` refuses this pair without --force",
            m.name,
            matching.found(),
            m.architecture.n_genes,
            args.data.display()
        );
    }
    let labels = match &args.label_key {
        Some(k) => match ds.info().obs_column(k).map(|c| &c.kind) {
            Some(ColumnKind::Categorical { categories, codes, .. }) => {
                Some((k.as_str(), categories.clone(), codes.clone()))
            }
            _ => bail!("{}: no categorical obs column `{k}`", args.data.display()),
        },
        None => None,
    };
    let g_model = m.architecture.n_genes;
    // Copies of the user's cells: a folder only the user can read, removed however compare ends
    // (an error included).
    let tmp_dir = tempfile::Builder::new().prefix("scmz-compare-").tempdir()?;
    let tmp = tmp_dir.path().to_path_buf();
    let mut rows = Vec::new();
    for &pct in &args.overlaps {
        for seed in 0..args.seeds {
            let mut rng = Rng::new(seed * 7919 + pct as u64);
            // Hide (100 - pct) % of the model's genes found in the data.
            let mut found: Vec<usize> = (0..g_model).filter(|&j| matching.b_to_a[j].is_some()).collect();
            rng.shuffle(&mut found);
            let n_hide = found.len() * (100 - pct.min(100)) as usize / 100;
            let mut keep_a = vec![true; ds.n_genes()];
            let mut visible = vec![0f32; g_model];
            for (k, &j) in found.iter().enumerate() {
                let (i, _) = matching.b_to_a[j].expect("found");
                if k < n_hide {
                    keep_a[i] = false;
                } else {
                    visible[j] = 1.0;
                }
            }
            let mut cells: Vec<usize> = (0..ds.n_cells()).collect();
            rng.shuffle(&mut cells);
            let n_test = ((ds.n_cells() as f64) * args.holdout).round().max(1.0) as usize;
            let (test, trainset) = cells.split_at(n_test);
            let (mut test, mut trainset) = (test.to_vec(), trainset.to_vec());
            test.sort_unstable();
            trainset.sort_unstable();
            let lab = labels
                .as_ref()
                .map(|(k, c, codes)| (*k, c.as_slice(), codes.as_slice()));
            let train_file = tmp.join(format!("train-{pct}-{seed}.h5ad"));
            let test_file = tmp.join(format!("test-{pct}-{seed}.h5ad"));
            write_subset(&ds, &trainset, &keep_a, lab, &train_file)?;
            write_subset(&ds, &test, &keep_a, lab, &test_file)?;

            // From scratch.
            let t = Instant::now();
            let name = format!("scratch-{pct}-{seed}");
            let mut targs = TrainSpec::defaults(train_file.clone(), name.clone());
            targs.zoo = Some(tmp.join("zoo"));
            targs.epochs = Some(args.epochs);
            targs.n_hidden = m.architecture.n_hidden;
            targs.n_latent = m.architecture.n_latent;
            targs.n_layers = m.architecture.n_layers;
            targs.likelihood = m.architecture.likelihood;
            targs.seed = seed;
            targs.patience = 0;
            if let cancelled @ Outcome::Cancelled(_) = train(targs)? {
                return Ok(cancelled);
            }
            let (_, _svs, scratch) = load_model(&tmp.join("zoo").join(&name), Device::Cpu)?;
            let scratch_secs = t.elapsed().as_secs_f64();

            // Both models on the same cells, scored over the genes both see.
            let tds = Dataset::open(&test_file)?;
            let trds = Dataset::open(&train_file)?;
            let a_kept: Vec<usize> = (0..ds.n_genes()).filter(|&i| keep_a[i]).collect();
            let mut shared_scratch = vec![0f32; a_kept.len()];
            let mut a_to_b: Vec<Vec<u32>> = vec![Vec::new(); a_kept.len()];
            for (j, x) in matching.b_to_a.iter().enumerate() {
                if let Some((i, _)) = x {
                    if let Ok(pos) = a_kept.binary_search(i) {
                        a_to_b[pos].push(j as u32);
                        shared_scratch[pos] = 1.0;
                    }
                }
            }
            let to_model = |c: &CsrChunk| to_model_space(c, &a_to_b, g_model);
            let t = Instant::now();
            let test_x = tds.read_all()?;
            let train_x = trds.read_all()?;
            let batches = &m.architecture.batch_categories;
            let (pre_ll, pre_test) = score(&vae, &to_model(&test_x), &visible, Some(&visible), batches)?;
            let (_, pre_train) = score(&vae, &to_model(&train_x), &visible, Some(&visible), batches)?;
            let pretrained_secs = t.elapsed().as_secs_f64();
            let (scr_ll, scr_test) = score(&scratch, &test_x, &shared_scratch, None, &[])?;
            let (_, scr_train) = score(&scratch, &train_x, &shared_scratch, None, &[])?;
            let l = m.architecture.n_latent;
            let acc = |train_z: &[f32], test_z: &[f32]| {
                labels.as_ref().map(|(_, _, codes)| {
                    let tr: Vec<i64> = trainset.iter().map(|&r| codes[r] as i64).collect();
                    let te: Vec<i64> = test.iter().map(|&r| codes[r] as i64).collect();
                    let reference = Tensor::from_slice(train_z).view([-1, l as i64]);
                    let (pred, _) = knn_labels(test_z, &reference, &tr, 15, false);
                    pred.iter().zip(&te).filter(|(a, b)| a == b).count() as f64 / te.len() as f64
                })
            };
            let k = labels.as_ref().map_or(10, |(_, c, _)| c.len()).max(2);
            let ari_v = ari(&kmeans(&pre_test, l, k, seed), &kmeans(&scr_test, l, k, seed));
            rows.push(Row {
                overlap_pct: pct,
                seed,
                shared_genes: shared_scratch.iter().filter(|v| **v > 0.0).count(),
                pretrained_ll: pre_ll,
                scratch_ll: scr_ll,
                pretrained_accuracy: acc(&pre_train, &pre_test),
                scratch_accuracy: acc(&scr_train, &scr_test),
                ari: ari_v,
                pretrained_seconds: pretrained_secs,
                scratch_seconds: scratch_secs,
            });
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
    report(&args, &rows)?;
    Ok(Outcome::Finished)
}

fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    let sd = if v.len() > 1 {
        (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
    } else {
        f64::NAN
    };
    (m, sd)
}

fn report(args: &CompareSpec, rows: &[Row]) -> anyhow::Result<()> {
    if let Some(out) = &args.out {
        use polars::prelude::*;
        let mut df = DataFrame::new_infer_height(vec![
            Column::new(
                "overlap_pct".into(),
                rows.iter().map(|r| r.overlap_pct).collect::<Vec<_>>(),
            ),
            Column::new("seed".into(), rows.iter().map(|r| r.seed).collect::<Vec<_>>()),
            Column::new(
                "shared_genes".into(),
                rows.iter().map(|r| r.shared_genes as u64).collect::<Vec<_>>(),
            ),
            Column::new(
                "pretrained_ll".into(),
                rows.iter().map(|r| r.pretrained_ll).collect::<Vec<_>>(),
            ),
            Column::new(
                "scratch_ll".into(),
                rows.iter().map(|r| r.scratch_ll).collect::<Vec<_>>(),
            ),
            Column::new(
                "pretrained_accuracy".into(),
                rows.iter().map(|r| r.pretrained_accuracy).collect::<Vec<_>>(),
            ),
            Column::new(
                "scratch_accuracy".into(),
                rows.iter().map(|r| r.scratch_accuracy).collect::<Vec<_>>(),
            ),
            Column::new("ari".into(), rows.iter().map(|r| r.ari).collect::<Vec<_>>()),
            Column::new(
                "pretrained_seconds".into(),
                rows.iter().map(|r| r.pretrained_seconds).collect::<Vec<_>>(),
            ),
            Column::new(
                "scratch_seconds".into(),
                rows.iter().map(|r| r.scratch_seconds).collect::<Vec<_>>(),
            ),
        ])?;
        scmz::tables::write_table(&mut df, out)?;
    }
    // Verdict per overlap: mean log-likelihood margin against its run-to-run spread.
    let mut verdicts = Vec::new();
    for &pct in &args.overlaps {
        let diffs: Vec<f64> = rows
            .iter()
            .filter(|r| r.overlap_pct == pct)
            .map(|r| r.pretrained_ll - r.scratch_ll)
            .collect();
        let (m, sd) = mean_sd(&diffs);
        let noise = if sd.is_nan() {
            "one seed: noise unknown, use --seeds 3".to_string()
        } else if m.abs() > 2.0 * sd / (diffs.len() as f64).sqrt() {
            format!("beyond run-to-run noise (sd {sd:.2})")
        } else {
            format!("within run-to-run noise (sd {sd:.2})")
        };
        let winner = if m > 0.0 { "pretrained" } else { "from scratch" };
        verdicts.push(format!(
            "{pct} % of the model's genes: use the {winner} model; log-likelihood margin {:.2} per cell, {noise}",
            m.abs()
        ));
    }
    // Kept with the model for the TUI's chart.
    let zoo = scmz::zoo::Zoo::new(args.zoo.clone().unwrap_or_else(scmz::zoo::default_zoo));
    let kept = Comparison {
        data: std::fs::canonicalize(&args.data)
            .unwrap_or(args.data.clone())
            .display()
            .to_string(),
        created: scmz::events::now_rfc3339(),
        rows: rows.to_vec(),
        verdicts: verdicts.clone(),
    };
    // Printed whether or not the model folder takes them: a read-only zoo loses no results.
    let saved = scmz::zoo::comparison::save(&zoo.model_dir(&args.model), &kept)
        .map(drop)
        .with_context(|| {
            format!(
            "the results above are not kept with model `{}` (the TUI will not chart them; --out FILE keeps a table)",
            args.model
        )
        });
    if args.json {
        report!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "rows": rows, "verdicts": verdicts }))?
        );
        return saved;
    }
    report!(
        "{:>7} {:>4} {:>6} {:>13} {:>13} {:>9} {:>9} {:>6} {:>8} {:>8}",
        "overlap",
        "seed",
        "genes",
        "pretrained ll",
        "scratch ll",
        "pre acc",
        "scr acc",
        "ARI",
        "pre s",
        "scr s"
    );
    for r in rows {
        let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3}"));
        report!(
            "{:>6}% {:>4} {:>6} {:>13.2} {:>13.2} {:>9} {:>9} {:>6.3} {:>8.1} {:>8.1}",
            r.overlap_pct,
            r.seed,
            r.shared_genes,
            r.pretrained_ll,
            r.scratch_ll,
            f(r.pretrained_accuracy),
            f(r.scratch_accuracy),
            r.ari,
            r.pretrained_seconds,
            r.scratch_seconds
        );
    }
    for v in verdicts {
        report!("verdict: {}", scmz::files::printable(&v.to_string()));
    }
    saved
}
