#!/usr/bin/env python3
"""Benchmark: model quality on real data, scmz vs scvi-tools, side by side, several seeds (CPU).

    cargo build --release
    ~/.pyenv/versions/3.12.1/bin/python -m venv ~/.cache/scmz/bench-venv   # any Python >= 3.12
    ~/.cache/scmz/bench-venv/bin/pip install scvi-tools==1.4.2 scib-metrics==0.6.1
    ~/.cache/scmz/bench-venv/bin/python scripts/bench_quality.py [--seeds 0,1,2] [--skip-scib]

Kang et al. 2018 PBMCs (`../shared/data/kang_tutorial.h5ad`): both tools train on the CTRL cells
(1 x 128 hidden, 10 latent, NB, batch 128, the same seeded 10 % held out), then the STIM cells
(a condition neither model saw) are labelled by kNN (k = 15) on latent means against the CTRL
cells' latents; accuracy on `seurat_annotations` (10 types) and `cell_type` (8), macro-F1. Also:
scmz's own label (`scmz_label`, kNN from the model's stored reference), the classifier head's label
when `--classifier` models are trained (with scANVI from the scVI model as its peer), expected
calibration error, validation ELBO after epochs 1, 2, 5, 10 and 20 on Kang CTRL and on
mouse_10k_subset (the same held-out cells for both tools), and scib-metrics totals for the
integration of all Kang cells with `stim` as the batch (seed 0). Each run is a process of its own.
"""
import argparse, json, os, subprocess, sys, tempfile, time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
ELBO_EPOCHS = [1, 2, 5, 10, 20]

p = argparse.ArgumentParser()
p.add_argument("--kang", default=os.path.join(ROOT, "..", "shared", "data", "kang_tutorial.h5ad"))
p.add_argument("--mouse", default=os.path.join(ROOT, "tests", "data", "mouse_10k_subset.h5ad"))
p.add_argument("--seeds", default="0,1,2")
p.add_argument("--epochs", default="10,20", help="training lengths whose label transfer is measured")
p.add_argument("--skip-scvi", action="store_true")
p.add_argument("--skip-scib", action="store_true")
p.add_argument("--skip-mouse", action="store_true")
p.add_argument("--classifier", action="store_true", help="also train scmz's classifier head and scANVI")
p.add_argument("--scmz-args", default="", help="extra flags for scmz-engine train (A/B runs)")
p.add_argument("--scvi-separate-runs", action="store_true",
               help="train scvi-tools once per length instead of taking the shorter ones from the longest run")
p.add_argument("--scvi-dropout", type=float, default=0.1, help="scvi-tools' dropout_rate (A/B runs)")
p.add_argument("--json", help="write every figure here")
p.add_argument("--engine", default=os.path.join(TARGET, "release", "scmz-engine"), help="the scmz-engine to run")
p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where both tools train")
p.add_argument("--no-tables", action="store_true", help=argparse.SUPPRESS)
p.add_argument("--jobs", type=int, default=1,
               help="run the seeds in this many processes at once, each on its share of the cores")
p.add_argument("--plain-strings", action="store_true",
               help="write string columns as plain string arrays (for scmz builds that predate anndata 0.13's "
                    "nullable-string-array)")
a = p.parse_args()
ENGINE = a.engine
# The engine as `scmz` starts it (scmz::jobs::engine_command: a short OpenMP spin); `env` execs it,
# so it is still the process timed and measured.
ENGINE_CMD = ["env", "GOMP_SPINCOUNT=" + os.environ.get("GOMP_SPINCOUNT", "1000"), ENGINE]
seeds = [int(s) for s in a.seeds.split(",")]
lengths = [int(e) for e in a.epochs.split(",")]
LABEL, COARSE = "seurat_annotations", "cell_type"
ACCELERATOR = "gpu" if a.device == "cuda" else "cpu"

import anndata
if hasattr(anndata.settings, "allow_write_nullable_strings"):
    # pandas 3 holds strings as string arrays; anndata 0.12 writes them only when allowed.
    anndata.settings.allow_write_nullable_strings = not a.plain_strings
from sklearn.metrics import f1_score
from sklearn.neighbors import KNeighborsClassifier

ARCH = ["--batch-size", "128", "--likelihood", "nb", "--n-hidden", "128", "--n-latent", "10",
        "--n-layers", "1", "--patience", "0"]


def scmz_validation(seed, n):
    """scmz's train/validation split (train/loader.rs `is_validation`)."""
    M = (1 << 64) - 1
    out = np.zeros(n, dtype=bool)
    for i in range(n):
        x = ((seed * 31 + i) & M) ^ 0x9E3779B97F4A7C15
        x = (x + 0x9E3779B97F4A7C15) & M
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & M
        out[i] = (x ^ (x >> 31)) % 10 == 0
    return out


def knn(ref_z, ref_y, query_z, k=15):
    return KNeighborsClassifier(n_neighbors=k).fit(ref_z, ref_y).predict(query_z)


def ece(conf, correct, bins=10):
    """Expected calibration error: |accuracy - confidence| per confidence bin, weighted by size."""
    conf, correct = np.asarray(conf, float), np.asarray(correct, float)
    edges = np.linspace(0, 1, bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (conf > lo) & (conf <= hi)
        if sel.any():
            total += sel.mean() * abs(correct[sel].mean() - conf[sel].mean())
    return total


def transfer(ref_z, query_z, ctrl, stim):
    r = {}
    pred = knn(ref_z, ctrl.obs[LABEL].astype(str).values, query_z)
    truth = stim.obs[LABEL].astype(str).values
    r["knn10"] = float((pred == truth).mean())
    r["f1"] = float(f1_score(truth, pred, average="macro"))
    pred8 = knn(ref_z, ctrl.obs[COARSE].astype(str).values, query_z)
    r["knn8"] = float((pred8 == stim.obs[COARSE].astype(str).values).mean())
    return r


def elbos(hist_vals):
    return {e: hist_vals[e - 1] for e in ELBO_EPOCHS if e <= len(hist_vals)}


def run_scmz(train, name, zoo, seed, epochs, extra=()):
    t = time.perf_counter()
    subprocess.run([*ENGINE_CMD, "train", train, "--name", name, "--zoo", zoo, "--epochs", str(epochs), "--seed",
                    str(seed), "--device", a.device, *ARCH, *extra, *a.scmz_args.split()], check=True,
                   stderr=subprocess.DEVNULL)
    secs = time.perf_counter() - t
    hist = [json.loads(l) for l in open(os.path.join(zoo, name, "history.jsonl"))]
    vals = [h["val"]["elbo"] for h in hist if h["event"] == "epoch"]
    best = json.load(open(os.path.join(zoo, name, "manifest.json")))["training"]["best_epoch"]
    log(f"  {name}: {len(vals)} epochs in {secs:.1f} s, the model keeps epoch {best + 1}'s weights")
    return secs, vals


def scmz_latent(data, name, zoo, out):
    subprocess.run([*ENGINE_CMD, "project", data, "--model", name, "--zoo", zoo, "-o", out, "--min-overlap", "0",
                    "--device", a.device],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import pandas as pd
    df = pd.read_csv(out)
    z = df[[c for c in df.columns if c.startswith("latent_")]].values
    return z, df


def scvi_model(ad, seed, epochs, snapshots=(), query=None):
    """scvi-tools trained for `epochs`; for each epoch count in `snapshots`, the latent means of
    `ad` and `query` and the training seconds at the end of that epoch. Nothing in scvi-tools'
    training depends on the number of epochs asked for (no learning-rate schedule; the KL weight
    rises over 400 epochs whatever the length), so the first N epochs of a longer run are an N-epoch
    run; the snapshot runs in evaluation mode and restores the random state it used, so the run goes
    on as it would have (`--scvi-separate-runs` trains each length on its own instead)."""
    import scvi, torch
    from lightning.pytorch.callbacks import Callback
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    scvi.settings.seed = seed
    scvi.model.SCVI.setup_anndata(ad, batch_key="stim" if ad.obs["stim"].nunique() > 1 else None)
    m = scvi.model.SCVI(ad, n_hidden=128, n_latent=10, n_layers=1, gene_likelihood="nb", dropout_rate=a.scvi_dropout)
    is_val = scmz_validation(seed, ad.n_obs)
    split = [np.flatnonzero(~is_val), np.flatnonzero(is_val), np.array([], dtype=int)]
    taken, paused = {}, [0.0]

    class Snapshot(Callback):
        def on_train_epoch_end(self, trainer, module):
            done = trainer.current_epoch + 1
            if done not in snapshots:
                return
            t0 = time.perf_counter()
            secs = t0 - t - paused[0]
            cpu = torch.get_rng_state()
            gpu = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
            np_state = np.random.get_state()
            net = m.module
            was_training, was_trained = net.training, m.is_trained_
            net.eval()
            m.is_trained_ = True  # scvi-tools refuses latents before train() has returned
            try:
                taken[done] = (m.get_latent_representation(ad), m.get_latent_representation(query), secs)
            finally:
                m.is_trained_ = was_trained
                net.train(was_training)
                torch.set_rng_state(cpu)
                if gpu is not None:
                    torch.cuda.set_rng_state_all(gpu)
                np.random.set_state(np_state)
            paused[0] += time.perf_counter() - t0

    t = time.perf_counter()
    m.train(max_epochs=epochs, batch_size=128, accelerator=ACCELERATOR, check_val_every_n_epoch=1,
            early_stopping=False, enable_progress_bar=False, datasplitter_kwargs={"external_indexing": split},
            **({"callbacks": [Snapshot()]} if snapshots else {}))
    secs = time.perf_counter() - t - paused[0]
    vals = [float(v) for v in m.history["elbo_validation"].iloc[:, 0].values]
    return m, secs, vals, taken


STARTED = time.perf_counter()


def log(line):
    """A figure as it comes, with the seconds since the benchmark started (where the time goes)."""
    print(f"[{time.perf_counter() - STARTED:6.0f} s] {line}", flush=True)


def mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else float("nan")


def measure(seeds):
    """Every figure for these seeds, in this process."""
    results = {"scmz": {}, "scvi": {}}
    with tempfile.TemporaryDirectory() as tmp:
        kang = anndata.read_h5ad(a.kang)
        kang.obs_names_make_unique()
        ctrl = kang[kang.obs["stim"] == "CTRL"].copy()
        stim = kang[kang.obs["stim"] == "STIM"].copy()
        import scipy.sparse as sp
        for ad in (ctrl, stim):
            ad.X = sp.csr_matrix(ad.X)
        ctrl_path, stim_path = os.path.join(tmp, "ctrl.h5ad"), os.path.join(tmp, "stim.h5ad")
        ctrl.write_h5ad(ctrl_path)
        stim.write_h5ad(stim_path)
        zoo = os.path.join(tmp, "zoo")

        for seed in seeds:
            scvi_runs = {}
            for epochs in lengths:
                key = f"e{epochs}_s{seed}"
                name = f"ctrl_{key}"
                secs, vals = run_scmz(ctrl_path, name, zoo, seed, epochs, ["--label-key", LABEL])
                zc, _ = scmz_latent(ctrl_path, name, zoo, os.path.join(tmp, f"{name}_ctrl.csv"))
                zs, df = scmz_latent(stim_path, name, zoo, os.path.join(tmp, f"{name}_stim.csv"))
                r = transfer(zc, zs, ctrl, stim)
                truth = stim.obs[LABEL].astype(str).values
                r["own"] = float((df["scmz_label"].astype(str).values == truth).mean())
                r["secs"], r["elbo"] = secs, elbos(vals)
                if a.classifier and epochs == max(lengths):
                    # The head is a second model (its loss shapes the latent too, as scANVI's does).
                    cname = f"{name}_classifier"
                    run_scmz(ctrl_path, cname, zoo, seed, epochs, ["--label-key", LABEL, "--classifier"])
                    zc, _ = scmz_latent(ctrl_path, cname, zoo, os.path.join(tmp, f"{cname}_ctrl.csv"))
                    zs, df = scmz_latent(stim_path, cname, zoo, os.path.join(tmp, f"{cname}_stim.csv"))
                    r["head"] = float((df["scmz_classifier"].astype(str).values == truth).mean())
                    r["head_ece"] = ece(df["scmz_classifier_probability"].values,
                                        df["scmz_classifier"].astype(str).values == truth)
                    r["head_knn10"] = transfer(zc, zs, ctrl, stim)["knn10"]
                results["scmz"][key] = r
                log(f"scmz  {key}: {json.dumps(r)}")
                if a.skip_scvi:
                    continue
                if a.scvi_separate_runs or epochs == max(lengths):
                    m, secs, vals, taken = scvi_model(
                        ctrl.copy(), seed, epochs,
                        [] if a.scvi_separate_runs else [e for e in lengths if e < epochs], stim)
                    zc, zs = m.get_latent_representation(), m.get_latent_representation(stim)
                    for e, (zc_e, zs_e, secs_e) in taken.items():
                        # The shorter lengths, measured from the snapshots of this run.
                        r = transfer(zc_e, zs_e, ctrl, stim)
                        r["secs"], r["elbo"] = secs_e, elbos(vals[:e])
                        results["scvi"][f"e{e}_s{seed}"] = r
                        log(f"scvi  e{e}_s{seed}: {json.dumps(r)}")
                else:
                    continue  # measured by the longest run's snapshot
                r = transfer(zc, zs, ctrl, stim)
                r["secs"], r["elbo"] = secs, elbos(vals)
                if a.classifier and epochs == max(lengths):
                    import scvi
                    ref = ctrl.copy()
                    sc = scvi.model.SCANVI.from_scvi_model(m, unlabeled_category="Unknown", labels_key=LABEL,
                                                           adata=ref)
                    sc.train(max_epochs=7, batch_size=128, accelerator=ACCELERATOR, enable_progress_bar=False)
                    q = stim.copy()
                    q.obs[LABEL] = "Unknown"
                    probs = sc.predict(q, soft=True)
                    pred = probs.columns.values[probs.values.argmax(1)]
                    r["head"] = float((pred == truth).mean())
                    r["head_ece"] = ece(probs.values.max(1), pred == truth)
                    r["head_knn10"] = transfer(sc.get_latent_representation(ref), sc.get_latent_representation(q),
                                               ctrl, stim)["knn10"]
                results["scvi"][key] = r
                log(f"scvi  {key}: {json.dumps(r)}")

        if not a.skip_mouse:
            for seed in seeds:
                _, vals = run_scmz(a.mouse, f"mouse_s{seed}", zoo, seed, 20)
                results["scmz"][f"mouse_s{seed}"] = {"elbo": elbos(vals)}
                if not a.skip_scvi:
                    md = anndata.read_h5ad(a.mouse)
                    md.obs["stim"] = "one"
                    _, _, vals, _ = scvi_model(md, seed, 20)
                    results["scvi"][f"mouse_s{seed}"] = {"elbo": elbos(vals)}
                log(f"mouse seed {seed}: scmz {results['scmz'][f'mouse_s{seed}']} "
                    f"scvi {results['scvi'].get(f'mouse_s{seed}')}")

        if not a.skip_scib and not a.skip_scvi:
            from scib_metrics.benchmark import Benchmarker
            import scanpy as sc_
            full = kang.copy()
            full.X = sp.csr_matrix(full.X)
            all_path = os.path.join(tmp, "all.h5ad")
            full.write_h5ad(all_path)
            run_scmz(all_path, "all", zoo, 0, 20, ["--batch-key", "stim"])
            z, _ = scmz_latent(all_path, "all", zoo, os.path.join(tmp, "all.csv"))
            full.obsm["scmz"] = z
            log("scib: scmz trained")
            m, _, _, _ = scvi_model(full.copy(), 0, 20)
            log("scib: scvi-tools trained")
            full.obsm["scVI"] = m.get_latent_representation(full)
            lg = full.copy()
            sc_.pp.normalize_total(lg)
            sc_.pp.log1p(lg)
            sc_.pp.highly_variable_genes(lg, n_top_genes=2000)
            sc_.tl.pca(lg, n_comps=30, mask_var="highly_variable")
            full.obsm["Unintegrated"] = lg.obsm["X_pca"]
            bm = Benchmarker(full, batch_key="stim", label_key=LABEL, embedding_obsm_keys=["Unintegrated", "scVI", "scmz"],
                             n_jobs=2)
            bm.benchmark()
            df = bm.get_results(min_max_scale=False)
            results["scib"] = {k: {c: float(df.loc[k, c]) for c in ["Batch correction", "Bio conservation", "Total"]}
                               for k in ["Unintegrated", "scVI", "scmz"]}
            log("scib: " + json.dumps(results["scib"]))
    return results


def measure_in_parallel(seeds):
    """The seeds in `--jobs` processes at once, each pinned to its own share of the cores (scmz
    and scvi-tools both use what they are given), merged; scib-metrics runs in the one holding
    seed 0."""
    cores = sorted(os.sched_getaffinity(0))
    n = min(a.jobs, len(seeds))
    share = max(1, len(cores) // n)
    own = [x for x in sys.argv[1:]]
    for flag in ("--seeds", "--jobs", "--json"):
        while flag in own:
            i = own.index(flag)
            del own[i:i + 2]
    results = {"scmz": {}, "scvi": {}}
    with tempfile.TemporaryDirectory() as tmp:
        children = []
        for j in range(n):
            group = seeds[j::n]
            part = os.path.join(tmp, f"part{j}.json")
            extra = [] if 0 in group else ["--skip-scib"]
            pin = set(cores[j * share:(j + 1) * share])
            # Each child prints its figures as it goes (a line per model), so a run cut short
            # still shows what it measured; its warnings go to a log shown if it fails.
            log = open(os.path.join(tmp, f"part{j}.log"), "w")
            children.append((subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), *own, *extra, "--seeds", ",".join(map(str, group)),
                 "--jobs", "1", "--json", part, "--no-tables"], stderr=log,
                preexec_fn=lambda pin=pin: os.sched_setaffinity(0, pin)), part, log.name))
        failed = False
        for child, part, log in children:
            if child.wait() != 0:
                failed = True
                print(f"a child failed (exit {child.returncode}); its log:\n" + open(log).read()[-4000:], file=sys.stderr)
                continue
            for k, v in json.load(open(part)).items():
                if k in ("scmz", "scvi"):
                    # JSON keys are strings; the ELBO's are epoch numbers.
                    results[k].update({key: {**r, "elbo": {int(e): x for e, x in r.get("elbo", {}).items()}}
                                       for key, r in v.items()})
                else:
                    results[k] = v
        if failed:
            sys.exit(1)
    return results


started = time.perf_counter()
results = measure_in_parallel(seeds) if a.jobs > 1 else measure(seeds)

if a.no_tables:
    json.dump(results, open(a.json, "w"))
    sys.exit(0)
# The tables.
print(f"\nKang CTRL -> STIM, seeds {seeds}; total {time.perf_counter() - started:.0f} s")
tools = ["scmz"] + ([] if a.skip_scvi else ["scvi"])
metrics = [("knn10", "kNN acc, 10 types"), ("knn8", "kNN acc, 8 types"), ("f1", "macro-F1, 10 types"),
           ("own", "own label acc"), ("head", "classifier head acc"), ("head_ece", "classifier head ECE"),
           ("head_knn10", "kNN acc on the classifier model's latent"),
           ("secs", "training s")]
for epochs in lengths:
    print(f"\n{epochs} epochs" + "".join(f" | {t} s{s}" for t in tools for s in seeds) + "".join(
        f" | {t} mean" for t in tools))
    for k, label in metrics:
        cells = [results[t].get(f"e{epochs}_s{s}", {}).get(k) for t in tools for s in seeds]
        if all(c is None for c in cells):
            continue
        means = [mean([results[t].get(f"e{epochs}_s{s}", {}).get(k) for s in seeds]) for t in tools]
        fmt = lambda v: "" if v is None else f"{v:.3f}"
        print(f"{label}" + "".join(f" | {fmt(c)}" for c in cells) + "".join(f" | {m:.3f}" for m in means))
    if len(tools) == 2 and len(seeds) > 1:
        # Paired by seed: the two tools see the same cells held out, so the seed's share of the
        # spread cancels in part; the standard error says what the seeds can tell apart.
        for k, label in metrics[:3]:
            d = np.array([results["scmz"][f"e{epochs}_s{s}"][k] - results["scvi"][f"e{epochs}_s{s}"][k]
                          for s in seeds])
            sd = [np.std([results[t][f"e{epochs}_s{s}"][k] for s in seeds], ddof=1) for t in tools]
            se = d.std(ddof=1) / np.sqrt(len(d))
            print(f"{label}, scmz - scvi-tools paired: {d.mean():+.3f} (standard error {se:.3f}, "
                  f"t {d.mean() / se if se > 0 else float('nan'):+.2f}); scmz ahead in {(d >= 0).sum()} of {len(d)} "
                  f"seeds; sd across seeds scmz {sd[0]:.3f}, scvi-tools {sd[1]:.3f}")
for data, key in [("Kang CTRL", f"e{max(lengths)}_s"), ("mouse_10k", "mouse_s")]:
    if f"{key}{seeds[0]}" not in results["scmz"]:
        continue
    print(f"\nvalidation ELBO, {data} (mean of seeds)" + "".join(f" | epoch {e}" for e in ELBO_EPOCHS))
    for t in tools:
        row = [mean([results[t][f"{key}{s}"]["elbo"].get(e) for s in seeds]) for e in ELBO_EPOCHS]
        print(t + "".join(f" | {v:.2f}" for v in row))
    if len(tools) == 2:
        row = [mean([results["scmz"][f"{key}{s}"]["elbo"].get(e) for s in seeds]) /
               mean([results["scvi"][f"{key}{s}"]["elbo"].get(e) for s in seeds]) - 1 for e in ELBO_EPOCHS]
        print("scmz vs scvi-tools" + "".join(f" | {100 * v:+.2f} %" for v in row))
if "scib" in results:
    print("\nscib-metrics (integration of all Kang cells, batch stim, seed 0) | batch correction | bio conservation | total")
    for k, v in results["scib"].items():
        print(f"{k} | {v['Batch correction']:.3f} | {v['Bio conservation']:.3f} | {v['Total']:.3f}")
if a.json:
    json.dump(results, open(a.json, "w"), indent=1)
