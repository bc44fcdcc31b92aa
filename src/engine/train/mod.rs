//! Training: streamed minibatches, a seeded 90/10 train/validation split, validation ELBO every
//! epoch, early stopping, an atomic checkpoint every epoch (`--resume` continues from it), the
//! run's event log, and at the end a model folder installed into the zoo in one rename.
//!
//! A run is set up (`setup`: settings, data, covariates, model), then each epoch takes its
//! minibatches (`feed`, `loader`, `minibatch`), trains and validates (`epoch`, `adam`), and is
//! recorded and checkpointed here (`checkpoint`); `save` writes the model. `stop` answers
//! SIGTERM/SIGINT, `latent` draws the latent sample, `trace` records steps for replay, `bench`
//! times a step.

pub mod adam;
pub mod bench;
pub mod checkpoint;
pub mod covariates;
mod epoch;
pub mod feed;
mod latent;
pub mod loader;
pub mod minibatch;
mod save;
pub mod setup;
pub mod stop;
mod trace;

use std::time::Instant;

use scmz::events::Event;
use scmz::spec::TrainSpec;

use crate::model::stored::{load_stored, stored_variables};
use checkpoint::{CheckpointWriter, Snapshot};
use epoch::{Progress, Trained, Validated};
use feed::Feed;
use setup::Run;
use stop::{install_stop_handlers, TRAINING};

/// How a training run ended; only the binary's `main` turns it into an exit status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The model is in the zoo after the epochs asked for.
    Finished,
    /// The model is in the zoo: no better validation ELBO for `--patience` epochs.
    StoppedEarly,
    /// Settings, data and zoo checked (`--check-only`); nothing trained.
    Checked,
    /// Stopped by SIGTERM or SIGINT; the text says what was kept (a checkpoint or nothing).
    Cancelled(String),
}

pub fn train(args: TrainSpec) -> anyhow::Result<Outcome> {
    let Some((ds, zoo, dev)) = setup::checked(&args)? else {
        return Ok(Outcome::Checked);
    };
    let mut run = Run::start(args, ds, zoo, dev)?;
    let feed = Feed::new(&run);
    let mut checkpoints = CheckpointWriter::start(run.run_dir.clone());
    let mut progress = Progress::new();
    let started = Instant::now();
    let mut last = None;
    let mut next_train = None;
    install_stop_handlers();
    TRAINING.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut outcome = Outcome::Finished;
    for epoch in run.first_epoch..run.max_epochs {
        // libtorch's generator (dropout, the latent's noise) seeded for each epoch, as the
        // minibatch order is: a resumed run trains as the run would have gone on.
        tch::manual_seed((run.args.seed ^ (epoch as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03)) as i64);
        // Readers on threads run ahead: this epoch's training batches were started with the last
        // epoch; this epoch's validation batches and the next epoch's training batches start now,
        // while this epoch trains (each reader holds a bounded number of batches).
        let batches = next_train.take().unwrap_or_else(|| feed.train(epoch));
        let validation = feed.validation(epoch);
        if epoch + 1 < run.max_epochs && !feed.read_here {
            next_train = Some(feed.train(epoch + 1));
        }
        let Some(trained) = run.train_epoch(epoch, batches, &mut progress)? else {
            checkpoints.finish()?;
            return run.cancelled(epoch);
        };
        let validated = run.validate(epoch, validation)?;
        feed.validated();
        let per_epoch = started.elapsed().as_secs_f64() / (epoch + 1 - run.first_epoch) as f64;
        let best = run.record(epoch, &trained, &validated, started, per_epoch, &progress)?;
        // Copies now, files written by the checkpoint thread while the next epoch trains.
        checkpoints.write(Snapshot {
            weights: stored_variables(&run.vs),
            optimizer: run.opt.snapshot(),
            best,
            state: run.state.clone(),
        })?;
        last = Some((trained, validated, epoch + 1));
        if run.args.patience > 0 && run.state.since_best >= run.args.patience {
            say!(
                "\nearly stop: no better validation ELBO for {} epochs",
                run.args.patience
            );
            outcome = Outcome::StoppedEarly;
            break;
        }
    }
    if progress.tty {
        say!();
    }
    checkpoints.finish()?;
    let epochs_run = last.as_ref().map_or(run.first_epoch, |l| l.2);
    // The model keeps the best validation weights (in memory already when the last epoch was it).
    if let (Some(b), Some(file)) = (run.state.best_epoch, run.state.best_file()) {
        if b + 1 != epochs_run {
            load_stored(&run.vs, &run.run_dir.join(file))?;
        }
    }
    let seconds = run.seconds_before + started.elapsed().as_secs_f64();
    run.save(last.as_ref().map(|(t, v, n)| (t, v, *n)), epochs_run, seconds)?;
    Ok(outcome)
}

impl Run {
    /// The epoch in the event log and on the terminal, and in the run's state (whether it is the
    /// best so far, returned).
    fn record(
        &mut self,
        epoch: usize,
        trained: &Trained,
        validated: &Validated,
        started: Instant,
        per_epoch: f64,
        progress: &Progress,
    ) -> anyhow::Result<bool> {
        let (train, val) = (trained.terms, validated.terms);
        // Training time over every session of the run (kept by the checkpoint).
        self.state.seconds = self.seconds_before + started.elapsed().as_secs_f64();
        let eta = per_epoch * (self.max_epochs - epoch - 1) as f64;
        self.log.write(Event::Epoch {
            epoch,
            train,
            val,
            kl_weight: self.kl_weight(epoch),
            kl_per_dim: validated.kl_per_dim.clone(),
            cells_per_s: trained.cells_per_s,
            elapsed_s: self.state.seconds,
            eta_s: eta,
        })?;
        let validating = validated.n_cells > 0;
        let best = !validating || self.state.best_val.is_none_or(|b| val.elbo < b);
        if best {
            self.state.best_val = validating.then_some(val.elbo);
            self.state.best_epoch = Some(epoch);
            self.state.since_best = 0;
        } else {
            self.state.since_best += 1;
        }
        self.state.epoch = epoch;
        let classification = trained
            .classification
            .map_or(String::new(), |ce| format!("  classifier loss {ce:.3}"));
        let line = format!(
            "epoch {}/{}  train {:.2}  val elbo {:.2}{classification}  {:.0} cells/s  ETA {}",
            epoch + 1,
            self.max_epochs,
            train.total,
            val.elbo,
            trained.cells_per_s,
            scmz::human::format_duration(eta)
        );
        if progress.tty {
            say_inline!("\r{line}      ");
        } else {
            say!("{line}");
        }
        Ok(best)
    }

    /// A stop during `epoch`: the end recorded, the last checkpoint kept for `--resume`.
    fn cancelled(&mut self, epoch: usize) -> anyhow::Result<Outcome> {
        self.log.write(Event::End {
            status: "cancelled".into(),
            best_epoch: self.state.best_epoch,
            best_val_elbo: self.state.best_val,
            model: None,
        })?;
        let (kept, again) = if self.run_dir.join("checkpoint.json").exists() {
            (
                format!("the checkpoint of epoch {} is kept", self.state.epoch + 1),
                "; run again with --resume to continue",
            )
        } else {
            ("no epoch had finished, so there is no checkpoint".to_string(), "")
        };
        say!("\ncancelled during epoch {}: {kept}{again}", epoch + 1);
        Ok(Outcome::Cancelled(kept))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn spec(zoo: &std::path::Path, name: &str) -> TrainSpec {
        let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/pbmc68k_counts.h5ad");
        let mut s = TrainSpec::defaults(data, name.into());
        s.zoo = Some(zoo.to_path_buf());
        s.epochs = Some(2);
        s.n_hidden = 16;
        s.reference_cells = 50;
        s
    }

    /// The engine in process: a run checks, trains, records each epoch and installs its model;
    /// a stop before the first step keeps nothing and says so.
    #[test]
    fn a_run_trains_and_installs_its_model_in_process() {
        let _rng = crate::TORCH_RNG_TESTS.lock().unwrap_or_else(|e| e.into_inner());
        let zoo = tempfile::tempdir().unwrap();
        let mut check = spec(zoo.path(), "m");
        check.check_only = true;
        assert_eq!(train(check).unwrap(), Outcome::Checked);
        assert!(!zoo.path().join("m").exists() && !scmz::zoo::Zoo::new(zoo.path()).run_dir("m").exists());

        assert_eq!(train(spec(zoo.path(), "m")).unwrap(), Outcome::Finished);
        let m = scmz::zoo::load_dir(&zoo.path().join("m")).unwrap();
        assert_eq!((m.training.epochs_run, m.training.max_epochs), (2, 2));
        assert!(m.metrics.best_val_elbo.is_some_and(f64::is_finite));
        assert_eq!(m.reference.as_ref().map(|r| r.n_cells), Some(50));
        let history = scmz::events::read_log(&zoo.path().join("m/history.jsonl")).unwrap();
        let epochs = history
            .iter()
            .filter(|r| matches!(r.event, Event::Epoch { .. }))
            .count();
        assert_eq!(epochs, 2);
        // Its records name their run, so a later run with this name is told apart.
        assert!(matches!(&history[0].event, Event::Start { run: Some(r), .. } if !r.is_empty()));
        assert!(matches!(history.last().map(|r| &r.event), Some(Event::End { status, .. }) if status == "done"));
        assert!(
            !scmz::zoo::Zoo::new(zoo.path()).run_dir("m").exists(),
            "the run folder goes"
        );
        let again = train(spec(zoo.path(), "m")).unwrap_err().to_string();
        assert!(again.contains("already exists"), "{again}");

        stop::request_for_test(true);
        let cancelled = train(spec(zoo.path(), "c"));
        stop::request_for_test(false);
        assert_eq!(
            cancelled.unwrap(),
            Outcome::Cancelled("no epoch had finished, so there is no checkpoint".into())
        );
        assert!(!zoo.path().join("c").exists());
    }

    /// An edited checkpoint (a best epoch after its last, a file it names missing, negative
    /// time) is refused with --restart before anything is written, and the run's files stay.
    #[test]
    fn a_damaged_checkpoint_is_refused_before_anything_is_written() {
        let zoo = tempfile::tempdir().unwrap();
        let run_dir = scmz::zoo::Zoo::new(zoo.path()).run_dir("r");
        std::fs::create_dir_all(&run_dir).unwrap();
        std::fs::write(run_dir.join("checkpoint-1.safetensors"), b"weights").unwrap();
        let cases = [
            (
                r#""best_epoch": 7, "best_val": 1.0, "seconds": 3.0"#,
                "best epoch 8 comes after its last epoch 2",
            ),
            (
                r#""best_epoch": 1, "best_val": 1.0, "seconds": 3.0"#,
                "names best-1.safetensors",
            ),
            (r#""best_epoch": null, "best_val": null, "seconds": -5.0"#, "-5 seconds"),
        ];
        for (fields, says) in cases {
            let json = format!(r#"{{"epoch": 1, "since_best": 0, "step": 9, "epoch_files": true, {fields}}}"#);
            std::fs::write(run_dir.join("checkpoint.json"), &json).unwrap();
            let mut s = spec(zoo.path(), "r");
            s.resume = true;
            let e = train(s).unwrap_err().to_string();
            assert!(e.contains(says) && e.contains("--restart"), "{e}");
            let mut left: Vec<String> = std::fs::read_dir(&run_dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            left.sort();
            assert_eq!(left, ["checkpoint-1.safetensors", "checkpoint.json"]);
        }
        // --resume with --restart (a job record can hold both, past the command line's check)
        // would discard the run it is asked to continue: refused, the run left as it is.
        let mut s = spec(zoo.path(), "r");
        (s.resume, s.restart) = (true, true);
        let e = train(s).unwrap_err().to_string();
        assert!(e.contains("give one of them"), "{e}");
        assert!(run_dir.join("checkpoint-1.safetensors").exists());
    }
}
