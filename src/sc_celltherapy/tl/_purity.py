"""Purity of a lot against its spec: fractions with intervals, limits of detection, verdicts."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from .. import _stats
from .._checks import InputError, MissingKeyError, check_counts
from .._display import html_table, interval, pct, text_table
from .._keys import KEYS
from .._logging import logger
from .._spec import DETECTION_RULE, Spec
from .._utils import plain, uns_safe
from . import _cell_cycle
from ._donor_sex import donor_sex, judge_donor
from ._feature_gates import (
    GATE_COLUMNS,
    IMPURITY_COLUMNS,
    LEVEL,
    check_marker_gates,
    marker_gates,
    transgene_fraction,
)
from ._identities import AMBIGUOUS, TARGET, UNASSIGNED, impurity_classes, records_by_name
from ._panels import MIN_PANEL_GENES as _PLURI_MIN_GENES

# classes whose fraction is of all barcodes called cells, and the QC flag that counts them
_QC_CLASSES = {"doublets": KEYS.DOUBLET, "low_quality": KEYS.LOW_QUALITY}


@dataclass(frozen=True)
class TargetFraction:
    """The target fraction of a lot, its 95% interval, the spec's range (``limit`` the minimum,
    ``limit_max`` the maximum, ``None`` when the spec sets none below 1) and the one verdict
    against both bounds, with the cells that would decide the undecided bound."""

    n: int
    fraction: float
    ci_low: float
    ci_high: float
    limit: float | None
    verdict: str | None
    cells_needed: int | None
    limit_max: float | None = None


@dataclass(frozen=True)
class PurityReport:
    """Identity and purity of one lot against its spec (see :func:`assess_purity`).

    ``impurities`` is a DataFrame indexed by class (the spec's impurity classes, then
    ``identity:<name>`` rows for single identities) with columns ``n``, ``fraction``,
    ``ci_low``, ``ci_high``, ``limit``, ``verdict``, ``cells_needed`` and ``denominator``
    (``"assessed"``: cells passing QC; ``"barcodes"``: all barcodes called cells).
    """

    n_cells: int
    n_barcodes: int
    qc_excluded: dict[str, int]
    target: TargetFraction
    impurities: pd.DataFrame = field(repr=False)
    lod95: float
    verdict: str
    transgene: dict[str, Any] | None
    spec: dict[str, Any]
    notes: list[str]
    method: dict[str, Any]
    marker_gates: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame(columns=GATE_COLUMNS), repr=False
    )
    chain_of_identity: dict[str, Any] | None = None  # donor sex (:func:`donor_sex`), judged

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-ready values (``None`` where there is no limit or verdict)."""
        frame = self.impurities.astype(object).where(self.impurities.notna(), None)
        for col in ("n", "cells_needed"):  # counts stay integers whatever pandas made them
            frame[col] = [None if v is None else int(v) for v in frame[col]]
        return plain(
            {
                "n_cells": self.n_cells,
                "n_barcodes": self.n_barcodes,
                "qc_excluded": dict(self.qc_excluded),
                "target": self.target.__dict__,
                "impurities": {k: dict(row) for k, row in frame.iterrows()},
                "marker_gates": {k: dict(row) for k, row in self.marker_gates.iterrows()},
                "lod95": self.lod95,
                "verdict": self.verdict,
                "transgene": self.transgene,
                "chain_of_identity": self.chain_of_identity,
                "spec": self.spec,
                "notes": list(self.notes),
                "method": self.method,
            }
        )

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), indent=kwargs.pop("indent", 2), **kwargs)

    _HEADER = ("criterion", "n", "fraction", "95% interval", "limit", "verdict")

    def _rows(self) -> list[list[str]]:
        kinds = {f"marker:{k}": kind for k, kind in self.marker_gates.get("kind", {}).items()}
        rows = []
        for name, r in self.to_frame().iterrows():
            if name == TARGET:
                limit = f">= {pct(self.target.limit)}" if self.target.limit else "–"
                if self.target.limit_max is not None:
                    limit += f", <= {pct(self.target.limit_max)}"
            elif pd.isna(r["limit"]):
                limit = "–"
            else:
                limit = f"{'>=' if kinds.get(name) == 'min' else '<='} {pct(r['limit'])}"
            verdict = r["verdict"] if isinstance(r["verdict"], str) else "–"
            rows.append(
                [
                    str(name),
                    str(int(r["n"])),
                    pct(r["fraction"]),
                    interval(r["ci_low"], r["ci_high"]),
                    limit,
                    verdict,
                ]
            )
        donor = self.chain_of_identity
        if donor and donor.get("verdict"):
            stated = [donor["expected_sex"] or "", "one donor" if donor["single_donor"] else ""]
            rows.append(
                [
                    "donor sex (male share)",
                    str(donor["n"]["female"] + donor["n"]["male"]),
                    pct(donor["male_fraction"]) if "male_fraction" in donor else "–",
                    interval(donor["ci_low"], donor["ci_high"]) if "ci_low" in donor else "–",
                    ", ".join(s for s in stated if s),
                    donor["verdict"],
                ]
            )
        return rows

    def __repr__(self) -> str:
        head = (
            f"PurityReport: {self.verdict} ({self.n_cells} cells assessed, limit of detection "
            f"{pct(self.lod95)})"
        )
        return head + "\n" + text_table(self._rows(), self._HEADER)

    def _repr_html_(self) -> str:
        title = f"Purity of {self.n_cells} cells (limit of detection {pct(self.lod95)})"
        return html_table(title, self._rows(), self._HEADER, self.verdict)

    def to_frame(self) -> pd.DataFrame:
        """Target and impurity rows in one table, as a report prints them."""
        rows = {TARGET: {**self.target.__dict__, "denominator": "assessed"}}
        rows |= self.impurities.astype(object).to_dict(orient="index")
        gates = self.marker_gates.assign(denominator="assessed")
        rows |= {f"marker:{k}": v for k, v in gates.astype(object).to_dict(orient="index").items()}
        return pd.DataFrame.from_dict(rows, orient="index")[[*IMPURITY_COLUMNS, "denominator"]]

    @classmethod
    def from_dict(cls, d: dict) -> PurityReport:
        impurities = pd.DataFrame.from_dict(d["impurities"], orient="index")
        impurities = impurities.reindex(columns=[*IMPURITY_COLUMNS, "denominator"])
        return cls(
            n_cells=d["n_cells"],
            n_barcodes=d["n_barcodes"],
            qc_excluded=d["qc_excluded"],
            target=TargetFraction(
                **({"limit": None, "verdict": None, "cells_needed": None} | d["target"])
            ),
            impurities=impurities,
            lod95=d["lod95"],
            verdict=d["verdict"],
            transgene=d.get("transgene"),
            chain_of_identity=d.get("chain_of_identity"),
            spec=d["spec"],
            notes=d.get("notes", []),
            method=d["method"],
            marker_gates=pd.DataFrame.from_dict(
                d.get("marker_gates") or {}, orient="index"
            ).reindex(columns=GATE_COLUMNS),
        )


def assess_purity(
    adata: AnnData,
    spec: Spec,
    *,
    identity_key: str = KEYS.IDENTITY,
    layer: str | None = None,
    key_added: str = KEYS.PURITY,
) -> PurityReport:
    """Judge a lot's identity and purity against a release spec.

    Every fraction k/n gets a 95% Wilson interval (k = 0: the exact one-sided upper bound
    ``1 - 0.05^(1/n)``), the spec's limit and a verdict: PASS when the whole interval meets the
    limit, FAIL when the whole interval violates it, INCONCLUSIVE when it straddles it, with the
    number of cells that would have decided it. Classes: ``off_target`` (identities of that
    class), ``residual_pluripotent`` (pluripotency panel, see :func:`identity_score`),
    ``proliferating`` (scanpy's cell-cycle scoring with the Tirosh S and G2/M programmes:
    phase S or G2M, deterministic), ``unassigned`` (out of the reference), ``ambiguous`` (with
    a reference: the cell's conformal label set spans the target and an impurity, so argmax
    would split it), all as fractions of cells passing QC; ``doublets`` and ``low_quality`` as fractions of all barcodes called cells (from
    ``uns["sct_qc"]`` of :func:`~sc_celltherapy.pp.remove_flagged`, or from the QC flags when
    cells were flagged but not removed). The transgene-positive fraction (a count in any
    ``spec.transgene_features``) is reported as a lower bound. Several channels of one lot are
    pooled (their cells summed) before intervals are computed.

    Parameters
    ----------
    adata
        QC'd lot scored with :func:`identity_score`.
    spec
        The release specification (:class:`~sc_celltherapy.release.Spec`).
    identity_key
        ``key_added`` of :func:`identity_score`.
    layer
        Layer with raw counts; ``None`` uses ``.X``.
    key_added
        Where the report and per-cell calls go.

    Returns
    -------
    The :class:`PurityReport`; also stored as a dict in ``uns[key_added]``, with per-cell
    ``obs[f"{key_added}_proliferating"]`` (bool) and ``obs[f"{key_added}_phase"]``.
    """
    if not isinstance(spec, Spec):
        msg = f"spec must be a sc_celltherapy.release.Spec, got {type(spec).__name__}."
        raise InputError(msg)
    check_counts(adata, layer=layer)  # the proliferation model and marker gates need counts
    check_marker_gates(adata, spec)
    class_col = f"{identity_key}_class"
    if class_col not in adata.obs or identity_key not in adata.uns:
        msg = f"adata.obs has no {class_col!r}: run sct.tl.identity_score before assess_purity."
        raise MissingKeyError(msg)
    info = adata.uns[identity_key]
    records = records_by_name(info)
    known = set(records) | set(info["target"]) | {info["target_name"]}
    spec.check_identities(known, where=f"the identity scoring (profile {info.get('profile')})")
    assessed, n_barcodes, qc_excluded, notes = _assessed_cells(adata)
    n = int(assessed.sum())
    if n == 0:
        raise InputError("No cell is left to assess after QC; nothing can be reported.")
    classes = adata.obs[class_col].astype(str).to_numpy()[assessed]
    impurity_class = impurity_classes(info)
    for name in info.get("not_assessed", []):
        notes.append(
            f"identity {name!r} {records[name]['reason'] or 'not assessed'}; its cells are not "
            "counted as that identity"
        )
    pluri_genes = list(info.get("pluripotency_genes_used", []))
    if "residual_pluripotent" in spec.max_impurity and len(pluri_genes) < _PLURI_MIN_GENES:
        msg = (
            "The spec limits 'residual_pluripotent' but the lot has no data for it: only "
            f"{pluri_genes} of the pluripotency detector's genes are in the matrix, "
            f"{_PLURI_MIN_GENES} needed. Give the full count matrix."
        )
        raise InputError(msg)

    k_target = int((classes == TARGET).sum())
    target = _target_row(k_target, n, spec)

    counts: dict[str, tuple[int, int, str]] = {}
    off = [name for name, c in impurity_class.items() if c == "off_target"]
    counts["off_target"] = (int(np.isin(classes, off).sum()), n, "assessed")
    # from the pluripotency panel (identity_score names those cells so) and from reference
    # labels of a residual-pluripotent identity, where the reference has one
    pluri = [name for name, c in impurity_class.items() if c == "residual_pluripotent"]
    counts["residual_pluripotent"] = (int(np.isin(classes, pluri).sum()), n, "assessed")
    cc = _cell_cycle.cell_cycle(adata, layer=layer)
    n_cc = _cell_cycle.programme_genes_found(adata)
    if cc is None:
        notes.append(
            f"proliferating not scored: only {n_cc[0]} S / {n_cc[1]} G2M cell-cycle genes found"
        )
    else:
        adata.obs[f"{key_added}_phase"] = pd.Categorical(cc.phase)
        adata.obs[f"{key_added}_proliferating"] = cc.cycling
        counts["proliferating"] = (int(cc.cycling[assessed].sum()), n, "assessed")
        if cc.method == "outliers":
            n_out = int(cc.cycling.sum())
            notes.append(
                "proliferating: no cycling component could be fitted (the median programme gene "
                f"is at most {2 ** np.nan_to_num(cc.median_log2_fold):.1f}x higher in any split), "
                f"so the cycling cells are the {n_out} programme-score outliers (> median + "
                f"{_cell_cycle.OUTLIER_Z:g} robust SD)"
                + (
                    "; none stands out, which also happens when most of the lot cycles: check "
                    "the S/G2M scores before relying on this fraction"
                    if n_out == 0
                    else ""
                )
            )
    counts["unassigned"] = (int((classes == UNASSIGNED).sum()), n, "assessed")
    if info.get("rules", {}).get("ambiguity_level") not in (None, "none"):
        # only a reference's label sets can make a cell ambiguous; marker panels call it
        # unassigned instead
        counts["ambiguous"] = (int((classes == AMBIGUOUS).sum()), n, "assessed")
    for cls, flag in _QC_CLASSES.items():
        if flag in qc_excluded:
            counts[cls] = (qc_excluded[flag], n_barcodes, "barcodes")
    rows = {cls: _impurity_row(*counts[cls], spec.max_impurity.get(cls)) for cls in counts}
    for cls in spec.max_impurity:
        if cls not in rows:
            why = (
                "run sct.pp.flag_low_quality / sct.pp.doublets before remove_flagged"
                if cls in _QC_CLASSES
                else "ambiguous cells come from a reference's conformal label sets; map the "
                "lot onto a reference (marker panels call such cells unassigned)"
                if cls == "ambiguous"
                else f"only {n_cc[0]} S / {n_cc[1]} G2M cell-cycle genes are in the matrix, "
                f"fewer than {_cell_cycle.MIN_CELL_CYCLE_GENES} of either"
            )
            msg = f"The spec limits {cls!r} but the lot has no data for it: {why}."
            raise InputError(msg)
    for name, limit in spec.max_identity_fraction.items():
        k = int((classes == name).sum())
        rows[f"identity:{name}"] = _impurity_row(k, n, "assessed", limit)
    impurities = pd.DataFrame.from_dict(rows, orient="index")
    impurities = impurities[[*IMPURITY_COLUMNS, "denominator"]]

    gates = marker_gates(adata, spec, assessed, layer)
    transgene = transgene_fraction(adata, spec, assessed, layer)
    donor = judge_donor(
        donor_sex(adata, layer=layer, cells=assessed),
        expected_sex=spec.expected_sex,
        single_donor=spec.single_donor,
    )
    if donor["call"] == "mixed" and donor["verdict"] is None:
        notes.append(
            f"Cells of both sexes: {donor['n']['male']} male, {donor['n']['female']} female "
            "(a possible mix of donors; not judged, the spec does not state single_donor)."
        )
    verdicts = [target.verdict, *impurities["verdict"], *gates["verdict"], donor["verdict"]]
    report = PurityReport(
        n_cells=n,
        n_barcodes=n_barcodes,
        qc_excluded=qc_excluded,
        target=target,
        impurities=impurities,
        lod95=_stats.detection_limit(n, LEVEL),
        verdict=_stats.overall_verdict(verdicts),
        transgene=transgene,
        spec=spec.to_dict(),
        notes=notes,
        marker_gates=gates,
        chain_of_identity=donor,
        method={
            "marker_gates": DETECTION_RULE,
            "interval": "Wilson score, 95%; k = 0: exact one-sided upper bound 1 - 0.05^(1/n)",
            "lod95": "1 - 0.05^(1/n): fraction seen at least once with 95% probability",
            "channels": "pooled (cells of all channels summed)",
            "identity": info["method"],
            "proliferating": (
                "in S/G2/M: two-component Poisson mixture on the UMIs of the Tirosh 2016 S and "
                "G2/M programme genes (library size as exposure), seeded with the cells whose "
                "programme score (scanpy score_genes, whole expression bins as controls) is "
                f"> median + {_cell_cycle.OUTLIER_Z:g} robust SD; posterior > 0.5. When the fitted "
                "split is not a cycling one (median programme gene < "
                f"{2**_cell_cycle.MIN_MEDIAN_LOG2_FOLD:g}x higher), the outliers themselves"
                + ("" if cc is None else f". This lot: {cc.method}")
            ),
        },
    )
    adata.uns[key_added] = uns_safe(report.to_dict())
    logger.info(
        "purity verdict %s (target %.1f%% of %d cells)", report.verdict, 100 * target.fraction, n
    )
    return report


def _assessed_cells(adata: AnnData):
    """Cells to assess, barcodes called cells, cells excluded per QC flag, and notes."""
    notes: list[str] = []
    qc = adata.uns.get(KEYS.QC)
    present_flags = [f for f in _QC_CLASSES.values() if f in adata.obs]
    if qc is not None:
        # remove_flagged removed the flagged cells; it recorded how many, per flag
        excluded = {k: int(v) for k, v in qc["n_removed"].items()}
        return np.ones(adata.n_obs, bool), int(qc["n_cells_before"]), excluded, notes
    if present_flags:
        flagged = np.zeros(adata.n_obs, bool)
        excluded = {}
        for f in present_flags:
            col = adata.obs[f].to_numpy(dtype=bool)
            excluded[f] = int(col.sum())
            flagged |= col
        excluded["any"] = int(flagged.sum())
        return ~flagged, adata.n_obs, excluded, notes
    notes.append("no QC record: every cell assessed, doublets and low-quality cells not counted")
    return np.ones(adata.n_obs, bool), adata.n_obs, {}, notes


def _impurity_row(k: int, n: int, denominator: str, limit: float | None) -> dict:
    lo, hi = _stats.fraction_interval(k, n, LEVEL)
    frac = k / n if n else float("nan")
    return {
        "n": k,
        "fraction": frac,
        "ci_low": lo,
        "ci_high": hi,
        "limit": limit,
        "verdict": _stats.verdict(lo, hi, limit, kind="max"),
        "cells_needed": _stats.cells_needed(frac, limit, kind="max", level=LEVEL),
        "denominator": denominator,
    }


def _target_row(k: int, n: int, spec: Spec) -> TargetFraction:
    """Judged against both bounds of the spec's range: FAIL when either fails, PASS when both
    pass, else INCONCLUSIVE, with the cells needed by the undecided bound(s)."""
    lo, hi = _stats.fraction_interval(k, n, LEVEL)
    bounds = [("min", spec.min_target_fraction)]
    if spec.max_target_fraction < 1:
        bounds.append(("max", spec.max_target_fraction))
    verdicts = [_stats.verdict(lo, hi, limit, kind=kind) for kind, limit in bounds]
    needed = [
        _stats.cells_needed(k / n, limit, kind=kind, level=LEVEL)
        for (kind, limit), v in zip(bounds, verdicts, strict=True)
        if v == _stats.INCONCLUSIVE
    ]
    return TargetFraction(
        n=k,
        fraction=k / n,
        ci_low=lo,
        ci_high=hi,
        limit=spec.min_target_fraction,
        verdict=_stats.overall_verdict(verdicts),
        cells_needed=max((c for c in needed if c is not None), default=None)
        if needed
        else _stats.cells_needed(k / n, spec.min_target_fraction, kind="min", level=LEVEL),
        limit_max=spec.max_target_fraction if spec.max_target_fraction < 1 else None,
    )
