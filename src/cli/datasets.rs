//! `scmz datasets`: the catalog as a table or JSON.

use std::path::PathBuf;

use scmz::data::catalog::{default_cache, id_kind_label, scan};

use super::table::Table;
use scmz::human::thousands;

pub fn run(dirs: Vec<PathBuf>, json: bool, no_cache: bool) -> anyhow::Result<()> {
    let dirs = if dirs.is_empty() {
        vec![PathBuf::from(".")]
    } else {
        dirs
    };
    for d in &dirs {
        if !d.exists() {
            anyhow::bail!("{}: no such file or folder", d.display());
        }
    }
    let cache = default_cache();
    // Files are opened in a child process: one that crashes libhdf5 is one failed row.
    let exe = std::env::current_exe().ok();
    let rows = scan(&dirs, (!no_cache).then_some(cache.as_path()), exe.as_deref());
    if json {
        outln!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    let mut t = Table::new(&[
        "path", "format", "cells", "genes", "gene ids", "species", "values", "labels",
    ])
    .right(&[2, 3]);
    let mut notes = Vec::new();
    for r in &rows {
        if let Some(e) = &r.error {
            t.row(vec![
                r.path.display().to_string(),
                "error".into(),
                "-".into(),
                "-".into(),
            ]);
            notes.push(format!("error: {e}"));
            continue;
        }
        let labels = r
            .label_columns
            .iter()
            .map(|l| format!("{} ({})", l.name, l.n_categories))
            .collect::<Vec<_>>()
            .join(", ");
        t.row(vec![
            r.path.display().to_string(),
            r.format.clone().unwrap_or_default(),
            thousands(r.n_cells as u64),
            thousands(r.n_genes as u64),
            id_kind_label(r),
            r.species.clone().unwrap_or_else(|| "?".into()),
            if r.matrix == "X" || r.matrix == "matrix" {
                r.values.clone()
            } else {
                format!("{} ({})", r.values, r.matrix)
            },
            labels,
        ]);
        for w in &r.warnings {
            notes.push(format!("warning: {}: {w}", r.path.display()));
        }
    }
    out!("{}", t.render());
    if rows.is_empty() {
        outln!("no datasets found (looked for .h5ad, 10x .h5 and Matrix Market folders)");
    }
    for n in &notes {
        eprintln!("{n}");
    }
    let failed = rows.iter().filter(|r| r.error.is_some()).count();
    if failed > 0 {
        anyhow::bail!("{failed} of {} datasets could not be read (see above)", rows.len());
    }
    Ok(())
}
