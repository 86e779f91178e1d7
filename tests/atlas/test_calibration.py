"""Cross-donor calibration and conformal label sets, on a generator with known truth."""

from __future__ import annotations

import numpy as np
import pytest

from sc_celltherapy._checks import InputError
from sc_celltherapy.atlas._calibration import (
    _fit_temperature,
    apply_temperature,
    calibrate,
    fit_across_donors,
    prediction_sets,
)
from sc_celltherapy.atlas._calibration_error import (
    expected_calibration_error,
    reliability_bins,
    sampling_ece,
)

K = 6


def donor_predictions(rng, n: int, sharpen: float):
    """A donor's cells: true label probabilities (Dirichlet), labels drawn from them, and a
    model's reported probabilities sharpened by ``sharpen`` (1: calibrated; 2: over-confident,
    as a model is on a donor whose shift it never saw)."""
    true_p = rng.dirichlet(np.full(K, 0.6), n)
    y = (true_p.cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)
    return apply_temperature(true_p, 1 / sharpen), y


def test_cross_donor_calibration_holds_on_a_new_donor_where_one_group_does_not():
    """Known truth: donors differ in how over-confident the model is on them. A temperature
    fitted on one held-out donor that happens to be well calibrated leaves a new, typical donor
    over-confident; the calibration fitted across donors (every donor's out-of-fold cells) does
    not, and the error it promises for new donors (its worst held-out donor) is honest."""
    rng = np.random.default_rng(0)
    sharpen = [1.0, 2.2, 1.8, 2.0, 2.5, 1.9]  # donor 0 is the odd one, well calibrated
    donors = [donor_predictions(rng, 800, s) for s in sharpen]
    new_p, new_y = donor_predictions(rng, 4000, 2.1)  # a new donor, typical of the others

    one_group = _fit_temperature(*donors[0])
    one_group_ece = expected_calibration_error(apply_temperature(new_p, **one_group), new_y)

    probs = np.concatenate([p for p, _ in donors])
    y = np.concatenate([y for _, y in donors])
    names = np.repeat([f"d{i}" for i in range(len(donors))], [p.shape[0] for p, _ in donors])
    cal = fit_across_donors(probs, y, names)
    new_ece = expected_calibration_error(calibrate(new_p, cal), new_y)

    assert expected_calibration_error(new_p, new_y) > 0.15  # uncalibrated: over-confident
    assert one_group["temperature"] == pytest.approx(1.0, abs=0.1)
    assert one_group_ece > 0.15
    assert new_ece < 0.04
    # the promise is measured on donors left out of the fit: the odd donor is the worst one
    assert cal["worst_donor"] == "d0" and cal["ece_worst_donor"] > 0.1
    assert cal["ece_mean_donor"] < cal["ece_worst_donor"]
    assert set(cal["per_donor"]) == {f"d{i}" for i in range(6)}
    # the reliability diagram the report draws is made of the ECE's own terms
    for r in cal["per_donor"].values():
        bins = r["reliability"]
        n = np.asarray(bins["n_cells"])
        gap = np.abs(np.asarray(bins["confidence"]) - np.asarray(bins["accuracy"]))
        assert n.sum() == r["n_cells"]
        assert float((n * gap).sum() / n.sum()) == pytest.approx(r["ece"], abs=1e-12)

    # before calibration the odd donor's diagram lies near the diagonal, an over-confident
    # donor's below it
    def weighted_gap(bins):
        n = np.asarray(bins["n_cells"])
        return float((n * (np.asarray(bins["confidence"]) - bins["accuracy"])).sum() / n.sum())

    assert abs(weighted_gap(reliability_bins(*donors[0]))) < 0.03
    assert weighted_gap(reliability_bins(*donors[4])) > 0.15


def test_the_chance_level_of_the_ece_separates_sampling_noise_from_miscalibration():
    """Known truth: perfectly calibrated probabilities of 137 cells (P06's count) still show an
    ECE of several points; the chance level holds it 95% of the time, and over-confident
    probabilities of the same cells exceed it nearly always. It shrinks with the cell count."""
    rng = np.random.default_rng(3)
    draws = [donor_predictions(rng, 137, 1.0) for _ in range(200)]
    chance = [sampling_ece(p) for p, _ in draws]
    ece = [expected_calibration_error(p, y) for p, y in draws]
    within = np.mean(np.array(ece) <= np.array(chance))
    assert 0.91 <= within <= 0.99  # 0.95 within its binomial 99% interval at 200 repeats
    assert 0.12 < np.median(chance) < 0.16  # measured 0.138: far above the 0.05 target
    sharp = [donor_predictions(rng, 137, 2.0) for _ in range(200)]
    assert np.mean([expected_calibration_error(p, y) > sampling_ece(p) for p, y in sharp]) > 0.93
    big, _ = donor_predictions(rng, 5000, 1.0)
    assert sampling_ece(big) < np.median(chance) / 4  # about 1 / sqrt(cells)
    assert sampling_ece(big) == sampling_ece(big)  # a fixed seed: deterministic
    # each donor of a cross-donor fit carries its chance level beside its ECE
    probs = np.concatenate([p for p, _ in draws[:4]])
    y = np.concatenate([y for _, y in draws[:4]])
    cal = fit_across_donors(probs, y, np.repeat(["a", "b", "c", "d"], 137))
    for r in cal["per_donor"].values():  # these donors are calibrated: within chance
        assert 0.05 < r["ece"] <= r["ece_chance_95"] < 0.2


def test_label_sets_cover_new_donors_at_their_level():
    """Conformal label sets fitted on held-out donors cover the true label of a new donor's
    cells at 1 - alpha: within the binomial 99% interval of 90% over 5,000 cells, with sets
    smaller than all labels."""
    rng = np.random.default_rng(1)
    donors = [donor_predictions(rng, 600, s) for s in (1.8, 2.0, 2.2, 1.9, 2.1)]
    probs = np.concatenate([p for p, _ in donors])
    y = np.concatenate([y for _, y in donors])
    names = np.repeat([f"d{i}" for i in range(5)], 600)
    cal = fit_across_donors(probs, y, names, alpha=0.1)
    new_p, new_y = donor_predictions(rng, 5000, 2.0)
    sets = prediction_sets(calibrate(new_p, cal), cal["conformal"])
    coverage = sets[np.arange(new_y.size), new_y].mean()
    half_width = 2.576 * np.sqrt(0.9 * 0.1 / new_y.size)  # ~0.011
    assert 0.9 - half_width <= coverage <= 0.9 + half_width + 0.02
    assert 1 < sets.sum(axis=1).mean() < K - 1
    assert sets.any(axis=1).all()
    # per held-out donor (fitted without it), coverage at the level too
    assert min(r["coverage"] for r in cal["per_donor"].values()) > 0.86
    assert cal["conformal"]["coverage_worst_donor"] == min(
        r["coverage"] for r in cal["per_donor"].values()
    )


def shifted_donor(rng, n: int, rare_share: float):
    """Cells whose label 0 the model confuses with label 1 (it calls them label 1 with high
    confidence, as a CAR-T reference calls CD4 CTL cells DN TEM), at ``rare_share`` of the
    donor's cells; the other labels are told apart well."""
    prior = np.r_[rare_share, np.full(K - 1, (1 - rare_share) / (K - 1))]
    y = rng.choice(K, size=n, p=prior)
    logits = rng.normal(size=(n, K))
    logits[np.arange(n), y] += 2.5
    logits[y == 0, 1] += 3.0
    probs = np.exp(logits)
    return probs / probs.sum(axis=1, keepdims=True), y


def test_class_conditional_sets_cover_a_donor_made_of_a_rare_confused_label():
    """Known truth, label shift: in the reference's donors label 0 is 2% of cells and mostly
    called label 1; a new donor is 35% label 0. Sets from one threshold over all held-out cells
    leave most of that donor's label-0 cells out; the class-conditional (Mondrian) thresholds
    the bundle unites with them cover the new donor at 1 - alpha."""
    rng = np.random.default_rng(2)
    donors = [shifted_donor(rng, 1500, 0.02) for _ in range(5)]
    probs = np.concatenate([p for p, _ in donors])
    y = np.concatenate([y for _, y in donors])
    names = np.repeat([f"d{i}" for i in range(5)], 1500)
    cal = fit_across_donors(probs, y, names, alpha=0.1)
    conformal = cal["conformal"]
    assert conformal["labels_without_own_threshold"] == []  # ~30 held-out cells of label 0
    new_p, new_y = shifted_donor(rng, 5000, 0.35)
    new_p = calibrate(new_p, cal)

    def coverage(sets):
        return sets[np.arange(new_y.size), new_y].mean()

    one_threshold = prediction_sets(new_p, {"qhat": conformal["qhat"]})
    union = prediction_sets(new_p, conformal)
    half_width = 2.576 * np.sqrt(0.9 * 0.1 / new_y.size)
    assert coverage(one_threshold) < 0.75  # measured 0.72 (the union: 0.93)
    assert coverage(union) >= 0.9 - half_width
    # label 0's own threshold is what widens the sets: label 1 is not added to every cell
    assert conformal["qhat_per_label"][0] > conformal["qhat"]
    assert union.sum(axis=1).mean() < 3


def test_one_donor_is_refused():
    probs = np.full((10, 3), 1 / 3)
    with pytest.raises(Exception, match="at least two donors"):
        fit_across_donors(probs, np.zeros(10, int), np.array(["a"] * 10))


def distant_donor(rng, n: int, log_ratio_mean: float):
    """A donor whose cells lie at latent outlier ratios r around ``exp(log_ratio_mean)``; the
    model's over-confidence grows with the distance (probabilities sharpened by ``r ** 1.5``:
    calibrated at r = 1, as cells like the reference's are)."""
    ratio = np.exp(rng.normal(log_ratio_mean, 0.2, n))
    true_p = rng.dirichlet(np.full(K, 0.6), n)
    y = (true_p.cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)
    sharp = ratio**1.5
    reported = np.exp(np.log(true_p) * sharp[:, None])
    return reported / reported.sum(axis=1, keepdims=True), y, ratio


def test_distance_aware_temperature_holds_on_a_donor_far_from_the_reference():
    """Known truth: the model is over-confident in proportion to how far a cell lies from the
    reference. The reference donors are mostly near it; a new donor lies further out. One
    temperature fitted across donors is then a compromise (too flat near, too sharp far) and
    leaves the new donor over-confident; the distance-aware temperature is chosen by nested
    donor cross-validation, recovers the generator's law (T = r ** 1.5) and calibrates it."""
    rng = np.random.default_rng(1)
    donors = [distant_donor(rng, 600, m) for m in (0.0, 0.05, 0.1, 0.15, 0.2)]
    probs = np.concatenate([d[0] for d in donors])
    y = np.concatenate([d[1] for d in donors])
    ratio = np.concatenate([d[2] for d in donors])
    names = np.repeat([f"d{i}" for i in range(len(donors))], 600)
    new_p, new_y, new_ratio = distant_donor(rng, 4000, 0.6)

    with_distance = fit_across_donors(probs, y, names, latent_ratio=ratio)
    without = fit_across_donors(probs, y, names)

    assert with_distance["method"] == "distance-aware temperature scaling"
    assert with_distance["params"]["slope"] == pytest.approx(1.5, abs=0.2)
    assert with_distance["params"]["log_t0"] == pytest.approx(0.0, abs=0.1)
    assert without["method"] == "temperature scaling"
    one_t = expected_calibration_error(calibrate(new_p, without), new_y)
    aware = expected_calibration_error(
        calibrate(new_p, with_distance, latent_ratio=new_ratio), new_y
    )
    assert one_t > 0.15
    assert aware < 0.03
    with pytest.raises(InputError, match="latent_ratio"):
        calibrate(new_p, with_distance)


def with_marker(rng, donor):
    """A marker gene detected independently of the model's evidence, with a known rate per
    label; returns the donor and each cell's marker log-likelihood per label."""
    probs, y, ratio = donor
    rate = np.linspace(0.05, 0.95, K)
    detected = rng.random(y.size) < rate[y]
    loglik = np.where(detected[:, None], np.log(rate), np.log1p(-rate))
    return probs, y, ratio, loglik


def test_distance_aware_marker_stacking_flattens_the_model_for_cells_far_from_the_reference():
    """Known truth: the model is over-confident in proportion to a cell's distance (probabilities
    sharpened by ``r ** 1.5``), and a marker's detection carries evidence the model lacks. The
    true posterior is then ``softmax(r ** -1.5 log p + L)``: nested donor validation chooses the
    distance-aware stacking, which recovers that law and calibrates a donor far from the
    reference; the stacking without the distance leaves it over-confident."""
    rng = np.random.default_rng(3)
    donors = [with_marker(rng, distant_donor(rng, 1000, m)) for m in (0.0, 0.1, 0.2, 0.3, 0.4)]
    probs, y, ratio, loglik = (np.concatenate([d[i] for d in donors]) for i in range(4))
    names = np.repeat([f"d{i}" for i in range(len(donors))], 1000)
    new_p, new_y, new_ratio, new_loglik = with_marker(rng, distant_donor(rng, 4000, 0.6))

    cal = fit_across_donors(probs, y, names, latent_ratio=ratio, marker_loglik=loglik)
    assert cal["method"] == "distance-aware marker stacking"
    nested = cal["nested_nll"]
    assert nested["distance-aware marker stacking"] < nested["marker-detection stacking"]
    assert cal["params"]["model_weight"] == pytest.approx(1.0, abs=0.1)
    assert cal["params"]["marker_weight"] == pytest.approx(1.0, abs=0.1)
    assert cal["params"]["distance_slope"] == pytest.approx(1.5, abs=0.1)
    calibrated = calibrate(new_p, cal, latent_ratio=new_ratio, marker_loglik=new_loglik)
    assert expected_calibration_error(calibrated, new_y) < 0.025  # measured 0.020

    without = fit_across_donors(probs, y, names, marker_loglik=loglik)
    assert without["method"] == "marker-detection stacking"
    assert "distance_slope" not in without["params"]
    flat = calibrate(new_p, without, marker_loglik=new_loglik)
    assert expected_calibration_error(flat, new_y) > 0.1  # measured 0.109
    with pytest.raises(InputError, match="latent_ratio"):
        calibrate(new_p, cal, marker_loglik=new_loglik)
