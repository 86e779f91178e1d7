"""Plots follow scanpy's grammar (show, return_fig, save, ax), draw the thresholds, and show
in a notebook."""

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
    fig = sct.pl.qc(toy_qc, save=tmp_path / "qc.png", return_fig=True)
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
    fig = sct.pl.clusters(adata, save=tmp_path / "clusters.png", return_fig=True)
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
    fig = sct.pl.identity(lot, save=tmp_path / "identity.png", return_fig=True)
    assert isinstance(fig, Figure) and (tmp_path / "identity.png").stat().st_size > 10_000
    fig = sct.pl.composition(lot, save=tmp_path / "composition.png", return_fig=True)
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
    fig = sct.pl.reliability(mapped_product, save=tmp_path / "reliability.png", return_fig=True)
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


def test_show_return_fig_and_axes_as_in_scanpy(toy_qc, monkeypatch):
    """show=True shows (plt.show) and returns nothing; return_fig returns the figure, open in
    pyplot and not shown; show=False returns the axes; under a non-interactive backend (this
    test run's Agg) the default does not show."""
    import matplotlib.pyplot as plt

    shown = []
    monkeypatch.setattr(plt, "show", lambda *a, **k: shown.append(1))
    assert sct.pl.qc(toy_qc, show=True) is None
    assert len(shown) == 1
    fig = sct.pl.qc(toy_qc, return_fig=True)
    assert isinstance(fig, Figure) and plt.fignum_exists(fig.number) and len(shown) == 1
    axes = sct.pl.qc(toy_qc, show=False)
    assert axes.shape == (1, 4) and axes[0, 0].figure is not fig
    assert sct.pl.qc(toy_qc) is not None and len(shown) == 1  # Agg: not shown
    plt.close("all")


def test_single_panel_plot_draws_into_the_callers_axes(tmp_path):
    import matplotlib.pyplot as plt

    history = [sct.datasets.toy_product(n_cells=400, seed=s) for s in (1, 2, 3)]
    new = sct.datasets.toy_product(n_cells=400, seed=4)
    for lot in [*history, new]:
        sct.tl.identity_score(lot, profile="car_t_demo")
    sct.tl.compare_lots(new, history)
    fig, (left, right) = plt.subplots(1, 2)
    assert sct.pl.compare_lots(new, ax=right, show=False) is right
    assert right.has_data() and not left.has_data()
    plt.close(fig)


NOTEBOOK_CELLS = [
    "import sc_celltherapy as sct\n"
    "adata = sct.datasets.toy_product(n_cells=300, seed=0)\n"
    "sct.pp.qc_metrics(adata)\n"
    "sct.pp.flag_low_quality(adata)",
    "sct.pl.qc(adata)\nsct.pl.qc(adata)",  # two plots in one cell
    "sct.pl.qc(adata);",  # a trailing semicolon
    "fig = sct.pl.qc(adata, return_fig=True)",  # assigned: shown once, by the backend
    "ax = sct.pl.qc(adata, show=False)",
]


def test_plots_show_in_a_notebook_kernel():
    """The cells run in a fresh Jupyter kernel (nbclient), as a user types them: every plot
    shows as one image, two calls in a cell show two, nothing shows twice."""
    import os

    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in NOTEBOOK_CELLS]
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}  # the kernel's own
    NotebookClient(nb, timeout=300, kernel_name="python3").execute(env=env)
    images = [sum("image/png" in out.get("data", {}) for out in cell.outputs) for cell in nb.cells]
    assert images == [0, 2, 1, 1, 1]


def test_impurities_drawn_over_the_target_in_their_own_colours():
    """The identity UMAP draws the target's cells first, in grey, and every other class on
    top in a distinct colour-blind-safe colour; cluster colours are scanpy's uns colours,
    written when missing and read when present; listed markers skip housekeeping genes."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_hex

    lot = sct.datasets.toy_product(
        n_cells=600, fractions={"T cell": 0.9, "monocyte": 0.1}, low_quality_rate=0, seed=0
    )
    sct.tl.identity_score(lot, profile="car_t_demo")
    sct.tl.cluster(lot, n_top_genes=300)
    fig = sct.pl.identity(lot, return_fig=True)
    (panel,) = [ax for ax in fig.axes if ax.get_title() == "identity class"]
    scatters = panel.collections
    labels = [c.get_label().split(" (")[0] for c in scatters]
    assert labels[0] == "target" and set(labels[1:]) == {"monocytes", "unassigned"}
    colours = [to_hex(c.get_facecolor()[0]) for c in scatters]
    assert colours[0] == "#c8c8c8" and len(set(colours)) == len(colours)
    plt.close(fig)

    assert "sct_cluster_colors" not in lot.uns
    fig = sct.pl.clusters(lot, return_fig=True)
    written = list(lot.uns["sct_cluster_colors"])
    assert len(written) == lot.obs["sct_cluster"].cat.categories.size
    lot.uns["sct_cluster_colors"] = ["#123456"] * len(written)
    plt.close(fig)
    fig = sct.pl.clusters(lot, return_fig=True)
    assert {to_hex(c.get_facecolor()[0]) for c in fig.axes[0].collections} == {"#123456"}
    plt.close(fig)

    from sc_celltherapy.pl._clusters import is_housekeeping

    assert all(is_housekeeping(g) for g in ("MT-CO1", "RPL13A", "RPS27", "MALAT1", "Actb"))
    assert not any(is_housekeeping(g) for g in ("CD3E", "RPE65", "MTOR", "LYZ"))
