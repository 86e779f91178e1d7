"""Identity and composition plots: score distributions, UMAP, fractions against the spec."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.figure import Figure

from .._checks import MissingKeyError
from .._display import VERDICT_COLOURS
from .._keys import KEYS
from ._utils import doc_show_save, finish, new_figure


@doc_show_save
def identity(
    adata: AnnData,
    *,
    key: str = KEYS.IDENTITY,
    groupby: str = KEYS.CLUSTER,
    save: str | os.PathLike | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> Figure | None:
    """Identity scores per cluster, and the score and identity class on the UMAP.

    Parameters
    ----------
    adata
        Lot after :func:`sct.tl.identity_score` and :func:`sct.tl.cluster` (for the UMAP and
        the clusters).
    key
        ``key_added`` of :func:`sct.tl.identity_score`.
    groupby
        Column of ``.obs`` to group the score distributions by.
    {show_save}

    Returns
    -------
    ``None`` when the figure is shown; the figure with ``return_fig=True``; the axes with
    ``show=False``. The figure: box plots of the identity score (and its marker-panel score) per
    group, the UMAP coloured by identity score, and the UMAP coloured by identity class.
    """
    needed = [key, f"{key}_class", f"{key}_markers", groupby]
    missing = [c for c in needed if c not in adata.obs]
    if missing or "X_umap" not in adata.obsm:
        msg = (
            f"adata lacks {missing or ['obsm X_umap']}: run sct.tl.identity_score and "
            "sct.tl.cluster (for the clusters and the UMAP) first."
        )
        raise MissingKeyError(msg)
    groups = adata.obs[groupby].astype("category")
    score, markers = adata.obs[key].to_numpy(), adata.obs[f"{key}_markers"].to_numpy()
    classes = adata.obs[f"{key}_class"].astype("category")
    umap = adata.obsm["X_umap"]
    fig, axes = new_figure(1, 3, cell=(5, 4.5))
    ax = axes[0, 0]
    names = list(groups.cat.categories)
    pos = np.arange(len(names))
    for values, offset, colour, label in (
        (score, -0.2, "#1565c0", "identity"),
        (markers, 0.2, "#9e9e9e", "marker panel"),
    ):
        # a panel not assessed has NaN scores: nothing to draw
        data = [values[(groups == g).to_numpy() & ~np.isnan(values)] for g in names]
        box = ax.boxplot(
            data, positions=pos + offset, widths=0.35, patch_artist=True, showfliers=False
        )
        for patch in box["boxes"]:
            patch.set_facecolor(colour)
        ax.plot([], [], color=colour, lw=6, label=label)
    ax.set_xticks(pos, [str(n) for n in names], rotation=90, fontsize=7)
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("score")
    ax.set_title(f"target identity by {groupby}")
    ax.legend(fontsize=7, loc="lower right")
    ax = axes[0, 1]
    order = np.argsort(score)
    points = ax.scatter(
        umap[order, 0], umap[order, 1], c=score[order], s=4, lw=0, cmap="viridis", vmin=0, vmax=1
    )
    fig.colorbar(points, ax=ax, label="identity score")
    ax.set_title("identity score")
    ax = axes[0, 2]
    target = "target"  # the class sct.tl.identity_score gives the target's cells
    others = iter(OKABE_ITO)
    # the target underneath in grey, each impurity class on top in its own colour: the rare
    # cells a release exists to find are never hidden under the target's
    order = sorted(classes.cat.categories, key=lambda c: (c != target, str(c)))
    for name in order:
        sel = (classes == name).to_numpy()
        ax.scatter(
            umap[sel, 0],
            umap[sel, 1],
            s=3 if name == target else 8,
            lw=0,
            color=TARGET_GREY if name == target else next(others, "#000000"),
            label=f"{name} ({int(sel.sum())})",
        )
    ax.legend(fontsize=7, markerscale=3, loc="best")
    ax.set_title("identity class")
    for ax in axes[0, 1:]:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel("UMAP1")
        ax.set_ylabel("UMAP2")
    return finish(fig, axes, show=show, return_fig=return_fig, save=save)


# Okabe & Ito's colour-blind-safe palette, black last
OKABE_ITO = ("#E69F00", "#56B4E9", "#009E73", "#D55E00", "#CC79A7", "#0072B2", "#F0E442")
TARGET_GREY = "#c8c8c8"


@doc_show_save
def composition(
    adata: AnnData,
    *,
    key: str = KEYS.PURITY,
    save: str | os.PathLike | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> Figure | None:
    """Target and impurity fractions with their 95% intervals against the spec's limits.

    Parameters
    ----------
    adata
        Lot after :func:`sct.tl.assess_purity`.
    key
        ``key_added`` of :func:`sct.tl.assess_purity`.
    {show_save}

    Returns
    -------
    ``None`` when the figure is shown; the figure with ``return_fig=True``; the axes with
    ``show=False``. The figure: one row per criterion, the fraction as a point with its interval,
    the limit as a bar, coloured by verdict; the limit of detection as a dashed line.
    """
    if key not in adata.uns:
        msg = f"adata.uns has no {key!r}: run sct.tl.assess_purity(adata, spec) first."
        raise MissingKeyError(msg)
    from ..tl import PurityReport

    report = PurityReport.from_dict(adata.uns[key])
    rows = report.to_frame().iloc[::-1]
    target, impurities = rows.loc[["target"]], rows.drop(index="target")
    fig, axes = new_figure(1, 2, cell=(5, 0.35 * len(rows) + 1.5))
    for ax, part, title in ((axes[0, 0], target, "target"), (axes[0, 1], impurities, "impurities")):
        for y, (_, r) in enumerate(part.iterrows()):
            verdict = r["verdict"] if pd.notna(r["verdict"]) else None
            colour = VERDICT_COLOURS[verdict]
            err = [[r["fraction"] - r["ci_low"]], [r["ci_high"] - r["fraction"]]]
            ax.errorbar(r["fraction"], y, xerr=err, fmt="o", color=colour, capsize=3)
            if pd.notna(r["limit"]):
                ax.plot([r["limit"]] * 2, [y - 0.35, y + 0.35], color="black", lw=2)
            ax.annotate(
                verdict or "no limit",
                (1.0, y),
                xycoords=("axes fraction", "data"),
                fontsize=7,
                ha="right",
                va="center",
                color=colour,
            )
        ax.set_yticks(np.arange(len(part)), [str(n) for n in part.index], fontsize=8)
        ax.set_title(title)
        ax.set_xlabel("fraction (95% interval; black bar: spec limit)")
    low = min(target["ci_low"].min(), target["limit"].fillna(1).min())
    axes[0, 0].set_xlim(max(0.0, low - 0.05), 1.0)
    top = max(impurities["ci_high"].max(), impurities["limit"].fillna(0).max(), 0.01)
    axes[0, 1].set_xlim(0.0, min(1.0, 1.3 * top))
    axes[0, 1].axvline(report.lod95, ls="--", color="grey", lw=1)
    fig.suptitle(
        f"{report.verdict}: {report.n_cells} cells assessed; limit of detection "
        f"{report.lod95:.3%} (95%)",
        color=VERDICT_COLOURS.get(report.verdict),
    )
    return finish(fig, axes, show=show, return_fig=return_fig, save=save)
