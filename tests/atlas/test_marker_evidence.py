"""Marker-detection evidence on generated cells whose detection rates are known."""

import numpy as np
import scipy.sparse as sp

from sc_celltherapy.atlas._calibration import calibrate, fit_across_donors
from sc_celltherapy.atlas._calibration_error import expected_calibration_error
from sc_celltherapy.atlas._marker_evidence import (
    fit_marker_evidence,
    lot_marker_loglik,
    marker_loglik,
    out_of_fold_loglik,
    reference_depth,
)

GENES = ["MARK_A", "SEX_Y", "SHARED_1", "SHARED_2", "BULK"]
# per-UMI rates: MARK_A is label A's (about 99% detected at 2,000 UMIs, B never), SEX_Y is
# detected in donor "d1" whatever the label, SHARED_* alike in both labels, BULK takes the rest
RATE_A, RATE_SHARED, RATE_SEX = 2.5e-3, 4e-4, 2.5e-3


def generate(composition: dict, seed: int):
    """``composition``: cells per (donor, label); label 0 is A, 1 is B."""
    rng = np.random.default_rng(seed)
    rows, y, donor = [], [], []
    for (d, label), n in composition.items():
        depth = rng.integers(1000, 4000, n)
        counts = np.zeros((n, len(GENES)))
        counts[:, 0] = rng.poisson(depth * (RATE_A if label == 0 else 0.0))
        counts[:, 1] = rng.poisson(depth * (RATE_SEX if d == "d1" else 0.0))
        counts[:, 2] = rng.poisson(depth * RATE_SHARED)
        counts[:, 3] = rng.poisson(depth * RATE_SHARED)
        counts[:, 4] = depth - counts[:, :4].sum(axis=1)
        rows.append(counts)
        y += [label] * n
        donor += [d] * n
    return sp.csr_matrix(np.vstack(rows)), np.array(y), np.array(donor)


def balanced(donors: list[str], n: int = 150) -> dict:
    return {(d, label): n for d in donors for label in (0, 1)}


def test_the_marker_is_found_with_its_rate_and_a_donor_gene_is_left_out(monkeypatch):
    from sc_celltherapy.atlas import _marker_evidence

    # label A is almost all donor d1's (as CD4 CTL is one patient's in the CAR-T data), so
    # d1's own gene SEX_Y looks like A's marker across labels; within A, d1 and d2 disagree
    composition = {("d1", 0): 300, ("d2", 0): 20, ("d2", 1): 300, ("d3", 1): 300, ("d4", 1): 300}
    counts, y, donors = generate(composition, seed=0)
    depth = reference_depth(counts)
    evidence = fit_marker_evidence(counts, depth, y, donors, 2, GENES)
    assert evidence["genes"] == ["MARK_A"]  # SHARED_* separate nothing, SEX_Y only donors
    monkeypatch.setattr(_marker_evidence, "DONOR_SPREAD", 1.01)  # no donor check
    assert fit_marker_evidence(counts, depth, y, donors, 2, GENES)["genes"] == ["MARK_A", "SEX_Y"]
    monkeypatch.undo()
    # detection at the median depth, recovered within 0.02 (the 10 pooled pseudo-cells pull
    # each label's rate a little towards all cells')
    median = evidence["median_depth"]
    fitted = 1 - np.exp(-median * np.asarray(evidence["rates"])[:, 0])
    assert abs(fitted[0] - (1 - np.exp(-median * RATE_A))) < 0.02
    assert fitted[1] < 0.02  # label B never shows it
    assert np.isclose(sum(evidence["gene_share"]), 1.0, atol=1e-3)


def test_a_missed_detection_weighs_more_at_depth():
    counts, y, donors = generate(balanced(["d1", "d2", "d3"]), seed=1)
    evidence = fit_marker_evidence(counts, reference_depth(counts), y, donors, 2, GENES)
    none = np.zeros((2, 1))
    ll = marker_loglik(evidence, none, np.array([200.0, 4000.0]))
    against_a = ll[:, 0] - ll[:, 1]  # log-likelihood ratio A vs B of "not detected"
    rate = np.asarray(evidence["rates"])[0, 0]
    # at 200 UMIs A misses its marker with probability exp(-200 rate), about 0.6
    assert np.isclose(against_a[0], -200 * rate, atol=0.05)
    # at 4,000 UMIs a miss is as unlikely as the evidence bound allows (EPS = 0.02)
    assert np.isclose(against_a[1], np.log(0.02 / 0.98), atol=0.01)


def test_a_marker_the_lot_lacks_says_nothing():
    counts, y, donors = generate(balanced(["d1", "d2", "d3"]), seed=2)
    evidence = fit_marker_evidence(counts, reference_depth(counts), y, donors, 2, GENES)
    present = np.array([False, True, True, True, True])
    ll = lot_marker_loglik(evidence, counts[:10], present)
    assert ll.shape == (10, 2)
    assert np.all(ll == 0)
    # with the gene present the same cells carry evidence
    assert np.abs(lot_marker_loglik(evidence, counts[:10], np.ones(5, bool))).max() > 1


def test_stacking_repairs_a_model_blind_to_the_marker_on_a_new_donor():
    """The model tells A from B for most cells but, on every donor, calls a third of the A cells
    B with confidence (their state is B-like; only the marker gives them away). Stacked with
    the marker evidence, calibrated across donors and read on a donor left out of the fit, the
    calls are right and their probabilities honest."""
    donors_list = ["d1", "d2", "d3", "d4", "new"]
    counts, y, donors = generate(balanced(donors_list, 200), seed=3)
    rng = np.random.default_rng(4)
    probs = np.where(y[:, None] == np.arange(2), 0.85, 0.15)
    fooled = (y == 0) & (rng.random(y.size) < 1 / 3)
    probs[fooled] = [0.15, 0.85]
    new = donors == "new"
    folds = [donors == d for d in donors_list[:-1]]
    ll = out_of_fold_loglik(counts, y, donors, folds, 2, GENES)
    ref = ~new
    cal = fit_across_donors(probs[ref], y[ref], donors[ref], marker_loglik=ll[ref])
    assert cal["method"] == "marker-detection stacking"
    evidence = fit_marker_evidence(
        counts[ref], reference_depth(counts[ref]), y[ref], donors[ref], 2, GENES
    )
    lot_ll = lot_marker_loglik(evidence, counts[new], np.ones(len(GENES), bool))
    p = calibrate(probs[new], cal, marker_loglik=lot_ll)
    before = (probs[new].argmax(axis=1) == y[new]).mean()
    after = (p.argmax(axis=1) == y[new]).mean()
    assert before < 0.86
    assert after > 0.97
    assert expected_calibration_error(p, y[new]) < 0.03
