"""The proliferating (S/G2/M) call against the study authors' labels on real CAR-T cells."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest

from sc_celltherapy.tl._cell_cycle import cell_cycle

PROLIFERATING_LABEL = "Proliferating CAR T"


@pytest.fixture(scope="module")
def labelled(shared_data):
    """3,138 sorted CAR-T cells; 41 labelled "Proliferating CAR T" by the authors."""
    cells = ad.read_h5ad(shared_data / "cart_labelled_dev.h5ad")
    return cells, (cells.obs["CellType1"] == PROLIFERATING_LABEL).to_numpy()


def test_call_matches_the_authors_labels(labelled):
    cells, truth = labelled
    cc = cell_cycle(cells)
    assert cc.method == "mixture" and cc.median_log2_fold >= 3  # 14x
    assert cc.cycling[truth].mean() >= 0.9  # 38 of 41
    assert cc.cycling[~truth].mean() <= 0.005  # 5 of 3,097
    assert abs(cc.cycling.mean() - truth.mean()) <= 0.002  # 1.37% vs 1.31%
    assert set(cc.phase[cc.cycling]) <= {"S", "G2M"} and set(cc.phase[~cc.cycling]) == {"G1"}


def test_scanpys_score_above_0_rule_overcalls_resting_cells(labelled):
    """Why the call is not scanpy's rule: it calls most resting cells cycling."""
    cells, truth = labelled
    cc = cell_cycle(cells)
    scanpy_rule = np.maximum(cc.s_score, cc.g2m_score) > 0
    assert scanpy_rule[~truth].mean() > 0.3  # 37%
    assert cc.cycling[~truth].mean() < scanpy_rule[~truth].mean() / 50


@pytest.mark.parametrize("n_planted", [0, 2, 5, 20])
def test_few_cycling_cells_among_resting_ones_are_found(labelled, n_planted):
    cells, truth = labelled
    rows = np.r_[np.flatnonzero(~truth), np.flatnonzero(truth)[:n_planted]]
    lot = cells[rows].copy()
    planted = np.r_[np.zeros((~truth).sum(), bool), np.ones(n_planted, bool)]
    cc = cell_cycle(lot)
    assert cc.cycling[planted].sum() == n_planted
    # resting by the authors' labels; the same few cells are called in every lot
    assert cc.cycling[~planted].sum() <= 10
    if n_planted == 0:  # no component to fit: the score outliers are the call
        assert cc.method == "outliers" and cc.median_log2_fold < 2


def test_half_the_lot_cycling_is_still_separated(labelled):
    cells, truth = labelled
    rows = np.r_[np.flatnonzero(~truth)[:40], np.flatnonzero(truth)]
    cc = cell_cycle(cells[rows].copy())
    planted = np.r_[np.zeros(40, bool), np.ones(truth.sum(), bool)]
    assert cc.method == "mixture"
    assert cc.cycling[planted].mean() >= 0.9 and cc.cycling[~planted].sum() <= 2


def test_too_few_programme_genes_give_no_call(labelled):
    cells, _ = labelled
    assert cell_cycle(cells[:, :2000].copy()) is None
