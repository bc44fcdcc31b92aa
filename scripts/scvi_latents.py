"""Loads a folder written by `scmz export NAME --format scvi-tools -o DIR` in scvi-tools and
writes the latent means it gives for a dataset, one cell per line, and for SCANVI models its
`predict()` label and probability per cell in OUT.predict.csv (used by tests/scvi_tools.rs to
check that exports round-trip; run in the peer's venv, see scripts/bench_train.py):

    ~/.cache/scmz/bench-venv/bin/python scripts/scvi_latents.py DIR DATA.h5ad OUT.csv
"""

import sys
import warnings

warnings.filterwarnings("ignore")

import anndata as ad  # noqa: E402
import numpy as np  # noqa: E402
import scvi  # noqa: E402

model_dir, data, out = sys.argv[1:4]
adata = ad.read_h5ad(data)
registry = scvi.model.base.BaseModelClass.load_registry(model_dir)
cls = getattr(scvi.model, registry["model_name"])
if cls is scvi.model.SCANVI:
    # The query's cells are unlabelled.
    setup = registry["setup_args"]
    adata.obs[setup["labels_key"]] = setup["unlabeled_category"]
model = cls.load(model_dir, adata=adata)
np.savetxt(out, model.get_latent_representation(), delimiter=",", fmt="%.9g")
if cls is scvi.model.SCANVI:
    p = model.predict(soft=True)
    top = p.to_numpy().argmax(1)
    with open(out.replace(".csv", ".predict.csv"), "w") as f:
        f.write("label,probability\n")
        for i, k in enumerate(top):
            f.write(f"{p.columns[k]},{p.to_numpy()[i, k]:.9g}\n")
print(f"scvi-tools {scvi.__version__}: {registry['model_name']} {model_dir} loaded, {adata.n_obs} cells in {out}")
