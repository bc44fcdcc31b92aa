//! Format detection from content, not from file names: HDF5 files are told apart by their
//! groups, Matrix Market folders by their files.

use std::path::{Path, PathBuf};

use hdf5::File;

use super::dataset::H5adLayout;
use super::error::{DataError, Result};
use super::h5;

pub(crate) enum Detected {
    H5ad(File, H5adLayout),
    TenxH5(File, u8),
    TenxMtx(PathBuf),
}

/// The Matrix Market file inside a 10x folder, if there is one.
pub fn mtx_file(dir: &Path) -> Option<PathBuf> {
    ["matrix.mtx", "matrix.mtx.gz"]
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
}

/// Whether `dir` holds something named like a 10x Matrix Market file, regular or not (a FIFO or
/// a dangling link is then a dataset that fails to open, named, rather than no dataset at all).
pub fn names_mtx(dir: &Path) -> bool {
    ["matrix.mtx", "matrix.mtx.gz"]
        .iter()
        .any(|n| std::fs::symlink_metadata(dir.join(n)).is_ok())
}

/// True when `path` looks like something `Dataset::open` can read (used by folder scans).
pub fn looks_supported(path: &Path) -> bool {
    if path.is_dir() {
        return names_mtx(path);
    }
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    name.ends_with(".h5ad") || name.ends_with(".h5") || name.ends_with(".hdf5")
}

pub(crate) fn detect(path: &Path) -> Result<Detected> {
    if path.is_dir() {
        // Something named matrix.mtx that is no regular file (a FIFO, a dangling link) is
        // named as such, not reported missing.
        if mtx_file(path).is_none() {
            for name in ["matrix.mtx", "matrix.mtx.gz"] {
                let p = path.join(name);
                if std::fs::symlink_metadata(&p).is_ok() {
                    crate::files::require_regular(&p).map_err(|e| DataError::file(&p, e.message))?;
                }
            }
        }
        return match mtx_file(path) {
            Some(_) => Ok(Detected::TenxMtx(path.to_path_buf())),
            None => Err(DataError::file(path, "folder holds no matrix.mtx or matrix.mtx.gz")
                .hint("point at a 10x Matrix Market folder, an .h5ad or a 10x .h5 file")),
        };
    }
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if name.ends_with(".mtx") || name.ends_with(".mtx.gz") {
        let dir = path.parent().unwrap_or(Path::new("."));
        return Ok(Detected::TenxMtx(dir.to_path_buf()));
    }
    let file = h5::open_file(path)?;
    let root: &hdf5::Group = &file;
    if h5::is_group(root, "matrix") && file.link_exists("matrix/features") {
        return Ok(Detected::TenxH5(file, 3));
    }
    if h5::has(root, "X") || h5::has(root, "obs") {
        let layout = if h5::attr_string(&file, "encoding-type").as_deref() == Some("anndata") {
            H5adLayout::Modern
        } else if h5::is_group(root, "obs") {
            H5adLayout::V07
        } else {
            H5adLayout::Legacy
        };
        return Ok(Detected::H5ad(file, layout));
    }
    // 10x v2: one group per genome holding genes, barcodes and the sparse matrix.
    for g in file.member_names().unwrap_or_default() {
        if let Ok(group) = file.group(&g) {
            if ["genes", "barcodes", "indptr", "data"]
                .iter()
                .all(|n| group.link_exists(n))
            {
                return Ok(Detected::TenxH5(file, 2));
            }
        }
    }
    Err(DataError::file(
        path,
        "HDF5 file is neither AnnData (no X or obs) nor a 10x matrix (no matrix/features or genome group)",
    )
    .hint("scmz reads .h5ad, 10x .h5 (v2, v3) and 10x Matrix Market folders"))
}
