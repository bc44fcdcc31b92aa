"""Makes the scvi-tools model fixtures under tests/data/scvi-tools/ (run once; the outputs are
committed, so tests need no scvi-tools).

    python3 -m venv ~/.cache/scmz/bench-venv && ~/.cache/scmz/bench-venv/bin/pip install scvi-tools
    ~/.cache/scmz/bench-venv/bin/python scripts/make_scvi_fixtures.py

    # and the scvi-tools 1.0.x fixtures (the format of HLCA and other models of its time):
    python3 -m venv ~/.cache/scmz/scvi10-venv && ~/.cache/scmz/scvi10-venv/bin/pip install scvi-tools==1.0.4
    ~/.cache/scmz/scvi10-venv/bin/python scripts/make_scvi_fixtures.py

Small models (32 hidden, 8 latent) trained on 300 of the 700 cells of
tests/data/pbmc68k_counts.h5ad with the batch covariate `phase`, saved with `model.save(...,
save_anndata=...)`, and beside each the latent means scvi-tools gives for all 700 cells
(`latent.csv`, cells in file order) and, for SCANVI, its `predict()` labels and probabilities
(`predict.csv`).
"""
import os, sys, shutil
import numpy as np
import anndata, scvi, torch

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
out = os.path.join(root, "tests", "data", "scvi-tools")
adata = anndata.read_h5ad(os.path.join(root, "tests", "data", "pbmc68k_counts.h5ad"))
adata.X = adata.X.astype(np.float32)
train = adata[:300].copy()
torch.manual_seed(0)
scvi.settings.seed = 0


def save(model, name, full, save_anndata):
    d = os.path.join(out, name)
    shutil.rmtree(d, ignore_errors=True)
    model.save(d, save_anndata=save_anndata)
    z = model.get_latent_representation(full)
    np.savetxt(os.path.join(d, "latent.csv"), z, delimiter=",", fmt="%.9g")
    print(name, z.shape, os.listdir(d))


def fit(name, save_anndata=False, **kw):
    a = train.copy()
    scvi.model.SCVI.setup_anndata(a, batch_key="phase")
    m = scvi.model.SCVI(a, n_hidden=32, n_latent=8, **kw)
    m.train(max_epochs=15, batch_size=64, accelerator="cpu", enable_progress_bar=False)
    full = adata.copy()
    scvi.model.SCVI.setup_anndata(full, batch_key="phase")
    save(m, name, full, save_anndata)
    return m


old = scvi.__version__.startswith("1.0.")
if old:
    base = fit("scvi10_nb_2layers", n_layers=2, gene_likelihood="nb")
else:
    fit("scvi_nb_1layer", save_anndata=True, n_layers=1, gene_likelihood="nb")
    base = fit("scvi_zinb_2layers", n_layers=2, gene_likelihood="zinb", encode_covariates=True)
    fit("scvi_poisson_libsize", n_layers=1, gene_likelihood="poisson", use_observed_lib_size=False)

# SCANVI from the two-layer model, a third of the training cells unlabelled.
labels = train.obs["bulk_labels"].astype(str).to_numpy().copy()
labels[::3] = "Unknown"
base.adata.obs["labels_masked"] = labels
s = scvi.model.SCANVI.from_scvi_model(base, unlabeled_category="Unknown", labels_key="labels_masked")
s.train(max_epochs=10, batch_size=64, accelerator="cpu", enable_progress_bar=False)
full = adata.copy()
full.obs["labels_masked"] = "Unknown"
scvi.model.SCANVI.setup_anndata(full, batch_key="phase", labels_key="labels_masked", unlabeled_category="Unknown")
scanvi = "scanvi10_2layers" if old else "scanvi_2layers"
save(s, scanvi, full, False)
p = s.predict(full, soft=True)
top = p.to_numpy().argmax(1)
with open(os.path.join(out, scanvi, "predict.csv"), "w") as f:
    f.write("label,probability\n")
    for i, k in enumerate(top):
        f.write(f"{p.columns[k]},{p.to_numpy()[i, k]:.9g}\n")
print("scvi-tools", scvi.__version__)
