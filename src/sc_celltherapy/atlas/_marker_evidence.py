"""Marker-detection evidence: the reference's near-deterministic marker genes, read per cell.

Many reference labels are drawn by the presence of a few transcripts (CD4 or CD8A in T-cell
states, a lineage transcription factor in a differentiated product). A latent space of ten
dimensions smooths single-gene detection away, so a model trained on such labels calls a new
donor's CD4+ cells by their overall state and gets the sibling label with confidence. Here the
reference's own cells say which genes separate its labels almost deterministically, and how
likely each label is to show each of them at a cell's depth; the calibration step then stacks
that naive-Bayes evidence with the model's probabilities, with weights fitted on donors held
out of both (:mod:`._calibration`).

Detection is modelled per label and gene as ``P(detected) = 1 - exp(-depth * rate)`` (a
Poisson draw at the cell's depth over the bundle's genes), the rate fitted by maximum
likelihood with every donor weighing the same. A gene is a marker when, at the reference's
median depth, some well-populated label detects it in at least :data:`SEPARATION` more of its
cells than another, and its detection within each label does not differ between donors by
:data:`DONOR_SPREAD` or more (sex-chromosome genes and HLA alleles say who the donor is, not
what the cell is).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

SEPARATION = 0.9  # detection gap between two labels at the median depth
DONOR_SPREAD = 0.5  # within-label detection gap between donors that rules a gene out
MIN_LABEL_CELLS = 30  # a label's detection rates are trusted from this many cells
MIN_DONOR_CELLS = 20  # a donor's cells of a label enter the donor check from this many
PRIOR_CELLS = 10  # pseudo-cells of all labels pooled, added to each label's own cells
MAX_MARKERS = 50  # the most separating genes kept (naive Bayes double-counts correlated ones)
MAX_CANDIDATES = 200  # genes given the likelihood fits, by their raw detection gap
_BLOCK = 20_000  # cells per block of the likelihood grid (141 x 20,000 floats, 23 MB)
# one gene's evidence is bounded: ambient RNA, doublets and label noise make no detection
# certain, so no probability is taken below EPS or above 1 - EPS
EPS = 0.02
_GRID = np.exp(np.linspace(np.log(1e-7), np.log(1e-1), 141))


def _detected(counts) -> sp.csr_matrix:
    return sp.csr_matrix(sp.csr_matrix(counts) > 0, dtype=np.float64)


def _grid_loglik(detected, depth: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted log-likelihood of ``1 - exp(-depth * rate)`` on the rate grid: grid x genes.
    Cells go in blocks, so a reference of any size holds only a block's grid at a time."""
    out = np.zeros((_GRID.size, detected.shape[1]))
    for start in range(0, detected.shape[0], _BLOCK):
        rows = slice(start, start + _BLOCK)
        p = np.clip(1 - np.exp(-np.outer(_GRID, depth[rows])), 1e-9, 1 - 1e-9)
        log_p, log_q = np.log(p) * weights[rows], np.log1p(-p) * weights[rows]
        block = detected[rows]
        out += np.asarray(block.T @ log_p.T).T + log_q.sum(axis=1, keepdims=True)
        out -= np.asarray(block.T @ log_q.T).T
    return out


def _label_rates(detected, depth, weights, member, pooled: np.ndarray) -> np.ndarray:
    """A label's maximum-likelihood rates, shrunk towards all cells' by PRIOR_CELLS
    pseudo-cells (``pooled``: all cells' grid log-likelihood, weights summing to one): a label
    of seven cells says something, but not with the weight of seven hundred."""
    n = int(member.sum())
    ll = PRIOR_CELLS * pooled
    if n:
        w = weights[member] / weights[member].sum() * n
        ll = ll + _grid_loglik(detected[member], depth[member], w)
    return _GRID[ll.argmax(axis=0)]


def _rates(detected, depth: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Maximum-likelihood rate per gene (columns) of ``1 - exp(-depth * rate)``."""
    return _GRID[_grid_loglik(detected, depth, weights / weights.sum()).argmax(axis=0)]


def detection_probability(rates: np.ndarray, depth) -> np.ndarray:
    """``P(detected)`` of labels x genes ``rates`` at each depth: cells x labels x genes,
    kept within ``[EPS, 1 - EPS]``."""
    depth = np.asarray(depth, dtype=np.float64).reshape(-1, 1, 1)
    return np.clip(1 - np.exp(-depth * rates[None]), EPS, 1 - EPS)


def fit_marker_evidence(
    counts, depth: np.ndarray, y: np.ndarray, donors: np.ndarray, n_labels: int, genes
) -> dict:
    """Choose the marker genes of the labels and fit their detection rates.

    Parameters
    ----------
    counts
        Reference cells x genes (raw counts, the bundle's genes).
    depth
        Each cell's total counts over the bundle's genes.
    y
        Each cell's label column (``0 .. n_labels - 1``).
    donors
        Each cell's donor (batch); every donor weighs the same in the rates.
    genes
        The column names of ``counts``.

    Returns
    -------
    ``{"genes", "columns", "rates" (labels x markers), "median_depth", ...}``; no genes when
    no gene separates two well-populated labels.
    """
    detected = _detected(counts)
    depth = np.asarray(depth, dtype=np.float64)
    donors = np.asarray(donors).astype(str)
    _, inv, cnt = np.unique(donors, return_inverse=True, return_counts=True)
    weights = 1.0 / cnt[inv]
    # cheap pre-filter on raw detection fractions before the likelihood fits
    sizes = np.bincount(y, minlength=n_labels)
    populated = np.flatnonzero(sizes >= MIN_LABEL_CELLS)
    if populated.size < 2:
        return _empty(n_labels)
    frac = np.vstack(
        [weights[y == k] @ detected[y == k] / weights[y == k].sum() for k in populated]
    )
    spread = frac.max(axis=0) - frac.min(axis=0)
    candidates = np.flatnonzero(spread >= SEPARATION / 2)
    candidates = candidates[np.argsort(-spread[candidates], kind="stable")[:MAX_CANDIDATES]]
    if candidates.size == 0:
        return _empty(n_labels)
    sub = detected[:, candidates]
    pooled = _grid_loglik(sub, depth, weights / weights.sum())
    rates = np.vstack([_label_rates(sub, depth, weights, y == k, pooled) for k in range(n_labels)])
    share = np.asarray(counts.sum(axis=0), dtype=np.float64).ravel()
    share = share / max(share.sum(), 1.0)
    median = float(np.median(depth))
    at_median = 1 - np.exp(-median * rates[populated])
    gap = at_median.max(axis=0) - at_median.min(axis=0)
    keep = (gap >= SEPARATION) & ~_donor_confounded(sub, depth, y, donors, populated, median)
    order = np.argsort(-gap[keep], kind="stable")[:MAX_MARKERS]
    chosen = np.flatnonzero(keep)[order]
    return {
        "genes": [str(genes[candidates[j]]) for j in chosen],
        "columns": [int(candidates[j]) for j in chosen],
        "rates": rates[:, chosen].tolist(),
        "n_labels": n_labels,
        "median_depth": median,
        # each bundle gene's share of the reference's counts: a lot that lacks some genes has
        # its depth scaled up by the share it has
        "gene_share": [float(f"{v:.4g}") for v in share],
        "separation": SEPARATION,
        "donor_spread": DONOR_SPREAD,
        "eps": EPS,
        "model": "P(detected | label) = 1 - exp(-depth x rate), depth over the bundle's genes",
    }


def _empty(n_labels: int) -> dict:
    return {"genes": [], "columns": [], "rates": [], "n_labels": n_labels, "eps": EPS}


def _donor_confounded(detected, depth, y, donors, populated, median) -> np.ndarray:
    """Genes whose detection within some label differs between donors by DONOR_SPREAD or more."""
    out = np.zeros(detected.shape[1], dtype=bool)
    for k in populated:
        per_donor = []
        for d in np.unique(donors[y == k]):
            m = (y == k) & (donors == d)
            if m.sum() >= MIN_DONOR_CELLS:
                r = _rates(detected[m], depth[m], np.ones(int(m.sum())))
                per_donor.append(1 - np.exp(-median * r))
        if len(per_donor) >= 2:
            per_donor = np.array(per_donor)
            out |= per_donor.max(axis=0) - per_donor.min(axis=0) >= DONOR_SPREAD
    return out


def marker_loglik(evidence: dict, counts, depth) -> np.ndarray:
    """Each cell's naive-Bayes log-likelihood of its marker detections under each label.

    ``counts`` are the cells' counts of ``evidence["genes"]`` (columns in that order), ``depth``
    their total counts over the bundle's genes. Returns cells x labels (zeros without markers:
    no evidence).
    """
    if not evidence["genes"]:
        return np.zeros((np.asarray(depth).size, evidence["n_labels"]))
    rates = np.asarray(evidence["rates"], dtype=np.float64)
    detected = _detected(counts).toarray()
    p = detection_probability(rates, depth)
    return np.einsum("cg,ckg->ck", detected, np.log(p)) + np.einsum(
        "cg,ckg->ck", 1 - detected, np.log1p(-p)
    )


def reference_depth(counts) -> np.ndarray:
    """Each cell's total counts over the bundle's genes (the depth detection is modelled at)."""
    return np.asarray(counts.sum(axis=1), dtype=np.float64).ravel()


def out_of_fold_loglik(counts, y, donors, folds, n_labels: int, genes, depth=None) -> np.ndarray:
    """Marker-detection log-likelihoods of every held-out cell from evidence fitted on the
    other folds' cells (the same cross-fitting as the calibration models): cells x labels,
    zeros for cells in no fold."""
    counts = sp.csr_matrix(counts)
    depth = reference_depth(counts) if depth is None else depth
    out = np.zeros((counts.shape[0], n_labels))
    for held in folds:
        evidence = fit_marker_evidence(
            counts[~held], depth[~held], y[~held], donors[~held], n_labels, genes
        )
        out[held] = marker_loglik(evidence, counts[held][:, evidence["columns"]], depth[held])
    return out


def cross_fitted_evidence(ref, y, donors, folds, n_labels: int) -> tuple[np.ndarray, dict]:
    """For a reference AnnData (raw counts of the bundle's genes in ``.X``): the out-of-fold
    log-likelihoods of its held-out cells and the evidence fitted on all its cells."""
    genes = list(map(str, ref.var_names))
    counts = sp.csr_matrix(ref.X)
    depth = reference_depth(counts)
    held_out = out_of_fold_loglik(counts, y, donors, folds, n_labels, genes, depth)
    evidence = fit_marker_evidence(counts, depth, y, donors, n_labels, genes)
    return held_out, evidence


def reorder_labels(evidence: dict, order: list[int]) -> dict:
    """The evidence with its label rows in ``order`` (the model's label columns)."""
    rates = np.asarray(evidence["rates"])
    return evidence | {
        "rates": rates[order].tolist() if rates.size else [],
        "n_labels": len(order),
    }


def lot_marker_loglik(evidence: dict, counts, present: np.ndarray) -> np.ndarray:
    """A lot's marker-detection log-likelihoods, the evidence marker-detection stacking reads.

    Depth is scaled by the share of the reference's counts on the genes the lot has; a marker
    gene the lot lacks says nothing (it is left out, not read as undetected).

    Parameters
    ----------
    evidence
        The bundle's ``manifest["calibration"]["marker_evidence"]``.
    counts
        The lot's raw counts on the bundle's genes, cells x genes in the bundle's gene order
        (zeros where the lot lacks a gene).
    present
        Boolean per bundle gene: whether the lot has it.

    Returns
    -------
    Cells x labels (the bundle's label order); zeros when the bundle has no marker genes.
    """
    counts = sp.csr_matrix(counts)
    depth = reference_depth(counts)
    if not evidence["genes"]:
        return np.zeros((counts.shape[0], evidence["n_labels"]))
    share = np.asarray(evidence["gene_share"], dtype=np.float64)
    depth = depth / max(float(share[present].sum()), 1e-6)
    columns = np.asarray(evidence["columns"])
    kept = present[columns]
    rates = np.asarray(evidence["rates"], dtype=np.float64)[:, kept]
    return marker_loglik(
        evidence | {"rates": rates.tolist(), "genes": list(np.asarray(evidence["genes"])[kept])},
        counts[:, columns[kept]],
        depth,
    )
