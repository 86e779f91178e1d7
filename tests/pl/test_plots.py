"""Plots return figures, draw the thresholds, and save when asked."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.figure import Figure

import sc_celltherapy as sct


@pytest.fixture(scope="module")
def toy_qc():
    adata = sct.datasets.toy_product(n_cells=500, seed=0)
    sct.pp.qc_metrics(adata)
    sct.pp.flag_low_quality(adata)
    return adata


def test_qc_plot_draws_thresholds(toy_qc, tmp_path):
    fig = sct.pl.qc(toy_qc, save=tmp_path / "qc.png")
    assert isinstance(fig, Figure)
    assert (tmp_path / "qc.png").stat().st_size > 10_000
    th = toy_qc.uns["sct_low_quality"]["thresholds"]["all"]
    counts_axis = fig.axes[0]
    lines = [line.get_xdata()[0] for line in counts_axis.lines]
    assert any(abs(x - th["total_counts"][0]) < 1e-6 for x in lines)


def test_qc_plot_needs_metrics():
    adata = sct.datasets.toy_product(n_cells=100, seed=0)
    with pytest.raises(sct.InputError, match="qc_metrics"):
        sct.pl.qc(adata)


def test_clusters_plot(tmp_path):
    adata = sct.datasets.toy_product(n_cells=300, seed=0, low_quality_rate=0)
    with pytest.raises(sct.InputError, match="sct.tl.cluster"):
        sct.pl.clusters(adata)
    sct.tl.cluster(adata, n_top_genes=300)
    fig = sct.pl.clusters(adata, save=tmp_path / "clusters.png")
    assert isinstance(fig, Figure)
    assert (tmp_path / "clusters.png").stat().st_size > 10_000


def test_identity_and_composition_plots(tmp_path):
    from sc_celltherapy.release import Spec

    lot = sct.datasets.toy_product(
        n_cells=600, fractions={"T cell": 0.9, "monocyte": 0.1}, low_quality_rate=0, seed=0
    )
    with pytest.raises(sct.InputError, match="identity_score"):
        sct.pl.identity(lot)
    with pytest.raises(sct.InputError, match="assess_purity"):
        sct.pl.composition(lot)
    sct.tl.identity_score(lot, profile="car_t_demo")
    sct.tl.cluster(lot, n_top_genes=300)
    spec = Spec(product="toy", target=("T cells",), max_impurity={"off_target": 0.05})
    report = sct.tl.assess_purity(lot, spec)
    fig = sct.pl.identity(lot, save=tmp_path / "identity.png")
    assert isinstance(fig, Figure) and (tmp_path / "identity.png").stat().st_size > 10_000
    fig = sct.pl.composition(lot, save=tmp_path / "composition.png")
    assert (tmp_path / "composition.png").stat().st_size > 10_000
    # the off-target limit is drawn where the spec puts it, and the verdict is written
    impurity_ax = fig.axes[1]
    assert any(np.allclose(line.get_xdata(), 0.05) for line in impurity_ax.lines)
    texts = {t.get_text() for t in impurity_ax.texts}
    assert report.impurities.loc["off_target", "verdict"] in texts


def test_reliability_plot_draws_the_bundles_held_out_donors(mapped_product, tmp_path):
    lot = sct.datasets.toy_product(n_cells=100, seed=0)
    with pytest.raises(sct.InputError, match="map_to_reference"):
        sct.pl.reliability(lot)
    fig = sct.pl.reliability(mapped_product, save=tmp_path / "reliability.png")
    assert (tmp_path / "reliability.png").stat().st_size > 10_000
    cal = mapped_product.uns["sct_ref"]["calibration"]
    diagram, coverage = fig.axes[0], fig.axes[1]
    # one line per held-out donor (the demo bundle's one batch: two random halves) plus the
    # diagonal, drawn at the bundle's own bins; one coverage bar per donor
    assert len(diagram.lines) == 1 + len(cal["per_donor"]) == 3
    for line, r in zip(diagram.lines[1:], cal["per_donor"].values(), strict=True):
        np.testing.assert_allclose(line.get_xdata(), r["reliability"]["confidence"])
    sets = mapped_product.uns["sct_ref"]["label_sets"]
    heights = [p.get_height() for p in coverage.patches]
    np.testing.assert_allclose(heights, list(sets["coverage_per_donor"].values()))
