"""Foreign lineages caught: the real unsorted marrow sample against a T-cell-only bundle."""

from __future__ import annotations

import sys
from pathlib import Path

import anndata as ad
import pytest

import sc_celltherapy as sct
from cpu_spread import CPU_SPREAD

# the mapping benchmark's definitions of the truth, shared so that the two cannot drift apart
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from mapping import cluster_consistent, marker_truth  # noqa: E402


@pytest.fixture(scope="module")
def t_cell_bundle(shared_data, tmp_path_factory):
    """A one-member bundle of the five dev patients' sorted CAR-T cells (short training: this
    is a test of the out-of-reference evidence, not of label accuracy)."""
    cells = ad.read_h5ad(shared_data / "cart_labelled_dev.h5ad")
    cells.var_names_make_unique()
    cells.obs = cells.obs[["Patient", "CellType1"]].astype(str)
    return sct.atlas.build(
        cells,
        labels_key="CellType1",
        batch_key="Patient",
        name="cart_t",
        version="0",
        out_dir=tmp_path_factory.mktemp("bundles") / "cart_t",
        max_epochs=50,
        scanvi_max_epochs=5,
        n_members=1,
        seed=0,
    )


@pytest.mark.slow
def test_t_cell_bundle_is_calibrated_across_its_donors(t_cell_bundle):
    """Measured on donors left out of both the models and the calibration (deterministic on
    CPU). The study's labels follow CD4 and CD8A detection, which the model's latent space
    smooths away; nested donor validation chooses stacking the model with the detection of
    the two genes the bundle found (NLL 0.767 against 1.198 for the model's own probabilities),
    and the worst donor's error is what the bundle promises, not the pooled one."""
    cal = t_cell_bundle.manifest["calibration"]
    assert cal["across_donors"] and cal["folds"]["n_folds"] == 5
    assert set(cal["per_donor"]) == {"P01", "P02", "P03", "P06", "P13"}
    assert "note" not in cal
    assert cal["method"] == "marker-detection stacking"
    assert cal["marker_evidence"]["genes"] == ["CD8A", "CD4"]
    assert cal["nested_nll"]["marker-detection stacking"] in CPU_SPREAD["T bundle stacking NLL"]
    assert cal["nested_nll"]["none"] == pytest.approx(1.198, abs=0.005)
    # P03 (22% CD4 CTL): about half of its cells right without the evidence (label_sets.py)
    assert cal["per_donor"]["P03"]["accuracy"] == pytest.approx(0.673, abs=0.003)
    assert cal["worst_donor"] == "P03"
    assert cal["ece_worst_donor"] == pytest.approx(0.1113, abs=0.002)  # 0.1643 before
    assert cal["ece_mean_donor"] == pytest.approx(0.1063, abs=0.002)  # 0.1458 before
    # beside each ECE, what perfect calibration reaches by chance on the donor's cells: P03's
    # 0.111 is miscalibration (chance 0.045 on 977 cells), P06's 0.099 is not (0.109 on 137)
    p03, p06 = cal["per_donor"]["P03"], cal["per_donor"]["P06"]
    assert p03["ece_chance_95"] == pytest.approx(0.0450, abs=0.003)
    assert p06["ece_chance_95"] == pytest.approx(0.1093, abs=0.003)
    assert p06["ece"] == pytest.approx(0.0985, abs=0.002)
    # P13's 31 cells are reported but not quoted (fewer than 50)
    assert cal["per_donor"]["P13"]["n_cells"] == 31
    assert cal["conformal"]["coverage_worst_donor"] == pytest.approx(0.8833, abs=0.002)


MARROW = "cart_unsorted_marrow_P01_CAR-T10593344.h5ad"
BLOOD = "cart_unsorted_blood_P02_CAR-T10310324.h5ad"


@pytest.fixture(scope="module")
def mapped_samples(t_cell_bundle, shared_data):
    """The unsorted marrow and blood samples mapped onto the T-cell bundle, with their marker
    truth."""
    out = {}
    for name in (MARROW, BLOOD):
        cells = ad.read_h5ad(shared_data / name)
        cells.var_names_make_unique()
        lot = ad.AnnData(X=cells.X.copy(), var=cells.var.copy())
        lot.obs_names = cells.obs_names
        sct.tl.map_to_reference(lot, t_cell_bundle)
        out[name] = (lot, marker_truth(cells))
    return out


@pytest.mark.slow
def test_foreign_lineages_of_the_real_samples_are_called_out_of_reference(mapped_samples):
    """Monocytes, erythroid and B cells of the unsorted marrow and blood samples against the
    T-cell bundle. The latent ratio alone separates the marrow's foreign cells from its T cells
    at AUROC 0.67-0.68; the expression excess sees their LYZ, S100A8/9 and VCAN. In blood the
    call is clean: every foreign cell caught, 1.3% of T cells unassigned. In marrow 89% are
    caught (86% without the neighbourhood component) and 18% of the marker-defined T cells are
    unassigned (before the ambient bound: 95% and 48%, the T cells carrying the marrow's myeloid
    ambient RNA); most of those 18% sit in myeloid clusters (next test).

    Deterministic on a CPU, not across CPUs: training's floating point follows the CPU's
    kernels. Measured on an AVX-512 Xeon (torch's ``AVX512`` capability); on the CPU the earlier
    figures came from, the same code before the neighbourhood component gave a combined AUROC
    0.001 higher, a latent AUROC of 0.6809 (0.665 here) and the same counts. The tolerances are
    that spread: the figures are pinned to what either CPU gives, no wider."""
    from sklearn.metrics import roc_auc_score

    expected = {
        MARROW: (0.9005, 0.673, 225, 253, 38, 213),
        BLOOD: (0.9995, 0.9033, 47, 47, 10, 766),
    }
    spread = (0.003, 0.02, 2, 0, 2, 0)  # cross-CPU, see above
    for name, want in expected.items():
        lot, truth = mapped_samples[name]
        scored = truth >= 0
        obs = lot.obs
        unassigned = obs["sct_ref_unassigned"].to_numpy()
        got = (
            round(roc_auc_score(truth[scored], obs["sct_ref_oor_score"][scored]), 4),
            round(roc_auc_score(truth[scored], obs["sct_ref_oor_latent"][scored]), 4),
            int(unassigned[truth == 1].sum()),
            int((truth == 1).sum()),
            int(unassigned[truth == 0].sum()),
            int((truth == 0).sum()),
        )
        print(name, got)  # the measured figures, where a run shows them (pytest -s)
        assert got == tuple(pytest.approx(w, abs=d) for w, d in zip(want, spread, strict=True))
        # composition is checked against the five donors, and neither sample is flagged
        assert lot.uns["sct_ref"]["composition"]["checked"]
        assert not lot.uns["sct_ref"]["composition"]["far"]


@pytest.mark.slow
def test_marrow_misses_are_marker_truth_that_its_own_clusters_contradict(mapped_samples):
    """Where the marrow's marker call agrees with its own cluster, the out-of-reference score
    separates foreign from T cells almost perfectly: the AUROC of 0.90 above is bounded by the
    marker truth, not by the score. Measured: 39 of the 213 marker-defined T cells sit in
    myeloid clusters (LYZ, VCAN, MPO; CD3D in 3-5% of their cells), and 26 of the 253 foreign
    ones in T clusters (BCL11B, IL7R, LEF1). The consistent T cells carry 1-3% of their counts in
    myeloid genes, ambient RNA: without the ambient bound 40% of them were unassigned; with it
    0.6%, while 96% of the consistent foreign cells were caught. The neighbourhood component
    (a cell whose lot neighbourhood is mostly out of reference is too) catches 99.1% with 1.1%
    of the T cells (measured on an AVX-512 Xeon; tolerances as in the test above)."""
    from sklearn.metrics import roc_auc_score

    lot, truth = mapped_samples[MARROW]
    clean = cluster_consistent(lot.X, truth)
    scored = clean >= 0
    unassigned = lot.obs["sct_ref_unassigned"].to_numpy()
    score = lot.obs["sct_ref_oor_score"].to_numpy()
    measured = {
        "T cells in foreign clusters": int(((truth == 0) & (clean == -1)).sum()),
        "foreign cells in T clusters": int(((truth == 1) & (clean == -1)).sum()),
        "AUROC": round(roc_auc_score(clean[scored], score[scored]), 4),
        "foreign caught": round(unassigned[clean == 1].mean(), 3),
        "T unassigned": round(unassigned[clean == 0].mean(), 3),
    }
    assert measured == {
        "T cells in foreign clusters": 39,
        "foreign cells in T clusters": 26,
        "AUROC": pytest.approx(0.9982, abs=0.003),
        "foreign caught": pytest.approx(0.991, abs=0.01),
        "T unassigned": pytest.approx(0.011, abs=0.012),
    }
