"""The reference's reliability on donors it never saw: reliability diagram and label-set
coverage per held-out donor, as the bundle measured them."""

from __future__ import annotations

import os

import numpy as np
from anndata import AnnData
from matplotlib.figure import Figure

from .._checks import MissingKeyError
from .._keys import KEYS
from ._clusters import _palette
from ._utils import doc_show_save, finish, new_figure


@doc_show_save
def reliability(
    adata: AnnData,
    *,
    reference_key: str = KEYS.REF,
    save: str | os.PathLike | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> Figure | None:
    """Per held-out donor of the reference: accuracy against confidence of the top label, and
    the coverage of the conformal label sets against their target 1 - alpha.

    These are the bundle's own measurements (cells predicted and calibrated by models that
    never saw their donor), not the lot's: a lot has no truth. A point below the diagonal is a
    confidence bin where the reference is over-confident on that donor.

    Parameters
    ----------
    adata
        Lot after :func:`sct.tl.map_to_reference`.
    reference_key
        ``key_added`` of :func:`sct.tl.map_to_reference`.
    {show_save}

    Returns
    -------
    ``None`` when the figure is shown; the figure with ``return_fig=True``; the axes with
    ``show=False``. The figure: the reliability diagram (one line per donor, point size by cells,
    ECE in the legend) and the label-set coverage per donor.
    """
    rec = adata.uns.get(reference_key)
    per_donor = (rec or {}).get("calibration", {}).get("per_donor")
    if not per_donor or not any("reliability" in r for r in per_donor.values()):
        msg = (
            f"adata.uns[{reference_key!r}] has no per-donor reliability: map the lot with "
            "sct.tl.map_to_reference onto a bundle built by this version (bundle format 6, "
            "with reliability bins)."
        )
        raise MissingKeyError(msg)
    sets = rec.get("label_sets", {})
    fig, axes = new_figure(1, 2, cell=(4.5, 4))
    ax = axes[0, 0]
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--")
    colours = _palette(len(per_donor))
    for colour, (donor, r) in zip(colours, per_donor.items(), strict=True):
        bins = r.get("reliability")
        if not bins:
            continue
        n = np.asarray(bins["n_cells"], dtype=float)
        ax.plot(bins["confidence"], bins["accuracy"], "-", color=colour, lw=1)
        ax.scatter(
            bins["confidence"],
            bins["accuracy"],
            s=10 + 60 * n / n.max(),
            color=colour,
            label=f"{donor} (ECE {r['ece']:.3f}"
            + (f", by chance {r['ece_chance_95']:.3f}" if "ece_chance_95" in r else "")
            + f", {r['n_cells']} cells)",
        )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (calibrated top-label probability)")
    ax.set_ylabel("accuracy on the held-out donor")
    ax.set_title("reliability per held-out donor")
    ax.legend(fontsize=7, loc="upper left")
    ax = axes[0, 1]
    coverage = sets.get("coverage_per_donor", {})
    names = list(coverage)
    ax.bar(np.arange(len(names)), [coverage[d] for d in names], color=colours[: len(names)])
    if "alpha" in sets:
        ax.axhline(1 - float(sets["alpha"]), color="black", lw=1, ls="--")
    ax.set_xticks(np.arange(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("label-set coverage")
    ax.set_title(f"coverage per donor (dashed: 1 - alpha = {1 - float(sets.get('alpha', 0)):.2f})")
    fig.suptitle(
        f"worst held-out donor: ECE {rec['calibration']['ece_worst_donor']:.3f} "
        f"({rec['calibration']['worst_donor']}); calibration "
        f"{'across donors' if rec['calibration']['across_donors'] else 'within one donor only'}"
    )
    return finish(fig, axes, show=show, return_fig=return_fig, save=save)
