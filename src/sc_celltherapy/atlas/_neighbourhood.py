"""Neighbourhood evidence for the out-of-reference call: what a cell's own lot says around it.

The cell-level evidence (:mod:`._novelty`) scores each cell alone. A state the reference lacks
is seldom one cell: it is a group of lot cells alike in expression (a left-out T-cell subtype, a
population of monocytes), and the group's scores are higher than any reference group's, even
where single cells sit below the threshold (the latent outlier ratio of one cell is noisy). The
neighbourhood component is the *median* cell-level score over the cell and its ``LOT_K - 1``
nearest lot cells, neighbours found in the lot's *own* expression space (PCA of its
log-normalised counts on its own highly variable genes), never in the reference-mapped latent,
where scArches surgery places foreign cells among reference cells.

It stays in the cell-level score's units (no scale of its own): the combined score is the larger
of the cell's own score and its neighbourhood's median, under one threshold. A cell is out of
reference when it is, or when most of its neighbourhood is. A median, not a mean: one foreign
cell among a T cell's neighbours cannot lift it. No rescaling: the median of a neighbourhood
varies less than one cell's score, and dividing it by its own held-out 99% quantile turned a
new tissue's mild, uniform shift into calls (the unsorted marrow's T cells: 6.9% unassigned
against 0.6%; ``benchmarks/oor_neighbourhood.py``).

The reference's held-out donors are scored the same way, each donor's held-out cells standing in
for a lot (neighbours among that donor's cells only), and the combined threshold is the
split-conformal quantile of their combined scores. The component only adds evidence, so a lone
foreign cell among thousands of in-reference cells is still called by its own score.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

# A cell and its 14 nearest lot cells: scanpy's default neighbourhood (n_neighbors=15), taken as
# is rather than tuned on the benchmark's patients.
LOT_K = 15
N_PCS, N_TOP_GENES = 30, 2000
# Below this many cells a lot has no neighbourhood to speak of: each cell is its own.
MIN_LOT_CELLS = 3


def lot_neighbours(counts, *, k: int = LOT_K, seed: int = 0) -> np.ndarray:
    """Each cell's ``k`` nearest cells of the same lot, itself first (cells x k indices), in
    the lot's own expression space: counts per 10,000, log1p, the lot's top 2,000 genes by
    normalised dispersion (scanpy's ``seurat`` flavour), 30 principal components.

    Parameters
    ----------
    counts
        The lot's cells x genes raw counts (sparse or dense).
    k
        Neighbours, the cell included; at most the lot's size.
    seed
        PCA's random state (the result is deterministic for a seed).
    """
    import scanpy as sc
    from anndata import AnnData
    from sklearn.neighbors import NearestNeighbors

    counts = sp.csr_matrix(counts)
    n = counts.shape[0]
    k = min(k, n)
    if n < MIN_LOT_CELLS:
        return np.arange(n)[:, None]
    # genes first, then float32: one copy of the lot's counts, not two
    lot = AnnData(counts[:, np.asarray(counts.getnnz(axis=0)).ravel() > 0].astype(np.float32))
    sc.pp.normalize_total(lot, target_sum=1e4)
    sc.pp.log1p(lot)
    n_top = min(N_TOP_GENES, lot.n_vars)
    sc.pp.highly_variable_genes(lot, flavor="seurat", n_top_genes=n_top, subset=True)
    n_comps = min(N_PCS, lot.n_obs - 1, lot.n_vars - 1)
    sc.pp.pca(lot, n_comps=n_comps, svd_solver="arpack", random_state=seed)
    _, idx = NearestNeighbors(n_neighbors=k).fit(lot.obsm["X_pca"]).kneighbors(lot.obsm["X_pca"])
    # a duplicate cell may come before the cell itself: put the cell first
    own = np.arange(n)[:, None]
    rest = np.where(idx == own, -1, idx)
    rest = np.array([r[r >= 0][: k - 1] for r in rest])
    return np.hstack([own, rest.reshape(n, k - 1)])


def neighbourhood_median(cell_score: np.ndarray, neighbours: np.ndarray) -> np.ndarray:
    """Median cell-level score over each cell's neighbours, the cell included.

    Parameters
    ----------
    cell_score
        Each lot cell's cell-level out-of-reference score.
    neighbours
        Cells x k indices of each cell's neighbours (:func:`lot_neighbours`).
    """
    return np.median(np.asarray(cell_score, dtype=float)[neighbours], axis=1)


def held_out_neighbourhood(
    counts,
    rows: np.ndarray,
    donors: np.ndarray,
    cell_score: np.ndarray,
    *,
    k: int = LOT_K,
    seed: int = 0,
) -> np.ndarray:
    """The neighbourhood component of held-out reference cells (``rows`` of ``counts``, with
    their ``donors`` and ``cell_score``): each donor's cells are one lot (neighbours among that
    donor's held-out cells only), as a new lot is at mapping. Each donor's rows are sliced from
    ``counts`` in turn: a copy of all held-out cells at once would double an atlas's counts."""
    counts = sp.csr_matrix(counts)  # no copy when it is CSR already
    out = np.zeros(rows.size)
    for d in np.unique(donors):
        idx = np.flatnonzero(donors == d)
        out[idx] = neighbourhood_median(
            cell_score[idx], lot_neighbours(counts[rows[idx]], k=k, seed=seed)
        )
    return out


def fit_oor_with_neighbourhood(
    oof: dict[str, np.ndarray], counts, donors: np.ndarray, held: np.ndarray, cells: np.ndarray
) -> dict:
    """The out-of-reference scales and threshold with the neighbourhood component.

    Parameters
    ----------
    oof
        Each cell-level component's out-of-fold value per reference cell (``latent``,
        ``expression``).
    counts, donors
        The reference's counts (the expression genes) and each cell's donor.
    held
        Cells held out by some calibration fold (they form the held-out lots).
    cells
        The held-out cells the threshold is fitted on (their label known to their fold).
    """
    from ._novelty import combine, component_scales, fit_oor

    scales = component_scales(oof, cells)
    cell_score = combine({c: v[held] for c, v in oof.items()}, scales)
    neighbourhood = np.full(held.size, np.nan)
    neighbourhood[held] = held_out_neighbourhood(
        counts, np.flatnonzero(held), donors[held], cell_score
    )
    components = {c: v[cells] for c, v in oof.items()} | {"neighbourhood": neighbourhood[cells]}
    # the cell-level scales are fitted once, above; the neighbourhood is in their units
    return fit_oor(components, fixed_scales=scales | {"neighbourhood": 1.0})
