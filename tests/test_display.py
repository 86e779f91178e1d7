"""Result objects read well: the verdict first in a short text view, and an HTML table for
notebooks with every criterion, its interval, limit and verdict."""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData

import sc_celltherapy as sct
from sc_celltherapy.release import Release, Spec


def test_purity_report_reads_verdict_first_with_every_criterion():
    lot = sct.datasets.toy_product(
        n_cells=600, fractions={"T cell": 0.9, "monocyte": 0.1}, low_quality_rate=0, seed=0
    )
    sct.tl.identity_score(lot, profile="car_t_demo")
    spec = Spec(
        product="toy",
        target=("T cells",),
        min_target_fraction=0.8,
        max_impurity={"off_target": 0.05},
    )
    report = sct.tl.assess_purity(lot, spec)
    text = repr(report)
    first = text.splitlines()[0]
    assert first.startswith(f"PurityReport: {report.verdict} (600 cells assessed")
    assert "np.float64" not in text and len(text.splitlines()) == len(report.to_frame()) + 2
    target = next(line for line in text.splitlines() if line.startswith("target"))
    assert ">= 80.00%" in target and report.target.verdict in target
    off = next(line for line in text.splitlines() if line.startswith("off_target"))
    assert "<= 5.00%" in off
    html = report._repr_html_()
    assert html.count("<tr>") == len(report.to_frame()) + 1 and report.verdict in html


def test_lot_comparison_and_spike_in_and_release_read_well(tmp_path):
    rng = np.random.default_rng(0)

    def lot(seed):
        classes = np.random.default_rng(seed).choice(["target", "monocytes"], 2000, p=[0.95, 0.05])
        adata = AnnData(X=np.zeros((2000, 1), dtype=np.float32))
        adata.obs["sct_identity_class"] = pd.Categorical(classes)
        adata.obsm["X_sct_ref"] = rng.normal(size=(2000, 3))
        return adata

    comparison = sct.tl.compare_lots(lot(9), {f"Q{i}": lot(i) for i in range(3)})
    text = repr(comparison)
    assert text.startswith(f"LotComparison: {comparison.verdict} (2000 cells against 3")
    assert "monocytes" in text and comparison.verdict in comparison._repr_html_()

    base = AnnData(X=np.ones((500, 2), dtype=np.float32))
    spike = AnnData(X=np.ones((200, 2), dtype=np.float32))

    def estimator(mixture):  # a perfect assay: knows which cells were spiked
        return int(mixture.obs["sct_spiked"].sum()), mixture.n_obs

    result = sct.validation.spike_in(
        base, spike, estimator, fractions=(0.02, 0.1), n_replicates=2, n_cells=100, seed=0
    )
    text = repr(result)
    assert text.startswith("SpikeInResult: slope 1.000, R^2 1.000, limit of detection 2.00%")
    assert "Spike-in" in result._repr_html_()

    results = {
        "lot_id": "L1",
        "verdict": "FAIL",
        "purity": {"n_cells": 734},
        "criteria": [
            {"criterion": "target", "kind": "min", "n": 705, "fraction": 0.96, "ci_low": 0.94,
             "ci_high": 0.97, "limit": 0.98, "limit_max": None, "verdict": "FAIL"},
        ],
    }  # fmt: skip
    release = Release(tmp_path, results, "ab" * 32)
    assert repr(release).startswith(f"Release L1: FAIL (734 cells) in {tmp_path}")
    assert ">= 98.00%" in repr(release) and "color:#c62828" in release._repr_html_()


def test_bundle_reads_its_worst_donor_calibration_first(tmp_path):
    """A bundle's repr quotes what a report quotes: the worst held-out donor's ECE and label-set
    coverage, and whether calibration was across donors; its HTML view has a row per donor."""
    from sc_celltherapy.atlas import ReferenceBundle

    calibration = {
        "method": "temperature scaling",
        "across_donors": True,
        "ece_worst_donor": 0.0912,
        "conformal": {"coverage_worst_donor": 0.845},
        "per_donor": {
            "P06": {"n_cells": 120, "accuracy": 0.8, "ece": 0.0912, "ece_chance_95": 0.1304,
                    "coverage": 0.845, "mean_set_size": 1.4},
            "P13": {"n_cells": 48, "accuracy": 0.9, "ece": 0.04, "coverage": 0.93,
                    "mean_set_size": 1.2},
        },
    }  # fmt: skip
    manifest = {"name": "t", "version": "2", "labels": ["a", "b"], "genes": ["G1", "G2", "G3"]}
    bundle = ReferenceBundle(tmp_path, manifest | {"calibration": calibration})
    assert repr(bundle).startswith(
        "ReferenceBundle 't' v2: 2 labels, 3 genes; calibration temperature scaling (across "
        "donors), worst donor ECE 0.091, label-set coverage 0.845"
    )
    html = bundle._repr_html_()
    assert html.count("<tr>") == 3 and "<td>P13</td><td>48</td>" in html and "None" not in html
    # the ECE perfect calibration reaches by chance on the donor's cells ("–" where not stored)
    assert "<td>0.091</td><td>0.130</td>" in html and "<td>0.040</td><td>–</td>" in html
