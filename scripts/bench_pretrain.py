#!/usr/bin/env python3
"""When does a pretrained model pay off? `scmz compare` on small real query sets (CPU).

    cargo build --release
    ~/.cache/scmz/bench-venv/bin/python scripts/bench_pretrain.py [--sizes 300,1000] [--seeds 5]

A model is trained on the Kang CTRL cells (`../shared/data/kang_tutorial.h5ad`), then for each query
size n and seed, n STIM cells (a condition the model never saw) are drawn and `scmz compare` holds out
a fifth of them, trains a model of the same architecture from scratch on the rest (`--epochs`
budget) and scores both on the held-out cells: log-likelihood per cell and kNN label accuracy
(`seurat_annotations`). Prints one row per size: means over seeds and how many seeds each won.
"""
import argparse, json, os, subprocess, tempfile, time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
ENGINE = os.path.join(TARGET, "release", "scmz-engine")
# The engine as `scmz` starts it (scmz::jobs::engine_command: a short OpenMP spin); `env` execs it,
# so it is still the process timed and measured.
ENGINE_CMD = ["env", "GOMP_SPINCOUNT=" + os.environ.get("GOMP_SPINCOUNT", "1000"), ENGINE]

p = argparse.ArgumentParser()
p.add_argument("--kang", default=os.path.join(ROOT, "..", "shared", "data", "kang_tutorial.h5ad"))
p.add_argument("--sizes", default="300,1000")
p.add_argument("--seeds", type=int, default=5)
p.add_argument("--pretrain-epochs", type=int, default=60)
p.add_argument("--epochs", type=int, default=50, help="the from-scratch model's budget in compare")
p.add_argument("--json")
a = p.parse_args()

import anndata
import scipy.sparse as sp

LABEL = "seurat_annotations"
t0 = time.perf_counter()
results = {}
with tempfile.TemporaryDirectory() as tmp:
    kang = anndata.read_h5ad(a.kang)
    kang.obs_names_make_unique()
    kang.X = sp.csr_matrix(kang.X)
    ctrl = kang[kang.obs["stim"] == "CTRL"].copy()
    stim = kang[kang.obs["stim"] == "STIM"].copy()
    ctrl_path = os.path.join(tmp, "ctrl.h5ad")
    ctrl.write_h5ad(ctrl_path)
    zoo = os.path.join(tmp, "zoo")
    subprocess.run([*ENGINE_CMD, "train", ctrl_path, "--name", "kang-ctrl", "--zoo", zoo, "--epochs",
                    str(a.pretrain_epochs), "--label-key", LABEL, "--device", "cpu"],
                   check=True, stderr=subprocess.DEVNULL)
    print(f"pretrained on {ctrl.n_obs} CTRL cells, {a.pretrain_epochs} epochs ({time.perf_counter() - t0:.0f} s)",
          flush=True)
    for n in [int(s) for s in a.sizes.split(",")]:
        rows = []
        for seed in range(a.seeds):
            pick = np.random.default_rng(seed).choice(stim.n_obs, size=n, replace=False)
            q = os.path.join(tmp, f"stim_{n}_{seed}.h5ad")
            stim[np.sort(pick)].copy().write_h5ad(q)
            out = subprocess.run([*ENGINE_CMD, "compare", q, "--model", "kang-ctrl", "--zoo", zoo, "--label-key", LABEL,
                                  "--epochs", str(a.epochs), "--seeds", "1", "--json"],
                                 check=True, capture_output=True, text=True)
            r = json.loads(out.stdout)["rows"][0]
            rows.append(r)
            print(f"  n={n} seed {seed}: ll {r['pretrained_ll']:.1f} vs {r['scratch_ll']:.1f}, "
                  f"accuracy {r['pretrained_accuracy']:.3f} vs {r['scratch_accuracy']:.3f}", flush=True)
        results[n] = rows

print(f"\nKang: a model pretrained on CTRL vs one trained from scratch on n STIM cells ({a.seeds} seeds, "
      f"a fifth held out for scoring; {time.perf_counter() - t0:.0f} s in all)")
print(f"{'n':>6} {'pretrained ll':>14} {'scratch ll':>11} {'wins':>5} {'pretrained acc':>15} {'scratch acc':>12} {'wins':>5}")
for n, rows in results.items():
    pl = np.array([r["pretrained_ll"] for r in rows]); sl = np.array([r["scratch_ll"] for r in rows])
    pa = np.array([r["pretrained_accuracy"] for r in rows]); sa = np.array([r["scratch_accuracy"] for r in rows])
    print(f"{n:>6} {pl.mean():>14.1f} {sl.mean():>11.1f} {int((pl > sl).sum()):>3}/{len(rows)} "
          f"{pa.mean():>15.3f} {sa.mean():>12.3f} {int((pa > sa).sum()):>3}/{len(rows)}")
if a.json:
    json.dump({str(k): v for k, v in results.items()}, open(a.json, "w"), indent=1)
