//! A bounded fuzz pass over the dataset readers: real files of every format scmz reads (AnnData
//! in the 0.7 and modern layouts, 10x HDF5 v2 and v3, a 10x Matrix Market folder) with their bytes
//! mutated by a seeded generator (bits flipped, fields overwritten with large numbers, regions
//! blanked, files cut short), each read by `scmz inspect` and by `scmz bench read` (the whole
//! matrix, chunk by chunk). Every input must end in a result or a one-line refusal: an exit code of
//! 0 or 1, no panic, no signal, within a few seconds. (libhdf5 itself can crash or loop on such
//! files: `data::guard` turns both into a one-line refusal naming the file.) A failing input is
//! kept and its path printed. `SCMZ_FUZZ_CASES` sets the cases per file (default 40).
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::data;

/// SplitMix64, as the loader's: seeded, so every case can be made again from its number.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// A position where HDF5 keeps most of its metadata (superblock, object headers, B-trees, heaps
/// near the start and end of files written by h5py), or anywhere.
fn position(rng: &mut Rng, len: usize) -> usize {
    match rng.below(3) {
        0 => rng.below(len.min(8192)),
        1 => len.saturating_sub(1 + rng.below(len.min(8192))),
        _ => rng.below(len),
    }
}

/// One mutation of `bytes`; returns what was done, for the failure message.
fn mutate(bytes: &mut Vec<u8>, rng: &mut Rng) -> String {
    let len = bytes.len();
    match rng.below(5) {
        0 => {
            let n = 1 + rng.below(8);
            for _ in 0..n {
                let p = position(rng, len);
                bytes[p] ^= 1 << rng.below(8);
            }
            format!("{n} bits flipped")
        }
        1 => {
            // A length, offset or count field turned huge or negative.
            let p = position(rng, len.saturating_sub(8)) & !7;
            let v: u64 = match rng.below(4) {
                0 => u64::MAX,
                1 => 1 << (16 + rng.below(44)),
                2 => 0x7FFF_FFFF,
                _ => rng.next(),
            };
            let end = (p + 8).min(len);
            bytes[p..end].copy_from_slice(&v.to_le_bytes()[..end - p]);
            format!("8 bytes at {p} set to {v:#x}")
        }
        2 => {
            let p = position(rng, len);
            let n = (4 + rng.below(60)).min(len - p);
            let fill = if rng.below(2) == 0 { 0 } else { 0xFF };
            bytes[p..p + n].fill(fill);
            format!("{n} bytes at {p} set to {fill:#x}")
        }
        3 => {
            let keep = rng.below(len);
            bytes.truncate(keep);
            format!("cut to {keep} bytes")
        }
        _ => {
            // A block of the file copied over another place (a plausible but wrong structure).
            let (from, to) = (position(rng, len), position(rng, len));
            let n = (16 + rng.below(240)).min(len - from).min(len - to);
            let block = bytes[from..from + n].to_vec();
            bytes[to..to + n].copy_from_slice(&block);
            format!("{n} bytes from {from} copied to {to}")
        }
    }
}

/// Runs `scmz args` with a deadline; the outcome as (exit code, stderr), or an error text.
fn run_bounded(args: &[&str], cache: &Path, limit: Duration) -> Result<(i32, String), String> {
    let err_path = cache.with_file_name("stderr");
    let err = std::fs::File::create(&err_path).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_scmz"))
        .args(args)
        .env("SCMZ_CACHE_DIR", cache)
        // A read that makes no progress for this long is reported as a damaged file.
        .env("SCMZ_HDF5_TIMEOUT", "5")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err)
        .spawn()
        .unwrap();
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("still running after {limit:?}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    match status.code() {
        Some(c) => Ok((c, stderr)),
        None => {
            use std::os::unix::process::ExitStatusExt;
            Err(format!("killed by signal {:?}; stderr: {stderr}", status.signal()))
        }
    }
}

fn cases() -> usize {
    std::env::var("SCMZ_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40)
}

/// Fuzzes `file` (inside a copy of `root`, the folder a format needs whole) with `cases` mutated
/// copies, `seed` apart from other files.
fn fuzz(root: &Path, file: &str, seed: u64) {
    let original = std::fs::read(root.join(file)).unwrap();
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    let target = work.path().join("input");
    copy_tree(root, &target);
    // The path scmz reads: the folder for Matrix Market, else the file itself.
    let read = if file.ends_with(".mtx") || file.ends_with(".tsv") {
        target.clone()
    } else {
        target.join(file)
    };
    let mut failures = Vec::new();
    let mut refused = 0;
    for case in 0..cases() {
        let mut rng = Rng(seed * 1_000_003 + case as u64);
        let mut bytes = original.clone();
        let mut what = Vec::new();
        for _ in 0..1 + rng.below(3) {
            if bytes.is_empty() {
                break;
            }
            what.push(mutate(&mut bytes, &mut rng));
        }
        std::fs::write(target.join(file), &bytes).unwrap();
        // No summary cached from an earlier case (the cache keys on size and mtime).
        let _ = std::fs::remove_dir_all(&cache);
        std::fs::create_dir_all(&cache).unwrap();
        let path = read.to_str().unwrap();
        for args in [vec!["inspect", path], vec!["bench", "read", path, "--repeat", "1"]] {
            let outcome = run_bounded(&args, &cache, Duration::from_secs(20));
            let problem = match &outcome {
                Err(e) => Some(e.clone()),
                Ok((c, err)) if err.contains("panicked") || !(*c == 0 || *c == 1) => Some(format!("exit {c}: {err}")),
                Ok((1, err)) if err.trim().lines().count() != 1 => Some(format!("not one line: {err}")),
                Ok((c, _)) => {
                    refused += usize::from(*c == 1);
                    None
                }
            };
            if let Some(p) = problem {
                let keep = std::env::temp_dir().join(format!("scmz-fuzz-{seed}-{case}-{}", args[0]));
                let _ = std::fs::remove_dir_all(&keep);
                copy_tree(&target, &keep);
                failures.push(format!(
                    "case {case} ({}), `scmz {}`: {p} (input kept in {})",
                    what.join(", "),
                    args[0],
                    keep.display()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{file}:\n{}", failures.join("\n"));
    // The pass must reach the readers' checks, not only fail on the first byte.
    assert!(
        refused > 0,
        "{file}: no mutated copy was refused; the mutations do not reach the readers"
    );
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let dst: PathBuf = to.join(e.file_name());
        if e.path().is_dir() {
            copy_tree(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), &dst).unwrap();
        }
    }
}

/// A folder holding only `file` of `dir` (the HDF5 formats are one file).
fn alone(rel: &str) -> (tempfile::TempDir, String) {
    let src = data(rel);
    let dir = tempfile::tempdir().unwrap();
    let name = src.file_name().unwrap().to_str().unwrap().to_string();
    std::fs::copy(&src, dir.path().join(&name)).unwrap();
    (dir, name)
}

#[test]
fn mutated_anndata_0_7_files_are_read_or_refused() {
    let (dir, name) = alone("anndata/v0.7.0.h5ad");
    fuzz(dir.path(), &name, 1);
}

#[test]
fn mutated_modern_anndata_files_are_read_or_refused() {
    let (dir, name) = alone("anndata/nullable_strings.h5ad");
    fuzz(dir.path(), &name, 2);
}

#[test]
fn mutated_10x_hdf5_files_are_read_or_refused() {
    for (i, rel) in [
        "10x/1.2.0/filtered_gene_bc_matrices_h5.h5",
        "10x/3.0.0/filtered_feature_bc_matrix.h5",
    ]
    .iter()
    .enumerate()
    {
        let (dir, name) = alone(rel);
        fuzz(dir.path(), &name, 3 + i as u64);
    }
}

#[test]
fn mutated_matrix_market_folders_are_read_or_refused() {
    let root = data("10x/int-ids");
    for (i, file) in ["matrix.mtx", "features.tsv", "barcodes.tsv"].iter().enumerate() {
        fuzz(&root, file, 5 + i as u64);
    }
}
