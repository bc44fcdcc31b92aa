#!/usr/bin/env python3
"""Benchmark: does training throughput and memory stay flat as the number of cells grows?

    cargo build --release
    ~/.cache/scmz/venv/bin/python scripts/bench_scale.py [--cells 10000,100000,1000000] [--epochs 1]

Builds datasets of N cells by stacking copies of tests/data/mouse_10k_subset.h5ad (1,000 genes,
written once per size with anndata into a temporary folder), trains scmz on each for the same
number of epochs (batch 128, nb, 1x128 hidden, 10 latent, CPU) and prints training cells/s and the
engine's peak resident memory. scvi-tools measured on this kind of machine: 5,700 cells/s at 50,000
cells but 368 cells/s at 1,000,000 (5.3 GB RAM).
"""
import argparse, json, os, subprocess, tempfile, time

import anndata
import scipy.sparse as sp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
ENGINE = os.path.join(TARGET, "release", "scmz-engine")
# The engine as `scmz` starts it (scmz::jobs::engine_command: a short OpenMP spin); `env` execs it,
# so it is still the process timed and measured.
ENGINE_CMD = ["env", "GOMP_SPINCOUNT=" + os.environ.get("GOMP_SPINCOUNT", "1000"), ENGINE]

p = argparse.ArgumentParser()
p.add_argument("--cells", default="10000,100000,1000000")
p.add_argument("--epochs", type=int, default=1)
a = p.parse_args()

base = anndata.read_h5ad(os.path.join(ROOT, "tests/data/mouse_10k_subset.h5ad"))
base.var_names_make_unique()
rows = []
with tempfile.TemporaryDirectory() as tmp:
    for n in [int(c) for c in a.cells.split(",")]:
        reps = -(-n // base.n_obs)
        X = sp.vstack([base.X] * reps, format="csr")[:n]
        ad = anndata.AnnData(X=X, var=base.var)
        ad.obs_names = [f"c{i}" for i in range(n)]
        path = os.path.join(tmp, f"cells_{n}.h5ad")
        t = time.perf_counter()
        ad.write_h5ad(path)
        write_s = time.perf_counter() - t
        del ad, X
        # Flushed before the timed run, whose cores the kernel's write-back would otherwise share.
        os.sync()
        zoo = os.path.join(tmp, f"zoo_{n}")
        proc = subprocess.Popen([*ENGINE_CMD, "train", path, "--name", "scale", "--zoo", zoo, "--epochs", str(a.epochs),
                                 "--batch-size", "128", "--likelihood", "nb", "--patience", "0", "--device", "cpu",
                                 "--reference-cells", "1000"], stderr=subprocess.DEVNULL)
        # The engine's own peak (VmHWM), polled: getrusage's maxrss of a child would count the memory
        # of this Python process, which it was forked from before exec.
        peak_kib = 0
        while proc.poll() is None:
            try:
                with open(f"/proc/{proc.pid}/status") as f:
                    for line in f:
                        if line.startswith("VmHWM:"):
                            peak_kib = max(peak_kib, int(line.split()[1]))
            except OSError:
                pass
            time.sleep(0.05)
        assert proc.returncode == 0, f"training on {n} cells failed"
        m = json.load(open(os.path.join(zoo, "scale", "manifest.json")))
        rows.append((n, m["training"]["cells_per_s"], m["training"]["seconds"], peak_kib / 1024,
                     os.path.getsize(path) / 2**20, write_s))
        os.remove(path)

print(f"scmz, mouse_10k_subset stacked, {a.epochs} epoch(s), batch 128, nb, 1x128 hidden, 10 latent, CPU")
print(f"{'cells':>10} {'cells/s':>10} {'train s':>9} {'peak RSS MiB':>13} {'file MiB':>9}")
for n, cps, secs, rss, size, _ in rows:
    print(f"{n:>10,} {cps:>10,.0f} {secs:>9.1f} {rss:>13,.0f} {size:>9,.0f}")
