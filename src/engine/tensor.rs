//! CSR chunks to tensors, and the devices libtorch offers here.

use tch::{Device, Kind, Tensor};

use scmz::data::CsrChunk;

/// A dense `[rows, genes]` float tensor of the chunk on `device`.
pub fn dense(chunk: &CsrChunk, device: Device) -> Tensor {
    // Filled here rather than with a libtorch scatter: one pass over the nonzeros, no thread-pool
    // round trip (this runs once per minibatch on the reader thread).
    let (rows, cols) = (chunk.n_rows(), chunk.n_cols);
    let mut out = vec![0f32; rows * cols];
    for r in 0..rows {
        let (idx, val) = chunk.row(r);
        let row = &mut out[r * cols..(r + 1) * cols];
        for (&g, &v) in idx.iter().zip(val) {
            row[g as usize] += v;
        }
    }
    Tensor::from_slice(&out)
        .view([rows as i64, cols as i64])
        .to_device(device)
}

/// A contiguous CPU tensor's elements, borrowed.
///
/// Panics unless `t` is a defined, contiguous CPU tensor of `T`'s kind (a programming error here).
pub fn cpu_slice<T: tch::kind::Element>(t: &Tensor) -> &[T] {
    assert!(
        t.device() == Device::Cpu && t.is_contiguous() && t.kind() == T::KIND,
        "cpu_slice: {:?} {:?} tensor (contiguous: {})",
        t.device(),
        t.kind(),
        t.is_contiguous()
    );
    // SAFETY: checked above: `numel` elements of T at `data_ptr`, alive as long as `t`.
    unsafe { std::slice::from_raw_parts(t.data_ptr() as *const T, t.numel()) }
}

/// A new 1-d CPU tensor of `n` elements written by `fill` (no copy from a Vec).
pub fn filled<T: tch::kind::Element>(n: usize, fill: impl FnOnce(&mut [T])) -> Tensor {
    let t = Tensor::empty([n as i64], (T::KIND, Device::Cpu));
    // SAFETY: a fresh contiguous CPU tensor of `n` elements of T, not shared until returned.
    fill(unsafe { std::slice::from_raw_parts_mut(t.data_ptr() as *mut T, n) });
    t
}

/// `out[r, :] += w * wt[g, :]` for each nonzero `(r, g, w)`: a sparse matrix (cells x genes)
/// times a dense one (genes x h), both row-major, costing nonzeros x h.
pub fn sparse_times_dense(rows: &[i64], genes: &[i64], w: &[f32], wt: &[f32], h: usize, out: &mut [f32]) {
    let n_out = (out.len() / h.max(1)) as i64;
    sparse_times_dense_rows(rows, genes, w, wt, h, out, 0, n_out)
}

/// The product restricted to output rows `lo..hi`, written into `out` (rows `lo..hi` only).
#[allow(clippy::too_many_arguments)]
fn sparse_times_dense_rows(
    rows: &[i64],
    genes: &[i64],
    w: &[f32],
    wt: &[f32],
    h: usize,
    out: &mut [f32],
    lo: i64,
    hi: i64,
) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2 (checked just above).
        return unsafe { sparse_times_dense_avx2(rows, genes, w, wt, h, out, lo, hi) };
    }
    sparse_times_dense_body(rows, genes, w, wt, h, out, lo, hi)
}

/// The same loop compiled for 8-wide vectors (the portable build targets 4-wide SSE2).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
unsafe fn sparse_times_dense_avx2(
    rows: &[i64],
    genes: &[i64],
    w: &[f32],
    wt: &[f32],
    h: usize,
    out: &mut [f32],
    lo: i64,
    hi: i64,
) {
    sparse_times_dense_body(rows, genes, w, wt, h, out, lo, hi)
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn sparse_times_dense_body(
    rows: &[i64],
    genes: &[i64],
    w: &[f32],
    wt: &[f32],
    h: usize,
    out: &mut [f32],
    lo: i64,
    hi: i64,
) {
    for ((&r, &g), &w) in rows.iter().zip(genes).zip(w) {
        if r < lo || r >= hi {
            continue;
        }
        let (r, g) = ((r - lo) as usize, g as usize);
        axpy(&mut out[r * h..(r + 1) * h], w, &wt[g * h..(g + 1) * h]);
    }
}

/// `sparse_times_dense` on two threads when the product is large: each thread takes half the
/// output rows (so they write disjoint parts of `out`); with `rows_sorted` each also gets just its
/// own stretch of the nonzeros, otherwise both scan them all and skip the other's rows.
pub fn sparse_times_dense_par(
    rows: &[i64],
    cols: &[i64],
    w: &[f32],
    dense: &[f32],
    h: usize,
    out: &mut [f32],
    rows_sorted: bool,
) {
    let n_out = out.len() / h.max(1);
    if !worth_two_threads(w.len() * h) || n_out < 2 {
        return sparse_times_dense(rows, cols, w, dense, h, out);
    }
    let split = if rows_sorted {
        (rows[w.len() / 2] as usize).clamp(1, n_out - 1)
    } else {
        n_out / 2
    };
    let k = if rows_sorted {
        rows.partition_point(|&r| (r as usize) < split)
    } else {
        0
    };
    let (n_out, split_i) = (n_out as i64, split as i64);
    let (a, b) = out.split_at_mut(split * h);
    std::thread::scope(|s| {
        if rows_sorted {
            s.spawn(|| sparse_times_dense_rows(&rows[k..], &cols[k..], &w[k..], dense, h, b, split_i, n_out));
            sparse_times_dense_rows(&rows[..k], &cols[..k], &w[..k], dense, h, a, 0, split_i);
        } else {
            s.spawn(|| sparse_times_dense_rows(rows, cols, w, dense, h, b, split_i, n_out));
            sparse_times_dense_rows(rows, cols, w, dense, h, a, 0, split_i);
        }
    });
}

/// `out[r, :] += w * ws[:, g]` for each nonzero `(r, g, w)` with `genes` sorted, where `ws` is a
/// row-major h x `stride` matrix (a linear layer's weight, inputs along the rows): the first
/// layer's product straight from the weight, transposing 16 genes at a time into a small tile
/// instead of copying the whole transposed weight each step. On two threads (half the output
/// rows each) when large.
#[allow(clippy::too_many_arguments)]
pub fn sparse_times_weight(
    rows: &[i64],
    genes: &[i64],
    w: &[f32],
    ws: &[f32],
    stride: usize,
    n_genes: usize,
    h: usize,
    out: &mut [f32],
) {
    let n_out = out.len() / h.max(1);
    if !worth_two_threads(w.len() * h) || n_out < 2 {
        return weight_rows(rows, genes, w, ws, stride, n_genes, h, out, 0, n_out as i64);
    }
    let split = n_out / 2;
    let (a, b) = out.split_at_mut(split * h);
    std::thread::scope(|s| {
        s.spawn(|| weight_rows(rows, genes, w, ws, stride, n_genes, h, b, split as i64, n_out as i64));
        weight_rows(rows, genes, w, ws, stride, n_genes, h, a, 0, split as i64);
    });
}

#[allow(clippy::too_many_arguments)]
fn weight_rows(
    rows: &[i64],
    genes: &[i64],
    w: &[f32],
    ws: &[f32],
    stride: usize,
    n_genes: usize,
    h: usize,
    out: &mut [f32],
    lo: i64,
    hi: i64,
) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2 (checked just above).
        return unsafe { weight_rows_avx2(rows, genes, w, ws, stride, n_genes, h, out, lo, hi) };
    }
    weight_rows_body(rows, genes, w, ws, stride, n_genes, h, out, lo, hi)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
unsafe fn weight_rows_avx2(
    rows: &[i64],
    genes: &[i64],
    w: &[f32],
    ws: &[f32],
    stride: usize,
    n_genes: usize,
    h: usize,
    out: &mut [f32],
    lo: i64,
    hi: i64,
) {
    weight_rows_body(rows, genes, w, ws, stride, n_genes, h, out, lo, hi)
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn weight_rows_body(
    rows: &[i64],
    genes: &[i64],
    w: &[f32],
    ws: &[f32],
    stride: usize,
    n_genes: usize,
    h: usize,
    out: &mut [f32],
    lo: i64,
    hi: i64,
) {
    const B: usize = 16;
    let mut tile = vec![0f32; B * h];
    let n = w.len();
    let mut k = 0;
    while k < n {
        let g0 = genes[k] as usize;
        let g1 = (g0 + B).min(n_genes);
        let mut e = k;
        while e < n && (genes[e] as usize) < g1 {
            e += 1;
        }
        if rows[k..e].iter().any(|&r| r >= lo && r < hi) {
            for hh in 0..h {
                for (j, &v) in ws[hh * stride + g0..hh * stride + g1].iter().enumerate() {
                    tile[j * h + hh] = v;
                }
            }
            for kk in k..e {
                let r = rows[kk];
                if r < lo || r >= hi {
                    continue;
                }
                let (j, r) = (genes[kk] as usize - g0, (r - lo) as usize);
                axpy(&mut out[r * h..(r + 1) * h], w[kk], &tile[j * h..(j + 1) * h]);
            }
        }
        k = e;
    }
}

/// `dst[c * stride + r] (+)= src[r * cols + c]` for `src` rows x cols: the transpose of `src`
/// into the first `rows` columns of a row-major matrix of row length `stride`, in cache-sized
/// tiles.
pub fn transpose_into(src: &[f32], rows: usize, cols: usize, dst: &mut [f32], stride: usize, add: bool) {
    const T: usize = 32;
    for r0 in (0..rows).step_by(T) {
        for c0 in (0..cols).step_by(T) {
            for c in c0..(c0 + T).min(cols) {
                let out = &mut dst[c * stride..c * stride + rows];
                for r in r0..(r0 + T).min(rows) {
                    let v = src[r * cols + c];
                    if add {
                        out[r] += v;
                    } else {
                        out[r] = v;
                    }
                }
            }
        }
    }
}

/// `out += w * src`, the inner loop of the sparse products.
#[inline(always)]
fn axpy(out: &mut [f32], w: f32, src: &[f32]) {
    for (o, s) in out.iter_mut().zip(src) {
        *o += w * s;
    }
}

/// Whether the CPU runs AVX2 (checked once by the standard library, then cached).
#[inline(always)]
pub fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether `flops` multiply-adds pay for a second thread (and libtorch runs with several).
fn worth_two_threads(flops: usize) -> bool {
    flops >= 4 << 20 && tch::get_num_threads() > 1
}

/// Per-cell log library size, `log(sum of counts)`, computed by libtorch.
pub fn log_library_size(chunk: &CsrChunk, device: Device) -> Vec<f32> {
    let t = dense(chunk, device)
        .sum_dim_intlist(1, false, Kind::Float)
        .clamp_min(1.0)
        .log();
    Vec::<f32>::try_from(t.to_device(Device::Cpu)).unwrap_or_default()
}

/// What libtorch sees: CUDA availability and device count.
pub fn devices_json() -> serde_json::Value {
    serde_json::json!({
        "cuda": tch::Cuda::is_available(),
        "cuda_devices": tch::Cuda::device_count(),
        "cpu_threads": tch::get_num_threads(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The product straight from the weight's layout equals the one over its transposed copy,
    /// on one thread and on two.
    #[test]
    fn product_from_the_weight_matches_the_transposed_copy() {
        for (n, g, h, every) in [(8usize, 40usize, 16usize, 3usize), (256, 2000, 128, 7)] {
            let stride = g + 5;
            let ws: Vec<f32> = (0..h * stride).map(|i| ((i * 13) % 29) as f32 - 14.0).collect();
            let mut wt = vec![0f32; g * h];
            for hh in 0..h {
                for j in 0..g {
                    wt[j * h + hh] = ws[hh * stride + j];
                }
            }
            let (mut rows, mut genes, mut w) = (Vec::new(), Vec::new(), Vec::new());
            for j in 0..g {
                for r in (j % every..n).step_by(every) {
                    rows.push(r as i64);
                    genes.push(j as i64);
                    w.push(((r + j) % 5) as f32 + 0.5);
                }
            }
            let mut a = vec![0f32; n * h];
            sparse_times_dense(&rows, &genes, &w, &wt, h, &mut a);
            let mut b = vec![0f32; n * h];
            sparse_times_weight(&rows, &genes, &w, &ws, stride, g, h, &mut b);
            assert_eq!(a, b);
        }
    }

    #[test]
    fn tiled_transpose_writes_and_adds() {
        let (rows, cols, stride) = (70, 45, 80);
        let src: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
        let mut dst = vec![1f32; cols * stride];
        transpose_into(&src, rows, cols, &mut dst, stride, true);
        for r in 0..rows {
            for c in 0..cols {
                assert_eq!(dst[c * stride + r], src[r * cols + c] + 1.0);
            }
        }
        assert!(dst[..stride].iter().skip(rows).all(|&v| v == 1.0));
        transpose_into(&src, rows, cols, &mut dst, stride, false);
        assert_eq!(dst[3 * stride + 5], src[5 * cols + 3]);
    }

    /// Split over two threads by output row, the product is the same, bit for bit.
    #[test]
    fn sparse_product_on_two_threads_matches_one() {
        let (n, g, h) = (256usize, 2000usize, 128usize);
        let (mut rows, mut cols, mut w) = (Vec::new(), Vec::new(), Vec::new());
        for j in 0..g {
            for r in (j % 7..n).step_by(7) {
                rows.push(r as i64);
                cols.push(j as i64);
                w.push(((r * 31 + j) % 17) as f32 * 0.25);
            }
        }
        assert!(w.len() * h >= 4 << 20, "large enough for two threads");
        let dense: Vec<f32> = (0..g * h).map(|i| ((i * 7) % 13) as f32 - 6.0).collect();
        let mut one = vec![0f32; n * h];
        sparse_times_dense(&rows, &cols, &w, &dense, h, &mut one);
        let mut two = vec![0f32; n * h];
        sparse_times_dense_par(&rows, &cols, &w, &dense, h, &mut two, false);
        assert_eq!(one, two);
        // The transposed product, whose output rows (the genes here) come sorted.
        let mut one_t = vec![0f32; g * h];
        let dense_t: Vec<f32> = (0..n * h).map(|i| ((i * 5) % 11) as f32 - 5.0).collect();
        sparse_times_dense(&cols, &rows, &w, &dense_t, h, &mut one_t);
        let mut two_t = vec![0f32; g * h];
        sparse_times_dense_par(&cols, &rows, &w, &dense_t, h, &mut two_t, true);
        assert_eq!(one_t, two_t);
        assert!(one.iter().any(|&v| v != 0.0));
    }

    #[test]
    fn dense_tensor_matches_the_chunk_and_library_sizes_match_rust() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/pbmc68k_counts.h5ad");
        let ds = scmz::data::Dataset::open(path).unwrap();
        let chunk = ds.read_rows(0, 64).unwrap();
        let t = dense(&chunk, Device::Cpu);
        assert_eq!(t.size(), vec![64, 765]);
        assert_eq!(Vec::<f32>::try_from(t.flatten(0, 1)).unwrap(), chunk.to_dense());
        let lib = log_library_size(&chunk, Device::Cpu);
        for (a, s) in lib.iter().zip(chunk.row_sums()) {
            assert!((a - (s.max(1.0) as f32).ln()).abs() < 1e-4);
        }
    }
}
