"""Loads a folder written by `scmz export NAME --format scvi-tools -o DIR` in scvi-tools and
writes the latent means it gives for a dataset, one cell per line (used by tests/scvi_tools.rs
to check that exports round-trip; run in the peer's venv, see scripts/bench_train.py):

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
model = scvi.model.SCVI.load(model_dir, adata=adata)
np.savetxt(out, model.get_latent_representation(), delimiter=",", fmt="%.9g")
print(f"scvi-tools {scvi.__version__}: {model_dir} loaded, latents of {adata.n_obs} cells in {out}")
