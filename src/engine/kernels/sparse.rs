//! Sparse (CSR-ordered nonzeros) times dense products for the CPU's first layer and its weight
//! gradient, split over two threads when the product is large, with an AVX2 build of the loop.

/// `out[r, :] += w * wt[g, :]` for each nonzero `(r, g, w)`: a sparse matrix (cells x genes)
/// times a dense one (genes x h), both row-major, costing nonzeros x h.
pub fn sparse_times_dense(rows: &[i64], genes: &[i64], w: &[f32], wt: &[f32], h: usize, out: &mut [f32]) {
    let n_out = (out.len() / h.max(1)) as i64;
    sparse_times_dense_rows(rows, genes, w, wt, h, out, 0, n_out)
}

crate::kernels::avx2_dispatch! {
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
    ) = sparse_times_dense_body;
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

/// `sparse_times_dense` for nonzeros sorted by output row, on two threads when the product is
/// large: each takes the stretch of nonzeros of half the output rows (disjoint parts of `out`).
pub fn sparse_times_dense_par(rows: &[i64], cols: &[i64], w: &[f32], dense: &[f32], h: usize, out: &mut [f32]) {
    let n_out = out.len() / h.max(1);
    if !worth_two_threads(w.len() * h) || n_out < 2 {
        return sparse_times_dense(rows, cols, w, dense, h, out);
    }
    let split = (rows[w.len() / 2] as usize).clamp(1, n_out - 1);
    let k = rows.partition_point(|&r| (r as usize) < split);
    let (n_out, split_i) = (n_out as i64, split as i64);
    let (a, b) = out.split_at_mut(split * h);
    std::thread::scope(|s| {
        s.spawn(|| sparse_times_dense_rows(&rows[k..], &cols[k..], &w[k..], dense, h, b, split_i, n_out));
        sparse_times_dense_rows(&rows[..k], &cols[..k], &w[..k], dense, h, a, 0, split_i);
    });
}

/// `out[r, :] += w * wt[g, :]` for nonzeros `(r, g, w)` sorted by gene (`wt` genes x h,
/// row-major): each row of `wt` is read once and the output rows stay in cache. On two threads
/// when large, each taking a stretch of genes with half the nonzeros into an output of its own,
/// added at the end (a cells x h matrix, small).
pub fn sparse_by_gene_times_rows(rows: &[i64], genes: &[i64], w: &[f32], wt: &[f32], h: usize, out: &mut [f32]) {
    let n = w.len();
    if !worth_two_threads(n * h) || n < 2 {
        return sparse_times_dense(rows, genes, w, wt, h, out);
    }
    // Split at a gene boundary, so that no weight row is read by both threads.
    let g_mid = genes[n / 2];
    let k = genes.partition_point(|&g| g < g_mid);
    let mut other = vec![0f32; out.len()];
    std::thread::scope(|s| {
        s.spawn(|| sparse_times_dense(&rows[k..], &genes[k..], &w[k..], wt, h, &mut other));
        sparse_times_dense(&rows[..k], &genes[..k], &w[..k], wt, h, out);
    });
    axpy(out, 1.0, &other);
}

/// `out += w * src`, the inner loop of the sparse products.
#[inline(always)]
fn axpy(out: &mut [f32], w: f32, src: &[f32]) {
    for (o, s) in out.iter_mut().zip(src) {
        *o += w * s;
    }
}

/// Whether `flops` multiply-adds pay for a second thread (and libtorch runs with several).
fn worth_two_threads(flops: usize) -> bool {
    flops >= 4 << 20 && tch::get_num_threads() > 1
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Over nonzeros sorted by gene, the product on two threads (a stretch of genes each) equals
    /// the one-thread product and a direct sum (exact here: halves times small integers).
    #[test]
    fn by_gene_product_on_two_threads_matches_one() {
        for (n, g, h, every) in [(8usize, 40usize, 16usize, 3usize), (256, 2000, 128, 7)] {
            let wt: Vec<f32> = (0..g * h).map(|i| ((i * 13) % 29) as f32 - 14.0).collect();
            let (mut rows, mut genes, mut w) = (Vec::new(), Vec::new(), Vec::new());
            for j in 0..g {
                for r in (j % every..n).step_by(every) {
                    rows.push(r as i64);
                    genes.push(j as i64);
                    w.push(((r + j) % 5) as f32 + 0.5);
                }
            }
            if n == 256 {
                assert!(w.len() * h >= 4 << 20, "large enough for two threads");
            }
            let mut direct = vec![0f32; n * h];
            for ((&r, &j), &v) in rows.iter().zip(&genes).zip(&w) {
                for k in 0..h {
                    direct[r as usize * h + k] += v * wt[j as usize * h + k];
                }
            }
            let mut one = vec![0f32; n * h];
            sparse_times_dense(&rows, &genes, &w, &wt, h, &mut one);
            let mut two = vec![0f32; n * h];
            sparse_by_gene_times_rows(&rows, &genes, &w, &wt, h, &mut two);
            assert_eq!(one, direct);
            assert_eq!(two, direct);
        }
    }

    /// Split over two threads by output row, the product is the same, bit for bit.
    #[test]
    fn sparse_product_on_two_threads_matches_one() {
        let (n, g, h) = (256usize, 2000usize, 128usize);
        let (mut rows, mut cols, mut w) = (Vec::new(), Vec::new(), Vec::new());
        // Sorted by output row (here the genes: the first layer's weight gradient).
        for j in 0..g {
            for r in (j % 7..n).step_by(7) {
                rows.push(j as i64);
                cols.push(r as i64);
                w.push(((r * 31 + j) % 17) as f32 * 0.25);
            }
        }
        assert!(w.len() * h >= 4 << 20, "large enough for two threads");
        let dense: Vec<f32> = (0..n * h).map(|i| ((i * 5) % 11) as f32 - 5.0).collect();
        let mut one = vec![0f32; g * h];
        sparse_times_dense(&rows, &cols, &w, &dense, h, &mut one);
        let mut two = vec![0f32; g * h];
        sparse_times_dense_par(&rows, &cols, &w, &dense, h, &mut two);
        assert_eq!(one, two);
        assert!(one.iter().any(|&v| v != 0.0));
    }
}
