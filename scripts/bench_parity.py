#!/usr/bin/env python3
"""Step-for-step parity of scmz's training with scvi-tools' (CPU): same weights, same minibatches.

    cargo build --release
    ~/.cache/scmz/bench-venv/bin/python scripts/bench_parity.py [--epochs 2] [--seed 0] [--sample]

scmz trains on the Kang CTRL cells with `SCMZ_TRACE_DIR` set: it writes its initial weights and,
for every step, the cells of the minibatch and its loss terms. scvi-tools' SCVI module (the same
architecture) then starts from those weights and takes the same steps on the same cells with the
same optimiser (Adam, lr 1e-3, eps 0.01, weight decay 1e-6) and KL weight. Without `--sample`,
both decode the latent mean and use no dropout, so every step is deterministic and the two loss
curves must agree to float rounding; a difference that grows step by step locates a difference in
the update. With `--sample` (dropout 0.1, sampled latents) only the curves' statistics compare.
"""
import argparse, json, os, subprocess, tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
ENGINE = os.path.join(TARGET, "release", "scmz-engine")
# The engine as `scmz` starts it (scmz::jobs::engine_command: a short OpenMP spin); `env` execs it,
# so it is still the process timed and measured.
ENGINE_CMD = ["env", "GOMP_SPINCOUNT=" + os.environ.get("GOMP_SPINCOUNT", "1000"), ENGINE]

p = argparse.ArgumentParser()
p.add_argument("--kang", default=os.path.join(ROOT, "..", "shared", "data", "kang_tutorial.h5ad"))
p.add_argument("--epochs", type=int, default=2)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--sample", action="store_true", help="dropout 0.1 and sampled latents (statistics only)")
p.add_argument("--noise", type=int, default=0,
               help="deterministic steps decode the latent mean plus NOISE/10 standard deviations (tests the "
                    "gradient through the variance)")
p.add_argument("--kl-warmup", type=int, default=400)
p.add_argument("--fixed-dropout", action="store_true",
               help="deterministic steps with dropout 0.1 dropping a fixed pattern in both tools")
p.add_argument("--projection", action="store_true",
               help="also load scmz's trained weights into scvi-tools and compare the latent means of CTRL and STIM "
                    "cells with those `scmz project` writes, and the kNN label transfer from each")
p.add_argument("--json", help="write the per-step curves here")
a = p.parse_args()

import anndata
import scipy.sparse as sp
import torch
import scvi
from safetensors.torch import load_file

torch.set_num_threads(os.cpu_count())
dropout = 0.1 if a.sample or a.fixed_dropout else 0.0

with tempfile.TemporaryDirectory() as tmp:
    kang = anndata.read_h5ad(a.kang)
    kang.obs_names_make_unique()
    ctrl = kang[kang.obs["stim"] == "CTRL"].copy()
    ctrl.X = sp.csr_matrix(ctrl.X)
    path = os.path.join(tmp, "ctrl.h5ad")
    ctrl.write_h5ad(path)
    trace = os.path.join(tmp, "trace")
    env = dict(os.environ, SCMZ_TRACE_DIR=trace, **({} if a.sample else {"SCMZ_TRACE_NOISE": str(a.noise)}),
               **({"SCMZ_TRACE_DROPOUT": "fixed"} if a.fixed_dropout else {}))
    tmp_zoo = os.path.join(tmp, "zoo")
    subprocess.run([*ENGINE_CMD, "train", path, "--name", "parity", "--zoo", tmp_zoo,
                    "--epochs", str(a.epochs), "--seed", str(a.seed), "--device", "cpu", "--batch-size", "128",
                    "--likelihood", "nb", "--n-hidden", "128", "--n-latent", "10", "--n-layers", "1",
                    "--dropout", str(dropout), "--kl-warmup", str(a.kl_warmup), "--patience", "0",
                    "--lr", "1e-3", "--lr-warmup", "0", "--norm-cells", "0"],
                   check=True, env=env, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    init = load_file(os.path.join(trace, "init.safetensors"))
    final = load_file(os.path.join(tmp_zoo, "parity", "weights.safetensors"))
    steps = [json.loads(l) for l in open(os.path.join(trace, "steps.jsonl"))]
    if a.projection:
        trained = load_file(os.path.join(tmp, "zoo", "parity", "weights.safetensors"))
        stim = kang[kang.obs["stim"] == "STIM"].copy()
        stim.X = sp.csr_matrix(stim.X)
        stim_path = os.path.join(tmp, "stim.h5ad")
        stim.write_h5ad(stim_path)
        projected = {}
        for name, pth in (("ctrl", path), ("stim", stim_path)):
            out = os.path.join(tmp, f"{name}.csv")
            subprocess.run([*ENGINE_CMD, "project", pth, "--model", "parity", "--zoo", os.path.join(tmp, "zoo"), "-o", out,
                            "--min-overlap", "0"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            import pandas as pd
            df = pd.read_csv(out)
            projected[name] = df[[c for c in df.columns if c.startswith("latent_")]].values

scvi.settings.seed = a.seed
scvi.model.SCVI.setup_anndata(ctrl)
model = scvi.model.SCVI(ctrl, n_hidden=128, n_latent=10, n_layers=1, gene_likelihood="nb", dropout_rate=dropout)
module = model.module

# scmz's names -> scvi-tools' names.
NAMES = {
    "encoder.0.linear.": "z_encoder.encoder.fc_layers.Layer 0.0.",
    "encoder.0.norm.": "z_encoder.encoder.fc_layers.Layer 0.1.",
    "z_mean.": "z_encoder.mean_encoder.",
    "z_logvar.": "z_encoder.var_encoder.",
    "decoder.linear.": "decoder.px_decoder.fc_layers.Layer 0.0.",
    "decoder.norm.": "decoder.px_decoder.fc_layers.Layer 0.1.",
    "px_scale.": "decoder.px_scale_decoder.0.",
    "px_log_theta": "px_r",
}
def load_into(module, weights):
    state = module.state_dict()
    loaded = set()
    with torch.no_grad():
        for name, t in weights.items():
            target = next((v + name[len(k):] for k, v in NAMES.items() if name.startswith(k)), None)
            assert target in state, f"no scvi-tools variable for scmz's {name} ({target})"
            assert tuple(state[target].shape) == tuple(t.shape), f"{name}: {tuple(t.shape)} vs {tuple(state[target].shape)}"
            state[target].copy_(t)
            loaded.add(target)
    return loaded


if a.projection:
    from sklearn.neighbors import KNeighborsClassifier
    load_into(module, trained)
    module.eval()
    def means(ad):
        z = []
        with torch.no_grad():
            for lo in range(0, ad.n_obs, 1024):
                x = torch.from_numpy(ad.X[lo:lo + 1024].toarray().astype(np.float32))
                out = module.inference(x, torch.zeros(x.shape[0], 1))
                z.append(out["qz"].loc.numpy())
        return np.concatenate(z)
    zc, zs = means(ctrl), means(stim)
    for name, z in (("ctrl", zc), ("stim", zs)):
        print(f"{name}: max |scvi-tools latent mean - scmz project latent| = {np.abs(z - projected[name]).max():.2e}")
    truth = stim.obs["seurat_annotations"].astype(str).values
    ref_y = ctrl.obs["seurat_annotations"].astype(str).values
    for name, (rc, rs) in (("scvi-tools inference", (zc, zs)), ("scmz project", (projected["ctrl"], projected["stim"]))):
        pred = KNeighborsClassifier(n_neighbors=15).fit(rc, ref_y).predict(rs)
        print(f"kNN CTRL -> STIM from {name}: {(pred == truth).mean():.3f}")
    module.train()
    # The replay starts from the initial weights again.
    module = scvi.model.SCVI(ctrl, n_hidden=128, n_latent=10, n_layers=1, gene_likelihood="nb",
                             dropout_rate=dropout).module

loaded = load_into(module, init)
state = module.state_dict()
unloaded = [k for k in state if k not in loaded and not k.startswith("l_encoder") and "num_batches" not in k
            and "px_r_decoder" not in k and "px_dropout_decoder" not in k]
assert not unloaded, f"scvi-tools variables scmz has no weights for: {unloaded}"

if not a.sample:
    # Decode the latent mean, as scmz's traced steps do.
    torch.distributions.Normal.rsample = lambda self, sample_shape=torch.Size(): self.loc + self.scale * (a.noise / 10)

opt = torch.optim.Adam(filter(lambda q: q.requires_grad, module.parameters()), lr=1e-3, eps=0.01,
                       weight_decay=1e-6)
X = ctrl.X.tocsr()
module.train()
ours, theirs = [], []
STEP = [0]
if a.fixed_dropout:
    # The pattern scmz drops (model/layers.rs `fixed_dropout_mask`).
    def fixed(self, x):
        if not self.training or self.p == 0:
            return x
        i = torch.arange(x.shape[0]).unsqueeze(1)
        j = torch.arange(x.shape[1]).unsqueeze(0)
        keep = ((131 * i + 71 * j + 17 * STEP[0]) % 10 != 0).float()
        return x * keep / (1 - self.p)
    torch.nn.Dropout.forward = fixed
for k, s in enumerate(steps):
    STEP[0] = k
    x = torch.from_numpy(X[s["rows"]].toarray().astype(np.float32))
    tensors = {"X": x, "batch": torch.zeros(len(s["rows"]), 1), "labels": torch.zeros(len(s["rows"]), 1)}
    _, _, losses = module(tensors, loss_kwargs={"kl_weight": s["kl_weight"]})
    opt.zero_grad()
    losses.loss.backward()
    opt.step()
    recon = float(losses.reconstruction_loss["reconstruction_loss"].mean())
    kl = float(losses.kl_local["kl_divergence_z"].mean())
    ours.append((s["recon"], s["kl"]))
    theirs.append((recon, kl))

ours, theirs = np.array(ours), np.array(theirs)
# Every final variable, BatchNorm's running statistics included (which the loss curves cannot show:
# training normalises by the batch's own statistics, projection by the running ones).
state = module.state_dict()
worst = []
for name, t in final.items():
    target = next((v + name[len(k):] for k, v in NAMES.items() if name.startswith(k)), None)
    if target in state:
        ref = state[target].detach().float()
        rel = float((t.float() - ref).abs().max() / ref.abs().max().clamp_min(1e-12))
        worst.append((rel, name))
worst.sort(reverse=True)
print("final variables, largest relative difference scmz vs scvi-tools replay: " +
      ", ".join(f"{n} {r:.1e}" for r, n in worst[:4]))
if a.projection:
    # The replayed scvi-tools model: same initial weights, same minibatches, its own random draws.
    module.eval()
    zc, zs = means(ctrl), means(stim)
    pred = KNeighborsClassifier(n_neighbors=15).fit(zc, ref_y).predict(zs)
    print(f"kNN CTRL -> STIM from the scvi-tools replay (scmz's init and batches, torch's draws): "
          f"{(pred == truth).mean():.3f}")
mode = ("sampled latents, random dropout 0.1" if a.sample else
        f"latent means + {a.noise / 10:g} sd, " + ("dropout 0.1 in a fixed pattern" if a.fixed_dropout else "no dropout"))
print(f"{len(steps)} steps, {mode}, seed {a.seed}")
print(f"{'step':>6} {'scmz recon':>12} {'scvi recon':>12} {'rel diff':>9} {'scmz KL':>9} {'scvi KL':>9}")
for i in sorted({0, 1, 2, 4, 9, 19, 44, 89, 179, 269, 359, 449, 899, len(steps) - 1}):
    if i < len(steps):
        (r0, k0), (r1, k1) = ours[i], theirs[i]
        print(f"{i + 1:>6} {r0:>12.2f} {r1:>12.2f} {(r0 - r1) / r1:>+9.2e} {k0:>9.3f} {k1:>9.3f}")
w = min(45, len(steps))
print(f"mean recon over the last {w} steps: scmz {ours[-w:, 0].mean():.2f}, scvi-tools {theirs[-w:, 0].mean():.2f}")
if a.json:
    json.dump({"scmz": ours.tolist(), "scvi": theirs.tolist()}, open(a.json, "w"))
