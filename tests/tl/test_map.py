"""Mapping onto a reference: gene gating, species check, determinism, real lots."""

from __future__ import annotations

import numpy as np
import pytest

import sc_celltherapy as sct
from cpu_spread import CPU_SPREAD
from sc_celltherapy.tl import MappingWarning

T_LABELS = {
    "CD4+/CD25 T Reg",
    "CD4+/CD45RA+/CD25- Naive T",
    "CD4+/CD45RO+ Memory",
    "CD8+ Cytotoxic T",
    "CD8+/CD45RA+ Naive Cytotoxic",
}


def test_cart_product_maps_to_t_cells(mapped_product):
    obs = mapped_product.obs
    assigned = ~obs["sct_ref_unassigned"]
    t_fraction = obs.loc[assigned, "sct_ref_label"].isin(T_LABELS).mean()
    assert t_fraction > 0.7, obs["sct_ref_label"].value_counts()
    probs = mapped_product.obsm["sct_ref_probs"]
    np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-6)
    np.testing.assert_allclose(probs.max(axis=1), obs["sct_ref_prob"], atol=1e-9)
    rec = mapped_product.uns["sct_ref"]
    assert rec["bundle"] == "pbmc_demo" and len(rec["sha256"]) == 64
    # 59 of the 765 reference genes carry pre-2016 symbols (ATPIF1, SEPT7, ...) that the
    # GRCh38-2020 product annotation renamed: 92.3% overlap, measured
    assert rec["gene_overlap"] == pytest.approx(706 / 765, abs=1e-9)
    assert mapped_product.obsm["X_sct_ref"].shape == (mapped_product.n_obs, 10)
    # the bundle's threshold is the decision
    np.testing.assert_array_equal(
        obs["sct_ref_unassigned"], obs["sct_ref_oor_score"] > rec["oor_threshold"]
    )


def test_mapping_is_deterministic(demo_bundle):
    lot = sct.datasets.pbmc_reference()[:200].copy()
    a, b = lot.copy(), lot.copy()
    sct.tl.map_to_reference(a, demo_bundle, seed=0)
    sct.tl.map_to_reference(b, demo_bundle, seed=0)
    np.testing.assert_array_equal(a.obsm["X_sct_ref"], b.obsm["X_sct_ref"])
    np.testing.assert_array_equal(a.obs["sct_ref_oor_score"], b.obs["sct_ref_oor_score"])
    np.testing.assert_array_equal(a.obsm["sct_ref_set"], b.obsm["sct_ref_set"])
    # reference cells mapped back sit inside the reference: a local outlier ratio about 1,
    # no expression the reference lacks, and a combined score below the threshold
    assert 0.7 < np.median(a.obs["sct_ref_oor_latent"]) < 1.1
    assert np.median(a.obs["sct_ref_oor_expression"]) == 0
    # 1% expected for cells like the held-out ones; 10 or more of 200 would be p < 1e-4
    assert a.obs["sct_ref_unassigned"].sum() < 10


def test_low_gene_overlap_refused(demo_bundle):
    lot = sct.datasets.pbmc_reference()
    lot = lot[:, : int(0.4 * lot.n_vars)].copy()
    with pytest.raises(sct.InputError, match=r"Only 40% of the reference's 765 genes"):
        sct.tl.map_to_reference(lot, demo_bundle)


def test_partial_gene_overlap_warns_with_missing_markers(demo_bundle):
    lot = sct.datasets.pbmc_reference()
    lot = lot[:, : int(0.7 * lot.n_vars)].copy()
    with pytest.warns(MappingWarning, match="missing marker genes"):
        sct.tl.map_to_reference(lot, demo_bundle)
    assert lot.uns["sct_ref"]["gene_overlap"] == pytest.approx(0.7, abs=0.01)


def test_mouse_genes_refused(demo_bundle):
    lot = sct.datasets.pbmc_reference()
    lot.var_names = [g.capitalize() for g in lot.var_names]
    with pytest.raises(sct.InputError, match="look mouse but reference 'pbmc_demo' is human"):
        sct.tl.map_to_reference(lot, demo_bundle)


def test_label_sets_and_coarse_calls_on_the_real_product(mapped_product):
    """Every cell's conformal set holds its top label; pbmc_demo carries its manifest's lineage
    level, so each cell also has a coarse call and a coarse set, and the level it resolves at."""
    obs = mapped_product.obs
    rec = mapped_product.uns["sct_ref"]
    sets = mapped_product.obsm["sct_ref_set"]
    probs = mapped_product.obsm["sct_ref_probs"]
    assert sets.shape == probs.shape and sets.dtype == bool
    assert sets[np.arange(sets.shape[0]), probs.argmax(axis=1)].all()
    np.testing.assert_array_equal(obs["sct_ref_set_size"], sets.sum(axis=1))
    assert rec["label_sets"]["alpha"] == 0.1
    assert rec["coarse_set_labels"] == ["B cell", "NK cell", "T cell", "myeloid", "progenitor"]
    coarse = dict(zip(rec["labels"], rec["coarse_labels"], strict=True))
    assert coarse["CD8+ Cytotoxic T"] == "T cell" and coarse["Dendritic"] == "myeloid"
    # the coarse probability is the sum of its fine labels'
    t_cols = [i for i, lab in enumerate(rec["labels"]) if coarse[lab] == "T cell"]
    is_t = (obs["sct_ref_label_coarse"] == "T cell").to_numpy()
    np.testing.assert_allclose(obs["sct_ref_prob_coarse"][is_t], probs[is_t][:, t_cols].sum(1))
    # measured: the fine sets of 510 cells (562 on a CPU with other kernels) span T-cell
    # states the 765-gene reference cannot tell apart, but every cell's lineage set is a
    # single lineage
    levels = obs["sct_ref_set_level"].value_counts().to_dict()
    assert levels["mixed"] == 0 and levels["fine"] + levels["coarse"] == 734
    assert levels["fine"] in CPU_SPREAD["fine-level cells"]
    assert int(is_t.sum()) == 704


def test_a_lacking_marker_gene_is_recorded_and_warned_when_the_calibration_reads_it():
    from sc_celltherapy.tl._map import _marker_record

    evidence = {"genes": ["CD8A", "CD4"], "columns": [3, 7]}
    query_cols = np.arange(10)
    query_cols[7] = -1  # the lot lacks CD4
    stacking = {
        "method": "marker-detection stacking",
        "params": {"model_weight": 0.9, "marker_weight": 1.3},
        "marker_evidence": evidence,
    }
    with pytest.warns(MappingWarning, match=r"lacks marker genes \['CD4'\]"):
        rec = _marker_record(stacking, query_cols)
    assert rec == {
        "genes": ["CD8A", "CD4"],
        "lacking_in_lot": ["CD4"],
        "used": True,
        "weights": {"model_weight": 0.9, "marker_weight": 1.3},
    }
    # a calibration that does not read the genes records them, and says nothing
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rec = _marker_record(
            {"method": "vector scaling", "params": {}, "marker_evidence": evidence}, query_cols
        )
    assert rec["lacking_in_lot"] == ["CD4"] and not rec["used"] and rec["weights"] == {}
    # the distance-aware stacking reads them too
    distance = stacking | {
        "method": "distance-aware marker stacking",
        "params": {"model_weight": 0.8, "marker_weight": 1.2, "distance_slope": 2.3},
    }
    with pytest.warns(MappingWarning, match=r"lacks marker genes \['CD4'\]"):
        assert _marker_record(distance, query_cols)["used"]
