//! `scmz bench ...`: measurements quoted in issues, not tests.

use std::path::PathBuf;
use std::time::Instant;

use scmz::data::Dataset;

#[derive(clap::Subcommand)]
pub enum Bench {
    /// Time opening a dataset (what `scmz inspect` does) and reading its whole matrix.
    Read {
        path: PathBuf,
        /// Repetitions; the median is reported.
        #[arg(long, default_value_t = 5)]
        repeat: usize,
        /// Cells per chunk when streaming; 0 reads the matrix in one piece.
        #[arg(long, default_value_t = 1000)]
        chunk_rows: usize,
    },
}

/// Peak resident memory of this process so far, in MiB (Linux `VmHWM`).
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

pub fn run(b: Bench) -> anyhow::Result<()> {
    match b {
        Bench::Read {
            path,
            repeat,
            chunk_rows,
        } => {
            let repeat = repeat.max(1);
            let rss_before = peak_rss_mib();
            let mut open_ms = Vec::new();
            let mut read_ms = Vec::new();
            let mut total = 0f64;
            let mut max_chunk = 0usize;
            for _ in 0..repeat {
                let t = Instant::now();
                let ds = Dataset::open(&path)?;
                open_ms.push(t.elapsed().as_secs_f64() * 1e3);
                let t = Instant::now();
                total = 0.0;
                if chunk_rows == 0 {
                    let all = ds.read_all()?;
                    max_chunk = all.heap_bytes();
                    total = all.row_sums().iter().sum();
                } else {
                    for chunk in ds.chunks(chunk_rows) {
                        let chunk = chunk?;
                        max_chunk = max_chunk.max(chunk.heap_bytes());
                        total += chunk.row_sums().iter().sum::<f64>();
                    }
                }
                read_ms.push(t.elapsed().as_secs_f64() * 1e3);
            }
            let out = serde_json::json!({
                "path": path,
                "open_ms": median(open_ms),
                "read_ms": median(read_ms),
                "chunk_rows": chunk_rows,
                "largest_chunk_mib": max_chunk as f64 / (1 << 20) as f64,
                "peak_rss_mib_before": rss_before,
                "peak_rss_mib": peak_rss_mib(),
                "sum_of_values": total,
            });
            println!("{out}");
            Ok(())
        }
    }
}
