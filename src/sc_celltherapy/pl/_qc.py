"""QC plots: metric distributions per sample with the thresholds that were applied."""

from __future__ import annotations

import os

import numpy as np
from anndata import AnnData
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from .._checks import MissingKeyError
from .._keys import KEYS
from .._utils import iter_samples
from ._utils import doc_show_save, finish, new_figure

# (obs column, threshold key in uns, axis label, log x axis)
_PANELS = (
    ("total_counts", "total_counts", "UMI counts per cell", True),
    ("n_genes_by_counts", "n_genes_by_counts", "genes detected per cell", True),
    ("pct_counts_mt", "pct_counts_mt", "% mitochondrial counts", False),
    ("pct_counts_in_top_20_genes", "pct_counts_in_top_20_genes", "% counts in top 20 genes", False),
)


@doc_show_save
def qc(
    adata: AnnData,
    *,
    key: str = KEYS.LOW_QUALITY,
    save: str | os.PathLike | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> Figure | None:
    """Distributions of the QC metrics, one row per sample, with the thresholds drawn.

    Parameters
    ----------
    adata
        Lot after :func:`sct.pp.qc_metrics` (and :func:`sct.pp.flag_low_quality` for thresholds).
    key
        ``key_added`` of :func:`sct.pp.flag_low_quality` whose thresholds are drawn.
    {show_save}

    Returns
    -------
    ``None`` when the figure is shown; the figure with ``return_fig=True``; the axes with
    ``show=False``. The figure. Kept cells are grey, flagged cells red; dashed lines are thresholds.
    """
    if "total_counts" not in adata.obs:
        msg = "No QC metrics in adata.obs: run sct.pp.qc_metrics(adata) first."
        raise MissingKeyError(msg)
    record = adata.uns.get(key, {})
    batch_key = record.get("params", {}).get("batch_key")
    samples = list(iter_samples(adata, batch_key))
    fig, axes = new_figure(len(samples), len(_PANELS), cell=(3.2, 2.4))
    flagged = (
        adata.obs[key].to_numpy(dtype=bool) if key in adata.obs else np.zeros(adata.n_obs, bool)
    )
    for row, (sample, mask) in enumerate(samples):
        thresholds = record.get("thresholds", {}).get(sample, {})
        for col, (column, th_key, label, log) in enumerate(_PANELS):
            ax = axes[row, col]
            values = adata.obs[column].to_numpy(dtype=float)
            bins = _bins(values[mask], log)
            for sel, colour in ((mask & ~flagged, "0.6"), (mask & flagged, "tab:red")):
                if sel.any():
                    ax.hist(values[sel], bins=bins, color=colour, alpha=0.8)
            for t in thresholds.get(th_key, []):
                if np.isfinite(t) and t > 0:
                    ax.axvline(t, color="k", ls="--", lw=1)
            if log:
                ax.set_xscale("log")
                ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels overlap
            ax.set_xlabel(label)
            if col == 0:
                ax.set_ylabel(f"{sample}\ncells")
    fig.suptitle(f"QC: {int(flagged.sum())} of {adata.n_obs} cells flagged (red)")
    return finish(fig, axes, show=show, return_fig=return_fig, save=save)


def _bins(values: np.ndarray, log: bool) -> np.ndarray:
    if log:
        positive = values[values > 0]
        lo, hi = (positive.min(), positive.max()) if positive.size else (1, 10)
        return np.geomspace(max(lo, 1), max(hi, 2), 50)
    return np.linspace(values.min(), max(values.max(), values.min() + 1e-9), 50)
