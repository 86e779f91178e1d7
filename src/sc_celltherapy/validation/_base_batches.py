"""Intermediate precision across the base's batches (donors, lots, channels): the same
impurity level spiked into base cells of one batch at a time. An autologous product's base
differs by donor; a method whose estimate moves with the donor is less precise than replicate
draws of one pooled base show."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ._materials import BATCH_KEY, MATERIAL_KEY, draw_mixture, mixture_estimate
from ._plan import ValidationPlan, impurity_key

MIN_BATCH_CELLS = 50  # smaller batches are left out (recorded): a few cells are not a base


def batches(cells) -> tuple[list[str], list[str]]:
    """The base batches used and those left out for having under MIN_BATCH_CELLS cells."""
    if BATCH_KEY not in cells.obs:
        return [], []
    in_base = cells.obs[MATERIAL_KEY] == "base"
    counts = cells.obs.loc[in_base, BATCH_KEY].astype(str).value_counts()
    used = sorted(b for b, n in counts.items() if n >= MIN_BATCH_CELLS)
    return used, sorted(set(counts.index) - set(used))


def batch_mixtures(cells, calls: pd.DataFrame, plan: ValidationPlan, rng) -> pd.DataFrame:
    """One mixture per impurity, level and base batch, its base cells all from that batch
    (drawn with replacement when the batch is smaller than the mixture: calls are per cell,
    so this only weighs the batch's own cells)."""
    c = plan.content
    used, _ = batches(cells)
    material = cells.obs[MATERIAL_KEY].astype(str).to_numpy()
    batch = cells.obs[BATCH_KEY].astype(str).to_numpy() if used else None
    rows = []
    for imp in c["impurities"]:
        key = impurity_key(imp)
        spike = np.flatnonzero(material == key)
        for f in c["levels"]:
            for b in used:
                base = np.flatnonzero((material == "base") & (batch == b))
                idx, _ = draw_mixture(rng, base, spike, f, c["n_cells"])
                rows.append(
                    {
                        "impurity": key,
                        "true_fraction": f,
                        "base_batch": b,
                        "estimate": float(mixture_estimate(calls, key, idx)[2]),
                    }
                )
    return pd.DataFrame(rows)


def between_batches(rows: pd.DataFrame) -> pd.DataFrame:
    """Per impurity and level: the CV of the estimate across base batches."""
    if rows.empty:
        return pd.DataFrame(columns=["impurity", "true_fraction", "cv_between_base_batches"])
    g = rows.groupby(["impurity", "true_fraction"])["estimate"]
    out = (g.std(ddof=1) / g.mean()).rename("cv_between_base_batches").reset_index()
    return out
