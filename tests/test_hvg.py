"""Highly variable genes survive a batch too small for seurat_v3's loess."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from anndata import AnnData

from sc_celltherapy._hvg import seurat_v3_hvg


def _lot(n_big: int, n_small: int, seed: int = 0) -> AnnData:
    rng = np.random.default_rng(seed)
    means = rng.gamma(0.3, 2.0, size=2000)
    X = rng.poisson(means, size=(n_big + n_small, means.size)).astype(np.float32)
    adata = AnnData(sp.csr_matrix(X))
    adata.obs["batch"] = ["big"] * n_big + ["tiny"] * n_small
    return adata


def test_tiny_batch_falls_back_and_records_it():
    adata = _lot(400, 3)
    used = seurat_v3_hvg(adata, n_top_genes=200, layer=None, batch_key="batch", subset=False)
    assert adata.var["highly_variable"].sum() == 200
    # measured: the default span and 0.5 fail on the 3-cell batch, 1.0 succeeds
    assert used == {"flavor": "seurat_v3", "n_top_genes": 200, "span": 1.0, "batch_key": "batch"}


def test_healthy_batches_use_the_default_span():
    adata = _lot(400, 400)
    used = seurat_v3_hvg(adata, n_top_genes=200, layer=None, batch_key="batch", subset=True)
    assert used == {"flavor": "seurat_v3", "n_top_genes": 200, "span": 0.3, "batch_key": "batch"}
    assert adata.n_vars == 200
