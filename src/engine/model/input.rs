//! A minibatch as the model reads it: the counts as nonzeros (in row order and gene by gene),
//! the presence mask and its distinct rows, the batch and the labels.

use tch::{Device, Kind, Tensor};

pub struct SparseX {
    /// Cells in the minibatch and genes of the model.
    pub n_rows: i64,
    pub n_cols: i64,
    /// The nonzeros ordered by gene, for the first layer's products (built on the reader thread).
    pub by_gene: std::sync::Arc<ByGene>,
    /// Gene of each nonzero entry.
    pub genes: Tensor,
    /// Each nonzero count, its cell (row in the batch) and its flat index `row * genes + gene`.
    pub values: Tensor,
    pub rows: Tensor,
    pub flat: Tensor,
}

/// One minibatch on the device.
pub struct Input<'a> {
    /// The same counts as nonzeros (likelihood); None: computed densely.
    pub sparse: Option<&'a SparseX>,
    /// Per cell, the sum of lgamma(x + 1) over measured genes (a constant of the likelihood,
    /// computed from the nonzeros); None: computed densely here.
    pub lgamma_x1: Option<&'a Tensor>,
    /// Counts, cells x genes; None: built from `sparse` where a computation needs them dense
    /// (on a GPU; nothing on the CPU does).
    pub x: Option<&'a Tensor>,
    /// 1 where a gene was measured for the cell (enters the loss); None: all measured.
    pub measured: Option<&'a Tensor>,
    /// `measured` as its distinct rows, when the caller has them (see `MaskGroups`).
    pub measured_groups: Option<&'a MaskGroups>,
    /// 1 where the encoder may see the gene (measured and not dropped out); None: `measured`.
    pub visible: Option<&'a Tensor>,
    /// One-hot batch, cells x n_batch.
    pub batch: Option<&'a Tensor>,
    /// Per cell its classifier label (int64), -1 where unlabelled; None: no classification loss.
    pub labels: Option<&'a Tensor>,
}

/// A minibatch's presence mask as its distinct rows: cell `i`'s mask is `rows[index[i]]`. Cells
/// of one input dataset of a merged file share a row, so the encoder's product with the mask
/// costs a few rows (one per dataset in the batch) instead of one per cell.
pub struct MaskGroups {
    /// Distinct rows x genes.
    pub rows: Tensor,
    /// Per cell (int64).
    pub index: Tensor,
}

/// Whether autograd records operations now (false inside `tch::no_grad`).
pub(crate) fn grad_mode() -> bool {
    let probe = Tensor::zeros([1], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    (&probe * 1.0).requires_grad()
}

/// A minibatch's nonzeros gene by gene (a stable counting sort of the row-order ones): their
/// row-order index, cell, gene and log1p(count).
pub struct ByGene {
    pub order: Vec<u32>,
    pub rows: Vec<i64>,
    pub genes: Vec<i64>,
    pub log1p: Vec<f32>,
}

impl ByGene {
    pub fn new(rows: &[i64], genes: &[i64], values: &[f32], n_cols: usize) -> Self {
        let order = gene_order(genes, n_cols);
        let n = order.len();
        let (mut by_rows, mut by_genes, mut log1p) = (vec![0i64; n], vec![0i64; n], vec![0f32; n]);
        let table = log1p_table();
        for (i, &k) in order.iter().enumerate() {
            let k = k as usize;
            by_rows[i] = rows[k];
            by_genes[i] = genes[k];
            let v = values[k];
            // Counts are mostly small integers: a table lookup instead of a libm call.
            let c = v as usize;
            log1p[i] = if c < table.len() && c as f32 == v {
                table[c]
            } else {
                v.ln_1p()
            };
        }
        ByGene {
            rows: by_rows,
            genes: by_genes,
            log1p,
            order,
        }
    }
}

/// ln(1 + k) for k = 0..1024.
fn log1p_table() -> &'static [f32] {
    static TABLE: std::sync::OnceLock<Vec<f32>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| (0..1024).map(|k| (k as f32).ln_1p()).collect())
}

/// The order of nonzeros by gene (a stable counting sort), `genes` in row order.
fn gene_order(genes: &[i64], n_cols: usize) -> Vec<u32> {
    let mut start = vec![0u32; n_cols + 1];
    for &g in genes {
        start[g as usize + 1] += 1;
    }
    for j in 0..n_cols {
        start[j + 1] += start[j];
    }
    let mut order = vec![0u32; genes.len()];
    for (k, &g) in genes.iter().enumerate() {
        let slot = &mut start[g as usize];
        order[*slot as usize] = k as u32;
        *slot += 1;
    }
    order
}

impl Input<'_> {
    /// The counts as a dense cells x genes tensor (on the device of the nonzeros).
    pub fn dense_x(&self) -> Tensor {
        if let Some(x) = self.x {
            return x.shallow_clone();
        }
        let sp = self.sparse.expect("a minibatch has its counts dense or as nonzeros");
        Tensor::zeros([sp.n_rows * sp.n_cols], (Kind::Float, sp.values.device()))
            .index_add(0, &sp.flat, &sp.values)
            .view([sp.n_rows, sp.n_cols])
    }

    pub fn n_rows(&self) -> i64 {
        match (self.sparse, self.x) {
            (Some(sp), _) => sp.n_rows,
            (None, Some(x)) => x.size()[0],
            (None, None) => 0,
        }
    }
}
