"""Marker-panel statistics that need no reference: within-cell ranks, panel enrichment and the
pluripotency detector.

A panel gene's *within-cell percentile* is its rank among the genes the cell expresses (mid-rank
for ties, 0 when not detected): 0.95 means only 5% of the cell's expressed genes are higher.
Ranks weigh levels without depending on depth, normalisation or chemistry, so the same numbers
hold for UMI counts and for full-length expected counts.

A panel is *enriched* in a cell when its genes rank higher than random genes of the same cell
would (the within-cell null of UCell and singscore). Under that null a gene's percentile is 0
with probability ``1 - p`` and uniform on (0, 1) with probability ``p``, where ``p`` is the
share of the matrix's genes the cell expresses; the mean of ``m`` such genes has expectation
``p / 2`` and variance ``(p/3 - p^2/4) / m``. The panel's z-score is its score's distance from
that expectation in null standard deviations. The null adapts to each cell's depth and to the
chemistry (a full-length cell expressing half its genes needs far more panel genes than a UMI
cell expressing 5%), and it does not depend on what else is in the lot. Control genes matched on
the lot's own expression levels (scanpy's ``score_genes``) cannot do that: in a pure lot the
target's genes set the expression bins they are compared against, so the target is not
enriched against itself (``benchmarks/marker_identity.py`` measures this).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .._checks import gene_columns, get_matrix
from .._markers import PLURIPOTENCY_PANEL  # noqa: F401  (tl's detector reads it here)

# A cell is called pluripotent when half or more of the panel sits in the top quarter of its
# expressed genes: in pluripotent cells these are among the most abundant transcripts, while
# differentiating progeny keep them at 10-100x lower levels (mid-ranked) or lose them (0).
PLURIPOTENT_MIN_PERCENTILE = 0.75
MIN_PANEL_GENES = 3

# Identity panels (see the module docstring and benchmarks/marker_identity.py, which sweeps both):
# z >= 4 is p < 3e-5 under the within-cell null, strict because marker genes are more often
# expressed than random genes. On the real cells of ../shared/data, 97% of sorted CAR-T cells
# carry the T-cell panel at z >= 4 while no population outside a profile's target reaches 2%.
MIN_ENRICHMENT_Z = 4.0
# The winning identity's score must exceed every other assessed identity's by this many null
# standard deviations of the difference of two panel means (v (1/m1 + 1/m2)), or the cell is
# unassigned: effector T cells carry much of the NK panel, and without a margin 1-2% of sorted
# CAR-T cells were called NK under the iPSC-NK profile. In null units, so that shallow cells
# (low scores, low p) are held to the same evidence as deep ones.
MIN_MARGIN = 2.0
# Coverage: an identity is assessed only when at least this many of its positive genes, and
# this share of them, are in the lot's matrix.
MIN_GENES_FOUND = 3
MIN_FRACTION_FOUND = 0.5


def present_genes(adata: AnnData, genes) -> list[str]:
    """The genes of ``genes`` found among the lot's gene symbols, in their order."""
    return list(gene_columns(adata, genes))


def within_cell_percentiles(adata: AnnData, genes, *, layer: str | None = None) -> np.ndarray:
    """Percentile of each gene among each cell's expressed genes (cells x genes; 0: not
    detected). Every gene of ``genes`` must be among the lot's gene symbols."""
    X = sp.csr_matrix(get_matrix(adata, layer))
    found = gene_columns(adata, genes)
    cols = [found[g] for g in genes]
    panel = X[:, cols].toarray()
    out = np.zeros(panel.shape, dtype=np.float64)
    for i in range(X.shape[0]):
        values = X.data[X.indptr[i] : X.indptr[i + 1]]
        values = np.sort(values[values > 0])
        if values.size == 0:
            continue
        v = panel[i]
        below = np.searchsorted(values, v, side="left")
        equal = np.searchsorted(values, v, side="right") - below
        out[i] = np.where(v > 0, (below + equal / 2) / values.size, 0.0)
    return out


def percentile_table(adata: AnnData, genes, *, layer: str | None = None) -> pd.DataFrame:
    """Within-cell percentiles of every gene of ``genes`` found in the lot (cells x genes),
    computed in one pass so that several panels share it."""
    found = present_genes(adata, genes)
    return pd.DataFrame(within_cell_percentiles(adata, found, layer=layer), columns=found)


def detected_fraction(adata: AnnData, *, layer: str | None = None) -> np.ndarray:
    """Share of the matrix's genes each cell expresses: the null's ``p``."""
    X = sp.csr_matrix(get_matrix(adata, layer))
    return np.asarray((X > 0).sum(axis=1), dtype=np.float64).ravel() / adata.n_vars


def genes_needed(panel_size: int, *, min_genes: int, min_fraction: float) -> int:
    """Positive genes an identity needs in the lot to be assessed."""
    return max(min_genes, math.ceil(min_fraction * panel_size))


@dataclass(frozen=True)
class PanelScore:
    """One panel's per-cell score (mean within-cell percentile of its positive genes minus
    that of its negative genes, clipped to [0, 1]), its z-score against the within-cell null,
    and the genes used."""

    score: np.ndarray
    z: np.ndarray
    positive: list[str]
    negative: list[str]


def panel_score(table: pd.DataFrame, p: np.ndarray, positive, negative=()) -> PanelScore:
    """Score a panel (``table``: :func:`percentile_table`; ``p``: :func:`detected_fraction`)."""
    pos = [g for g in positive if g in table.columns]
    neg = [g for g in negative if g in table.columns]
    if not pos:
        zeros = np.zeros(len(table))
        return PanelScore(zeros, zeros.copy(), [], neg)
    raw = table[pos].to_numpy().mean(axis=1)
    if neg:
        raw = raw - table[neg].to_numpy().mean(axis=1)
    sd = np.sqrt(np.maximum(p / 3 - p**2 / 4, 0) / len(pos))
    z = np.divide(raw - p / 2, sd, out=np.zeros_like(raw), where=sd > 0)
    return PanelScore(np.clip(raw, 0, 1), z, pos, neg)


def pluripotency(table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Pluripotency score (median within-cell percentile of :data:`PLURIPOTENCY_PANEL`), the
    call (score >= ``PLURIPOTENT_MIN_PERCENTILE``) and the panel genes found (``table``:
    :func:`percentile_table`). With fewer than ``MIN_PANEL_GENES`` found, nothing is called
    and the score is NaN."""
    genes = [g for g in PLURIPOTENCY_PANEL if g in table.columns]
    if len(genes) < MIN_PANEL_GENES:
        return np.full(len(table), np.nan), np.zeros(len(table), bool), genes
    score = np.median(table[genes].to_numpy(), axis=1)
    return score, score >= PLURIPOTENT_MIN_PERCENTILE, genes
