//! Which of a dataset's genes a model is trained on: all of them, the highly variable ones
//! (Seurat v3's method on raw counts, as scanpy's `flavor="seurat_v3"` computes it), or a list
//! the user gives in a file (one gene per line, matched against any of the dataset's gene keys).

use std::path::Path;

use crate::data::{DataError, Dataset, Result};

/// `--genes`: `all`, `hvg:N` or a file's path.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum GeneSelection {
    #[default]
    All,
    Hvg(usize),
    File(std::path::PathBuf),
}

impl std::str::FromStr for GeneSelection {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if s == "all" {
            return Ok(GeneSelection::All);
        }
        if let Some(n) = s.strip_prefix("hvg:") {
            return match n.parse::<usize>() {
                Ok(n) if n > 0 => Ok(GeneSelection::Hvg(n)),
                _ => Err(format!("`{s}`: hvg:N needs a positive gene count, e.g. hvg:2000")),
            };
        }
        Ok(GeneSelection::File(s.into()))
    }
}

impl From<GeneSelection> for String {
    fn from(g: GeneSelection) -> String {
        g.to_string()
    }
}

impl TryFrom<String> for GeneSelection {
    type Error = String;

    fn try_from(s: String) -> std::result::Result<Self, String> {
        s.parse()
    }
}

impl std::fmt::Display for GeneSelection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GeneSelection::All => write!(f, "all"),
            GeneSelection::Hvg(n) => write!(f, "hvg:{n}"),
            GeneSelection::File(p) => write!(f, "{}", p.display()),
        }
    }
}

impl GeneSelection {
    /// Which of `ds`'s genes to keep (None: all of them).
    pub fn keep(&self, ds: &Dataset) -> Result<Option<Vec<bool>>> {
        match self {
            GeneSelection::All => Ok(None),
            GeneSelection::Hvg(n) => {
                let scores = seurat_v3_variances(ds)?;
                Ok(Some(top_n(&scores, *n)))
            }
            GeneSelection::File(path) => genes_from_file(ds, path).map(Some),
        }
    }
}

/// The `n` highest scores (all genes when there are no more); ties keep the earlier gene.
pub fn top_n(scores: &[f64], n: usize) -> Vec<bool> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let mut keep = vec![false; scores.len()];
    for &i in order.iter().take(n) {
        keep[i] = true;
    }
    keep
}

/// Seurat v3's standardised variance of each gene: counts standardised by the variance a loess
/// fit of log variance on log mean expects for the gene's mean, clipped at sqrt(cells), then
/// their variance. Two passes over the matrix; when its nonzeros fit `data::cache_budget_nnz`, the
/// second and later readers of `ds` read them from memory (`Dataset::hold_rows`), else the passes
/// stream (memory: a few vectors of genes).
pub fn seurat_v3_variances(ds: &Dataset) -> Result<Vec<f64>> {
    let (n, g) = (ds.n_cells(), ds.n_genes());
    if n < 2 {
        return Err(
            DataError::file(ds.path(), "has fewer than 2 cells: no gene variance to rank")
                .hint("use --genes all or a gene list file"),
        );
    }
    let (mut sum, mut sq) = (vec![0f64; g], vec![0f64; g]);
    // The first pass keeps its chunks while they fit `data::cache_budget_nnz`, so that the second reads the
    // file again only when it is large (a dense, compressed file costs a decompression a pass).
    let (mut kept, mut kept_nnz, budget) = (Some(Vec::new()), 0usize, crate::data::cache_budget_nnz());
    for chunk in ds.chunks(4096) {
        let c = chunk?;
        for (&j, &v) in c.indices.iter().zip(&c.data) {
            let v = v as f64;
            sum[j as usize] += v;
            sq[j as usize] += v * v;
        }
        if let Some(k) = kept.as_mut() {
            kept_nnz += c.nnz();
            if kept_nnz > budget {
                kept = None;
            } else {
                k.push(c);
            }
        }
    }
    let nf = n as f64;
    let mean: Vec<f64> = sum.iter().map(|s| s / nf).collect();
    // Unbiased variance, as scanpy's.
    let var: Vec<f64> = (0..g)
        .map(|j| ((sq[j] - nf * mean[j] * mean[j]) / (nf - 1.0)).max(0.0))
        .collect();
    let fit_idx: Vec<usize> = (0..g).filter(|&j| var[j] > 0.0).collect();
    let xs: Vec<f64> = fit_idx.iter().map(|&j| mean[j].log10()).collect();
    let ys: Vec<f64> = fit_idx.iter().map(|&j| var[j].log10()).collect();
    let fitted = loess(&xs, &ys, 0.3);
    let mut reg_std = vec![1f64; g];
    for (k, &j) in fit_idx.iter().enumerate() {
        reg_std[j] = 10f64.powf(fitted[k]).sqrt();
    }
    let clip: Vec<f64> = (0..g).map(|j| mean[j] + reg_std[j] * nf.sqrt()).collect();
    let (mut csum, mut csq) = (vec![0f64; g], vec![0f64; g]);
    let second: Box<dyn Iterator<Item = Result<std::borrow::Cow<crate::data::CsrChunk>>>> = match &kept {
        Some(k) => Box::new(k.iter().map(|c| Ok(std::borrow::Cow::Borrowed(c)))),
        None => Box::new(ds.chunks(4096).map(|c| c.map(std::borrow::Cow::Owned))),
    };
    for chunk in second {
        let c = chunk?;
        for (&j, &v) in c.indices.iter().zip(&c.data) {
            let j = j as usize;
            let v = (v as f64).min(clip[j]);
            csum[j] += v;
            csq[j] += v * v;
        }
    }
    // The training that follows reads the same rows again: from memory (`Dataset::hold_rows`;
    // it releases them once it holds its own copy of the chosen genes).
    if let Some(k) = kept {
        ds.hold_rows(k);
    }
    Ok((0..g)
        .map(|j| {
            let m = mean[j];
            (nf * m * m + csq[j] - 2.0 * csum[j] * m) / ((nf - 1.0) * reg_std[j] * reg_std[j])
        })
        .collect())
}

/// Local quadratic regression (loess, degree 2, tricube weights over the `span` share of nearest
/// points), evaluated at every point. In one dimension the nearest points form a window of the
/// sorted values, slid along once.
pub fn loess(xs: &[f64], ys: &[f64], span: f64) -> Vec<f64> {
    let n = xs.len();
    if n < 3 {
        return ys.to_vec();
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| xs[a].total_cmp(&xs[b]));
    let x: Vec<f64> = order.iter().map(|&i| xs[i]).collect();
    let y: Vec<f64> = order.iter().map(|&i| ys[i]).collect();
    let q = ((span * n as f64).floor() as usize).clamp(3, n);
    let mut out = vec![0f64; n];
    let mut lo = 0usize;
    for i in 0..n {
        // The window of q points nearest x[i]: move right while that brings nearer points in.
        while lo + q < n && x[lo + q] - x[i] < x[i] - x[lo] {
            lo += 1;
        }
        let d = (x[i] - x[lo]).max(x[lo + q - 1] - x[i]).max(1e-12) * 1.000_001;
        // Weighted least squares for a + b t + c t^2 with t = x - x[i].
        let mut s = [0f64; 5];
        let mut r = [0f64; 3];
        for k in lo..lo + q {
            let t = x[k] - x[i];
            let u = (t.abs() / d).min(1.0);
            let w = (1.0 - u * u * u).powi(3);
            let (t2, wy) = (t * t, w * y[k]);
            s[0] += w;
            s[1] += w * t;
            s[2] += w * t2;
            s[3] += w * t2 * t;
            s[4] += w * t2 * t2;
            r[0] += wy;
            r[1] += wy * t;
            r[2] += wy * t2;
        }
        out[order[i]] =
            solve3([[s[0], s[1], s[2]], [s[1], s[2], s[3]], [s[2], s[3], s[4]]], r).unwrap_or(r[0] / s[0].max(1e-300));
    }
    out
}

/// The first unknown of a 3 x 3 linear system (Cramer's rule); None when it is singular.
fn solve3(a: [[f64; 3]; 3], b: [f64; 3]) -> Option<f64> {
    let det = |m: [[f64; 3]; 3]| {
        m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1]) - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
            + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0])
    };
    let d = det(a);
    let scale = a[0][0] * a[1][1] * a[2][2];
    if !d.is_finite() || d.abs() <= 1e-12 * scale.abs().max(1e-300) {
        return None;
    }
    let mut a0 = a;
    for r in 0..3 {
        a0[r][0] = b[r];
    }
    Some(det(a0) / d)
}

/// The genes named in `path` (one per line; blank lines and `#` comments skipped), matched
/// against the dataset's gene keys (the one that finds the most). Names it does not hold are an
/// error listing a few of them.
fn genes_from_file(ds: &Dataset, path: &Path) -> Result<Vec<bool>> {
    // A FIFO or a device would be waited on or read without end.
    crate::files::require_regular(path).map_err(|e| {
        DataError::file(path, format!("{} (the --genes file)", e.message))
            .hint("give --genes a file with one gene per line, or hvg:N")
    })?;
    let text = std::fs::read_to_string(path)
        .map_err(|e| DataError::file(path, format!("cannot be read as a gene list: {e}")))?;
    let wanted: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    if wanted.is_empty() {
        return Err(DataError::file(path, "names no genes").hint("write one gene id or symbol per line"));
    }
    let genes = &ds.info().genes;
    let mut keys: Vec<(&str, &[String])> = vec![(genes.index_name.as_str(), &genes.index[..])];
    keys.extend(genes.keys());
    let mut best: Option<(usize, Vec<bool>, Vec<&str>, &str)> = None;
    for (key, values) in keys {
        let pos: std::collections::HashMap<&str, usize> =
            values.iter().enumerate().map(|(i, v)| (v.as_str(), i)).collect();
        let mut keep = vec![false; values.len()];
        let mut missing = Vec::new();
        for w in &wanted {
            match pos.get(w) {
                Some(&i) => keep[i] = true,
                None => missing.push(*w),
            }
        }
        let found = wanted.len() - missing.len();
        if best.as_ref().is_none_or(|b| found > b.0) {
            best = Some((found, keep, missing, key));
        }
    }
    let (found, keep, missing, key) = best.expect("the index is always a key");
    if !missing.is_empty() {
        let shown: Vec<&str> = missing.iter().take(5).copied().collect();
        return Err(DataError::file(
            path,
            format!(
                "names {} genes that {} does not hold in `{key}` (its best key, {found} found): {}{}",
                missing.len(),
                ds.path().display(),
                shown.join(", "),
                if missing.len() > 5 { ", ..." } else { "" }
            ),
        )
        .hint("use the dataset's gene ids or symbols, one per line"));
    }
    Ok(keep)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn loess_reproduces_a_quadratic_and_smooths_noise() {
        let xs: Vec<f64> = (0..200).map(|i| i as f64 / 20.0).collect();
        let ys: Vec<f64> = xs.iter().map(|x| 1.0 + 0.5 * x - 0.1 * x * x).collect();
        for (f, y) in loess(&xs, &ys, 0.3).iter().zip(&ys) {
            assert!((f - y).abs() < 1e-8, "{f} vs {y}");
        }
        // Alternating noise of +-1 around a line is averaged away.
        let noisy: Vec<f64> = ys
            .iter()
            .enumerate()
            .map(|(i, y)| y + if i % 2 == 0 { 1.0 } else { -1.0 })
            .collect();
        let fit = loess(&xs, &noisy, 0.3);
        let err = fit[20..180]
            .iter()
            .zip(&ys[20..180])
            .map(|(f, y)| (f - y).abs())
            .fold(0.0, f64::max);
        assert!(err < 0.05, "max error {err}");
    }

    #[test]
    fn selections_parse() {
        assert_eq!("all".parse::<GeneSelection>(), Ok(GeneSelection::All));
        assert_eq!("hvg:2000".parse::<GeneSelection>(), Ok(GeneSelection::Hvg(2000)));
        assert!("hvg:0".parse::<GeneSelection>().is_err());
        assert!("hvg:x".parse::<GeneSelection>().is_err());
        assert_eq!(
            "genes.txt".parse::<GeneSelection>(),
            Ok(GeneSelection::File("genes.txt".into()))
        );
        assert_eq!(top_n(&[0.5, 2.0, 1.0, 2.0], 2), vec![false, true, false, true]);
    }
}
