//! Applying a zoo model to a dataset it never saw: align the dataset's genes to the model's with
//! the gene module, encode every cell (genes the dataset lacks masked, or zero-filled as
//! scvi-tools does), transfer labels by kNN in latent space, and predict beforehand how much the
//! missing genes will move cells, from the model's own reference cells.

use anyhow::bail;
use scmz::zoo::projection::ProjectReport;
use tch::{Device, Tensor};

use scmz::data::writer::{write_copy_with, Additions, ColumnValues, FrameColumn, Obsm};
use scmz::data::{CsrChunk, Dataset, OpenOptions};
use scmz::genes::overlap::{label, zero_overlap_message};
use scmz::genes::{compare_lists, GeneList};
use scmz::spec::ProjectSpec;
use scmz::zoo::Zoo;

use crate::apply::encode::load_model;
use crate::apply::encoder::{cell_batches, CellBatch, Encoder};
use crate::apply::transfer::knn_labels;
use scmz::genes::to_model_space;

pub fn project(args: ProjectSpec) -> anyhow::Result<()> {
    let zoo = Zoo::new(args.zoo.clone().unwrap_or_else(scmz::zoo::default_zoo));
    zoo.load(&args.model)?;
    let dir = zoo.model_dir(&args.model);
    if let Some(out) = &args.output {
        // The model's own files are inputs too.
        scmz::files::check_output(out, &[&args.data, &dir, &zoo.dir], args.overwrite)?;
        // The format follows the name: nothing is written as HDF5 under another name.
        let ext = out
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        if !matches!(ext.as_str(), "h5ad" | "parquet" | "csv") {
            bail!(
                "{}: name the output .h5ad (the data with the latents added), .parquet or .csv (the latents as a table)",
                out.display()
            );
        }
    }
    // Fine-tuning trains on the CPU (an explicit `--device cuda` is still checked, and said).
    let chosen = crate::train::setup::device(args.device)?;
    let dev = if args.finetune > 0 && !args.predict_only {
        if chosen != Device::Cpu {
            say!("note: --finetune trains and encodes on the CPU");
        }
        Device::Cpu
    } else {
        chosen
    };
    let (m, vs, vae) = load_model(&dir, dev)?;
    let ds = Dataset::open_with(
        &args.data,
        &OpenOptions {
            layer: args.layer.clone(),
            genome: args.genome.clone(),
            ..Default::default()
        },
    )?;
    if !args.force {
        ds.require_counts()
            .map_err(|e| anyhow::anyhow!("{e}; pass --force to project anyway"))?;
    }
    let a = GeneList::from_table(label(&ds), &ds.info().genes);
    let b = m.gene_list();
    let report = compare_lists(&a, &b);
    if report.found == 0 {
        bail!("{}", zero_overlap_message(&report));
    }
    if report.pct_b_found < 100.0 * args.min_overlap && !args.force && !args.predict_only {
        bail!(
            "{}: only {} of the model's {} genes ({:.1} %) were found (key: {}); below --min-overlap {}: pass --force to project anyway",
            args.data.display(),
            report.found,
            report.b_genes,
            report.pct_b_found,
            report.key,
            args.min_overlap
        );
    }
    if args.check_only {
        return Ok(());
    }
    let matching = report.matching.as_ref().expect("matching");
    let g = m.architecture.n_genes;
    let mut a_to_b: Vec<Vec<u32>> = vec![Vec::new(); ds.n_genes()];
    let mut found = vec![0f32; g];
    for (j, x) in matching.b_to_a.iter().enumerate() {
        if let Some((i, _)) = x {
            a_to_b[*i].push(j as u32);
            found[j] = 1.0;
        }
    }
    let mut warnings = report.warnings.clone();
    let mut mask = args.missing == scmz::spec::Missing::Mask;
    if mask && !m.architecture.masked_input && report.found < g {
        warnings.push(format!(
            "model `{}` was trained without masking (no --gene-dropout or presence mask), so it cannot be told which \
             genes are missing: they are zero-filled",
            m.name
        ));
        mask = false;
    }
    let batch = if m.architecture.batch_categories.is_empty() {
        if let Some(c) = &args.batch_category {
            bail!(
                "--batch-category {c}: model `{}` has no batch covariate (it was trained without --batch-key); leave it out",
                m.name
            );
        }
        None
    } else {
        let cats = m.architecture.batch_categories.clone();
        let c = match &args.batch_category {
            Some(name) => CellBatch::All(cats.iter().position(|c| c == name).ok_or_else(|| {
                anyhow::anyhow!("--batch-category {name}: the model's batches are {}", cats.join(", "))
            })?),
            // Fine-tuning encodes every cell under the new batch it adds.
            None if args.finetune > 0 && !args.predict_only => CellBatch::All(0),
            None => cell_batches(&ds, &args.data, m.training.batch_key.as_deref(), &cats, &mut warnings)?,
        };
        if args.finetune > 0 && !m.architecture.layout.encode_batch {
            warnings.push(format!(
                "model `{}`'s encoder does not take the batch (scvi-tools' encode_covariates=False): --finetune fits its decoder to the query (the ELBO), and the latent stays what it is without it",
                m.name
            ));
        }
        Some((cats, c))
    };
    let enc = Encoder {
        vae: &vae,
        dev,
        found,
        mask,
        batch,
    };

    // The query in the model's gene space, chunk by chunk.
    let to_model = |chunk: &CsrChunk| to_model_space(chunk, &a_to_b, g);
    let tuned = if args.finetune > 0 && !args.predict_only {
        let mut cells = Vec::new();
        for chunk in ds.chunks(128) {
            cells.push(to_model(&chunk?));
        }
        let name = label(&ds);
        Some(crate::apply::finetune::add_batch(
            &vs,
            &vae,
            &name,
            &cells,
            &enc.found,
            enc.mask,
            args.finetune,
        )?)
    } else {
        None
    };
    let enc_q = match &tuned {
        Some(t) => Encoder {
            vae: &t.vae,
            dev,
            found: enc.found.clone(),
            mask: enc.mask,
            batch: Some((t.vae.arch.batch_categories.clone(), CellBatch::All(t.batch))),
        },
        None => Encoder {
            vae: &vae,
            dev,
            found: enc.found.clone(),
            mask: enc.mask,
            batch: enc.batch.clone(),
        },
    };

    // Encode every cell, streaming.
    let l = m.architecture.n_latent;
    let mut latent = Vec::with_capacity(ds.n_cells() * l);
    if !args.predict_only {
        for chunk in ds.chunks(2048) {
            let chunk = chunk?;
            latent.extend(enc_q.encode(&to_model(&chunk), true, chunk.first_row)?);
        }
        let bad = latent
            .chunks(l.max(1))
            .filter(|z| z.iter().any(|v| !v.is_finite()))
            .count();
        if bad > 0 {
            bail!(
                "{}: model `{}` gives {bad} of {} cells a latent that is not a finite number (the model's weights hold NaN or infinity, or the values are not counts); nothing was written",
                args.data.display(),
                args.model,
                ds.n_cells()
            );
        }
    }

    // The classifier head's label and probability, for models trained with one.
    let classified: Option<(Vec<String>, Vec<f64>)> = if args.predict_only || ds.n_cells() == 0 {
        None
    } else {
        let mu = Tensor::from_slice(&latent)
            .view([ds.n_cells() as i64, l as i64])
            .to_device(dev);
        let names = &enc_q.vae.arch.classifier_labels;
        enc_q
            .vae
            .predict(&mu)
            .map(|(k, p)| (k.iter().map(|&k| names[k as usize].clone()).collect(), p))
    };

    // Reference sample: latents, labels and (newer models) counts.
    let reference = m.reference.as_ref();
    let tensors: Vec<(String, Tensor)> = match reference {
        Some(r) => crate::model::stored::read_safetensors(&dir.join(&r.file))?,
        None => Vec::new(),
    };
    let get = |name: &str| tensors.iter().find(|(n, _)| n == name).map(|(_, t)| t.shallow_clone());
    let ref_latent = get("latent");
    let label_names: Option<Vec<String>> = reference.and_then(|r| r.labels.clone());
    if let (Some(rl), Some(ls)) = (&ref_latent, &label_names) {
        let size = rl.size();
        if size.len() != 2 || size[0] as usize != ls.len() || size[1] as usize != l {
            bail!(
                "model `{}`: its reference holds {:?} latents but {} labels for a {l}-dimensional latent: the manifest \
                 or {} is damaged; train or install the model again",
                args.model,
                size,
                ls.len(),
                reference.map(|r| r.file.as_str()).unwrap_or("the reference")
            );
        }
    }
    let mut categories: Vec<String> = Vec::new();
    let ref_codes: Option<Vec<i64>> = label_names.as_ref().map(|ls| {
        ls.iter()
            .map(|s| match categories.iter().position(|c| c == s) {
                Some(i) => i as i64,
                None => {
                    categories.push(s.clone());
                    categories.len() as i64 - 1
                }
            })
            .collect()
    });
    let transferred = match (&ref_latent, &ref_codes) {
        (Some(rl), Some(codes)) if !args.predict_only => Some(knn_labels(&latent, rl, codes, args.k, false)),
        _ => None,
    };

    // Predicted mapping quality: the reference cells with the query's missing genes hidden.
    let (mut displacement, mut agreement) = (None, None);
    if let (Some(r), Some(rl)) = (reference.filter(|r| r.counts), &ref_latent) {
        let indptr: Vec<i64> = Vec::try_from(get("counts_indptr").expect("counts_indptr"))?;
        let indices: Vec<i64> = Vec::try_from(get("counts_indices").expect("counts_indices"))?;
        let data: Vec<f32> = Vec::try_from(get("counts_data").expect("counts_data"))?;
        let counts = CsrChunk {
            first_row: 0,
            n_cols: g,
            indptr: indptr.iter().map(|&v| v as usize).collect(),
            indices: indices.iter().map(|&v| v as u32).collect(),
            data,
        };
        // The reference's cells, each under the query's first batch (or the one picked).
        let enc = Encoder {
            batch: enc.batch.clone().map(|(cats, c)| match c {
                CellBatch::PerCell(_) => (cats, CellBatch::All(0)),
                all => (cats, all),
            }),
            found: enc.found.clone(),
            ..enc
        };
        let full = enc.encode(&counts, false, 0)?;
        let part = enc.encode(&counts, true, 0)?;
        let n = r.n_cells;
        let mean: Vec<f64> = (0..l)
            .map(|d| (0..n).map(|i| full[i * l + d] as f64).sum::<f64>() / n as f64)
            .collect();
        let spread: f64 = (0..n)
            .map(|i| {
                (0..l)
                    .map(|d| (full[i * l + d] as f64 - mean[d]).powi(2))
                    .sum::<f64>()
                    .sqrt()
            })
            .sum::<f64>()
            / n as f64;
        let moved: f64 = (0..n)
            .map(|i| {
                (0..l)
                    .map(|d| (full[i * l + d] as f64 - part[i * l + d] as f64).powi(2))
                    .sum::<f64>()
                    .sqrt()
            })
            .sum::<f64>()
            / n as f64;
        displacement = Some(moved / spread.max(1e-12));
        if let Some(codes) = &ref_codes {
            let (lf, _) = knn_labels(&full, rl, codes, args.k, true);
            let (lp, _) = knn_labels(&part, rl, codes, args.k, true);
            agreement = Some(lf.iter().zip(&lp).filter(|(a, b)| a == b).count() as f64 / n as f64);
        }
    }

    // Output.
    let output = args.output.clone().unwrap_or_default();
    let ext = output
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let (pred_labels, conf): (Option<Vec<String>>, Option<Vec<f64>>) = match &transferred {
        Some((codes, conf)) => (
            Some(
                codes
                    .iter()
                    .map(|&c| categories.get(c as usize).cloned().unwrap_or_default())
                    .collect(),
            ),
            Some(conf.clone()),
        ),
        None => (None, None),
    };
    // Each label written with its score: kNN transfer, and the classifier head's.
    let mut label_columns: Vec<(&str, &str, &[String], &[f64])> = Vec::new();
    if let (Some(p), Some(c)) = (&pred_labels, &conf) {
        label_columns.push(("scmz_label", "scmz_label_confidence", p, c));
    }
    if let Some((p, c)) = &classified {
        label_columns.push(("scmz_classifier", "scmz_classifier_probability", p, c));
    }
    if args.predict_only {
    } else if ext == "parquet" || ext == "csv" {
        use polars::prelude::*;
        let mut cols = vec![Column::new("cell_id".into(), ds.info().cell_ids.clone())];
        for d in 0..l {
            cols.push(Column::new(
                format!("latent_{d}").into(),
                (0..ds.n_cells()).map(|i| latent[i * l + d]).collect::<Vec<f32>>(),
            ));
        }
        for (label, score, p, c) in &label_columns {
            cols.push(Column::new((*label).into(), p.to_vec()));
            cols.push(Column::new((*score).into(), c.to_vec()));
        }
        let mut df = DataFrame::new_infer_height(cols)?;
        scmz::tables::write_table(&mut df, &output)?;
    } else {
        let mut add = Additions {
            obs: Vec::new(),
            obsm: vec![Obsm {
                name: "X_scmz".into(),
                n_cols: l,
                values: latent.clone(),
            }],
        };
        for (label, score, p, c) in &label_columns {
            add.obs.push(FrameColumn {
                name: (*label).into(),
                values: ColumnValues::categorical_from(p),
            });
            add.obs.push(FrameColumn {
                name: (*score).into(),
                values: ColumnValues::Float(c.to_vec()),
            });
        }
        write_copy_with(&ds, &output, &add)?;
    }
    let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
    for p in pred_labels.iter().flatten() {
        *counts.entry(p.clone()).or_default() += 1;
    }
    let mut labels: Vec<(String, usize)> = counts.into_iter().collect();
    labels.sort_by_key(|l| std::cmp::Reverse(l.1));
    let out = ProjectReport {
        data: args.data.display().to_string(),
        model: m.name.clone(),
        cells: ds.n_cells(),
        model_genes: g,
        found: report.found,
        pct_found: report.pct_b_found,
        key: format!("{}: {}", report.key, report.reason),
        missing_policy: if mask {
            scmz::spec::Missing::Mask
        } else {
            scmz::spec::Missing::Zero
        },
        warnings,
        predicted_displacement: displacement,
        predicted_agreement: agreement,
        finetune_loss: tuned.as_ref().map(|t| (t.loss_before, t.loss_after)),
        labels,
        mean_confidence: conf.as_ref().map(|c| c.iter().sum::<f64>() / c.len().max(1) as f64),
        output: output.display().to_string(),
    };
    let printed = if args.json {
        scmz::files::report_line(&serde_json::to_string_pretty(&out)?)
    } else {
        out.print(&report.routes)
    };
    printed.map_err(|e| {
        anyhow::anyhow!(
            "{} is written, but its report cannot be printed on standard output: {}",
            output.display(),
            scmz::files::describe(&e)
        )
    })?;
    Ok(())
}
