"""QC metrics, low-quality flags and filtering: real CAR-T product and toy truth."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData

import sc_celltherapy as sct
from sc_celltherapy.pp import QCWarning

CRITERIA = ("low_mode", "counts", "genes", "top20", "mt")


def test_cart_product_flags_every_near_empty_barcode(cart_product_qc):
    obs = cart_product_qc.obs
    near_empty = obs["n_genes_by_counts"] < 100
    assert near_empty.mean() == pytest.approx(0.26, abs=0.01)  # the lot's known shape
    assert obs.loc[near_empty, "sct_low_quality"].all()
    flagged = obs["sct_low_quality"].mean()
    assert 0.15 <= flagged <= 0.60, flagged


def test_cart_product_is_detected_as_bimodal(cart_product_qc):
    record = cart_product_qc.uns["sct_low_quality"]
    assert record["bimodal"]["all"] is True
    split = record["thresholds"]["all"]["low_mode_n_genes_below"]
    assert 100 <= split <= 1000
    # the plain recipe (MADs over all barcodes) misses near-empty barcodes: ours catches them
    assert record["n_flagged"]["low_mode"] >= (cart_product_qc.obs["n_genes_by_counts"] < 100).sum()


def test_cart_product_records_thresholds_and_counts(cart_product_qc):
    record = cart_product_qc.uns["sct_low_quality"]
    th = record["thresholds"]["all"]
    for key in ("total_counts", "n_genes_by_counts", "pct_counts_in_top_20_genes", "pct_counts_mt"):
        lo, hi = th[key]
        assert lo < hi
    assert th["n_genes_by_counts"][0] >= 200  # the absolute floor is part of the threshold
    for criterion in CRITERIA:
        column = f"sct_low_quality_{criterion}"
        assert record["n_flagged"][criterion] == int(cart_product_qc.obs[column].sum())
    any_flag = np.logical_or.reduce([cart_product_qc.obs[f"sct_low_quality_{c}"] for c in CRITERIA])
    assert (any_flag == cart_product_qc.obs["sct_low_quality"]).all()


def test_qc_metrics_columns(cart_product_qc):
    obs = cart_product_qc.obs
    for column in (
        "total_counts",
        "n_genes_by_counts",
        "pct_counts_mt",
        "pct_counts_ribo",
        "pct_counts_hb",
        "pct_counts_in_top_20_genes",
        "log1p_total_counts",
    ):
        assert column in obs
    assert cart_product_qc.uns["sct_qc_metrics"]["n_genes_in_set"]["mt"] == 13
    # pct_mt recomputed independently from the matrix
    X = cart_product_qc.X
    mt = cart_product_qc.var_names.str.startswith("MT-")
    expected = np.asarray(X[:, mt].sum(1)).ravel() / np.asarray(X.sum(1)).ravel() * 100
    np.testing.assert_allclose(obs["pct_counts_mt"], expected, rtol=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_toy_low_quality_recovered(seed):
    adata = sct.datasets.toy_product(n_cells=2000, seed=seed)
    sct.pp.qc_metrics(adata)
    sct.pp.flag_low_quality(adata)
    flagged = adata.obs["sct_low_quality"].to_numpy()
    truth = adata.obs["true_low_quality"].to_numpy()
    recall = (flagged & truth).sum() / truth.sum()
    precision = (flagged & truth).sum() / flagged.sum()
    assert recall >= 0.9, recall
    assert precision >= 0.8, precision


def test_batch_key_fits_thresholds_per_sample():
    a = sct.datasets.toy_product(n_cells=600, seed=0)
    b = sct.datasets.toy_product(n_cells=600, seed=1)
    # sample B sequenced 4x deeper: a shared threshold would be wrong for one of them
    b.X = b.X * 4
    a.obs_names = "A-" + a.obs_names
    b.obs_names = "B-" + b.obs_names
    import anndata as ad

    both = ad.concat({"A": a, "B": b}, label="sample")
    sct.pp.qc_metrics(both, batch_key="sample")
    sct.pp.flag_low_quality(both, batch_key="sample")
    th = both.uns["sct_low_quality"]["thresholds"]
    assert set(th) == {"A", "B"}
    assert th["B"]["total_counts"][0] > 2 * th["A"]["total_counts"][0]
    truth = both.obs["true_low_quality"].to_numpy()
    flagged = both.obs["sct_low_quality"].to_numpy()
    assert (flagged & truth).sum() / truth.sum() >= 0.9


def test_no_mitochondrial_genes_warns_with_species():
    adata = sct.datasets.toy_product(n_cells=200, seed=0)
    adata = adata[:, ~adata.var_names.str.startswith("MT-")].copy()
    with pytest.warns(QCWarning, match="0 mitochondrial genes found with species='human'"):
        sct.pp.qc_metrics(adata)
    assert (adata.obs["pct_counts_mt"] == 0).all()
    sct.pp.flag_low_quality(adata)
    assert adata.uns["sct_low_quality"]["mt_criterion"].startswith("skipped")
    assert not adata.obs["sct_low_quality_mt"].any()


def test_reduced_panel_skips_mitochondrial_criterion():
    """The embedded PBMC panel holds one MT gene: its percentage must not drive QC."""
    ref = sct.datasets.pbmc_reference()
    with pytest.warns(QCWarning, match="1 mitochondrial genes"):
        sct.pp.qc_metrics(ref)
    sct.pp.flag_low_quality(ref)
    assert not ref.obs["sct_low_quality_mt"].any()
    assert ref.obs["sct_low_quality"].mean() < 0.05  # real, already-filtered PBMCs


def test_mouse_genes_with_human_setting_warns():
    adata = sct.datasets.toy_product(n_cells=200, seed=0)
    adata.var_names = [
        g.capitalize() if not g.startswith("MT-") else "mt-" + g[3:].capitalize()
        for g in adata.var_names
    ]
    with pytest.warns(QCWarning, match="species='mouse'"):
        sct.pp.qc_metrics(adata, species="human")
    sct.pp.qc_metrics(adata, species="mouse")
    assert adata.uns["sct_qc_metrics"]["n_genes_in_set"]["mt"] == 13


def test_qc_refuses_log_normalised_counts():
    adata = sct.datasets.toy_product(n_cells=100, seed=0)
    adata.layers["counts"] = adata.X.copy()
    adata.X = np.log1p(adata.X)
    with pytest.raises(sct.InputError, match="log-normalised.*layer='counts'"):
        sct.pp.qc_metrics(adata)
    sct.pp.qc_metrics(adata, layer="counts")


def test_qc_refuses_unknown_batch_key():
    adata = sct.datasets.toy_product(n_cells=100, seed=0)
    with pytest.raises(sct.InputError, match="batch_key 'lane' not found"):
        sct.pp.qc_metrics(adata, batch_key="lane")


def test_remove_flagged_records_and_removes():
    adata = sct.datasets.toy_product(n_cells=800, seed=3)
    sct.pp.flag_low_quality(adata)
    sct.pp.doublets(adata)
    n_before = adata.n_obs
    flagged = (adata.obs["sct_low_quality"] | adata.obs["sct_doublet"]).sum()
    out = sct.pp.remove_flagged(adata, copy=True)
    assert adata.n_obs == n_before  # copy=True leaves the input alone
    assert out.n_obs == n_before - flagged
    rec = out.uns["sct_qc"]
    assert rec["n_cells_before"] == n_before and rec["n_cells_after"] == out.n_obs
    assert rec["n_removed"]["sct_low_quality_mt"] == int(adata.obs["sct_low_quality_mt"].sum())
    assert sct.pp.remove_flagged(adata) is None
    assert adata.n_obs == out.n_obs


def test_remove_flagged_needs_flags():
    adata = sct.datasets.toy_product(n_cells=100, seed=0)
    with pytest.raises(sct.InputError, match="flag_low_quality"):
        sct.pp.remove_flagged(adata)


def test_remove_flagged_refuses_to_remove_everything():
    adata = AnnData(
        X=np.ones((5, 3), dtype=np.float32),
        obs=pd.DataFrame({"sct_low_quality": [True] * 5}, index=list("abcde")),
    )
    with pytest.raises(sct.InputError, match="remove all 5 cells"):
        sct.pp.remove_flagged(adata)
    assert adata.n_obs == 5


def test_qc_steps_are_safe_to_rerun():
    """Re-running a cell in a notebook must not silently change the counts a lab signs: a
    second filter is a no-op that keeps the first record; refitting QC calls on the filtered
    lot is refused."""
    lot = sct.datasets.toy_product(n_cells=600, seed=3)
    sct.pp.flag_low_quality(lot)
    sct.pp.doublets(lot)
    sct.pp.remove_flagged(lot)
    first = dict(lot.uns["sct_qc"])
    n = lot.n_obs
    assert first["n_cells_before"] == 600 and first["n_cells_after"] == n < 600
    sct.pp.remove_flagged(lot)
    assert lot.n_obs == n and lot.uns["sct_qc"]["n_cells_before"] == 600
    assert lot.uns["sct_qc"]["n_removed"] == first["n_removed"]
    with pytest.raises(
        sct.InputError, match=r"already filtered on 'sct_doublet'.*before sct.pp.remove_flagged"
    ):
        sct.pp.doublets(lot)
    with pytest.raises(sct.InputError, match=r"already filtered on 'sct_low_quality'"):
        sct.pp.flag_low_quality(lot)
    assert lot.uns["sct_qc"]["n_cells_before"] == 600  # nothing changed by the refusals


def test_a_few_deep_cells_do_not_make_the_lot_a_low_mode(shared_data):
    """Twenty real full-length hESC (a million reads each) among 480 real CAR-T cells: their
    genes per cell form a small upper mode. Mode-splitting flagged all 480 real cells as the
    'low mode' (a validation mixture lost 98% of its cells so); the deep cells are now left to
    the MAD criteria."""
    import anndata as ad
    import scipy.sparse as sp

    cart = ad.read_h5ad(shared_data / "cart_labelled_dev.h5ad")[:480].copy()
    hesc = ad.read_h5ad(shared_data / "hesc_h1_and_endothelial_chu2016_100cells.h5ad")
    hesc = hesc[hesc.obs["cell_type"] == "hESC"][:20].copy()
    hesc.X = sp.csr_matrix(np.round(hesc.X.toarray() if sp.issparse(hesc.X) else hesc.X))
    lot = ad.concat({"cart": cart, "hesc": hesc}, join="inner", label="material", index_unique="-")
    sct.pp.qc_metrics(lot)
    sct.pp.flag_low_quality(lot)
    record = lot.uns["sct_low_quality"]
    assert record["bimodal"]["all"] is False
    assert record["n_flagged"]["low_mode"] == 0
    from_cart = (lot.obs["material"] == "cart").to_numpy()
    assert lot.obs["sct_low_quality"].to_numpy()[from_cart].mean() < 0.1
    assert lot.obs["sct_low_quality_counts"].to_numpy()[~from_cart].all()  # MAD: too many counts
