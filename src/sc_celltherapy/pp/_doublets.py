"""Doublet scores and calls, per sample, with a documented fallback threshold."""

from __future__ import annotations

import numpy as np
import scanpy as sc
from anndata import AnnData

from .._checks import InputError, check_lot, get_matrix
from .._keys import KEYS
from .._logging import logger, timed
from .._utils import EXACT_KNN_MAX_CELLS, iter_samples, uns_safe
from ._qc import refuse_after_filter

# 10x Genomics' Chromium user guides: about 0.8% multiplets per 1,000 cells recovered.
MULTIPLET_RATE_PER_1000 = 0.008
# Scrublet needs enough cells for its PCA and kNN; smaller samples are not scored.
MIN_CELLS = 50
# An automatic threshold that calls more than this multiple of the expected rate sits in the
# bulk of a unimodal score distribution and is rejected (the usual scrublet complaint).
MAX_CALLED_OVER_EXPECTED = 2.5


def expected_multiplet_rate(n_cells: int) -> float:
    """Expected multiplet fraction for ``n_cells`` recovered from one 10x channel.

    0.8% per 1,000 cells (10x Genomics), kept within [0.5%, 25%].
    """
    return float(np.clip(MULTIPLET_RATE_PER_1000 * n_cells / 1000, 0.005, 0.25))


def doublets(
    adata: AnnData,
    *,
    method: str = "scrublet",
    batch_key: str | None = None,
    expected_rate: float | None = None,
    layer: str | None = None,
    exclude_key: str | None = KEYS.LOW_QUALITY,
    random_state: int = 0,
    key_added: str = KEYS.DOUBLET,
) -> None:
    """Score and call doublets per sample with scrublet (scanpy's implementation).

    Scrublet runs on log-transformed, variance-normalised counts (``log_transform=True``, which
    keeps a few highly expressed genes from dominating its PCA). The threshold is scrublet's
    automatic one (the minimum between the two modes of the simulated
    doublet scores). When that fails, because the scores are not bimodal or because the
    threshold would call more than 2.5 times the expected rate, the fallback calls the top
    ``expected_rate`` fraction of cells, where the expected rate is 0.8% per 1,000 cells loaded
    on the channel (10x Genomics) unless given. Which rule set each sample's threshold is recorded.

    Parameters
    ----------
    adata
        Lot with raw counts in ``.X`` or ``layer``.
    method
        Only ``"scrublet"`` for now.
    batch_key
        Column of ``.obs`` with the sample (10x channel) of each cell; doublets form within a
        channel, so each is scored on its own.
    expected_rate
        Expected doublet fraction; ``None`` derives it from each sample's cell number.
    layer
        Layer holding raw counts; ``None`` uses ``.X``.
    exclude_key
        Bool ``.obs`` column of cells left out of scoring (default: the low-quality flags, when
        present). Scrublet simulates doublets from the observed barcodes, so empty droplets and
        dying cells among them blur the simulated doublets and lower its accuracy.
    random_state
        Seed of scrublet's simulation and embedding.
    key_added
        Name of the result columns.

    Returns
    -------
    Nothing; adds ``adata.obs[f"{key_added}_score"]`` (float, NaN for excluded cells and samples
    too small to score) and ``adata.obs[key_added]`` (bool), and in ``adata.uns[key_added]`` per sample the
    threshold, the rule that set it (``scrublet_auto``, ``expected_rate_fallback`` or
    ``not_scored``), the expected rate and the number of cells called.

    Examples
    --------
    >>> import sc_celltherapy as sct
    >>> adata = sct.datasets.toy_product(n_cells=600)
    >>> sct.pp.doublets(adata)
    >>> sorted(adata.uns["sct_doublet"]["per_sample"]["all"])[:2]
    ['expected_rate', 'n_called']
    """
    if method != "scrublet":
        msg = f"method must be 'scrublet', got {method!r}."
        raise InputError(msg)
    if expected_rate is not None and not 0 < expected_rate < 1:
        msg = f"expected_rate must be a fraction in (0, 1), got {expected_rate}."
        raise InputError(msg)
    refuse_after_filter(adata, key_added, "doublets")
    check_lot(adata, layer=layer, batch_key=batch_key)
    counts = get_matrix(adata, layer)
    scored = np.ones(adata.n_obs, dtype=bool)
    if exclude_key is not None and exclude_key in adata.obs:
        scored = ~adata.obs[exclude_key].to_numpy(dtype=bool)

    scores = np.full(adata.n_obs, np.nan)
    called = np.zeros(adata.n_obs, dtype=bool)
    per_sample = {}
    for sample, in_sample in iter_samples(adata, batch_key):
        mask = in_sample & scored
        n = int(in_sample.sum())  # cells loaded on the channel set the expected rate
        rate = expected_rate if expected_rate is not None else expected_multiplet_rate(n)
        if mask.sum() < MIN_CELLS:
            per_sample[sample] = {
                "rule": "not_scored",
                "reason": f"fewer than {MIN_CELLS} cells",
                "expected_rate": rate,
                "n_called": 0,
            }
            logger.warning("sample %s: %d cells, too few to score doublets", sample, n)
            continue
        with timed(f"scrublet on sample {sample} ({mask.sum()} cells)"):
            obs_scores, sim_scores = _scrublet_scores(counts[mask], rate, random_state)
        threshold, rule, reason = _threshold(obs_scores, sim_scores, rate)
        scores[mask] = obs_scores
        called[mask] = obs_scores > threshold
        per_sample[sample] = {
            "threshold": threshold,
            "rule": rule,
            "reason": reason,
            "expected_rate": rate,
            "n_called": int((obs_scores > threshold).sum()),
            "n_cells": n,
            "n_scored": int(mask.sum()),
        }

    adata.obs[f"{key_added}_score"] = scores
    adata.obs[key_added] = called
    adata.uns[key_added] = uns_safe(
        {
            "params": {
                "method": method,
                "batch_key": batch_key,
                "expected_rate": expected_rate,
                "random_state": random_state,
                "exclude_key": exclude_key,
                "log_transform": True,
                "knn": f"exact up to {EXACT_KNN_MAX_CELLS:,} cells per sample, pynndescent above",
                "fallback": "top expected_rate fraction; expected rate 0.8% per 1,000 cells",
            },
            "per_sample": per_sample,
            "n_called": int(called.sum()),
        }
    )


def _scrublet_scores(counts, rate: float, random_state: int) -> tuple[np.ndarray, np.ndarray]:
    """Scrublet's observed and simulated doublet scores (threshold left to us)."""
    sub = AnnData(X=counts.copy())
    verbosity = sc.settings.verbosity
    # threshold=inf: scanpy skips its own automatic call, which we make ourselves. Scrublet
    # log-transforms simulated doublets that inherit the log1p flag, so scanpy logs a spurious
    # "already log-transformed"; and at inf the detectable fraction is 0 (a 0/0 warning).
    sc.settings.verbosity = 0
    try:
        with np.errstate(divide="ignore", invalid="ignore"):
            sc.pp.scrublet(
                sub,
                expected_doublet_rate=rate,
                threshold=np.inf,
                log_transform=True,
                random_state=random_state,
                verbose=False,
                use_approx_neighbors=_approximate_knn(counts.shape[0]),
            )
    finally:
        sc.settings.verbosity = verbosity
    return sub.obs["doublet_score"].to_numpy(), np.asarray(
        sub.uns["scrublet"]["doublet_scores_sim"]
    )


def _approximate_knn(n_cells: int) -> bool:
    return n_cells > EXACT_KNN_MAX_CELLS


def _threshold(obs_scores: np.ndarray, sim_scores: np.ndarray, rate: float):
    from skimage.filters import threshold_minimum

    try:
        auto = float(threshold_minimum(sim_scores))
    except RuntimeError:
        reason = "simulated doublet scores are not bimodal"
    else:
        frac = float(np.mean(obs_scores > auto))
        if frac <= MAX_CALLED_OVER_EXPECTED * rate:
            return auto, "scrublet_auto", None
        reason = f"automatic threshold {auto:.3f} would call {frac:.1%} (expected {rate:.1%})"
    fallback = float(np.quantile(obs_scores, 1 - rate))
    logger.info("doublet threshold fallback: %s", reason)
    return fallback, "expected_rate_fallback", reason
