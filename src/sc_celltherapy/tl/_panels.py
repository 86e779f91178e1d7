"""Marker-panel scores that need no reference: within-cell ranks and pluripotency.

A panel gene's *within-cell percentile* is its rank among the genes the cell expresses (mid-rank
for ties, 0 when not detected): 0.95 means only 5% of the cell's expressed genes are higher.
Ranks weigh levels without depending on depth, normalisation or chemistry, so the same numbers
hold for UMI counts and for full-length expected counts.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .._validate import get_matrix

# Residual undifferentiated cells (PRODUCT.md): the panel release labs use for hPSC products.
PLURIPOTENCY_PANEL = (
    "POU5F1",
    "NANOG",
    "LIN28A",
    "DPPA4",
    "TDGF1",
    "ZFP42",
    "L1TD1",
    "DNMT3B",
    "PRDM14",
    "ESRG",
)
# A cell is called pluripotent when half or more of the panel sits in the top quarter of its
# expressed genes: in pluripotent cells these are among the most abundant transcripts, while
# differentiating progeny keep them at 10-100x lower levels (mid-ranked) or lose them (0).
PLURIPOTENT_MIN_PERCENTILE = 0.75
MIN_PANEL_GENES = 3


def present_genes(adata: AnnData, genes) -> list[str]:
    return [g for g in genes if g in adata.var_names]


def within_cell_percentiles(adata: AnnData, genes, *, layer: str | None = None) -> np.ndarray:
    """Percentile of each gene among each cell's expressed genes (cells x genes; 0: not
    detected). ``genes`` must be in ``adata.var_names``."""
    X = sp.csr_matrix(get_matrix(adata, layer))
    cols = adata.var_names.get_indexer(list(genes))
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
    found = list(dict.fromkeys(present_genes(adata, genes)))
    return pd.DataFrame(within_cell_percentiles(adata, found, layer=layer), columns=found)


def panel_score(table: pd.DataFrame, positive, negative=()) -> tuple[np.ndarray, list[str]]:
    """Marker-panel score in [0, 1]: mean within-cell percentile of the positive genes minus
    that of the negative genes, clipped at 0 (``table``: :func:`percentile_table`). Returns the
    scores and the genes used."""
    pos = [g for g in positive if g in table.columns]
    neg = [g for g in negative if g in table.columns]
    if not pos:
        return np.zeros(len(table)), []
    score = table[pos].to_numpy().mean(axis=1)
    if neg:
        score = score - table[neg].to_numpy().mean(axis=1)
    return np.clip(score, 0, 1), pos + neg


def pluripotency(
    table: pd.DataFrame, panel=PLURIPOTENCY_PANEL
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Pluripotency score (median within-cell percentile of the panel), the call (score >=
    ``PLURIPOTENT_MIN_PERCENTILE``) and the panel genes found (``table``:
    :func:`percentile_table`). With fewer than ``MIN_PANEL_GENES`` found, nothing is called and
    the score is NaN."""
    genes = [g for g in panel if g in table.columns]
    if len(genes) < MIN_PANEL_GENES:
        return np.full(len(table), np.nan), np.zeros(len(table), bool), genes
    score = np.median(table[genes].to_numpy(), axis=1)
    return score, score >= PLURIPOTENT_MIN_PERCENTILE, genes
