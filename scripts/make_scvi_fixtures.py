"""Makes the scvi-tools model fixtures under tests/data/scvi-tools/ (run once; the outputs are
committed, so tests need no scvi-tools).

    python3 -m venv ~/.cache/scmz/bench-venv && ~/.cache/scmz/bench-venv/bin/pip install scvi-tools
    ~/.cache/scmz/bench-venv/bin/python scripts/make_scvi_fixtures.py [NAME ...]

    # and the scvi-tools 1.0.x fixtures (the format of HLCA and other models of its time); on
    # Python 3.11 with today's index it needs these pins to import:
    python3 -m venv ~/.cache/scmz/scvi10-venv && ~/.cache/scmz/scvi10-venv/bin/pip install scvi-tools==1.0.4 \
        jax==0.4.23 jaxlib==0.4.23 flax==0.7.5 chex==0.1.85 optax==0.1.7 orbax-checkpoint==0.4.4 \
        numpyro==0.13.2 pyro-ppl==1.8.6 'numpy<2' 'pandas<2.2' 'anndata<0.11' 'scipy<1.13' \
        'lightning<2.2' 'torchmetrics<1.3' 'ml-dtypes<0.4' 'setuptools<70'
    # (tests/scvi_tools.rs checks exports in it with SCMZ_SCVI_PYTHON=~/.cache/scmz/scvi10-venv/bin/python)
    ~/.cache/scmz/scvi10-venv/bin/python scripts/make_scvi_fixtures.py

Small models (32 hidden, 8 latent) trained on 300 of the 700 cells of
tests/data/pbmc68k_counts.h5ad with the batch covariate `phase`, saved with `model.save(...,
save_anndata=...)`, and beside each the latent means scvi-tools gives for all 700 cells
(`latent.csv`, cells in file order) and, for SCANVI, its `predict()` labels and probabilities
(`predict.csv`); for the models that learn the library size or keep a dispersion per batch,
`at_mean.csv`: per cell, at the latent mean (and the library posterior's mean), scvi-tools'
reconstruction loss -log p(x), the latent's KL and the library's KL.

Names given on the command line make only those fixtures (others are left as they are: the
frozen model in tests/data/zoo depends on `scvi_nb_1layer`).
"""
import os, sys, shutil
import numpy as np
import anndata, scvi, torch
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from scvi_latents import at_mean  # noqa: E402

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
out = os.path.join(root, "tests", "data", "scvi-tools")
adata = anndata.read_h5ad(os.path.join(root, "tests", "data", "pbmc68k_counts.h5ad"))
adata.X = adata.X.astype(np.float32)
train = adata[:300].copy()
torch.manual_seed(0)
scvi.settings.seed = 0
only = sys.argv[1:]


def wanted(name):
    return not only or name in only


def legacy():
    """`scvi_legacy_nb`: the model of `scvi_nb_1layer` in the layout of scvi-tools before 0.15
    (`model_params.pt`, `var_names.csv`, `attr.pkl` with the AnnData set-up in `scvi_setup_dict_`),
    written as 0.14's `save()` wrote it; scvi-tools' own `convert_legacy_save` reads it back to the
    same latents (checked here)."""
    import pickle
    src = os.path.join(out, "scvi_nb_1layer")
    full = adata.copy()
    scvi.model.SCVI.setup_anndata(full, batch_key="phase")
    m = scvi.model.SCVI.load(src, adata=full)
    d = os.path.join(out, "scvi_legacy_nb")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    torch.save(m.module.state_dict(), os.path.join(d, "model_params.pt"))
    np.savetxt(os.path.join(d, "var_names.csv"), full.var_names.to_numpy(), fmt="%s")
    batches = m.registry_["field_registries"]["batch"]["state_registry"]["categorical_mapping"]
    setup = {
        "scvi_version": "0.14.6",
        "categorical_mappings": {
            "_scvi_batch": {"original_key": "phase", "mapping": np.asarray(batches, dtype=object)},
            "_scvi_labels": {"original_key": "_scvi_labels", "mapping": np.array([0])},
        },
        "data_registry": {
            "X": {"attr_name": "X", "attr_key": None},
            "batch_indices": {"attr_name": "obs", "attr_key": "_scvi_batch"},
            "labels": {"attr_name": "obs", "attr_key": "_scvi_labels"},
        },
        "summary_stats": {"n_batch": len(batches), "n_cells": train.n_obs, "n_vars": full.n_vars,
                          "n_labels": 1, "n_proteins": 0, "n_continuous_covs": 0},
    }
    attrs = {"init_params_": m.init_params_, "is_trained_": True, "scvi_setup_dict_": setup,
             "train_indices_": np.arange(270)}
    with open(os.path.join(d, "attr.pkl"), "wb") as f:
        pickle.dump(attrs, f, protocol=4)  # Python 3.8's default, as 0.14 wrote it
    shutil.copy(os.path.join(src, "latent.csv"), d)
    converted = d + ".converted"
    scvi.model.SCVI.convert_legacy_save(d, converted, overwrite=True)
    z = scvi.model.SCVI.load(converted, adata=full).get_latent_representation(full)
    shutil.rmtree(converted)
    worst = np.abs(z - np.loadtxt(os.path.join(src, "latent.csv"), delimiter=",")).max()
    assert worst < 1e-5, worst
    print("scvi_legacy_nb: scvi-tools' convert_legacy_save reads it to latents within", worst)


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
    if not kw.get("use_observed_lib_size", True) or kw.get("dispersion") == "gene-batch":
        at_mean(m, full, os.path.join(out, name, "at_mean.csv"))
    return m


old = scvi.__version__.startswith("1.0.")
if old:
    base = fit("scvi10_nb_2layers", n_layers=2, gene_likelihood="nb") if wanted("scvi10_nb_2layers") else None
else:
    if wanted("scvi_nb_1layer"):
        fit("scvi_nb_1layer", save_anndata=True, n_layers=1, gene_likelihood="nb")
    if wanted("scvi_zinb_2layers") or wanted("scanvi_2layers"):
        base = fit("scvi_zinb_2layers", n_layers=2, gene_likelihood="zinb", encode_covariates=True)
    else:
        base = None
    if wanted("scvi_poisson_libsize"):
        # Learns the library size, its encoder seeing the batch.
        fit("scvi_poisson_libsize", n_layers=1, gene_likelihood="poisson", use_observed_lib_size=False,
            encode_covariates=True)
    if wanted("scvi_nb_genebatch"):
        fit("scvi_nb_genebatch", n_layers=2, gene_likelihood="nb", dispersion="gene-batch",
            use_observed_lib_size=False)
    if wanted("scvi_ln_refused"):
        # A logistic-normal latent, which scmz refuses: small, as only its refusal is tested.
        a = train.copy()
        scvi.model.SCVI.setup_anndata(a, batch_key="phase")
        m = scvi.model.SCVI(a, n_hidden=8, n_latent=2, latent_distribution="ln")
        m.train(max_epochs=1, batch_size=64, accelerator="cpu", enable_progress_bar=False)
        d = os.path.join(out, "scvi_ln_refused")
        shutil.rmtree(d, ignore_errors=True)
        m.save(d)
    if wanted("scvi_legacy_nb"):
        legacy()
if base is None:
    sys.exit(0)

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
