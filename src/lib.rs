//! # scmz: the single-cell model zoo
//!
//! One package: this torch-free library, the `scmz` front end and the `scmz-engine` worker. Each
//! module's header says the rest; each imports only those above it here.
//!
//! - [`files`]: atomic writes (`AtomicFile`), outputs that are never inputs, regular-file opens,
//!   results on standard output (`report_line`).
//! - [`spec`]: what the front end asks of the engine, as types: `TrainSpec`, `ProjectSpec`,
//!   `CompareSpec` and their choices (clap and serde), and `EngineRequest`, which a job's record
//!   holds and whose flags start the engine.
//! - [`dirs`]: the user folders (cache, zoo, jobs), each overridable by environment.
//! - [`data`]: datasets (AnnData `.h5ad` in its three layouts, 10x HDF5, 10x Matrix Market) read as
//!   streams of validated CSR chunks; the `.h5ad` writer; the dataset catalog.
//! - [`genes`]: identifier tables, gene matching and overlap reports, merging, gene selection.
//! - [`tables`], [`config`], [`events`]: report tables, `config.toml`, the run event log.
//! - [`stats`]: a seedable generator, k-means and the adjusted Rand index.
//! - [`human`]: numbers and durations for people.
//! - [`jobs`]: the job registry and queue, the supervisor, the local and Slurm backends.
//! - [`zoo`]: model folders, manifests, checksums, installation.
//! - [`scvi_tools`]: scvi-tools models into the zoo (`scmz import`): `torch.save` files read by a
//!   pickle reader that runs nothing, weights renamed and checked against the architecture; and
//!   out of it (`scmz export`): a torch zip with a hand-written pickle that SCVI/SCANVI.load read.
//!
//! Binaries:
//! - `scmz` (`src/main.rs`, `src/cli/`, `src/tui/`): the command line and the terminal UI, over
//!   the library. It never loads libtorch (`tests/layers.rs` checks that it is not linked).
//! - `scmz-engine` (`src/engine/`): the only code that names `tch` (`tests/layers.rs`), by stage:
//!   `model/` (the VAE, its layers, the minibatch it reads, weights on disk), `kernels/` (sparse
//!   products, the fused likelihood, exp/ln/lgamma, one AVX2 dispatch), `train/` (set-up, the
//!   minibatch feed and loader, epochs, Adam, checkpoints, the saved model), `apply/` (encoding,
//!   projection, fine-tuning, compare). `train` returns an `Outcome`; only the engine's `main` turns
//!   outcomes and errors into exit statuses. Its tests run in process; the CLI's tests start it.
//!
//! Errors of the data layer are [`data::DataError`] (file, element, problem, what to do); both
//! binaries print an error as one line and exit non-zero.

pub mod config;
pub mod data;
pub mod dirs;
pub mod events;
pub mod files;
pub mod genes;
pub mod human;
pub mod jobs;
pub mod scvi_tools;
pub mod spec;
pub mod stats;
pub mod tables;
pub mod zoo;
