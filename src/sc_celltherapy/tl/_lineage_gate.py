"""A profile's lineage gate: transcript evidence of the target's lineage that overrides a
related identity's call, the way a flow cytometry gate does (CD3+ cells are T cells, whatever
else they express).

Effector and gamma-delta T cells carry NK-like programs, and a reference whose NK label is
close to them calls some of a pure T-cell lot NK. T-cell receptor and CD3 transcripts are
lineage evidence the reference label misses. The gate counts the UMIs of the profile's gate
genes in each cell and lets it pass only when there are at least ``min_counts`` of them *and*
more than ambient RNA could put there: the 99.9% Poisson quantile of
``ambient_ceiling x depth x f``, where ``f`` is the gate genes' share of the whole lot's UMIs
(ambient RNA is the lot's pooled expression). In a T-cell lot an NK cell soaks up ambient CD3
transcripts; the ceiling keeps those from turning it into a T cell.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import scipy.sparse as sp
from anndata import AnnData
from scipy.stats import poisson

from .._checks import gene_columns, get_matrix

# Poisson tail beyond which gate counts are more than ambient RNA would give a cell.
AMBIENT_QUANTILE = 0.999
DEFAULT_MIN_COUNTS = 2
# A ceiling on the share of a droplet's UMIs that come from ambient RNA: 10x data of clean
# blood samples typically carry 1-5% (SoupX, CellBender estimates); beyond that a sample needs
# ambient correction before release testing anyway.
DEFAULT_AMBIENT_CEILING = 0.05


def gate_settings(gate: Mapping) -> dict:
    """The gate of a profile's target with its defaults filled."""
    return {
        "genes": list(gate["genes"]),
        "rescues": list(gate["rescues"]),
        "min_counts": int(gate.get("min_counts", DEFAULT_MIN_COUNTS)),
        "ambient_ceiling": float(gate.get("ambient_ceiling", DEFAULT_AMBIENT_CEILING)),
    }


def lineage_gate(
    adata: AnnData, gate: Mapping, *, layer: str | None = None
) -> tuple[np.ndarray, dict]:
    """Cells whose gate-gene counts pass the gate, and a record of how it was applied.

    The record holds the settings, the genes found and missing in the lot, the lot's gate share
    ``f`` and the number of cells passing. With no gate gene in the lot nothing passes and the
    record says so (the caller warns)."""
    settings = gate_settings(gate)
    found = gene_columns(adata, settings["genes"])
    X = sp.csr_matrix(get_matrix(adata, layer))
    depth = np.asarray(X.sum(axis=1), dtype=np.float64).ravel()
    counts = (
        np.asarray(X[:, list(found.values())].sum(axis=1), dtype=np.float64).ravel()
        if found
        else np.zeros(adata.n_obs)
    )
    share = float(counts.sum() / max(depth.sum(), 1.0))
    ambient = poisson.ppf(AMBIENT_QUANTILE, settings["ambient_ceiling"] * depth * share)
    passed = (counts >= settings["min_counts"]) & (counts > ambient)
    record = settings | {
        "genes_found": list(found),
        "genes_missing": [g for g in settings["genes"] if g not in found],
        "lot_gate_share": share,
        "ambient_quantile": AMBIENT_QUANTILE,
        "n_passing": int(passed.sum()),
        "rule": (
            f"a cell classed {settings['rescues']} (or ambiguous between them and the target "
            f"only) is target when its UMIs of {list(found)} number at least "
            f"{settings['min_counts']} and exceed the {AMBIENT_QUANTILE:.1%} Poisson quantile of "
            f"ambient RNA at {settings['ambient_ceiling']:.0%} of its depth (the lot's pooled "
            "share of those genes)"
        ),
    }
    return passed, record
