//! The overlap report: before applying a model (B) to a dataset (A), how much of B's gene set
//! does A have, matched through which key, and how much of A's signal falls on those genes.

use serde::{Deserialize, Serialize};

use super::matching::{match_genes, stale_symbols, GeneList, Matching, Route};
use crate::data::{Dataset, Result};

/// A gene of B that A lacks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MissingGene {
    pub name: String,
    /// Mean count per cell in B, when B is a dataset of counts.
    pub mean_in_b: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OverlapReport {
    pub a: String,
    pub b: String,
    pub a_genes: usize,
    pub b_genes: usize,
    pub a_ids: String,
    pub b_ids: String,
    /// Genes of B found in A.
    pub found: usize,
    pub pct_b_found: f64,
    /// Distinct genes of A used, as a share of A's genes.
    pub pct_a_used: f64,
    pub key: String,
    pub reason: String,
    pub routes: Vec<(Route, usize)>,
    pub cross_species: Option<(String, String)>,
    /// Share of A's total counts that falls on the genes shared with B (streamed).
    pub counts_coverage: Option<f64>,
    /// B's genes missing from A, highest mean expression in B first when known.
    pub missing: Vec<MissingGene>,
    /// Human symbols that are not GENCODE v44 symbols (annotation drift): count and examples.
    pub stale_symbols_a: Option<(usize, Vec<String>)>,
    pub stale_symbols_b: Option<(usize, Vec<String>)>,
    /// Problems worth the user's attention, each with a concrete suggestion.
    pub warnings: Vec<String>,
    #[serde(skip)]
    pub matching: Option<Matching>,
}

fn pct(n: usize, d: usize) -> f64 {
    if d == 0 {
        0.0
    } else {
        100.0 * n as f64 / d as f64
    }
}

/// Matches the gene lists and fills everything that needs no matrix.
pub fn compare_lists(a: &GeneList, b: &GeneList) -> OverlapReport {
    let m = match_genes(a, b);
    let found = m.found();
    let mut warnings = Vec::new();
    if let Some((x, y)) = &m.cross_species {
        warnings.push(format!(
            "cross-species: {} is {x}, {} is {y}; genes were paired through orthologs, expect a weaker mapping than \
             with a {x} model",
            a.label, b.label
        ));
    }
    let a_has_ids = a.gene_ids.is_some();
    let b_has_ids = b.gene_ids.is_some();
    if a_has_ids != b_has_ids && (a.symbols.is_none() || b.symbols.is_none()) {
        warnings.push(format!(
            "{} has {}, {} has {}: matched through the GENCODE v44 id-to-symbol table; keep both ids and symbols in \
             var (e.g. a `gene_ids` column) for exact matching",
            a.label,
            a.describe(),
            b.label,
            b.describe()
        ));
    }
    if !m.a_duplicates.is_empty() {
        warnings.push(format!(
            "{} has {} duplicated keys ({}); the first occurrence of each is used",
            a.label,
            m.a_duplicates.len(),
            m.a_duplicates.iter().take(3).cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    let stale_a = stale_symbols(a);
    let stale_b = stale_symbols(b);
    for (label, stale) in [(&a.label, &stale_a), (&b.label, &stale_b)] {
        if let Some((n, ex)) = stale {
            if *n > 0 {
                warnings.push(format!(
                    "{label}: {n} symbols are not GENCODE v44 symbols (older annotation, e.g. {}); renaming by case \
                     cannot recover them, Ensembl ids can",
                    ex.join(", ")
                ));
            }
        }
    }
    let missing = b
        .names
        .iter()
        .enumerate()
        .filter(|(j, _)| m.b_to_a[*j].is_none())
        .map(|(j, _)| MissingGene {
            name: b.display(j).to_string(),
            mean_in_b: None,
        })
        .collect();
    OverlapReport {
        a: a.label.clone(),
        b: b.label.clone(),
        a_genes: a.len(),
        b_genes: b.len(),
        a_ids: a.describe(),
        b_ids: b.describe(),
        found,
        pct_b_found: pct(found, b.len()),
        pct_a_used: pct(m.a_used(), a.len()),
        key: m.key.clone(),
        reason: m.reason.clone(),
        routes: m.routes(),
        cross_species: m.cross_species.clone(),
        counts_coverage: None,
        missing,
        stale_symbols_a: stale_a,
        stale_symbols_b: stale_b,
        warnings,
        matching: Some(m),
    }
}

/// Per-gene totals of a dataset, streamed in chunks.
pub fn gene_totals(ds: &Dataset, chunk_rows: usize) -> Result<Vec<f64>> {
    let mut totals = vec![0f64; ds.n_genes()];
    for chunk in ds.chunks(chunk_rows) {
        let chunk = chunk?;
        for (&c, &v) in chunk.indices.iter().zip(&chunk.data) {
            totals[c as usize] += v as f64;
        }
    }
    Ok(totals)
}

/// The full report for two datasets: the list comparison plus, streamed from the matrices, the
/// share of A's counts on shared genes and B's mean expression of the genes A lacks.
pub fn compare_datasets(a: &Dataset, b: &Dataset) -> Result<OverlapReport> {
    let lb = GeneList::from_table(label(b), &b.info().genes);
    let mut report = compare_dataset_to_list(a, &lb)?;
    let m = report.matching.as_ref().expect("matching");
    if b.info().values.is_counts() {
        let totals_b = gene_totals(b, 4096)?;
        let n = b.n_cells().max(1) as f64;
        let mut missing: Vec<MissingGene> = m
            .b_to_a
            .iter()
            .enumerate()
            .filter(|(_, x)| x.is_none())
            .map(|(j, _)| MissingGene {
                name: lb.display(j).to_string(),
                mean_in_b: Some(totals_b[j] / n),
            })
            .collect();
        missing.sort_by(|x, y| {
            y.mean_in_b
                .partial_cmp(&x.mean_in_b)
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        report.missing = missing;
    }
    Ok(report)
}

/// The report for a dataset against a bare gene list (a model's): the list comparison plus the
/// share of A's counts on the shared genes, streamed.
pub fn compare_dataset_to_list(a: &Dataset, b: &GeneList) -> Result<OverlapReport> {
    let la = GeneList::from_table(label(a), &a.info().genes);
    let mut report = compare_lists(&la, b);
    let m = report.matching.as_ref().expect("matching");
    let totals = gene_totals(a, 4096)?;
    let all: f64 = totals.iter().sum();
    let mut used = vec![false; a.n_genes()];
    for (i, _) in m.b_to_a.iter().flatten() {
        used[*i] = true;
    }
    let shared: f64 = 0.0
        + totals
            .iter()
            .zip(&used)
            .filter(|(_, u)| **u)
            .map(|(t, _)| t)
            .sum::<f64>();
    report.counts_coverage = Some(if all > 0.0 { shared / all } else { 0.0 });
    Ok(report)
}

/// The name a dataset goes by in reports: its file or folder name.
pub fn label(ds: &Dataset) -> String {
    ds.path()
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| ds.path().display().to_string())
}

/// A one-line explanation for a zero overlap, naming what each side has and what to do.
pub fn zero_overlap_message(r: &OverlapReport) -> String {
    let hint = if r.cross_species.is_some() {
        "the ortholog table knows human and mouse only; convert the genes to the model's species first"
    } else if r.a_ids.contains("integer") || r.b_ids.contains("integer") {
        "integer gene ids cannot be matched; use a file with Ensembl ids or symbols (e.g. features.tsv with both)"
    } else {
        "check that both are the same species and that var holds gene names (or add a `gene_ids` column)"
    };
    format!(
        "no gene of {} ({}) was found in {} ({}); {hint}",
        r.b, r.b_ids, r.a, r.a_ids
    )
}

/// One row per gene of B: whether and how it was found in A, and its mean in B.
pub fn genes_frame(
    r: &OverlapReport,
    a: &GeneList,
    b: &GeneList,
) -> polars::prelude::PolarsResult<polars::prelude::DataFrame> {
    use polars::prelude::*;
    let m = r.matching.as_ref().expect("matching");
    let mean: std::collections::HashMap<&str, f64> = r
        .missing
        .iter()
        .filter_map(|g| g.mean_in_b.map(|v| (g.name.as_str(), v)))
        .collect();
    let gene: Vec<String> = (0..b.len()).map(|j| b.display(j).to_string()).collect();
    let found: Vec<bool> = m.b_to_a.iter().map(|x| x.is_some()).collect();
    let in_a: Vec<Option<String>> = m
        .b_to_a
        .iter()
        .map(|x| x.map(|(i, _)| a.display(i).to_string()))
        .collect();
    let route: Vec<Option<String>> = m.b_to_a.iter().map(|x| x.map(|(_, r)| r.describe())).collect();
    let mean_in_b: Vec<Option<f64>> = gene.iter().map(|g| mean.get(g.as_str()).copied()).collect();
    DataFrame::new_infer_height(vec![
        Column::new("gene".into(), gene),
        Column::new("found".into(), found),
        Column::new("gene_in_a".into(), in_a),
        Column::new("route".into(), route),
        Column::new("mean_in_b_if_missing".into(), mean_in_b),
    ])
}

/// One row per pair (A, B) of a pairwise comparison.
pub fn pairs_frame(reports: &[OverlapReport]) -> polars::prelude::PolarsResult<polars::prelude::DataFrame> {
    use polars::prelude::*;
    DataFrame::new_infer_height(vec![
        Column::new("a".into(), reports.iter().map(|r| r.a.clone()).collect::<Vec<_>>()),
        Column::new("b".into(), reports.iter().map(|r| r.b.clone()).collect::<Vec<_>>()),
        Column::new(
            "b_genes".into(),
            reports.iter().map(|r| r.b_genes as u64).collect::<Vec<_>>(),
        ),
        Column::new(
            "found".into(),
            reports.iter().map(|r| r.found as u64).collect::<Vec<_>>(),
        ),
        Column::new(
            "pct_b_found".into(),
            reports.iter().map(|r| r.pct_b_found).collect::<Vec<_>>(),
        ),
        Column::new(
            "pct_a_used".into(),
            reports.iter().map(|r| r.pct_a_used).collect::<Vec<_>>(),
        ),
        Column::new(
            "counts_coverage".into(),
            reports.iter().map(|r| r.counts_coverage).collect::<Vec<_>>(),
        ),
        Column::new("key".into(), reports.iter().map(|r| r.key.clone()).collect::<Vec<_>>()),
    ])
}
