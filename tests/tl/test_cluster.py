"""Clustering: real CAR-T product finds its proliferating cells; counts untouched; deterministic."""

from __future__ import annotations

import numpy as np
import pytest

import sc_celltherapy as sct


@pytest.fixture(scope="module")
def clustered_product(cart_product_qc):
    adata = sct.pp.remove_flagged(cart_product_qc, copy=True)
    counts_before = adata.X.copy()
    sct.tl.cluster(adata)
    return adata, counts_before


def test_cart_product_has_proliferating_cluster(clustered_product):
    adata, _ = clustered_product
    markers = adata.uns["sct_cluster_markers"]["names"]
    top = {c: set(markers[c][:20]) for c in adata.obs["sct_cluster"].cat.categories}
    proliferating = [c for c, genes in top.items() if {"MKI67", "TOP2A"} & genes]
    assert proliferating, top
    # and that cluster really is enriched for cycling cells by an independent count
    cells = adata.obs["sct_cluster"].isin(proliferating).to_numpy()
    cycling = np.asarray((adata[:, ["MKI67", "TOP2A"]].X > 0).sum(1)).ravel() > 0
    assert cycling[cells].mean() > 3 * cycling[~cells].mean()


def test_cluster_leaves_counts_and_records(clustered_product):
    adata, counts_before = clustered_product
    assert (adata.X != counts_before).nnz == 0
    assert "sct_lognorm" in adata.layers
    total = np.expm1(adata.layers["sct_lognorm"]).sum(1)
    np.testing.assert_allclose(np.asarray(total).ravel(), 1e4, rtol=1e-3)
    params = adata.uns["sct_cluster"]
    assert params["hvg_flavor"] == "seurat_v3" and params["leiden_flavor"] == "igraph"
    assert params["n_clusters"] == adata.obs["sct_cluster"].nunique() > 3
    assert adata.var["highly_variable"].sum() == 2000
    assert adata.obsm["X_umap"].shape == (adata.n_obs, 2)


def test_cluster_deterministic_and_recovers_toy_populations():
    from sklearn.metrics import homogeneity_score

    lot = sct.datasets.toy_product(n_cells=800, seed=2, doublet_rate=0, low_quality_rate=0)
    a, b = lot.copy(), lot.copy()
    sct.tl.cluster(a, n_top_genes=500, resolution=0.3)
    sct.tl.cluster(b, n_top_genes=500, resolution=0.3)
    assert (a.obs["sct_cluster"] == b.obs["sct_cluster"]).all()
    np.testing.assert_array_equal(a.obsm["X_umap"], b.obsm["X_umap"])
    # each cluster holds one planted population (the large T population may split, e.g. cycling)
    homogeneity = homogeneity_score(a.obs["true_population"], a.obs["sct_cluster"])
    assert homogeneity > 0.9, homogeneity


def test_cluster_bad_arguments():
    adata = sct.datasets.toy_product(n_cells=100, seed=0)
    with pytest.raises(sct.InputError, match="resolution"):
        sct.tl.cluster(adata, resolution=0)
    with pytest.raises(sct.InputError, match="use_rep"):
        sct.tl.cluster(adata, use_rep="X_missing")
