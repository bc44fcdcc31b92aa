//! `scmz inspect PATH`: everything known about one dataset.

use std::path::Path;

use scmz::data::catalog::Summary;
use scmz::data::{ColumnKind, Dataset, OpenOptions, ValueKind};

use scmz::human::thousands;

pub fn run(path: &Path, opts: &OpenOptions, json: bool, require_counts: bool) -> anyhow::Result<()> {
    let ds = Dataset::open_with(path, opts)?;
    if require_counts {
        ds.require_counts()?;
    }
    let info = ds.info();
    let summary = Summary::from_info(info);
    if json {
        #[derive(serde::Serialize)]
        struct Out<'a> {
            summary: &'a Summary,
            info: &'a scmz::data::DatasetInfo,
        }
        outln!(
            "{}",
            serde_json::to_string_pretty(&Out {
                summary: &summary,
                info
            })?
        );
        return Ok(());
    }
    let line = |k: &str, v: String| outln!("{k:<10} {}", scmz::files::printable(&v));
    line("path", info.path.display().to_string());
    line("format", info.format.to_string());
    line(
        "shape",
        format!(
            "{} cells x {} genes",
            thousands(info.n_cells as u64),
            thousands(info.n_genes as u64)
        ),
    );
    let m = info.selected_matrix();
    line(
        "matrix",
        format!(
            "{} ({}, {} stored values): {}",
            info.matrix,
            m.map(|m| m.encoding.to_string()).unwrap_or_default(),
            thousands(m.map_or(0, |m| m.nnz)),
            info.matrix_reason
        ),
    );
    let others: Vec<String> = info
        .matrices
        .iter()
        .filter(|o| o.location != info.matrix)
        .map(|o| format!("{} ({}, {} x {})", o.location, o.encoding, o.n_cells, o.n_genes))
        .collect();
    if !others.is_empty() {
        line("", format!("also in the file: {}", others.join(", ")));
    }
    line(
        "values",
        match &info.values {
            ValueKind::Counts => "raw counts (non-negative integers)".to_string(),
            ValueKind::Normalised { reason } => format!("normalised, not counts: {reason}"),
        },
    );
    let g = &info.genes;
    line(
        "genes",
        format!(
            "index `{}`: {}{}{}",
            g.index_name,
            g.index_kind.kind,
            g.index_kind
                .species
                .as_ref()
                .map(|s| format!(" ({s})"))
                .unwrap_or_default(),
            if g.index_kind.versioned { ", versioned" } else { "" }
        ),
    );
    if let Some(k) = &g.gene_id_key {
        line(
            "",
            format!(
                "Ensembl ids in `{k}`; species {}",
                summary.species.clone().unwrap_or("?".into())
            ),
        );
    }
    if let Some(k) = &g.symbol_key {
        line("", format!("symbols in `{k}`"));
    }
    for (name, values) in &g.columns {
        line("", format!("column `{name}`: {}", preview(values)));
    }
    line("", format!("first: {}", preview(&g.index)));
    line("cells", format!("first: {}", preview(&info.cell_ids)));
    if info.obs.is_empty() {
        line("obs", "no columns".to_string());
    }
    for (i, c) in info.obs.iter().enumerate() {
        let desc = match &c.kind {
            ColumnKind::Categorical { categories, .. } => {
                let top: Vec<String> = c.top_categories(5).iter().map(|(n, k)| format!("{n} ({k})")).collect();
                format!(
                    "categorical, {} categories{}: {}{}",
                    categories.len(),
                    if c.is_label_like() { ", label-like" } else { "" },
                    top.join(", "),
                    if categories.len() > 5 { ", ..." } else { "" }
                )
            }
            ColumnKind::Numeric { dtype } => format!("numeric ({dtype})"),
            ColumnKind::Boolean => "boolean".into(),
            ColumnKind::String => "strings".into(),
            ColumnKind::Other { encoding } => format!("other ({encoding})"),
        };
        line(if i == 0 { "obs" } else { "" }, format!("{}: {desc}", c.name));
    }
    for w in &summary.warnings {
        outln!("warning: {}", scmz::files::printable(w));
    }
    Ok(())
}

fn preview(v: &[String]) -> String {
    let mut s = v.iter().take(4).cloned().collect::<Vec<_>>().join(", ");
    if v.len() > 4 {
        s.push_str(", ...");
    }
    s
}
