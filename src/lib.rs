//! # scmz: the single-cell model zoo
//!
//! A library with two clients in the `scmz` binary, the command line (`src/cli/`) and the
//! terminal UI (`src/tui/`). The library knows nothing of terminals. Its modules read in pipeline order,
//! and each imports only those above it in this list:
//!
//! - [`files`]: writing without loss and reading only what should be read: `AtomicFile` (a
//!   temporary sibling, fsynced and renamed into place, removed on any failure), `check_output`
//!   (an output is never an input, by path, symlink or hard link; an existing one only with
//!   `--overwrite`), `open_regular` (no FIFOs or devices), `remove_pending` (the temporary files
//!   being written, removed by a process that ends at once on a signal), and `printable` for
//!   names from files.
//! - [`spec`]: the choices front end, engine and files share, as types (likelihood, norm,
//!   device, missing-gene policy): parsed by clap, stored by serde as one word each.
//! - [`dirs`]: the user directories scmz keeps files in (cache, zoo, jobs), each
//!   overridable by an environment variable (`SCMZ_CACHE_DIR`, ...).
//! - [`data`]: dataset formats and the stream of CSR row chunks every later stage reads through.
//!   `Dataset::open` detects the format from content (AnnData `.h5ad` in the modern, 0.7 and
//!   pre-0.7 layouts; 10x HDF5 v2/v3; 10x Matrix Market folders), reads metadata only (shape,
//!   gene table with the keys holding Ensembl ids and symbols, cell ids, obs columns with
//!   category counts, every matrix in the file), picks the matrix holding raw counts (or the
//!   one named by `--layer`), and tells counts from normalised values on a sample of rows.
//!   `Dataset::chunks(n)` then serves the matrix `n` cells at a time, validating each chunk, so
//!   memory is bounded by the chunk, not the file. Opening an HDF5 file refuses external links,
//!   external storage and virtual datasets anywhere in it before anything is read; `data::guard`
//!   turns a crash or an endless loop inside libhdf5 on a damaged file into one line naming it. `data::writer` writes modern `.h5ad`
//!   (streamed CSR `X`, dataframes, `obsm`, `uns`) through a temporary file renamed into place.
//!   `data::catalog` scans folders (opening files in a child process, `scmz datasets --worker`, so
//!   that a file crashing libhdf5 is one failed row) and caches one summary per dataset keyed by
//!   path, size and mtime. `data::gene_ids` classifies identifier lists (Ensembl / symbol / integer, species).
//! - [`genes`]: identifiers across datasets and models. `genes::reference` embeds the GENCODE v44
//!   id-to-symbol and Ensembl 105 human-to-mouse ortholog tables (parsed once, ~50 ms).
//!   `genes::matching` matches a reference gene list B (a dataset's or a model's: both are a
//!   `GeneList`) against a query A through the best shared key (Ensembl ids when both have them,
//!   symbols when both have them, GENCODE when one side has only ids and the other only symbols,
//!   orthologs across species, case-insensitive symbols only where the tables say nothing) and
//!   records the route of every match. `genes::overlap` turns a matching into the report users
//!   read before applying a model (coverage both ways, counts-weighted coverage streamed from A,
//!   missing genes by B's mean expression, annotation drift, id/species warnings);
//!   `genes::merge` stacks datasets over the union of their genes with a genes x datasets
//!   presence mask in `varm/scmz_presence`; `genes::selection` picks the genes a model trains on
//!   (highly variable genes by Seurat v3's method, or a list in a file), which `Dataset::keep_genes`
//!   then serves alone.
//! - [`tables`]: report tables as polars DataFrames written to CSV or Parquet.
//! - [`config`]: the user's `config.toml` (job backend and slot limits, Slurm defaults, TUI theme).
//! - [`events`]: the run event log (`events.jsonl`): its schema (including the latent sample the
//!   TUI plots), writer, reader, and `LogTail` for following a log another process appends to.
//! - [`jobs`]: the job registry (one folder per job, atomic `job.json`, flock for scheduling),
//!   slot limits, the supervisor every job runs under (tokio: runs `scmz-engine` in the folder
//!   the job was submitted from, forwards SIGTERM, records the end; an engine whose supervisor is
//!   killed stops with a checkpoint, records that itself and starts the next queued job; while
//!   a job waits, a detached watcher (`Registry::watch_queue`) schedules once a second; pids are
//!   checked against their recorded start time before any signal) and the `Backend` trait with its two implementations:
//!   `jobs::local` (a detached supervisor in its own session) and `jobs::slurm` (`sbatch`, state
//!   from `squeue`/`scontrol`/`sacct`, `scancel`). Clients see only `Job` records.
//! - [`zoo`]: model folders: `zoo::manifest` (schema, version, migration), checksums (a manifest
//!   may name only plain regular files inside its folder; symlinks are refused), listing, and
//!   installation of a fully written staging folder by one rename. Torch-free: the CLI and the TUI
//!   read models without libtorch; weights are loaded in the engine.
//!
//! Two binaries use the library. `scmz` (`src/main.rs`, `src/cli/`, `src/tui/`) is the front end.
//! Its TUI is `tui::app` (state; keys become requests), `tui::worker` (a thread that answers
//! requests through the library: catalog, zoo, jobs, log tails, overlap; the mapping prediction
//! runs `scmz-engine` as a child), `tui::ui` (drawing, one file per screen plus shared charts),
//! `tui::theme` (TOML themes) and `tui::keys` (bindings as data for help and footer), driven by a
//! tokio loop that redraws only on change. It never calls libtorch, so the linker leaves libtorch out and it starts in milliseconds (loading
//! libtorch costs about 200 ms and 120 MiB before any work). `scmz-engine` (`src/engine/`) is
//! the libtorch worker: `vae` (the model, its likelihoods and its optional scANVI-style classifier
//! head on the latent mean, masked genes excluded from the loss; on the CPU the encoder's first layer runs over the nonzeros, gene by gene, outside
//! autograd, with its weight gradient by hand; that weight is held inputs x outputs in memory),
//! `stored` (model files: PyTorch's names and layouts whatever the layout in memory), `fused`
//! (NB/Poisson log-likelihood with its lgamma terms and its gradient in one Rust pass per cell,
//! fed back to autograd through a zero-valued surrogate), `adam` (the optimiser: one fused pass
//! per parameter on the CPU; on a GPU parameters and moments live in one buffer each, so a step
//! is a dozen launches; moments checkpointed), `loader` (a pass over the data as an iterator
//! of shuffled minibatches, run on the training thread when every core computes on the CPU (file
//! reads a few chunks ahead on a thread from a network filesystem), else on reader threads over bounded channels running
//! an epoch ahead, for a GPU with several threads preparing minibatches in page-locked memory
//! and the loss summed on the device; a file whose nonzeros fit `data::cache_budget_nnz` is kept in memory after the
//! first pass (`ChunkCache`; the gene selection's passes hand it over through
//! `Dataset::hold_rows`) and shuffled whole, a larger one streams in windows of chunks; the
//! seeded train/validation split), `train` (the loop,
//! checkpoints, resume, event log, saving into the zoo), `project` (gene alignment through `genes`, mask or zero policy, kNN label transfer,
//! mapping-quality prediction from the reference counts stored with each model), `finetune`
//! (a new batch category trained alone on a query), `compare` (pretrained vs from scratch on
//! held-out cells, overlap sweep, verdict) and `tensor` (CSR chunks to tensors).
//! `scmz train`/`project` run it as a child process, which is also how jobs will outlive the
//! terminal. Keep every `tch` call inside `src/engine/`.
//!
//! Errors of the data layer are [`data::DataError`]: file, element inside it, problem and what to
//! do. The binary prints them as one line and exits non-zero.

pub mod config;
pub mod data;
pub mod dirs;
pub mod events;
pub mod files;
pub mod genes;
pub mod jobs;
pub mod spec;
pub mod tables;
pub mod zoo;
