//! `scmz models`, `scmz model show NAME`, and `scmz train`, which runs in `scmz-engine`.

use std::path::PathBuf;

use scmz::zoo::{default_zoo, Manifest, Zoo};

use super::table::Table;
use scmz::human::thousands;

fn zoo(dir: Option<PathBuf>) -> Zoo {
    Zoo::new(dir.unwrap_or_else(default_zoo))
}

pub fn list(dir: Option<PathBuf>, json: bool) -> anyhow::Result<()> {
    let zoo = zoo(dir);
    let all = zoo.list();
    if json {
        let ok: Vec<&Manifest> = all.iter().filter_map(|m| m.as_ref().ok()).collect();
        outln!("{}", serde_json::to_string_pretty(&ok)?);
    } else {
        let mut t = Table::new(&[
            "name",
            "created",
            "genes",
            "cells",
            "likelihood",
            "latent",
            "epochs",
            "val elbo",
            "labels",
        ])
        .right(&[2, 3, 5, 6, 7]);
        for m in all.iter().flatten() {
            t.row(vec![
                m.name.clone(),
                m.created.clone(),
                thousands(m.architecture.n_genes as u64),
                m.n_cells().map_or("-".into(), |n| thousands(n as u64)),
                m.architecture.likelihood.to_string(),
                m.architecture.n_latent.to_string(),
                match &m.imported {
                    Some(_) => "import".into(),
                    None => m.training.epochs_run.to_string(),
                },
                m.metrics.best_val_elbo.map(|v| format!("{v:.2}")).unwrap_or_default(),
                m.training.label_key.clone().unwrap_or_default(),
            ]);
        }
        if all.is_empty() {
            outln!(
                "no models in {} (train one with `scmz train DATA --name NAME`)",
                zoo.dir.display()
            );
        } else {
            out!("{}", t.render());
        }
    }
    let bad: Vec<String> = all
        .iter()
        .filter_map(|m| m.as_ref().err().map(|e| e.to_string()))
        .collect();
    for b in &bad {
        eprintln!("error: {}", scmz::files::printable(b));
    }
    anyhow::ensure!(
        bad.is_empty(),
        "{} model folder{} could not be read",
        bad.len(),
        if bad.len() == 1 { "" } else { "s" }
    );
    Ok(())
}

/// `scmz import DIR --name NAME`.
pub fn export(name: &str, out: &std::path::Path, zoo_dir: Option<PathBuf>, overwrite: bool) -> anyhow::Result<()> {
    let zoo = zoo(zoo_dir);
    let r = scmz::scvi_tools::export::export(&zoo, name, out, overwrite).map_err(anyhow::Error::msg)?;
    for n in &r.notes {
        eprintln!("note: {n}");
    }
    eprintln!(
        "wrote {} (scvi-tools {} {}): load it with scvi.model.{}.load(\"{}\", adata=...)",
        r.file.display(),
        scmz::scvi_tools::export::FORMAT_VERSION,
        r.class,
        r.class,
        out.display()
    );
    Ok(())
}

pub fn import(dir: &std::path::Path, name: &str, zoo_dir: Option<PathBuf>, overwrite: bool) -> anyhow::Result<()> {
    let zoo = zoo(zoo_dir);
    if !overwrite && zoo.model_dir(name).join("manifest.json").exists() {
        anyhow::bail!(
            "{}: a model `{name}` is already there; pick another --name or add --overwrite",
            zoo.dir.display()
        );
    }
    let r = scmz::scvi_tools::import::import(dir, name, &zoo).map_err(anyhow::Error::msg)?;
    for n in &r.notes {
        eprintln!("note: {n}");
    }
    let a = &r.manifest.architecture;
    eprintln!(
        "imported scvi-tools {} {} as `{name}` in {}: {} genes, {} x {} hidden, {} latent, {}{}{}{}",
        r.version,
        r.class,
        r.dir.display(),
        thousands(a.n_genes as u64),
        a.n_layers,
        a.n_hidden,
        a.n_latent,
        a.likelihood,
        a.layout.likelihood_notes(),
        if a.batch_categories.is_empty() {
            String::new()
        } else {
            format!(", {} batches", a.batch_categories.len())
        },
        if a.classifier_labels.is_empty() {
            String::new()
        } else {
            format!(", a classifier of {} labels", a.classifier_labels.len())
        },
    );
    Ok(())
}

pub fn show(dir: Option<PathBuf>, name: &str, json: bool) -> anyhow::Result<()> {
    let m = zoo(dir).load(name)?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&m)?);
        return Ok(());
    }
    let a = &m.architecture;
    let t = &m.training;
    let line = |k: &str, v: String| outln!("{k:<12} {}", scmz::files::printable(&v));
    line(
        "name",
        format!(
            "{} (version {}, created {}, scmz {})",
            m.name, m.version, m.created, m.scmz_version
        ),
    );
    line(
        "model",
        format!(
            "{} genes -> {} x {} hidden ({} norm, dropout {}) -> {} latent; likelihood {}{}{}{}",
            thousands(a.n_genes as u64),
            a.n_layers,
            a.n_hidden,
            a.norm,
            a.dropout,
            a.n_latent,
            a.likelihood,
            a.layout.likelihood_notes(),
            if a.batch_categories.is_empty() {
                String::new()
            } else {
                format!("; {} batches", a.batch_categories.len())
            },
            if a.masked_input { "; masked input" } else { "" }
        ),
    );
    if let Some(i) = &m.imported {
        line("imported", format!("from {}; trained there", i.describe()));
        if let Some(elbo) = i.history.get("elbo_train").filter(|v| v.len() > 1) {
            let shown = |v: Option<&Option<f64>>| match v {
                Some(Some(x)) => format!("{x:.2}"),
                _ => "not a number".into(),
            };
            let (first, last) = (shown(elbo.first()), shown(elbo.last()));
            let val = i
                .history
                .get("elbo_validation")
                .map(|v| format!(", validation {}", shown(v.last())))
                .unwrap_or_default();
            line(
                "history",
                format!(
                    "{} epochs there: ELBO (train) {first} to {last}{val}; kept: {}",
                    elbo.len(),
                    i.history.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            );
        }
    } else {
        line(
            "training",
            format!(
                "{} of {} epochs (best {}), batch {}, lr {}{}{}, {}, gene dropout {}, seed {}, {} on {}, {:.0} cells/s",
                t.epochs_run,
                t.max_epochs,
                t.best_epoch.map_or("-".into(), |e| (e + 1).to_string()),
                t.batch_size,
                t.lr,
                match t.lr_warmup_steps {
                    0 => " (no warm-up)".to_string(),
                    n => format!(" (warm-up {n} steps)"),
                },
                // 0: --norm-cells 0, or a model from before the setting.
                match (t.norm_cells, m.architecture.norm) {
                    (_, scmz::spec::Norm::Layer) => String::new(),
                    (0, _) => ", BatchNorm running averages (momentum 0.01)".to_string(),
                    (n, _) => format!(", BatchNorm statistics from {} cells each epoch", thousands(n as u64)),
                },
                match t.kl_warmup_epochs {
                    0 => "KL at full weight from the start".to_string(),
                    n => format!("KL warm-up {n} epochs"),
                },
                t.gene_dropout,
                t.seed,
                fmt_duration(t.seconds),
                t.device,
                t.cells_per_s
            ),
        );
    }
    for d in &m.datasets {
        line(
            "data",
            format!(
                "{} ({} cells, {}; sha256 {})",
                d.path,
                thousands(d.n_cells as u64),
                d.matrix,
                &d.sha256[..d.sha256.len().min(12)]
            ),
        );
    }
    line(
        "genes",
        format!(
            "{}{}{}; first: {}",
            m.genes.species.clone().unwrap_or("unknown species".into()),
            if m.genes.gene_ids.is_some() {
                ", Ensembl ids"
            } else {
                ""
            },
            if m.genes.symbols.is_some() { ", symbols" } else { "" },
            m.genes.names.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
        ),
    );
    if !a.classifier_labels.is_empty() {
        line(
            "classifier",
            format!(
                "{} labels: {}",
                a.classifier_labels.len(),
                scmz::data::dataset::preview(&a.classifier_labels, 6)
            ),
        );
    }
    if let (Some(tr), Some(v)) = (&m.metrics.final_train, &m.metrics.final_val) {
        line(
            "loss",
            format!(
                "final train {:.2} (recon {:.2}, KL {:.2}); validation ELBO {:.2} (recon {:.2}, KL {:.2})",
                tr.total, tr.recon, tr.kl, v.elbo, v.recon, v.kl
            ),
        );
    }
    if let Some(r) = &m.reference {
        line(
            "reference",
            format!(
                "{} cells{}",
                thousands(r.n_cells as u64),
                t.label_key
                    .as_ref()
                    .map(|k| format!(" labelled by `{k}`"))
                    .unwrap_or_default()
            ),
        );
    }
    Ok(())
}

fn fmt_duration(s: f64) -> String {
    if s < 120.0 {
        format!("{s:.1} s")
    } else {
        format!("{:.1} min", s / 60.0)
    }
}

/// Runs `scmz-engine <args>` with this terminal, returning its exit code.
pub fn run_engine(args: &[String]) -> anyhow::Result<i32> {
    run_engine_in(args, None)
}

/// `run_engine` in folder `cwd` (a job's relative paths mean files there).
pub fn run_engine_in(args: &[String], cwd: Option<&std::path::Path>) -> anyhow::Result<i32> {
    let engine = scmz::jobs::this_engine();
    let mut cmd = scmz::jobs::engine_command(&engine);
    cmd.args(args).env("SCMZ_FRONT_END", "scmz");
    if let Some(cwd) = cwd {
        cmd.current_dir(cwd);
    }
    // A foreground engine stops (with a checkpoint) when this process is killed.
    // SAFETY: the hook makes only async-signal-safe calls.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, scmz::jobs::die_with_parent());
    }
    let status = cmd.status().map_err(|e| {
        anyhow::anyhow!(
            "{}: cannot start the libtorch engine ({e}); reinstall scmz",
            engine.display()
        )
    })?;
    if let Some(sig) = std::os::unix::process::ExitStatusExt::signal(&status) {
        let why = match sig {
            libc::SIGKILL => " (SIGKILL: out of memory, or killed by someone)",
            libc::SIGTERM => " (SIGTERM)",
            libc::SIGSEGV => " (SIGSEGV: a crash; please report it)",
            _ => "",
        };
        eprintln!("error: scmz-engine was killed by signal {sig}{why}");
        return Ok(1);
    }
    Ok(status.code().unwrap_or(1))
}
