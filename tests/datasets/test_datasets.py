"""Embedded data: the real PBMC counts recovered exactly; the toy lot's truth is what it says."""

from __future__ import annotations

import numpy as np
import pytest
import scanpy as sc

import sc_celltherapy as sct


def test_pbmc_reference_counts_are_exact_integers():
    ref = sct.datasets.pbmc_reference()
    assert ref.shape == (700, 765)
    assert ref.obs["cell_type"].nunique() == 10
    packaged = sc.datasets.pbmc68k_reduced()
    # recovery before rounding: integers to within 0.05 for (almost) every non-zero
    raw = packaged.raw.X.toarray() if hasattr(packaged.raw.X, "toarray") else packaged.raw.X
    unrounded = (
        np.expm1(raw.astype(np.float64)) * packaged.obs["n_counts"].to_numpy()[:, None] / 1e4
    )
    nz = unrounded[unrounded > 0.01]
    assert np.mean(np.abs(nz - np.round(nz)) < 0.05) > 0.9999
    X = ref.X.toarray()
    assert np.array_equal(X, np.round(X)) and X.min() >= 0
    # re-normalising the recovered counts reproduces scanpy's stored values
    renorm = np.log1p(X / packaged.obs["n_counts"].to_numpy()[:, None] * 1e4)
    np.testing.assert_allclose(renorm, raw, atol=2e-3)


def test_toy_truth_is_exact():
    lot = sct.datasets.toy_product(
        n_cells=1000,
        fractions={"T cell": 0.99, "pluripotent": 0.01},
        doublet_rate=0.04,
        low_quality_rate=0.06,
        proliferating_fraction=0.2,
        seed=7,
    )
    obs = lot.obs
    assert lot.n_obs == 1000
    assert obs["true_doublet"].sum() == 40
    assert obs["true_low_quality"].sum() == 60
    singlets = obs[~obs["true_doublet"] & ~obs["true_low_quality"]]
    assert (singlets["true_population"] == "pluripotent").sum() == round(0.01 * 900)
    n_t = (singlets["true_population"] == "T cell").sum()
    assert singlets["true_proliferating"].sum() == round(0.2 * n_t)
    # planted programmes are really there: pluripotent cells express the panel, T cells do not
    panel = lot[:, ["POU5F1", "NANOG", "LIN28A"]].X.toarray().sum(1)
    is_psc = (obs["true_population"] == "pluripotent").to_numpy() & ~obs["true_doublet"].to_numpy()
    is_t = (obs["true_population"] == "T cell") & ~obs["true_doublet"] & ~obs["true_low_quality"]
    assert panel[is_psc & ~obs["true_low_quality"].to_numpy()].min() > 20
    assert np.median(panel[is_t.to_numpy()]) == 0
    assert "synthetic" in lot.uns["sct_dataset"]["kind"]


def test_toy_is_seeded():
    a = sct.datasets.toy_product(n_cells=300, seed=5)
    b = sct.datasets.toy_product(n_cells=300, seed=5)
    c = sct.datasets.toy_product(n_cells=300, seed=6)
    assert (a.X != b.X).nnz == 0
    assert (a.X != c.X).nnz > 0


def test_toy_rejects_bad_arguments():
    with pytest.raises(sct.InputError, match="sum to 1"):
        sct.datasets.toy_product(fractions={"T cell": 0.5})
    with pytest.raises(sct.InputError, match="Unknown populations"):
        sct.datasets.toy_product(fractions={"hepatocyte": 1.0})
