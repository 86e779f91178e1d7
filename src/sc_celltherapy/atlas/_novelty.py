"""Out-of-reference evidence: is a lot's cell like any cell the reference holds?

Two pieces of evidence, combined into one score with one split-conformal threshold:

- the *latent* local outlier ratio: in each model's latent space, the mean distance to the 50
  nearest reference cells over those cells' own spacing. It sees a state between or beside the
  reference's (a left-out T-cell subtype), but scArches surgery maps every query cell into the
  reference's space, where a cell of a foreign lineage lands on the nearest reference cluster;
- the *expression excess*: the share of a cell's counts that the reference cannot explain, over
  all genes the reference measured (not only the model's HVGs). For each gene the reference
  gives an upper level (the 99th percentile of counts per 10,000 over its cells); a count above
  the Poisson 1-in-1,000 limit at four times that level and the cell's depth is excess, and
  each cell's two largest genes are not counted. A monocyte in a
  T-cell lot carries LYZ, S100A8/9 and VCAN far above anything a T cell has; a T cell with a
  little ambient LYZ does not. Mitochondrial and ribosomal genes are left out: they measure
  cell quality (QC judges it), not lineage.

Each component is divided by its own 99% held-out quantile; the score is the larger of the two,
so either piece of evidence can call a cell out of reference.

Ambient RNA bound (applied to a lot at mapping, :func:`ambient_load`): a lot's ambient RNA is its
own lysate, so a cell of the reference's lineages can carry the genes the reference never
expresses at most at the lot's pooled share of them (all of its reads would then be ambient).
Expression evidence counts only for a cell whose share of those genes reaches the lot's pooled
share (load >= 1): a monocyte in a T-cell lot carries many times the pooled share; a T cell
coated with the marrow's myeloid ambient carries a fraction of it. The bound is physical, not
fitted; it can only withdraw out-of-reference calls, so the held-out false-positive bound stays.
What it costs: a foreign lineage that makes up most of the lot sits near the pooled share, and
its cells are then called by the latent evidence and by identity, not by expression.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .._checks import InputError
from .._markers import QUALITY_GENES

# The out-of-reference call's false-positive rate: a cell like the held-out reference cells is
# called "unassigned" with probability at most 1 - OOR_QUANTILE (split-conformal, oor_threshold).
OOR_QUANTILE = 0.99
# Neighbours of the local outlier ratio. Chosen on the leave-one-patient-out benchmark (CD8 gdT
# left out of the reference): k = 50 gave AUROC 0.86 where 5 and 15 gave 0.78 and 0.70.
OOR_K = 50
GENE_LEVEL_QUANTILE = 0.99  # the reference's upper level of each gene
EXCESS_TAIL = 1e-3  # a count above the Poisson (1 - EXCESS_TAIL) quantile at that level is excess
# ... of EXCESS_FOLD times the reference's level: a foreign lineage's genes sit tens of times
# above anything the reference's cells have (LYZ in a marrow monocyte: 27 counts, in a T cell of
# the same sample: 2), while chemistry and in-vitro activation move genes a few-fold. At 1x the
# real CAR-T product had 6.3% of its cells above the PBMC demo's threshold, at 2x 0.2%, at 4x
# none; foreign cells of the unsorted blood sample were all caught at 1x, 2x and 4x.
EXCESS_FOLD = 4
# A foreign lineage shows as excess over many genes; one or two genes in excess are a donor or a
# chemistry, not a lineage (XIST of a female donor on a male reference; NEAT1, a nuclear lncRNA
# whose capture varies with chemistry, was 93% of the excess of the real CAR-T product on the
# PBMC demo reference). The largest TRIM_GENES genes of each cell are not counted.
TRIM_GENES = 2
# A component's scale is at least this: with a clean reference 99% of held-out cells may have
# no excess at all, and 1% of a cell's counts above the reference is still within its noise.
MIN_SCALE = {"latent": 1e-6, "expression": 0.01}
# Expression evidence counts from this load up (the pooled share itself: the most ambient RNA
# can give a cell, see the module's docstring).
AMBIENT_LOAD_LIMIT = 1.0
# Blocks of the reference's genes and of cells: memory stays bounded on atlases; the results
# are the same as in one piece. A block of 2,500 cells holds some 8 million counts, and the
# excess step keeps eight per-count arrays of them (about 0.5 GB; 10,000 cells took 2 GB).
CHUNK_GENES, CHUNK_CELLS = 2_000, 2_500


def reference_spacing(reference: np.ndarray, *, k: int) -> np.ndarray:
    """Each reference point's mean distance to its ``k`` nearest other reference points."""
    from sklearn.neighbors import NearestNeighbors

    n = min(k + 1, reference.shape[0])
    dist, _ = NearestNeighbors(n_neighbors=n).fit(reference).kneighbors(reference)
    return dist[:, 1:].mean(axis=1)


def local_outlier_ratio(
    reference: np.ndarray, query: np.ndarray, spacing: np.ndarray, *, k: int
) -> np.ndarray:
    """A query point's mean distance to its ``k`` nearest reference points over the mean
    ``spacing`` of those neighbours (the idea of Breunig et al. 2000's local outlier factor).
    About 1 inside the reference wherever it is dense or sparse.

    Parameters
    ----------
    reference, query
        Points x dimensions (e.g. latent coordinates).
    spacing
        Each reference point's mean distance to its own ``k`` nearest reference points
        (:func:`reference_spacing`).
    k
        Neighbours.
    """
    from sklearn.neighbors import NearestNeighbors

    nn = NearestNeighbors(n_neighbors=min(k, reference.shape[0])).fit(reference)
    dist, idx = nn.kneighbors(query)
    return dist.mean(axis=1) / np.maximum(spacing[idx].mean(axis=1), 1e-12)


def oor_threshold(held_out: np.ndarray, quantile: float) -> tuple[float, float]:
    """Split-conformal threshold: the ``ceil((n + 1) * quantile)``-th smallest of ``n`` held-out
    scores. A new cell exchangeable with the held-out ones exceeds it with probability at most
    ``1 - quantile`` whatever the scores' distribution. With too few held-out cells for that
    level the largest score is used, and the bound returned, ``(n + 1 - k) / (n + 1)``, says
    what is guaranteed instead."""
    scores = np.sort(np.asarray(held_out, dtype=float))
    n = scores.size
    if n == 0:
        msg = "No held-out reference cell to fit the out-of-reference threshold on."
        raise InputError(msg)
    k = min(int(np.ceil((n + 1) * quantile)), n)
    return float(scores[k - 1]), float((n + 1 - k) / (n + 1))


def lineage_genes(genes) -> np.ndarray:
    """Mask of the genes the expression excess reads (quality genes left out)."""
    return ~np.array([bool(QUALITY_GENES.match(str(g))) for g in genes])


def gene_levels(counts, quantile: float = GENE_LEVEL_QUANTILE) -> np.ndarray:
    """Each gene's ``quantile`` of counts per 10,000 over the reference's cells."""
    counts = sp.csr_matrix(counts)
    n = counts.shape[0]
    scale = sp.diags(1e4 / np.maximum(np.asarray(counts.sum(axis=1, dtype=np.float64)).ravel(), 1))
    rank = int(np.ceil(quantile * n))  # 1-based rank among all cells, zeros included
    levels = np.zeros(counts.shape[1])
    # a block of genes at a time: a whole atlas's scaled copy (twice, CSR then CSC) would not fit
    for start in range(0, counts.shape[1], CHUNK_GENES):
        block = (scale @ counts[:, start : start + CHUNK_GENES].astype(np.float64)).tocsc()
        for j in range(block.shape[1]):
            col = block.data[block.indptr[j] : block.indptr[j + 1]]
            above_zeros = rank - (n - col.size)
            if above_zeros > 0:
                levels[start + j] = np.partition(col, above_zeros - 1)[above_zeros - 1]
    return levels


def expression_excess(counts, levels: np.ndarray) -> np.ndarray:
    """Share of each cell's counts above the Poisson (1 - EXCESS_TAIL) limit of the reference's
    level for that gene at the cell's depth, its TRIM_GENES largest genes left out.

    Parameters
    ----------
    counts
        Cells x genes (sparse or dense), columns the genes of ``levels``.
    levels
        Each gene's upper level in the reference (counts per 10,000; the bundle's
        ``expression_levels()``).
    """
    counts = sp.csr_matrix(counts)
    # cells are independent: blocks of cells keep the per-count arrays small on an atlas
    return np.concatenate(
        [
            _excess_of_block(counts[start : start + CHUNK_CELLS], levels)
            for start in range(0, counts.shape[0], CHUNK_CELLS)
        ]
        or [np.zeros(0)]
    )


def _excess_of_block(counts, levels: np.ndarray) -> np.ndarray:
    from scipy.stats import poisson

    counts = sp.csr_matrix(counts, dtype=np.float64)
    depth = np.asarray(counts.sum(axis=1)).ravel()
    coo = counts.tocoo()
    limit = poisson.ppf(1 - EXCESS_TAIL, EXCESS_FOLD * depth[coo.row] * levels[coo.col] / 1e4)
    excess = np.maximum(coo.data - limit, 0)
    # each cell's excesses in ascending order; the sum less the TRIM_GENES largest
    order = np.lexsort((excess, coo.row))
    cum = np.concatenate([[0.0], np.cumsum(excess[order])])
    ends = np.cumsum(np.bincount(coo.row, minlength=counts.shape[0]))
    starts = np.concatenate([[0], ends[:-1]])
    kept = cum[np.maximum(ends - TRIM_GENES, starts)] - cum[starts]
    return kept / np.maximum(depth, 1)


def ambient_load(counts, levels: np.ndarray) -> np.ndarray:
    """Each cell's share of counts in the genes the reference does not express (``levels`` 0)
    over the lot's pooled share of them: below 1 for any cell whose such reads could all be
    ambient RNA, well above 1 for a cell of a lineage the reference lacks.

    Parameters
    ----------
    counts
        The lot's cells x genes, columns the genes of ``levels``.
    levels
        Each gene's upper level in the reference (the bundle's ``expression_levels()``).
    """
    counts = sp.csr_matrix(counts, dtype=np.float64)
    absent = np.asarray(levels) == 0
    depth = np.asarray(counts.sum(axis=1)).ravel()
    in_absent = np.asarray(counts[:, absent].sum(axis=1)).ravel()
    pooled = in_absent.sum() / max(depth.sum(), 1.0)
    if pooled == 0:  # no read of an absent gene anywhere in the lot: nothing ambient either
        return np.zeros(counts.shape[0])
    return in_absent / np.maximum(depth, 1.0) / pooled


def component_scales(
    components: dict[str, np.ndarray], cells=slice(None), quantile: float = OOR_QUANTILE
) -> dict[str, float]:
    """Each component's held-out ``quantile`` (at least its ``MIN_SCALE``) over ``cells``."""
    return {
        c: max(oor_threshold(v[cells], quantile)[0], MIN_SCALE[c]) for c, v in components.items()
    }


def fit_oor(
    components: dict[str, np.ndarray],
    quantile: float = OOR_QUANTILE,
    fixed_scales: dict[str, float] | None = None,
) -> dict:
    """Scales and threshold of the combined score, from held-out in-reference cells' components
    (each cell scored by models and gene levels that never saw its donor); a component named in
    ``fixed_scales`` keeps that scale (one already in the combined score's units)."""
    fixed_scales = fixed_scales or {}
    fitted = {c: v for c, v in components.items() if c not in fixed_scales}
    scales = component_scales(fitted, quantile=quantile) | fixed_scales
    combined = combine(components, scales)
    threshold, bound = oor_threshold(combined, quantile)
    return {
        "scales": scales,
        "threshold": threshold,
        "fpr_bound": bound,
        "held_out_fpr_by_component": {
            c: float(np.mean(v / scales[c] > threshold)) for c, v in components.items()
        },
    }


def combine(components: dict[str, np.ndarray], scales: dict[str, float]) -> np.ndarray:
    """The out-of-reference score: the larger of the components, each in units of its
    held-out 99% quantile.

    Parameters
    ----------
    components
        Each component's values per cell (``"latent"``, ``"expression"``).
    scales
        Each component's held-out 99% quantile (the bundle's ``manifest["oor"]["scales"]``).
    """
    return np.max([v / scales[c] for c, v in components.items()], axis=0)
