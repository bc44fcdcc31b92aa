//! Labels transferred to a query by kNN in latent space.

use tch::Tensor;

/// kNN label transfer: for each query row, the majority label among the k nearest reference
/// latents and the share of neighbours that agree. `exclude_self` skips reference row i for
/// query row i (reference cells labelling themselves).
pub(crate) fn knn_labels(
    query: &[f32],
    reference: &Tensor,
    labels: &[i64],
    k: usize,
    exclude_self: bool,
) -> (Vec<i64>, Vec<f64>) {
    let l = reference.size()[1];
    let q = Tensor::from_slice(query).view([-1, l]);
    let n = q.size()[0];
    let kk = (k + usize::from(exclude_self)).min(reference.size()[0] as usize) as i64;
    let mut out = Vec::with_capacity(n as usize);
    let mut conf = Vec::with_capacity(n as usize);
    for start in (0..n).step_by(4096) {
        let len = (n - start).min(4096);
        let d = Tensor::cdist(&q.narrow(0, start, len), reference, 2.0, None::<i64>);
        let (_, idx) = d.topk(kk, 1, false, true);
        let idx = Vec::<i64>::try_from(idx.flatten(0, 1)).unwrap_or_default();
        for r in 0..len as usize {
            let mut votes = std::collections::BTreeMap::new();
            let mut used = 0;
            for &j in &idx[r * kk as usize..(r + 1) * kk as usize] {
                if exclude_self && j == start + r as i64 || used == k {
                    continue;
                }
                used += 1;
                *votes.entry(labels[j as usize]).or_insert(0usize) += 1;
            }
            let (best, count) = votes
                .iter()
                .max_by_key(|(lab, c)| (**c, -**lab))
                .map(|(a, b)| (*a, *b))
                .unwrap_or((-1, 0));
            out.push(best);
            conf.push(count as f64 / used.max(1) as f64);
        }
    }
    (out, conf)
}
