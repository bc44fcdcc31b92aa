#!/usr/bin/env python3
"""Benchmark: `scmz inspect` and a full matrix read against Python anndata's read_h5ad.

Run with the set-up venv's python after `cargo build --release`:
    ~/.cache/scmz/venv/bin/python scripts/bench_read.py [FILE.h5ad ...]
Prints one row per file: median milliseconds over REPEAT runs, and peak memory of streaming.
"""
import json, os, statistics, subprocess, sys, time

REPEAT = 7
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
SCMZ = os.path.join(TARGET, "release", "scmz")
FILES = sys.argv[1:] or [os.path.join(ROOT, "tests/data", f) for f in
                         ("mouse_10k_subset.h5ad", "pbmc68k_counts.h5ad", "celltypist_sample_counts.h5ad")]

import anndata  # noqa: E402  (timed separately: import is paid once per process)


def med(f):
    times = []
    for _ in range(REPEAT):
        t = time.perf_counter(); f(); times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def wall(cmd):
    return med(lambda: subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL))


def peak_rss(chunk_rows, path):
    out = subprocess.run([SCMZ, "bench", "read", path, "--repeat", "1", "--chunk-rows", str(chunk_rows)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


print(f"{'file':32} {'scmz open':>10} {'scmz inspect':>13} {'ad backed':>10} {'scmz read':>10} {'ad read_h5ad':>13}"
      f" {'RSS stream':>11} {'RSS whole':>10}")
for path in FILES:
    r = json.loads(subprocess.run([SCMZ, "bench", "read", path, "--repeat", str(REPEAT), "--chunk-rows", "1000"],
                                  check=True, capture_output=True, text=True).stdout)
    inspect_wall = wall([SCMZ, "inspect", path])
    backed = med(lambda: anndata.read_h5ad(path, backed="r").file.close())
    full = med(lambda: anndata.read_h5ad(path))
    stream, whole = peak_rss(1000, path), peak_rss(0, path)
    print(f"{os.path.basename(path):32} {r['open_ms']:9.1f}ms {inspect_wall:12.1f}ms {backed:9.1f}ms"
          f" {r['read_ms']:9.1f}ms {full:12.1f}ms {stream['peak_rss_mib']:9.1f}MiB {whole['peak_rss_mib']:8.1f}MiB")
print("scmz open/read: in-process medians (read = all chunks of 1000 cells); scmz inspect: whole process;"
      " ad backed: anndata.read_h5ad(backed='r') (metadata, X left on disk); ad read_h5ad: full in-memory read.")
