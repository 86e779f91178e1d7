"""Marker-panel scores that need no reference: within-cell ranks, pluripotency, cell cycle.

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

# Cell-cycle programmes of Tirosh et al. 2016 (Science 352:189), as used by Seurat's cc.genes
# and scanpy's cell-cycle tutorial, with current HGNC symbols (MLF1IP -> CENPU, FAM64A -> PIMREG,
# HN1 -> JPT1).
S_GENES = tuple(
    "MCM5 PCNA TYMS FEN1 MCM2 MCM4 RRM1 UNG GINS2 MCM6 CDCA7 DTL PRIM1 UHRF1 CENPU HELLS RFC2 "
    "RPA2 NASP RAD51AP1 GMNN WDR76 SLBP CCNE2 UBR7 POLD3 MSH2 ATAD2 RAD51 RRM2 CDC45 CDC6 EXO1 "
    "TIPIN DSCC1 BLM CASP8AP2 USP1 CLSPN POLA1 CHAF1B BRIP1 E2F8".split()
)
G2M_GENES = tuple(
    "HMGB2 CDK1 NUSAP1 UBE2C BIRC5 TPX2 TOP2A NDC80 CKS2 NUF2 CKS1B MKI67 TMPO CENPF TACC3 "
    "PIMREG SMC4 CCNB2 CKAP2L CKAP2 AURKB BUB1 KIF11 ANP32E TUBB4B GTSE1 KIF20B HJURP CDCA3 "
    "JPT1 CDC20 TTK CDC25C KIF2C RANGAP1 NCAPD2 DLGAP5 CDCA2 CDCA8 ECT2 KIF23 HMMR AURKA PSRC1 "
    "ANLN LBR CKAP5 CENPE CTCF NEK2 G2E3 GAS2L3 CBX5 CENPA".split()
)
MIN_CELL_CYCLE_GENES = 20


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


def cell_cycle(adata: AnnData, *, layer: str | None = None):
    """Cell-cycle scoring as scanpy's ``score_genes_cell_cycle`` does it (Tirosh S and G2/M
    programmes against control genes of matched expression, on log-normalised counts; phase S or
    G2M where that score is the higher one and above 0, else G1), but with every gene of each
    expression bin as controls instead of a random draw, so the call does not depend on a seed.
    Returns S and G2/M scores, the phase, and the numbers of S / G2M genes found; the phase is
    None when fewer than ``MIN_CELL_CYCLE_GENES`` of either programme are in the data."""
    import scanpy as sc

    s_genes, g2m_genes = present_genes(adata, S_GENES), present_genes(adata, G2M_GENES)
    n_found = (len(s_genes), len(g2m_genes))
    if min(n_found) < MIN_CELL_CYCLE_GENES:
        return None, None, None, n_found
    tmp = AnnData(X=sp.csr_matrix(get_matrix(adata, layer), dtype=np.float32))
    tmp.var_names = adata.var_names
    sc.pp.normalize_total(tmp, target_sum=1e4)
    sc.pp.log1p(tmp)
    all_of_bin = tmp.n_vars  # ctrl_size above any bin's size: the whole bin, no sampling
    sc.tl.score_genes(tmp, s_genes, ctrl_size=all_of_bin, score_name="S")
    sc.tl.score_genes(tmp, g2m_genes, ctrl_size=all_of_bin, score_name="G2M")
    s_score, g2m_score = tmp.obs["S"].to_numpy(), tmp.obs["G2M"].to_numpy()
    phase = np.where(g2m_score >= s_score, "G2M", "S")
    phase = np.where(np.maximum(s_score, g2m_score) > 0, phase, "G1")
    return s_score, g2m_score, phase, n_found
