"""Intermediate precision across compute devices and the other factors a dossier must account
for.

A lab may release on a GPU machine and validate on a CPU one, or the reverse. Where a CUDA
device exists, the pooled chain runs a second time on the CPU with the same seed and every
mixture at the spec limit is estimated from both runs' calls; the dossier records how far the
estimates and the per-cell identities move. Where none exists the comparison is not made and
the dossier says so (a lab deploying on GPU runs its plan there).

Ensemble members are not a factor of their own: every call averages all the bundle's members,
so a lab never releases with one member, and each member's surgery is already varied by the
seed factor (member i trains with seed + i). Rebuilding the bundle is a change of reference,
which needs its own validation.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from .._settings import settings
from . import _parameters as par
from ._materials import MATERIAL_KEY, draw_mixture, mixture_estimate
from ._plan import ValidationPlan, impurity_key

MEMBERS_NOTE = (
    "not a separate factor: every call averages all {n} member(s) of the bundle, and each "
    "member's surgery is varied by the seed factor (member i trains with seed + i)"
)


def main_device(bundle) -> str | None:
    """The device the plan's chain runs map on: None without a reference (marker panels)."""
    if bundle is None:
        return None
    from .. import atlas

    return atlas.accelerator()


def compare_calls(
    cells, calls: dict[str, pd.DataFrame], plan: ValidationPlan, seed: int
) -> pd.DataFrame:
    """Per impurity: the mixtures at the level nearest its spec limit, estimated from each
    device's calls (the same draws for both), and the largest difference between them; plus
    the share of pooled cells whose QC outcome or identity differs between the devices."""
    (a, calls_a), (b, calls_b) = calls.items()
    c = plan.content
    material = cells.obs[MATERIAL_KEY].astype(str).to_numpy()
    base = np.flatnonzero(material == "base")
    rng = np.random.default_rng(seed)
    same_fate = (calls_a["assessed"] == calls_b["assessed"]) & (
        calls_a["identity"] == calls_b["identity"]
    )
    rows = []
    for imp in c["impurities"]:
        key = impurity_key(imp)
        level = par.nearest_level(c["levels"], plan.limits[key])
        diffs, est = [], {a: [], b: []}
        spike = np.flatnonzero(material == key)
        for _ in range(c["replicates"]):
            idx, _replaced = draw_mixture(rng, base, spike, level, c["n_cells"])
            for dev, table in calls.items():
                est[dev].append(mixture_estimate(table, key, idx)[2])
            diffs.append(abs(est[a][-1] - est[b][-1]))
        limit = plan.limits[key]
        rows.append(
            {
                "impurity": key,
                "true_fraction": level,
                f"mean_estimate_{a}": float(np.mean(est[a])),
                f"mean_estimate_{b}": float(np.mean(est[b])),
                "max_difference": float(max(diffs)),
                "max_difference_vs_limit": None if not limit else float(max(diffs) / limit),
                "cells_with_other_fate": float(1 - same_fate.mean()),
            }
        )
    return pd.DataFrame(rows)


def device_factor(
    cells,
    calls: pd.DataFrame,
    plan: ValidationPlan,
    bundle,
    pooled_calls: Callable[[], pd.DataFrame],
    say: Callable[[str], None],
) -> tuple[pd.DataFrame, dict]:
    """The CPU-against-GPU comparison when a device exists (``pooled_calls()`` runs the chain
    again, here with the CPU forced), else an empty table and the reason; with the ensemble
    members' note."""
    main = main_device(bundle)
    info = {
        "main_run": main,
        "ensemble_members": None
        if bundle is None
        else MEMBERS_NOTE.format(n=bundle.manifest["model"]["n_members"]),
    }
    if main is None:
        return pd.DataFrame(), info | {"compared": None, "note": "marker panels: no model runs"}
    if main == "cpu":
        note = (
            "no CUDA device was used on this machine, so CPU against GPU was not tested; a lab "
            "releasing on a GPU runs its plan there"
        )
        return pd.DataFrame(), info | {"compared": None, "note": note}
    say("the release chain on all pooled cells again on the CPU (device precision)")
    old = settings.accelerator
    settings.accelerator = "cpu"
    try:
        on_cpu = pooled_calls()
    finally:
        settings.accelerator = old
    table = compare_calls(cells, {"gpu": calls, "cpu": on_cpu}, plan, plan.content["seed"] + 4000)
    return table, info | {"compared": ["gpu", "cpu"], "note": None}
