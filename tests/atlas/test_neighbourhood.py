"""Neighbourhood evidence of the out-of-reference call, on lots with known groups."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from sc_celltherapy.atlas._neighbourhood import (
    LOT_K,
    fit_oor_with_neighbourhood,
    held_out_neighbourhood,
    lot_neighbours,
    neighbourhood_median,
)
from sc_celltherapy.atlas._novelty import combine


def two_programs(n_a: int, n_b: int, seed: int = 0) -> tuple[sp.csr_matrix, np.ndarray]:
    """A lot of two cell types: each expresses its own 50 of 400 genes at 20 counts per cell
    (Poisson), all genes at a background of 0.3. Returns counts and the type of each cell."""
    rng = np.random.default_rng(seed)
    group = np.r_[np.zeros(n_a, int), np.ones(n_b, int)]
    rate = np.full((group.size, 400), 0.3)
    rate[group == 0, :50] = 20
    rate[group == 1, 50:100] = 20
    return sp.csr_matrix(rng.poisson(rate).astype(np.float32)), group


def test_neighbours_are_the_cell_itself_and_cells_of_its_own_type():
    counts, group = two_programs(60, 25)
    idx = lot_neighbours(counts)
    assert idx.shape == (85, LOT_K)
    assert (idx[:, 0] == np.arange(85)).all()
    assert (group[idx] == group[:, None]).all()
    # deterministic for a seed
    assert (lot_neighbours(counts) == idx).all()


def test_tiny_lots_have_no_neighbourhood_beyond_the_lot():
    counts, _ = two_programs(2, 0)
    assert lot_neighbours(counts).tolist() == [[0], [1]]
    counts, _ = two_programs(4, 3)
    idx = lot_neighbours(counts)
    assert idx.shape == (7, 7) and sorted(idx[3]) == list(range(7))


def test_a_group_mostly_out_of_reference_is_called_whole_and_a_lone_cell_still_is():
    """Known truth. Held-out donors: 300 in-reference cells each, cell scores ~ |N(0, 1)|. The
    lot: 200 in-reference cells, a group of 40 cells of a state the reference lacks whose
    single-cell scores are shifted by +2.5 (most, not all, above the cell-level threshold), and
    one lone cell far out. Most of the group's neighbourhood is out of reference, so its median
    calls the whole group; the lone cell's neighbours are in-reference cells, its median is
    theirs, and its own score calls it."""
    rng = np.random.default_rng(3)
    donors = np.repeat(["d1", "d2", "d3"], 300)
    held_counts = sp.vstack([two_programs(300, 0, seed=s)[0] for s in (1, 2, 3)]).tocsr()
    oof = {
        "latent": np.abs(rng.normal(size=900)) + 1,
        "expression": np.zeros(900),
    }
    everyone = np.ones(900, dtype=bool)
    oor = fit_oor_with_neighbourhood(oof, held_counts, donors, everyone, everyone)
    scales = oor["scales"]
    assert set(scales) == {"latent", "expression", "neighbourhood"}
    assert scales["neighbourhood"] == 1  # in the cell-level score's units
    assert oor["fpr_bound"] == pytest.approx(1 - int(np.ceil(901 * 0.99)) / 901)

    counts, group = two_programs(201, 40, seed=9)
    latent = np.abs(rng.normal(size=241)) + 1
    latent[group == 1] += 2.5
    latent[200] = 6.0  # the lone cell, of the in-reference type's expression
    components = {"latent": latent, "expression": np.zeros(241)}
    cell_score = combine(components, scales)
    neighbourhood = neighbourhood_median(cell_score, lot_neighbours(counts))
    score = combine(components | {"neighbourhood": neighbourhood}, scales)
    called = score > oor["threshold"]
    cell_called = cell_score > oor["threshold"]
    # measured: the cell-level score calls 38 of the 40, the combined score all 40
    assert int(cell_called[group == 1].sum()) == 38
    assert int(called[group == 1].sum()) == 40
    assert called[200] and cell_called[200]
    # in-reference cells: 4 of 200 called by their own score (the held-out rate is 0.9%), and the
    # lone cell, one high score in their neighbourhoods, adds none
    assert int(cell_called[:200].sum()) == 4
    assert int(called[:200].sum()) == 4
    assert oor["held_out_fpr_by_component"]["neighbourhood"] == 0


def test_held_out_donors_are_separate_lots():
    """A donor's cells find neighbours among that donor's cells only, read from the rows of
    the reference's counts that were held out (here the last 30 of 40, in reverse)."""
    counts, _ = two_programs(40, 0)
    rows = np.arange(39, 9, -1)
    donors = np.where(rows < 25, "a", "b")
    score = (rows >= 25).astype(float)
    out = held_out_neighbourhood(counts, rows, donors, score)
    assert out.tolist() == [1.0] * 15 + [0.0] * 15
