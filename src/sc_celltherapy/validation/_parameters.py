"""The validation parameters of one impurity (ICH Q2(R2)) from its spike-in mixtures.

``mixtures`` has one row per mixture and seed: ``seed``, ``true_fraction``, ``replicate`` and
``estimate`` (cells called as the impurity over cells assessed). Blanks are ``true_fraction``
0. A mixture *detects* the impurity when its estimate exceeds the limit of blank (the 95th
percentile of the blank estimates, CLSI EP17), so base cells called as the impurity cannot make
a level look detected.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.stats import norm

from .. import _stats

DETECTION_RATE = 0.95


def limit_of_blank(mixtures: pd.DataFrame) -> float:
    blank = mixtures.loc[mixtures["true_fraction"] == 0, "estimate"].to_numpy()
    return float(np.quantile(blank, DETECTION_RATE)) if blank.size else 0.0


def precision(mixtures: pd.DataFrame) -> pd.DataFrame:
    """Per level: mean estimate, recovery, repeatability (replicate draws of the same
    materials, within a seed) and intermediate precision (seeds added: the mapping's training
    and the doublet simulation), as SDs, variance components and CVs."""
    rows = []
    for level, g in mixtures[mixtures["true_fraction"] > 0].groupby("true_fraction"):
        by_seed = g.groupby("seed")["estimate"]
        var_rep = float(np.nanmean(by_seed.var(ddof=1))) if g["replicate"].nunique() > 1 else 0.0
        n_rep = g.groupby("seed").size().mean()
        seed_means = by_seed.mean()
        var_between = float(seed_means.var(ddof=1)) if seed_means.size > 1 else 0.0
        var_seed = max(0.0, var_between - var_rep / n_rep)
        mean = float(g["estimate"].mean())
        rows.append(
            {
                "true_fraction": float(level),
                "n_mixtures": int(len(g)),
                "mean_estimate": mean,
                "recovery": mean / level,
                "sd_repeatability": float(np.sqrt(var_rep)),
                "sd_seed": float(np.sqrt(var_seed)),
                "cv_repeatability": float(np.sqrt(var_rep) / mean) if mean else float("nan"),
                "cv_intermediate": (
                    float(np.sqrt(var_rep + var_seed) / mean) if mean else float("nan")
                ),
            }
        )
    return pd.DataFrame(rows).set_index("true_fraction")


def detection(mixtures: pd.DataFrame, lob: float) -> pd.DataFrame:
    """Per level: the share of mixtures whose estimate exceeds the limit of blank."""
    spiked = mixtures[mixtures["true_fraction"] > 0]
    detected = spiked["estimate"] > lob
    rate = detected.groupby(spiked["true_fraction"]).mean()
    return rate.rename("detected_rate").to_frame()


def lod_by_rate(detected: pd.DataFrame) -> float | None:
    """Lowest level from which every higher level is detected in >= 95% of mixtures."""
    lod = None
    for level in sorted(detected.index, reverse=True):
        if detected.loc[level, "detected_rate"] < DETECTION_RATE:
            break
        lod = float(level)
    return lod


def lod_by_probit(mixtures: pd.DataFrame, lob: float) -> dict:
    """The level detected with 95% probability from a probit fit of detection against
    log10(level) (maximum likelihood). When every mixture of every level is detected (or none
    is), the fit has no finite answer and the result says so instead."""
    spiked = mixtures[mixtures["true_fraction"] > 0]
    x = np.log10(spiked["true_fraction"].to_numpy())
    d = (spiked["estimate"] > lob).to_numpy().astype(float)
    if d.all():
        return {"lod": None, "note": "every mixture detected: the LOD lies below the lowest level"}
    if not d.any():
        return {"lod": None, "note": "no mixture detected: the LOD lies above the highest level"}

    def nll(theta):
        p = np.clip(norm.cdf(theta[0] + theta[1] * x), 1e-9, 1 - 1e-9)
        # a weak ridge keeps the fit finite when the levels separate detected from not
        return -np.sum(d * np.log(p) + (1 - d) * np.log(1 - p)) + 1e-3 * theta[1] ** 2

    res = minimize(nll, [0.0, 1.0], method="Nelder-Mead")
    a, b = res.x
    if b <= 0:
        return {"lod": None, "note": "detection does not increase with the level"}
    lod = float(10 ** ((norm.ppf(DETECTION_RATE) - a) / b))
    fit = {"intercept": float(a), "slope": float(b)}
    levels = spiked["true_fraction"]
    if not levels.min() <= lod <= levels.max():
        # an extrapolated probit point rests on the model's tails, not on mixtures
        note = f"the fitted 95% point ({lod:.3g}) lies outside the levels tested; not reported"
        return {"lod": None, **fit, "note": note}
    return {"lod": lod, **fit, "note": None}


def linearity(mixtures: pd.DataFrame) -> dict:
    spiked = mixtures[mixtures["true_fraction"] > 0]
    x, y = spiked["true_fraction"].to_numpy(), spiked["estimate"].to_numpy()
    slope, intercept = np.polyfit(x, y, 1)
    r2 = 1 - np.sum((y - (slope * x + intercept)) ** 2) / np.sum((y - y.mean()) ** 2)
    return {"slope": float(slope), "intercept": float(intercept), "r2": float(r2)}


def within(value, criterion: dict | None) -> bool | None:
    """Whether ``value`` meets ``{min, max}``; ``None`` when there is no criterion or value."""
    if criterion is None or value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    return criterion.get("min", -np.inf) <= value <= criterion.get("max", np.inf)


def quantitation(table: pd.DataFrame, acceptance: dict) -> float | None:
    """LOQ: the lowest level from which every higher level meets the recovery and
    repeatability criteria (without criteria: not defined)."""
    if "recovery" not in acceptance and "repeatability_cv" not in acceptance:
        return None
    loq = None
    for level in sorted(table.index, reverse=True):
        row = table.loc[level]
        ok = within(row["recovery"], acceptance.get("recovery")) is not False and (
            within(row["cv_repeatability"], acceptance.get("repeatability_cv")) is not False
        )
        if not ok:
            break
        loq = float(level)
    return loq


def nearest_level(levels, limit: float | None) -> float:
    """The level the limit-relative criteria are judged at: nearest the spec limit (log
    scale), or the middle level without a limit."""
    levels = sorted(levels)
    if limit is None:
        return float(levels[len(levels) // 2])
    return float(min(levels, key=lambda f: abs(np.log(f / limit))))


def sampling_limit(n_cells: int) -> float:
    """The LOD of a perfect caller on ``n_cells`` cells: the fraction seen at least once with
    95% probability (about 3 / n)."""
    return _stats.detection_limit(n_cells)
