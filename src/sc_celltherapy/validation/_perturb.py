"""Robustness factors of a validation plan: a lot changed one way at a time, with known truth.

Each function returns a new lot (the input is not changed) and draws from ``rng`` alone, so a
seed reproduces it. The spiked-cell marks (``obs["sct_spiked"]``, ``obs["sct_material"]``)
follow the cells.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import scipy.sparse as sp
from anndata import AnnData


def _csr(adata: AnnData) -> sp.csr_matrix:
    # a copy: csr_matrix() of a csr shares its index arrays, and eliminate_zeros() would
    # then rewrite the input lot's matrix in place
    return sp.csr_matrix(adata.X, dtype=np.float32, copy=True)


def thin_depth(adata: AnnData, fraction: float, rng) -> AnnData:
    """Sequencing depth cut to ``fraction``: every count binomially thinned (each read kept
    with probability ``fraction``), as a shallower run of the same library would be."""
    X = _csr(adata)
    X.data = rng.binomial(X.data.astype(np.int64), fraction).astype(np.float32)
    X.eliminate_zeros()
    out = adata.copy()
    out.X = X
    return out


def drop_genes(adata: AnnData, fraction: float, genes, rng) -> AnnData:
    """A panel or annotation that lacks ``fraction`` of ``genes`` (the reference's genes in
    the lot): those genes removed from the lot."""
    present = np.array([g for g in genes if g in adata.var_names])
    gone = rng.choice(present, int(round(fraction * present.size)), replace=False)
    return adata[:, ~adata.var_names.isin(gone)].copy()


def add_ambient(adata: AnnData, share: float, rng) -> AnnData:
    """Ambient RNA: ``share`` of each cell's counts replaced by reads drawn from the lot's
    pooled profile (its lysate), the cell's library size kept."""
    X = _csr(adata)
    size = np.asarray(X.sum(axis=1)).ravel()
    profile = np.asarray(X.sum(axis=0)).ravel()
    profile = profile / profile.sum()
    own = X.copy()
    own.data = rng.binomial(own.data.astype(np.int64), 1 - share).astype(np.float32)
    n_ambient = rng.binomial(size.astype(np.int64), share)
    rows, cols = [], []
    for i, k in enumerate(n_ambient):
        if k:
            genes = rng.choice(profile.size, int(k), p=profile)
            rows.append(np.full(genes.size, i))
            cols.append(genes)
    if rows:
        r, c = np.concatenate(rows), np.concatenate(cols)
        ambient = sp.csr_matrix((np.ones(r.size, np.float32), (r, c)), shape=X.shape)
        own = own + ambient
    out = adata.copy()
    out.X = sp.csr_matrix(own)
    return out


def add_doublets(adata: AnnData, rate: float, rng) -> AnnData:
    """Doublets: ``rate`` x cells extra barcodes, each the summed counts of two random cells
    (heterotypic or not, as droplets pair them), marked ``obs["sct_planted_doublet"]``."""
    n = int(round(rate * adata.n_obs))
    X = _csr(adata)
    a, b = rng.choice(adata.n_obs, n), rng.choice(adata.n_obs, n)
    doublets = ad.AnnData(X=sp.csr_matrix(X[a] + X[b]), var=adata.var[[]].copy())
    doublets.obs_names = [f"planted-doublet-{i}" for i in range(n)]
    for col in adata.obs.columns:
        # a doublet is of neither material: it carries no spiked mark
        doublets.obs[col] = adata.obs[col].iloc[a].to_numpy()
        if adata.obs[col].dtype == bool:
            doublets.obs[col] = False
    out = ad.concat([adata, doublets], join="inner", merge="same")
    out.obs["sct_planted_doublet"] = np.r_[np.zeros(adata.n_obs, bool), np.ones(n, bool)]
    return out
