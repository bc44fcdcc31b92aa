//! The catalog: datasets found by scanning folders, one summary row each. Summaries are cached
//! in the user cache directory keyed by path, size and modification time, so a re-scan of
//! unchanged files opens none of them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};

use super::dataset::{Dataset, DatasetInfo};
use super::detect::{looks_supported, mtx_file, names_mtx};
use super::gene_ids::{classify, GeneIdKind};

/// Bump when `Summary` changes shape: old caches are then ignored.
const CACHE_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabelColumn {
    pub name: String,
    pub n_categories: usize,
}

/// One catalog row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub path: PathBuf,
    /// Format and version, e.g. `h5ad (anndata >= 0.8)`; None when the file could not be read.
    pub format: Option<String>,
    pub n_cells: usize,
    pub n_genes: usize,
    pub gene_id_kind: GeneIdKind,
    /// Key holding Ensembl ids, when there is one besides the index.
    pub gene_id_key: Option<String>,
    pub species: Option<String>,
    /// `counts` or `normalised`.
    pub values: String,
    pub matrix: String,
    pub label_columns: Vec<LabelColumn>,
    pub duplicated_genes: Vec<String>,
    pub warnings: Vec<String>,
    /// Why the dataset could not be opened.
    pub error: Option<String>,
    /// True when this row came from the cache without opening the file.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cached: bool,
}

impl Summary {
    pub fn from_info(info: &DatasetInfo) -> Self {
        let ids = &info.genes;
        let kind = ids.index_kind.clone();
        // Species from Ensembl ids where any key holds them: they are unambiguous.
        let species = ids
            .gene_ids()
            .map(|v| classify(v).species)
            .unwrap_or(kind.species.clone());
        let mut warnings = info.warnings.clone();
        let dup = super::dataset::GeneTable::duplicates(&ids.index);
        if !dup.is_empty() {
            let unique = ids
                .columns
                .iter()
                .find(|(_, v)| super::dataset::GeneTable::duplicates(v).is_empty())
                .map(|(n, _)| n.clone())
                .unwrap_or_default();
            warnings.push(format!(
                "{} duplicated gene names in `{}` ({}); `{unique}` is unique: match on it",
                dup.len(),
                ids.index_name,
                super::dataset::preview(&dup, 3)
            ));
        }
        let dup_cells = super::dataset::GeneTable::duplicates(&info.cell_ids);
        if !dup_cells.is_empty() {
            warnings.push(format!(
                "{} duplicated cell ids in obs ({}); results keyed by cell id will mix them up: make them unique (anndata's obs_names_make_unique)",
                dup_cells.len(),
                super::dataset::preview(&dup_cells, 3)
            ));
        }
        Summary {
            path: info.path.clone(),
            format: Some(info.format.to_string()),
            n_cells: info.n_cells,
            n_genes: info.n_genes,
            gene_id_kind: kind.kind,
            gene_id_key: ids.gene_id_key.clone(),
            species,
            values: info.values.label().to_string(),
            matrix: info.matrix.clone(),
            label_columns: info
                .label_columns()
                .map(|c| LabelColumn {
                    name: c.name.clone(),
                    n_categories: match &c.kind {
                        super::dataset::ColumnKind::Categorical { categories, .. } => categories.len(),
                        _ => 0,
                    },
                })
                .collect(),
            duplicated_genes: dup,
            warnings,
            error: None,
            cached: false,
        }
    }

    fn failed(path: &Path, error: String) -> Self {
        Summary {
            path: path.to_path_buf(),
            format: None,
            n_cells: 0,
            n_genes: 0,
            gene_id_kind: GeneIdKind::Empty,
            gene_id_key: None,
            species: None,
            values: String::new(),
            matrix: String::new(),
            label_columns: Vec::new(),
            duplicated_genes: Vec::new(),
            warnings: Vec::new(),
            error: Some(error),
            cached: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct CacheRecord {
    size: u64,
    mtime_ns: u128,
    summary: Summary,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct CacheFile {
    version: u32,
    entries: BTreeMap<PathBuf, CacheRecord>,
}

/// The file whose size and mtime stand for the dataset (the .mtx inside a 10x folder).
fn stamp(path: &Path) -> Option<(u64, u128)> {
    let target = if path.is_dir() {
        mtx_file(path)?
    } else {
        path.to_path_buf()
    };
    let meta = std::fs::metadata(target).ok()?;
    let mtime = meta.modified().ok()?.duration_since(UNIX_EPOCH).ok()?.as_nanos();
    Some((meta.len(), mtime))
}

/// Every dataset under `roots` (recursively), in path order.
pub fn find_datasets(roots: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for root in roots {
        // A named file is listed whatever it is (a FIFO then fails to open, named).
        let named_file = !root.is_dir() && std::fs::symlink_metadata(root).is_ok();
        if named_file || (root.is_dir() && names_mtx(root)) {
            out.push(root.clone());
        }
        if root.is_dir() {
            walk(root, &mut out, 0);
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Folders deeper than this below a root are not searched (`scmz` opened in a home directory
/// must not walk the whole disk).
const MAX_DEPTH: usize = 8;

fn walk(dir: &Path, out: &mut Vec<PathBuf>, depth: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    // Symlinked folders are not followed: a link cycle would never end.
    let mut entries: Vec<_> = entries
        .flatten()
        .filter(|e| !(e.file_type().is_ok_and(|t| t.is_symlink()) && e.path().is_dir()))
        .map(|e| e.path())
        .collect();
    entries.sort();
    for p in entries {
        let hidden = p
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'));
        if hidden {
            continue;
        }
        if p.is_dir() {
            if names_mtx(&p) {
                out.push(p.clone());
            }
            if depth < MAX_DEPTH {
                walk(&p, out, depth + 1);
            }
        } else if looks_supported(&p) {
            out.push(p);
        }
    }
}

/// Scans `roots` and summarises every dataset, reusing cached summaries of unchanged files.
/// `cache`: the cache file, or None to read everything afresh.
///
/// `worker`: the `scmz` binary, to open files not in the cache in a child process
/// (`scmz datasets --worker`, see `serve_worker`), so that a file on which libhdf5 crashes or
/// hangs (see `guard`) becomes one failed row instead of ending the scan; None: in this process.
pub fn scan(roots: &[PathBuf], cache: Option<&Path>, worker: Option<&Path>) -> Vec<Summary> {
    let mut store: CacheFile = cache
        .and_then(|c| std::fs::read(c).ok())
        .and_then(|b| serde_json::from_slice(&b).ok())
        .filter(|c: &CacheFile| c.version == CACHE_VERSION)
        .unwrap_or_default();
    let mut changed = false;
    let mut rows: Vec<Option<Summary>> = Vec::new();
    let mut todo = Vec::new();
    for path in find_datasets(roots) {
        let key = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
        let st = stamp(&path);
        if let (Some((size, mtime_ns)), Some(rec)) = (st, store.entries.get(&key)) {
            if rec.size == size && rec.mtime_ns == mtime_ns {
                let mut s = rec.summary.clone();
                // Its messages name the file as this scan reached it, not as the cached one did.
                let (was, now) = (s.path.display().to_string(), path.display().to_string());
                if was != now {
                    for text in s.error.iter_mut().chain(s.warnings.iter_mut()) {
                        *text = text.replace(&was, &now);
                    }
                }
                s.path = path.clone();
                s.cached = true;
                rows.push(Some(s));
                continue;
            }
        }
        todo.push((rows.len(), path, key, st));
        rows.push(None);
    }
    let summaries = match worker {
        Some(exe) => summarise_isolated(exe, todo.iter().map(|(_, p, _, _)| p.as_path())),
        None => todo.iter().map(|(_, p, _, _)| summarise(p)).collect(),
    };
    for ((i, _, key, st), summary) in todo.into_iter().zip(summaries) {
        if let Some((size, mtime_ns)) = st {
            store.entries.insert(
                key,
                CacheRecord {
                    size,
                    mtime_ns,
                    summary: summary.clone(),
                },
            );
            changed = true;
        }
        rows[i] = Some(summary);
    }
    if let (Some(cache), true) = (cache, changed) {
        store.version = CACHE_VERSION;
        // A cache that cannot be written only costs speed next time.
        let _ = crate::files::write_atomic(cache, &serde_json::to_vec(&store).unwrap_or_default());
    }
    rows.into_iter().flatten().collect()
}

/// One dataset's catalog row, opening the file.
fn summarise(path: &Path) -> Summary {
    match Dataset::open(path) {
        Ok(ds) => Summary::from_info(ds.info()),
        Err(e) => Summary::failed(path, e.to_string()),
    }
}

/// Summarises `paths` in child processes of `exe` (`serve_worker`): one child for all, and
/// after a child dies on a file, that file's row is the child's last words and a new child
/// takes the rest. Rows come back in the order of `paths`.
fn summarise_isolated<'a>(exe: &Path, paths: impl Iterator<Item = &'a Path>) -> Vec<Summary> {
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Command, Stdio};
    let paths: Vec<&Path> = paths.collect();
    let mut rows: Vec<Summary> = Vec::with_capacity(paths.len());
    while rows.len() < paths.len() {
        let rest = &paths[rows.len()..];
        // Paths travel as JSON strings: one that is not UTF-8 is opened here.
        let Ok(request) = serde_json::to_vec(rest) else {
            rows.push(summarise(rest[0]));
            continue;
        };
        let child = Command::new(exe)
            .args(["datasets", "--worker"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let Ok(mut child) = child else {
            // No worker to be had (the binary moved): open the files here.
            rows.extend(rest.iter().map(|p| summarise(p)));
            break;
        };
        if let Some(mut stdin) = child.stdin.take() {
            // A worker that dies early closes its end; what it answered is still read below.
            let _ = stdin.write_all(&request);
        }
        let before = rows.len();
        // Its stderr on a thread, so that a talkative worker cannot block on a full pipe.
        let stderr = child.stderr.take().map(|mut e| {
            std::thread::spawn(move || {
                let mut text = String::new();
                let _ = std::io::Read::read_to_string(&mut e, &mut text);
                text
            })
        });
        if let Some(out) = child.stdout.take() {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                match serde_json::from_str::<Summary>(&line) {
                    Ok(s) if rows.len() < paths.len() => rows.push(s),
                    _ => break,
                }
            }
        }
        let stderr = stderr.and_then(|t| t.join().ok()).unwrap_or_default();
        let status = child.wait();
        if rows.len() < paths.len() {
            let path = paths[rows.len()];
            let said = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
            let said = said.strip_prefix("error: ").unwrap_or(said).trim();
            let why = if !said.is_empty() {
                said.to_string()
            } else {
                let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
                format!("{}: reading it ended the reader ({status})", path.display())
            };
            rows.push(Summary::failed(path, why));
        }
        debug_assert!(rows.len() > before);
    }
    rows
}

/// The worker side of `summarise_isolated`: reads a JSON list of paths on stdin and prints one
/// JSON row per path, each as soon as it is known.
pub fn serve_worker() -> std::io::Result<()> {
    use std::io::{Read, Write};
    let mut request = Vec::new();
    std::io::stdin().read_to_end(&mut request)?;
    let paths: Vec<PathBuf> = serde_json::from_slice(&request).map_err(std::io::Error::other)?;
    let mut out = std::io::stdout().lock();
    for p in paths {
        let row = serde_json::to_string(&summarise(&p)).map_err(std::io::Error::other)?;
        writeln!(out, "{row}")?;
        out.flush()?;
    }
    Ok(())
}

/// The default cache file.
pub fn default_cache() -> PathBuf {
    crate::dirs::cache_dir().join("catalog.json")
}

/// The gene-id kind as shown in tables: `symbol+ensembl(gene_ids)` when a column adds Ensembl ids.
pub fn id_kind_label(s: &Summary) -> String {
    match (&s.gene_id_kind, &s.gene_id_key) {
        (GeneIdKind::Ensembl, _) => "ensembl".into(),
        (k, Some(key)) => format!("{k}+ensembl({key})"),
        (k, None) => k.to_string(),
    }
}
