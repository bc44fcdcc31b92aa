#!/usr/bin/env python3
"""Benchmark: scmz training vs scvi-tools, same architecture, batch size, likelihood and epochs, CPU.

    cargo build --release
    python3 -m venv ~/.cache/scmz/bench-venv && ~/.cache/scmz/bench-venv/bin/pip install scvi-tools
    ~/.cache/scmz/bench-venv/bin/python scripts/bench_train.py [DATA.h5ad] [--epochs N] [--device cpu|cuda]

scvi-tools lives in its own venv so that its torch never replaces the one scmz links against.
Prints cells/s (training cells x epochs / training seconds, validation passes included) and the
final validation ELBO per cell (reconstruction NLL + KL) of each, and peak memory. Both train on
the same cells and are validated on the same held-out 10 %: scvi-tools is given scmz's seeded
split (`external_indexing`), so the two ELBOs are comparable.
"""
import argparse, json, os, resource, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
ENGINE = os.path.join(TARGET, "release", "scmz-engine")

p = argparse.ArgumentParser()
p.add_argument("data", nargs="?", default=os.path.join(ROOT, "tests/data/mouse_10k_subset.h5ad"))
p.add_argument("--epochs", type=int, default=10)
p.add_argument("--device", default="cpu")
p.add_argument("--skip-scvi", action="store_true")
p.add_argument("--seed", type=int, default=0)
p.add_argument("--genes", default="all", help="scmz's --genes (e.g. hvg:2000); scvi-tools trains on the same genes")
p.add_argument("--engine", default=ENGINE, help="the scmz-engine to run (default: the release build)")
a = p.parse_args()
# The engine as `scmz` starts it (scmz::jobs::engine_command: a short OpenMP spin); `env` execs it,
# so it is still the process timed and measured.
ENGINE_CMD = ["env", "GOMP_SPINCOUNT=" + os.environ.get("GOMP_SPINCOUNT", "1000"), a.engine]


def scmz_validation(seed, n):
    """scmz's train/validation split (train/loader.rs `is_validation`: SplitMix64 of seed * 31 + cell)."""
    M = (1 << 64) - 1
    val = []
    for i in range(n):
        x = ((seed * 31 + i) & M) ^ 0x9E3779B97F4A7C15
        x = (x + 0x9E3779B97F4A7C15) & M
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & M
        val.append((x ^ (x >> 31)) % 10 == 0)
    return val


rows = []
with tempfile.TemporaryDirectory() as zoo:
    t = time.perf_counter()
    subprocess.run([*ENGINE_CMD, "train", a.data, "--name", "bench", "--zoo", zoo, "--epochs", str(a.epochs),
                    "--batch-size", "128", "--likelihood", "nb", "--n-hidden", "128", "--n-latent", "10",
                    "--n-layers", "1", "--patience", "0", "--device", a.device, "--seed", str(a.seed), "--genes", a.genes], check=True,
                   stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    m = json.load(open(os.path.join(zoo, "bench", "manifest.json")))
    hist = [json.loads(l) for l in open(os.path.join(zoo, "bench", "history.jsonl"))]
    start = next(h for h in hist if h["event"] == "start")
    n_val_scmz = start["n_val"]
    secs = m["training"]["seconds"]
    rows.append(("scmz", start["n_train"] * a.epochs / secs, m["metrics"]["final_val"]["elbo"], secs, wall,
                 resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024))

if not a.skip_scvi:
    import anndata, scvi, torch
    torch.set_num_threads(os.cpu_count())
    ad = anndata.read_h5ad(a.data)
    if a.genes != "all":
        chosen = set(m["genes"]["names"])
        ad = ad[:, [g in chosen for g in ad.var_names]].copy()
        assert ad.n_vars == len(m["genes"]["names"]), (ad.n_vars, len(m["genes"]["names"]))
    ad.var_names_make_unique()
    scvi.settings.seed = a.seed
    scvi.model.SCVI.setup_anndata(ad)
    model = scvi.model.SCVI(ad, n_hidden=128, n_latent=10, n_layers=1, gene_likelihood="nb", dropout_rate=0.1)
    import numpy as np
    is_val = np.array(scmz_validation(a.seed, ad.n_obs))
    assert is_val.sum() == n_val_scmz, (is_val.sum(), n_val_scmz)
    split = [np.flatnonzero(~is_val), np.flatnonzero(is_val), np.array([], dtype=int)]
    t = time.perf_counter()
    model.train(max_epochs=a.epochs, batch_size=128, accelerator=a.device if a.device != "cuda" else "gpu",
                check_val_every_n_epoch=1, early_stopping=False, enable_progress_bar=False,
                datasplitter_kwargs={"external_indexing": split})
    secs = time.perf_counter() - t
    n_train = len(split[0])
    val = float(model.history["elbo_validation"].iloc[-1, 0])
    rows.append((f"scvi-tools {scvi.__version__}", n_train * a.epochs / secs, val, secs, secs,
                 resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))

print(f"data: {os.path.basename(a.data)}, genes {a.genes}, {a.epochs} epochs, batch 128, nb, 1x128 hidden, 10 latent, device {a.device}, seed {a.seed}")
print(f"{'tool':24} {'cells/s':>10} {'val ELBO':>10} {'train s':>9} {'wall s':>8} {'peak RSS MiB':>13}")
for name, cps, val, secs, wall, rss in rows:
    print(f"{name:24} {cps:10.0f} {val:10.2f} {secs:9.1f} {wall:8.1f} {rss:13.0f}")
if len(rows) == 2:
    print(f"scmz / scvi-tools throughput: {rows[0][1] / rows[1][1]:.2f}x")
