//! `scmz overlap A B [C ...]` and `scmz merge A B ... -o OUT`.

use std::path::{Path, PathBuf};

use scmz::data::{Dataset, OpenOptions};
use scmz::files::check_output;
use scmz::genes::merge::{merge, MergeOptions};
use scmz::genes::overlap::{compare_datasets, genes_frame, label, pairs_frame, zero_overlap_message};
use scmz::genes::{GeneList, OverlapReport};
use scmz::tables::write_table;

use super::table::Table;
use scmz::human::thousands;

fn open_all(paths: &[PathBuf], opts: &OpenOptions) -> anyhow::Result<Vec<Dataset>> {
    Ok(paths
        .iter()
        .map(|p| Dataset::open_with(p, opts))
        .collect::<Result<_, _>>()?)
}

/// `scmz overlap DATA MODEL`: the gene report against a zoo model, plus the mapping quality the
/// engine predicts from the model's reference cells.
fn overlap_model(data: &Path, model: &str, opts: &OpenOptions, json: bool) -> anyhow::Result<()> {
    let zoo = scmz::zoo::Zoo::new(scmz::zoo::default_zoo());
    let m = zoo.load(model)?;
    let ds = Dataset::open_with(data, opts)?;
    let r = scmz::genes::overlap::compare_dataset_to_list(&ds, &m.gene_list())?;
    let mut spec = scmz::spec::ProjectSpec::prediction(data, model);
    spec.layer = opts.layer.clone();
    let args = scmz::spec::EngineRequest::Project(Box::new(spec))
        .to_args()
        .map_err(|e| anyhow::anyhow!("{}: {e}", data.display()))?;
    let o = scmz::jobs::engine_command(&scmz::jobs::this_engine())
        .args(&args)
        .output()?;
    let predicted: Option<serde_json::Value> = o
        .status
        .success()
        .then(|| serde_json::from_slice(&o.stdout).ok())
        .flatten();
    if json {
        let mut v = serde_json::to_value(&r)?;
        for key in ["predicted_displacement", "predicted_agreement"] {
            v[key] = predicted.as_ref().map_or(serde_json::Value::Null, |p| p[key].clone());
        }
        outln!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print_report(&r);
        match &predicted {
            Some(p) if !p["predicted_displacement"].is_null() => outln!(
                "predicted {:.3} latent displacement (share of the latent spread){}",
                p["predicted_displacement"].as_f64().unwrap_or(0.0),
                p["predicted_agreement"]
                    .as_f64()
                    .map(|a| format!("; {:.1} % of labels as with all genes", 100.0 * a))
                    .unwrap_or_default()
            ),
            Some(_) => outln!("predicted -: the model keeps no reference counts (trained by an older scmz)"),
            None => outln!("predicted -: {}", String::from_utf8_lossy(&o.stderr).trim()),
        }
    }
    anyhow::ensure!(r.found > 0, "{}", zero_overlap_message(&r));
    Ok(())
}

pub fn overlap(
    paths: &[PathBuf],
    opts: &OpenOptions,
    json: bool,
    out: Option<&Path>,
    overwrite: bool,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        paths.len() >= 2,
        "overlap needs two datasets (A: the data, B: the reference) or more"
    );
    if let Some(out) = out {
        check_output(out, &paths.iter().map(PathBuf::as_path).collect::<Vec<_>>(), overwrite)?;
    }
    // A second argument that is no file but a model name: compare against the zoo model.
    if paths.len() == 2 && !paths[1].exists() && paths[1].components().count() == 1 {
        return overlap_model(&paths[0], &paths[1].to_string_lossy(), opts, json);
    }
    let ds = open_all(paths, opts)?;
    if ds.len() == 2 {
        let r = compare_datasets(&ds[0], &ds[1])?;
        if let Some(out) = out {
            let a = GeneList::from_table(label(&ds[0]), &ds[0].info().genes);
            let b = GeneList::from_table(label(&ds[1]), &ds[1].info().genes);
            write_table(&mut genes_frame(&r, &a, &b)?, out)?;
        }
        if json {
            outln!("{}", serde_json::to_string_pretty(&r)?);
        } else {
            print_report(&r);
        }
        anyhow::ensure!(r.found > 0, "{}", zero_overlap_message(&r));
        return Ok(());
    }
    let mut reports = Vec::new();
    for a in &ds {
        for b in &ds {
            if !std::ptr::eq(a, b) {
                reports.push(compare_datasets(a, b)?);
            }
        }
    }
    if let Some(out) = out {
        write_table(&mut pairs_frame(&reports)?, out)?;
    }
    if json {
        outln!("{}", serde_json::to_string_pretty(&reports)?);
        return Ok(());
    }
    outln!("% of the column's genes found in the row's dataset (key used in brackets)");
    let labels: Vec<String> = ds.iter().map(label).collect();
    let mut header = vec!["A \\ B".to_string()];
    header.extend(labels.iter().cloned());
    let mut t = Table::new(&header.iter().map(String::as_str).collect::<Vec<_>>());
    for a in &labels {
        let mut row = vec![a.clone()];
        for b in &labels {
            row.push(match reports.iter().find(|r| &r.a == a && &r.b == b) {
                Some(r) => format!("{:.1} ({})", r.pct_b_found, short_key(&r.key)),
                None => "-".into(),
            });
        }
        t.row(row);
    }
    out!("{}", t.render());
    Ok(())
}

fn short_key(key: &str) -> &str {
    key.split(" (").next().unwrap_or(key)
}

fn print_report(r: &OverlapReport) {
    let line = |k: &str, v: String| outln!("{k:<9} {v}");
    line(
        "data A",
        format!("{}: {} genes, {}", r.a, thousands(r.a_genes as u64), r.a_ids),
    );
    line(
        "ref B",
        format!("{}: {} genes, {}", r.b, thousands(r.b_genes as u64), r.b_ids),
    );
    line("key", format!("{}: {}", r.key, r.reason));
    line(
        "found",
        format!(
            "{} of {} genes of B in A ({:.1} %); A's genes used: {:.1} %",
            thousands(r.found as u64),
            thousands(r.b_genes as u64),
            r.pct_b_found,
            r.pct_a_used
        ),
    );
    let routes: Vec<String> = r
        .routes
        .iter()
        .map(|(route, n)| format!("{} {}", route.describe(), n))
        .collect();
    if !routes.is_empty() {
        line("routes", routes.join(", "));
    }
    if let Some(c) = r.counts_coverage {
        line(
            "counts",
            format!("{:.1} % of A's counts fall on the shared genes", 100.0 * c),
        );
    }
    let missing: Vec<String> = r
        .missing
        .iter()
        .take(10)
        .map(|g| match g.mean_in_b {
            Some(m) => format!("{} ({m:.2})", g.name),
            None => g.name.clone(),
        })
        .collect();
    if !r.missing.is_empty() {
        let by = if r.missing.iter().any(|g| g.mean_in_b.is_some()) {
            ", by mean count in B"
        } else {
            ""
        };
        line(
            "missing",
            format!(
                "{} genes{by}: {}{}",
                r.missing.len(),
                missing.join(", "),
                if r.missing.len() > 10 { ", ..." } else { "" }
            ),
        );
    }
    for w in &r.warnings {
        outln!("warning: {}", scmz::files::printable(w));
    }
}

pub fn merge_cmd(
    paths: &[PathBuf],
    out: &Path,
    opts: &OpenOptions,
    force: bool,
    overwrite: bool,
    json: bool,
) -> anyhow::Result<()> {
    check_output(out, &paths.iter().map(PathBuf::as_path).collect::<Vec<_>>(), overwrite)?;
    let ds = open_all(paths, opts)?;
    let s = merge(
        &ds,
        out,
        &MergeOptions {
            force,
            chunk_rows: 4096,
        },
    )?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    outln!(
        "wrote {}: {} cells x {} genes (union on {}{})",
        out.display(),
        thousands(s.n_cells as u64),
        thousands(s.n_genes as u64),
        s.key,
        s.species.as_ref().map(|x| format!(", {x}")).unwrap_or_default()
    );
    let mut t =
        Table::new(&["input", "cells", "genes", "shared with earlier", "renamed duplicates"]).right(&[1, 2, 3, 4]);
    for i in &s.inputs {
        t.row(vec![
            i.label.clone(),
            thousands(i.n_cells as u64),
            thousands(i.n_genes as u64),
            thousands(i.shared_with_earlier as u64),
            i.renamed_duplicates.to_string(),
        ]);
    }
    out!("{}", t.render());
    for w in &s.warnings {
        outln!("warning: {}", scmz::files::printable(w));
    }
    Ok(())
}
