"""Robustness of a validation plan: a lot at the edge of release (every impurity at the level
nearest its spec limit) run through the release chain as it is and changed one factor at a time
(depth, cells, genes, ambient RNA, doublets); for each, the shift of every release number and the
verdicts that changed. Near the limit a verdict can move between INCONCLUSIVE and FAIL or PASS
with the interval alone (more cells narrow it); the table says which verdicts moved."""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData

from .._checks import InputError
from ..release import assess
from . import _parameters as par
from . import _perturb
from ._materials import MATERIAL_KEY, take
from ._plan import ValidationPlan, impurity_key

ROBUSTNESS = {
    "depth": "sequencing depth (counts binomially thinned)",
    "n_cells": "cells per lot",
    "genes_missing": "reference genes missing from the lot",
    "ambient": "share of counts that is ambient RNA",
    "doublet_rate": "planted doublets per barcode",
}


def _limit_lot(cells, plan: ValidationPlan, rng, n_cells: int) -> tuple[AnnData, bool]:
    """A lot with every impurity at the level nearest its spec limit (a lot at the edge of
    release)."""
    c = plan.content
    material = cells.obs[MATERIAL_KEY].astype(str).to_numpy()
    parts, replaced = [], False
    n_base = n_cells
    for imp in c["impurities"]:
        key = impurity_key(imp)
        f = par.nearest_level(c["levels"], plan.limits[key])
        n = int(round(f * n_cells))
        idx = np.flatnonzero(material == key)
        parts.append(rng.choice(idx, n, replace=n > idx.size))
        replaced |= n > idx.size
        n_base -= n
    base = np.flatnonzero(material == "base")
    parts.insert(0, rng.choice(base, n_base, replace=n_base > base.size))
    replaced |= n_base > base.size
    return take(cells, np.concatenate(parts)), replaced


def _release_numbers(lot, plan, bundle, profile, seed) -> dict:
    report = assess(lot, spec=plan.spec, profile=profile, bundle=bundle, seed=seed)
    numbers = {"target": report.target.fraction}
    verdicts = {"target": report.target.verdict, "overall": report.verdict}
    for name, row in report.impurities.iterrows():
        numbers[name] = float(row["fraction"])
        verdicts[name] = row["verdict"]
    return {"numbers": numbers, "verdicts": verdicts}


def robustness_runs(cells, plan, bundle, profile, say) -> pd.DataFrame:
    """One row per robustness level (and the nominal lot first): the release numbers, their
    shifts from the nominal lot's, and the verdicts that changed (a refused lot counts as one
    change)."""
    c = plan.content
    factors = c.get("robustness") or {}
    if not factors:
        return pd.DataFrame(columns=["factor", "level", "verdicts_changed"])
    rng = np.random.default_rng(c["seed"] + 2000)
    nominal_lot, _ = _limit_lot(cells, plan, rng, c["n_cells"])
    nominal = _release_numbers(nominal_lot.copy(), plan, bundle, profile, c["seed"])
    genes = list(nominal_lot.var_names) if bundle is None else list(bundle.genes)
    rows = [
        {
            "factor": "nominal",
            "level": None,
            "description": "every impurity at its spec limit",
            "refused": None,
            "max_abs_shift": 0.0,
            "shift": {},
            "verdicts": nominal["verdicts"],
            "numbers": nominal["numbers"],
            "changed": [],
            "verdicts_changed": 0,
        }
    ]
    for factor, levels in factors.items():
        for level in levels:
            say(f"robustness: {ROBUSTNESS[factor]} = {level}")
            lot = _perturbed(cells, nominal_lot, plan, factor, level, genes, rng)
            row = {"factor": factor, "level": level, "description": ROBUSTNESS[factor]}
            try:
                got = _release_numbers(lot, plan, bundle, profile, c["seed"])
            except InputError as err:  # a lot the release refuses is an outcome that changed
                rows.append(row | {"refused": str(err), "verdicts_changed": 1})
                continue
            changed = [k for k, v in got["verdicts"].items() if v != nominal["verdicts"].get(k)]
            shift = {
                k: got["numbers"][k] - nominal["numbers"].get(k, np.nan) for k in got["numbers"]
            }
            rows.append(
                row
                | {
                    "refused": None,
                    "max_abs_shift": float(np.nanmax(np.abs(list(shift.values())))),
                    "shift": shift,
                    "verdicts": got["verdicts"],
                    "numbers": got["numbers"],
                    "changed": changed,
                    "verdicts_changed": len(changed),
                }
            )
    return pd.DataFrame(rows)


def _perturbed(cells, nominal_lot, plan, factor, level, genes, rng) -> AnnData:
    if factor == "depth":
        return _perturb.thin_depth(nominal_lot, level, rng)
    if factor == "n_cells":
        return _limit_lot(cells, plan, rng, int(level))[0]
    if factor == "genes_missing":
        return _perturb.drop_genes(nominal_lot, level, genes, rng)
    if factor == "ambient":
        return _perturb.add_ambient(nominal_lot, level, rng)
    if factor == "doublet_rate":
        return _perturb.add_doublets(nominal_lot, level, rng)
    raise InputError(f"Unknown robustness factor {factor!r}; use one of {sorted(ROBUSTNESS)}.")
