"""Cluster plots: UMAP coloured by cluster, and the top marker genes per cluster."""

from __future__ import annotations

import os

import numpy as np
from anndata import AnnData
from matplotlib.figure import Figure

from .._validate import MissingKeyError
from ._utils import new_figure, save_figure


def clusters(
    adata: AnnData,
    *,
    key: str = "sct_cluster",
    n_markers: int = 3,
    save: str | os.PathLike | None = None,
) -> Figure:
    """UMAP coloured by cluster, with each cluster's top marker genes listed beside it.

    Parameters
    ----------
    adata
        Lot after :func:`sct.tl.cluster`.
    key
        ``key_added`` of :func:`sct.tl.cluster`.
    n_markers
        Marker genes listed per cluster.
    save
        Path to save the figure to (format from its suffix).

    Returns
    -------
    The matplotlib figure.
    """
    if key not in adata.obs or "X_umap" not in adata.obsm:
        msg = f"No clustering {key!r} with a UMAP in adata: run sct.tl.cluster(adata) first."
        raise MissingKeyError(msg)
    labels = adata.obs[key].astype("category")
    umap = adata.obsm["X_umap"]
    fig, axes = new_figure(1, 2, cell=(5, 4.5))
    ax, text_ax = axes[0]
    colours = _palette(len(labels.cat.categories))
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
        top = list(markers["names"][str(name)][:n_markers]) if markers is not None else []
        lines.append(f"{name} ({n}): {', '.join(top)}")
    text_ax.axis("off")
    text_ax.text(0, 1, "\n".join(lines), va="top", family="monospace", fontsize=8)
    text_ax.set_title("top markers per cluster")
    save_figure(fig, save)
    return fig


def _palette(n: int):
    from matplotlib import colormaps

    cmap = colormaps["tab20"]
    return [cmap(i % 20) for i in range(n)]
