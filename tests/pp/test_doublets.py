"""Doublet scoring: ranking of planted doublets, thresholds and their fallback."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

import sc_celltherapy as sct
from sc_celltherapy.pp._doublets import _threshold, expected_multiplet_rate


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_toy_doublets_ranked(seed):
    adata = sct.datasets.toy_product(n_cells=2000, seed=seed)
    sct.pp.flag_low_quality(adata)
    sct.pp.doublets(adata)
    scored = adata.obs["sct_doublet_score"].notna().to_numpy()
    assert (scored == ~adata.obs["sct_low_quality"].to_numpy()).all()
    auroc = roc_auc_score(adata.obs["true_doublet"][scored], adata.obs["sct_doublet_score"][scored])
    assert auroc >= 0.8, auroc


def test_expected_multiplet_rate():
    assert expected_multiplet_rate(1000) == pytest.approx(0.008)
    assert expected_multiplet_rate(10_000) == pytest.approx(0.08)
    assert expected_multiplet_rate(10) == 0.005  # floor
    assert expected_multiplet_rate(10**6) == 0.25  # ceiling


def test_threshold_falls_back_when_not_bimodal():
    rng = np.random.default_rng(0)
    obs = rng.uniform(0, 1, 1000)
    sim = rng.uniform(0, 1, 2000)  # flat: threshold_minimum finds no two modes
    threshold, rule, reason = _threshold(obs, sim, 0.05)
    assert rule == "expected_rate_fallback"
    assert reason
    assert np.mean(obs > threshold) == pytest.approx(0.05, abs=0.002)


def test_threshold_auto_when_bimodal():
    rng = np.random.default_rng(0)
    sim = np.concatenate([rng.normal(0.1, 0.03, 1500), rng.normal(0.7, 0.05, 500)])
    obs = np.concatenate([rng.normal(0.1, 0.03, 970), rng.normal(0.7, 0.05, 30)])
    threshold, rule, _ = _threshold(obs, sim, 0.03)
    assert rule == "scrublet_auto"
    assert 0.2 < threshold < 0.6


def test_threshold_rejected_when_it_calls_too_many():
    rng = np.random.default_rng(1)
    sim = np.concatenate([rng.normal(0.1, 0.03, 1500), rng.normal(0.7, 0.05, 500)])
    obs = np.concatenate([rng.normal(0.1, 0.03, 700), rng.normal(0.7, 0.05, 300)])  # 30%
    threshold, rule, reason = _threshold(obs, sim, 0.02)
    assert rule == "expected_rate_fallback"
    assert "would call" in reason


def test_doublets_per_sample_and_recorded():
    import anndata as ad

    a = sct.datasets.toy_product(n_cells=400, seed=0)
    b = sct.datasets.toy_product(n_cells=30, seed=1)  # too small to score
    both = ad.concat({"A": a, "B": b}, label="sample", index_unique="-")
    sct.pp.doublets(both, batch_key="sample")
    per = both.uns["sct_doublet"]["per_sample"]
    assert per["A"]["rule"] == "scrublet_auto"  # measured on this seeded lot
    assert per["A"]["expected_rate"] == pytest.approx(expected_multiplet_rate(400))
    assert per["B"]["rule"] == "not_scored"
    in_b = (both.obs["sample"] == "B").to_numpy()
    assert both.obs["sct_doublet_score"][in_b].isna().all()
    assert not both.obs["sct_doublet"][in_b].any()
    assert both.uns["sct_doublet"]["n_called"] == int(both.obs["sct_doublet"].sum())


def test_doublets_deterministic():
    a = sct.datasets.toy_product(n_cells=500, seed=4)
    b = a.copy()
    sct.pp.doublets(a)
    sct.pp.doublets(b)
    np.testing.assert_array_equal(a.obs["sct_doublet_score"], b.obs["sct_doublet_score"])


def test_doublets_bad_arguments():
    adata = sct.datasets.toy_product(n_cells=100, seed=0)
    with pytest.raises(sct.InputError, match="expected_rate"):
        sct.pp.doublets(adata, expected_rate=1.5)
    with pytest.raises(sct.InputError, match="method"):
        sct.pp.doublets(adata, method="doubletfinder")
