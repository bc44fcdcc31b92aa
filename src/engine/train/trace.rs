//! Step traces for replaying a run in scvi-tools (`SCMZ_TRACE_DIR`, `scripts/bench_parity.py`).

use std::path::PathBuf;

use anyhow::Context;
use tch::nn;

use crate::model::stored::stored_variables;
use crate::model::stored::write_atomic;

/// Diagnostics, not a user feature: with `SCMZ_TRACE_DIR` set, training writes its initial
/// weights there (`init.safetensors`, PyTorch's layout) and every step's cells and loss terms
/// (`steps.jsonl`), so that `scripts/bench_parity.py` can replay the same steps in scvi-tools from
/// the same weights; `SCMZ_TRACE_NOISE=T` decodes the latent mean plus T/10 standard deviations
/// instead of a random draw (deterministic steps).
pub(crate) struct Trace {
    steps: std::io::BufWriter<std::fs::File>,
    pub fixed_noise: Option<i8>,
    /// `SCMZ_TRACE_DROPOUT=fixed`: dropout drops a fixed pattern (`model::layers::fixed_dropout_mask`).
    pub fixed_dropout: bool,
}

impl Trace {
    pub fn start(vs: &nn::VarStore) -> anyhow::Result<Option<Trace>> {
        let Some(dir) = std::env::var_os("SCMZ_TRACE_DIR").map(PathBuf::from) else {
            return Ok(None);
        };
        std::fs::create_dir_all(&dir)
            .map_err(|e| anyhow::anyhow!("{}: cannot create: {}", dir.display(), scmz::files::describe(&e)))?;
        write_atomic(&stored_variables(vs), &dir.join("init.safetensors"))?;
        let f = std::fs::File::create(dir.join("steps.jsonl"))
            .with_context(|| format!("{}: cannot create steps.jsonl", dir.display()))?;
        Ok(Some(Trace {
            steps: std::io::BufWriter::new(f),
            fixed_noise: std::env::var("SCMZ_TRACE_NOISE").ok().and_then(|v| v.parse().ok()),
            fixed_dropout: std::env::var("SCMZ_TRACE_DROPOUT").is_ok_and(|v| v == "fixed"),
        }))
    }

    pub fn step(&mut self, epoch: usize, rows: &[usize], recon: f64, kl: f64, kl_weight: f64) -> anyhow::Result<()> {
        use std::io::Write;
        let line = serde_json::json!({"epoch": epoch, "rows": rows, "recon": recon, "kl": kl, "kl_weight": kl_weight});
        writeln!(self.steps, "{line}")?;
        Ok(())
    }
}
