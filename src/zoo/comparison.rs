//! Results of `scmz compare` kept with the model they judge (`<model>/comparisons/<data>.json`),
//! so the TUI can chart where pretraining stops paying off. Not covered by the model's checksums:
//! they describe uses of the model, not the model.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One comparison at one overlap and seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComparisonRow {
    pub overlap_pct: u32,
    pub seed: u64,
    pub shared_genes: usize,
    /// Mean log-likelihood per held-out cell over the genes both models see (higher is better).
    pub pretrained_ll: f64,
    pub scratch_ll: f64,
    pub pretrained_accuracy: Option<f64>,
    pub scratch_accuracy: Option<f64>,
    /// Agreement of k-means clusterings of the two latents (adjusted Rand index).
    pub ari: f64,
    pub pretrained_seconds: f64,
    pub scratch_seconds: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// The dataset compared on.
    pub data: String,
    pub created: String,
    pub rows: Vec<ComparisonRow>,
    pub verdicts: Vec<String>,
}

fn folder(model_dir: &Path) -> PathBuf {
    model_dir.join("comparisons")
}

/// Writes a comparison beside the model (temporary file, then rename), one file per dataset.
pub fn save(model_dir: &Path, c: &Comparison) -> std::io::Result<PathBuf> {
    let dir = folder(model_dir);
    for d in [model_dir, dir.as_path()] {
        if std::fs::symlink_metadata(d).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(std::io::Error::other(format!(
                "{} is a symbolic link; nothing is written through links out of the zoo",
                d.display()
            )));
        }
    }
    std::fs::create_dir_all(&dir).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("{}: cannot create: {}", dir.display(), crate::files::describe(&e)),
        )
    })?;
    let stem = Path::new(&c.data)
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| "data".into());
    let path = dir.join(format!("{stem}.json"));
    crate::files::write_atomic(&path, &serde_json::to_vec_pretty(c).map_err(std::io::Error::other)?)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(path)
}

/// The comparisons kept with a model, newest first.
pub fn load_all(model_dir: &Path) -> Vec<Comparison> {
    let Ok(entries) = std::fs::read_dir(folder(model_dir)) else {
        return Vec::new();
    };
    let mut out: Vec<Comparison> = entries
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok())
        .collect();
    out.sort_by(|a, b| b.created.cmp(&a.created));
    out
}
