//! Bad input, faults and hostile files, each built here at test time: every case must end in a
//! one-line refusal naming the file or setting and a non-zero exit (never a panic), with the
//! inputs unchanged, nothing written outside the output and no temporary file left behind.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{copy_of, data, run_python, stderr, stdout};

/// Runs `scmz` with a private zoo, state, cache and config under `root`.
fn scmz(root: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_scmz"))
        .args(args)
        .env("SCMZ_ZOO", root.join("zoo"))
        .env("SCMZ_STATE_DIR", root.join("state"))
        .env("SCMZ_CACHE_DIR", root.join("cache"))
        .env("SCMZ_CONFIG", root.join("config.toml"))
        .env_remove("SCMZ_MAX_CPU_JOBS")
        .output()
        .unwrap()
}

fn sha(path: &Path) -> String {
    scmz::zoo::sha256_file(path).unwrap()
}

/// A refusal: exit `code`, no panic, and one line holding every needle.
fn refused(o: &Output, code: i32, needles: &[&str]) -> String {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(code), "stdout: {}\nstderr: {err}", stdout(o));
    assert!(!err.contains("panicked"), "{err}");
    let first = err.lines().next().unwrap_or_default().to_string();
    for n in needles {
        assert!(
            err.to_lowercase().contains(&n.to_lowercase()),
            "`{n}` missing from: {err}"
        );
    }
    first
}

/// Every file below `dir` (relative names), for "nothing else was written" checks.
fn files_below(dir: &Path) -> Vec<String> {
    fn walk(d: &Path, base: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() && !p.is_symlink() {
                walk(&p, base, out);
            } else {
                out.push(p.strip_prefix(base).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn no_temp_files(dir: &Path) {
    let left: Vec<String> = files_below(dir)
        .into_iter()
        .filter(|f| f.contains(".tmp") || f.contains("/.tmp-") || f.starts_with(".tmp-"))
        .collect();
    assert!(left.is_empty(), "temporary files left in {}: {left:?}", dir.display());
}

/// A copy of the bundled test zoo (model `pbmc-tiny`) under `root/zoo`.
fn bundled_zoo(root: &Path) -> PathBuf {
    let zoo = root.join("zoo");
    let model = zoo.join("pbmc-tiny");
    std::fs::create_dir_all(&model).unwrap();
    for e in std::fs::read_dir(data("zoo/pbmc-tiny")).unwrap().flatten() {
        if e.path().is_file() {
            std::fs::copy(e.path(), model.join(e.file_name())).unwrap();
        }
    }
    zoo
}

/// Makes a FIFO at `path`.
fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

/// Rewrites the manifest of `zoo`'s model pbmc-tiny after `edit`.
fn edit_manifest(zoo: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = zoo.join("pbmc-tiny/manifest.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(&mut m);
    std::fs::write(&path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
}

/// `scmz project INPUT --model pbmc-tiny --zoo ZOO -o OUT`, plus `extra`.
fn project(root: &Path, input: &Path, zoo: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "project",
        input.to_str().unwrap(),
        "--model",
        "pbmc-tiny",
        "--zoo",
        zoo.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    scmz(root, &args)
}

// ---- Data loss -------------------------------------------------------------------------------

#[test]
fn no_command_writes_over_its_input() {
    let (dir, a) = copy_of("pbmc68k_counts.h5ad");
    let b = dir.path().join("b.h5ad");
    std::fs::copy(&a, &b).unwrap();
    let link = dir.path().join("link.h5ad");
    std::os::unix::fs::symlink(&b, &link).unwrap();
    let hard = dir.path().join("hard.h5ad");
    std::fs::hard_link(&b, &hard).unwrap();
    let before = (sha(&a), sha(&b));
    let root = tempfile::tempdir().unwrap();
    let zoo = bundled_zoo(root.path());
    let (sa, sb) = (a.to_str().unwrap(), b.to_str().unwrap());
    for out in [&b, &link, &hard] {
        let o = out.to_str().unwrap();
        for overwrite in [false, true] {
            let mut merge = vec!["merge", sa, sb, "-o", o];
            let mut project = vec![
                "project",
                sb,
                "--model",
                "pbmc-tiny",
                "--zoo",
                zoo.to_str().unwrap(),
                "-o",
                o,
            ];
            let mut table = vec!["overlap", sa, sb, "--out", o];
            if overwrite {
                for c in [&mut merge, &mut project, &mut table] {
                    c.push("--overwrite");
                }
            }
            for args in [&merge, &project, &table] {
                let line = refused(&scmz(root.path(), args), 1, &["is the input"]);
                assert!(line.contains(o), "{line}");
            }
        }
    }
    assert_eq!((sha(&a), sha(&b)), before, "an input changed");
    no_temp_files(dir.path());
    // The model's files are inputs of `project` too, and `--model` names a model, not a path.
    let weights = zoo.join("pbmc-tiny/weights.safetensors");
    let saved = sha(&weights);
    let o = scmz(
        root.path(),
        &[
            "project",
            sa,
            "--model",
            "pbmc-tiny",
            "-o",
            weights.to_str().unwrap(),
            "--overwrite",
        ],
    );
    refused(&o, 1, &["is the input"]);
    assert_eq!(sha(&weights), saved);
    let outside = tempfile::tempdir().unwrap();
    let o = scmz(root.path(), &["model", "show", outside.path().to_str().unwrap()]);
    refused(&o, 1, &["not a valid model name"]);
}

#[test]
fn an_existing_output_is_replaced_only_with_overwrite() {
    let (dir, a) = copy_of("pbmc68k_counts.h5ad");
    let out = dir.path().join("out.h5ad");
    std::fs::write(&out, b"keep me").unwrap();
    let root = tempfile::tempdir().unwrap();
    let zoo = bundled_zoo(root.path());
    refused(
        &project(root.path(), &a, &zoo, &out, &[]),
        1,
        &["already exists", "--overwrite"],
    );
    assert_eq!(std::fs::read(&out).unwrap(), b"keep me");
    // A link to nothing is named as such, not as a file that exists.
    let dangling = dir.path().join("dangling.h5ad");
    std::os::unix::fs::symlink(dir.path().join("nowhere.h5ad"), &dangling).unwrap();
    refused(
        &project(root.path(), &a, &zoo, &dangling, &[]),
        1,
        &["dangling.h5ad", "symbolic link", "does not exist"],
    );
    assert!(!dir.path().join("nowhere.h5ad").exists());
    std::fs::remove_file(&dangling).unwrap();
    let o = project(root.path(), &a, &zoo, &out, &["--overwrite"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        common::run_python(
            "import anndata,sys; a=anndata.read_h5ad(sys.argv[1]); print(a.obsm['X_scmz'].shape[0])",
            &[&out]
        )
        .trim()
        .parse::<usize>()
        .unwrap()
            > 0
    );
    no_temp_files(dir.path());
}

/// A small tmpfs at `dir`, or None (with the reason printed) where mounting is not allowed.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let o = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "tmpfs",
                dir.to_str().unwrap(),
            ])
            .output();
        match o {
            Ok(o) if o.status.success() => Some(Tmpfs(dir.to_path_buf())),
            Ok(o) => {
                eprintln!("skipped: cannot mount a tmpfs ({})", stderr(&o).trim());
                None
            }
            Err(e) => {
                eprintln!("skipped: cannot run mount ({e})");
                None
            }
        }
    }

    /// Fills the file system but for `leave` bytes.
    fn fill(&self, leave: u64) {
        let st = nix_statvfs(&self.0);
        let free = st.saturating_sub(leave);
        let f = std::fs::File::create(self.0.join("filler")).unwrap();
        f.set_len(0).unwrap();
        use std::io::Write;
        let mut w = std::io::BufWriter::new(f);
        let block = vec![1u8; 4096];
        let mut written = 0;
        while written + 4096 <= free {
            if w.write_all(&block).is_err() {
                break;
            }
            written += 4096;
        }
        let _ = w.flush();
    }
}

fn nix_statvfs(p: &Path) -> u64 {
    let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    // SAFETY: statvfs is plain data; all-zero bytes are a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid path and a zeroed out-struct.
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    st.f_bavail as u64 * st.f_frsize as u64
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).output();
    }
}

#[test]
fn a_full_disk_fails_the_write_and_leaves_nothing() {
    let work = tempfile::tempdir().unwrap();
    let Some(fs) = Tmpfs::mount(&work.path().join("small"), "2m") else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let zoo = bundled_zoo(root.path());
    let input = data("pbmc68k_counts.h5ad");
    let si = input.to_str().unwrap();
    // The copy (2.9 MB) cannot fit: the write fails, named, and nothing is left.
    let out = fs.0.join("projected.h5ad");
    let o = project(root.path(), &input, &zoo, &out, &[]);
    refused(&o, 1, &["no space left on device", "projected.h5ad"]);
    assert!(files_below(&fs.0).is_empty(), "{:?}", files_below(&fs.0));
    // Merges and tables, with a nearly full disk.
    fs.fill(64 << 10);
    let merged = fs.0.join("merged.h5ad");
    let o = scmz(root.path(), &["merge", si, si, "-o", merged.to_str().unwrap()]);
    refused(&o, 1, &["no space left on device", "merged.h5ad"]);
    let table = fs.0.join("latents.csv");
    let o = project(root.path(), &input, &zoo, &table, &[]);
    refused(&o, 1, &["no space left on device", "latents.csv"]);
    assert_eq!(files_below(&fs.0), vec!["filler".to_string()]);
}

#[test]
fn a_read_only_zoo_is_named_and_loses_no_results() {
    let work = tempfile::tempdir().unwrap();
    let Some(fs) = Tmpfs::mount(&work.path().join("zoo"), "8m") else {
        return;
    };
    let model = fs.0.join("pbmc-tiny");
    std::fs::create_dir_all(&model).unwrap();
    for e in std::fs::read_dir(data("zoo/pbmc-tiny")).unwrap().flatten() {
        if e.path().is_file() {
            std::fs::copy(e.path(), model.join(e.file_name())).unwrap();
        }
    }
    let o = Command::new("mount")
        .args(["-o", "remount,ro"])
        .arg(&fs.0)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let root = tempfile::tempdir().unwrap();
    let input = data("pbmc68k_counts.h5ad");
    let si = input.to_str().unwrap();
    let zoo = fs.0.to_str().unwrap();
    let o = scmz(
        root.path(),
        &["train", si, "--name", "new", "--epochs", "1", "--zoo", zoo],
    );
    refused(&o, 1, &[zoo, "read-only file system"]);
    assert!(!stderr(&o).contains("os error"), "{}", stderr(&o));
    // `compare` prints what it measured, then says it could not keep it with the model.
    let o = scmz(
        root.path(),
        &[
            "compare",
            si,
            "--model",
            "pbmc-tiny",
            "--zoo",
            zoo,
            "--epochs",
            "2",
            "--seeds",
            "1",
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stdout(&o).contains("verdict:"), "{}", stdout(&o));
    let err = stderr(&o);
    let last = err.lines().last().unwrap();
    for needle in [
        "comparisons",
        "read-only file system",
        "not kept with model `pbmc-tiny`",
        "--out",
    ] {
        assert!(last.contains(needle), "`{needle}` missing from: {last}");
    }
    assert!(!last.contains("at path"), "{last}");
}

#[test]
fn training_into_a_full_zoo_leaves_no_partial_model() {
    let work = tempfile::tempdir().unwrap();
    let Some(fs) = Tmpfs::mount(&work.path().join("zoo"), "1m") else {
        return;
    };
    let input = data("pbmc68k_counts.h5ad");
    let o = Command::new(env!("CARGO_BIN_EXE_scmz"))
        .args(["train", input.to_str().unwrap(), "--name", "full", "--epochs", "2"])
        .env("SCMZ_ZOO", &fs.0)
        .env("SCMZ_STATE_DIR", work.path().join("state"))
        .output()
        .unwrap();
    refused(&o, 1, &["no space left on device"]);
    let left = files_below(&fs.0);
    assert!(
        !left.iter().any(|f| f.starts_with("full/")),
        "a partial model: {left:?}"
    );
    assert!(!left.iter().any(|f| f.contains(".tmp")), "temporary files: {left:?}");
    // What a resume needs is whole: no checkpoint json without its weights.
    if let Ok(j) = std::fs::read(fs.0.join(".runs/full/checkpoint.json")) {
        let j: serde_json::Value = serde_json::from_slice(&j).unwrap();
        let e = j["epoch"].as_u64().unwrap();
        assert!(fs.0.join(format!(".runs/full/checkpoint-{e}.safetensors")).exists());
    }
}

/// A training killed with SIGKILL while it wrote its model leaves `.tmp-NAME-PID` in the zoo;
/// the next run of that model removes it (its process is gone), and only it: a living
/// process's folder and another model's stay.
#[test]
fn a_staging_folder_left_by_a_killed_run_goes_with_the_next_run() {
    let root = tempfile::tempdir().unwrap();
    let zoo = root.path().join("zoo");
    // No process has a pid above the kernel's limit (at most 2^22).
    let dead = zoo.join(".tmp-kept-99999999");
    let living = zoo.join(format!(".tmp-kept-{}", std::process::id()));
    let other = zoo.join(".tmp-kept-other-99999999");
    for d in [&dead, &living, &other] {
        std::fs::create_dir_all(d).unwrap();
        std::fs::write(d.join("weights.safetensors"), b"half").unwrap();
    }
    let input = data("pbmc68k_counts.h5ad");
    let o = scmz(
        root.path(),
        &["train", input.to_str().unwrap(), "--name", "kept", "--epochs", "2"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(zoo.join("kept/manifest.json").exists());
    assert!(!dead.exists(), "the dead run's staging folder stayed");
    assert!(living.exists() && other.exists(), "a folder not the dead run's went");
}

// ---- Security --------------------------------------------------------------------------------

/// Rewrites `X/data` of an h5ad as a dataset whose bytes live in `outside` (HDF5 external storage),
/// an external link, or a virtual dataset.
fn point_outside(path: &Path, how: &str, outside: &Path) {
    run_python(
        r#"
import h5py, sys
path, how, outside = sys.argv[1], sys.argv[2], sys.argv[3]
f = h5py.File(path, "r+")
x = f["X"]
n, dt = x["data"].shape[0], x["data"].dtype
del x["data"]
if how == "external":
    x.create_dataset("data", shape=(n,), dtype=dt, external=[(outside, 0, h5py.h5f.UNLIMITED)])
elif how == "link":
    x["data"] = h5py.ExternalLink(outside, "/X/data")
else:
    layout = h5py.VirtualLayout(shape=(n,), dtype=dt)
    layout[:] = h5py.VirtualSource(outside, "/X/data", shape=(n,))
    x.create_virtual_dataset("data", layout)
f.close()
"#,
        &[path, Path::new(how), outside],
    );
}

#[test]
fn hdf5_that_points_outside_the_file_is_refused() {
    let secret_dir = tempfile::tempdir().unwrap();
    let secret = secret_dir.path().join("secret.txt");
    std::fs::write(&secret, "TOPSECRET-".repeat(100_000)).unwrap();
    let (_d, other) = copy_of("pbmc68k_counts.h5ad");
    for how in ["external", "link", "virtual"] {
        let (dir, p) = copy_of("pbmc68k_counts.h5ad");
        let target = if how == "external" { &secret } else { &other };
        point_outside(&p, how, target);
        let root = tempfile::tempdir().unwrap();
        let sp = p.to_str().unwrap();
        let line = refused(
            &scmz(root.path(), &["inspect", sp]),
            1,
            &["X/data", "outside this file"],
        );
        assert!(line.contains("pbmc68k_counts.h5ad"), "{line}");
        refused(
            &scmz(root.path(), &["train", sp, "--name", "leak", "--epochs", "1"]),
            1,
            &["X/data"],
        );
        assert!(!root.path().join("zoo/leak").exists());
        // The folder scan lists it as unreadable instead.
        let o = scmz(root.path(), &["datasets", dir.path().to_str().unwrap(), "--json"]);
        assert!(!stdout(&o).contains("TOPSECRET"));
    }
}

#[test]
fn model_folders_name_only_their_own_regular_files() {
    let root = tempfile::tempdir().unwrap();
    let zoo = bundled_zoo(root.path());
    let model = zoo.join("pbmc-tiny");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(model.join("manifest.json")).unwrap()).unwrap();
    let query = data("pbmc68k_counts.h5ad");
    let out = root.path().join("out.csv");
    let project = |root: &Path| {
        scmz(
            root,
            &[
                "project",
                query.to_str().unwrap(),
                "--model",
                "pbmc-tiny",
                "-o",
                out.to_str().unwrap(),
            ],
        )
    };
    // A manifest naming a file outside the folder: refused before anything is read.
    for name in ["/etc/passwd", "../../../../etc/passwd", "..", ""] {
        let mut m = manifest.clone();
        m["weights"]["file"] = name.into();
        std::fs::write(model.join("manifest.json"), serde_json::to_vec(&m).unwrap()).unwrap();
        for args in [vec!["model", "show", "pbmc-tiny"], vec!["models"]] {
            let o = scmz(root.path(), &args);
            assert!(stderr(&o).contains("not a plain file name"), "{name}: {}", stderr(&o));
            assert!(!stdout(&o).contains("root:"), "{}", stdout(&o));
        }
        refused(&project(root.path()), 1, &["not a plain file name"]);
    }
    std::fs::write(model.join("manifest.json"), serde_json::to_vec(&manifest).unwrap()).unwrap();
    // A weights file that is a symlink (to /dev/zero: a read that never ends).
    let weights = model.join(manifest["weights"]["file"].as_str().unwrap());
    let saved = std::fs::read(&weights).unwrap();
    std::fs::remove_file(&weights).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &weights).unwrap();
    let t = Instant::now();
    refused(&project(root.path()), 1, &["symbolic link"]);
    assert!(t.elapsed() < Duration::from_secs(20));
    std::fs::remove_file(&weights).unwrap();
    std::fs::write(&weights, saved).unwrap();
    // A model folder that is a symlink out of the zoo.
    let outside = tempfile::tempdir().unwrap();
    let moved = outside.path().join("pbmc-tiny");
    std::fs::rename(&model, &moved).unwrap();
    std::os::unix::fs::symlink(&moved, &model).unwrap();
    refused(&project(root.path()), 1, &["symbolic link"]);
    assert!(!out.exists());
}

/// A safetensors file with its header replaced by `header` (its data kept).
fn with_header(bytes: &[u8], header: &[u8]) -> Vec<u8> {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header);
    out.extend_from_slice(&bytes[8 + n..]);
    out
}

#[test]
fn damaged_model_files_are_refused_in_words() {
    let root = tempfile::tempdir().unwrap();
    let zoo = bundled_zoo(root.path());
    let model = zoo.join("pbmc-tiny");
    let weights = model.join("weights.safetensors");
    let good = std::fs::read(&weights).unwrap();
    let n = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&good[8..8 + n]).unwrap();
    // The first float tensor's data: where a NaN goes.
    let (name, first) = header
        .as_object()
        .unwrap()
        .iter()
        .find(|(k, v)| *k != "__metadata__" && v["dtype"] == "F32")
        .map(|(k, v)| (k.clone(), v["data_offsets"][0].as_u64().unwrap() as usize))
        .unwrap();
    let mut nan = good.clone();
    nan[8 + n + first..8 + n + first + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    let mut shifted = header.clone();
    shifted[&name]["data_offsets"][1] = serde_json::json!(u32::MAX);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("cut short", good[..good.len() / 2].to_vec(), "cut short"),
        ("tiny", good[..5].to_vec(), "cut short"),
        ("header not JSON", with_header(&good, b"{not json"), "header"),
        (
            "header length huge",
            [&u64::MAX.to_le_bytes()[..], &good[8..]].concat(),
            "header",
        ),
        (
            "offsets past the data",
            with_header(&good, &serde_json::to_vec(&shifted).unwrap()),
            "does not hold",
        ),
        ("NaN weight", nan, "NaN"),
    ];
    let query = data("pbmc68k_counts.h5ad");
    let out = root.path().join("out.csv");
    let manifest_path = model.join("manifest.json");
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    for (what, bytes, needle) in cases {
        std::fs::write(&weights, &bytes).unwrap();
        // The checksum made to fit, as someone who edits the file on purpose would.
        let mut m = manifest.clone();
        m["weights"]["sha256"] = sha(&weights).into();
        std::fs::write(&manifest_path, serde_json::to_vec(&m).unwrap()).unwrap();
        let o = project(root.path(), &query, &zoo, &out, &[]);
        let line = refused(&o, 1, &["weights.safetensors", needle]);
        assert!(line.contains("train or install"), "{what}: {line}");
        assert!(
            !line.contains("TensorInvalidInfo") && !line.contains("InvalidOffset"),
            "{what}: {line}"
        );
        assert!(!out.exists(), "{what}");
    }
}

#[test]
fn a_manifest_whose_genes_do_not_fit_its_weights_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let zoo = bundled_zoo(root.path());
    edit_manifest(&zoo, |m| {
        m["genes"]["names"].as_array_mut().unwrap().pop();
    });
    let out = root.path().join("out.csv");
    let query = data("pbmc68k_counts.h5ad");
    let o = scmz(
        root.path(),
        &[
            "project",
            query.to_str().unwrap(),
            "--model",
            "pbmc-tiny",
            "-o",
            out.to_str().unwrap(),
        ],
    );
    refused(&o, 1, &["manifest.json", "genes but the model has"]);
    assert!(!out.exists());
}

#[test]
fn a_model_name_too_long_for_a_folder_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let input = data("pbmc68k_counts.h5ad");
    let name = "m".repeat(300);
    let o = scmz(
        root.path(),
        &["train", input.to_str().unwrap(), "--name", &name, "--epochs", "1"],
    );
    refused(&o, 1, &["too long: use at most 100"]);
    assert!(!root.path().join("zoo").exists());
}

#[test]
fn a_fifo_or_device_named_like_a_dataset_does_not_hang() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("pipe.h5ad");
    mkfifo(&fifo);
    std::os::unix::fs::symlink("/dev/zero", dir.path().join("zero.h5ad")).unwrap();
    let root = tempfile::tempdir().unwrap();
    let t = Instant::now();
    refused(
        &scmz(root.path(), &["inspect", fifo.to_str().unwrap()]),
        1,
        &["pipe.h5ad", "FIFO"],
    );
    refused(
        &scmz(
            root.path(),
            &["inspect", dir.path().join("zero.h5ad").to_str().unwrap()],
        ),
        1,
        &["zero.h5ad", "device"],
    );
    // A 10x folder whose matrix.mtx is a FIFO, or a link to nothing, is named as such.
    let (fifo_dir, dangling_dir) = (dir.path().join("tenx_fifo"), dir.path().join("tenx_dangling"));
    for d in [&fifo_dir, &dangling_dir] {
        std::fs::create_dir(d).unwrap();
    }
    mkfifo(&fifo_dir.join("matrix.mtx"));
    std::os::unix::fs::symlink("/nonexistent/matrix.mtx", dangling_dir.join("matrix.mtx")).unwrap();
    refused(
        &scmz(root.path(), &["inspect", fifo_dir.to_str().unwrap()]),
        1,
        &["tenx_fifo/matrix.mtx", "FIFO"],
    );
    refused(
        &scmz(root.path(), &["inspect", dangling_dir.to_str().unwrap()]),
        1,
        &[
            "tenx_dangling/matrix.mtx",
            "symbolic link to `/nonexistent/matrix.mtx`, which does not exist",
        ],
    );
    // A scan lists both folders as datasets that fail, named, rather than leaving them out.
    let o = scmz(root.path(), &["datasets", dir.path().to_str().unwrap()]);
    let err = stderr(&o);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("tenx_fifo/matrix.mtx") && err.contains("FIFO"), "{err}");
    assert!(
        err.contains("tenx_dangling/matrix.mtx") && err.contains("does not exist"),
        "{err}"
    );
    assert!(t.elapsed() < Duration::from_secs(20), "took {:?}", t.elapsed());
}

#[test]
fn names_from_files_cannot_drive_the_terminal() {
    let (_d, p) = copy_of("pbmc68k_counts.h5ad");
    run_python(
        r#"
import anndata, sys
a = anndata.read_h5ad(sys.argv[1])
a.obs["evil"] = ["\x1b[2J\x1b]0;pwned\x07" if i % 2 else "ok" for i in range(a.n_obs)]
a.obs["evil"] = a.obs["evil"].astype("category")
a.write_h5ad(sys.argv[1])
"#,
        &[&p],
    );
    let root = tempfile::tempdir().unwrap();
    let o = scmz(root.path(), &["inspect", p.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("evil"), "{text}");
    assert!(
        !text.contains('\x1b') && !text.contains('\x07'),
        "raw control characters printed: {text:?}"
    );
    assert!(text.contains("\\u{1b}"), "{text}");
}

#[test]
fn duplicate_cell_ids_are_named() {
    let (_d, p) = copy_of("pbmc68k_counts.h5ad");
    run_python(
        r#"
import anndata, sys
a = anndata.read_h5ad(sys.argv[1])
a.obs_names = ["cell"] * 3 + list(a.obs_names[3:])
a.write_h5ad(sys.argv[1])
"#,
        &[&p],
    );
    let root = tempfile::tempdir().unwrap();
    let o = scmz(root.path(), &["inspect", p.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("1 duplicated cell ids in obs (cell)"),
        "{}",
        stdout(&o)
    );
    let o = scmz(
        root.path(),
        &["train", p.to_str().unwrap(), "--name", "dup", "--epochs", "1"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("duplicated cell ids"), "{}", stderr(&o));
}

/// Models that would learn nothing are refused before anything is written: a file too small
/// for a training step and a validation (it "trained" with exit 0, loss 0), and a label column
/// with no value in any cell (its reference transferred NaN labels).
#[test]
fn a_model_that_would_learn_nothing_is_refused() {
    let (_d, p) = copy_of("pbmc68k_counts.h5ad");
    run_python(
        r#"
import anndata, numpy as np, pandas as pd, sys
a = anndata.read_h5ad(sys.argv[1])
a[:2].copy().write_h5ad(sys.argv[1].replace(".h5ad", "_two.h5ad"))
a.obs["missing"] = pd.Categorical([np.nan] * a.n_obs, categories=["T cell", "B cell"])
a.write_h5ad(sys.argv[1])
"#,
        &[&p],
    );
    let two = p.with_file_name("pbmc68k_counts_two.h5ad");
    let root = tempfile::tempdir().unwrap();
    for detach in [false, true] {
        let mut args = vec!["train", two.to_str().unwrap(), "--name", "two", "--epochs", "2"];
        if detach {
            args.push("--detach");
        }
        let first = refused(&scmz(root.path(), &args), 1, &["to train on", "more cells"]);
        assert!(
            first.contains("pbmc68k_counts_two.h5ad: 2 cells: 1 to train on and 1 held out"),
            "{first}"
        );
        let args = [
            "train",
            p.to_str().unwrap(),
            "--name",
            "nolabels",
            "--label-key",
            "missing",
            "--epochs",
            "2",
        ];
        let mut args = args.to_vec();
        if detach {
            args.push("--detach");
        }
        refused(&scmz(root.path(), &args), 1, &["`missing` has no value in any cell"]);
    }
    // Nothing in the zoo, no job queued.
    assert_eq!(files_below(&root.path().join("zoo")), Vec::<String>::new());
    let o = scmz(root.path(), &["jobs", "--json"]);
    assert_eq!(stdout(&o).trim(), "[]");
}

#[test]
fn cancel_never_signals_a_process_that_is_not_the_job() {
    let root = tempfile::tempdir().unwrap();
    // An unrelated process whose pid a stale or edited job.json names.
    let mut bystander = Command::new("sleep").arg("60").spawn().unwrap();
    let pid = bystander.id();
    let id = "20260101-000000-0001";
    let dir = root.path().join("state/jobs").join(id);
    std::fs::create_dir_all(&dir).unwrap();
    let job = serde_json::json!({
        "id": id, "kind": "train", "name": "x", "args": ["d.h5ad", "--name", "x"], "backend": "local",
        "state": "running", "created": "2026-01-01T00:00:00Z", "started": "2026-01-01T00:00:00Z",
        "ended": null, "supervisor_pid": pid, "pid": pid, "supervisor_start": 1, "pid_start": 1,
        "exit_code": null, "signal": null, "reason": null, "events": null, "slot": "cpu"
    });
    std::fs::write(dir.join("job.json"), serde_json::to_vec(&job).unwrap()).unwrap();
    let o = scmz(root.path(), &["jobs", "cancel", id]);
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
    std::thread::sleep(Duration::from_millis(300));
    assert!(bystander.try_wait().unwrap().is_none(), "the bystander was signalled");
    let o = scmz(root.path(), &["jobs", "--json"]);
    let jobs: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let j = jobs.as_array().unwrap().iter().find(|j| j["id"] == id).unwrap();
    assert_eq!(j["state"], "failed", "{j:#}");
    bystander.kill().unwrap();
    let _ = bystander.wait();
}

// ---- Settings and runs -----------------------------------------------------------------------

#[test]
fn settings_out_of_range_fail_at_parse_time() {
    let root = tempfile::tempdir().unwrap();
    let input = data("pbmc68k_counts.h5ad");
    let si = input.to_str().unwrap();
    for (flag, value) in [
        ("--batch-size", "0"),
        ("--n-latent", "0"),
        ("--n-hidden", "0"),
        ("--n-layers", "0"),
        ("--n-hidden", "100000000"),
        ("--n-latent", "100000000"),
        ("--n-layers", "100000"),
        ("--epochs", "0"),
        ("--chunk-rows", "0"),
        ("--lr", "-1"),
        ("--lr", "nan"),
        ("--gene-dropout", "1.5"),
        ("--dropout", "1"),
        ("--norm", "lyer"),
        ("--likelihood", "gaussian"),
        ("--epochs", "100000000000"),
        ("--lr", "1e30"),
        ("--lr-warmup", "1e3"),
        ("--lr-warmup", "18446744073709551615"),
        ("--norm-cells", "100001"),
        ("--norm-cells", "99"),
        ("--norm-cells", "1.5"),
        ("--kl-warmup", "2.5"),
        ("--kl-warmup", "18446744073709551615"),
        ("--kl-warmup", ""),
        ("--patience", "nan"),
    ] {
        let setting = format!("{flag}={value}");
        let o = scmz(root.path(), &["train", si, "--name", "bad", &setting]);
        refused(&o, 2, &[flag]);
    }
    // A negative number as its own argument is the setting's value, not a flag.
    for flag in [
        "--lr",
        "--weight-decay",
        "--dropout",
        "--gene-dropout",
        "--lr-warmup",
        "--norm-cells",
        "--kl-warmup",
        "--patience",
    ] {
        let o = scmz(root.path(), &["train", si, "--name", "bad", flag, "-1"]);
        refused(&o, 2, &[flag, "`-1` must be"]);
    }
    for v in ["abc", "-1", "1e99", "5000"] {
        let o = scmz(root.path(), &["jobs", "cancel", "nosuch", "--grace", v]);
        refused(&o, 2, &["--grace", "seconds from 0 to 3600"]);
    }
    assert!(!root.path().join("zoo").exists(), "{:?}", files_below(root.path()));
}

/// A misspelt choice fails when `scmz` parses its command line (exit 2), listing the valid
/// values; nothing is queued, trained or stored, detached or not.
#[test]
fn misspelt_choices_fail_at_parse_time_listing_the_valid_ones() {
    let root = tempfile::tempdir().unwrap();
    let input = data("pbmc68k_counts.h5ad");
    let si = input.to_str().unwrap();
    let train = |flag: &'static str, value: &'static str| vec!["train", si, "--name", "typo", flag, value];
    for (args, valid) in [
        (train("--norm", "lyer"), &["batch", "layer"][..]),
        (train("--likelihood", "nbb"), &["nb", "zinb", "poisson"][..]),
        (train("--device", "gpu0"), &["auto", "cpu", "cuda"][..]),
        (
            vec!["project", si, "--model", "m", "-o", "o.h5ad", "--missing", "pad"],
            &["mask", "zero"][..],
        ),
    ] {
        for detach in [false, true] {
            let mut args = args.clone();
            if detach {
                args.push("--detach");
            }
            let o = scmz(root.path(), &args);
            let first = refused(&o, 2, &[args[args.len() - 1 - usize::from(detach)]]);
            assert!(first.contains("invalid value"), "{first}");
            let err = stderr(&o);
            let listed = err.lines().find(|l| l.contains("possible values")).unwrap_or_default();
            for v in valid {
                assert!(listed.contains(v), "{args:?}: `{v}` not listed in {err}");
            }
        }
    }
    let left = files_below(root.path());
    assert!(left.iter().all(|f| !f.ends_with("job.json")), "{left:?}");
    assert!(!root.path().join("zoo").exists(), "{left:?}");
}

#[test]
fn one_engine_per_run() {
    let root = tempfile::tempdir().unwrap();
    let input = data("pbmc68k_counts.h5ad");
    let si = input.to_str().unwrap();
    let zoo = root.path().join("zoo");
    let mut first = Command::new(env!("CARGO_BIN_EXE_scmz-engine"))
        .args([
            "train",
            si,
            "--name",
            "twice",
            "--epochs",
            "400",
            "--zoo",
            zoo.to_str().unwrap(),
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let lock = root.path().join("zoo/.runs/twice.lock");
    let t = Instant::now();
    while !std::fs::read_to_string(&lock).is_ok_and(|s| s.contains("pid")) {
        assert!(t.elapsed() < Duration::from_secs(60), "the first run never locked");
        std::thread::sleep(Duration::from_millis(50));
    }
    let o = scmz(
        root.path(),
        &["train", si, "--name", "twice", "--epochs", "2", "--restart"],
    );
    // A terminal's run is stopped in its terminal (`scmz jobs` does not list it).
    refused(
        &o,
        1,
        &["a run named `twice` is in progress", "pid", "Ctrl-C in its terminal"],
    );
    first.kill().unwrap();
    let _ = first.wait();
}

/// Submits a detached CPU training of the bundled PBMCs as model `name`; returns the job id.
fn submit_training(root: &Path, name: &str, epochs: &str) -> String {
    let input = data("pbmc68k_counts.h5ad");
    let o = scmz(
        root,
        &[
            "train",
            input.to_str().unwrap(),
            "--name",
            name,
            "--epochs",
            epochs,
            "--device",
            "cpu",
            "--detach",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    stdout(&o).split_whitespace().nth(1).unwrap().to_string()
}

/// The job record as its folder holds it, read without running `scmz` (whose listing would start
/// queued jobs itself).
fn job_record(root: &Path, id: &str) -> serde_json::Value {
    let path = root.join("state/jobs").join(id).join("job.json");
    std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(serde_json::Value::Null)
}

fn wait_record(root: &Path, id: &str, what: &str, ok: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let t = Instant::now();
    loop {
        let j = job_record(root, id);
        if ok(&j) {
            return j;
        }
        assert!(t.elapsed() < Duration::from_secs(180), "job {id} never {what}: {j:#}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Job `killed` is recorded failed because its supervisor was killed, and job `next`, queued
/// behind it, finishes with no `scmz` command run; no engine of either is left.
fn queue_moved_on(root: &Path, killed: &str, next: &str) {
    let j = wait_record(root, killed, "ended", |j| j["state"] == "failed");
    assert!(
        j["reason"].as_str().unwrap().contains("its supervisor was killed"),
        "{j:#}"
    );
    wait_record(root, next, "finished on its own", |j| j["state"] == "done");
    assert_eq!(engines_of(&[killed.to_string(), next.to_string()]), 0);
}

/// Engines running for any of `ids` now, from /proc (the job id is in each engine's environment).
fn engines_of(ids: &[String]) -> usize {
    let engine = std::fs::canonicalize(env!("CARGO_BIN_EXE_scmz-engine")).unwrap();
    let mut n = 0;
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let p = e.path();
        if std::fs::read_link(p.join("exe")).ok().as_deref() != Some(engine.as_path()) {
            continue;
        }
        let env = std::fs::read(p.join("environ")).unwrap_or_default();
        if env
            .split(|&b| b == 0)
            .any(|v| ids.iter().any(|id| v == format!("SCMZ_JOB_ID={id}").as_bytes()))
        {
            n += 1;
        }
    }
    n
}

#[test]
fn killing_a_supervisor_stops_its_engine_records_why_and_the_queue_moves_on() {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("config.toml"), "[jobs]\nmax_cpu_jobs = 1\n").unwrap();
    let submit = |name: &str, epochs: &str| submit_training(root.path(), name, epochs);
    let (a, b) = (submit("orphan", "100"), submit("next", "3"));
    let ids = [a.clone(), b.clone()];
    // Watch /proc from now on: never two engines of these jobs at once.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (stop, ids) = (stop.clone(), ids.clone());
        std::thread::spawn(move || {
            let mut most = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                most = most.max(engines_of(&ids));
                std::thread::sleep(Duration::from_millis(5));
            }
            most
        })
    };
    let runs = root.path().join("zoo/.runs/orphan/events.jsonl");
    let job = wait_record(root.path(), &a, "checkpointed", |j| {
        j["state"] == "running"
            && j["pid"].is_u64()
            && std::fs::read_to_string(&runs).is_ok_and(|l| l.contains("\"event\":\"checkpoint\""))
    });
    assert_eq!(
        job_record(root.path(), &b)["state"],
        "queued",
        "the limit of one slot was not kept"
    );
    let (sup, engine) = (job["supervisor_pid"].as_u64().unwrap(), job["pid"].as_u64().unwrap());
    // SAFETY: kill(2) on the supervisor this test started.
    unsafe { libc::kill(sup as i32, libc::SIGKILL) };
    // Nothing here runs `scmz` until the queue has moved on by itself.
    let j = wait_record(root.path(), &a, "ended", |j| j["state"] == "failed");
    let reason = j["reason"].as_str().unwrap();
    assert!(reason.contains("its supervisor was killed"), "{j:#}");
    assert!(reason.contains("checkpoint of epoch"), "{j:#}");
    assert!(reason.contains(&format!("scmz jobs resume {a}")), "{j:#}");
    let t = Instant::now();
    while scmz::jobs::alive(engine as u32) && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!scmz::jobs::alive(engine as u32), "the engine outlived its supervisor");
    wait_record(root.path(), &b, "finished on its own", |j| j["state"] == "done");
    // Resumed, the killed run finishes once.
    let o = scmz(root.path(), &["jobs", "resume", &a]);
    assert!(o.status.success(), "{}", stderr(&o));
    let c = stdout(&o).split_whitespace().nth(1).unwrap().to_string();
    let ids3 = [a.clone(), b.clone(), c.clone()];
    let j = wait_record(root.path(), &c, "finished", |j| j["state"] == "done");
    assert_eq!(j["exit_code"], 0, "{j:#}");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(watcher.join().unwrap() <= 1, "two engines of one slot ran at once");
    assert_eq!(engines_of(&ids3), 0);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.path().join("zoo/orphan/manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["training"]["epochs_run"], 100, "{manifest:#}");
    let history = std::fs::read_to_string(root.path().join("zoo/orphan/history.jsonl")).unwrap();
    assert_eq!(history.matches("\"status\":\"done\"").count(), 1, "{history}");
    assert!(root.path().join("zoo/next/manifest.json").exists());
}

/// A supervisor killed while its engine is still starting (loading libtorch, before the engine
/// listens for signals): the engine's death signal waits for it, so the end is recorded and the
/// queue moves on with no `scmz` command run (the engine used to die without a word).
#[test]
fn a_supervisor_killed_as_its_engine_starts_still_moves_the_queue() {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("config.toml"), "[jobs]\nmax_cpu_jobs = 1\n").unwrap();
    let submit = |name: &str, epochs: &str| submit_training(root.path(), name, epochs);
    // Long enough that it cannot end before the kill, however loaded the machine.
    let (a, b) = (submit("early", "500"), submit("after", "3"));
    // The moment the engine's process has exec'd: it is loading libtorch, not yet in `main`.
    let t = Instant::now();
    while engines_of(std::slice::from_ref(&a)) == 0 {
        assert!(t.elapsed() < Duration::from_secs(60), "the engine never started");
        std::thread::sleep(Duration::from_millis(1));
    }
    let job = job_record(root.path(), &a);
    // SAFETY: kill(2) on the supervisor this test started.
    unsafe { libc::kill(job["supervisor_pid"].as_u64().unwrap() as i32, libc::SIGKILL) };
    queue_moved_on(root.path(), &a, &b);
}

/// A running job's supervisor and engine killed together (`kill -9` of its process group, an OOM
/// killer, a node's cgroup): nothing of the job is left to record its end or start the next, so
/// the queue's watcher, started when the second job was queued, does both with no `scmz` run.
#[test]
fn a_job_killed_whole_still_moves_the_queue() {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("config.toml"), "[jobs]\nmax_cpu_jobs = 1\n").unwrap();
    let submit = |name: &str, epochs: &str| submit_training(root.path(), name, epochs);
    let (a, b) = (submit("whole", "2000"), submit("waiting", "3"));
    let job = wait_record(root.path(), &a, "started its engine", |j| {
        j["state"] == "running" && j["pid"].is_u64()
    });
    assert_eq!(job_record(root.path(), &b)["state"], "queued");
    // The watcher killed too is replaced by the next scmz command that schedules.
    let watchers = || -> Vec<i32> {
        let dir = root.path().join("state").display().to_string();
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| {
                let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
                let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
                (cmd.contains(" jobs watch ") && cmd.contains(&dir)).then(|| e.file_name().to_str()?.parse().ok())?
            })
            .collect()
    };
    let first = watchers();
    assert_eq!(first.len(), 1, "one watcher while a job waits: {first:?}");
    // SAFETY: kill(2) on the watcher this test's submission started.
    unsafe { libc::kill(first[0], libc::SIGKILL) };
    let t = Instant::now();
    while watchers().contains(&first[0]) && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(scmz(root.path(), &["jobs"]).status.success());
    let t = Instant::now();
    while watchers().is_empty() && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(watchers().len(), 1, "scmz jobs started no watcher for the waiting job");
    // The supervisor leads a session of its own; its engine is in its process group.
    let sup = job["supervisor_pid"].as_u64().unwrap() as i32;
    // SAFETY: kill(2) on the process group of the supervisor this test started.
    assert_eq!(unsafe { libc::kill(-sup, libc::SIGKILL) }, 0);
    queue_moved_on(root.path(), &a, &b);
    let t = Instant::now();
    while !watchers().is_empty() && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(watchers().is_empty(), "a watcher stayed with nothing queued");
}

#[test]
fn a_damaged_job_record_or_lock_is_named_and_the_rest_work() {
    let root = tempfile::tempdir().unwrap();
    let input = data("pbmc68k_counts.h5ad");
    let si = input.to_str().unwrap();
    let o = scmz(
        root.path(),
        &["train", si, "--name", "fine", "--epochs", "1", "--detach"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let id = stdout(&o).split_whitespace().nth(1).unwrap().to_string();
    let jobs = root.path().join("state/jobs");
    wait_record(root.path(), &id, "finished", |j| j["state"] == "done");
    std::fs::create_dir_all(jobs.join("broken")).unwrap();
    std::fs::write(jobs.join("broken/job.json"), b"{\"id\": ").unwrap();
    let o = scmz(root.path(), &["jobs"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains(&id), "{}", stdout(&o));
    let err = stderr(&o);
    assert!(err.contains("broken/job.json") && err.contains("damaged"), "{err}");
    let o = scmz(root.path(), &["jobs", "--json"]);
    let listed: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed:#}");
    // An edited kind would run another engine command: the record is refused as damaged.
    let mut forged = job_record(root.path(), &id);
    forged["kind"] = "selftest".into();
    forged["id"] = "forged".into();
    std::fs::create_dir_all(jobs.join("forged")).unwrap();
    std::fs::write(jobs.join("forged/job.json"), serde_json::to_vec(&forged).unwrap()).unwrap();
    let o = scmz(root.path(), &["jobs"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("kind `selftest` is not one scmz runs"),
        "{}",
        stderr(&o)
    );
    refused(
        &scmz(root.path(), &["jobs", "resume", "forged"]),
        1,
        &["forged/job.json", "selftest"],
    );
    // A folder where the queue's lock file belongs: refused before anything is queued.
    std::fs::remove_file(jobs.join(".lock")).unwrap();
    std::fs::create_dir(jobs.join(".lock")).unwrap();
    let before = std::fs::read_dir(&jobs).unwrap().count();
    let o = scmz(
        root.path(),
        &["train", si, "--name", "more", "--epochs", "1", "--detach"],
    );
    refused(&o, 1, &[".lock", "is a folder"]);
    assert_eq!(std::fs::read_dir(&jobs).unwrap().count(), before, "a job was queued");
}

#[test]
fn a_file_without_a_matrix_is_shown_but_not_trained_on() {
    let root = tempfile::tempdir().unwrap();
    let path = root.path().join("no_x.h5ad");
    run_python(
        "import anndata, pandas as pd, sys\n\
         a = anndata.AnnData(obs=pd.DataFrame(index=[f'c{i}' for i in range(5)]),\n\
                             var=pd.DataFrame(index=[f'g{i}' for i in range(3)]))\n\
         a.obs['type'] = pd.Categorical(['a', 'b', 'a', 'b', 'a'])\n\
         a.write_h5ad(sys.argv[1])\n",
        &[&path],
    );
    let sp = path.to_str().unwrap();
    let o = scmz(root.path(), &["inspect", sp]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    for needle in ["5 cells x 3 genes", "type", "holds no matrix", "nothing to train on"] {
        assert!(out.contains(needle), "`{needle}` missing from: {out}");
    }
    let o = scmz(root.path(), &["train", sp, "--name", "none", "--epochs", "1"]);
    refused(&o, 1, &["no_x.h5ad", "holds no matrix", "nothing to train on"]);
    let o = scmz(
        root.path(),
        &["train", sp, "--name", "none", "--epochs", "1", "--force"],
    );
    refused(&o, 1, &["no_x.h5ad", "holds no matrix"]);
    assert!(!root.path().join("zoo/none").exists());
}

#[test]
fn a_detached_job_is_checked_before_it_is_queued() {
    let root = tempfile::tempdir().unwrap();
    let zoo = bundled_zoo(root.path());
    let input = data("pbmc68k_counts.h5ad");
    let si = input.to_str().unwrap();
    let cases: [(&[&str], i32, &[&str]); 5] = [
        (&[si, "--name", "dt", "--epochs", "abc"], 2, &["--epochs"]),
        (&[si, "--name", "../evil"], 1, &["not a valid model name"]),
        (&["missing.h5ad", "--name", "dt"], 1, &["missing.h5ad", "no such file"]),
        (&[si, "--name", "pbmc-tiny"], 1, &["already exists", "--overwrite"]),
        (
            &[si, "--name", "dt", "--batch-size", "1"],
            1,
            &["--batch-size 1", "at least 2"],
        ),
    ];
    for (args, code, needles) in cases {
        let mut all = vec!["train"];
        all.extend_from_slice(args);
        all.push("--detach");
        refused(&scmz(root.path(), &all), code, needles);
    }
    assert!(
        !root.path().join("state/jobs").exists()
            || files_below(&root.path().join("state/jobs"))
                .iter()
                .all(|f| f == ".lock")
    );
    // A manifest whose architecture its weights cannot hold is refused before anything is allocated.
    edit_manifest(&zoo, |m| {
        m["architecture"]["n_hidden"] = serde_json::json!(1_000_000_000_000u64)
    });
    let out = root.path().join("out.csv");
    refused(
        &project(root.path(), &input, &zoo, &out, &[]),
        1,
        &["manifest.json", "outside what scmz trains"],
    );
    edit_manifest(&zoo, |m| m["architecture"]["n_hidden"] = serde_json::json!(4096));
    refused(
        &project(root.path(), &input, &zoo, &out, &[]),
        1,
        &["weights.safetensors", "bytes of weights"],
    );
}

#[test]
fn a_foreground_engine_killed_by_a_signal_is_named() {
    let root = tempfile::tempdir().unwrap();
    let input = data("pbmc68k_counts.h5ad");
    let child = Command::new(env!("CARGO_BIN_EXE_scmz"))
        .args(["train", input.to_str().unwrap(), "--name", "fg", "--epochs", "400"])
        .env("SCMZ_ZOO", root.path().join("zoo"))
        .env("SCMZ_STATE_DIR", root.path().join("state"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let children = format!("/proc/{0}/task/{0}/children", child.id());
    let events = root.path().join("zoo/.runs/fg/events.jsonl");
    let t = Instant::now();
    while !events.exists() {
        assert!(t.elapsed() < Duration::from_secs(60), "training never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    let engine: i32 = std::fs::read_to_string(&children)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    // SAFETY: kill(2) on the engine this test's scmz started.
    unsafe { libc::kill(engine, libc::SIGKILL) };
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("scmz-engine was killed by signal 9"),
        "{}",
        stderr(&o)
    );
}

/// A model is named by its folder: a renamed folder (or a manifest naming another model) shows
/// and projects under the folder's name, never the name written inside.
#[test]
fn a_model_is_named_by_its_folder() {
    let root = tempfile::tempdir().unwrap();
    let zoo = bundled_zoo(root.path());
    std::fs::rename(zoo.join("pbmc-tiny"), zoo.join("renamed")).unwrap();
    let o = scmz(root.path(), &["model", "show", "renamed", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let shown: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(shown["name"], "renamed", "{shown:#}");
    let o = scmz(root.path(), &["models"]);
    assert!(
        stdout(&o).contains("renamed") && !stdout(&o).contains("pbmc-tiny"),
        "{}",
        stdout(&o)
    );
}

/// One byte of the real pbmc68k file changed so that Debian's libhdf5 1.10 segfaults opening it
/// (found by the fuzz pass): a folder scan lists the other files and names this one, instead of
/// the whole `scmz datasets` (or the TUI's catalog) ending with it.
#[test]
fn a_file_that_crashes_libhdf5_is_one_failed_row_of_a_scan() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = std::fs::read(data("pbmc68k_counts.h5ad")).unwrap();
    std::fs::write(dir.path().join("a_good.h5ad"), &bytes).unwrap();
    bytes[2791] = 0x66;
    let crash = dir.path().join("b_crash.h5ad");
    std::fs::write(&crash, &bytes).unwrap();
    std::fs::write(
        dir.path().join("c_good.h5ad"),
        std::fs::read(data("pbmc68k_counts.h5ad")).unwrap(),
    )
    .unwrap();
    let root = tempfile::tempdir().unwrap();
    // Alone, it ends the reading process with one line naming it.
    refused(
        &scmz(root.path(), &["inspect", crash.to_str().unwrap()]),
        1,
        &["b_crash.h5ad", "the HDF5 library crashed"],
    );
    // The second scan reaches the same files by another spelling of the folder: cached rows
    // and their messages name them as this scan did.
    let spelled = [dir.path().display().to_string(), format!("{}/.", dir.path().display())];
    for (pass, folder) in ["first", "cached"].into_iter().zip(&spelled) {
        let o = scmz(root.path(), &["datasets", folder, "--json"]);
        // JSON carries each file's error in its row.
        assert_eq!(o.status.code(), Some(0), "{pass}: {}", stderr(&o));
        let rows: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
        let names: Vec<&str> = rows
            .iter()
            .map(|r| r["path"].as_str().unwrap().rsplit('/').next().unwrap())
            .collect();
        assert_eq!(names, ["a_good.h5ad", "b_crash.h5ad", "c_good.h5ad"], "{pass}");
        assert_eq!(rows[0]["n_cells"], 700, "{pass}");
        assert_eq!(rows[2]["n_cells"], 700, "{pass}");
        let why = rows[1]["error"].as_str().unwrap();
        assert!(why.contains("the HDF5 library crashed"), "{pass}: {why}");
        assert!(why.contains(&format!("{folder}/b_crash.h5ad")), "{pass}: {why}");
        if pass == "cached" {
            assert!(rows.iter().all(|r| r["cached"] == true), "{rows:#?}");
        }
    }
}

/// Ctrl-C (SIGINT) or SIGTERM while `merge` writes its output: the temporary file goes with
/// the process and the output is not put in place (nothing half-written is left beside it).
#[test]
fn an_interrupted_merge_leaves_nothing() {
    let inputs = [
        "celltypist_sample_counts.h5ad",
        "pbmc68k_counts.h5ad",
        "mouse_10k_subset.h5ad",
    ]
    .map(data);
    for sig in [libc::SIGINT, libc::SIGTERM] {
        let root = tempfile::tempdir().unwrap();
        let outdir = root.path().join("out");
        std::fs::create_dir(&outdir).unwrap();
        let out = outdir.join("merged.h5ad");
        let mut child = Command::new(env!("CARGO_BIN_EXE_scmz"))
            .arg("merge")
            .args(&inputs)
            .arg("-o")
            .arg(&out)
            .env("SCMZ_CACHE_DIR", root.path().join("cache"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Signalled once its temporary file exists: mid-write.
        let t = Instant::now();
        let writing = loop {
            if std::fs::read_dir(&outdir).unwrap().next().is_some() {
                break true;
            }
            if child.try_wait().unwrap().is_some() || t.elapsed() > Duration::from_secs(60) {
                break false;
            }
            std::thread::sleep(Duration::from_micros(200));
        };
        assert!(writing, "merge ended before it began writing");
        // SAFETY: kill(2) on the child this test started.
        unsafe { libc::kill(child.id() as i32, sig) };
        let o = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(128 + sig), "{err}");
        assert!(err.contains("stopped by SIG"), "{err}");
        assert_eq!(files_below(&outdir), Vec::<String>::new(), "{err}");
    }
}

/// A manifest naming a choice scmz does not have (`"norm": "lyer"`) is refused naming the value
/// and the valid ones, not read as the default.
#[test]
fn a_manifest_with_an_unknown_choice_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let zoo = bundled_zoo(root.path());
    edit_manifest(&zoo, |m| m["architecture"]["norm"] = "lyer".into());
    refused(
        &scmz(root.path(), &["model", "show", "pbmc-tiny"]),
        1,
        &["manifest.json", "lyer", "batch", "layer"],
    );
}

// ---- Second attacker trial of session 8 -------------------------------------------------------

/// A link planted in the zoo's run folders (a lock or a run folder pointing elsewhere) is
/// refused, and the file it points at is untouched.
#[test]
fn links_planted_among_the_runs_are_not_written_through() {
    let root = tempfile::tempdir().unwrap();
    let victim = root.path().join("victim");
    std::fs::create_dir_all(victim.join("rd")).unwrap();
    std::fs::write(victim.join("precious"), "1\n2\n3\n").unwrap();
    std::fs::write(victim.join("rd/events.jsonl"), "keep").unwrap();
    let runs = root.path().join("zoo/.runs");
    std::fs::create_dir_all(&runs).unwrap();
    std::os::unix::fs::symlink(victim.join("precious"), runs.join("a.lock")).unwrap();
    std::os::unix::fs::symlink(victim.join("rd"), runs.join("b")).unwrap();
    let input = data("pbmc68k_counts.h5ad");
    for name in ["a", "b"] {
        for detach in [false, true] {
            let mut args = vec!["train", input.to_str().unwrap(), "--name", name, "--epochs", "1"];
            if detach {
                args.push("--detach");
            }
            let o = scmz(root.path(), &args);
            refused(&o, 1, &["symbolic link", "remove it"]);
        }
    }
    assert_eq!(std::fs::read_to_string(victim.join("precious")).unwrap(), "1\n2\n3\n");
    assert_eq!(std::fs::read_to_string(victim.join("rd/events.jsonl")).unwrap(), "keep");
    assert_eq!(std::fs::read_dir(victim.join("rd")).unwrap().count(), 1);
}

/// An edited model whose reference labels do not match its reference latents is refused in
/// words (it was an index-out-of-bounds panic).
#[test]
fn a_reference_whose_labels_do_not_fit_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let zoo = bundled_zoo(root.path());
    edit_manifest(&zoo, |m| {
        let labels = m["reference"]["labels"]
            .as_array_mut()
            .expect("the fixture keeps labels");
        let n = labels.len();
        labels.truncate(n - 5);
    });
    let out = root.path().join("p.csv");
    let o = project(root.path(), &data("pbmc68k_counts.h5ad"), &zoo, &out, &[]);
    refused(&o, 1, &["pbmc-tiny", "labels", "damaged"]);
    assert!(!out.exists());
}

/// Settings of projection and compare out of range fail at parse time: `--min-overlap nan`
/// turned the overlap guard off, `--overlaps 101` reported 101 %.
#[test]
fn projection_and_compare_settings_out_of_range_fail_at_parse_time() {
    let root = tempfile::tempdir().unwrap();
    let zoo = bundled_zoo(root.path());
    let out = root.path().join("p.csv");
    let input = data("pbmc68k_counts.h5ad");
    for v in ["nan", "2", "-0.5", "inf"] {
        let o = project(root.path(), &input, &zoo, &out, &["--min-overlap", v]);
        refused(&o, 2, &["--min-overlap", &format!("`{v}`")]);
    }
    for v in ["101", "0", "abc"] {
        let o = scmz(
            root.path(),
            &[
                "compare",
                input.to_str().unwrap(),
                "--model",
                "pbmc-tiny",
                "--overlaps",
                v,
            ],
        );
        refused(&o, 2, &["--overlaps", "1 to 100"]);
    }
    // No seed compares nothing (it printed a verdict on no rows and kept it); a negative share
    // is a value, not an option.
    for (flag, v, says) in [
        ("--seeds", "0", "1 to 100"),
        ("--seeds", "100000000", "1 to 100"),
        ("--overlaps", "-5", "1 to 100"),
        ("--holdout", "0", "above 0"),
        ("--holdout", "1", "below 1"),
        ("--epochs", "0", "at least 1"),
    ] {
        let i = input.to_str().unwrap();
        let o = scmz(root.path(), &["compare", i, "--model", "pbmc-tiny", flag, v]);
        refused(&o, 2, &[flag, says]);
    }
    assert!(!out.exists());
    assert!(!zoo.join("pbmc-tiny/comparisons").exists());
}

/// A new output inside the zoo or a model's folder is refused like an existing one.
#[test]
fn outputs_are_never_written_into_the_zoo() {
    let root = tempfile::tempdir().unwrap();
    let zoo = bundled_zoo(root.path());
    let before = files_below(&zoo);
    let input = data("pbmc68k_counts.h5ad");
    for out in [
        zoo.join("pbmc-tiny/x.h5ad"),
        zoo.join("pbmc-tiny/comparisons/x.csv"),
        zoo.join("evil/x.h5ad"),
        zoo.join("x.parquet"),
    ] {
        let o = project(root.path(), &input, &zoo, &out, &[]);
        refused(&o, 1, &["inside the input"]);
    }
    assert_eq!(files_below(&zoo), before);
}

/// Labels printed by `project` come from the model's files: a category holding terminal
/// escapes is shown escaped.
#[test]
fn transferred_labels_cannot_drive_the_terminal() {
    let root = tempfile::tempdir().unwrap();
    let zoo = bundled_zoo(root.path());
    edit_manifest(&zoo, |m| {
        for l in m["reference"]["labels"].as_array_mut().unwrap() {
            *l = "X\u{1b}]0;PWNED\u{7}\u{1b}[2J\u{202e}evil".into();
        }
    });
    let out = root.path().join("p.csv");
    let o = project(root.path(), &data("pbmc68k_counts.h5ad"), &zoo, &out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("labels"), "{text}");
    assert!(
        !text.contains('\u{1b}') && !text.contains('\u{7}') && !text.contains('\u{202e}'),
        "{text:?}"
    );
}

/// Files scmz reads besides datasets do not hang it either when they are FIFOs: a `--genes`
/// list, the configuration, a job record (named as damaged; the other jobs are listed).
#[test]
fn a_fifo_in_place_of_a_gene_list_config_or_job_record_does_not_hang() {
    let root = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let genes = root.path().join("genes.txt");
    mkfifo(&genes);
    let input = data("pbmc68k_counts.h5ad");
    let o = scmz(
        root.path(),
        &[
            "train",
            input.to_str().unwrap(),
            "--name",
            "g",
            "--epochs",
            "1",
            "--genes",
            genes.to_str().unwrap(),
        ],
    );
    refused(&o, 1, &["genes.txt", "FIFO"]);
    mkfifo(&root.path().join("config.toml"));
    refused(&scmz(root.path(), &["jobs"]), 1, &["config.toml", "FIFO"]);
    std::fs::remove_file(root.path().join("config.toml")).unwrap();
    let job = root.path().join("state/jobs/20260101-000000-1");
    std::fs::create_dir_all(&job).unwrap();
    mkfifo(&job.join("job.json"));
    let o = scmz(root.path(), &["jobs"]);
    assert!(
        stderr(&o).contains("job.json") && stderr(&o).contains("FIFO"),
        "{}",
        stderr(&o)
    );
    assert!(t.elapsed() < Duration::from_secs(30), "took {:?}", t.elapsed());
}

/// A job record whose event log was edited to name a FIFO or `/dev/zero` is listed without
/// waiting on it or reading without end.
#[test]
fn a_job_whose_event_log_is_a_fifo_or_device_is_listed() {
    let root = tempfile::tempdir().unwrap();
    let input = data("pbmc68k_counts.h5ad");
    let o = scmz(
        root.path(),
        &[
            "train",
            input.to_str().unwrap(),
            "--name",
            "e",
            "--epochs",
            "1",
            "--detach",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let id = stdout(&o).split_whitespace().nth(1).unwrap().to_string();
    let done = |j: &serde_json::Value| j["state"] == "done" || j["state"] == "failed";
    wait_record(root.path(), &id, "ended", done);
    let fifo = root.path().join("events.fifo");
    mkfifo(&fifo);
    let record = root.path().join("state/jobs").join(&id).join("job.json");
    for target in [fifo.as_path(), Path::new("/dev/zero")] {
        let mut j = job_record(root.path(), &id);
        j["events"] = target.to_str().unwrap().into();
        std::fs::write(&record, serde_json::to_vec_pretty(&j).unwrap()).unwrap();
        let t = Instant::now();
        let o = scmz(root.path(), &["jobs"]);
        assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
        assert!(stdout(&o).contains(&id), "{}\n{}", stdout(&o), stderr(&o));
        assert!(t.elapsed() < Duration::from_secs(20), "took {:?}", t.elapsed());
    }
}

/// `compare` keeps its copies of the user's cells in a private temporary folder that is gone
/// when it ends, also when it fails late (here: its results cannot be kept with the model, whose
/// `comparisons` is a file). A repeated overlap is one overlap.
#[test]
fn compare_leaves_no_copies_of_the_cells_behind() {
    let root = tempfile::tempdir().unwrap();
    let zoo = bundled_zoo(root.path());
    std::fs::write(zoo.join("pbmc-tiny/comparisons"), b"not a folder").unwrap();
    let tmp = root.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let input = data("pbmc68k_counts.h5ad");
    let o = Command::new(env!("CARGO_BIN_EXE_scmz"))
        .args(["compare", input.to_str().unwrap(), "--model", "pbmc-tiny", "--zoo"])
        .arg(&zoo)
        .args(["--epochs", "1", "--seeds", "1", "--overlaps", "100,100"])
        .env("TMPDIR", &tmp)
        .env("SCMZ_STATE_DIR", root.path().join("state"))
        .env("SCMZ_CACHE_DIR", root.path().join("cache"))
        .output()
        .unwrap();
    refused(&o, 1, &["comparisons", "cannot create"]);
    assert_eq!(
        stdout(&o).matches("100 % of the model's genes").count(),
        1,
        "{}",
        stdout(&o)
    );
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0, "{:?}", files_below(&tmp));
}

/// A bad slot limit in the environment refuses the submission itself: nothing is queued (a job
/// used to be queued, then run, while the command said "error").
#[test]
fn a_bad_slot_limit_queues_nothing() {
    let root = tempfile::tempdir().unwrap();
    let input = data("pbmc68k_counts.h5ad");
    for (var, bad, says) in [
        ("SCMZ_MAX_CPU_JOBS", "0", "not a count of 1 or more"),
        ("SCMZ_MAX_CPU_JOBS", "abc", "not a count of 1 or more"),
        ("SCMZ_MAX_CPU_JOBS", "99999999999999999999", "too large a count"),
        // A CPU job, but the queue could not start GPU jobs behind it either.
        ("SCMZ_MAX_GPU_JOBS", "x", "not a count of 1 or more"),
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_scmz"))
            .args(["train", input.to_str().unwrap(), "--name", "limited", "--epochs", "2"])
            .args(["--device", "cpu", "--detach"])
            .env("SCMZ_ZOO", root.path().join("zoo"))
            .env("SCMZ_STATE_DIR", root.path().join("state"))
            .env("SCMZ_CONFIG", root.path().join("config.toml"))
            .env(var, bad)
            .output()
            .unwrap();
        refused(&o, 1, &[var, says]);
        let jobs = files_below(&root.path().join("state"));
        assert!(!jobs.iter().any(|f| f.ends_with("job.json")), "{bad}: queued {jobs:?}");
    }
    std::thread::sleep(Duration::from_secs(2));
    assert!(!root.path().join("zoo/limited").exists());
}

/// An output whose folder does not exist is refused; no folder is made for it (a typo in the
/// path made folders wherever it pointed).
#[test]
fn an_output_folder_is_never_made() {
    let root = tempfile::tempdir().unwrap();
    let zoo = bundled_zoo(root.path());
    let input = data("pbmc68k_counts.h5ad");
    let out = root.path().join("typo/dir/out.h5ad");
    let o = project(root.path(), &input, &zoo, &out, &[]);
    refused(&o, 1, &["typo/dir", "does not exist"]);
    // Nor is HDF5 written under a name that says otherwise.
    let txt = root.path().join("out.txt");
    let o = project(root.path(), &input, &zoo, &txt, &[]);
    refused(&o, 1, &["out.txt", ".h5ad", ".parquet", ".csv"]);
    assert!(!txt.exists());
    let i = input.to_str().unwrap();
    let merged = root.path().join("typo/merged.h5ad");
    let o = scmz(root.path(), &["merge", i, i, "-o", merged.to_str().unwrap()]);
    refused(&o, 1, &["does not exist"]);
    assert!(!root.path().join("typo").exists());
}

/// Every setting of a sweep is checked before anything is queued (they were "submitted", then
/// each failed at once with the engine's raw error).
#[test]
fn a_sweep_with_a_bad_setting_queues_nothing() {
    let root = tempfile::tempdir().unwrap();
    let i = data("pbmc68k_counts.h5ad");
    let i = i.to_str().unwrap();
    for (sweep, says) in [
        ("bogus=1", "unexpected argument '--bogus'"),
        ("lr=1e-3,5", "must be at most 1"),
        ("n_latent=0", "at least 1"),
    ] {
        let o = scmz(
            root.path(),
            &["train", i, "--name", "sw", "--epochs", "2", "--sweep", sweep],
        );
        refused(&o, 1, &["--sweep", sweep, says]);
        let left = files_below(&root.path().join("state"));
        assert!(
            !left.iter().any(|f| f.ends_with("job.json")),
            "{sweep}: queued {left:?}"
        );
    }
}

/// `--check-only` never becomes a job that runs in full; a job resumed from a record edited to
/// settings the engine refuses is refused before it is queued again.
#[test]
fn check_only_is_not_a_job_and_resume_checks_first() {
    let root = tempfile::tempdir().unwrap();
    let input = data("pbmc68k_counts.h5ad");
    let si = input.to_str().unwrap();
    let o = scmz(
        root.path(),
        &["train", si, "--name", "co", "--epochs", "2", "--check-only", "--detach"],
    );
    refused(&o, 1, &["--check-only", "--detach"]);
    assert!(!files_below(root.path()).iter().any(|f| f.ends_with("job.json")));
    let o = scmz(root.path(), &["train", si, "--name", "ed", "--epochs", "2", "--detach"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let id = stdout(&o).split_whitespace().nth(1).unwrap().to_string();
    let mut j = wait_record(root.path(), &id, "done", |j| j["state"] == "done");
    j["state"] = "failed".into();
    j["spec"]["n_latent"] = 0.into();
    let path = root.path().join("state/jobs").join(&id).join("job.json");
    std::fs::write(&path, serde_json::to_vec(&j).unwrap()).unwrap();
    let o = scmz(root.path(), &["jobs", "resume", &id]);
    refused(&o, 2, &["n-latent", "at least 1"]);
    let records = files_below(&root.path().join("state/jobs"));
    assert_eq!(
        records.iter().filter(|f| f.ends_with("job.json")).count(),
        1,
        "{records:?}"
    );
}

/// A reader that goes away (`scmz train 2>&1 | head -1`) does not stop the work: the engine
/// trains on and saves the model, and `project` still writes its output. A full disk behind
/// `> FILE` is one line of error, not a panic.
#[test]
fn a_closed_pipe_or_a_full_stdout_loses_no_work_and_panics_nothing() {
    use std::io::BufRead as _;
    use std::process::Stdio;
    let root = tempfile::tempdir().unwrap();
    let input = data("pbmc68k_counts.h5ad");
    // `scmz ARGS` with this test's zoo, state, cache and config.
    let command = |args: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_scmz"));
        c.args(args)
            .env("SCMZ_ZOO", root.path().join("zoo"))
            .env("SCMZ_STATE_DIR", root.path().join("state"))
            .env("SCMZ_CACHE_DIR", root.path().join("cache"))
            .env("SCMZ_CONFIG", root.path().join("config.toml"))
            .env_remove("SCMZ_MAX_CPU_JOBS");
        c
    };
    let mut child = command(&["train", input.to_str().unwrap(), "--name", "piped", "--epochs", "12"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.stderr.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    // The reader is dropped here: every later line meets a closed pipe.
    assert!(!first.is_empty());
    let status = child.wait().unwrap();
    assert!(status.success(), "{status} after a closed stderr (first line: {first})");
    let manifest = root.path().join("zoo/piped/manifest.json");
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    assert_eq!(m["training"]["epochs_run"], 12, "{m}");

    let out = root.path().join("out.h5ad");
    let mut child = command(&[
        "project",
        input.to_str().unwrap(),
        "--model",
        "piped",
        "-o",
        out.to_str().unwrap(),
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    drop(child.stdout.take());
    let status = child.wait().unwrap();
    assert!(status.success(), "{status} after a closed stdout");
    assert!(scmz::data::Dataset::open(&out).unwrap().n_cells() > 0);

    let full = || std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
    let out2 = root.path().join("out2.h5ad");
    let o2 = out2.to_str().unwrap();
    for args in [
        &["models"][..],
        &["model", "show", "piped"],
        &["completions", "bash"],
        &["project", input.to_str().unwrap(), "--model", "piped", "-o", o2],
    ] {
        let o = command(args).stdout(full()).output().unwrap();
        let line = refused(&o, 1, &["on standard output", "no space left on device"]);
        assert_eq!(stderr(&o).lines().count(), 1, "{args:?}: {line}");
    }
    // What a command did is not lost with its standard output: a detached job's id goes to
    // standard error, and the job runs; its log into a full disk is an error too.
    let o = command(&[
        "train",
        input.to_str().unwrap(),
        "--name",
        "queued",
        "--epochs",
        "2",
        "--detach",
    ])
    .stdout(full())
    .output()
    .unwrap();
    refused(
        &o,
        1,
        &["cannot print on standard output", "what the command did: job "],
    );
    let id = stderr(&o);
    let id = id
        .split("what the command did: job ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    let t = Instant::now();
    loop {
        let o = scmz(root.path(), &["jobs", "--json"]);
        let jobs: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let state = jobs.as_array().unwrap().iter().find(|j| j["id"] == id).unwrap()["state"].clone();
        if state == "done" {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(120), "{state}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(root.path().join("zoo/queued/manifest.json").exists());
    let logs = command(&["jobs", "logs", id]).stdout(full()).output().unwrap();
    refused(&logs, 1, &["no space left on device"]);
}
