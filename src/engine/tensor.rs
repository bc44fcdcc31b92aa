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

/// `out[r, :] += w * wt[g, :]` for each nonzero `(r, g, w)`: a sparse matrix (cells x genes)
/// times a dense one (genes x h), both row-major, costing nonzeros x h.
pub fn sparse_times_dense(rows: &[i64], genes: &[i64], w: &[f32], wt: &[f32], h: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just above).
        return unsafe { sparse_times_dense_avx2(rows, genes, w, wt, h, out) };
    }
    sparse_times_dense_body(rows, genes, w, wt, h, out)
}

/// The same loop compiled for 8-wide vectors (the portable build targets 4-wide SSE2).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn sparse_times_dense_avx2(rows: &[i64], genes: &[i64], w: &[f32], wt: &[f32], h: usize, out: &mut [f32]) {
    sparse_times_dense_body(rows, genes, w, wt, h, out)
}

#[inline(always)]
fn sparse_times_dense_body(rows: &[i64], genes: &[i64], w: &[f32], wt: &[f32], h: usize, out: &mut [f32]) {
    for ((&r, &g), &w) in rows.iter().zip(genes).zip(w) {
        let (r, g) = (r as usize, g as usize);
        let src = &wt[g * h..(g + 1) * h];
        for (o, s) in out[r * h..(r + 1) * h].iter_mut().zip(src) {
            *o += w * s;
        }
    }
}

/// `out[g, :] += w * dh[r, :]` for each nonzero `(r, g, w)`: the transposed product, for the
/// gradient of the dense factor.
pub fn sparse_t_times_dense(rows: &[i64], genes: &[i64], w: &[f32], dh: &[f32], h: usize, out: &mut [f32]) {
    sparse_times_dense(genes, rows, w, dh, h, out)
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
