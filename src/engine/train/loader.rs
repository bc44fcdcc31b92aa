//! Streaming minibatches: a `Reader` reads row chunks in shuffled order and shuffles cells within
//! a buffer of several chunks, so memory stays bounded however many cells the file has. It runs
//! on the training thread between steps, or ahead of training on threads that hand prepared
//! batches over bounded channels (`batches_on`, `Reader::prefetch`); `feed` decides which.

use std::sync::mpsc::{sync_channel, Receiver};

use scmz::data::{CsrChunk, Dataset};

/// The file's chunks (rows as served, after gene selection), kept in memory once read when the
/// whole file's nonzeros fit the budget, so that later epochs read nothing: a file stored dense
/// and compressed (anndata 0.7 wrote these; the real Kang PBMCs are one) otherwise costs a full
/// decompression per epoch (Kang at 2,000 genes: 2,704 cells/s streamed, as slow as reading).
/// Whether the file fits is estimated from the first chunk read (chunks are read in shuffled
/// order, so it is a sample of the file); a file that does not fit is streamed as before and
/// memory stays flat in the number of cells. Budget: `data::cache_budget_nnz`.
pub struct ChunkCache {
    state: std::sync::Mutex<ChunkState>,
    n_cells: usize,
    chunk_rows: usize,
    budget_nnz: usize,
}

enum ChunkState {
    Collecting {
        chunks: std::collections::HashMap<usize, std::sync::Arc<CsrChunk>>,
        nnz: usize,
        rows: usize,
    },
    Off,
    Ready(std::sync::Arc<std::collections::HashMap<usize, std::sync::Arc<CsrChunk>>>),
}

impl ChunkCache {
    pub fn new(n_cells: usize, chunk_rows: usize) -> Self {
        Self::with_budget(n_cells, chunk_rows, scmz::data::cache_budget_nnz())
    }

    pub fn with_budget(n_cells: usize, chunk_rows: usize, budget_nnz: usize) -> Self {
        let state = if budget_nnz == 0 {
            ChunkState::Off
        } else {
            ChunkState::Collecting {
                chunks: Default::default(),
                nnz: 0,
                rows: 0,
            }
        };
        ChunkCache {
            state: std::sync::Mutex::new(state),
            n_cells,
            chunk_rows: chunk_rows.max(1),
            budget_nnz,
        }
    }

    /// Whether the whole file is (or, as far as its chunks read so far tell, will be) in memory.
    fn holds_all(&self) -> bool {
        !matches!(*self.state.lock().expect("chunk cache"), ChunkState::Off)
    }

    /// Whether every chunk is in memory.
    pub fn ready(&self) -> bool {
        matches!(*self.state.lock().expect("chunk cache"), ChunkState::Ready(_))
    }

    /// The chunk of rows `start..start + chunk_rows`: from memory, or read and offered.
    pub fn read(&self, ds: &Dataset, start: usize) -> Result<std::sync::Arc<CsrChunk>, String> {
        if let ChunkState::Ready(all) = &*self.state.lock().expect("chunk cache") {
            if let Some(c) = all.get(&start) {
                return Ok(c.clone());
            }
        }
        let chunk = std::sync::Arc::new(
            ds.read_rows(start, start + self.chunk_rows)
                .map_err(|e| e.to_string())?,
        );
        self.offer(start, &chunk);
        Ok(chunk)
    }

    fn offer(&self, start: usize, chunk: &std::sync::Arc<CsrChunk>) {
        let mut state = self.state.lock().expect("chunk cache");
        let ChunkState::Collecting { chunks, nnz, rows } = &mut *state else {
            return;
        };
        if chunks.contains_key(&start) {
            return;
        }
        *nnz += chunk.nnz() + chunk.n_rows();
        *rows += chunk.n_rows();
        // The whole file's nonzeros, projected from those read so far.
        let projected = (*nnz as f64 / (*rows).max(1) as f64 * self.n_cells as f64) as usize;
        if projected > self.budget_nnz || *nnz > self.budget_nnz {
            *state = ChunkState::Off;
            return;
        }
        chunks.insert(start, chunk.clone());
        if chunks.len() == self.n_cells.div_ceil(self.chunk_rows) {
            let all = std::mem::take(chunks);
            *state = ChunkState::Ready(std::sync::Arc::new(all));
        }
    }
}

pub use scmz::stats::Rng;

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
    /// Chunks kept in memory across passes (see `ChunkCache`); None: every pass reads the file.
    pub chunks: Option<std::sync::Arc<ChunkCache>>,
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

/// `batches` with `make` run on `workers` threads (a GPU's minibatches are prepared faster than
/// one thread can): the reader deals batch i to worker i mod workers and the caller takes them
/// back in the same turn, so the order is the reader's.
pub fn batches_on<T: Send + 'static>(
    cfg: LoaderConfig,
    epoch: usize,
    make: impl Fn(Batch) -> T + Send + Sync + 'static,
    workers: usize,
) -> Box<dyn Iterator<Item = Result<T, String>> + Send> {
    if workers <= 1 {
        return Box::new(batches(cfg, epoch, make).into_iter());
    }
    let make = std::sync::Arc::new(make);
    let (mut to_workers, mut from_workers) = (Vec::new(), Vec::new());
    for _ in 0..workers {
        // Short queues: each prepared GPU minibatch holds page-locked memory.
        let (tx, rx) = sync_channel::<Result<Batch, String>>(1);
        let (out_tx, out_rx) = sync_channel(1);
        let make = make.clone();
        std::thread::spawn(move || {
            yield_to_training();
            for b in rx {
                if out_tx.send(b.map(|b| make(b))).is_err() {
                    return;
                }
            }
        });
        to_workers.push(tx);
        from_workers.push(out_rx);
    }
    std::thread::spawn(move || {
        yield_to_training();
        for (i, b) in Reader::new(cfg, epoch).enumerate() {
            if to_workers[i % workers].send(b).is_err() {
                return;
            }
        }
    });
    let mut i = 0;
    Box::new(std::iter::from_fn(move || {
        let next = from_workers[i % workers].recv().ok();
        i += 1;
        next
    }))
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

/// One pass over the data as minibatches, read on the calling thread: chunks of rows in shuffled
/// order, cells shuffled within a buffer of several chunks. `batches` runs one on a thread of its
/// own; training on the CPU with every core computing iterates one directly (see `train`).
pub struct Reader {
    cfg: LoaderConfig,
    rng: Rng,
    /// First row of each chunk, in reading order, and how many have been read.
    starts: Vec<usize>,
    next: usize,
    /// Cells as (row in the dataset, chunk, row in the chunk); chunks stay in `chunks` while a
    /// pooled cell refers to them, and a minibatch copies its cells' nonzeros from there in one
    /// slice copy each.
    pool: Vec<(usize, u32, u32)>,
    chunks: Vec<Option<std::sync::Arc<CsrChunk>>>,
    /// The shuffled cells being handed out, as minibatches (ranges of `emitting`, gathered one at
    /// a time so that a pool is not held twice), and the short tail kept for the next pool.
    emitting: Vec<(usize, u32, u32)>,
    groups: std::collections::VecDeque<std::ops::Range<usize>>,
    rest: Vec<(usize, u32, u32)>,
    done: bool,
    /// Chunks read ahead, in `starts` order, by a thread of their own (see `prefetch`).
    ahead: Option<Receiver<Result<std::sync::Arc<CsrChunk>, String>>>,
}

impl Reader {
    pub fn new(cfg: LoaderConfig, epoch: usize) -> Self {
        let n = cfg.dataset.n_cells();
        let mut rng = Rng::new(cfg.seed.wrapping_add(epoch as u64 * 1_000_003));
        let mut starts: Vec<usize> = (0..n).step_by(cfg.chunk_rows.max(1)).collect();
        if cfg.shuffle {
            rng.shuffle(&mut starts);
        }
        Reader {
            cfg,
            rng,
            starts,
            next: 0,
            pool: Vec::new(),
            chunks: Vec::new(),
            emitting: Vec::new(),
            groups: Default::default(),
            rest: Vec::new(),
            done: false,
            ahead: None,
        }
    }

    /// Reads the file's chunks on a thread of its own, a few ahead, while the caller shuffles,
    /// gathers and prepares minibatches: a slow or network filesystem's latency is then hidden,
    /// at the cost of only the reads (a small share of a reader's work) competing with training.
    pub fn prefetch(mut self) -> Self {
        // Nothing to hide when every chunk is in memory.
        if self.cfg.chunks.as_ref().is_some_and(|c| c.ready()) {
            return self;
        }
        let (tx, rx) = sync_channel(2);
        let (ds, starts, rows) = (self.cfg.dataset.clone(), self.starts.clone(), self.cfg.chunk_rows);
        let cache = self.cfg.chunks.clone();
        std::thread::spawn(move || {
            yield_to_training();
            for s in starts {
                let chunk = match &cache {
                    Some(c) => c.read(&ds, s),
                    None => ds
                        .read_rows(s, s + rows)
                        .map(std::sync::Arc::new)
                        .map_err(|e| e.to_string()),
                };
                let failed = chunk.is_err();
                if tx.send(chunk).is_err() || failed {
                    return;
                }
            }
        });
        self.ahead = Some(rx);
        self
    }

    fn read_chunk(&mut self, start: usize) -> Result<std::sync::Arc<CsrChunk>, String> {
        match (&self.ahead, &self.cfg.chunks) {
            (Some(rx), _) => rx.recv().map_err(|_| "the chunk reader stopped".to_string())?,
            (None, Some(c)) => c.read(&self.cfg.dataset, start),
            (None, None) => self
                .cfg
                .dataset
                .read_rows(start, start + self.cfg.chunk_rows)
                .map(std::sync::Arc::new)
                .map_err(|e| e.to_string()),
        }
    }

    fn keep(&self, i: usize) -> bool {
        match self.cfg.split {
            Split::Validation => is_validation(self.cfg.seed, i),
            Split::Train => !is_validation(self.cfg.seed, i),
        }
    }

    fn gather(&self, group: &[(usize, u32, u32)]) -> Batch {
        let chunk = |c: u32| self.chunks[c as usize].as_ref().expect("pooled chunk");
        let nnz = group
            .iter()
            .map(|&(_, c, r)| chunk(c).indptr[r as usize + 1] - chunk(c).indptr[r as usize])
            .sum();
        let mut x = CsrChunk::empty(0, self.cfg.dataset.n_genes());
        x.indices.reserve(nnz);
        x.data.reserve(nnz);
        let mut rows = Vec::with_capacity(group.len());
        for &(row, c, r) in group {
            let (idx, val) = chunk(c).row(r as usize);
            x.indices.extend_from_slice(idx);
            x.data.extend_from_slice(val);
            x.indptr.push(x.data.len());
            rows.push(row);
        }
        Batch { x, rows }
    }

    /// Turns the pool into minibatches (`all`: the pass's last, which keeps no tail).
    fn emit(&mut self, all: bool) {
        if self.cfg.shuffle {
            self.rng.shuffle(&mut self.pool);
        }
        self.emitting = std::mem::take(&mut self.pool);
        let (bs, n) = (self.cfg.batch_size, self.emitting.len());
        for lo in (0..n).step_by(bs.max(1)) {
            let hi = (lo + bs).min(n);
            // BatchNorm needs at least two cells; keep a short tail for the next group.
            if hi - lo < bs && (!all || hi - lo < 2) {
                if !all || !self.cfg.shuffle {
                    self.rest.extend_from_slice(&self.emitting[lo..hi]);
                }
                continue;
            }
            self.groups.push_back(lo..hi);
        }
    }

    /// After a pool's minibatches: evaluation passes must see every cell, even a last single one;
    /// the chunks no cell of the tail needs are dropped and the tail starts the next pool.
    fn finish_pool(&mut self) -> Option<Batch> {
        self.emitting.clear();
        let last = if self.done && !self.cfg.shuffle && !self.rest.is_empty() {
            let tail = std::mem::take(&mut self.rest);
            Some(self.gather(&tail))
        } else {
            None
        };
        let mut keep = vec![false; self.chunks.len()];
        for &(_, c, _) in &self.rest {
            keep[c as usize] = true;
        }
        for (c, k) in self.chunks.iter_mut().zip(keep) {
            if !k {
                *c = None;
            }
        }
        self.pool = std::mem::take(&mut self.rest);
        last
    }
}

impl Iterator for Reader {
    type Item = Result<Batch, String>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(g) = self.groups.pop_front() {
                return Some(Ok(self.gather(&self.emitting[g])));
            }
            if !self.emitting.is_empty() || !self.rest.is_empty() {
                if let Some(b) = self.finish_pool() {
                    return Some(Ok(b));
                }
            }
            if self.done {
                return None;
            }
            let Some(&s) = self.starts.get(self.next) else {
                self.done = true;
                self.emit(true);
                continue;
            };
            let chunk = match self.read_chunk(s) {
                Ok(c) => c,
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            };
            let id = self.chunks.len() as u32;
            for r in 0..chunk.n_rows() {
                if self.keep(s + r) {
                    self.pool.push((s + r, id, r as u32));
                }
            }
            self.chunks.push(Some(chunk));
            self.next += 1;
            // A file held in memory is shuffled whole: each minibatch is drawn from all cells,
            // not from a window of chunks (a file sorted by sample or type otherwise feeds
            // training a run of similar cells at a time). Else a window bounds memory.
            let whole = self.cfg.chunks.as_ref().is_some_and(|c| c.holds_all()) && self.cfg.shuffle;
            if !whole && self.next.is_multiple_of(self.cfg.buffer_chunks.max(1)) {
                self.emit(false);
            }
        }
    }
}

/// Starts a reader thread for one pass over the data; each batch is turned into `T` by `make`
/// on that thread (tensor preparation overlaps training) and arrives in the returned channel.
pub fn batches<T: Send + 'static>(
    cfg: LoaderConfig,
    epoch: usize,
    make: impl Fn(Batch) -> T + Send + 'static,
) -> Receiver<Result<T, String>> {
    let (tx, rx) = sync_channel(4);
    std::thread::spawn(move || {
        yield_to_training();
        for b in Reader::new(cfg, epoch) {
            if tx.send(b.map(&make)).is_err() {
                return;
            }
        }
    });
    rx
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
