"""Criteria on named features of each cell: a spec's marker gates (the flow-cytometry style
"at least 95% CD73+", judged with intervals) and the transgene-positive fraction (a lower bound).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .. import _stats
from .._checks import InputError, gene_columns, get_matrix
from .._spec import Spec

LEVEL = 0.95
IMPURITY_COLUMNS = ["n", "fraction", "ci_low", "ci_high", "limit", "verdict", "cells_needed"]
GATE_COLUMNS = [*IMPURITY_COLUMNS, "kind", "genes", "rule"]


def check_marker_gates(adata: AnnData, spec: Spec) -> None:
    """Refuse a spec whose marker-gate genes are not in the lot's matrix."""
    named = [
        g
        for key in ("min_positive", "max_positive")
        for gate in getattr(spec, key).values()
        for g in gate.genes
    ]
    missing = sorted(set(named) - set(gene_columns(adata, named)))
    if missing:
        msg = (
            f"Marker-gate gene(s) {missing} named by the spec are not in the lot's matrix. Check "
            "the symbols (HGNC, e.g. NT5E for CD73), or that the matrix is the full one, not a "
            "gene subset."
        )
        raise InputError(msg)


def marker_gates(adata: AnnData, spec: Spec, assessed: np.ndarray, layer) -> pd.DataFrame:
    """One row per gate: cells positive (detection rule of the spec module), fraction with its
    interval, limit, kind (min / max) and verdict."""
    rows = {}
    X = get_matrix(adata, layer)
    for kind, gates in (("min", spec.min_positive), ("max", spec.max_positive)):
        for name, gate in gates.items():
            sub = X[:, list(gene_columns(adata, gate.genes).values())] > 0
            detected = sub.toarray() if sp.issparse(sub) else np.asarray(sub)
            positive = detected.all(axis=1) if gate.rule == "all" else detected.any(axis=1)
            k, n = int(positive[assessed].sum()), int(assessed.sum())
            lo, hi = _stats.fraction_interval(k, n, LEVEL)
            rows[name] = {
                "n": k,
                "fraction": k / n,
                "ci_low": lo,
                "ci_high": hi,
                "limit": gate.fraction,
                "verdict": _stats.verdict(lo, hi, gate.fraction, kind=kind),
                "cells_needed": _stats.cells_needed(k / n, gate.fraction, kind=kind, level=LEVEL),
                "kind": kind,
                "genes": list(gate.genes),
                "rule": gate.rule,
            }
    return pd.DataFrame.from_dict(rows, orient="index").reindex(columns=GATE_COLUMNS)


def check_transgene_features(adata: AnnData, spec: Spec) -> None:
    """Refuse a spec whose transgene features are not in the lot's count matrix."""
    missing = [f for f in spec.transgene_features if f not in adata.var_names]
    if missing:
        msg = (
            f"Transgene feature(s) {missing} named by the spec are not in the count matrix. "
            "Check the feature name (e.g. CAT_scFv) or remove transgene_features from the spec."
        )
        raise InputError(msg)


def transgene_fraction(adata: AnnData, spec: Spec, assessed: np.ndarray, layer) -> dict | None:
    if not spec.transgene_features:
        return None
    check_transgene_features(adata, spec)
    cols = adata.var_names.get_indexer(list(spec.transgene_features))
    counts = get_matrix(adata, layer)[:, cols]
    positive = np.asarray((counts > 0).sum(axis=1)).ravel()[assessed] > 0
    k, n = int(positive.sum()), int(assessed.sum())
    lo, hi = _stats.fraction_interval(k, n, LEVEL)
    return {
        "features": list(spec.transgene_features),
        "n": k,
        "fraction": k / n,
        "ci_low": lo,
        "ci_high": hi,
        "lower_bound": True,
        "reason": (
            "transgene transcripts are poorly captured (a cell expressing the transgene often "
            "has no counted transcript), so the fraction of cells where it is detected is a "
            "lower bound of the transgene-positive fraction"
        ),
    }
