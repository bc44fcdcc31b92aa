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
    if t.numel() == 0 {
        // An empty tensor's data pointer may be null, which a slice must never be.
        return &[];
    }
    // SAFETY: checked above: `numel` elements of T at `data_ptr`, alive as long as `t`.
    unsafe { std::slice::from_raw_parts(t.data_ptr() as *const T, t.numel()) }
}

/// A new 1-d CPU tensor of `n` elements written by `fill` (no copy from a Vec).
pub fn filled<T: tch::kind::Element>(n: usize, fill: impl FnOnce(&mut [T])) -> Tensor {
    let t = Tensor::empty([n as i64], (T::KIND, Device::Cpu));
    if n == 0 {
        // An empty tensor's data pointer may be null, which a slice must never be.
        fill(&mut []);
        return t;
    }
    // SAFETY: a fresh contiguous CPU tensor of `n` elements of T, not shared until returned.
    fill(unsafe { std::slice::from_raw_parts_mut(t.data_ptr() as *mut T, n) });
    t
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
#[allow(clippy::unwrap_used)]
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
