//! A minibatch's tensors: the counts as sparse parts (and by gene, for the CPU's first layer),
//! each cell's sum of ln(x!), the presence mask, batch and labels, built on a reader thread and
//! moved to the device for a step.

use tch::{Device, Kind, Tensor};

use crate::kernels::math::ln_factorial;
use crate::model::input::{ByGene, Input, MaskGroups, SparseX};
use crate::tensor::{cpu_slice, filled};
use crate::train::covariates::Covariates;
use crate::train::loader::Batch;

/// Tensors for one minibatch.
pub(crate) struct Prepared {
    pub n: usize,
    /// The cells' rows in the dataset.
    pub rows: Vec<usize>,
    pub sparse: SparseX,
    lgamma_x1: Tensor,
    pub measured: Option<Tensor>,
    measured_groups: Option<MaskGroups>,
    pub visible: Option<Tensor>,
    batch: Option<Tensor>,
    labels: Option<Tensor>,
}

/// Builds the minibatch's tensors on the CPU (on the reader thread); `to` moves them to the device
/// and hides genes for gene dropout.
pub(crate) fn prepare(b: &Batch, cov: &Covariates, n_genes: usize) -> Prepared {
    prepare_for(b, cov, n_genes, Device::Cpu)
}

/// `prepare` for training on `dev`: for a GPU the nonzeros are not sorted by gene (only the
/// CPU's first layer reads that order) and the tensors are put in page-locked memory, from which
/// the copy to the device does not wait for the steps before it.
pub(crate) fn prepare_for(b: &Batch, cov: &Covariates, n_genes: usize, target: Device) -> Prepared {
    let dev = Device::Cpu;
    let c = &b.x;
    let (n, nnz) = (c.n_rows(), c.nnz());
    // The nonzeros' genes, cells and flat indices, written straight into their tensors.
    let genes = filled::<i64>(nnz, |out| {
        for (o, &g) in out.iter_mut().zip(&c.indices) {
            *o = g as i64;
        }
    });
    let each_nonzero = |out: &mut [i64], f: &dyn Fn(usize, u32) -> i64| {
        for r in 0..n {
            let (a, z) = (c.indptr[r], c.indptr[r + 1]);
            for (o, &g) in out[a..z].iter_mut().zip(&c.indices[a..z]) {
                *o = f(r, g);
            }
        }
    };
    let rows = filled::<i64>(nnz, |out| each_nonzero(out, &|r, _| r as i64));
    let flat = filled::<i64>(nnz, |out| each_nonzero(out, &|r, g| (r * n_genes) as i64 + g as i64));
    // Per cell, the sum of ln(x!) over its measured genes.
    let lgamma: Vec<f32> = (0..n)
        .map(|r| {
            let (idx, val) = c.row(r);
            let sum: f64 = match &cov.presence {
                None => sum4(val.iter().map(|&v| ln_factorial(v as f64))),
                Some(p) => {
                    let m = p.row(p.dataset(b.rows[r]));
                    sum4(
                        idx.iter()
                            .zip(val)
                            .filter(|(&g, _)| m[g as usize] != 0.0)
                            .map(|(_, &v)| ln_factorial(v as f64)),
                    )
                }
            };
            sum as f32
        })
        .collect();
    let by_gene = if target == Device::Cpu {
        ByGene::new(cpu_slice(&rows), cpu_slice(&genes), &c.data, n_genes)
    } else {
        ByGene::new(&[], &[], &[], n_genes)
    };
    let sparse = SparseX {
        n_rows: n as i64,
        n_cols: n_genes as i64,
        by_gene: std::sync::Arc::new(by_gene),
        genes: genes.to_device(dev),
        values: Tensor::from_slice(&c.data).to_device(dev),
        rows: rows.to_device(dev),
        flat: flat.to_device(dev),
    };
    let lgamma_x1 = Tensor::from_slice(&lgamma).to_device(dev);
    let measured = cov.presence.as_ref().map(|p| {
        filled::<f32>(n * n_genes, |m| {
            for (out, &row) in m.chunks_mut(n_genes).zip(&b.rows) {
                out.copy_from_slice(p.row(p.dataset(row)));
            }
        })
        .view([n as i64, n_genes as i64])
    });
    // The same mask as its distinct rows (datasets in order of first appearance).
    let measured_groups = cov.presence.as_ref().map(|p| {
        let mut seen: Vec<usize> = Vec::new();
        let index: Vec<i64> = b
            .rows
            .iter()
            .map(|&row| {
                let d = p.dataset(row);
                let k = seen.iter().position(|&s| s == d).unwrap_or_else(|| {
                    seen.push(d);
                    seen.len() - 1
                });
                k as i64
            })
            .collect();
        let rows = filled::<f32>(seen.len() * n_genes, |m| {
            for (out, &d) in m.chunks_mut(n_genes).zip(&seen) {
                out.copy_from_slice(p.row(d));
            }
        });
        MaskGroups {
            rows: rows.view([seen.len() as i64, n_genes as i64]),
            index: Tensor::from_slice(&index),
        }
    });
    let visible = None;
    let batch = cov.batch.as_ref().map(|(cats, codes)| {
        let c: Vec<i64> = b.rows.iter().map(|&r| codes[r].max(0) as i64).collect();
        Tensor::from_slice(&c)
            .to_device(dev)
            .one_hot(cats.len() as i64)
            .to_kind(Kind::Float)
    });
    let labels = cov
        .classes
        .as_ref()
        .map(|c| Tensor::from_slice(&b.rows.iter().map(|&r| c[r]).collect::<Vec<i64>>()));
    let p = Prepared {
        n: b.rows.len(),
        rows: b.rows.clone(),
        sparse,
        lgamma_x1,
        measured,
        measured_groups,
        visible,
        batch,
        labels,
    };
    if target == Device::Cpu {
        p
    } else {
        p.map(|t| t.pin_memory(target))
    }
}

/// A sum with four accumulators (one chain of dependent additions is four times slower).
fn sum4(values: impl Iterator<Item = f64>) -> f64 {
    let mut acc = [0f64; 4];
    for (i, v) in values.enumerate() {
        acc[i & 3] += v;
    }
    (acc[0] + acc[1]) + (acc[2] + acc[3])
}

impl Prepared {
    /// Each tensor replaced by `f(tensor)`.
    pub fn map(self, f: impl Fn(Tensor) -> Tensor) -> Prepared {
        Prepared {
            n: self.n,
            rows: self.rows,
            sparse: SparseX {
                n_rows: self.sparse.n_rows,
                n_cols: self.sparse.n_cols,
                by_gene: self.sparse.by_gene,
                genes: f(self.sparse.genes),
                values: f(self.sparse.values),
                rows: f(self.sparse.rows),
                flat: f(self.sparse.flat),
            },
            lgamma_x1: f(self.lgamma_x1),
            measured: self.measured.map(&f),
            measured_groups: self.measured_groups.map(|g| MaskGroups {
                rows: f(g.rows),
                index: f(g.index),
            }),
            visible: self.visible.map(&f),
            batch: self.batch.map(&f),
            labels: self.labels.map(&f),
        }
    }

    pub(crate) fn to(self, dev: Device, gene_dropout: f64) -> Prepared {
        let mut p = if dev == Device::Cpu {
            self
        } else {
            // From page-locked memory (`prepare_for`) the copy is queued behind the running steps.
            self.map(|t| t.to_device_(dev, t.kind(), true, false))
        };
        if gene_dropout > 0.0 {
            let keep = Tensor::rand([p.sparse.n_rows, p.sparse.n_cols], (Kind::Float, dev))
                .ge(gene_dropout)
                .to_kind(Kind::Float);
            p.visible = Some(match &p.measured {
                Some(m) => keep * m,
                None => keep,
            });
        }
        p
    }

    pub(crate) fn input(&self) -> Input<'_> {
        Input {
            sparse: Some(&self.sparse),
            lgamma_x1: Some(&self.lgamma_x1),
            x: None,
            measured: self.measured.as_ref(),
            measured_groups: self.measured_groups.as_ref(),
            visible: self.visible.as_ref(),
            batch: self.batch.as_ref(),
            labels: self.labels.as_ref(),
        }
    }
}
