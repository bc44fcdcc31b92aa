//! The zoo: one folder per model under the zoo directory (`--zoo`, `SCMZ_ZOO`, else the user data
//! directory). A model folder holds `manifest.json`, `weights.safetensors`, `history.jsonl` (the
//! training event log) and `reference.safetensors` (latent means of training cells for label
//! transfer). Folders are written under a temporary name and renamed, so the zoo never shows a
//! half-written model; loading checks the manifest schema and every file's sha256.

pub mod comparison;
pub mod manifest;
pub mod projection;

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

pub use manifest::Manifest;

#[derive(Debug, thiserror::Error)]
pub enum ZooError {
    #[error("model `{name}` not found in {zoo}; `scmz models` lists the models there")]
    NotFound { name: String, zoo: String },
    #[error("{path}: {problem}")]
    Bad { path: String, problem: String },
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ZooError + '_ {
    move |source| ZooError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The zoo directory: `SCMZ_ZOO`, else `<user data dir>/zoo`.
pub fn default_zoo() -> PathBuf {
    match std::env::var_os("SCMZ_ZOO") {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => crate::dirs::data_dir().join("zoo"),
    }
}

/// A model name must be a plain folder name.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a model needs a name: letters, digits, `-`, `_` and `.`".into());
    }
    if name.len() > 100 {
        return Err(format!(
            "a model name of {} characters is too long: use at most 100",
            name.len()
        ));
    }
    if name.ends_with(".lock") {
        // A run's lock is `.runs/NAME.lock`, beside the run folders: `m.lock` would be `m`'s.
        return Err(format!(
            "`{}`: a model name may not end in `.lock` (scmz names run locks so): pick another",
            crate::files::printable(name)
        ));
    }
    // Not `-` first either: such a name reads as an option on every command line.
    let ok = !name.is_empty()
        && !name.starts_with(['.', '-'])
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{}` is not a valid model name: start with a letter, digit or `_`, then use letters, digits, `-`, `_` and `.`",
            crate::files::printable(name)
        ))
    }
}

/// What to do about a damaged model folder: an imported model comes back by importing its
/// file again, one scmz trained by training it again; either from a copy of the folder.
fn remedy(m: &Manifest) -> String {
    match &m.imported {
        Some(i) => format!(
            "import it again from its {} folder (`scmz import DIR --name {} --overwrite`) or restore the model folder",
            crate::files::printable(&i.tool),
            crate::files::printable(&m.name)
        ),
        None => "train it again or restore the model folder".into(),
    }
}

pub fn sha256_file(path: &Path) -> Result<String, ZooError> {
    let mut f = std::fs::File::open(path).map_err(io(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("{:x}", h.finalize()))
}

pub struct Zoo {
    pub dir: PathBuf,
}

impl Zoo {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Zoo { dir: dir.into() }
    }

    pub fn model_dir(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Where runs in progress keep their event log and checkpoints.
    pub fn run_dir(&self, name: &str) -> PathBuf {
        self.dir.join(".runs").join(name)
    }

    /// A fresh temporary folder beside the models, for writing one. Staging folders of model
    /// `name` left by a process that no longer lives (killed with SIGKILL while writing) go.
    pub fn staging_dir(&self, name: &str) -> Result<PathBuf, ZooError> {
        self.remove_stale_staging(name);
        let p = self.dir.join(format!(".tmp-{name}-{}", std::process::id()));
        if p.exists() {
            std::fs::remove_dir_all(&p).map_err(io(&p))?;
        }
        std::fs::create_dir_all(&p).map_err(io(&p))?;
        Ok(p)
    }

    /// Removes `.tmp-NAME-PID` and `.old-NAME-PID` folders whose process is gone. One engine
    /// trains a run at a time, so a living PID is the writer itself (or an unrelated process
    /// that reused the number: its folder stays).
    fn remove_stale_staging(&self, name: &str) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in entries.flatten() {
            let file = e.file_name();
            let Some(file) = file.to_str() else { continue };
            let pid = [".tmp-", ".old-"]
                .iter()
                .find_map(|p| file.strip_prefix(p)?.strip_prefix(name)?.strip_prefix('-'))
                .and_then(|rest| rest.parse::<u32>().ok());
            let Some(pid) = pid else { continue };
            // A folder, not a link to one (whose target is not the zoo's to remove).
            let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
            if is_dir && pid != std::process::id() && !crate::jobs::alive(pid) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }

    /// Moves a fully written staging folder into place as model `name`, replacing an older one.
    pub fn install(&self, staging: &Path, name: &str) -> Result<PathBuf, ZooError> {
        let target = self.model_dir(name);
        if target.exists() {
            let old = self.dir.join(format!(".old-{name}-{}", std::process::id()));
            std::fs::rename(&target, &old).map_err(io(&target))?;
            std::fs::rename(staging, &target).map_err(io(&target))?;
            let _ = std::fs::remove_dir_all(&old);
        } else {
            std::fs::rename(staging, &target).map_err(io(&target))?;
        }
        crate::files::sync_dir(&target);
        Ok(target)
    }

    /// Reads and verifies a model's manifest: schema (migrated if older) and weights checksum.
    pub fn load(&self, name: &str) -> Result<Manifest, ZooError> {
        // A model is a folder of the zoo: no path (`../x`, `/abs`) reaches outside it.
        check_name(name).map_err(|problem| ZooError::Bad {
            path: self.dir.display().to_string(),
            problem,
        })?;
        let dir = self.model_dir(name);
        if !dir.join("manifest.json").exists() {
            return Err(ZooError::NotFound {
                name: name.to_string(),
                zoo: self.dir.display().to_string(),
            });
        }
        load_dir(&dir)
    }

    /// Every model, sorted by name; broken ones are returned as errors beside the good ones.
    pub fn list(&self) -> Vec<Result<Manifest, ZooError>> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut dirs: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir() && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
            .collect();
        dirs.sort();
        dirs.iter().map(|d| load_dir(d)).collect()
    }
}

/// A file of the model folder `dir` named by its manifest: a plain file name (no folder part,
/// checked before anything is read) of a regular file there, not a symbolic link.
fn model_file(dir: &Path, manifest: &Path, name: &str) -> Result<PathBuf, ZooError> {
    if !crate::files::plain_name(name) {
        return Err(ZooError::Bad {
            path: manifest.display().to_string(),
            problem: format!(
                "names the file `{}`, which is not a plain file name inside the model folder; the manifest was edited or damaged",
                crate::files::printable(name)
            ),
        });
    }
    let p = dir.join(name);
    regular(&p)?;
    Ok(p)
}

/// Refuses symbolic links and anything but regular files inside a model folder.
fn regular(p: &Path) -> Result<(), ZooError> {
    let meta = std::fs::symlink_metadata(p).map_err(io(p))?;
    let problem = if meta.file_type().is_symlink() {
        "is a symbolic link; the files of a model must be regular files inside its folder"
    } else if !meta.is_file() {
        "is not a regular file"
    } else {
        return Ok(());
    };
    Err(ZooError::Bad {
        path: p.display().to_string(),
        problem: problem.into(),
    })
}

/// Loads the manifest in `dir` and checks the files it names.
pub fn load_dir(dir: &Path) -> Result<Manifest, ZooError> {
    let path = dir.join("manifest.json");
    let bad = |problem: String| ZooError::Bad {
        path: path.display().to_string(),
        problem,
    };
    if std::fs::symlink_metadata(dir).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(ZooError::Bad {
            path: dir.display().to_string(),
            problem: "is a symbolic link; a model folder must be a folder inside the zoo".into(),
        });
    }
    regular(&path)?;
    let text = std::fs::read_to_string(&path).map_err(io(&path))?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON ({e})")))?;
    let value = manifest::migrate(value).map_err(bad)?;
    let mut m: Manifest =
        serde_json::from_value(value).map_err(|e| bad(format!("does not match the manifest schema ({e})")))?;
    // A model is named by its folder (a renamed folder renames it): the name inside the file is
    // never used to build a path, nor shown as if it were the model's.
    if let Some(folder) = dir.file_name().and_then(|n| n.to_str()) {
        m.name = folder.to_string();
    }
    if m.genes.names.len() != m.architecture.n_genes {
        return Err(bad(format!(
            "lists {} genes but the model has {} inputs; the manifest was edited or damaged",
            m.genes.names.len(),
            m.architecture.n_genes
        )));
    }
    let a = &m.architecture;
    let sizes_ok =
        (1..=16_384).contains(&a.n_hidden) && (1..=16_384).contains(&a.n_latent) && (1..=16).contains(&a.n_layers);
    if !sizes_ok {
        return Err(bad(format!(
            "describes layers of {} hidden and {} latent units, {} deep: outside what scmz trains (1 to 16,384 units, 1 to 16 layers); the manifest was edited or damaged",
            a.n_hidden, a.n_latent, a.n_layers
        )));
    }
    let weights = model_file(dir, &path, &m.weights.file)?;
    // The encoder's first layer and the decoder's last are in the weights file (4-byte floats):
    // an architecture larger than the file is refused before anything is allocated for it.
    let inputs = a.n_genes * if a.masked_input { 2 } else { 1 } + a.batch_categories.len();
    let least = 4 * (inputs as u64 + a.n_genes as u64) * a.n_hidden as u64;
    let size = std::fs::metadata(&weights).map_err(io(&weights))?.len();
    if size < least {
        return Err(ZooError::Bad {
            path: weights.display().to_string(),
            problem: format!(
                "holds {size} bytes, but the manifest's {} genes x {} hidden units need at least {least} bytes of weights: \
                 the file is cut short or the manifest was edited; train or install the model again",
                a.n_genes, a.n_hidden
            ),
        });
    }
    let sum = sha256_file(&weights)?;
    if sum != m.weights.sha256 {
        return Err(ZooError::Bad {
            path: weights.display().to_string(),
            problem: format!(
                "sha256 {sum} differs from the manifest's {}: the weights were changed or damaged; {}",
                crate::files::printable(&m.weights.sha256),
                remedy(&m)
            ),
        });
    }
    if let Some(r) = &m.reference {
        let p = model_file(dir, &path, &r.file)?;
        let sum = sha256_file(&p)?;
        if sum != r.sha256 {
            return Err(ZooError::Bad {
                path: p.display().to_string(),
                problem: format!(
                    "sha256 differs from the manifest's: the reference sample was changed or damaged; {}",
                    remedy(&m)
                ),
            });
        }
    }
    Ok(m)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A copy of a frozen model with one byte of `file` changed (its size kept).
    fn damaged(model: &str, file: &str) -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/zoo").join(model);
        let dir = tmp.path().join(model);
        std::fs::create_dir(&dir).unwrap();
        for e in std::fs::read_dir(&from).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_file() {
                std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
            }
        }
        let p = dir.join(file);
        let mut bytes = std::fs::read(&p).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x55;
        std::fs::write(&p, bytes).unwrap();
        (tmp, dir)
    }

    #[test]
    fn names_that_would_be_a_run_lock_are_refused() {
        assert!(check_name("p1.lock").unwrap_err().contains("may not end in `.lock`"));
        assert!(check_name("p1.locked").is_ok() && check_name("lock").is_ok());
        // A name that reads as an option is refused.
        assert!(check_name("--help").unwrap_err().contains("not a valid model name"));
        assert!(check_name("-x").is_err() && check_name("x-").is_ok());
    }

    /// Damaged weights or reference: an imported model is imported again, an own one trained.
    #[test]
    fn damage_is_met_with_the_remedy_for_the_models_origin() {
        for (model, file, remedy) in [
            (
                "scvi-nb-1layer",
                "weights.safetensors",
                "import it again from its scvi-tools folder",
            ),
            (
                "pbmc-tiny",
                "weights.safetensors",
                "train it again or restore the model folder",
            ),
            (
                "pbmc-tiny",
                "reference.safetensors",
                "train it again or restore the model folder",
            ),
        ] {
            let (_tmp, dir) = damaged(model, file);
            let e = load_dir(&dir).unwrap_err().to_string();
            assert!(
                e.contains(file) && e.contains("changed or damaged") && e.contains(remedy),
                "{e}"
            );
        }
    }
}
