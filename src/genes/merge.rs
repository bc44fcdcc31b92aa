//! Merging datasets over the union of their harmonised genes. Cells are stacked as CSR, streamed
//! chunk by chunk; `obs` gets a `dataset` column and the union of the inputs' columns; the file
//! records which genes each input measured (`varm/scmz_presence`, genes x datasets), because a
//! gene absent from a dataset is unmeasured, not zero: the training engine masks it.

use std::collections::HashMap;
use std::path::Path;

use serde::Serialize;

use super::matching::GeneList;
use super::overlap::label;
use super::reference::{reference, strip_version};
use crate::data::writer::{Annotations, ColumnValues, Frame, FrameColumn, H5adWriter, UnsValue, VarmMask};
use crate::data::{CsrChunk, DataError, Dataset, Result};

pub const PRESENCE: &str = "scmz_presence";

#[derive(Debug, Clone, Default)]
pub struct MergeOptions {
    /// Merge normalised data with counts anyway.
    pub force: bool,
    /// Cells per streamed chunk.
    pub chunk_rows: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct MergeInput {
    pub label: String,
    pub n_cells: usize,
    pub n_genes: usize,
    /// Genes of this input that joined a gene already in the union.
    pub shared_with_earlier: usize,
    /// Duplicated genes kept apart with a `-1`, `-2` suffix.
    pub renamed_duplicates: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct MergeSummary {
    pub n_cells: usize,
    pub n_genes: usize,
    /// `Ensembl id` or `symbol`: the key genes were united on.
    pub key: String,
    pub species: Option<String>,
    pub inputs: Vec<MergeInput>,
    pub warnings: Vec<String>,
}

/// The union of genes and, per input, each gene's column in the union.
struct Union {
    names: Vec<String>,
    gene_ids: Vec<String>,
    lookup: HashMap<String, usize>,
    upper: HashMap<String, usize>,
}

impl Union {
    fn add(&mut self, key: &str, gene_id: &str) -> usize {
        let i = self.names.len();
        self.names.push(key.to_string());
        self.gene_ids.push(gene_id.to_string());
        self.lookup.insert(key.to_string(), i);
        self.upper.entry(key.to_uppercase()).or_insert(i);
        i
    }
}

/// Per gene of `list`: (key in the union's space, Ensembl id if known).
fn keys_of(list: &GeneList, by_id: bool, species: Option<&str>) -> Vec<(String, String)> {
    let r = reference();
    let n = list.len();
    let ids: Vec<String> = match &list.gene_ids {
        Some(v) => v.iter().map(|s| strip_version(s).to_string()).collect(),
        None if list.species.as_deref() == Some("human") => match &list.symbols {
            Some(sym) => sym
                .iter()
                .map(|s| {
                    r.symbol_to_ids
                        .get(s)
                        .and_then(|v| v.first())
                        .cloned()
                        .unwrap_or_default()
                })
                .collect(),
            None => vec![String::new(); n],
        },
        None => vec![String::new(); n],
    };
    if by_id {
        return ids.iter().map(|id| (id.clone(), id.clone())).collect();
    }
    let symbols: Vec<String> = match &list.symbols {
        Some(s) => s.clone(),
        None => (0..n)
            .map(|i| {
                match list
                    .gene_ids
                    .as_ref()
                    .and_then(|v| r.id_to_symbol.get(strip_version(&v[i])))
                {
                    Some(s) => s.clone(),
                    None => list.names[i].clone(),
                }
            })
            .collect(),
    };
    let cross = match (list.species.as_deref(), species) {
        (Some("mouse"), Some("human")) => Some(&r.mouse_to_human),
        (Some("human"), Some("mouse")) => Some(&r.human_to_mouse),
        _ => None,
    };
    symbols
        .into_iter()
        .zip(ids)
        .map(|(s, id)| {
            let key = cross
                .and_then(|t| t.get(&s))
                .and_then(|p| p.first())
                .cloned()
                .unwrap_or(s);
            (key, if cross.is_some() { String::new() } else { id })
        })
        .collect()
}

/// Merges `inputs` into a new `.h5ad` at `out` (written to a temporary file, then renamed).
pub fn merge(inputs: &[Dataset], out: &Path, opts: &MergeOptions) -> Result<MergeSummary> {
    if inputs.len() < 2 {
        return Err(DataError::file(out, "merge needs at least two datasets"));
    }
    let counts: Vec<bool> = inputs.iter().map(|d| d.info().values.is_counts()).collect();
    if counts.iter().any(|c| *c) && counts.iter().any(|c| !*c) && !opts.force {
        let bad = inputs
            .iter()
            .zip(&counts)
            .find(|(_, c)| !**c)
            .map(|(d, _)| d)
            .expect("one normalised");
        return Err(DataError::at(
            bad.path(),
            &bad.info().matrix,
            "holds normalised values while the other inputs hold raw counts; a merged matrix would mix scales",
        )
        .hint("pick a counts matrix with --layer, or pass --force to merge anyway"));
    }
    let lists: Vec<GeneList> = inputs
        .iter()
        .map(|d| GeneList::from_table(label(d), &d.info().genes))
        .collect();
    let species = lists.iter().find_map(|l| l.species.clone());
    let same_species = lists.iter().all(|l| l.species == species);
    let by_id = same_species && lists.iter().all(|l| l.gene_ids.is_some());
    let mut warnings = Vec::new();
    if !same_species {
        warnings.push(format!(
            "inputs of several species: genes mapped to {} through the ortholog table",
            species.as_deref().unwrap_or("?")
        ));
    }
    let mut union = Union {
        names: Vec::new(),
        gene_ids: Vec::new(),
        lookup: HashMap::new(),
        upper: HashMap::new(),
    };
    let mut columns: Vec<Vec<u32>> = Vec::new();
    let mut summary_inputs = Vec::new();
    for (ds, list) in inputs.iter().zip(&lists) {
        let keys = keys_of(list, by_id, species.as_deref());
        let before = union.names.len();
        let mut seen: HashMap<usize, usize> = HashMap::new();
        let mut col = Vec::with_capacity(keys.len());
        let (mut shared, mut renamed) = (0, 0);
        for (i, (key, id)) in keys.iter().enumerate() {
            let key = if key.is_empty() {
                list.names[i].clone()
            } else {
                key.clone()
            };
            // Case-insensitive joins only with genes of earlier inputs: within one input, `Abc`
            // and `ABC` are two genes.
            let existing = union
                .lookup
                .get(&key)
                .copied()
                .or_else(|| union.upper.get(&key.to_uppercase()).copied().filter(|&u| u < before));
            let target = match existing {
                Some(u) if !seen.contains_key(&u) => {
                    shared += usize::from(u < before);
                    u
                }
                Some(u) => {
                    // A second gene of this input on the same key: kept apart, anndata-style.
                    let k = seen[&u];
                    renamed += 1;
                    let name = format!("{key}-{k}");
                    union.lookup.get(&name).copied().unwrap_or_else(|| union.add(&name, id))
                }
                None => union.add(&key, id),
            };
            *seen.entry(existing.unwrap_or(target)).or_insert(0) += 1;
            col.push(target as u32);
        }
        summary_inputs.push(MergeInput {
            label: list.label.clone(),
            n_cells: ds.n_cells(),
            n_genes: ds.n_genes(),
            shared_with_earlier: shared,
            renamed_duplicates: renamed,
        });
        columns.push(col);
    }
    let n_genes = union.names.len();
    // Whatever the caller checked: never over an input (a path, link or hard link to one).
    let paths: Vec<&Path> = inputs.iter().map(|d| d.info().path.as_path()).collect();
    crate::files::check_output(out, &paths, true).map_err(|e| DataError::file(out, e.message))?;
    let mut writer = H5adWriter::create(out, n_genes)?;
    let rows = if opts.chunk_rows == 0 { 4096 } else { opts.chunk_rows };
    for (ds, col) in inputs.iter().zip(&columns) {
        for chunk in ds.chunks(rows) {
            writer.append(&remap(&chunk?, col, n_genes))?;
        }
    }
    let mut presence = vec![false; n_genes * inputs.len()];
    for (k, col) in columns.iter().enumerate() {
        for &g in col {
            presence[g as usize * inputs.len() + k] = true;
        }
    }
    let obs = merged_obs(inputs, &lists)?;
    let var_columns = if union.gene_ids.iter().any(|s| !s.is_empty()) {
        vec![FrameColumn {
            name: "gene_ids".into(),
            values: ColumnValues::Strings(union.gene_ids.clone()),
        }]
    } else {
        Vec::new()
    };
    let datasets = lists
        .iter()
        .enumerate()
        .map(|(k, l)| (k.to_string(), UnsValue::String(l.label.clone())))
        .collect();
    writer.finish(&Annotations {
        obs,
        var: Frame {
            index: union.names.clone(),
            columns: var_columns,
        },
        obsm: Vec::new(),
        varm: vec![VarmMask {
            name: PRESENCE.into(),
            n_cols: inputs.len(),
            values: presence,
        }],
        uns: vec![(
            "scmz_merge".into(),
            UnsValue::Dict(vec![
                ("datasets".into(), UnsValue::Dict(datasets)),
                (
                    "key".into(),
                    UnsValue::String(if by_id { "Ensembl id" } else { "symbol" }.into()),
                ),
            ]),
        )],
    })?;
    Ok(MergeSummary {
        n_cells: inputs.iter().map(|d| d.n_cells()).sum(),
        n_genes,
        key: if by_id { "Ensembl id" } else { "symbol" }.into(),
        species,
        inputs: summary_inputs,
        warnings,
    })
}

/// The chunk with its columns moved to the union's, sorted within each row.
fn remap(chunk: &CsrChunk, col: &[u32], n_genes: usize) -> CsrChunk {
    let mut out = CsrChunk::empty(chunk.first_row, n_genes);
    for r in 0..chunk.n_rows() {
        let (idx, val) = chunk.row(r);
        let mut row: Vec<(u32, f32)> = idx.iter().map(|&c| col[c as usize]).zip(val.iter().copied()).collect();
        row.sort_unstable_by_key(|e| e.0);
        out.push_row(row);
    }
    out
}

/// `dataset` plus the union of the inputs' obs columns; missing values stay missing.
fn merged_obs(inputs: &[Dataset], lists: &[GeneList]) -> Result<Frame> {
    let n: usize = inputs.iter().map(|d| d.n_cells()).sum();
    let mut index = Vec::with_capacity(n);
    let mut dataset = Vec::with_capacity(n);
    for (ds, l) in inputs.iter().zip(lists) {
        index.extend(ds.info().cell_ids.iter().cloned());
        dataset.extend(std::iter::repeat_n(l.label.clone(), ds.n_cells()));
    }
    // Cell ids must stay unique across inputs: prefix duplicates with their dataset.
    let mut seen = std::collections::HashSet::new();
    let dup = index.iter().any(|c| !seen.insert(c.clone()));
    if dup {
        index = index.iter().zip(&dataset).map(|(c, d)| format!("{d}:{c}")).collect();
    }
    let mut names: Vec<String> = Vec::new();
    for ds in inputs {
        for c in &ds.info().obs {
            if c.name != "dataset" && !names.contains(&c.name) {
                names.push(c.name.clone());
            }
        }
    }
    let mut columns = vec![FrameColumn {
        name: "dataset".into(),
        values: ColumnValues::categorical_from(&dataset),
    }];
    for name in names {
        let parts: Vec<(usize, Option<ColumnValues>)> = inputs
            .iter()
            .map(|d| Ok((d.n_cells(), d.obs_values(&name)?)))
            .collect::<Result<_>>()?;
        if let Some(values) = stack(parts) {
            columns.push(FrameColumn { name, values });
        }
    }
    Ok(Frame { index, columns })
}

/// Stacks one column across inputs: numbers as floats (NaN where missing), anything else as
/// categories (code -1 where missing).
fn stack(parts: Vec<(usize, Option<ColumnValues>)>) -> Option<ColumnValues> {
    let numeric = parts
        .iter()
        .all(|(_, v)| matches!(v, None | Some(ColumnValues::Float(_)) | Some(ColumnValues::Int(_))));
    if parts.iter().all(|(_, v)| v.is_none()) {
        return None;
    }
    if numeric {
        let mut out = Vec::new();
        for (n, v) in parts {
            match v {
                Some(ColumnValues::Float(x)) => out.extend(x),
                Some(ColumnValues::Int(x)) => out.extend(x.into_iter().map(|v| v as f64)),
                _ => out.extend(std::iter::repeat_n(f64::NAN, n)),
            }
        }
        return Some(ColumnValues::Float(out));
    }
    let mut categories: Vec<String> = Vec::new();
    let mut lookup: HashMap<String, i32> = HashMap::new();
    let mut codes = Vec::new();
    let mut code_of = |s: &str, categories: &mut Vec<String>| -> i32 {
        *lookup.entry(s.to_string()).or_insert_with(|| {
            categories.push(s.to_string());
            categories.len() as i32 - 1
        })
    };
    for (n, v) in parts {
        let labels: Vec<Option<String>> = match v {
            None => vec![None; n],
            Some(ColumnValues::Categorical {
                categories: c,
                codes: k,
                ..
            }) => k
                .iter()
                .map(|&i| usize::try_from(i).ok().and_then(|i| c.get(i)).cloned())
                .collect(),
            Some(ColumnValues::Strings(s)) => s.into_iter().map(Some).collect(),
            Some(ColumnValues::Bool(b)) => b
                .into_iter()
                .map(|x| Some(if x { "True" } else { "False" }.into()))
                .collect(),
            Some(ColumnValues::Float(x)) => x.into_iter().map(|v| Some(v.to_string())).collect(),
            Some(ColumnValues::Int(x)) => x.into_iter().map(|v| Some(v.to_string())).collect(),
        };
        for l in labels {
            codes.push(match l {
                Some(s) => code_of(&s, &mut categories),
                None => -1,
            });
        }
    }
    Some(ColumnValues::Categorical {
        categories,
        codes,
        ordered: false,
    })
}
