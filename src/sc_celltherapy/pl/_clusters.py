"""Cluster plots: UMAP coloured by cluster, and the top marker genes per cluster."""

from __future__ import annotations

import os

import numpy as np
from anndata import AnnData
from matplotlib.figure import Figure

from .._checks import MissingKeyError
from .._keys import KEYS
from .._markers import QUALITY_GENES
from ._utils import doc_show_save, finish, new_figure


@doc_show_save
def clusters(
    adata: AnnData,
    *,
    key: str = KEYS.CLUSTER,
    n_markers: int = 3,
    hide_housekeeping: bool = True,
    save: str | os.PathLike | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> Figure | None:
    """UMAP coloured by cluster, with each cluster's top marker genes listed beside it.

    Parameters
    ----------
    adata
        Lot after :func:`sct.tl.cluster`.
    key
        ``key_added`` of :func:`sct.tl.cluster`.
    n_markers
        Marker genes listed per cluster.
    hide_housekeeping
        Leave mitochondrial, ribosomal and housekeeping genes (:data:`HOUSEKEEPING`) out of the
        listed markers: they name a cluster by its quality, not its identity. The full marker
        table stays in ``adata.uns[f"{key}_markers"]``.
    {show_save}

    Returns
    -------
    ``None`` when the figure is shown; the figure with ``return_fig=True``; the axes with
    ``show=False``. Cluster colours are scanpy's ``adata.uns[f"{key}_colors"]`` when they
    fit the clusters, and are written there otherwise, so ``sc.pl.umap(adata, color=key)``
    draws the same colours.
    """
    if key not in adata.obs or "X_umap" not in adata.obsm:
        msg = f"No clustering {key!r} with a UMAP in adata: run sct.tl.cluster(adata) first."
        raise MissingKeyError(msg)
    labels = adata.obs[key].astype("category")
    umap = adata.obsm["X_umap"]
    fig, axes = new_figure(1, 2, cell=(5, 4.5))
    ax, text_ax = axes[0]
    colours = cluster_colours(adata, key)
    for i, name in enumerate(labels.cat.categories):
        sel = (labels == name).to_numpy()
        ax.scatter(umap[sel, 0], umap[sel, 1], s=4, color=colours[i], label=str(name), lw=0)
        centre = np.median(umap[sel], axis=0)
        ax.text(centre[0], centre[1], str(name), fontsize=9, weight="bold")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel("UMAP1")
    ax.set_ylabel("UMAP2")
    ax.set_title(f"{labels.cat.categories.size} clusters, {adata.n_obs} cells")
    markers = adata.uns.get(f"{key}_markers")
    lines = []
    for name in labels.cat.categories:
        n = int((labels == name).sum())
        names = list(markers["names"][str(name)]) if markers is not None else []
        if hide_housekeeping:
            names = [g for g in names if not is_housekeeping(g)]
        top = names[:n_markers]
        lines.append(f"{name} ({n}): {', '.join(top)}")
    text_ax.axis("off")
    text_ax.text(0, 1, "\n".join(lines), va="top", family="monospace", fontsize=8)
    text_ax.set_title("top markers per cluster")
    return finish(fig, axes, show=show, return_fig=return_fig, save=save)


# the most abundant housekeeping transcripts: like QUALITY_GENES, they name a cluster by how
# well its cells were captured, not by what they are
HOUSEKEEPING = frozenset(
    {"ACTB", "ACTG1", "GAPDH", "B2M", "TMSB4X", "TMSB10", "EEF1A1", "TPT1", "FTL", "FTH1"}
    | {"MALAT1", "NEAT1", "UBA52", "FAU", "UBB", "UBC", "PPIA", "MYL6", "HSP90AA1", "HSPA8"}
)


def is_housekeeping(gene: str) -> bool:
    """Mitochondrial, ribosomal or one of :data:`HOUSEKEEPING` (any case)."""
    return bool(QUALITY_GENES.match(gene)) or gene.upper() in HOUSEKEEPING


def cluster_colours(adata: AnnData, key: str) -> list:
    """scanpy's ``uns[f"{key}_colors"]`` if it has one colour per category, else a palette
    written there."""
    from matplotlib.colors import to_hex

    n = adata.obs[key].astype("category").cat.categories.size
    stored = adata.uns.get(f"{key}_colors")
    if stored is not None and len(stored) == n:
        return list(stored)
    colours = [to_hex(c) for c in _palette(n)]
    adata.uns[f"{key}_colors"] = np.array(colours, dtype=object)
    return colours


def _palette(n: int):
    from matplotlib import colormaps

    cmap = colormaps["tab20"]
    return [cmap(i % 20) for i in range(n)]
