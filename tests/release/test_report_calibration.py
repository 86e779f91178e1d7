"""The report's calibration rows say what the chosen calibration reads, and how large an
error chance alone gives on the worst donor's cells."""

from __future__ import annotations

from sc_celltherapy.release._report import _reliability_rows


def _calibration(method: str, weights: dict) -> dict:
    return {
        "across_donors": True,
        "method": method,
        "ece_worst_donor": 0.071,
        "worst_donor": "P02",
        "ece_mean_donor": 0.058,
        "per_donor": {"P02": {"n_cells": 1574, "ece": 0.071, "ece_chance_95": 0.032}},
        "marker_evidence": {"genes": ["CD8A", "CD4"] if weights else [], "weights": weights},
        "label_sets": {
            "method": "lac",
            "alpha": 0.1,
            "coverage_worst_donor": 0.914,
            "mean_set_size": 2.45,
        },
        "out_of_reference": {"threshold": 1.4, "fpr_bound": 0.01, "n_held_out_cells": 3000},
    }


def test_calibration_row_names_the_stacking_weights_and_the_distance_slope():
    distance = _calibration(
        "distance-aware marker stacking",
        {"model_weight": 0.76, "marker_weight": 1.25, "distance_slope": 2.26},
    )
    plain = _calibration("marker-detection stacking", {"model_weight": 0.9, "marker_weight": 1.3})
    vector = _calibration("vector scaling", {})
    row = dict(_reliability_rows(distance))
    text = row["reference calibration error (per donor held out of model and calibration)"]
    assert text == (
        "worst donor 0.071 (P02; perfect calibration reaches up to 0.032 by chance on its 1,574 "
        "cells), mean 0.058; distance-aware marker stacking (model "
        "log-probabilities x 0.76 / latent outlier ratio ^ 2.26 + detection of CD8A, CD4 x 1.25)"
    )
    plain_text = dict(_reliability_rows(plain))[
        "reference calibration error (per donor held out of model and calibration)"
    ]
    assert plain_text.endswith(
        "marker-detection stacking (model log-probabilities x 0.90 + detection of CD8A, CD4 x 1.30)"
    )
    assert dict(_reliability_rows(vector))[
        "reference calibration error (per donor held out of model and calibration)"
    ].endswith("; vector scaling")
