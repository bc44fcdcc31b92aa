//! Streaming minibatches: a background thread reads row chunks in shuffled order, shuffles cells
//! within a buffer of several chunks, and hands batches over a bounded channel, so reading runs
//! ahead of training and memory stays bounded however many cells the file has.

use std::sync::mpsc::{sync_channel, Receiver};

use scmz::data::{CsrChunk, Dataset};

/// SplitMix64: small, seedable, good enough for shuffling and splits.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = (self.next_u64() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
    }
}

/// Whether cell `i` belongs to the validation split (10 % of cells, fixed by the seed).
pub fn is_validation(seed: u64, i: usize) -> bool {
    Rng::new(seed.wrapping_mul(31).wrapping_add(i as u64))
        .next_u64()
        .is_multiple_of(10)
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Validation,
}

/// Cells of one minibatch: counts and each cell's row in the dataset.
#[derive(Clone)]
pub struct Batch {
    pub x: CsrChunk,
    pub rows: Vec<usize>,
}

pub struct LoaderConfig {
    /// The dataset the caller opened, shared by its readers (each opening its own copy
    /// would hold the per-cell metadata, 1,000,000 cell names and more, once per reader).
    pub dataset: std::sync::Arc<Dataset>,
    pub batch_size: usize,
    pub chunk_rows: usize,
    /// Chunks whose cells are shuffled together.
    pub buffer_chunks: usize,
    pub seed: u64,
    pub split: Split,
    /// Shuffle chunk order and cells (training); off for evaluation.
    pub shuffle: bool,
}

/// Lowers the calling (reader) thread's scheduling priority, so that on a machine whose cores
/// are all busy with training steps the reader runs in their gaps instead of preempting a compute
/// thread (which stalls the others at their next barrier).
fn yield_to_training() {
    // SAFETY: plain syscalls on the calling thread.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 10);
    }
}

/// Validation cells kept in memory after the first pass when their nonzeros fit this budget
/// (about 256 MB): later passes then read nothing (the validation tenth of a file is spread over
/// all of it). Above it, every pass streams from disk as training does.
pub const CACHE_NNZ: usize = 32 << 20;

/// The validation minibatches of the first pass, kept while they fit `CACHE_NNZ`.
#[derive(Default)]
pub enum Cache {
    #[default]
    Empty,
    Collecting(Vec<Batch>, usize),
    TooBig,
    Ready(std::sync::Arc<Vec<Batch>>),
}

impl Cache {
    /// Records a batch of the first pass.
    pub fn offer(&mut self, b: &Batch) {
        match self {
            Cache::Empty => *self = Cache::Collecting(vec![b.clone()], b.x.nnz()),
            Cache::Collecting(v, nnz) => {
                *nnz += b.x.nnz();
                if *nnz > CACHE_NNZ {
                    *self = Cache::TooBig;
                } else {
                    v.push(b.clone());
                }
            }
            Cache::TooBig | Cache::Ready(_) => {}
        }
    }

    /// Called after a complete pass: what was collected becomes the cache.
    pub fn seal(&mut self) {
        if let Cache::Collecting(v, _) = std::mem::take(self) {
            *self = Cache::Ready(std::sync::Arc::new(v));
        } else if matches!(self, Cache::Empty) {
            *self = Cache::TooBig;
        }
    }
}

/// The cached batches again, each turned into `T` by `make` on a thread of its own.
pub fn replay<T: Send + 'static>(
    cached: std::sync::Arc<Vec<Batch>>,
    make: impl Fn(Batch) -> T + Send + 'static,
) -> Receiver<Result<T, String>> {
    let (tx, rx) = sync_channel(4);
    std::thread::spawn(move || {
        yield_to_training();
        for b in cached.iter() {
            if tx.send(Ok(make(b.clone()))).is_err() {
                return;
            }
        }
    });
    rx
}

/// Starts the reader thread for one pass over the data; each batch is turned into `T` by `make`
/// on that thread (tensor preparation overlaps training) and arrives in the returned channel.
pub fn batches<T: Send + 'static>(
    cfg: LoaderConfig,
    epoch: usize,
    make: impl Fn(Batch) -> T + Send + 'static,
) -> Receiver<Result<T, String>> {
    let (tx, rx) = sync_channel(4);
    std::thread::spawn(move || {
        yield_to_training();
        let ds = cfg.dataset.clone();
        let n = ds.n_cells();
        let mut rng = Rng::new(cfg.seed.wrapping_add(epoch as u64 * 1_000_003));
        let mut starts: Vec<usize> = (0..n).step_by(cfg.chunk_rows.max(1)).collect();
        if cfg.shuffle {
            rng.shuffle(&mut starts);
        }
        let keep = |i: usize| match cfg.split {
            Split::Validation => is_validation(cfg.seed, i),
            Split::Train => !is_validation(cfg.seed, i),
        };
        // The pool holds cells as (row in the dataset, chunk, row in the chunk); chunks stay in
        // `chunks` while a pooled cell refers to them, and a minibatch copies its cells' nonzeros
        // from there in one slice copy each.
        let mut pool: Vec<(usize, u32, u32)> = Vec::new();
        let mut chunks: Vec<Option<CsrChunk>> = Vec::new();
        let n_cols = ds.n_genes();
        let gather = |group: &[(usize, u32, u32)], chunks: &[Option<CsrChunk>]| {
            let nnz = group
                .iter()
                .map(|&(_, c, r)| {
                    let ch = chunks[c as usize].as_ref().expect("pooled chunk");
                    ch.indptr[r as usize + 1] - ch.indptr[r as usize]
                })
                .sum();
            let mut x = CsrChunk::empty(0, n_cols);
            x.indices.reserve(nnz);
            x.data.reserve(nnz);
            let mut rows = Vec::with_capacity(group.len());
            for &(row, c, r) in group {
                let (idx, val) = chunks[c as usize].as_ref().expect("pooled chunk").row(r as usize);
                x.indices.extend_from_slice(idx);
                x.data.extend_from_slice(val);
                x.indptr.push(x.data.len());
                rows.push(row);
            }
            Batch { x, rows }
        };
        let emit =
            |pool: &mut Vec<(usize, u32, u32)>, chunks: &mut Vec<Option<CsrChunk>>, all: bool, rng: &mut Rng| -> bool {
                if cfg.shuffle {
                    rng.shuffle(pool);
                }
                let mut rest = Vec::new();
                for group in pool.chunks(cfg.batch_size) {
                    // BatchNorm needs at least two cells; keep a short tail for the next group.
                    if group.len() < cfg.batch_size && (!all || group.len() < 2) {
                        if !all || !cfg.shuffle {
                            rest.extend_from_slice(group);
                        }
                        continue;
                    }
                    if tx.send(Ok(make(gather(group, chunks)))).is_err() {
                        return false;
                    }
                }
                // Drop the chunks no pooled cell needs any more.
                let mut keep = vec![false; chunks.len()];
                for &(_, c, _) in &rest {
                    keep[c as usize] = true;
                }
                for (c, k) in chunks.iter_mut().zip(keep) {
                    if !k {
                        *c = None;
                    }
                }
                *pool = rest;
                true
            };
        for (k, &s) in starts.iter().enumerate() {
            let chunk = match ds.read_rows(s, s + cfg.chunk_rows) {
                Ok(c) => c,
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                    return;
                }
            };
            let id = chunks.len() as u32;
            for r in 0..chunk.n_rows() {
                if keep(s + r) {
                    pool.push((s + r, id, r as u32));
                }
            }
            chunks.push(Some(chunk));
            if (k + 1) % cfg.buffer_chunks.max(1) == 0 && !emit(&mut pool, &mut chunks, false, &mut rng) {
                return;
            }
        }
        if !emit(&mut pool, &mut chunks, true, &mut rng) {
            return;
        }
        // Evaluation passes must see every cell, even a last single one.
        if !cfg.shuffle && !pool.is_empty() {
            let _ = tx.send(Ok(make(gather(&pool, &chunks))));
        }
    });
    rx
}
