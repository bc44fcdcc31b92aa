"""Loads a folder written by `scmz export NAME --format scvi-tools -o DIR` in scvi-tools and
writes the latent means it gives for a dataset, one cell per line, and for SCANVI models its
`predict()` label and probability per cell in OUT.predict.csv, and in OUT.at_mean.csv per cell the
reconstruction loss and KL terms at the latent mean (`at_mean`, also used by
scripts/make_scvi_fixtures.py). Used by tests/scvi_tools.rs to check that exports round-trip; run
in the peer's venv, see scripts/bench_train.py:

    ~/.cache/scmz/bench-venv/bin/python scripts/scvi_latents.py DIR DATA.h5ad OUT.csv
"""

import sys
import warnings

warnings.filterwarnings("ignore")

import anndata as ad  # noqa: E402
import numpy as np  # noqa: E402
import scvi  # noqa: E402
import torch  # noqa: E402
from torch.distributions import kl_divergence  # noqa: E402


def at_mean(model, adata, path):
    """Per cell of `adata`, at the latent mean (and the library posterior's mean where the model
    learns the library size): scvi-tools' reconstruction loss -log p(x), the latent's KL and the
    library's KL (0 where the library size is observed), as CSV."""
    mod = model.module
    mod.eval()
    x = adata.X.toarray() if hasattr(adata.X, "toarray") else np.asarray(adata.X)
    x = torch.tensor(x, dtype=torch.float32)
    mgr = model.get_anndata_manager(adata, required=True)
    b = torch.tensor(np.asarray(mgr.get_from_registry("batch")), dtype=torch.long)
    with torch.no_grad():
        inf = mod.inference(x, b)
        qz, ql = inf["qz"], inf["ql"]
        lib = ql.loc if ql is not None else inf["library"]
        gen = mod.generative(z=qz.loc, library=lib, batch_index=b)
        recon = -gen["px"].log_prob(x).sum(-1)
        klz = kl_divergence(qz, gen["pz"]).sum(-1)
        kll = kl_divergence(ql, gen["pl"]).sum(-1) if ql is not None else torch.zeros_like(klz)
    np.savetxt(path, torch.stack([recon, klz, kll], 1).numpy(), delimiter=",", fmt="%.9g",
               header="recon,kl_z,kl_library", comments="")


def main():
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
    at_mean(model, adata, out.replace(".csv", ".at_mean.csv"))
    if cls is scvi.model.SCANVI:
        p = model.predict(soft=True)
        top = p.to_numpy().argmax(1)
        with open(out.replace(".csv", ".predict.csv"), "w") as f:
            f.write("label,probability\n")
            for i, k in enumerate(top):
                f.write(f"{p.columns[k]},{p.to_numpy()[i, k]:.9g}\n")
    print(f"scvi-tools {scvi.__version__}: {registry['model_name']} {model_dir} loaded, {adata.n_obs} cells in {out}")


if __name__ == "__main__":
    main()
