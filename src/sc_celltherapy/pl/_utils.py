"""Figure helpers shared by the plotting functions: scanpy's show / return_fig / save grammar."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure

# backends that cannot show a window or an inline image: a script's or CI's figures stay open
_NON_INTERACTIVE = {"agg", "pdf", "ps", "svg", "pgf", "cairo", "template"}


# scanpy's show / return_fig / save parameters, documented once (as scanpy's _doc_params does)
SHOW_SAVE_DOC = """save
        Path to save the figure to (format from its suffix).
    show
        Show the figure (``None``: when the matplotlib backend can, as in a notebook).
    return_fig
        Return the figure instead of showing it."""


def doc_show_save(func):
    """Fill ``{show_save}`` in a plotting function's docstring."""
    func.__doc__ = func.__doc__.replace("{show_save}", SHOW_SAVE_DOC)
    return func


def new_figure(nrows: int, ncols: int, *, cell: tuple[float, float] = (4, 3.5), ax=None):
    """A pyplot figure, so that notebook backends and ``plt.show()`` see it; or, for a
    single-panel plot, the caller's ``ax`` and its figure."""
    import matplotlib.pyplot as plt

    if ax is not None:
        return ax.figure, np.array([[ax]])
    fig = plt.figure(figsize=(cell[0] * ncols, cell[1] * nrows), layout="constrained")
    axes = np.atleast_2d(fig.subplots(nrows, ncols, squeeze=False))
    return fig, axes


def can_show() -> bool:
    """Whether the current matplotlib backend shows figures (a window or a notebook)."""
    return matplotlib.get_backend().lower() not in _NON_INTERACTIVE


def finish(fig: Figure, axes, *, show: bool | None, return_fig: bool, save):
    """End a plot as scanpy does: save it if asked; with ``return_fig`` return the figure
    (not shown); otherwise show it when ``show`` is true (``None``: when the backend can) and
    return nothing, or return the axes when ``show`` is false."""
    import matplotlib.pyplot as plt

    save_figure(fig, save)
    if return_fig:
        return fig
    if show is None:
        show = can_show()
    if show:
        plt.show()
        return None
    return axes if axes.size > 1 else axes[0, 0]


def save_figure(fig: Figure, save: str | os.PathLike | None) -> None:
    if save is None:
        return
    path = Path(save)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
