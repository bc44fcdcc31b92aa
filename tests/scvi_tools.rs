//! `scmz import`: scvi-tools models (fixtures saved by scvi-tools 1.4.2 with
//! `scripts/make_scvi_fixtures.py`) give scvi-tools' own latents and labels in scmz, and hostile
//! or damaged model files are refused without anything of them being run.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output};

use common::{data, run_python, stderr};
use scmz::data::{ColumnKind, Dataset};

fn scmz(args: &[&str], zoo: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_scmz"))
        .args(args)
        .env("SCMZ_ZOO", zoo)
        .output()
        .unwrap()
}

fn obs(path: &Path, column: &str) -> Vec<String> {
    let ds = Dataset::open(path).unwrap();
    match &ds.info().obs_column(column).unwrap().kind {
        ColumnKind::Categorical { categories, codes, .. } => codes
            .iter()
            .map(|&c| categories.get(c as usize).cloned().unwrap_or_default())
            .collect(),
        k => panic!("{column}: {k:?}"),
    }
}

fn csv(path: &Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| l.split(',').map(String::from).collect())
        .collect()
}

/// Imports fixture `name` and projects all 700 cells (each under its own batch); returns the
/// latents and the output file.
fn imported_latents(name: &str, zoo: &Path, out: &Path) -> (Vec<Vec<f32>>, std::path::PathBuf) {
    let fixture = data(&format!("scvi-tools/{name}"));
    let o = scmz(&["import", fixture.to_str().unwrap(), "--name", name], zoo);
    assert!(o.status.success(), "{}", stderr(&o));
    projected_latents(name, zoo, out)
}

fn projected_latents(name: &str, zoo: &Path, out: &Path) -> (Vec<Vec<f32>>, std::path::PathBuf) {
    let query = data("pbmc68k_counts.h5ad");
    let file = out.join(format!("{name}.h5ad"));
    let o = scmz(
        &[
            "project",
            query.to_str().unwrap(),
            "--model",
            name,
            "-o",
            file.to_str().unwrap(),
        ],
        zoo,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let z = hdf5::File::open(&file)
        .unwrap()
        .dataset("obsm/X_scmz")
        .unwrap()
        .read_2d::<f32>()
        .unwrap();
    (z.rows().into_iter().map(|r| r.to_vec()).collect(), file)
}

/// How many of a projection's classifier labels agree with scvi-tools' `predict()` (a CSV of
/// label and probability per cell), and the largest difference of their probabilities.
fn agreement(projected: &Path, predicted: &Path) -> (usize, f64) {
    let want = csv(predicted);
    let label = obs(projected, "scmz_classifier");
    let prob = hdf5::File::open(projected)
        .unwrap()
        .dataset("obs/scmz_classifier_probability")
        .unwrap()
        .read_raw::<f64>()
        .unwrap();
    assert_eq!(want.len(), label.len() + 1);
    let agree = (0..label.len()).filter(|&i| label[i] == want[i + 1][0]).count();
    let worst = (0..label.len())
        .map(|i| (prob[i] - want[i + 1][1].parse::<f64>().unwrap()).abs())
        .fold(0f64, f64::max);
    (agree, worst)
}

fn max_difference(name: &str, latents: &[Vec<f32>]) -> f32 {
    latent_difference(&data(&format!("scvi-tools/{name}/latent.csv")), latents)
}

/// The largest difference between `latents` and those of a CSV (one cell per line).
fn latent_difference(file: &Path, latents: &[Vec<f32>]) -> f32 {
    let want = csv(file);
    assert_eq!(want.len(), latents.len());
    let mut worst = 0f32;
    for (w, z) in want.iter().zip(latents) {
        assert_eq!(w.len(), z.len());
        for (a, b) in w.iter().zip(z) {
            worst = worst.max((a.parse::<f32>().unwrap() - b).abs());
        }
    }
    worst
}

#[test]
fn imported_scvi_models_give_scvi_tools_latents() {
    let zoo = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    // Saved by scvi-tools 1.4.2 (1 and 2 layers, nb, zinb and poisson, the library size
    // observed or learned, a dispersion per gene or per gene and batch) and by 1.0.4.
    for name in [
        "scvi_nb_1layer",
        "scvi_zinb_2layers",
        "scvi_poisson_libsize",
        "scvi_nb_genebatch",
        "scvi10_nb_2layers",
        "scvi_legacy_nb",
    ] {
        let (latents, _) = imported_latents(name, zoo.path(), out.path());
        let d = max_difference(name, &latents);
        eprintln!("{name}: latents within {d} of scvi-tools'");
        assert!(d < 1e-4, "{name}: latents differ from scvi-tools' by up to {d}");
    }
    let m = scmz::zoo::Zoo::new(zoo.path()).load("scvi_nb_1layer").unwrap();
    let imported = m.imported.clone().unwrap();
    assert_eq!(
        (imported.tool.as_str(), imported.class.as_str()),
        ("scvi-tools", "SCVI")
    );
    assert_eq!(
        imported.sha256,
        scmz::zoo::sha256_file(&data("scvi-tools/scvi_nb_1layer/model.pt")).unwrap()
    );
    assert_eq!(m.training.batch_key.as_deref(), Some("phase"));
    assert_eq!(m.genes.names.len(), 765);
    // Its training history, read from the pandas frames of `history_` (the first value is the
    // one scvi-tools' own `torch.load` gives).
    let history = &m.imported.as_ref().unwrap().history;
    assert_eq!(history["elbo_train"].len(), 15);
    assert_eq!(history["train_loss"][0], Some(1068.620849609375));
    assert_eq!(m.training.epochs_run, 15);
    let tr = m.metrics.final_train.as_ref().unwrap();
    assert_eq!(Some(tr.elbo), *history["elbo_train"].last().unwrap());
    assert!(
        tr.elbo < history["elbo_train"][0].unwrap(),
        "the ELBO fell in training: {tr:?}"
    );
    // Saved with its AnnData: the training data is named.
    assert_eq!(m.datasets.len(), 1);
    assert_eq!(m.datasets[0].n_cells, 300);
    // Its provenance is shown, and it is listed as imported rather than as trained for 0 epochs.
    let o = scmz(&["model", "show", "scvi_nb_1layer"], zoo.path());
    let show = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        show.contains("imported") && show.contains("scvi-tools 1.4.2 SCVI"),
        "{show}"
    );
    let first = format!("{:.2}", history["elbo_train"][0].unwrap());
    assert!(show.contains("15 epochs there") && show.contains(&first), "{show}");
    let o = scmz(&["models"], zoo.path());
    let list = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        list.lines()
            .any(|l| l.starts_with("scvi_nb_1layer") && l.contains("import")),
        "{list}"
    );
}

/// The layout of scvi-tools before 0.15 (`model_params.pt`, `var_names.csv`, `attr.pkl`) is read
/// as scvi-tools' `convert_legacy_save` reads it; a folder missing one of its files is refused
/// naming it.
#[test]
fn the_layout_before_scvi_tools_0_15_is_read() {
    let zoo = tempfile::tempdir().unwrap();
    let fixture = data("scvi-tools/scvi_legacy_nb");
    let o = scmz(&["import", fixture.to_str().unwrap(), "--name", "old"], zoo.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let m = scmz::zoo::Zoo::new(zoo.path()).load("old").unwrap();
    let imported = m.imported.unwrap();
    assert_eq!(
        (imported.class.as_str(), imported.tool_version.as_str()),
        ("SCVI", "0.14.6")
    );
    assert!(imported.file.ends_with("model_params.pt"), "{}", imported.file);
    assert_eq!(m.architecture.batch_categories.len(), 3);
    assert_eq!(m.genes.names.len(), 765);
    // Without its attr.pkl.
    let partial = tempfile::tempdir().unwrap();
    for f in ["model_params.pt", "var_names.csv"] {
        std::fs::copy(fixture.join(f), partial.path().join(f)).unwrap();
    }
    let o = scmz(&["import", partial.path().to_str().unwrap(), "--name", "p"], zoo.path());
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.contains("attr.pkl") && e.trim().lines().count() == 1, "{e}");
    assert!(!zoo.path().join("p").exists());
    // With a gene list of another length, or a gene twice: its var_names.csv is named.
    std::fs::copy(fixture.join("attr.pkl"), partial.path().join("attr.pkl")).unwrap();
    let genes = std::fs::read_to_string(fixture.join("var_names.csv")).unwrap();
    let first: Vec<&str> = genes.lines().take(100).collect();
    std::fs::write(partial.path().join("var_names.csv"), first.join("\n")).unwrap();
    let e = stderr(&scmz(
        &["import", partial.path().to_str().unwrap(), "--name", "p"],
        zoo.path(),
    ));
    assert!(
        e.contains("var_names.csv") && e.contains("names 100 genes where"),
        "{e}"
    );
    let mut twice: Vec<&str> = genes.lines().collect();
    twice[1] = twice[0];
    std::fs::write(partial.path().join("var_names.csv"), twice.join("\n")).unwrap();
    let e = stderr(&scmz(
        &["import", partial.path().to_str().unwrap(), "--name", "p"],
        zoo.path(),
    ));
    assert!(e.contains("var_names.csv") && e.contains("more than once"), "{e}");
    assert!(!zoo.path().join("p").exists());
}

/// The frozen-model promise covers imports: the model imported once (in `tests/data/zoo`) keeps
/// giving scvi-tools' latents.
#[test]
fn the_frozen_imported_model_keeps_scvi_tools_latents() {
    let out = tempfile::tempdir().unwrap();
    let (latents, _) = projected_latents("scvi-nb-1layer", &data("zoo"), out.path());
    let d = max_difference("scvi_nb_1layer", &latents);
    assert!(d < 1e-4, "latents differ from scvi-tools' by up to {d}");
}

#[test]
fn imported_scanvi_labels_as_scvi_tools_predicts() {
    let zoo = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    // Saved by scvi-tools 1.4.2 and by 1.0.4.
    for name in ["scanvi_2layers", "scanvi10_2layers"] {
        let (latents, file) = imported_latents(name, zoo.path(), out.path());
        let d = max_difference(name, &latents);
        assert!(d < 1e-4, "{name}: latents differ from scvi-tools' by up to {d}");
        let (agree, worst) = agreement(&file, &data(&format!("scvi-tools/{name}/predict.csv")));
        assert_eq!(agree, 700, "{name}: labels that agree with scvi-tools' predict()");
        assert!(
            worst < 1e-4,
            "{name}: probabilities differ from scvi-tools' by up to {worst}"
        );
    }
}

#[test]
fn models_scmz_cannot_reproduce_are_refused_and_leave_nothing() {
    let zoo = tempfile::tempdir().unwrap();
    let fixture = data("scvi-tools/scvi_ln_refused");
    let o = scmz(&["import", fixture.to_str().unwrap(), "--name", "p"], zoo.path());
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(
        e.contains("model.pt") && e.contains("`latent_distribution` = \"ln\""),
        "{e}"
    );
    assert!(!zoo.path().join("p").exists());
    // A folder without a model file.
    let empty = tempfile::tempdir().unwrap();
    let o = scmz(&["import", empty.path().to_str().unwrap(), "--name", "p"], zoo.path());
    assert!(stderr(&o).contains("holds no `model.pt`"), "{}", stderr(&o));
    // A name that is not a plain folder name.
    let o = scmz(&["import", fixture.to_str().unwrap(), "--name", "../x"], zoo.path());
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let left: Vec<_> = std::fs::read_dir(zoo.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "the zoo holds {left:?}");
}

/// A torch-style zip of the given entries (stored, as torch writes them).
fn write_zip(path: &Path, entries: &[(&str, &[u8])]) {
    let f = std::fs::File::create(path).unwrap();
    let mut z = zip::ZipWriter::new(f);
    let opts = zip::write::FileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, bytes) in entries {
        z.start_file(*name, opts).unwrap();
        z.write_all(bytes).unwrap();
    }
    z.finish().unwrap();
}

fn import_file(file: &Path) -> String {
    let zoo = tempfile::tempdir().unwrap();
    let o = scmz(&["import", file.to_str().unwrap(), "--name", "bad"], zoo.path());
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(!zoo.path().join("bad").exists());
    let e = stderr(&o);
    assert_eq!(e.trim().lines().count(), 1, "one line: {e}");
    e
}

#[test]
fn a_pickle_that_would_run_a_command_is_refused_and_nothing_runs() {
    let dir = tempfile::tempdir().unwrap();
    let mark = dir.path().join("MARK");
    for module in ["os", "posix", "subprocess"] {
        let (func, arg) = if module == "subprocess" {
            ("call", "touch")
        } else {
            ("system", "touch")
        };
        // `__reduce__` of an object that calls module.func("touch MARK") when unpickled.
        let cmd = format!("{arg} {}", mark.display());
        let mut p = vec![0x80, 2];
        p.extend(format!("c{module}\n{func}\n").bytes());
        p.push(b'X');
        p.extend((cmd.len() as u32).to_le_bytes());
        p.extend(cmd.bytes());
        p.extend([0x85, b'R', b'.']);
        let file = dir.path().join(format!("{module}-model.pt"));
        write_zip(&file, &[("archive/data.pkl", &p)]);
        let e = import_file(&file);
        assert!(e.contains(&format!("`{module}.{func}`")), "{e}");
        assert!(!mark.exists(), "the pickle ran");
    }
    // builtins.eval, reached through STACK_GLOBAL (protocol 4).
    let mut p = vec![0x80, 4];
    for s in ["builtins", "eval"] {
        p.push(0x8c);
        p.push(s.len() as u8);
        p.extend(s.bytes());
    }
    p.extend([0x93, b'.']);
    let file = dir.path().join("eval-model.pt");
    write_zip(&file, &[("archive/data.pkl", &p)]);
    assert!(import_file(&file).contains("`builtins.eval`"));
}

#[test]
fn an_unknown_class_where_the_importer_looks_is_named() {
    let dir = tempfile::tempdir().unwrap();
    // {"attr_dict": mymod.Thing()}: built as an opaque value, never called.
    let mut p = vec![0x80, 2, b'}', b'X'];
    p.extend(9u32.to_le_bytes());
    p.extend(b"attr_dict");
    p.extend(b"cmymod\nThing\n)R");
    p.extend([b's', b'.']);
    let file = dir.path().join("model.pt");
    write_zip(&file, &[("archive/data.pkl", &p)]);
    let e = import_file(&file);
    assert!(e.contains("`mymod.Thing`") && e.contains("model.pt"), "{e}");
}

#[test]
fn damaged_archives_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    // An entry whose path leaves the archive.
    let file = dir.path().join("dots-model.pt");
    write_zip(&file, &[("../../etc/data.pkl", b"\x80\x02}.")]);
    assert!(import_file(&file).contains("leaves the archive"));
    // An entry that claims more bytes than the whole file: its sizes patched in both headers.
    let file = dir.path().join("big-model.pt");
    write_zip(&file, &[("archive/data.pkl", b"\x80\x02}.")]);
    let mut b = std::fs::read(&file).unwrap();
    let huge = 1u32 << 30;
    for (sig, at) in [([0x50u8, 0x4b, 3, 4], 22usize), ([0x50, 0x4b, 1, 2], 24)] {
        let i = b.windows(4).position(|w| w == sig).unwrap();
        b[i + at..i + at + 4].copy_from_slice(&huge.to_le_bytes());
    }
    std::fs::write(&file, &b).unwrap();
    let e = import_file(&file);
    assert!(e.contains("more than the whole file") || e.contains("damaged"), "{e}");
    // A tensor of 100 floats over a storage of 30.
    let mut p = vec![0x80, 2];
    p.extend(b"}X\x0b\x00\x00\x00model.pt_sd");
    p.extend(b"ctorch._utils\n_rebuild_tensor_v2\n(");
    p.extend(b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x01tQ");
    p.extend(b"K\x00K\x64\x85K\x01\x85\x89ccollections\nOrderedDict\n)RtR");
    p.extend(b"s.");
    let file = dir.path().join("short-model.pt");
    write_zip(&file, &[("archive/data.pkl", &p), ("archive/data/0", &[0u8; 120])]);
    let pickled = scmz::scvi_tools::torchzip::TorchFile::open(&file).unwrap();
    let Some(scmz::scvi_tools::pickle::Value::Tensor(t)) = pickled.root.get("model.pt_sd") else {
        panic!("no tensor");
    };
    let e = pickled.floats(&t).unwrap_err();
    assert!(e.contains("shorter than it"), "{e}");
}

/// `--finetune` on an imported model (its batch in every decoder layer, none in the encoder):
/// the new batch's inputs in each of those layers are trained, and the query's loss falls.
#[test]
fn an_imported_model_fine_tunes_a_new_batch() {
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("ft.h5ad");
    let query = data("pbmc68k_counts.h5ad");
    let zoo = data("zoo");
    let o = scmz(
        &[
            "project",
            query.to_str().unwrap(),
            "--model",
            "scvi-nb-1layer",
            "--zoo",
            zoo.to_str().unwrap(),
            "--finetune",
            "3",
            "-o",
            file.to_str().unwrap(),
        ],
        Path::new("/nonexistent"),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out_text = String::from_utf8_lossy(&o.stdout).to_string();
    let line = out_text
        .lines()
        .find(|l| l.starts_with("finetune"))
        .expect("a finetune line");
    let nums: Vec<f64> = line
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .filter_map(|w| w.parse().ok())
        .collect();
    let (before, after) = (nums[nums.len() - 2], nums[nums.len() - 1]);
    assert!(after < before - 1.0, "{line}");
    assert!(file.exists());
}

/// The peer's python when scvi-tools is installed there (`SCMZ_SCVI_PYTHON`, else the venv
/// `scripts/bench_train.py` describes).
fn scvi_python() -> Option<std::path::PathBuf> {
    let python = std::env::var_os("SCMZ_SCVI_PYTHON")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/scmz/bench-venv/bin/python")))?;
    let ok = Command::new(&python)
        .args(["-c", "import scvi"])
        .output()
        .is_ok_and(|o| o.status.success());
    ok.then_some(python)
}

fn train(zoo: &Path, name: &str, extra: &[&str]) {
    let query = data("pbmc68k_counts.h5ad");
    let mut args = vec![
        "train",
        query.to_str().unwrap(),
        "--name",
        name,
        "--epochs",
        "3",
        "--n-hidden",
        "32",
        "--n-latent",
        "8",
    ];
    args.extend(extra);
    let o = scmz(&args, zoo);
    assert!(o.status.success(), "{}", stderr(&o));
}

fn export(zoo: &Path, name: &str, out: &Path) -> Output {
    scmz(
        &["export", name, "--format", "scvi-tools", "-o", out.to_str().unwrap()],
        zoo,
    )
}

/// `scmz export`: scvi-tools loads the folder and gives the latents scmz gives, for scmz's own
/// models (with and without a batch, with a classifier) and for imported ones (2 layers, zinb,
/// SCANVI); models with a classifier load as SCANVI and predict scmz's labels.
#[test]
fn exported_models_load_in_scvi_tools_with_the_same_latents() {
    let zoo = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    train(zoo.path(), "own-batch", &["--batch-key", "phase"]);
    train(zoo.path(), "own-plain", &["--likelihood", "zinb"]);
    train(
        zoo.path(),
        "own-classifier",
        &["--batch-key", "phase", "--label-key", "bulk_labels", "--classifier"],
    );
    for (fixture, name) in [
        ("scvi_zinb_2layers", "zinb2"),
        ("scanvi_2layers", "scanvi-classifier"),
        ("scvi_poisson_libsize", "learned-library"),
        ("scvi_nb_genebatch", "gene-batch"),
    ] {
        let fixture = data(&format!("scvi-tools/{fixture}"));
        let o = scmz(&["import", fixture.to_str().unwrap(), "--name", name], zoo.path());
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let Some(python) = scvi_python() else {
        // The export itself still runs, and writes a torch zip this reader takes back.
        let dir = out.path().join("own-batch");
        assert!(export(zoo.path(), "own-batch", &dir).status.success());
        scmz::scvi_tools::torchzip::TorchFile::open(&dir.join("model.pt")).unwrap();
        eprintln!(
            "skipped the scvi-tools half: scvi-tools is not installed (python3 -m venv ~/.cache/scmz/bench-venv && ~/.cache/scmz/bench-venv/bin/pip install scvi-tools==1.4.2)"
        );
        return;
    };
    for name in [
        "own-batch",
        "own-plain",
        "own-classifier",
        "zinb2",
        "scanvi-classifier",
        "learned-library",
        "gene-batch",
    ] {
        let dir = out.path().join(name);
        let o = export(zoo.path(), name, &dir);
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        let csv_file = out.path().join(format!("{name}.csv"));
        let o = Command::new(&python)
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/scvi_latents.py"))
            .args([
                dir.as_os_str(),
                data("pbmc68k_counts.h5ad").as_os_str(),
                csv_file.as_os_str(),
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        // One projection: each cell under its own batch, as scvi-tools encodes it.
        let (ours, file) = projected_latents(name, zoo.path(), out.path());
        let predicted = out.path().join(format!("{name}.predict.csv"));
        if name.ends_with("classifier") {
            // Exported as SCANVI: its predict() gives scmz's classifier labels and probabilities.
            let (agree, worst) = agreement(&file, &predicted);
            eprintln!("{name}: {agree} of 700 labels agree, probabilities within {worst}");
            assert_eq!(agree, 700, "{name}: labels that agree with scvi-tools' predict()");
            assert!(worst < 1e-4, "{name}: probabilities differ by up to {worst}");
        } else {
            assert!(!predicted.exists(), "{name} was exported as SCANVI");
        }
        let worst = latent_difference(&csv_file, &ours);
        eprintln!("{name}: scvi-tools' latents differ from scmz's by up to {worst}");
        assert!(
            worst < 1e-4,
            "{name}: scvi-tools' latents differ from scmz's by up to {worst}"
        );
        // The library encoder, its prior and the per-batch dispersions went across too: the
        // exported model's ELBO terms at the mean are those of the model imported.
        let fixture = match name {
            "learned-library" => "scvi_poisson_libsize",
            "gene-batch" => "scvi_nb_genebatch",
            _ => continue,
        };
        let worst = relative_difference(
            &out.path().join(format!("{name}.at_mean.csv")),
            &data(&format!("scvi-tools/{fixture}/at_mean.csv")),
        );
        eprintln!("{name}: exported, ELBO terms within {worst:e} (relative)");
        assert!(worst < 1e-4, "{name}: ELBO terms differ by up to {worst:e} (relative)");
    }
}

/// The largest relative difference between the numbers of two CSVs with one header line.
fn relative_difference(a: &Path, b: &Path) -> f64 {
    let (a, b) = (csv(a), csv(b));
    assert_eq!(a.len(), b.len());
    let mut worst = 0f64;
    for (x, y) in a.iter().zip(&b).skip(1) {
        for (u, v) in x.iter().zip(y) {
            let (u, v): (f64, f64) = (u.parse().unwrap(), v.parse().unwrap());
            worst = worst.max((u - v).abs() / v.abs().max(1.0));
        }
    }
    worst
}

/// Models scvi-tools cannot hold the same are refused with the reason, and nothing is written.
#[test]
fn models_without_a_scvi_tools_equivalent_are_not_exported() {
    let zoo = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    train(zoo.path(), "deep", &["--n-layers", "2"]);
    train(zoo.path(), "masked", &["--gene-dropout", "0.2"]);
    for (name, why) in [("deep", "--n-layers 1"), ("masked", "presence mask")] {
        let dir = out.path().join(name);
        let o = export(zoo.path(), name, &dir);
        assert_eq!(o.status.code(), Some(1), "{name}");
        let e = stderr(&o);
        assert!(e.contains(why) && e.trim().lines().count() == 1, "{e}");
        assert!(!dir.exists(), "{name}: {} was made", dir.display());
    }
    // A file where the folder should be.
    let afile = out.path().join("afile");
    std::fs::write(&afile, b"x").unwrap();
    train(zoo.path(), "plain", &[]);
    let e = stderr(&export(zoo.path(), "plain", &afile));
    assert!(e.contains("is not a folder"), "{e}");
    // An existing model.pt is kept unless --overwrite.
    let dir = out.path().join("kept");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("model.pt"), b"mine").unwrap();
    let o = export(zoo.path(), "plain", &dir);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(std::fs::read(dir.join("model.pt")).unwrap(), b"mine");
    let o = scmz(
        &[
            "export",
            "plain",
            "--format",
            "scvi-tools",
            "-o",
            dir.to_str().unwrap(),
            "--overwrite",
        ],
        zoo.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_ne!(std::fs::read(dir.join("model.pt")).unwrap(), b"mine");
}

/// Without `--batch-category`, each query cell is encoded under its own batch (the query's
/// column of the model's batch key), as scvi-tools does: one projection gives scvi-tools'
/// latents. Batches the model lacks are refused by name; a query without the column is encoded
/// under the first batch, with a warning.
#[test]
fn each_cell_is_encoded_under_its_own_batch() {
    let out = tempfile::tempdir().unwrap();
    let zoo = data("zoo");
    let project = |query: &Path, file: &Path| {
        scmz(
            &[
                "project",
                query.to_str().unwrap(),
                "--model",
                "scvi-nb-1layer",
                "--zoo",
                zoo.to_str().unwrap(),
                "-o",
                file.to_str().unwrap(),
            ],
            Path::new("/nonexistent"),
        )
    };
    let file = out.path().join("all.h5ad");
    let o = project(&data("pbmc68k_counts.h5ad"), &file);
    assert!(o.status.success(), "{}", stderr(&o));
    let said = |o: &Output| format!("{}{}", String::from_utf8_lossy(&o.stdout), stderr(o));
    assert!(!said(&o).contains("phase"), "{}", said(&o));
    let z = hdf5::File::open(&file)
        .unwrap()
        .dataset("obsm/X_scmz")
        .unwrap()
        .read_2d::<f32>()
        .unwrap();
    let latents: Vec<Vec<f32>> = z.rows().into_iter().map(|r| r.to_vec()).collect();
    let d = max_difference("scvi_nb_1layer", &latents);
    assert!(d < 1e-4, "latents differ from scvi-tools' by up to {d}");
    // A query whose `phase` holds a batch the model lacks.
    let other = out.path().join("other.h5ad");
    run_python(
        "import sys, anndata as ad\n\
         a = ad.read_h5ad(sys.argv[1])\n\
         a.obs['phase'] = a.obs['phase'].cat.rename_categories({'S': 'M'})\n\
         a.write_h5ad(sys.argv[2])",
        &[&data("pbmc68k_counts.h5ad"), &other],
    );
    let refused = out.path().join("refused.h5ad");
    let o = project(&other, &refused);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(
        e.contains("obs `phase`") && e.contains("(M;") && e.contains("--batch-category"),
        "{e}"
    );
    assert!(!refused.exists());
    // A query without the column.
    let plain = out.path().join("plain.h5ad");
    run_python(
        "import sys, anndata as ad\n\
         a = ad.read_h5ad(sys.argv[1])\n\
         del a.obs['phase']\n\
         a.write_h5ad(sys.argv[2])",
        &[&data("pbmc68k_counts.h5ad"), &plain],
    );
    let o = project(&plain, &out.path().join("plain-out.h5ad"));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(said(&o).contains("no obs column `phase`"), "{}", said(&o));
}

/// Found by trying hostile files: values nested 100,000 deep (it overflowed the stack), a dict
/// of many keys (quadratic), entries that unpack to far more than the file (zip bomb), a FIFO
/// in place of model.pt (it waited forever): each is refused at once in one line.
#[test]
fn hostile_shapes_are_refused_quickly() {
    let dir = tempfile::tempdir().unwrap();
    let start = std::time::Instant::now();
    let mut p = vec![0x80, 2, b'N'];
    p.extend(std::iter::repeat_n(0x85u8, 100_000));
    p.push(b'.');
    let file = dir.path().join("deep-model.pt");
    write_zip(&file, &[("archive/data.pkl", &p)]);
    assert!(import_file(&file).contains("nests values more than"));
    // 200,000 distinct keys set one by one: linear, and then refused for what it lacks.
    let mut p = vec![0x80, 2, b'}'];
    for i in 0..200_000u32 {
        let k = format!("k{i}");
        p.push(0x8c);
        p.push(k.len() as u8);
        p.extend(k.bytes());
        p.extend([b'N', b's']);
    }
    p.push(b'.');
    let file = dir.path().join("wide-model.pt");
    write_zip(&file, &[("archive/data.pkl", &p)]);
    assert!(import_file(&file).contains("attr_dict"));
    // A stored 2 MB entry, then 60 deflated entries of 2 MB of zeros each: every entry smaller
    // than the file, 120 MB in all from about 2 MB.
    let file = dir.path().join("bomb-model.pt");
    {
        let mut z = zip::ZipWriter::new(std::fs::File::create(&file).unwrap());
        let stored = zip::write::FileOptions::default().compression_method(zip::CompressionMethod::Stored);
        let opts = zip::write::FileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        z.start_file("archive/data.pkl", stored).unwrap();
        z.write_all(b"\x80\x02}.").unwrap();
        let pad: Vec<u8> = (0..2u32 << 20)
            .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
            .collect();
        z.start_file("archive/pad", stored).unwrap();
        z.write_all(&pad).unwrap();
        let zeros = vec![0u8; 2 << 20];
        for i in 0..60 {
            z.start_file(format!("archive/data/{i}"), opts).unwrap();
            z.write_all(&zeros).unwrap();
        }
        z.finish().unwrap();
    }
    assert!(import_file(&file).contains("zip bomb"));
    let fifo = dir.path().join("fifo");
    std::fs::create_dir(&fifo).unwrap();
    let made = Command::new("mkfifo").arg(fifo.join("model.pt")).status().unwrap();
    assert!(made.success());
    assert!(import_file(&fifo).contains("not a regular file"));
    assert!(
        start.elapsed() < std::time::Duration::from_secs(60),
        "took {:?}",
        start.elapsed()
    );
}

/// A pickle that names one large string many times (each reference a copy) is refused before
/// it fills the memory; modules that run code when unpickled in Python are refused by name.
#[test]
fn memory_bombs_and_code_running_modules_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    // "A" * 1 MB, memoised, then a list of 2,000 references to it: 2 GB of copies.
    let mut p = vec![0x80, 2, b'X'];
    p.extend((1u32 << 20).to_le_bytes());
    p.extend(std::iter::repeat_n(b'A', 1 << 20));
    p.extend([b'q', 0, b']', b'(']);
    for _ in 0..2000 {
        p.extend([b'h', 0]);
    }
    p.extend([b'e', b'.']);
    let file = dir.path().join("bomb-model.pt");
    write_zip(&file, &[("archive/data.pkl", &p)]);
    let t0 = std::time::Instant::now();
    let e = import_file(&file);
    assert!(e.contains("memory bomb"), "{e}");
    assert!(t0.elapsed().as_secs() < 20, "took {:?}", t0.elapsed());
    // subprocess under its Python 2 name, and modules that run code given to them.
    for (module, name) in [
        ("commands", "Popen"),
        ("pdb", "run"),
        ("timeit", "timeit"),
        ("functools", "partial"),
    ] {
        let mut p = vec![0x80, 2, b'c'];
        p.extend(format!("{module}\n{name}\n").as_bytes());
        p.extend(b"X\x04\x00\x00\x00echo\x85R.");
        let file = dir.path().join(format!("{module}-model.pt"));
        write_zip(&file, &[("archive/data.pkl", &p)]);
        let e = import_file(&file);
        assert!(e.contains(&format!("`{module}.{name}`")), "{e}");
    }
}
