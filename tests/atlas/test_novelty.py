"""Out-of-reference evidence: expression excess, gene levels, and the combined threshold."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from sc_celltherapy.atlas._novelty import (
    EXCESS_FOLD,
    MIN_SCALE,
    ambient_load,
    combine,
    expression_excess,
    fit_oor,
    gene_levels,
    lineage_genes,
)


def test_gene_levels_are_the_upper_quantile_of_counts_per_10k():
    # 100 cells of 1,000 counts: gene 0 has 10 counts in 95 cells and 50 in 5; gene 1 is zero
    # in 99 cells. Per 10,000: 100 and 500; the 99th percentile of gene 0 is 500, of gene 1, 0
    counts = np.zeros((100, 3))
    counts[:, 0] = 10
    counts[95:, 0] = 50
    counts[0, 1] = 5
    counts[:, 2] = 1000 - counts[:, 0] - counts[:, 1]
    levels = gene_levels(sp.csr_matrix(counts), quantile=0.99)
    assert levels[0] == pytest.approx(500)
    assert levels[1] == 0


def test_expression_excess_counts_only_far_above_the_reference_and_trims_two_genes():
    """Known truth: a cell at 1,000 counts whose genes sit at the reference's level has no
    excess; counts far above it are excess, except the cell's two largest excess genes."""
    levels = np.full(6, 100.0)  # per 10,000: 10 counts expected at depth 1,000
    typical = [10, 10, 10, 10, 10, 950]
    levels[5] = 9500
    # a lineage the reference lacks: four genes at 20x the reference's level
    foreign = [200, 200, 200, 200, 0, 200]
    one_gene = [10, 10, 10, 10, 400, 560]  # one gene far up (a donor's XIST, say)
    excess = expression_excess(sp.csr_matrix(np.array([typical, foreign, one_gene])), levels)
    assert excess[0] == 0
    assert excess[2] == 0  # trimmed
    # foreign: limit at 4x level = Poisson 99.9% of 40 * (1000/1000) ~ 61; two of four in excess
    from scipy.stats import poisson

    limit = poisson.ppf(0.999, EXCESS_FOLD * 10)
    assert excess[1] == pytest.approx(2 * (200 - limit) / 1000)


def test_blocks_of_genes_and_cells_give_the_one_piece_result(monkeypatch):
    """Gene levels and expression excess are computed in blocks so an atlas fits in memory;
    blocks of 7 genes and 13 cells must give exactly what one block does."""
    from sc_celltherapy.atlas import _novelty

    rng = np.random.default_rng(1)
    dense = rng.poisson(rng.gamma(0.3, 4, size=(60, 300))).astype(np.float32)
    dense[50:, :8] += 60  # ten cells far above the others in eight genes: excess to find
    counts = sp.csr_matrix(dense)
    whole_levels = gene_levels(counts[:50], quantile=0.9)
    whole_excess = expression_excess(counts, whole_levels)
    monkeypatch.setattr(_novelty, "CHUNK_GENES", 7)
    monkeypatch.setattr(_novelty, "CHUNK_CELLS", 13)
    np.testing.assert_array_equal(gene_levels(counts[:50], quantile=0.9), whole_levels)
    np.testing.assert_array_equal(expression_excess(counts, whole_levels), whole_excess)
    assert whole_excess.max() > 0 and whole_levels.min() > 0  # both carry information


def test_ambient_load_separates_ambient_coated_cells_from_a_foreign_lineage():
    """Known truth: a lot of 900 reference-like cells and 100 cells of a lineage the reference
    lacks (genes 0-9, level 0). Every reference-like cell also draws a share rho (up to 60%) of
    its reads from the lot's pooled profile, the ambient RNA. However much ambient a cell
    carries, its load of the absent genes stays below the pooled share (load < 1); the foreign
    cells sit near 1 / (their share of the lot)."""
    rng = np.random.default_rng(0)
    n_genes = 40
    levels = np.full(n_genes, 50.0)
    levels[:10] = 0  # the foreign lineage's genes: never expressed in the reference
    own = np.full(n_genes, 1.0)
    own[:10] = 0
    own /= own.sum()
    foreign = np.full(n_genes, 0.2)
    foreign[:10] = 6.0
    foreign /= foreign.sum()
    pooled = 0.9 * own + 0.1 * foreign
    rho = rng.uniform(0, 0.6, 900)
    t_cells = rng.poisson(3000 * ((1 - rho)[:, None] * own + rho[:, None] * pooled))
    f_cells = rng.poisson(3000 * foreign, size=(100, n_genes))
    load = ambient_load(sp.csr_matrix(np.vstack([t_cells, f_cells]).astype(float)), levels)
    assert load[:900].max() < 1  # measured 0.58 (the largest rho is 0.6)
    assert np.corrcoef(load[:900], rho)[0, 1] > 0.95  # it measures each cell's ambient share
    assert load[900:].min() > 5  # measured 7.7: about 1 / their share of the lot
    # a lot without any read of an absent gene has no load anywhere
    assert not ambient_load(sp.csr_matrix(t_cells[:, 10:].astype(float)), levels[10:]).any()


def test_quality_genes_are_not_lineage_evidence():
    mask = lineage_genes(
        ["MT-CO1", "RPL13", "RPS4Y1", "MTRNR2L12", "LYZ", "mt-Nd1", "Rps3", "CD3E"]
    )
    assert mask.tolist() == [False, False, False, False, True, False, False, True]


def test_combined_threshold_keeps_its_false_positive_bound_and_either_component_can_call():
    """Known truth: held-out and new in-reference cells from one distribution per component.
    Over 100 draws of 2,000 held-out cells, new cells above the combined threshold average 1%
    (the scales and the threshold come from the same cells, and that does not bias it), and a
    cell far on one component alone is called."""

    def draw(rng, n):
        return {"latent": rng.lognormal(0, 0.2, n), "expression": rng.exponential(0.01, n)}

    rng = np.random.default_rng(0)
    fprs = []
    for _ in range(100):
        fit = fit_oor(draw(rng, 2000))
        fprs.append(np.mean(combine(draw(rng, 5000), fit["scales"]) > fit["threshold"]))
    assert np.mean(fprs) == pytest.approx(0.01, abs=0.0008)
    assert fit["fpr_bound"] <= 0.01
    held = draw(rng, 3000)
    far_latent = {"latent": np.array([3.0]), "expression": np.array([0.0])}
    far_expression = {"latent": np.array([1.0]), "expression": np.array([0.2])}
    assert combine(far_latent, fit["scales"])[0] > fit["threshold"]
    assert combine(far_expression, fit["scales"])[0] > fit["threshold"]
    # a clean reference with no excess at all: the expression scale stops at its floor
    clean = fit_oor({"latent": held["latent"], "expression": np.zeros(3000)})
    assert clean["scales"]["expression"] == MIN_SCALE["expression"]
