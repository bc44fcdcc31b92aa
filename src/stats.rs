//! Small statistics the engine's reports need, free of libtorch: a seedable generator for
//! shuffles and splits, k-means and the adjusted Rand index (`scmz compare`'s agreement of two
//! latents' clusterings).

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

/// Lloyd's k-means with seeded initial centres; returns cluster labels.
pub fn kmeans(x: &[f32], dim: usize, k: usize, seed: u64) -> Vec<usize> {
    let n = x.len() / dim;
    let mut rng = Rng::new(seed);
    let mut centres: Vec<f32> = (0..k)
        .flat_map(|_| x[(rng.next_u64() as usize % n) * dim..][..dim].to_vec())
        .collect();
    let mut labels = vec![0usize; n];
    for _ in 0..50 {
        for (i, l) in labels.iter_mut().enumerate() {
            let p = &x[i * dim..(i + 1) * dim];
            *l = (0..k)
                .min_by(|&a, &b| {
                    let d = |c: usize| {
                        p.iter()
                            .zip(&centres[c * dim..(c + 1) * dim])
                            .map(|(u, v)| (u - v) * (u - v))
                            .sum::<f32>()
                    };
                    d(a).total_cmp(&d(b))
                })
                .unwrap_or(0);
        }
        let mut sums = vec![0f32; k * dim];
        let mut counts = vec![0usize; k];
        for (i, &l) in labels.iter().enumerate() {
            counts[l] += 1;
            for d in 0..dim {
                sums[l * dim + d] += x[i * dim + d];
            }
        }
        for c in 0..k {
            if counts[c] > 0 {
                for d in 0..dim {
                    centres[c * dim + d] = sums[c * dim + d] / counts[c] as f32;
                }
            }
        }
    }
    labels
}

/// Adjusted Rand index of two labellings.
pub fn ari(a: &[usize], b: &[usize]) -> f64 {
    let n = a.len() as f64;
    let mut table: std::collections::HashMap<(usize, usize), f64> = Default::default();
    let mut ra: std::collections::HashMap<usize, f64> = Default::default();
    let mut rb: std::collections::HashMap<usize, f64> = Default::default();
    for (&x, &y) in a.iter().zip(b) {
        *table.entry((x, y)).or_default() += 1.0;
        *ra.entry(x).or_default() += 1.0;
        *rb.entry(y).or_default() += 1.0;
    }
    let c2 = |v: f64| v * (v - 1.0) / 2.0;
    let index: f64 = table.values().map(|&v| c2(v)).sum();
    let sa: f64 = ra.values().map(|&v| c2(v)).sum();
    let sb: f64 = rb.values().map(|&v| c2(v)).sum();
    let expected = sa * sb / c2(n);
    let max = (sa + sb) / 2.0;
    if (max - expected).abs() < 1e-12 {
        return 1.0;
    }
    (index - expected) / (max - expected)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn adjusted_rand_index_matches_known_values() {
        assert!((ari(&[0, 0, 1, 1], &[1, 1, 0, 0]) - 1.0).abs() < 1e-12);
        assert!((ari(&[0, 0, 1, 1], &[0, 1, 0, 1]) + 0.5).abs() < 1e-12);
        // scikit-learn's documented example: 0.24242424...
        assert!((ari(&[0, 0, 0, 1, 1, 1], &[0, 0, 1, 1, 2, 2]) - 0.242_424_242_4).abs() < 1e-9);
    }

    #[test]
    fn kmeans_separates_two_clouds() {
        let x: Vec<f32> = (0..40)
            .flat_map(|i| {
                if i < 20 {
                    [0.0 + i as f32 * 0.01, 0.0]
                } else {
                    [10.0, 10.0 + i as f32 * 0.01]
                }
            })
            .collect();
        let l = kmeans(&x, 2, 2, 3);
        assert!(l[..20].iter().all(|&v| v == l[0]) && l[20..].iter().all(|&v| v == l[20]) && l[0] != l[20]);
    }
}
