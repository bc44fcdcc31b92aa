//! Helpers shared by the integration tests: paths to the real data, the scmz binary run as a
//! process with its own cache directory, and Python `anndata` from the set-up venv.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn data(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(rel)
}

/// A copy of a data file in a fresh temporary folder (kept alive by the returned guard).
pub fn copy_of(rel: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let src = data(rel);
    let dst = dir.path().join(src.file_name().unwrap());
    std::fs::copy(&src, &dst).unwrap();
    let mut perm = std::fs::metadata(&dst).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perm.set_readonly(false);
    std::fs::set_permissions(&dst, perm).unwrap();
    (dir, dst)
}

/// Runs the scmz binary with `args` and a private cache directory.
pub fn scmz(args: &[&str], cache: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_scmz"))
        .args(args)
        .env("SCMZ_CACHE_DIR", cache)
        .output()
        .expect("run scmz")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// The venv's Python (set up by scripts/setup.sh; `SCMZ_PYTHON` overrides).
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("SCMZ_PYTHON") {
        return PathBuf::from(p);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache"));
    cache.join("scmz/venv/bin/python")
}

/// Runs a Python snippet with the venv's interpreter; panics with its stderr on failure.
pub fn run_python(code: &str, args: &[&Path]) -> String {
    let py = python();
    assert!(py.exists(), "{} is missing: run scripts/setup.sh first", py.display());
    let out = Command::new(&py)
        .arg("-c")
        .arg(code)
        .args(args)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "python failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}
