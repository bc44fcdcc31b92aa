#!/usr/bin/env python3
"""Device check for scmz's GPU path, side by side with scvi-tools on the same device (issue #20).

    scripts/gpu-bench.sh ENGINE [--device cuda|cpu] [--quick]      (sets up, then runs this)

Makes its data on the spot (synthetic counts at 2,000 and 20,000 genes, and the mouse sample
stacked to 1,000,000 cells, written as h5ad under --work), then:
1. correctness: the same model trained 3 epochs on the CPU and on the device from one seed
   (validation ELBOs), and projections of each model on the CPU and on the device (latents);
2. speed: scmz at batch 128, 1024 and 4096 on each dataset (cells/s of the last epoch, epoch
   seconds, device memory peak, host RSS peak, seconds from start to the first step, validation
   ELBO), and scvi-tools at the same architecture, batch sizes and epochs where the time budget
   allows (each peer run has its own time limit).
Prints one table and writes every figure to --out (JSON). `--quick` shrinks the data for a dry
run on the CPU.
"""
import argparse, json, os, resource, shutil, subprocess, sys, tempfile, threading, time, warnings

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T0 = time.time()


def log(msg):
    print(f"[{time.time() - T0:6.1f}s] {msg}", flush=True)


def scmz_validation(seed, n):
    """scmz's validation cells (train/loader.rs `is_validation`: SplitMix64 of seed * 31 + cell, 1 in 10)."""
    with np.errstate(over="ignore"):
        x = (np.uint64(seed * 31) + np.arange(n, dtype=np.uint64)) ^ np.uint64(0x9E3779B97F4A7C15)
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return (x ^ (x >> np.uint64(31))) % np.uint64(10) == 0


# --- data -------------------------------------------------------------------------------------

def write_h5ad(path, X, genes):
    import anndata, pandas as pd
    # Plain object indices: pandas 3 makes string indices Arrow arrays, which anndata 0.12 will not write.
    names = lambda v: pd.Index(np.array(v, dtype=object), dtype=object)
    ad = anndata.AnnData(X=X, obs=pd.DataFrame(index=names([f"c{i}" for i in range(X.shape[0])])),
                         var=pd.DataFrame(index=names(genes)))
    ad.write_h5ad(path)


def tile_csr(pool, n_cells):
    """`pool`'s rows repeated until there are n_cells (a large file from a small sample)."""
    import scipy.sparse as sp
    reps = -(-n_cells // pool.shape[0])
    nnz = pool.indptr[-1]
    indptr = (pool.indptr[:-1][None, :] + (np.arange(reps, dtype=np.int64) * nnz)[:, None]).ravel()[:n_cells]
    end = indptr[-1] + (pool.indptr[(n_cells - 1) % pool.shape[0] + 1] - pool.indptr[(n_cells - 1) % pool.shape[0]])
    indptr = np.append(indptr, end)
    data = np.tile(pool.data, reps)[:end]
    indices = np.tile(pool.indices, reps)[:end]
    return sp.csr_matrix((data, indices, indptr), shape=(n_cells, pool.shape[1]))


def synthetic(path, n_cells, n_genes, pool_cells, umis, seed):
    """Negative binomial counts (theta 5) from 12 cell types over skewed gene means, a pool of
    distinct cells stacked to n_cells."""
    import scipy.sparse as sp
    rng = np.random.default_rng(seed)
    base = rng.lognormal(0.0, 1.5, n_genes)
    fx = np.where(rng.random((12, n_genes)) < 0.15, rng.lognormal(0.0, 1.2, (12, n_genes)), 1.0)
    probs = base * fx
    probs /= probs.sum(1, keepdims=True)
    parts = []
    for start in range(0, pool_cells, 2000):
        m = min(2000, pool_cells - start)
        t = rng.integers(0, 12, m)
        lib = rng.lognormal(np.log(umis), 0.5, m)
        mean = (lib[:, None] * probs[t]).astype(np.float32)
        counts = rng.poisson(rng.gamma(5.0, mean / 5.0)).astype(np.float32)
        parts.append(sp.csr_matrix(counts))
    pool = sp.vstack(parts).tocsr()
    X = tile_csr(pool, n_cells)
    write_h5ad(path, X, [f"gene{g}" for g in range(n_genes)])
    return X.nnz / n_cells


def mouse_stacked(path, n_cells):
    import anndata
    m = anndata.read_h5ad(os.path.join(ROOT, "tests/data/mouse_10k_subset.h5ad"))
    m.var_names_make_unique()
    import scipy.sparse as sp
    X = tile_csr(sp.csr_matrix(m.X, dtype=np.float32), n_cells)
    write_h5ad(path, X, list(m.var_names))
    return X.nnz / n_cells


# --- measuring --------------------------------------------------------------------------------

class GpuMemory:
    """Peak device memory in use (MiB, all processes) and the mean utilisation (%) while a run
    lasts, from nvidia-smi."""

    def __init__(self):
        self.peak, self.proc, self.util = None, None, []
        if shutil.which("nvidia-smi"):
            self.proc = subprocess.Popen(["nvidia-smi", "--query-gpu=memory.used,utilization.gpu", "--format=csv,noheader,nounits",
                                          "-lms", "100"], stdout=subprocess.PIPE, text=True)
            self.peak = 0
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            try:
                mem, util = (int(v) for v in line.split(","))
                self.peak = max(self.peak, mem)
                self.util.append(util)
            except ValueError:
                pass

    def stop(self):
        if self.proc:
            self.proc.terminate()
        return self.peak, (sum(self.util) / len(self.util) if self.util else None)


def measured(cmd, timeout, env=None):
    """Runs cmd; returns (returncode, wall s, host RSS peak MiB, (device memory peak MiB, mean
    utilisation %), stdout)."""
    wrapper = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, text=True);"
               " sys.stdout.write(r.stdout); print('RSS', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss);"
               " sys.exit(r.returncode)")
    gpu = GpuMemory()
    t = time.perf_counter()
    try:
        r = subprocess.run([sys.executable, "-c", wrapper] + cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, timeout=timeout, env=env)
        rc, out, err = r.returncode, r.stdout, r.stderr
    except subprocess.TimeoutExpired as e:
        rc, out, err = "timeout", (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or ""), ""
    wall = time.perf_counter() - t
    peak = gpu.stop()
    rss = None
    lines = []
    for line in out.splitlines():
        if line.startswith("RSS "):
            rss = int(line.split()[1]) / 1024
        else:
            lines.append(line)
    if rc != 0:
        log(f"  exit {rc}: {' '.join(cmd[:3])} ...: {err.strip()[-600:]}")
    return rc, wall, rss, peak, "\n".join(lines)


def scmz_train(a, data, name, zoo, device, batch, epochs, seed=0, timeout=120):
    cmd = [a.engine, "train", data, "--name", name, "--zoo", zoo, "--epochs", str(epochs), "--batch-size", str(batch),
           "--likelihood", "nb", "--n-hidden", "128", "--n-latent", "10", "--n-layers", "1", "--patience", "0",
           "--device", device, "--seed", str(seed)]
    rc, wall, rss, gpu, _ = measured(cmd, timeout)
    if rc != 0:
        return {"error": f"exit {rc}"}
    hist = [json.loads(l) for l in open(os.path.join(zoo, name, "history.jsonl"))]
    ep = [h for h in hist if h["event"] == "epoch"]
    start = next(h for h in hist if h["event"] == "start")
    last = ep[-1]
    return {
        "cells_per_s": last["cells_per_s"],
        "first_epoch_cells_per_s": ep[0]["cells_per_s"],
        "epoch_s": start["n_train"] / last["cells_per_s"],
        "elapsed_s": last["elapsed_s"],
        "wall_s": wall,
        "startup_s": wall - last["elapsed_s"],
        "val_elbo": last["val"]["elbo"],
        "rss_mib": rss,
        "gpu_mib": gpu[0],
        "gpu_util": gpu[1],
        "n_train": start["n_train"],
    }


PEER = r"""
import json, os, sys, time, resource
import numpy as np
sys.path.insert(0, os.path.dirname(sys.argv[1]))
from gpu_bench import scmz_validation
data, batch, epochs, seed, accel = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
t = time.perf_counter()
import anndata, scvi, torch
ad = anndata.read_h5ad(data)
ad.var_names_make_unique()
load_s = time.perf_counter() - t
scvi.settings.seed = seed
scvi.model.SCVI.setup_anndata(ad)
m = scvi.model.SCVI(ad, n_hidden=128, n_latent=10, n_layers=1, gene_likelihood="nb", dropout_rate=0.1)
is_val = scmz_validation(seed, ad.n_obs)
split = [np.flatnonzero(~is_val), np.flatnonzero(is_val), np.array([], dtype=int)]
t = time.perf_counter()
m.train(max_epochs=epochs, batch_size=batch, accelerator=accel, devices=1, check_val_every_n_epoch=1,
        early_stopping=False, enable_progress_bar=False, datasplitter_kwargs={"external_indexing": split})
secs = time.perf_counter() - t
print(json.dumps({"cells_per_s": len(split[0]) * epochs / secs, "train_s": secs, "load_s": load_s,
                  "val_elbo": float(m.history["elbo_validation"].iloc[-1, 0]),
                  "torch_gpu_mib": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
                  "scvi": scvi.__version__}))
"""


def peer_train(a, data, batch, epochs, timeout):
    accel = "gpu" if a.device == "cuda" else "cpu"
    cmd = [sys.executable, "-c", PEER, os.path.abspath(__file__), data, str(batch), str(epochs), "0", accel]
    rc, wall, rss, gpu, out = measured(cmd, timeout)
    if rc != 0:
        return {"error": f"exit {rc}"}
    r = json.loads(out.strip().splitlines()[-1])
    r.update(wall_s=wall, rss_mib=rss, gpu_mib=gpu[0], gpu_util=gpu[1], epoch_s=r["train_s"] / epochs,
             startup_s=wall - r["train_s"])
    return r


def latents_csv(path):
    import pandas as pd
    t = pd.read_csv(path)
    return t[[c for c in t.columns if c.startswith("latent_")]].to_numpy(dtype=np.float64)


SHORT = {"s2k": "synthetic 2,000 genes", "s20k": "synthetic 20,000 genes", "mouse": "mouse_10k stacked"}


def run_list(text):
    """DATA:BATCH pairs, comma-separated (DATA one of SHORT's keys)."""
    out = []
    for item in text.split(","):
        data, _, batch = item.partition(":")
        if data not in SHORT or not batch.isdigit() or int(batch) < 2:
            raise argparse.ArgumentTypeError(
                f"`{item}`: give DATA:BATCH with DATA one of {', '.join(SHORT)} and BATCH a whole number of 2 or more")
        out.append(f"{data}:{int(batch)}")
    return out


def main():
    warnings.filterwarnings("ignore", category=UserWarning)
    p = argparse.ArgumentParser()
    p.add_argument("--engine", required=True)
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "scmz-gpu-bench"))
    p.add_argument("--out", default=None, help="write every figure here (JSON)")
    p.add_argument("--quick", action="store_true", help="small data, for a dry run on the CPU")
    p.add_argument("--skip-scvi", action="store_true")
    p.add_argument("--skip-speed", action="store_true", help="data and correctness only")
    # Batch 128 last: at 7,000 steps an epoch it is the slowest (about 25 s an epoch on an H200).
    p.add_argument("--runs", type=run_list, default="s2k:1024,s2k:4096,s20k:1024,s20k:4096,mouse:1024,mouse:4096,s2k:128",
                   help="DATA:BATCH pairs, DATA one of s2k, s20k, mouse, in the order to run")
    p.add_argument("--peer-runs", type=run_list, default="s2k:1024,s20k:1024,s2k:4096,s2k:128",
                   help="the pairs scvi-tools runs too, in this order, while --budget-s lasts")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--budget-s", type=float, default=440, help="peer runs that would start after this are skipped")
    a = p.parse_args()
    os.makedirs(a.work, exist_ok=True)
    res = {"device": a.device, "epochs": a.epochs, "data": {}, "correctness": {}, "speed": []}
    try:
        res["gpu"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                                    capture_output=True, text=True).stdout.strip()
    except FileNotFoundError:
        res["gpu"] = None
    res["engine_devices"] = subprocess.run([a.engine, "devices"], capture_output=True, text=True).stdout.strip()
    log(f"gpu: {res['gpu']}; engine devices: {res['engine_devices']}")
    if a.device == "cuda" and not json.loads(res["engine_devices"] or "{}").get("cuda"):
        sys.exit(f"gpu-bench: {a.engine} sees no CUDA device here; run with --device cpu for a dry run")

    # Data, made here.
    n2k, n20k, nmouse = (20_000, 5_000, 20_000) if a.quick else (1_000_000, 200_000, 1_000_000)
    needed = {SHORT[r.split(":")[0]] for r in ([] if a.skip_speed else a.runs)}
    files = {
        "synthetic 2,000 genes": (os.path.join(a.work, "synth2k.h5ad"), lambda f: synthetic(f, n2k, 2000, min(n2k, 50_000), 800, 1)),
        "synthetic 20,000 genes": (os.path.join(a.work, "synth20k.h5ad"), lambda f: synthetic(f, n20k, 20000, min(n20k, 10_000), 2500, 2)),
        "mouse_10k stacked": (os.path.join(a.work, "mouse1m.h5ad"), lambda f: mouse_stacked(f, nmouse)),
    }
    for label, (f, make) in files.items():
        if label not in needed:
            continue
        t = time.perf_counter()
        nnz = make(f)
        res["data"][label] = {"file": f, "nnz_per_cell": nnz, "seconds": time.perf_counter() - t,
                              "bytes": os.path.getsize(f)}
        log(f"data: {label}: {nnz:.0f} nonzeros per cell, {os.path.getsize(f) / 2**30:.2f} GiB, {time.perf_counter() - t:.1f} s")

    # 1. Correctness: CPU against the device, the same seed.
    mouse = os.path.join(ROOT, "tests/data/mouse_10k_subset.h5ad")
    zoo = tempfile.mkdtemp(prefix="zoo-", dir=a.work)  # its own, removed at the end
    c = res["correctness"]
    devices = list(dict.fromkeys(("cpu", a.device)))
    for dev in devices:
        r = scmz_train(a, mouse, f"m-{dev}", zoo, dev, 128, 3)
        c[f"train_{dev}"] = r
        log(f"correctness: 3 epochs on {dev}: {r}")
    if "val_elbo" in c["train_cpu"] and "val_elbo" in c[f"train_{a.device}"]:
        e0, e1 = c["train_cpu"]["val_elbo"], c[f"train_{a.device}"]["val_elbo"]
        c["val_elbo_rel_diff"] = abs(e1 - e0) / abs(e0)
    for model in dict.fromkeys((f"m-{a.device}", "m-cpu")):
        lat = {}
        for dev in devices:
            out = os.path.join(a.work, f"proj-{model}-{dev}.csv")
            if os.path.exists(out):
                os.remove(out)
            rc, *_ = measured([a.engine, "project", mouse, "--model", model, "--zoo", zoo, "-o", out,
                               "--device", dev], 300)
            if rc == 0:
                lat[dev] = latents_csv(out)
        if len(lat) == len(devices):
            c[f"project_{model}_max_abs_diff"] = float(np.abs(lat["cpu"] - lat[a.device]).max())
            log(f"correctness: {model} projected on cpu and {a.device}: max |diff| {c[f'project_{model}_max_abs_diff']:.2e}")

    # A model with scANVI's classifier head, trained and projected on the device (its held-out
    # metrics once mixed CPU latents with device weights and panicked).
    kang = os.path.join(ROOT, "tests/data/kang_sample.h5ad")
    rc, *_ = measured([a.engine, "train", kang, "--name", "k-head", "--zoo", zoo, "--epochs", "2", "--batch-size", "64",
                       "--label-key", "seurat_annotations", "--classifier", "--device", a.device, "--patience", "0"], 120)
    out = os.path.join(a.work, "proj-k-head.csv")
    if os.path.exists(out):
        os.remove(out)
    if rc == 0:
        rc, *_ = measured([a.engine, "project", kang, "--model", "k-head", "--zoo", zoo, "-o", out,
                           "--device", a.device], 120)
    c["classifier"] = {"ok": True} if rc == 0 and os.path.exists(out) else {"error": f"exit {rc}"}
    log(f"correctness: a classifier model trained and projected on {a.device}: {c['classifier']}")

    # 2. Speed, scmz then the peer, most telling first.
    for key in [] if a.skip_speed else a.runs:
        label, bs = SHORT[key.split(":")[0]], int(key.split(":")[1])
        f = res["data"][label]["file"]
        r = scmz_train(a, f, f"s-{len(res['speed'])}", zoo, a.device, bs, a.epochs)
        res["speed"].append({"key": key, "data": label, "batch": bs, "scmz": r})
        log(f"scmz {label} batch {bs}: {r}")
    if not a.skip_scvi:
        keyed = {row["key"]: row for row in res["speed"]}
        for key in a.peer_runs:
            row = keyed.get(key)
            if row is None:
                continue
            left = a.budget_s - (time.time() - T0)
            if left < 45:
                row["scvi"] = {"skipped": "time budget"}
                continue
            r = peer_train(a, res["data"][row["data"]]["file"], row["batch"], a.epochs, min(left, 200))
            row["scvi"] = r
            log(f"scvi-tools {row['data']} batch {row['batch']}: {r}")

    # The table.
    print()
    print(f"device: {res['gpu'] or a.device}; {a.epochs} epochs; nb, 1 x 128 hidden, 10 latent; seed 0")
    if a.device == "cpu":
        print("correctness: a CPU-only run has no device to compare the CPU with")
    else:
        print("correctness (mouse_10k_subset, 3 epochs, batch 128): validation ELBO cpu "
              f"{c.get('train_cpu', {}).get('val_elbo', float('nan')):.2f}, {a.device} "
              f"{c.get(f'train_{a.device}', {}).get('val_elbo', float('nan')):.2f} "
              f"(relative difference {c.get('val_elbo_rel_diff', float('nan')):.2e}); projections cpu vs {a.device}, "
              f"max |latent difference|: model trained on {a.device} {c.get(f'project_m-{a.device}_max_abs_diff', float('nan')):.1e}, "
              f"model trained on cpu {c.get('project_m-cpu_max_abs_diff', float('nan')):.1e}")
    hdr = f"{'data':24} {'batch':>5} | {'scmz cells/s':>12} {'epoch s':>7} {'GPU MiB':>7} {'RSS MiB':>7} {'start s':>7} {'val ELBO':>9} {'util%':>5} | {'scvi cells/s':>12} {'epoch s':>7} {'GPU MiB':>7} {'RSS MiB':>7} {'val ELBO':>9} | ratio"
    print(hdr)
    fmt = lambda v, w, d=0: f"{v:{w}.{d}f}" if isinstance(v, (int, float)) else f"{'-':>{w}}"
    for row in res["speed"]:
        s, v = row["scmz"], row.get("scvi", {})
        ratio = s.get("cells_per_s", 0) / v["cells_per_s"] if v.get("cells_per_s") else None
        print(f"{row['data']:24} {row['batch']:5d} | {fmt(s.get('cells_per_s'), 12)} {fmt(s.get('epoch_s'), 7, 2)} "
              f"{fmt(s.get('gpu_mib'), 7)} {fmt(s.get('rss_mib'), 7)} {fmt(s.get('startup_s'), 7, 1)} {fmt(s.get('val_elbo'), 9, 2)} {fmt(s.get('gpu_util'), 5)} | "
              f"{fmt(v.get('cells_per_s'), 12)} {fmt(v.get('epoch_s'), 7, 2)} {fmt(v.get('gpu_mib'), 7)} {fmt(v.get('rss_mib'), 7)} "
              f"{fmt(v.get('val_elbo'), 9, 2)} | {fmt(ratio, 5, 2)}")
    if a.out:
        with open(a.out, "w") as fh:
            json.dump(res, fh, indent=1)
    shutil.rmtree(zoo, ignore_errors=True)
    failed = [f"{r['data']} batch {r['batch']}" for r in res["speed"] if "error" in r["scmz"]]
    failed += [k for k, v in c.items() if isinstance(v, dict) and "error" in v]
    if a.device != "cpu" and "val_elbo_rel_diff" not in c:
        failed.append("CPU/device comparison")
    if failed:
        sys.exit(f"gpu-bench: failed: {', '.join(failed)} (see the messages above)")
    log("done")


if __name__ == "__main__":
    main()
