"""Validation of the purity assay by in-silico spike-in (ICH Q2(R2): accuracy, linearity, LOD).

Real cells of one population (the *spike*) are mixed into a base population at known fractions,
over replicates; the assay estimates the spiked fraction in each mixture. Reported: recovery
(estimated / true), linearity (slope, intercept and R^2 of estimated against true), the lowest
fraction detected in at least 95% of replicates, and on unspiked base mixtures the
false-positive rate and the limit of blank (95th percentile of blank estimates).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
from anndata import AnnData

from .. import _stats
from .._checks import InputError
from .._display import html_table, pct, text_table
from .._logging import logger
from .._utils import plain

SPIKE_KEY = "sct_spiked"
DETECTION_RATE = 0.95


@dataclass(frozen=True)
class SpikeInResult:
    """Outcome of :func:`spike_in`. ``mixtures`` has one row per mixture (``true_fraction``,
    ``replicate``, ``n_cells``, ``n_spiked``, ``n_called``, ``estimate``, ``ci_low``,
    ``ci_high``, ``verdict``); ``summary`` one row per true fraction."""

    mixtures: pd.DataFrame = field(repr=False)
    summary: pd.DataFrame = field(repr=False)
    slope: float
    intercept: float
    r2: float
    lod: float | None
    false_positive_rate: float
    limit_of_blank: float
    limit: float | None
    seed: int
    replace: bool = False

    _HEADER = ("true fraction", "mixtures", "mean estimate", "recovery", "detected")

    def _rows(self) -> list[list[str]]:
        return [
            [
                pct(f),
                str(int(r["n_mixtures"])),
                pct(r["mean_estimate"]),
                "–" if pd.isna(r["recovery"]) else f"{r['recovery']:.2f}",
                pct(r["detected_rate"]),
            ]
            for f, r in self.summary.iterrows()
        ]

    def _headline(self) -> str:
        lod = pct(self.lod) if self.lod is not None else "not reached"
        return (
            f"slope {self.slope:.3f}, R^2 {self.r2:.3f}, limit of detection {lod}, blank "
            f"false-positive rate {pct(self.false_positive_rate)}"
        )

    def __repr__(self) -> str:
        return f"SpikeInResult: {self._headline()}\n" + text_table(self._rows(), self._HEADER)

    def _repr_html_(self) -> str:
        return html_table(f"Spike-in: {self._headline()}", self._rows(), self._HEADER, None)

    @property
    def sampling(self) -> str:
        """How mixtures drew their cells, in words (replicates are independent only without
        replacement from a population larger than all mixtures together)."""
        if self.replace:
            return (
                "cells drawn with replacement: a cell can appear more than once in a mixture and "
                "replicates share cells, so replicate spread understates what independent "
                "samples would show"
            )
        return "cells drawn without replacement within each mixture; replicates may share cells"

    def to_dict(self) -> dict[str, Any]:
        return plain(
            {
                "slope": self.slope,
                "intercept": self.intercept,
                "r2": self.r2,
                "lod": self.lod,
                "false_positive_rate": self.false_positive_rate,
                "limit_of_blank": self.limit_of_blank,
                "limit": self.limit,
                "seed": self.seed,
                "replace": self.replace,
                "sampling": self.sampling,
                "summary": self.summary.reset_index().to_dict(orient="records"),
                "mixtures": self.mixtures.to_dict(orient="records"),
            }
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def select_by_markers(
    adata: AnnData, *, positive: Sequence[str], negative: Sequence[str] = ()
) -> np.ndarray:
    """Cells with every ``positive`` gene detected (a count > 0) and no ``negative`` gene: an
    independent marker rule for choosing spike-in cells (e.g. monocytes: LYZ and CD14, not
    CD3E).

    Parameters
    ----------
    adata
        Cells with counts in ``.X``.
    positive
        Genes that must all be detected.
    negative
        Genes none of which may be detected.

    Returns
    -------
    Boolean mask of the cells chosen.
    """
    missing = [g for g in (*positive, *negative) if g not in adata.var_names]
    if missing:
        raise InputError(f"Marker genes {missing} are not in the matrix; check their names.")
    X = adata.X

    def detected(gene: str) -> np.ndarray:
        col = X[:, adata.var_names.get_loc(gene)]
        return np.asarray((col > 0).sum(axis=1) if col.ndim == 2 else col > 0).ravel() > 0

    keep = np.ones(adata.n_obs, dtype=bool)
    for g in positive:
        keep &= detected(g)
    for g in negative:
        keep &= ~detected(g)
    return keep


def mix(
    base: AnnData,
    spike: AnnData,
    fraction: float,
    n_cells: int,
    rng,
    *,
    replace: bool = False,
) -> AnnData:
    """``n_cells`` cells, ``round(fraction * n_cells)`` of them drawn from ``spike`` and the rest
    from ``base``; ``obs["sct_spiked"]`` marks the spiked cells.

    Parameters
    ----------
    base, spike
        The two populations (same genes).
    fraction
        The spiked fraction.
    n_cells
        Cells in the mixture.
    rng
        A :class:`numpy.random.Generator`.
    replace
        Draw with replacement (for populations smaller than a mixture).
    """
    n_spike = int(round(fraction * n_cells))
    n_base = n_cells - n_spike
    for pool, n, name in ((spike, n_spike, "spike"), (base, n_base, "base")):
        if n and pool.n_obs == 0 or (n > pool.n_obs and not replace):
            msg = (
                f"A {fraction:.2%} mixture of {n_cells} cells needs {n} {name} cells but the "
                f"{name} population has {pool.n_obs}. Use fewer cells per mixture, or "
                "replace=True (cells drawn with replacement; the result says so)."
            )
            raise InputError(msg)
    with warnings.catch_warnings():
        # a cell drawn twice repeats its name until the lot's cells are renamed below
        warnings.filterwarnings("ignore", "Observation names are not unique", UserWarning)
        parts = [
            base[np.sort(rng.choice(base.n_obs, n_base, replace=replace))],
            spike[np.sort(rng.choice(spike.n_obs, n_spike, replace=replace))],
        ]
        lot = ad.concat(parts, join="inner", merge="same", index_unique=None)
    lot.obs[SPIKE_KEY] = np.r_[np.zeros(n_base, bool), np.ones(n_spike, bool)]
    lot.obs_names = [f"{name}-{i}" for i, name in enumerate(lot.obs_names)]
    return lot


def spike_in(
    base: AnnData,
    spike: AnnData,
    assay: Callable[[AnnData], tuple[int, int]],
    *,
    fractions: Sequence[float] = (0.005, 0.01, 0.02, 0.05, 0.1),
    n_replicates: int = 5,
    n_blanks: int | None = None,
    n_cells: int = 2000,
    limit: float | None = None,
    seed: int = 0,
    replace: bool = False,
) -> SpikeInResult:
    """Validate an impurity call by spiking real cells into a base population.

    Parameters
    ----------
    base, spike
        The base population (free of the impurity) and the impurity's cells.
    assay
        Runs the assay on one mixture and returns ``(cells called impurity, cells assessed)``
        (e.g. map, score identity and count a class; or count precomputed calls).
    fractions
        True spiked fractions.
    n_replicates, n_blanks
        Mixtures per fraction, and unspiked mixtures (default ``2 * n_replicates``).
    n_cells
        Cells per mixture.
    limit
        A spec limit for the impurity: each mixture gets its verdict against it.
    seed
        Seed of the draws.
    replace
        Draw cells with replacement, for a spike or base population smaller than the mixtures
        need (e.g. 50 hESC spiked at 5% into 2,000 cells). Replicates then share cells and
        ``SpikeInResult.sampling`` says so.

    Returns
    -------
    :class:`SpikeInResult`.

    Examples
    --------
    >>> import numpy as np, sc_celltherapy as sct
    >>> lot = sct.datasets.toy_product(n_cells=3000, fractions={"T cell": 0.8, "monocyte": 0.2})
    >>> mono = (lot.obs["true_population"] == "monocyte").to_numpy()
    >>> res = sct.validation.spike_in(lot[~mono], lot[mono],
    ...     lambda m: (int(m.obs["true_population"].eq("monocyte").sum()), m.n_obs),
    ...     n_cells=1000, n_replicates=3)
    >>> round(res.slope, 2), res.false_positive_rate
    (1.0, 0.0)
    """
    fractions = [float(f) for f in fractions]
    if not fractions or any(not 0 < f < 1 for f in fractions):
        msg = f"fractions must be in (0, 1), got {fractions}."
        raise InputError(msg)
    if n_replicates < 1 or n_cells < 1:
        raise InputError("n_replicates and n_cells must be at least 1.")
    n_blanks = 2 * n_replicates if n_blanks is None else n_blanks
    rng = np.random.default_rng(seed)
    rows = []
    plan = [(0.0, r) for r in range(n_blanks)] + [
        (f, r) for f in fractions for r in range(n_replicates)
    ]
    for true_fraction, replicate in plan:
        lot = mix(base, spike, true_fraction, n_cells, rng, replace=replace)
        k, n = assay(lot)
        lo, hi = _stats.fraction_interval(int(k), int(n))
        rows.append(
            {
                "true_fraction": true_fraction,
                "replicate": replicate,
                "n_cells": int(n),
                "n_spiked": int(lot.obs[SPIKE_KEY].sum()),
                "n_called": int(k),
                "estimate": k / n,
                "ci_low": lo,
                "ci_high": hi,
                "verdict": _stats.verdict(lo, hi, limit),
            }
        )
        logger.info("spike-in %.3f rep %d: %d / %d called", true_fraction, replicate, k, n)
    mixtures = pd.DataFrame(rows)
    return _summarise(mixtures, limit, seed, replace)


def _summarise(
    mixtures: pd.DataFrame, limit: float | None, seed: int, replace: bool
) -> SpikeInResult:
    spiked = mixtures[mixtures["true_fraction"] > 0]
    blank = mixtures[mixtures["true_fraction"] == 0]
    x, y = spiked["true_fraction"].to_numpy(), spiked["estimate"].to_numpy()
    slope, intercept = np.polyfit(x, y, 1)
    r2 = 1 - np.sum((y - (slope * x + intercept)) ** 2) / np.sum((y - y.mean()) ** 2)
    grouped = mixtures.groupby("true_fraction")
    summary = pd.DataFrame(
        {
            "n_mixtures": grouped.size(),
            "mean_estimate": grouped["estimate"].mean(),
            "sd_estimate": grouped["estimate"].std(ddof=1),
            "detected_rate": grouped["n_called"].apply(lambda k: float((k > 0).mean())),
        }
    )
    true = summary.index.to_numpy(dtype=float)
    recovery = summary["mean_estimate"].to_numpy() / np.where(true > 0, true, np.nan)
    summary.insert(3, "recovery", recovery)
    if limit is not None:
        for v in (_stats.PASS, _stats.INCONCLUSIVE, _stats.FAIL):
            summary[v] = grouped["verdict"].apply(lambda s, v=v: int((s == v).sum()))
    detected = summary.loc[summary.index > 0, "detected_rate"] >= DETECTION_RATE
    # lowest fraction from which every higher fraction is also detected in >= 95% of mixtures
    lod = None
    for f in sorted(detected.index, reverse=True):
        if not detected[f]:
            break
        lod = float(f)
    blank_estimates = blank["estimate"].to_numpy() if len(blank) else np.array([np.nan])
    return SpikeInResult(
        mixtures=mixtures,
        summary=summary,
        slope=float(slope),
        intercept=float(intercept),
        r2=float(r2),
        lod=lod,
        false_positive_rate=float(np.mean(blank_estimates)),
        limit_of_blank=float(np.quantile(blank_estimates, 0.95)),
        limit=limit,
        seed=seed,
        replace=replace,
    )
