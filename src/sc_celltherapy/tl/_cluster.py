"""Clustering of a lot: normalise, HVGs, PCA, neighbours, Leiden, UMAP, markers."""

from __future__ import annotations

import scanpy as sc
from anndata import AnnData

from .._checks import InputError, check_lot, get_matrix
from .._hvg import seurat_v3_hvg
from .._keys import KEYS
from .._logging import timed
from .._utils import EXACT_KNN_MAX_CELLS, uns_safe

# Fewer cells give no neighbourhood graph worth the name (15 neighbours by default).
MIN_CELLS_TO_CLUSTER = 10

LOGNORM_LAYER = KEYS.LOGNORM


def _knn_transformer(n_obs: int) -> str | None:
    return "sklearn" if n_obs <= EXACT_KNN_MAX_CELLS else None


def cluster(
    adata: AnnData,
    *,
    n_top_genes: int = 2000,
    resolution: float = 1.0,
    n_pcs: int = 30,
    n_neighbors: int = 15,
    use_rep: str | None = None,
    layer: str | None = None,
    batch_key: str | None = None,
    random_state: int = 0,
    markers: bool = True,
    key_added: str = KEYS.CLUSTER,
) -> None:
    """Cluster a lot and find marker genes per cluster.

    Counts are left untouched: normalised (10,000 per cell) log values go to
    ``adata.layers["sct_lognorm"]``; highly variable genes are chosen on counts (``seurat_v3``);
    PCA runs on the log values of those genes without densifying the matrix; then a kNN graph,
    Leiden (igraph flavour) and UMAP, and Wilcoxon marker genes per cluster.

    Parameters
    ----------
    adata
        Lot with raw counts in ``.X`` or ``layer``, usually after :func:`sct.pp.remove_flagged`.
    n_top_genes
        Number of highly variable genes (capped at the genes available).
    resolution
        Leiden resolution.
    n_pcs
        Principal components used for the graph.
    n_neighbors
        Neighbours of the kNN graph.
    use_rep
        An existing ``.obsm`` representation for the graph (e.g. ``"X_sct_ref"`` after mapping);
        ``None`` computes PCA.
    layer
        Layer holding raw counts; ``None`` uses ``.X``.
    batch_key
        Column of ``.obs`` with samples; HVGs are then chosen per sample (scanpy's ``batch_key``).
    random_state
        Seed for PCA, Leiden and UMAP.
    markers
        Whether to rank marker genes per cluster (Wilcoxon over every gene: about 20 s on
        20,000 cells and 2 CPU cores).
    key_added
        Name of the result keys.

    Returns
    -------
    Nothing; adds ``adata.layers["sct_lognorm"]``, ``adata.var["highly_variable"]``,
    ``adata.obsm["X_pca"]`` and ``adata.obsm["X_umap"]``, the graph in ``adata.obsp``,
    ``adata.obs[key_added]`` (categorical cluster), ``adata.uns[f"{key_added}_markers"]``
    (scanpy's ``rank_genes_groups`` result) and ``adata.uns[key_added]`` (parameters).

    Examples
    --------
    >>> import sc_celltherapy as sct
    >>> adata = sct.datasets.toy_product(n_cells=400)
    >>> sct.tl.cluster(adata, n_top_genes=500)
    >>> adata.obs["sct_cluster"].nunique() > 1
    True
    """
    if not resolution > 0:
        msg = f"resolution must be positive, got {resolution}."
        raise InputError(msg)
    check_lot(adata, layer=layer, batch_key=batch_key)
    if use_rep is not None and use_rep not in adata.obsm:
        msg = f"use_rep={use_rep!r} not in adata.obsm (has {list(adata.obsm)}); use None for PCA."
        raise InputError(msg)
    if adata.n_obs < MIN_CELLS_TO_CLUSTER:
        msg = (
            f"Only {adata.n_obs} cells: too few to cluster (at least {MIN_CELLS_TO_CLUSTER} are "
            "needed)."
        )
        raise InputError(msg)

    with timed("normalise and log"):
        adata.layers[LOGNORM_LAYER] = get_matrix(adata, layer).copy()
        sc.pp.normalize_total(adata, target_sum=1e4, layer=LOGNORM_LAYER)
        sc.pp.log1p(adata, layer=LOGNORM_LAYER)
    n_hvg = min(n_top_genes, adata.n_vars - 1)
    with timed("highly variable genes"):
        hvg = seurat_v3_hvg(
            adata, n_top_genes=n_hvg, layer=layer, batch_key=batch_key, subset=False
        )
    if use_rep is None:
        n_comps = min(n_pcs, n_hvg - 1, adata.n_obs - 1)
        with timed("PCA"):
            sc.pp.pca(
                adata,
                n_comps=n_comps,
                layer=LOGNORM_LAYER,
                mask_var="highly_variable",
                random_state=random_state,
            )
        rep, n_rep = "X_pca", n_comps
    else:
        rep, n_rep = use_rep, None
    with timed("neighbours, Leiden, UMAP"):
        sc.pp.neighbors(
            adata,
            n_neighbors=min(n_neighbors, adata.n_obs - 1),
            use_rep=rep,
            n_pcs=n_rep,
            random_state=random_state,
            transformer=_knn_transformer(adata.n_obs),
        )
        sc.tl.leiden(
            adata,
            resolution=resolution,
            flavor="igraph",
            n_iterations=2,
            directed=False,
            random_state=random_state,
            key_added=key_added,
        )
        sc.tl.umap(adata, random_state=random_state)
    markers_key = f"{key_added}_markers"
    if markers and adata.obs[key_added].nunique() > 1:
        with timed("marker genes"):
            sc.tl.rank_genes_groups(
                adata,
                groupby=key_added,
                method="wilcoxon",
                layer=LOGNORM_LAYER,
                use_raw=False,
                key_added=markers_key,
            )
    adata.uns[key_added] = uns_safe(
        {
            "n_top_genes": n_hvg,
            "resolution": resolution,
            "n_pcs": n_rep,
            "n_neighbors": n_neighbors,
            "use_rep": rep,
            "counts_layer": layer,
            "batch_key": batch_key,
            "random_state": random_state,
            "normalisation": "normalize_total(1e4) + log1p",
            "hvg_flavor": "seurat_v3",
            "hvg_loess_span": hvg["span"],
            "leiden_flavor": "igraph",
            "n_clusters": int(adata.obs[key_added].nunique()),
            "markers_key": markers_key if markers else None,
            "knn": _knn_transformer(adata.n_obs) or "pynndescent",
        }
    )
