"""Calibrated label probabilities and conformal label sets, fitted and measured across donors.

A bundle's calibration is fitted on out-of-fold predictions: every reference cell predicted by
calibration models that never saw its donor (leave-batches-out cross-fitting). What the bundle
promises is measured one level further out, by nested donor cross-validation: for each donor,
the calibration is fitted on the other donors' predictions and its error measured on that donor
alone. A figure fitted and measured on the same donors says nothing about new ones.
"""

from __future__ import annotations

import numpy as np

from .._checks import InputError
from ._calibration_error import expected_calibration_error, reliability_bins, sampling_ece

# Calibration error per donor is only quoted for donors with at least this many labelled cells:
# the ECE of fewer cells is mostly binning noise (its expected value on perfectly calibrated
# probabilities is about 0.5 / sqrt(cells per bin)).
MIN_DONOR_CELLS = 50
ALPHA = 0.1  # conformal label sets cover the true label with probability >= 1 - ALPHA
# A label gets its own (class-conditional) threshold only with this many held-out cells: the
# coverage of a 90% quantile of fewer cells is off by more than about 4% (binomial sd at 50
# cells: 0.042), and on a benchmarks/label_sets.py run before the marker evidence such
# thresholds widened sets (4.46 labels vs 4.18 from 30 cells up) without covering a new donor
# better (worst 0.746 vs 0.745).
MIN_LABEL_CELLS = 50
RATIO_FLOOR = 1e-3  # latent outlier ratios are clipped here before their logarithm


def apply_temperature(probs: np.ndarray, temperature: float | np.ndarray) -> np.ndarray:
    """Softmax of the log-probabilities over ``temperature`` (a scalar, or cells x 1)."""
    return _softmax(np.log(np.clip(probs, 1e-12, 1)) / temperature)


def _softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits - logits.max(axis=1, keepdims=True)
    out = np.exp(logits)
    return out / out.sum(axis=1, keepdims=True)


def _nll(p: np.ndarray, y: np.ndarray, w: np.ndarray | None = None) -> float:
    return -float(np.average(np.log(np.clip(p[np.arange(y.size), y], 1e-12, 1)), weights=w))


def donor_weights(donors: np.ndarray) -> np.ndarray:
    """Weights that give every donor the same total: a new donor is one draw from the donors,
    so one donor with half the cells must not set the calibration for all."""
    _, inverse, counts = np.unique(donors, return_inverse=True, return_counts=True)
    return 1.0 / counts[inverse]


def _fit_temperature(probs: np.ndarray, y: np.ndarray, w=None, **_) -> dict:
    from scipy.optimize import minimize_scalar

    res = minimize_scalar(
        lambda log_t: _nll(apply_temperature(probs, float(np.exp(log_t))), y, w),
        bounds=(np.log(0.05), np.log(20)),
        method="bounded",
    )
    return {"temperature": float(np.exp(res.x))}


def _vector_logits(probs: np.ndarray, weights: np.ndarray, bias: np.ndarray) -> np.ndarray:
    return np.log(np.clip(probs, 1e-12, 1)) * weights + bias


def _fit_vector(probs: np.ndarray, y: np.ndarray, w=None, **_) -> dict:
    """Vector scaling (Guo et al. 2017): a weight and a bias per class on the log-probabilities,
    L2-shrunk towards plain temperature scaling so that a class with few calibration cells
    stays near the common temperature."""
    from scipy.optimize import minimize

    k = probs.shape[1]
    w = np.ones(y.size) if w is None else np.asarray(w, dtype=float)
    w = w / w.sum()
    t0 = _fit_temperature(probs, y, w)["temperature"]
    onehot = np.eye(k)[y]
    shrink = 1.0 / max(y.size, 1) * 10
    logp = np.log(np.clip(probs, 1e-12, 1))

    def loss(theta):
        scale, b = theta[:k], theta[k:]
        p = _softmax(_vector_logits(probs, scale, b))
        value = _nll(p, y, w) + shrink * (np.sum((scale - 1 / t0) ** 2) + np.sum(b**2))
        resid = (p - onehot) * w[:, None]  # d nll / d logits
        grad_w = (resid * logp).sum(axis=0) + 2 * shrink * (scale - 1 / t0)
        grad_b = resid.sum(axis=0) + 2 * shrink * b
        return value, np.concatenate([grad_w, grad_b])

    theta0 = np.concatenate([np.full(k, 1 / t0), np.zeros(k)])
    res = minimize(loss, theta0, jac=True, method="L-BFGS-B")
    return {"weights": res.x[:k].tolist(), "bias": res.x[k:].tolist()}


def distance_temperatures(params: dict, latent_ratio: np.ndarray) -> np.ndarray:
    """Each cell's temperature ``exp(log_t0) * ratio ** slope``: one temperature for cells as
    close to the reference as its own cells are (ratio 1), growing with the distance."""
    ratio = np.clip(np.asarray(latent_ratio, dtype=float), RATIO_FLOOR, None)
    return np.exp(params["log_t0"] + params["slope"] * np.log(ratio))


def _fit_distance_temperature(probs, y, w=None, latent_ratio=None, **_) -> dict:
    """Distance-aware temperature scaling: the further a cell lies from the reference's cells
    in the latent space (its local outlier ratio, the out-of-reference evidence), the flatter
    its probabilities. A donor unlike the reference donors shows as cells between or beside
    the reference's states, and those are the cells a model calls wrongly with confidence; one
    temperature fitted across donors instead flattens every cell alike (under-confident on a
    donor like the reference, still over-confident on an unusual one). The slope is kept
    >= 0: distance never sharpens a call."""
    from scipy.optimize import minimize

    logp = np.log(np.clip(probs, 1e-12, 1))

    def nll(theta):
        t = distance_temperatures({"log_t0": theta[0], "slope": theta[1]}, latent_ratio)
        return _nll(_softmax(logp / t[:, None]), y, w)

    t0 = np.log(_fit_temperature(probs, y, w)["temperature"])
    res = minimize(nll, [t0, 0.0], method="L-BFGS-B", bounds=[(np.log(0.05), np.log(20)), (0, 20)])
    return {"log_t0": float(res.x[0]), "slope": float(res.x[1])}


def _fit_none(probs: np.ndarray, y: np.ndarray, w=None, **_) -> dict:
    """The ensemble's own probabilities: kept when no scaling does better on held-out donors
    (a temperature fitted on some donors can spoil a well-calibrated new one)."""
    return {}


def _stacked_logits(probs, marker_loglik, params: dict, latent_ratio=None) -> np.ndarray:
    logp = np.log(np.clip(probs, 1e-12, 1))
    slope = params.get("distance_slope", 0.0)
    weight = np.full(logp.shape[0], params["model_weight"])
    if slope:
        if latent_ratio is None:
            msg = "Distance-aware marker stacking needs each cell's latent_ratio; none was given."
            raise InputError(msg)
        weight = weight / distance_temperatures({"log_t0": 0.0, "slope": slope}, latent_ratio)
    return weight[:, None] * logp + params["marker_weight"] * marker_loglik


def _fit_marker_stacking(probs, y, w=None, marker_loglik=None, **_) -> dict:
    """Stacking of the model's log-probabilities with the marker-detection log-likelihoods
    (:mod:`._marker_evidence`): ``softmax(a log p + b L)``, ``a, b >= 0`` fitted by donor-
    weighted NLL. ``a`` acts as an inverse temperature; ``b`` says how far the detection of
    the reference's marker genes is to be trusted beside the model (0: not at all)."""
    return _fit_stacking(probs, y, w, marker_loglik, None)


def _fit_distance_marker_stacking(probs, y, w=None, marker_loglik=None, latent_ratio=None, **_):
    """The stacking with the model's part flattened for cells far from the reference:
    ``softmax(a r ** -s log p + b L)``, ``r`` the cell's latent local outlier ratio and
    ``s >= 0``, as in distance-aware temperature scaling. One new patient is called better than
    the reference donors are, another worse, and the worse-called cells lie further out. On
    benchmarks/label_sets.py, with it among the candidates, the mean new-donor ECE fell from
    0.062 to 0.054; on the 50-epoch T-cell bundle of the tests nested validation prefers the
    plain stacking, which is why both are candidates."""
    return _fit_stacking(probs, y, w, marker_loglik, latent_ratio)


def _fit_stacking(probs, y, w, marker_loglik, latent_ratio) -> dict:
    from scipy.optimize import minimize

    def nll(theta):
        params = {"model_weight": theta[0], "marker_weight": theta[1], "distance_slope": theta[2]}
        return _nll(_softmax(_stacked_logits(probs, marker_loglik, params, latent_ratio)), y, w)

    t0 = _fit_temperature(probs, y, w)["temperature"]
    slope = (0, 0) if latent_ratio is None else (0, 10)
    res = minimize(nll, [1 / t0, 0.0, 0.0], method="L-BFGS-B", bounds=[(0, 20), (0, 5), slope])
    out = {"model_weight": float(res.x[0]), "marker_weight": float(res.x[1])}
    return out if latent_ratio is None else out | {"distance_slope": float(res.x[2])}


FITTERS = {
    "none": _fit_none,
    "temperature scaling": _fit_temperature,
    "vector scaling": _fit_vector,
    "distance-aware temperature scaling": _fit_distance_temperature,
    "marker-detection stacking": _fit_marker_stacking,
    "distance-aware marker stacking": _fit_distance_marker_stacking,
}
# methods that need each cell's latent local outlier ratio or marker-detection evidence
# (fitted and applied alike)
NEEDS_DISTANCE = {"distance-aware temperature scaling", "distance-aware marker stacking"}
NEEDS_MARKERS = {"marker-detection stacking", "distance-aware marker stacking"}


def reads_markers(calibration: dict) -> bool:
    """Whether a bundle's calibration reads the lot's detection of the bundle's marker genes
    (one of the marker stackings).

    Parameters
    ----------
    calibration
        The bundle's ``manifest["calibration"]``.
    """
    return calibration["method"] in NEEDS_MARKERS


def calibrate(
    probs: np.ndarray, calibration: dict, *, latent_ratio=None, marker_loglik=None
) -> np.ndarray:
    """Apply a bundle's fitted calibration to label probabilities.

    Parameters
    ----------
    probs
        Cells x labels, columns in the order of the bundle's labels.
    calibration
        The bundle's ``manifest["calibration"]``.
    latent_ratio
        Each cell's latent local outlier ratio (``obs["sct_ref_oor_latent"]``); needed by
        the distance-aware methods, ignored by the others.
    marker_loglik
        Each cell's marker-detection log-likelihood per label (cells x labels, from the
        bundle's ``marker_evidence``); needed by the marker stackings.

    Returns
    -------
    The calibrated probabilities (rows sum to 1).
    """
    method, params = calibration["method"], calibration["params"]
    if method == "none":
        return np.asarray(probs, dtype=np.float64)
    if method == "temperature scaling":
        return apply_temperature(probs, params["temperature"])
    if method == "vector scaling":
        w, b = np.asarray(params["weights"]), np.asarray(params["bias"])
        return _softmax(_vector_logits(probs, w, b))
    if method == "distance-aware temperature scaling":
        if latent_ratio is None:
            msg = "Distance-aware calibration needs each cell's latent_ratio; none was given."
            raise InputError(msg)
        return apply_temperature(probs, distance_temperatures(params, latent_ratio)[:, None])
    if method in NEEDS_MARKERS:
        if marker_loglik is None:
            msg = "Marker-detection stacking needs each cell's marker_loglik; none was given."
            raise InputError(msg)
        return _softmax(_stacked_logits(probs, np.asarray(marker_loglik), params, latent_ratio))
    msg = f"Unknown calibration method {method!r} in the bundle; rebuild it with this version."
    raise InputError(msg)


def nonconformity(probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """One minus the calibrated probability of the true label (Sadinle et al. 2019's least
    ambiguous sets: the smallest sets on average for their coverage, and a confident cell keeps
    a single label; adaptive prediction sets grew to most labels for every cell as soon as a
    tenth of the held-out cells were confidently wrong)."""
    return 1 - probs[np.arange(y.size), y]


def conformal_quantile(scores: np.ndarray, alpha: float) -> float:
    """The ``ceil((n + 1)(1 - alpha))``-th smallest score (the largest when n is too small)."""
    s = np.sort(np.asarray(scores, dtype=float))
    if s.size == 0:
        msg = "No held-out cell to fit the conformal label sets on."
        raise InputError(msg)
    k = min(int(np.ceil((s.size + 1) * (1 - alpha))), s.size)
    return float(s[k - 1])


def prediction_sets(probs: np.ndarray, conformal: dict) -> np.ndarray:
    """Conformal label sets: label ``j`` is in a cell's set when its calibrated probability is
    at least ``1 - max(qhat, qhat_per_label[j])`` (the union of the donor-quantile sets and the
    class-conditional ones; bundles without ``qhat_per_label`` use ``qhat`` alone).

    Parameters
    ----------
    probs
        Calibrated probabilities, cells x labels.
    conformal
        The thresholds: the bundle's ``manifest["calibration"]["conformal"]`` (or its
        ``["coarse"]`` for coarse probabilities).

    Returns
    -------
    Boolean cells x labels; never an empty row (the top label is always in the set).
    """
    qhat = np.full(probs.shape[1], conformal["qhat"], dtype=float)
    if conformal.get("qhat_per_label") is not None:
        qhat = np.maximum(qhat, np.asarray(conformal["qhat_per_label"], dtype=float))
    sets = probs >= 1 - qhat[None, :] - 1e-12
    sets[np.arange(probs.shape[0]), probs.argmax(axis=1)] = True
    return sets


def donor_quantile(scores: np.ndarray, donors: np.ndarray, alpha: float) -> float:
    """A label-set threshold that holds per donor, not only over pooled cells.

    Each donor's own conformal ``1 - alpha`` quantile of its cells' scores, then the
    ``ceil((D + 1)(1 - alpha))``-th smallest of those ``D`` quantiles: the largest when there
    are fewer than ``2 / alpha - 1`` donors (19 at alpha 0.1). If donors are exchangeable, a new
    donor's sets then cover at least ``1 - alpha`` of its cells with probability at least
    ``1 - alpha``. Pooling the cells instead lets the donors the model fits best hide the ones it
    does not.
    """
    per_donor = [conformal_quantile(scores[donors == d], alpha) for d in np.unique(donors)]
    return conformal_quantile(np.array(per_donor), alpha)


def label_quantiles(scores: np.ndarray, y: np.ndarray, n_labels: int, alpha: float) -> list:
    """Class-conditional (Mondrian) thresholds: each label's own conformal ``1 - alpha``
    quantile of the scores of its held-out cells, so that a new donor's cells of that label
    are covered at ``1 - alpha`` whatever the donor's mix of labels (a guarantee that holds
    under label shift: a donor whose cells are a third of a label that is 1% of the
    reference). A label with fewer than :data:`MIN_LABEL_CELLS` held-out cells gets ``None``:
    it is then covered by the per-donor threshold alone, recorded as such."""
    out: list = []
    for j in range(n_labels):
        s = scores[y == j]
        out.append(conformal_quantile(s, alpha) if s.size >= MIN_LABEL_CELLS else None)
    return out


def _label_thresholds(scores, y, donors, n_labels: int, alpha: float) -> dict:
    qhat = donor_quantile(scores, donors, alpha)
    per_label = label_quantiles(scores, y, n_labels, alpha)
    return {
        "qhat": qhat,
        "qhat_per_label": [qhat if q is None else q for q in per_label],
        "labels_without_own_threshold": [j for j, q in enumerate(per_label) if q is None],
    }


def coarse_probs(probs: np.ndarray, groups: list) -> tuple[np.ndarray, list[str]]:
    """Probabilities summed over the fine labels of each coarse label.

    Parameters
    ----------
    probs
        Cells x fine labels.
    groups
        ``groups[j]``: the coarse label of column ``j``.

    Returns
    -------
    The coarse probabilities and the coarse labels in their column order (sorted).
    """
    names = sorted(set(groups))
    index = np.array([names.index(g) for g in groups])
    out = np.zeros((probs.shape[0], len(names)))
    np.add.at(out.T, index, probs.T)
    return out, names


def fit_across_donors(
    probs: np.ndarray,
    y: np.ndarray,
    donors: np.ndarray,
    *,
    alpha: float = ALPHA,
    groups: list | None = None,
    latent_ratio: np.ndarray | None = None,
    marker_loglik: np.ndarray | None = None,
) -> dict:
    """Choose, fit and measure the calibration and the conformal label sets.

    ``probs`` are out-of-fold predictions (each cell predicted by models that never saw its
    donor), ``y`` the true label's column, ``donors`` each cell's donor (batch). Every donor
    weighs the same in every fit (:func:`donor_weights`). Each method of :data:`FITTERS` is
    scored by nested donor cross-validation (fitted on the other donors, negative
    log-likelihood on the held donor, averaged over donors); the best is refitted on all cells.
    The label sets' thresholds are :func:`donor_quantile` of the scores of cells calibrated
    without their own donor, united with each label's own quantile (:func:`label_quantiles`).
    Per donor the stored ECE, coverage and set size come from a calibration and thresholds
    fitted without that donor, beside the ECE perfect calibration reaches by chance on that
    donor's cells (:func:`sampling_ece`); with ``groups`` (each column's coarse label), also
    the ECE of the summed coarse probabilities. With ``latent_ratio`` (each cell's out-of-fold
    latent local outlier ratio) distance-aware temperature scaling is among the candidates,
    and with ``marker_loglik`` (each cell's out-of-fold marker-detection log-likelihoods,
    cells x labels) marker-detection stacking.
    """
    donors = np.asarray(donors).astype(str)
    names = np.unique(donors)
    if names.size < 2:
        msg = "Cross-donor calibration needs predictions of at least two donors (or folds)."
        raise InputError(msg)
    weights = donor_weights(donors)
    covariates = {
        "latent_ratio": None if latent_ratio is None else np.asarray(latent_ratio, dtype=float),
        "marker_loglik": None if marker_loglik is None else np.asarray(marker_loglik, float),
    }
    fitters = {
        m: f
        for m, f in FITTERS.items()
        if (covariates["latent_ratio"] is not None or m not in NEEDS_DISTANCE)
        and (covariates["marker_loglik"] is not None or m not in NEEDS_MARKERS)
    }
    nested = {m: np.empty_like(probs) for m in fitters}
    for d in names:
        out = donors == d
        inside = {k: None if v is None else v[~out] for k, v in covariates.items()}
        outside = {k: None if v is None else v[out] for k, v in covariates.items()}
        for method, fitter in fitters.items():
            params = fitter(probs[~out], y[~out], weights[~out], **inside)
            nested[method][out] = calibrate(
                probs[out], {"method": method, "params": params}, **outside
            )
    nll = {m: _nll(p, y, weights) for m, p in nested.items()}
    method = min(nll, key=nll.get)
    held = nested[method]  # every cell calibrated without its own donor
    per_donor = {
        d: {
            "n_cells": int((donors == d).sum()),
            "ece": expected_calibration_error(held[donors == d], y[donors == d]),
            # the ECE perfect calibration would reach by chance on this donor's cells
            "ece_chance_95": sampling_ece(held[donors == d]),
            "ece_uncalibrated": expected_calibration_error(probs[donors == d], y[donors == d]),
            "accuracy": float(np.mean(held[donors == d].argmax(axis=1) == y[donors == d])),
            "reliability": reliability_bins(held[donors == d], y[donors == d]),
        }
        for d in names
    }
    conformal = _label_sets(held, y, donors, alpha)
    for d, r in conformal.pop("per_donor").items():
        per_donor[d] |= r
    if groups is not None and None not in groups:
        coarse, coarse_names = coarse_probs(held, groups)
        yc = np.array([coarse_names.index(groups[j]) for j in y])
        coarse_sets = _label_sets(coarse, yc, donors, alpha)
        for d, r in coarse_sets.pop("per_donor").items():
            per_donor[d] |= {f"{k}_coarse": v for k, v in r.items()}
            per_donor[d]["ece_coarse"] = expected_calibration_error(
                coarse[donors == d], yc[donors == d]
            )
        conformal["coarse"] = coarse_sets
    quoted = {d: r for d, r in per_donor.items() if r["n_cells"] >= MIN_DONOR_CELLS} or per_donor
    conformal |= {
        "coverage_worst_donor": float(min(r["coverage"] for r in quoted.values())),
        "coverage_mean_donor": float(np.mean([r["coverage"] for r in quoted.values()])),
        "mean_set_size": float(np.mean([r["mean_set_size"] for r in quoted.values()])),
    }
    return {
        "method": method,
        "params": fitters[method](probs, y, weights, **covariates),
        "donor_weighting": "equal (each donor's cells weigh 1 / its cell count)",
        "nested_nll": nll,
        "ece_uncalibrated": expected_calibration_error(probs, y),
        "ece_pooled": expected_calibration_error(held, y),
        "ece_mean_donor": float(np.mean([r["ece"] for r in quoted.values()])),
        "ece_worst_donor": float(max(r["ece"] for r in quoted.values())),
        "worst_donor": max(quoted, key=lambda d: quoted[d]["ece"]),
        "min_donor_cells_quoted": MIN_DONOR_CELLS,
        "per_donor": per_donor,
        "n_cells": int(y.size),
        "conformal": {
            "method": "least ambiguous sets (labels with probability >= 1 - qhat), the union "
            "of per-donor quantiles and class-conditional (Mondrian) quantiles",
            "alpha": alpha,
            **conformal,
        },
    }


def _label_sets(held: np.ndarray, y: np.ndarray, donors: np.ndarray, alpha: float) -> dict:
    """The label sets' threshold from cells calibrated without their donor, and per donor the
    coverage and size of sets whose threshold was fitted without that donor."""
    scores = nonconformity(held, y)
    n_labels = held.shape[1]
    per_donor = {}
    for d in np.unique(donors):
        out = donors == d
        thresholds = _label_thresholds(scores[~out], y[~out], donors[~out], n_labels, alpha)
        sets = prediction_sets(held[out], thresholds)
        per_donor[d] = {
            "coverage": float(np.mean(sets[np.arange(out.sum()), y[out]])),
            "mean_set_size": float(sets.sum(axis=1).mean()),
        }
    return _label_thresholds(scores, y, donors, n_labels, alpha) | {"per_donor": per_donor}
