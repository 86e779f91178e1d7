"""A validation plan run through the release chain: every parameter with its criterion's verdict.

The chain (QC, mapping, identity, purity: :func:`sc_celltherapy.release.assess`) runs once per
seed on all materials pooled, each impurity a minority among the base's cells as in an impure
lot; every cell keeps its call. A mixture is then a draw of cells and its estimate the share of
its assessed cells called as the impurity, so a plan of hundreds of mixtures costs a few chain
runs. That shortcut assumes a cell's call does not depend on which other cells share its lot;
the run checks it by running the whole chain on one mixture per impurity and recording whether
the pooled estimate lies inside the chain's 95% interval. Robustness factors change a whole lot
(depth, cells, genes, ambient RNA, doublets), so each of their levels is a chain run of its own.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from .. import _stats, tl
from .._checks import InputError
from .._keys import KEYS
from .._logging import logger
from .._provenance import hardware, versions
from .._utils import plain
from .._version import __version__
from ..release import assess, spec_digest
from . import _parameters as par
from ._base_batches import batch_mixtures, batches, between_batches
from ._devices import device_factor
from ._materials import (
    MATERIAL_KEY,
    draw_mixture,
    match_depth,
    mixture_estimate,
    pool,
    read_material,
    take,
)
from ._plan import ValidationPlan, impurity_key, load_plan
from ._robustness import robustness_runs

SEED_OFFSETS = (0, 1)  # intermediate precision: the plan's seed and one more


@dataclass(frozen=True)
class ValidationResult:
    """Outcome of :func:`run`: ``parameters`` (one row per parameter and impurity, with its
    value, criterion and verdict), ``levels`` (per impurity and level: recovery, precision,
    detection), ``mixtures`` (every mixture's estimate per seed), ``base_batches`` (one
    mixture per impurity, level and base batch, when the base names its batches),
    ``specificity``, ``chain_check``, ``robustness``, ``provenance`` and ``devices`` (CPU
    against GPU per impurity, when a device was used)."""

    plan: ValidationPlan = field(repr=False)
    parameters: pd.DataFrame = field(repr=False)
    levels: pd.DataFrame = field(repr=False)
    mixtures: pd.DataFrame = field(repr=False)
    base_batches: pd.DataFrame = field(repr=False)
    specificity: pd.DataFrame = field(repr=False)
    chain_check: pd.DataFrame = field(repr=False)
    robustness: pd.DataFrame = field(repr=False)
    provenance: dict = field(repr=False)
    devices: pd.DataFrame = field(default_factory=pd.DataFrame, repr=False)

    @property
    def verdict(self) -> str:
        """FAIL when any judged parameter fails, else PASS."""
        judged = self.parameters["verdict"].dropna()
        return _stats.FAIL if (judged == _stats.FAIL).any() else _stats.PASS

    def __repr__(self) -> str:
        judged = self.parameters["verdict"].value_counts().to_dict()
        return (
            f"ValidationResult {self.plan.name!r}: {self.verdict} ({judged}); "
            f"{len(self.mixtures)} mixture estimates, {len(self.robustness)} robustness runs"
        )

    def to_dict(self) -> dict[str, Any]:
        def records(df: pd.DataFrame) -> list:
            return df.reset_index().to_dict(orient="records")

        return plain(
            {
                "schema": "sc_celltherapy.validation.result/1",
                "plan": {
                    "name": self.plan.name,
                    "source": self.plan.source,
                    "sha256": self.plan.sha256,
                    "example": bool(self.plan.content.get("example", False)),
                    "content": self.plan.content,
                    "warnings": list(self.plan.warnings),
                },
                "verdict": self.verdict,
                "parameters": records(self.parameters),
                "levels": records(self.levels),
                "specificity": records(self.specificity),
                "chain_check": records(self.chain_check),
                "robustness": records(self.robustness),
                "mixtures": records(self.mixtures),
                "base_batches": records(self.base_batches),
                "devices": records(self.devices) if len(self.devices) else [],
                "provenance": self.provenance,
            }
        )


def run(
    plan: ValidationPlan | str | os.PathLike | Mapping,
    *,
    progress: Callable[[str], None] | None = None,
) -> ValidationResult:
    """Run a validation plan through the release chain.

    Parameters
    ----------
    plan
        A :class:`ValidationPlan` or what :func:`load_plan` reads (checked before any cell is
        read).
    progress
        Called with a line per step (the CLI prints them).

    Returns
    -------
    The :class:`ValidationResult`; :func:`write_dossier` writes it.
    """
    say = progress or logger.info
    plan = plan if isinstance(plan, ValidationPlan) else load_plan(plan)
    c = plan.content
    started = time.perf_counter()
    bundle, profile = _resolve(plan)
    say(f"read the materials of {plan.name}")
    base = read_material(c["base"], where="field base")
    materials = {
        impurity_key(imp): read_material(imp["material"], where=f"field impurities/{i}/material")
        for i, imp in enumerate(c["impurities"])
    }
    rng = np.random.default_rng(c["seed"])
    for imp in c["impurities"]:
        if imp["material"].get("match_depth"):
            key = impurity_key(imp)
            materials[key] = match_depth(materials[key], base, rng)
    cells = pool(base, materials, base_only=plan.spec.transgene_features)
    _check_lot(cells, plan, bundle, profile)
    seeds = [c["seed"] + k for k in SEED_OFFSETS]
    calls = {}
    for s in seeds:
        say(f"the release chain on all {cells.n_obs} pooled cells (seed {s})")
        calls[s] = _pooled_calls(cells, plan, bundle, profile, s)
    say("mixtures drawn from the pooled calls")
    mixtures = _mixtures(cells, calls, plan)
    impurities = {impurity_key(imp): imp for imp in c["impurities"]}
    used, left_out = batches(cells)
    rng_batches = np.random.default_rng(c["seed"] + 3000)
    per_batch = batch_mixtures(cells, calls[seeds[0]], plan, rng_batches)
    cv_batches = between_batches(per_batch)
    levels, parameters = [], []
    for key in impurities:
        mine = mixtures[mixtures["impurity"] == key]
        table, rows = _judge(mine, plan, key)
        if used:
            cv = cv_batches[cv_batches["impurity"] == key].set_index("true_fraction")
            table = table.join(cv["cv_between_base_batches"])
            at = par.nearest_level(table.index, plan.limits[key])
            value = table.loc[at, "cv_between_base_batches"]
            rows.append(_parameter("between_batch_cv", key, value, c["acceptance"], at=at))
        levels.append(table.assign(impurity=key).reset_index())
        parameters += rows
    specificity = _specificity(cells, calls[seeds[0]], impurities)
    for key, row in specificity.drop(index="base").iterrows():
        parameters.append(
            _parameter(
                "specificity_cross_call", key, row["called_as_other_impurity"], c["acceptance"]
            )
        )
    devices, device_info = device_factor(
        cells,
        calls[seeds[0]],
        plan,
        bundle,
        lambda: _pooled_calls(cells, plan, bundle, profile, seeds[0]),
        say,
    )
    for row in devices.to_dict(orient="records"):
        value = row["max_difference_vs_limit"]
        at = row["true_fraction"]
        parameters.append(
            _parameter("device_difference_vs_limit", row["impurity"], value, c["acceptance"], at=at)
        )
    say("the whole chain on one mixture per impurity (check of the pooled calls)")
    chain_check = _chain_check(cells, calls[seeds[0]], plan, bundle, profile)
    say("robustness: one chain run per factor level")
    robustness = robustness_runs(cells, plan, bundle, profile, say)
    changes = int(robustness["verdicts_changed"].sum()) if len(robustness) else None
    parameters.append(_parameter("robustness_verdict_changes", "all", changes, c["acceptance"]))
    return ValidationResult(
        plan=plan,
        parameters=pd.DataFrame(parameters),
        levels=pd.concat(levels, ignore_index=True),
        mixtures=mixtures,
        base_batches=per_batch,
        specificity=specificity,
        chain_check=chain_check,
        robustness=robustness,
        devices=devices,
        provenance={
            "sc_celltherapy": __version__,
            "versions": versions(),
            "seeds": seeds,
            "reference": None
            if bundle is None
            else {"name": bundle.name, "version": bundle.version, "sha256": bundle.sha256},
            "spec": plan.spec.to_dict(),
            "spec_sha256": spec_digest(plan.spec),
            "validated_range": _validated_range(cells, calls[seeds[0]], plan, bundle),
            "n_pooled_cells": int(cells.n_obs),
            "base_batches": {"used": used, "left_out_too_small": left_out},
            "precision_factors": {
                "seeds": seeds,
                "base_batches": used,
                "devices": device_info,
            },
            "hardware": hardware(),
            "seconds": round(time.perf_counter() - started, 1),
        },
    )


def _validated_range(cells, calls: pd.DataFrame, plan: ValidationPlan, bundle) -> dict:
    """The lots this validation covers, as a release checks them: barcodes per lot (the
    mixtures' and the robustness levels'), the median counts per cell passing QC (the base's,
    times the lowest depth tested) and the share of the reference's genes (the materials',
    less the most genes removed)."""
    c = plan.content
    rob = c.get("robustness") or {}
    sizes = [c["n_cells"], *rob.get("n_cells", [])]
    base = (cells.obs[MATERIAL_KEY].astype(str) == "base").to_numpy() & calls["assessed"].to_numpy()
    depth = float(np.median(calls.loc[base, "total_counts"])) * min([1.0, *rob.get("depth", [])])
    overlap = None
    if bundle is not None:
        from ..tl.checks import check_genes  # the mapping's own overlap rule

        found = check_genes(cells, bundle, min_gene_overlap=0.0, warn_gene_overlap=0.0)[1]
        overlap = float(found * (1 - max([0.0, *rob.get("genes_missing", [])])))
    return {
        "n_barcodes": [int(min(sizes)), int(max(sizes))],
        "median_counts_min": depth,
        "gene_overlap_min": overlap,
        "rule": "barcodes within the range; median counts per cell passing QC and gene overlap "
        "at least the minimum",
    }


def _resolve(plan: ValidationPlan):
    from .. import atlas

    profile = atlas.load_profile(plan.content["product"])
    reference = plan.content.get("reference", profile.get("atlas"))
    if reference is None or str(reference).lower() == "none":
        return None, profile
    return atlas.load(reference), profile


def _check_lot(cells: AnnData, plan: ValidationPlan, bundle, profile) -> None:
    """The release's own pre-flight checks on the pooled materials, before any chain run: a
    plan whose lots the release would refuse is refused here, naming the plan."""
    from ..tl import checks

    try:
        checks.check_enough_cells(cells, what="pooled material cells")
        if bundle is not None:
            checks.check_genes(cells, bundle, min_gene_overlap=0.5, warn_gene_overlap=0.0)
        checks.check_spec_identities(cells, profile, plan.spec, bundle)
        checks.check_transgene_features(cells, plan.spec)
        checks.check_marker_gates(cells, plan.spec)
    except InputError as err:
        raise InputError(f"{plan.source}: the release would refuse these lots: {err}") from err


def called(adata: AnnData, impurity: Mapping) -> np.ndarray:
    """Cells of a lot (after identity and purity) called as ``impurity``: its named identity,
    else any identity of its class; proliferating and unassigned as the purity table counts
    them."""
    if impurity["class"] == "proliferating":
        return adata.obs[f"{KEYS.PURITY}_proliferating"].to_numpy(dtype=bool)
    names = adata.obs[KEYS.IDENTITY_CLASS].astype(str).to_numpy()
    if impurity.get("identity"):
        return names == impurity["identity"]
    if impurity["class"] == "unassigned":
        return names == "unassigned"
    of_class = [n for n, k in tl.identity_classes(adata).items() if k == impurity["class"]]
    return np.isin(names, of_class)


def _pooled_calls(cells, plan, bundle, profile, seed) -> pd.DataFrame:
    """Per pooled cell: assessed (kept by QC) and, per impurity, called as it."""
    lot = cells.copy()
    assess(lot, spec=plan.spec, profile=profile, bundle=bundle, seed=seed)
    out = pd.DataFrame(index=cells.obs_names)
    out["assessed"] = out.index.isin(lot.obs_names)
    for imp in plan.content["impurities"]:
        hit = pd.Series(called(lot, imp), index=lot.obs_names)
        out[impurity_key(imp)] = hit.reindex(out.index, fill_value=False).to_numpy()
    out["identity"] = lot.obs[KEYS.IDENTITY_CLASS].astype(str).reindex(out.index).fillna("QC")
    counts = pd.Series(np.asarray(lot.X.sum(axis=1)).ravel(), index=lot.obs_names)
    out["total_counts"] = counts.reindex(out.index).to_numpy()
    return out


def _mixtures(cells, calls: dict, plan: ValidationPlan) -> pd.DataFrame:
    c = plan.content
    material = cells.obs[MATERIAL_KEY].astype(str).to_numpy()
    base = np.flatnonzero(material == "base")
    rng = np.random.default_rng(c["seed"])
    rows = []
    draws = [(None, 0.0, r) for r in range(2 * c["replicates"])]  # blanks, shared
    draws += [
        (impurity_key(imp), f, r)
        for imp in c["impurities"]
        for f in c["levels"]
        for r in range(c["replicates"])
    ]
    for spiked, fraction, replicate in draws:
        spike = np.flatnonzero(material == spiked) if spiked else base[:0]
        idx, replaced = draw_mixture(rng, base, spike, fraction, c["n_cells"])
        for key in [spiked] if spiked else [impurity_key(imp) for imp in c["impurities"]]:
            for seed, table in calls.items():
                n_assessed, n_called, estimate = mixture_estimate(table, key, idx)
                rows.append(
                    {
                        "impurity": key,
                        "seed": seed,
                        "true_fraction": fraction,
                        "replicate": replicate,
                        "n_assessed": n_assessed,
                        "n_called": n_called,
                        "estimate": estimate,
                        "drawn_with_replacement": replaced,
                    }
                )
    return pd.DataFrame(rows)


def _parameter(name: str, impurity: str, value, acceptance: dict, *, at=None) -> dict:
    criterion = acceptance.get(name)
    ok = par.within(value, criterion)
    return {
        "parameter": name,
        "impurity": impurity,
        "value": value,
        "at_level": at,
        "criterion": criterion,
        "verdict": None if ok is None else (_stats.PASS if ok else _stats.FAIL),
    }


def _judge(mixtures: pd.DataFrame, plan: ValidationPlan, key: str):
    """One impurity's per-level table and its parameter rows."""
    acc = plan.content["acceptance"]
    limit = plan.limits[key]
    lob = par.limit_of_blank(mixtures)
    table = par.precision(mixtures).join(par.detection(mixtures, lob))
    lin = par.linearity(mixtures)
    lod = par.lod_by_rate(table)
    probit = par.lod_by_probit(mixtures, lob)
    loq = par.quantitation(table, acc)
    at = par.nearest_level(table.index, limit)
    linear = all(par.within(lin[k], acc.get(k)) is not False for k in ("slope", "intercept", "r2"))
    top = float(table.index.max())
    recovery = table["recovery"]
    worst = float(recovery.iloc[np.argmax(np.abs(np.log(recovery.clip(lower=1e-9))))])
    rows = [
        _parameter("recovery", key, worst, acc) | {"note": "the level furthest from 1"},
        *(_parameter(k, key, lin[k], acc) for k in ("slope", "intercept", "r2")),
        _parameter("repeatability_cv", key, table.loc[at, "cv_repeatability"], acc, at=at),
        _parameter("intermediate_precision_cv", key, table.loc[at, "cv_intermediate"], acc, at=at),
        _parameter("lod_vs_limit", key, None if lod is None or limit is None else lod / limit, acc),
        _parameter("limit_of_blank_vs_limit", key, None if limit is None else lob / limit, acc),
    ]
    summary = {
        "limit": limit,
        "limit_of_blank": lob,
        "lod": lod,
        "lod_probit": probit["lod"],
        "lod_probit_note": probit["note"],
        "loq": loq,
        "sampling_lod": par.sampling_limit(plan.content["n_cells"]),
        "range": [loq, top] if loq is not None and linear else None,
    }
    for name, value in summary.items():
        rows.append({"parameter": name, "impurity": key, "value": value, "verdict": None})
    return table, rows


def _specificity(cells, calls: pd.DataFrame, impurities: dict) -> pd.DataFrame:
    """Per material, its cells' fate in the pooled run: removed by QC, and among the assessed
    ones the share called as each impurity of the plan, as another impurity (a *cross-call*;
    an impurity that names only the class of this one's identity is not another) and as the
    target. The base row holds every impurity's blank share."""
    material = cells.obs[MATERIAL_KEY].astype(str).to_numpy()
    assessed = calls["assessed"].to_numpy()
    rows = {}
    for mat in [*impurities, "base"]:
        n_cells = int((material == mat).sum())
        sel = (material == mat) & assessed
        n = int(sel.sum())
        row = {"n_cells": n_cells, "removed_by_qc": 1 - n / n_cells, "n_assessed": n}
        for key in impurities:
            row[f"called_as {key}"] = float(calls[key].to_numpy()[sel].mean()) if n else np.nan
        if mat != "base":
            own = impurities[mat]
            others = [
                k
                for k, imp in impurities.items()
                if k != mat and not (imp["class"] == own["class"] and not imp.get("identity"))
            ]
            other = calls[others].to_numpy()[sel].any(axis=1) if others else np.zeros(n, bool)
            row["called_as_self"] = row[f"called_as {mat}"]
            row["called_as_other_impurity"] = float(other.mean()) if n else np.nan
        row["called_as_target"] = (
            float((calls["identity"].to_numpy()[sel] == "target").mean()) if n else np.nan
        )
        rows[mat] = row
    return pd.DataFrame.from_dict(rows, orient="index")


def chain_versus_pooled(cells, calls, idx, imp, plan, bundle, profile) -> dict:
    """One mixture (the pooled cells at ``idx``) through the whole chain on its own, beside
    the estimate its cells' pooled calls give: the check of the pooled shortcut."""
    key = impurity_key(imp)
    assessed = calls["assessed"].to_numpy()[idx]
    pooled = float((calls[key].to_numpy()[idx] & assessed).sum() / max(assessed.sum(), 1))
    lot = take(cells, idx)
    assess(lot, spec=plan.spec, profile=profile, bundle=bundle, seed=plan.content["seed"])
    k, n = int(called(lot, imp).sum()), lot.n_obs
    lo, hi = _stats.fraction_interval(k, n)
    return {
        "impurity": key,
        "chain_estimate": k / n,
        "ci_low": lo,
        "ci_high": hi,
        "pooled_estimate": pooled,
        "pooled_inside": bool(lo <= pooled <= hi),
    }


def _chain_check(cells, calls, plan, bundle, profile) -> pd.DataFrame:
    c = plan.content
    material = cells.obs[MATERIAL_KEY].astype(str).to_numpy()
    base = np.flatnonzero(material == "base")
    rng = np.random.default_rng(c["seed"] + 1000)
    rows = []
    for imp in c["impurities"]:
        key = impurity_key(imp)
        f = par.nearest_level(c["levels"], plan.limits[key])
        idx, _ = draw_mixture(rng, base, np.flatnonzero(material == key), f, c["n_cells"])
        check = chain_versus_pooled(cells, calls, idx, imp, plan, bundle, profile)
        rows.append({"impurity": key, "true_fraction": f, **check})
    return pd.DataFrame(rows)
