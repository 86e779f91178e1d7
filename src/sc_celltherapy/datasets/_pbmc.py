"""The embedded real reference: 700 labelled PBMCs that ship inside scanpy."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp
from anndata import AnnData


def pbmc_reference() -> AnnData:
    """Real, labelled PBMC counts (700 cells x 765 genes), recovered from scanpy's own file.

    ``scanpy.datasets.pbmc68k_reduced()`` (10x Genomics PBMC 68k, a subset; BSD-3 / CC BY 4.0)
    ships inside scanpy, so it is present wherever scanpy is and needs no network. Its ``.raw.X``
    holds ``log1p(counts / n_counts * 1e4)`` and ``obs["n_counts"]`` each cell's original total,
    so ``round(expm1(raw.X) * n_counts / 1e4)`` gives back the integer UMI counts.

    Returns
    -------
    AnnData with integer counts (float32, CSR) in ``.X``, the sorted-population labels in
    ``obs["cell_type"]`` (10 types, from the original ``bulk_labels``), each cell's original
    library size in ``obs["n_counts_original"]``, ``obs["dataset"]`` (one batch, "pbmc68k") and the provenance in ``uns["sct_dataset"]``.

    Examples
    --------
    >>> import sc_celltherapy as sct
    >>> ref = sct.datasets.pbmc_reference()
    >>> ref.shape
    (700, 765)
    """
    packaged = sc.datasets.pbmc68k_reduced()
    lognorm = packaged.raw.X
    lognorm = lognorm.toarray() if sp.issparse(lognorm) else np.asarray(lognorm)
    n_counts = packaged.obs["n_counts"].to_numpy(dtype=np.float64)[:, None]
    counts = np.rint(np.expm1(lognorm.astype(np.float64)) * n_counts / 1e4).astype(np.float32)
    adata = AnnData(
        X=sp.csr_matrix(counts),
        obs=packaged.obs[["bulk_labels"]].rename(columns={"bulk_labels": "cell_type"}).copy(),
        var=packaged.raw.var[[]].copy(),
    )
    adata.obs["n_counts_original"] = packaged.obs["n_counts"].to_numpy()
    # one batch: as the reference's batch covariate it lets every lot mapped onto the bundle
    # become a new batch that scArches surgery corrects for
    adata.obs["dataset"] = pd.Categorical(["pbmc68k"] * adata.n_obs)
    adata.uns["sct_dataset"] = {
        "name": "pbmc_reference",
        "kind": "real data",
        "source": "scanpy.datasets.pbmc68k_reduced (ships inside scanpy); 10x Genomics PBMC 68k "
        "(Zheng et al. 2017), subset of 700 cells",
        "licence": "BSD-3-Clause (scanpy) / CC BY 4.0 (10x Genomics data)",
        "recovery": "round(expm1(raw.X) * n_counts / 1e4)",
        "labels": "obs['cell_type'] = original bulk_labels (FACS-sorted population of origin)",
    }
    return adata
