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
    /// Time matching two gene lists of N genes each (ids vs ids, symbols vs symbols, ids vs symbols).
    Overlap {
        #[arg(long, default_value_t = 20_000)]
        genes: usize,
        #[arg(long, default_value_t = 20)]
        repeat: usize,
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

fn bench_overlap(genes: usize, repeat: usize) -> anyhow::Result<()> {
    use scmz::genes::{compare_lists, reference::reference, GeneList};
    let t = Instant::now();
    let r = reference();
    let load_ms = t.elapsed().as_secs_f64() * 1e3;
    let mut pairs: Vec<(String, String)> = r.id_to_symbol.iter().map(|(i, s)| (i.clone(), s.clone())).collect();
    pairs.sort();
    anyhow::ensure!(
        pairs.len() >= genes + genes / 4,
        "the reference table has only {} genes",
        pairs.len()
    );
    // Two lists sharing three quarters of their genes.
    let a = &pairs[..genes];
    let b = &pairs[genes / 4..genes + genes / 4];
    let ids = |v: &[(String, String)]| v.iter().map(|p| p.0.clone()).collect::<Vec<_>>();
    let syms = |v: &[(String, String)]| v.iter().map(|p| p.1.clone()).collect::<Vec<_>>();
    let cases = [
        (
            "ids vs ids",
            GeneList::from_names("a", ids(a)),
            GeneList::from_names("b", ids(b)),
        ),
        (
            "symbols vs symbols",
            GeneList::from_names("a", syms(a)),
            GeneList::from_names("b", syms(b)),
        ),
        (
            "ids vs symbols",
            GeneList::from_names("a", ids(a)),
            GeneList::from_names("b", syms(b)),
        ),
    ];
    let mut rows = Vec::new();
    for (name, la, lb) in &cases {
        let mut ms = Vec::new();
        let mut found = 0;
        for _ in 0..repeat.max(1) {
            let t = Instant::now();
            found = compare_lists(la, lb).found;
            ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
        rows.push(serde_json::json!({"case": name, "genes": genes, "found": found, "median_ms": median(ms)}));
    }
    outln!("{}", serde_json::json!({"reference_load_ms": load_ms, "cases": rows}));
    Ok(())
}

pub fn run(b: Bench) -> anyhow::Result<()> {
    match b {
        Bench::Overlap { genes, repeat } => bench_overlap(genes, repeat),
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
            outln!("{out}");
            Ok(())
        }
    }
}
