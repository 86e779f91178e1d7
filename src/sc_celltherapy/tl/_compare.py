"""Lot-to-lot comparability: is a new lot like the qualified lots before it?

Per identity class, an equivalence test (two one-sided tests, TOST) of the difference between
the new lot's fraction and the mean fraction of the qualified lots, against a margin from the
spec; and a shift measure in the reference latent space (energy distance between the new lot's
cells and the history's, with a permutation p-value).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy.stats import norm

from .._checks import InputError, MissingKeyError
from .._display import html_table, interval, pct, text_table
from .._keys import KEYS
from .._logging import logger
from .._stats import fraction_interval
from .._utils import plain, uns_safe

EQUIVALENT, NOT_EQUIVALENT, INCONCLUSIVE = "equivalent", "not equivalent", "inconclusive"
DEFAULT_MARGIN = 0.05
ALPHA = 0.05
COMPARE_COLUMNS = [
    "n",
    "fraction",
    "ci_low",
    "ci_high",
    "history_mean",
    "history_sd",
    "history_min",
    "history_max",
    "difference",
    "diff_ci_low",
    "diff_ci_high",
    "margin",
    "verdict",
]


@dataclass(frozen=True)
class LotComparison:
    """A new lot against the qualified lots (see :func:`compare_lots`).

    ``classes`` is a DataFrame indexed by identity class with the new lot's count, fraction and
    95% interval, the history's mean, sd, min and max fraction, the difference with its 90%
    interval (the TOST interval at alpha 0.05), the margin and the verdict.
    """

    n_cells: int
    history_lots: list[str]
    history_n_cells: list[int]
    classes: pd.DataFrame = field(repr=False)
    shift: dict[str, Any]
    verdict: str
    method: dict[str, Any]

    _HEADER = (
        "class",
        "new lot",
        "95% interval",
        "history range",
        "difference (90%)",
        "margin",
        "verdict",
    )

    def _rows(self) -> list[list[str]]:
        return [
            [
                str(name),
                pct(r["fraction"]),
                interval(r["ci_low"], r["ci_high"]),
                f"{pct(r['history_min'])} – {pct(r['history_max'])}",
                interval(r["diff_ci_low"], r["diff_ci_high"]),
                f"±{pct(r['margin'])}",
                str(r["verdict"]),
            ]
            for name, r in self.classes.iterrows()
        ]

    def __repr__(self) -> str:
        head = (
            f"LotComparison: {self.verdict} ({self.n_cells} cells against "
            f"{len(self.history_lots)} qualified lots)"
        )
        return head + "\n" + text_table(self._rows(), self._HEADER)

    def _repr_html_(self) -> str:
        title = f"Lot against {len(self.history_lots)} qualified lots"
        return html_table(title, self._rows(), self._HEADER, self.verdict)

    def to_dict(self) -> dict[str, Any]:
        frame = self.classes.astype(object).where(self.classes.notna(), None)
        return plain(
            {
                "n_cells": self.n_cells,
                "history_lots": list(self.history_lots),
                "history_n_cells": list(self.history_n_cells),
                "classes": {k: dict(row) for k, row in frame.iterrows()},
                "shift": self.shift,
                "verdict": self.verdict,
                "method": self.method,
            }
        )


def compare_lots(
    new: AnnData,
    history: Sequence[AnnData] | Mapping[str, AnnData],
    *,
    spec=None,
    margins: Mapping[str, float] | None = None,
    identity_key: str = KEYS.IDENTITY,
    latent_key: str = "X_sct_ref",
    n_permutations: int = 500,
    max_cells: int = 1000,
    seed: int = 0,
    key_added: str = KEYS.COMPARE,
) -> LotComparison:
    """Compare a new lot's composition and latent profile with qualified lots.

    For each identity class (``obs[f"{identity_key}_class"]``, from :func:`identity_score`) the
    difference ``d`` between the new lot's fraction and the mean fraction of the history lots
    gets a 90% interval, ``d +/- z_0.95 * se`` with
    ``se^2 = p(1-p)/n + s^2/m`` (binomial sampling of the new lot, with p shrunk as
    (k + 0.5)/(n + 1) so that a class with no cell still has a variance, plus the uncertainty
    of the history mean: s^2 the larger of the between-lot variance and the lots' binomial
    variance, m lots). Two one-sided tests at alpha 0.05: **equivalent** when that interval lies
    inside (-margin, margin), **not equivalent** when it lies wholly outside, else
    **inconclusive** (too few cells or lots to say). Margins come from ``margins``, else the
    spec's ``comparability_margin`` (per class, ``"default"`` for the rest), else 0.05.

    The shift in the reference latent space is the energy distance between the new lot's cells
    and the history's pooled cells (each subsampled to ``max_cells``), with a permutation
    p-value (``n_permutations`` random relabellings of the pooled cells), and, for scale, the
    largest energy distance between one history lot and the rest of the history.

    Parameters
    ----------
    new
        The new lot, scored with :func:`identity_score` (and mapped, for the latent shift).
    history
        Qualified lots (a list, or names to lots), scored the same way.
    spec
        A :class:`~sc_celltherapy.release.Spec` whose ``comparability_margin`` gives margins.
    margins
        Margins per class (``"default"`` for the rest); override the spec's.
    identity_key
        ``key_added`` of :func:`identity_score`.
    latent_key
        ``.obsm`` key of the reference latent space; the shift is skipped when a lot lacks it.
    n_permutations, max_cells, seed
        Permutation test settings (deterministic for a fixed seed).
    key_added
        Where the comparison goes in ``new.uns``.

    Returns
    -------
    The :class:`LotComparison`; also stored as a dict in ``new.uns[key_added]``. The overall
    verdict is ``not equivalent`` if any class is, else ``inconclusive`` if any class is, else
    ``equivalent``.
    """
    lots = (
        dict(history)
        if isinstance(history, Mapping)
        else {f"lot{i + 1}": a for i, a in enumerate(history)}
    )
    if not lots:
        raise InputError("compare_lots needs at least one qualified lot in history.")
    class_col = f"{identity_key}_class"
    for name, adata in {"new lot": new, **lots}.items():
        if class_col not in adata.obs:
            msg = f"{name} has no obs[{class_col!r}]: run sct.tl.identity_score on every lot first."
            raise MissingKeyError(msg)
        if adata.n_obs == 0:
            raise InputError(f"{name} has no cells.")
    margin_of = _margins(margins, spec)

    new_classes = new.obs[class_col].astype(str)
    hist_classes = {k: a.obs[class_col].astype(str) for k, a in lots.items()}
    names = sorted(set(new_classes).union(*(set(c) for c in hist_classes.values())))
    n = new.n_obs
    z = norm.ppf(1 - ALPHA)
    rows = {}
    for cls in names:
        k = int((new_classes == cls).sum())
        p = k / n
        lo, hi = fraction_interval(k, n)
        hist = np.array([(c == cls).mean() for c in hist_classes.values()])
        sizes = np.array([len(c) for c in hist_classes.values()])
        m = hist.size
        between = float(hist.var(ddof=1)) if m > 1 else 0.0
        binomial = float(np.mean(hist * (1 - hist) / sizes))
        p_shrunk = (k + 0.5) / (n + 1)
        se = math.sqrt(p_shrunk * (1 - p_shrunk) / n + max(between, binomial) / m)
        d = p - float(hist.mean())
        d_lo, d_hi = d - z * se, d + z * se
        margin = margin_of(cls)
        if -margin < d_lo and d_hi < margin:
            verdict = EQUIVALENT
        elif d_lo >= margin or d_hi <= -margin:
            verdict = NOT_EQUIVALENT
        else:
            verdict = INCONCLUSIVE
        rows[cls] = {
            "n": k,
            "fraction": p,
            "ci_low": lo,
            "ci_high": hi,
            "history_mean": float(hist.mean()),
            "history_sd": math.sqrt(between),
            "history_min": float(hist.min()),
            "history_max": float(hist.max()),
            "difference": d,
            "diff_ci_low": d_lo,
            "diff_ci_high": d_hi,
            "margin": margin,
            "verdict": verdict,
        }
    classes = pd.DataFrame.from_dict(rows, orient="index")[COMPARE_COLUMNS]
    verdicts = set(classes["verdict"])
    overall = (
        NOT_EQUIVALENT
        if NOT_EQUIVALENT in verdicts
        else INCONCLUSIVE
        if INCONCLUSIVE in verdicts
        else EQUIVALENT
    )
    shift = _latent_shift(new, lots, latent_key, n_permutations, max_cells, seed)
    result = LotComparison(
        n_cells=n,
        history_lots=list(lots),
        history_n_cells=[a.n_obs for a in lots.values()],
        classes=classes,
        shift=shift,
        verdict=overall,
        method={
            "test": "two one-sided tests (TOST), alpha 0.05: 90% interval of the difference "
            "inside (-margin, margin)",
            "se": "sqrt(p(1-p)/n + max(between-lot var, binomial var)/m), p = (k+0.5)/(n+1)",
            "shift": "energy distance in the reference latent space, permutation p-value",
            "seed": seed,
        },
    )
    new.uns[key_added] = uns_safe(result.to_dict())
    logger.info("lot comparison: %s", overall)
    return result


def _margins(margins, spec):
    given = dict(margins or {})
    if not given and spec is not None:
        given = dict(spec.comparability_margin)
    for cls, value in given.items():
        if not (isinstance(value, int | float) and 0 < value <= 1):
            raise InputError(f"Margin for {cls!r} must be a fraction in (0, 1], got {value!r}.")
    default = given.get("default", DEFAULT_MARGIN)
    return lambda cls: float(given.get(cls, default))


def _energy_distance(dist: np.ndarray, in_a: np.ndarray) -> float:
    """Energy distance 2E|a-b| - E|a-a'| - E|b-b'| (Székely) of the split ``in_a`` of the
    points whose pairwise Euclidean distances are ``dist`` (one matrix-vector product)."""
    w = in_a.astype(np.float64)
    n_a, n_b = w.sum(), (1 - w).sum()
    dw = dist @ w
    total_a = w @ dw
    cross = (1 - w) @ dw
    total_b = dist.sum() - 2 * cross - total_a
    return float(2 * cross / (n_a * n_b) - total_a / n_a**2 - total_b / n_b**2)


def _latent_shift(new, lots, key, n_permutations, max_cells, seed) -> dict[str, Any]:
    if key not in new.obsm or any(key not in a.obsm for a in lots.values()):
        return {"skipped": f"a lot lacks obsm[{key!r}] (map every lot onto the same reference)"}
    rng = np.random.default_rng(seed)

    def sample(x: np.ndarray, cap: int) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        return x if len(x) <= cap else x[rng.choice(len(x), cap, replace=False)]

    per_lot = max(1, max_cells // len(lots))
    a = sample(new.obsm[key], max_cells)
    hist_samples = {k: sample(v.obsm[key], per_lot) for k, v in lots.items()}
    from scipy.spatial.distance import cdist

    b = np.vstack(list(hist_samples.values()))
    pooled = np.vstack([a, b])
    dist = cdist(pooled, pooled)
    in_new = np.arange(len(pooled)) < len(a)
    observed = _energy_distance(dist, in_new)
    exceed = sum(
        _energy_distance(dist, rng.permutation(in_new)) >= observed for _ in range(n_permutations)
    )
    # for scale: how far each qualified lot sits from the rest of the history
    within = []
    if len(hist_samples) > 1:
        lot_of = np.repeat(np.arange(len(hist_samples)), [len(x) for x in hist_samples.values()])
        hist_dist = dist[len(a) :, len(a) :]
        within = [_energy_distance(hist_dist, lot_of == i) for i in range(len(hist_samples))]
    return {
        "energy_distance": observed,
        "p_value": (exceed + 1) / (n_permutations + 1),
        "n_permutations": n_permutations,
        "max_within_history": max(within) if within else None,
        "cells_used": [len(a), len(b)],
    }
