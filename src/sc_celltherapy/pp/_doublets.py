"""Doublet scores and calls, per sample, with a documented fallback threshold."""

from __future__ import annotations

import numpy as np
import scanpy as sc
import scipy.sparse as sp
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
# Scrublet's default number of principal components.
N_PCS = 30


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
    """Scrublet's observed and simulated doublet scores (threshold left to us).

    Scanpy's scrublet step for step (its preprocessing, simulated doublets, PCA and kNN score),
    except that the z-scored counts stay sparse. Scanpy centres them densely, with the
    simulated doublets (twice the lot), for its PCA: most of a large release's peak memory. The
    same PCA is fitted here on the sparse, variance-scaled counts, which scikit-learn's
    ``arpack`` solver centres implicitly, so the embedding is scanpy's up to rounding.
    """
    obs = AnnData(X=counts.copy())
    sc.pp.filter_genes(obs, min_cells=3)
    kept = sc.pp.filter_cells(obs, min_genes=3, inplace=False)[0]
    obs = obs[kept].copy()
    obs.layers["raw"] = obs.X.copy()
    sc.pp.normalize_total(obs)
    hvg = sc.pp.highly_variable_genes(AnnData(sc.pp.log1p(obs.X, copy=True)), inplace=False)
    obs = obs[:, hvg["highly_variable"].to_numpy()].copy()
    sim = sc.pp.scrublet_simulate_doublets(obs, layer="raw", random_seed=random_state)
    del obs.layers["raw"]
    for part in (obs, sim):
        sc.pp.log1p(part)
        sc.pp.normalize_total(part, target_sum=1e6)
    emb_obs, emb_sim = _pca_of_zscores(obs.X, sim.X, random_state)
    parents = sim.obsm["doublet_parents"]
    del obs, sim

    scores = np.full(counts.shape[0], np.nan)
    sub_obs, sub_sim = _padded(emb_obs), _padded(emb_sim)
    sub_sim.obsm["doublet_parents"] = parents
    verbosity = sc.settings.verbosity
    # threshold=inf: scanpy skips its own automatic call, which we make ourselves (and at inf
    # its detectable fraction is 0/0, hence the errstate).
    sc.settings.verbosity = 0
    try:
        with np.errstate(divide="ignore", invalid="ignore"):
            # centring and scaling off: scanpy's truncated SVD of our embedding is then a
            # rotation of it, so its kNN (and scores) are those of our PCA.
            sc.pp.scrublet(
                sub_obs,
                adata_sim=sub_sim,
                expected_doublet_rate=rate,
                threshold=np.inf,
                mean_center=False,
                normalize_variance=False,
                n_prin_comps=N_PCS,
                random_state=random_state,
                verbose=False,
                use_approx_neighbors=_approximate_knn(counts.shape[0]),
            )
    finally:
        sc.settings.verbosity = verbosity
    scores[kept] = sub_obs.obs["doublet_score"].to_numpy()
    return scores, np.asarray(sub_obs.uns["scrublet"]["doublet_scores_sim"])


def _pca_of_zscores(x_obs, x_sim, random_state: int) -> tuple[np.ndarray, np.ndarray]:
    """Scrublet's PCA of the gene z-scores (obs' means and sample deviations) of ``x_obs``,
    fitted on the lot and applied to the simulated doublets, without densifying either."""
    from sklearn.decomposition import PCA

    n = x_obs.shape[0]
    mean = np.asarray(x_obs.mean(axis=0)).ravel()
    var = (np.asarray(x_obs.multiply(x_obs).mean(axis=0)).ravel() - mean**2) * n / (n - 1)
    scale = sp.diags(1 / np.sqrt(var))
    x_obs, x_sim = sp.csr_matrix(x_obs @ scale), sp.csr_matrix(x_sim @ scale)
    # The centring the z-scores omit is the PCA's own: its mean is fitted on the lot and
    # subtracted from both, as scanpy subtracts the lot's gene means from both.
    pca = PCA(N_PCS, svd_solver="arpack", random_state=np.random.RandomState(random_state))
    return pca.fit(x_obs).transform(x_obs), pca.transform(x_sim)


def _padded(embedding: np.ndarray) -> AnnData:
    """The embedding and one zero column: scanpy's SVD needs more columns than components."""
    return AnnData(X=np.hstack([embedding, np.zeros((embedding.shape[0], 1))]))


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
