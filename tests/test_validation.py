"""Spike-in validation on real cells: monocytes from unsorted samples into CAR-T cells."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest

import sc_celltherapy as sct
from sc_celltherapy.validation import SPIKE_KEY, mix

UNSORTED = (
    "cart_unsorted_marrow_P01_CAR-T10593344.h5ad",
    "cart_unsorted_blood_P02_CAR-T10310324.h5ad",
)


def monocytes_by_marker_rule(cells: ad.AnnData) -> np.ndarray:
    """The independent rule that picks the spike: LYZ and CD14 detected, CD3E not."""

    def detected(gene):
        return np.asarray((cells[:, gene].X > 0).sum(axis=1)).ravel() > 0

    return detected("LYZ") & detected("CD14") & ~detected("CD3E")


@pytest.fixture(scope="module")
def called_pools(shared_data, demo_bundle):
    """Base (CAR-T cells) and spike (monocytes), mapped together once onto pbmc_demo (each
    sample a batch), with each cell's impurity call; mixtures then count the calls of the cells
    they draw (benchmarks/purity.py maps every mixture on its own)."""
    base = ad.read_h5ad(shared_data / "cart_labelled_dev.h5ad")
    base.obs = base.obs[["Patient"]].astype(str).rename(columns={"Patient": "sample"})
    spikes = []
    for name in UNSORTED:
        cells = ad.read_h5ad(shared_data / name)
        cells = cells[monocytes_by_marker_rule(cells)].copy()
        cells.obs = cells.obs[[]].assign(sample=name.split("_")[3])
        spikes.append(cells)
    spike = ad.concat(spikes, index_unique="-")
    pooled = ad.concat({"base": base, "spike": spike}, label="pool", index_unique="-")
    pooled.var_names_make_unique()
    sct.tl.map_to_reference(pooled, demo_bundle, batch_key="sample")
    sct.tl.identity_score(pooled, profile="car_t_demo")
    # the impurity a release flags: every cell not called the target (T cells), whether it is
    # called an off-target identity or out of the reference
    pooled.obs["called"] = (pooled.obs["sct_identity_class"] != "target").to_numpy()
    is_spike = (pooled.obs["pool"] == "spike").to_numpy()
    return pooled[~is_spike].copy(), pooled[is_spike].copy()


def count_calls(lot):
    return int(lot.obs["called"].sum()), lot.n_obs


def test_spike_in_recovery_linearity_and_blank(called_pools):
    base, spike = called_pools
    assert spike.n_obs >= 300
    result = sct.validation.spike_in(
        base, spike, count_calls, n_replicates=8, n_cells=2000, limit=0.02, seed=0
    )
    assert 0.8 <= result.slope <= 1.2, result.summary
    assert result.r2 >= 0.95
    assert result.false_positive_rate < 0.005
    assert result.lod is not None and result.lod <= 0.01
    # verdicts against a 2% limit: PASS below, FAIL above, INCONCLUSIVE only near the limit
    by_fraction = result.mixtures.groupby("true_fraction")["verdict"].agg(set)
    assert by_fraction[0.0] == {"PASS"} and by_fraction[0.005] == {"PASS"}
    assert by_fraction[0.05] == {"FAIL"} and by_fraction[0.1] == {"FAIL"}
    assert by_fraction[0.01] <= {"PASS", "INCONCLUSIVE"}
    assert by_fraction[0.02] <= {"PASS", "INCONCLUSIVE", "FAIL"}
    assert result.to_dict()["summary"][0]["true_fraction"] == 0.0


def test_mixtures_hold_the_planned_numbers(called_pools):
    base, spike = called_pools
    lot = mix(base, spike, 0.05, 1000, np.random.default_rng(0))
    assert lot.n_obs == 1000 and int(lot.obs[SPIKE_KEY].sum()) == 50
    assert lot.obs_names.is_unique
    with pytest.raises(sct.InputError, match="Use fewer cells per mixture"):
        mix(base, spike, 0.5, 10_000, np.random.default_rng(0))


def test_hesc_spiked_into_car_t_cells_with_replacement(shared_data):
    """50 real hESC spiked into real CAR-T cells at 0.1-5% of 1,000 cells (cells drawn with
    replacement: 5% needs 50 hESC per mixture), each mixture scored by the pluripotency detector
    on its own. Measured: slope 1.000, R^2 1.000, no blank call, every fraction detected."""
    import scipy.sparse as sp

    base = ad.read_h5ad(shared_data / "cart_labelled_dev.h5ad")
    base.var_names_make_unique()
    hesc = ad.read_h5ad(shared_data / "hesc_h1_and_endothelial_chu2016_100cells.h5ad")
    hesc = hesc[hesc.obs["cell_type"] == "hESC"].copy()
    hesc.X = sp.csr_matrix(np.round(hesc.X.toarray() if sp.issparse(hesc.X) else hesc.X))
    genes = base.var_names.intersection(hesc.var_names)
    base, hesc = base[:, genes].copy(), hesc[:, genes].copy()
    base.obs, hesc.obs = base.obs[[]], hesc.obs[[]]

    def assay(lot):
        sct.tl.identity_score(lot, profile="car_t_demo")
        return int(lot.obs["sct_identity_pluripotent"].sum()), lot.n_obs

    res = sct.validation.spike_in(
        base,
        hesc,
        assay,
        fractions=(0.001, 0.005, 0.01, 0.02, 0.05),
        n_replicates=2,
        n_blanks=4,
        n_cells=1000,
        replace=True,
    )
    assert 0.9 <= res.slope <= 1.1 and res.r2 >= 0.98
    assert res.false_positive_rate == 0.0
    assert res.lod == 0.001
    assert res.replace and "replicates share cells" in res.sampling
    assert res.to_dict()["replace"] is True
    with pytest.raises(sct.InputError, match="replace=True"):
        mix(base, hesc, 0.1, 1000, np.random.default_rng(0))
