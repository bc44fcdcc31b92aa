//! The loader on a real file: each pass covers its split once, chunks kept in memory serve the
//! same batches.

use super::*;

fn config(split: Split, shuffle: bool) -> LoaderConfig {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/pbmc68k_counts.h5ad");
    LoaderConfig {
        dataset: std::sync::Arc::new(Dataset::open(path).unwrap()),
        batch_size: 64,
        chunk_rows: 100,
        buffer_chunks: 3,
        seed: 7,
        split,
        shuffle,
        chunks: None,
    }
}

/// A training pass sees each training cell once (a single leftover cell may be dropped, as
/// BatchNorm needs two), in full batches but the last, with the file's counts; evaluation
/// passes see every validation cell once, in file order; the order depends on the epoch only
/// through the seed, and a reader on a thread, or reading its chunks ahead on one, or dealing
/// batches to several preparing threads, yields what one on the caller's does.
#[test]
fn passes_cover_their_split_once_with_the_files_rows() {
    let train: Vec<Batch> = Reader::new(config(Split::Train, true), 0).map(Result::unwrap).collect();
    let ds = config(Split::Train, true).dataset;
    let n = ds.n_cells();
    let want: Vec<usize> = (0..n).filter(|&i| !is_validation(7, i)).collect();
    let mut seen: Vec<usize> = train.iter().flat_map(|b| b.rows.clone()).collect();
    assert!(train[..train.len() - 1].iter().all(|b| b.rows.len() == 64));
    assert!(train.last().unwrap().rows.len() >= 2);
    // Shuffled: not in file order.
    assert!(seen.windows(2).any(|w| w[1] < w[0]));
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(
        seen.len(),
        train.iter().map(|b| b.rows.len()).sum::<usize>(),
        "a cell twice"
    );
    assert!(want.len() - seen.len() <= 1 && seen.iter().all(|r| want.binary_search(r).is_ok()));
    for b in &train[..2] {
        for (i, &row) in b.rows.iter().enumerate() {
            let file = ds.read_rows(row, row + 1).unwrap();
            let (a, z) = (b.x.indptr[i], b.x.indptr[i + 1]);
            assert_eq!(&b.x.indices[a..z], &file.indices[..]);
            assert_eq!(&b.x.data[a..z], &file.data[..]);
        }
    }
    let val: Vec<usize> = Reader::new(config(Split::Validation, false), 0)
        .flat_map(|b| b.unwrap().rows)
        .collect();
    assert_eq!(val, (0..n).filter(|&i| is_validation(7, i)).collect::<Vec<_>>());
    let rows = |epoch: usize| -> Vec<usize> {
        Reader::new(config(Split::Train, true), epoch)
            .flat_map(|b| b.unwrap().rows)
            .collect()
    };
    assert_eq!(rows(0), train.iter().flat_map(|b| b.rows.clone()).collect::<Vec<_>>());
    assert_ne!(rows(0), rows(1));
    let threaded: Vec<usize> = batches(config(Split::Train, true), 1, |b| b.rows)
        .into_iter()
        .flat_map(Result::unwrap)
        .collect();
    assert_eq!(threaded, rows(1));
    // Prepared on several threads (a GPU's loader), in the reader's order.
    for workers in [1, 3] {
        let dealt: Vec<usize> = batches_on(config(Split::Train, true), 1, |b| b.rows, workers)
            .flat_map(Result::unwrap)
            .collect();
        assert_eq!(dealt, rows(1), "{workers} workers");
    }
    let prefetched: Vec<usize> = Reader::new(config(Split::Train, true), 1)
        .prefetch()
        .flat_map(|b| b.unwrap().rows)
        .collect();
    assert_eq!(prefetched, rows(1));
}

/// Batches of every epoch are the same whether the chunks come from the file or from memory,
/// on the caller's thread or prefetched; the cache is whole after one pass (also a validation
/// pass of the same file); a file held in memory is shuffled whole, and one over the budget
/// is never held and streams in windows of chunks as before.
#[test]
fn chunks_kept_in_memory_serve_the_same_batches() {
    let ds = config(Split::Train, true).dataset;
    let n = ds.n_cells();
    let cached = |cache: &std::sync::Arc<ChunkCache>, split: Split, epoch: usize, ahead: bool| {
        let mut cfg = config(split, split == Split::Train);
        cfg.dataset = ds.clone();
        cfg.chunks = Some(cache.clone());
        let r = Reader::new(cfg, epoch);
        let r = if ahead { r.prefetch() } else { r };
        r.map(Result::unwrap).collect::<Vec<Batch>>()
    };
    let plain = |split: Split, epoch: usize| -> Vec<Batch> {
        Reader::new(config(split, split == Split::Train), epoch)
            .map(Result::unwrap)
            .collect()
    };
    let same = |a: &[Batch], b: &[Batch]| {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert_eq!(
                (&x.rows, &x.x.indptr, &x.x.indices, &x.x.data),
                (&y.rows, &y.x.indptr, &y.x.indices, &y.x.data)
            );
        }
    };
    let budget = 1 << 30;
    let cache = std::sync::Arc::new(ChunkCache::with_budget(n, 100, budget));
    same(
        &cached(&cache, Split::Validation, 0, false),
        &plain(Split::Validation, 0),
    );
    assert!(cache.ready(), "one whole pass fills the cache");
    for epoch in 0..3 {
        // From the file (a fresh cache) and from memory: the same batches.
        let fresh = std::sync::Arc::new(ChunkCache::with_budget(n, 100, budget));
        let from_file = cached(&fresh, Split::Train, epoch, false);
        same(&cached(&cache, Split::Train, epoch, epoch == 1), &from_file);
        // Shuffled whole: every training cell once, and the first batch drawn from more of
        // the file than a window of 3 chunks of 100 rows holds.
        let mut rows: Vec<usize> = from_file.iter().flat_map(|b| b.rows.clone()).collect();
        let first = &from_file[0].rows;
        let mut chunks: Vec<usize> = first.iter().map(|r| r / 100).collect();
        chunks.sort_unstable();
        chunks.dedup();
        assert!(chunks.len() > 3, "epoch {epoch}: first batch from chunks {chunks:?}");
        rows.sort_unstable();
        let want: Vec<usize> = (0..n).filter(|&i| !is_validation(7, i)).collect();
        assert_eq!(rows, want, "epoch {epoch}");
    }
    // A budget smaller than the file: streamed, never held, the same batches as no cache.
    let small = std::sync::Arc::new(ChunkCache::with_budget(
        n,
        100,
        ds.info().selected_matrix().unwrap().nnz as usize / 4,
    ));
    for epoch in 0..2 {
        same(&cached(&small, Split::Train, epoch, false), &plain(Split::Train, epoch));
    }
    assert!(!small.ready());
    assert!(matches!(*small.state.lock().unwrap(), ChunkState::Off));
}
