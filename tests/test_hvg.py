"""Highly variable genes: batches too small to rank genes on their own are pooled, on record."""

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


def test_small_batch_means_pooled_ranking_on_record():
    adata = _lot(400, 3)
    used = seurat_v3_hvg(adata, n_top_genes=200, layer=None, batch_key="batch", subset=False)
    assert adata.var["highly_variable"].sum() == 200
    assert used["batch_key"] is None and used["span"] == 0.3
    assert "{'tiny': 3}" in used["note"] and "pooled" in used["note"]


def test_healthy_batches_use_the_default_span():
    adata = _lot(400, 400)
    used = seurat_v3_hvg(adata, n_top_genes=200, layer=None, batch_key="batch", subset=True)
    assert used == {"flavor": "seurat_v3", "n_top_genes": 200, "span": 0.3, "batch_key": "batch"}
    assert adata.n_vars == 200
