//! A run's checkpoints: written each epoch on a thread of their own (weights, optimiser moments
//! and best weights as files named by epoch, `checkpoint.json` last, pointing at them), and the
//! run's lock, so one engine trains a run and `--resume` starts from a complete epoch, with the
//! settings and the data (`DataPrint`) the run started with.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use tch::Tensor;

use scmz::events::{Event, EventLog};

use crate::model::stored::write_atomic;

#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct Checkpoint {
    pub epoch: usize,
    pub best_epoch: Option<usize>,
    pub best_val: Option<f64>,
    pub since_best: usize,
    pub step: u64,
    pub seconds: f64,
    /// The weights, moments and best weights are files named by epoch (`checkpoint-E`,
    /// `optimizer-E`, `best-B`), which this json, written last, points at: a checkpoint is one
    /// unit whenever the run is killed. False in checkpoints of older scmz (fixed names).
    #[serde(default)]
    epoch_files: bool,
    /// The run's id in its event log, kept by `--resume` (None in checkpoints of older scmz).
    #[serde(default)]
    pub run: Option<String>,
    /// The settings the run started with (`TrainSpec` as JSON), which `--resume` must be given
    /// again (None in checkpoints of older scmz: not checked).
    #[serde(default)]
    pub settings: Option<serde_json::Value>,
    /// What the run trains on, which `--resume` must give again (None in older checkpoints).
    #[serde(default)]
    pub data: Option<DataPrint>,
}

/// A dataset as a run sees it, after `--genes`: its cells and its genes, each in order (with
/// digests of their ids). The values are not read: a file of the same cells and genes passes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct DataPrint {
    pub cells: usize,
    pub genes: usize,
    pub cells_sha256: String,
    pub genes_sha256: String,
}

impl DataPrint {
    pub fn of(ds: &scmz::data::Dataset) -> DataPrint {
        let info = ds.info();
        DataPrint {
            cells: ds.n_cells(),
            genes: info.genes.index.len(),
            cells_sha256: digest(&info.cell_ids),
            genes_sha256: digest(&info.genes.index),
        }
    }
}

/// SHA-256 of ids, each ended by a NUL byte.
fn digest(ids: &[String]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for id in ids {
        h.update(id.as_bytes());
        h.update([0]);
    }
    format!("{:x}", h.finalize())
}

impl Default for Checkpoint {
    /// Before the first epoch.
    fn default() -> Self {
        Checkpoint {
            epoch: 0,
            best_epoch: None,
            best_val: None,
            since_best: 0,
            step: 0,
            seconds: 0.0,
            epoch_files: true,
            run: None,
            settings: None,
            data: None,
        }
    }
}

impl Checkpoint {
    pub fn weights_file(&self) -> String {
        if self.epoch_files {
            format!("checkpoint-{}.safetensors", self.epoch)
        } else {
            "checkpoint.safetensors".into()
        }
    }

    pub fn optimizer_file(&self) -> String {
        if self.epoch_files {
            format!("optimizer-{}.safetensors", self.epoch)
        } else {
            "optimizer.safetensors".into()
        }
    }

    /// The best weights so far, if any epoch was validated.
    pub fn best_file(&self) -> Option<String> {
        let b = self.best_epoch?;
        Some(if self.epoch_files {
            format!("best-{b}.safetensors")
        } else {
            "best.safetensors".into()
        })
    }
}

/// One epoch's checkpoint: copies of the weights and optimiser moments, and the run state.
pub(crate) struct Snapshot {
    pub weights: Vec<(String, Tensor)>,
    pub optimizer: Vec<(String, Tensor)>,
    /// Also the best weights so far.
    pub best: bool,
    pub state: Checkpoint,
}

/// Writes checkpoints on a thread of its own, in order, each file atomically and
/// `checkpoint.json` last, so a killed run always resumes from a complete epoch. At most one
/// snapshot waits while another is written (a whole-transcriptome model's checkpoint is tens of
/// MB, written while the next epoch trains).
pub(crate) struct CheckpointWriter {
    tx: Option<std::sync::mpsc::SyncSender<Snapshot>>,
    handle: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl CheckpointWriter {
    /// Writes into `run_dir`, and appends to the run's event log (`events.jsonl` there) that a
    /// checkpoint is on disk once it is: only then may a resume start after it.
    pub fn start(run_dir: PathBuf) -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Snapshot>(1);
        let handle = std::thread::spawn(move || -> anyhow::Result<()> {
            // Lines are appended whole (one write each), so this log and the training thread's
            // do not interleave within a line.
            let mut log = EventLog::append_to(&run_dir.join("events.jsonl"))?;
            for s in rx {
                let state = Checkpoint {
                    epoch_files: true,
                    ..s.state
                };
                let checkpoint = run_dir.join(state.weights_file());
                write_atomic(&s.weights, &checkpoint)?;
                if let (true, Some(name)) = (s.best, state.best_file()) {
                    // The same bytes: a second name for the checkpoint's file, written out where
                    // links are refused.
                    let best = run_dir.join(name);
                    let _ = std::fs::remove_file(&best);
                    if std::fs::hard_link(&checkpoint, &best).is_err() {
                        write_atomic(&s.weights, &best)?;
                    }
                }
                write_atomic(&s.optimizer, &run_dir.join(state.optimizer_file()))?;
                write_json_atomic(&run_dir.join("checkpoint.json"), &state)?;
                remove_other_checkpoints(&run_dir, &state);
                log.write(Event::Checkpoint { epoch: s.state.epoch })?;
            }
            Ok(())
        });
        CheckpointWriter {
            tx: Some(tx),
            handle: Some(handle),
        }
    }

    pub fn write(&mut self, s: Snapshot) -> anyhow::Result<()> {
        let sent = self.tx.as_ref().is_some_and(|tx| tx.send(s).is_ok());
        if !sent {
            // The thread stopped: its error says why.
            self.finish()?;
            bail!("the checkpoint writer stopped");
        }
        Ok(())
    }

    /// Waits until every checkpoint is on disk.
    pub fn finish(&mut self) -> anyhow::Result<()> {
        self.tx = None;
        match self.handle.take() {
            Some(h) => h
                .join()
                .map_err(|_| anyhow::anyhow!("the checkpoint writer panicked"))?
                .context("writing a checkpoint"),
            None => Ok(()),
        }
    }
}

/// Nothing is written through a link planted in the zoo (a shared filesystem, say): not the
/// run's lock, not its folder, not the folder of runs.
pub(crate) fn refuse_links(run_dir: &Path, name: &str) -> anyhow::Result<()> {
    let lock = lock_path(run_dir, name);
    let linked = |p: &Path| std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink());
    for p in [run_dir.parent(), Some(run_dir), Some(lock.as_path())]
        .into_iter()
        .flatten()
    {
        if linked(p) {
            bail!(
                "{}: is a symbolic link; scmz does not write through links in the zoo: remove it and run again",
                p.display()
            );
        }
    }
    Ok(())
}

/// Takes the run's lock (`.runs/NAME.lock`, beside its folder), or says who holds it: two
/// engines training one run would overwrite each other's checkpoints.
pub(crate) fn lock_run(run_dir: &Path, name: &str) -> anyhow::Result<std::fs::File> {
    use std::io::{Read, Seek, Write};
    use std::os::unix::fs::OpenOptionsExt;
    let path = lock_path(run_dir, name);
    refuse_links(run_dir, name)?;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| anyhow::anyhow!("{}: cannot create: {}", parent.display(), scmz::files::describe(&e)))?;
    }
    // A finished run removes its lock file while it holds it (`remove_lock`): a lock taken on
    // a file that is no longer the one at `path` is taken again on the new one.
    let mut f = loop {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .with_context(|| format!("{}: cannot open the run's lock", path.display()))?;
        match f.try_lock() {
            Ok(()) if !same_file(&f, &path) => continue,
            r => break (f, r),
        }
    };
    match f.1 {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = f.0.read_to_string(&mut holder);
            let holder = holder.trim();
            // "job ID, engine pid N" (a job), or "engine pid N" (a terminal's run).
            let stop = match holder.strip_prefix("job ").and_then(|h| h.split(',').next()) {
                Some(job) => format!("`scmz jobs cancel {}`", scmz::files::printable(job)),
                None => "Ctrl-C in its terminal, or `kill` its pid".to_string(),
            };
            bail!(
                "a run named `{name}` is in progress ({}); wait for it to end or stop it ({stop})",
                scmz::files::printable(holder)
            );
        }
        Err(std::fs::TryLockError::Error(e)) => {
            bail!("{}: cannot lock the run: {}", path.display(), scmz::files::describe(&e))
        }
    }
    let job = std::env::var("SCMZ_JOB_ID")
        .map(|j| format!("job {j}, "))
        .unwrap_or_default();
    let mut f = f.0;
    let _ = f.set_len(0);
    let _ = f.rewind();
    let _ = write!(f, "{job}engine pid {}", std::process::id());
    Ok(f)
}

/// The run's lock file, beside its folder: `.runs/NAME.lock`.
fn lock_path(run_dir: &Path, name: &str) -> PathBuf {
    run_dir.with_file_name(format!("{name}.lock"))
}

/// Whether the open file `f` is the file at `path` (not one removed from there).
fn same_file(f: &std::fs::File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (f.metadata(), std::fs::symlink_metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Removes the lock file of a run that has ended for good (its model saved), while the lock is
/// still held: one file per model name ever trained would otherwise build up in `.runs`.
pub(crate) fn remove_lock(run_dir: &Path, name: &str) {
    let _ = std::fs::remove_file(lock_path(run_dir, name));
}

fn write_json_atomic(path: &Path, value: &impl Serialize) -> anyhow::Result<()> {
    Ok(scmz::files::write_atomic(path, &serde_json::to_vec_pretty(value)?)?)
}

/// Removes the checkpoint files `state` does not point at (older epochs', and the fixed names of
/// an older scmz's checkpoint it resumed from).
fn remove_other_checkpoints(run_dir: &Path, state: &Checkpoint) {
    let keep = [
        Some(state.weights_file()),
        Some(state.optimizer_file()),
        state.best_file(),
    ];
    let Ok(entries) = std::fs::read_dir(run_dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let ours = ["checkpoint", "optimizer", "best"]
            .iter()
            .any(|p| name.starts_with(p) && name.ends_with(".safetensors"));
        if ours && !keep.iter().any(|k| k.as_deref() == Some(name.as_str())) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}
