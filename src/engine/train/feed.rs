//! Where a run's minibatches come from: a shuffled stream of training cells and an ordered one of
//! validation cells, read on the training thread or on reader threads, sharing the chunks read.

use std::sync::{Arc, Mutex};

use tch::Device;

use scmz::data::Dataset;

use crate::train::covariates::Covariates;
use crate::train::loader::{batches_on, replay, Batch, Cache, ChunkCache, LoaderConfig, Reader, Split};
use crate::train::minibatch::{prepare, prepare_for, Prepared};
use crate::train::setup::Run;

/// Prepared minibatches, from a reader on a thread or on the calling one.
pub(crate) type Batches = Box<dyn Iterator<Item = Result<Prepared, String>>>;

/// Cells per validation minibatch (at least; the training batch size when larger). BatchNorm
/// uses its running statistics in evaluation, so the result does not depend on it.
const VALIDATION_BATCH: usize = 512;

pub(crate) struct Feed {
    ds: Arc<Dataset>,
    cov: Arc<Covariates>,
    dev: Device,
    batch_size: usize,
    chunk_rows: usize,
    seed: u64,
    /// Shared by training and validation passes: whichever reads a chunk first keeps it.
    chunks: Arc<ChunkCache>,
    /// The validation minibatches, kept after the first epoch where they fit.
    validation: Arc<Mutex<Cache>>,
    /// Minibatches read and prepared on the training thread between steps.
    pub read_here: bool,
    read_ahead: bool,
    workers: usize,
}

impl Feed {
    /// On the CPU with every core in libtorch's pool, a reader on a thread of its own preempts
    /// compute threads mid-product, and each stall holds up the others at the product's end: at
    /// 20,000 genes a step took 30.5 ms with the reader running beside it, 26.4 ms without, for
    /// 1.7 ms of reading and preparing. There the training thread prepares minibatches between
    /// steps itself; its file reads too from a local disk, else (a network filesystem, or one it
    /// cannot tell) a few chunks ahead on a thread, to hide the latency (3-8 % slower from the
    /// page cache). Elsewhere (a GPU, or a core left free of libtorch) readers run ahead on
    /// threads; on a GPU several prepare minibatches (one keeps up with about 100,000 cells/s at
    /// 2,000 genes, short of what the device takes).
    pub fn new(run: &Run) -> Feed {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Feed {
            ds: run.ds.clone(),
            cov: run.cov.clone(),
            dev: run.dev,
            batch_size: run.args.batch_size,
            chunk_rows: run.args.chunk_rows,
            seed: run.args.seed,
            chunks: Arc::new(ChunkCache::new(run.ds.n_cells(), run.args.chunk_rows)),
            validation: Arc::new(Mutex::new(Cache::Empty)),
            read_here: run.dev == Device::Cpu && tch::get_num_threads() as usize >= cores,
            read_ahead: !matches!(scmz::dirs::filesystem_kind(&run.path), Some(("local", _))),
            workers: if run.dev == Device::Cpu {
                1
            } else {
                cores.saturating_sub(2).clamp(1, 8)
            },
        }
    }

    fn loader(&self, split: Split, shuffle: bool) -> LoaderConfig {
        LoaderConfig {
            dataset: self.ds.clone(),
            batch_size: self.batch_size,
            chunk_rows: self.chunk_rows,
            buffer_chunks: 8,
            seed: self.seed,
            split,
            shuffle,
            chunks: Some(self.chunks.clone()),
        }
    }

    /// Minibatches of `cfg` prepared by `make`, on this thread or on reader threads.
    fn stream(
        &self,
        cfg: LoaderConfig,
        epoch: usize,
        make: impl Fn(Batch) -> Prepared + Send + Sync + 'static,
    ) -> Batches {
        if !self.read_here {
            return batches_on(cfg, epoch, make, self.workers);
        }
        let r = Reader::new(cfg, epoch);
        let r = if self.read_ahead { r.prefetch() } else { r };
        Box::new(r.map(move |b| b.map(&make)))
    }

    /// The training cells of `epoch`, shuffled.
    pub fn train(&self, epoch: usize) -> Batches {
        let (c, n_genes, dev) = (self.cov.clone(), self.ds.n_genes(), self.dev);
        self.stream(self.loader(Split::Train, true), epoch, move |b| {
            prepare_for(&b, &c, n_genes, dev)
        })
    }

    /// The validation cells, in order: from memory once they have been read whole.
    pub fn validation(&self, epoch: usize) -> Batches {
        let (c, n_genes, dev) = (self.cov.clone(), self.ds.n_genes(), self.dev);
        if let Cache::Ready(cached) = &*self.validation.lock().expect("validation cache") {
            let cached = cached.clone();
            if self.read_here {
                return Box::new((0..cached.len()).map(move |i| Ok(prepare(&cached[i], &c, n_genes))));
            }
            return Box::new(replay(cached, move |b| prepare_for(&b, &c, n_genes, dev)).into_iter());
        }
        let cache = self.validation.clone();
        let make = move |b: Batch| {
            cache.lock().expect("validation cache").offer(&b);
            prepare_for(&b, &c, n_genes, dev)
        };
        // Evaluation needs no minibatch noise: larger batches, fewer and larger products.
        let mut cfg = self.loader(Split::Validation, false);
        cfg.batch_size = cfg.batch_size.max(VALIDATION_BATCH);
        self.stream(cfg, epoch, make)
    }

    /// After a validation pass: its minibatches are kept (where they fit), and once the chosen
    /// genes' chunks are all in memory, the whole matrix a gene selection held
    /// (`Dataset::hold_rows`) is let go.
    pub fn validated(&self) {
        self.validation.lock().expect("validation cache").seal();
        if self.chunks.ready() {
            self.ds.release_rows();
        }
    }
}
