//! CSR chunks to tensors, and the devices libtorch offers here.

use tch::{Device, Kind, Tensor};

use crate::data::CsrChunk;

/// A dense `[rows, genes]` float tensor of the chunk on `device`.
pub fn dense(chunk: &CsrChunk, device: Device) -> Tensor {
    let rows = chunk.n_rows() as i64;
    let cols = chunk.n_cols as i64;
    let mut row_idx = Vec::with_capacity(chunk.nnz());
    for r in 0..chunk.n_rows() {
        row_idx.extend(std::iter::repeat_n(
            r as i64 * cols,
            chunk.indptr[r + 1] - chunk.indptr[r],
        ));
    }
    let flat: Vec<i64> = row_idx.iter().zip(&chunk.indices).map(|(b, &c)| b + c as i64).collect();
    let out = Tensor::zeros([rows * cols], (Kind::Float, device));
    let index = Tensor::from_slice(&flat).to_device(device);
    let values = Tensor::from_slice(&chunk.data).to_device(device);
    out.index_add(0, &index, &values).view([rows, cols])
}

/// Per-cell log library size, `log(sum of counts)`, computed by libtorch.
pub fn log_library_size(chunk: &CsrChunk, device: Device) -> Vec<f32> {
    let t = dense(chunk, device)
        .sum_dim_intlist(1, false, Kind::Float)
        .clamp_min(1.0)
        .log();
    Vec::<f32>::try_from(t.to_device(Device::Cpu)).unwrap_or_default()
}

/// `cpu`, or `cuda (N devices)` when libtorch sees a GPU.
pub fn describe_devices() -> String {
    if tch::Cuda::is_available() {
        format!("cuda ({} devices), cpu", tch::Cuda::device_count())
    } else {
        "cpu (no CUDA device visible)".to_string()
    }
}
