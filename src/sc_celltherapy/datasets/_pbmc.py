"""The embedded real reference: 700 labelled PBMCs that ship inside scanpy."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp
from anndata import AnnData

from .._keys import KEYS


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
    adata.uns[KEYS.DATASET] = {
        "name": "pbmc_reference",
        "kind": "real data",
        "source": "scanpy.datasets.pbmc68k_reduced (ships inside scanpy); 10x Genomics PBMC 68k "
        "(Zheng et al. 2017), subset of 700 cells",
        "licence": "BSD-3-Clause (scanpy) / CC BY 4.0 (10x Genomics data)",
        "recovery": "round(expm1(raw.X) * n_counts / 1e4)",
        "labels": "obs['cell_type'] = original bulk_labels (FACS-sorted population of origin)",
    }
    return adata


# Planted composition of the demo lot: a T-cell product with known contaminants.
DEMO_LOT_COMPOSITION = {
    "T cells": 0.88,
    "CD14+ Monocyte": 0.06,
    "CD56+ NK": 0.02,
    "CD19+ B": 0.025,
    "Dendritic": 0.015,
}
_T_LABELS = (
    "CD4+/CD25 T Reg",
    "CD4+/CD45RA+/CD25- Naive T",
    "CD4+/CD45RO+ Memory",
    "CD8+ Cytotoxic T",
    "CD8+/CD45RA+ Naive Cytotoxic",
)


def pbmc_demo_lot(n_cells: int = 1000, *, seed: int = 0) -> AnnData:
    """A demo product lot with known contaminants, generated from the embedded real PBMCs.

    Cells are drawn (with replacement) from :func:`pbmc_reference` by population at the planted
    fractions of :data:`DEMO_LOT_COMPOSITION` (88% T cells; 6% monocytes, 2% NK, 2.5% B, 1.5%
    dendritic cells), and each drawn cell's counts are binomially thinned to 90-100% of its UMIs (gently: the 765-gene panel leaves a median 243 genes per cell, near the 200-gene QC floor),
    so repeated draws of one cell are distinct, as two sequencings of one cell would be.

    This is generated data, derived from real cells, and labelled so: the planted population
    of each cell is in ``obs["planted_identity"]``. The cells are the ones the embedded
    reference (``pbmc_demo``) is built from, so a demo release shows the chain and its outputs,
    not the accuracy of mapping (``benchmarks/`` measures that on held-out patients).

    Parameters
    ----------
    n_cells
        Cells drawn.
    seed
        Seed of the draw and the thinning.

    Returns
    -------
    AnnData with integer counts in ``.X``, ``obs["planted_identity"]``,
    ``obs["source_cell"]`` and provenance in ``uns["sct_dataset"]``.
    """
    ref = pbmc_reference()
    rng = np.random.default_rng(seed)
    labels = ref.obs["cell_type"].astype(str).to_numpy()
    groups = {"T cells": np.flatnonzero(np.isin(labels, _T_LABELS))}
    groups |= {k: np.flatnonzero(labels == k) for k in DEMO_LOT_COMPOSITION if k != "T cells"}
    sizes = {k: int(round(f * n_cells)) for k, f in DEMO_LOT_COMPOSITION.items()}
    sizes["T cells"] = n_cells - sum(v for k, v in sizes.items() if k != "T cells")
    picks = np.concatenate([rng.choice(groups[k], size=sizes[k]) for k in DEMO_LOT_COMPOSITION])
    planted = np.repeat(list(DEMO_LOT_COMPOSITION), [sizes[k] for k in DEMO_LOT_COMPOSITION])
    order = rng.permutation(n_cells)
    picks, planted = picks[order], planted[order]
    counts = sp.csr_matrix(ref.X[picks], dtype=np.float32)
    keep = rng.uniform(0.9, 1.0, size=n_cells)
    counts.data = rng.binomial(
        counts.data.astype(np.int64), np.repeat(keep, np.diff(counts.indptr))
    ).astype(np.float32)
    counts.eliminate_zeros()
    obs = pd.DataFrame(
        {
            "planted_identity": pd.Categorical(planted, categories=list(DEMO_LOT_COMPOSITION)),
            "source_cell": ref.obs_names[picks].to_numpy(),
        },
        index=[f"demo_cell_{i:05d}" for i in range(n_cells)],
    )
    lot = AnnData(X=counts, obs=obs, var=ref.var[[]].copy())
    lot.uns[KEYS.DATASET] = {
        "name": "pbmc_demo_lot",
        "kind": "generated from real data",
        "source": ref.uns[KEYS.DATASET]["source"],
        "licence": ref.uns[KEYS.DATASET]["licence"],
        "generation": (
            f"{n_cells} cells drawn with replacement by population at planted fractions "
            f"{DEMO_LOT_COMPOSITION}, counts binomially thinned to 90-100%, seed {seed}"
        ),
    }
    return lot
