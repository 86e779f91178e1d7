"""Figure helpers shared by the plotting functions."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure


def new_figure(nrows: int, ncols: int, *, cell: tuple[float, float] = (4, 3.5)):
    """A figure not registered with pyplot (no global state, no display needed)."""
    fig = Figure(figsize=(cell[0] * ncols, cell[1] * nrows), layout="constrained")
    axes = np.atleast_2d(fig.subplots(nrows, ncols, squeeze=False))
    return fig, axes


def save_figure(fig: Figure, save: str | os.PathLike | None) -> None:
    if save is None:
        return
    path = Path(save)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
