"""The new lot against the qualified lots: class fractions and the equivalence margins."""

from __future__ import annotations

import os

import numpy as np
from anndata import AnnData
from matplotlib.figure import Figure

from .._checks import MissingKeyError
from .._keys import KEYS
from ._utils import doc_show_save, finish, new_figure

_COLOURS = {"equivalent": "#2e7d32", "not equivalent": "#c62828", "inconclusive": "#f9a825"}


@doc_show_save
def compare_lots(
    adata: AnnData,
    *,
    key: str = KEYS.COMPARE,
    save: str | os.PathLike | None = None,
    show: bool | None = None,
    return_fig: bool = False,
    ax=None,
) -> Figure | None:
    """Each identity class: the qualified lots' fractions (grey range and mean), the new lot's
    fraction with its 95% interval, and the equivalence band (history mean +/- margin),
    coloured by the verdict.

    Parameters
    ----------
    adata
        The new lot after :func:`sct.tl.compare_lots`.
    key
        ``key_added`` of :func:`sct.tl.compare_lots`.
    {show_save}
    ax
        A matplotlib axes to draw into (this plot has one panel).

    Returns
    -------
    ``None`` when the figure is shown; the figure with ``return_fig=True``; the axes with
    ``show=False``.
    """
    if key not in adata.uns:
        raise MissingKeyError(f"adata.uns has no {key!r}: run sct.tl.compare_lots first.")
    rec = adata.uns[key]
    classes = rec["classes"]
    names = list(classes)
    fig, axes = new_figure(1, 1, cell=(7, 0.5 * len(names) + 1.5), ax=ax)
    ax = axes[0, 0]
    for y, name in enumerate(names):
        c = classes[name]
        ax.fill_betweenx(
            [y - 0.3, y + 0.3],
            c["history_mean"] - c["margin"],
            c["history_mean"] + c["margin"],
            color="#e0e0e0",
            lw=0,
        )
        ax.plot([c["history_min"], c["history_max"]], [y, y], color="#757575", lw=3)
        ax.plot(c["history_mean"], y, "|", color="#424242", ms=14)
        colour = _COLOURS.get(c["verdict"], "k")
        ax.errorbar(
            c["fraction"],
            y + 0.15,
            xerr=[[c["fraction"] - c["ci_low"]], [c["ci_high"] - c["fraction"]]],
            fmt="o",
            color=colour,
            capsize=3,
        )
        ax.text(
            1.01,
            y,
            c["verdict"],
            color=colour,
            va="center",
            fontsize=8,
            transform=ax.get_yaxis_transform(),
        )
    ax.set_yticks(np.arange(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("fraction of cells (new lot: 95% interval; grey: history range, band: margin)")
    n_hist = len(rec["history_lots"])
    ax.set_title(f"new lot ({rec['n_cells']} cells) vs {n_hist} qualified lots: {rec['verdict']}")
    return finish(fig, axes, show=show, return_fig=return_fig, save=save)
