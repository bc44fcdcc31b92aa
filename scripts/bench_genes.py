#!/usr/bin/env python3
"""Benchmark: training cost as the gene count grows (1,000 to 33,000 genes), scmz vs scvi-tools.

    cargo build --release
    ~/.cache/scmz/bench-venv/bin/python scripts/bench_genes.py [--cells 10000] [--epochs 2]

Cells: the 559-cell whole-transcriptome celltypist sample stacked to --cells cells; genes: the first
G genes by total count. Each run is its own process so peak memory is its own. Same architecture,
batch size and likelihood for both (1 x 128 hidden, 10 latent, NB, batch 128, CPU).
"""
import argparse, json, os, resource, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
ENGINE = os.path.join(TARGET, "release", "scmz-engine")

SCVI = r'''
import sys, time, resource, anndata, scvi, torch
torch.set_num_threads(2)
a = anndata.read_h5ad(sys.argv[1]); epochs = int(sys.argv[2])
scvi.settings.seed = 0
scvi.model.SCVI.setup_anndata(a)
m = scvi.model.SCVI(a, n_hidden=128, n_latent=10, n_layers=1, gene_likelihood="nb")
t = time.perf_counter()
m.train(max_epochs=epochs, batch_size=128, accelerator="cpu", train_size=0.9, enable_progress_bar=False,
        check_val_every_n_epoch=1)
secs = time.perf_counter() - t
print(int(round(0.9 * a.n_obs)) * epochs / secs, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
'''

p = argparse.ArgumentParser()
p.add_argument("--cells", type=int, default=10000)
p.add_argument("--epochs", type=int, default=2)
p.add_argument("--genes", default="1000,5000,20000,33000")
p.add_argument("--skip-scvi", action="store_true")
p.add_argument("--engine", default=ENGINE, help="the scmz-engine to run (default: the release build)")
a = p.parse_args()
# The engine as `scmz` starts it (scmz::jobs::engine_command: a short OpenMP spin); `env` execs it,
# so it is still the process timed and measured.
ENGINE_CMD = ["env", "GOMP_SPINCOUNT=" + os.environ.get("GOMP_SPINCOUNT", "1000"), a.engine]

import anndata, numpy as np, scipy.sparse as sp
src = anndata.read_h5ad(os.path.join(ROOT, "tests/data/celltypist_sample_counts.h5ad"))
reps = -(-a.cells // src.n_obs)
X = sp.vstack([src.X] * reps).tocsr()[: a.cells]
order = np.argsort(-np.asarray(src.X.sum(axis=0)).ravel(), kind="stable")
rows = []
with tempfile.TemporaryDirectory() as tmp:
    for g in [int(x) for x in a.genes.split(",")]:
        g = min(g, src.n_vars)
        keep = np.sort(order[:g])
        ad = anndata.AnnData(X=X[:, keep].astype(np.float32), var=src.var.iloc[keep].copy())
        ad.obs_names = [f"c{i}" for i in range(a.cells)]
        path = os.path.join(tmp, f"g{g}.h5ad")
        ad.write_h5ad(path)
        # Flush the new file now, so that the kernel's write-back does not share the cores with
        # the first timed run.
        os.sync()
        zoo = os.path.join(tmp, f"zoo{g}")
        # A fresh wrapper process per run, so the peak memory is this run's alone.
        wrap = ("import subprocess, resource, sys; subprocess.run(sys.argv[1:], check=True, stderr=subprocess.DEVNULL);"
                " print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)")
        scmz_rss = float(subprocess.run([sys.executable, "-c", wrap, *ENGINE_CMD, "train", path, "--name", "b", "--zoo", zoo,
                                         "--epochs", str(a.epochs), "--patience", "0"],
                                        check=True, capture_output=True, text=True).stdout.split()[-1])
        m = json.load(open(os.path.join(zoo, "b", "manifest.json")))
        start = next(json.loads(l) for l in open(os.path.join(zoo, "b", "history.jsonl")) if '"start"' in l)
        scmz_cps = start["n_train"] * a.epochs / m["training"]["seconds"]
        scvi_cps = scvi_rss = float("nan")
        if not a.skip_scvi:
            out = subprocess.run([sys.executable, "-c", SCVI, path, str(a.epochs)], check=True, capture_output=True,
                                 text=True).stdout.split()
            scvi_cps, scvi_rss = float(out[-2]), float(out[-1])
        rows.append((g, scmz_cps, scmz_rss, scvi_cps, scvi_rss))
        print(f"{g:>6} genes: scmz {scmz_cps:8.0f} cells/s {scmz_rss:7.0f} MiB | scvi-tools {scvi_cps:8.0f} cells/s "
              f"{scvi_rss:7.0f} MiB | ratio {scmz_cps / scvi_cps:5.2f}x", flush=True)
print(f"{a.cells} cells, {a.epochs} epochs, batch 128, nb, 1x128 hidden, 10 latent, CPU, peak RSS per run")
