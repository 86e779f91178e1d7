"""Reference bundles: built, locked by hashes, refused when tampered with or incompatible."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import sc_celltherapy as sct
from cpu_spread import CPU_SPREAD
from sc_celltherapy.atlas import BundleError
from sc_celltherapy.atlas._calibration import _fit_temperature, apply_temperature
from sc_celltherapy.atlas._calibration_error import expected_calibration_error
from sc_celltherapy.atlas._folds import calibration_folds
from sc_celltherapy.atlas._novelty import oor_threshold
from sc_celltherapy.atlas._store import manifest_digest


def test_demo_bundle_contents(demo_bundle):
    m = demo_bundle.manifest
    assert m["name"] == "pbmc_demo" and len(m["genes"]) == 765
    assert sum(m["labels"].values()) == 700 and len(m["labels"]) == 10
    assert set(m["versions"]) >= {"sc_celltherapy", "scvi-tools", "torch"}
    cal = m["calibration"]
    # one reference batch: calibration is within-donor only, and the bundle says so; the
    # held-out cells still go through surgery, as every lot does
    assert cal["across_donors"] is False and "One batch" in cal["note"]
    assert cal["folds"]["mapped_by"] == "scArches surgery (as a new batch)"
    assert cal["folds"]["held_out"] == {"half 1": 71, "half 2": 71}
    # measured: the method nested validation chose, and the error and label-set coverage of
    # each half measured with a calibration fitted on the other half (71 cells: the ECE moves
    # with the CPU's kernels, 0.1486 or 0.1199)
    assert cal["method"] == "vector scaling"
    assert cal["ece_worst_donor"] in CPU_SPREAD["demo ECE, worst half"]
    assert cal["conformal"]["alpha"] == 0.1
    # each half's sets use the other half's quantile alone: 71 cells are a noisy quantile
    assert cal["conformal"]["coverage_worst_donor"] == pytest.approx(0.8169, abs=0.001)
    # 142 held-out cells (20% of each label, rounded): the conformal rank is the 142nd of 142,
    # which guarantees 1/143
    assert m["oor"]["method"].startswith("larger of the latent local outlier ratio")
    assert m["oor"]["n_held_out_cells"] == m["n_cells"]["held_out"] == 142
    assert m["oor"]["fpr_bound"] == pytest.approx(1 / 143)
    assert m["oor"]["scales"]["expression"] == 0.01  # the floor: held-out cells have ~no excess
    # the demo reference is one model (its manifest keeps the first-use build short)
    assert m["model"]["n_members"] == 1 and m["model"]["member_seeds"] == [0]
    assert set(m["files"]) == {
        "models/0/model.pt",
        "reference_latent.npz",
        "expression_levels.npz",
        "held_out_predictions.npz",
    }
    assert all(len(h) == 64 for h in m["files"].values())
    # the predictions the calibration was fitted on travel with it, so a method can be
    # re-fitted and compared without retraining (benchmarks/label_sets.py)
    held = demo_bundle.held_out_predictions()
    assert held["probs"].shape == (142, 10) and held["y"].shape == (142,)
    assert sorted(set(held["donors"])) == ["half 1", "half 2"]
    assert held["oor_latent"].shape == held["oor_expression"].shape == (142,)
    # about 14 held-out cells per label: too few for a label's own threshold, so every label
    # keeps the per-donor one, and the bundle says so
    conformal = cal["conformal"]
    assert conformal["labels_without_own_threshold"] == list(range(10))
    assert conformal["qhat_per_label"] == [conformal["qhat"]] * 10
    latent, labels, spacing = demo_bundle.reference_latent()
    assert latent.shape == (1, 700, 10) and labels.shape == (700,)
    assert spacing.shape == (1, 700)
    genes, ids, levels = demo_bundle.expression_levels()
    assert genes.size == levels.size == m["oor"]["n_expression_genes"] == 760  # 5 RP genes out
    assert ids is None


def test_calibration_folds_hold_out_whole_batches():
    import pandas as pd

    sizes = {"d1": 400, "d2": 150, "d3": 250, "d4": 200, "d5": 90, "d6": 60, "d7": 50}
    obs = pd.DataFrame(
        {"batch": np.repeat(list(sizes), list(sizes.values())), "label": np.tile(["a", "b"], 600)}
    )
    for seed in range(3):
        folds, donors = calibration_folds(obs, "label", "batch", 0.2, seed)
        assert len(folds) == 5  # at most five folds, however many batches
        assert (np.sum(folds, axis=0) == 1).all()  # every cell held out exactly once
        for held in folds:  # whole batches, and never every batch
            assert set(obs["batch"][held]).isdisjoint(obs["batch"][~held])
        np.testing.assert_array_equal(donors, obs["batch"].to_numpy())
        # dealt largest first into the emptiest fold: sizes stay close (ideal 240 each)
        assert max(f.sum() for f in folds) <= 400 and min(f.sum() for f in folds) >= 150
    two = obs[obs["batch"].isin(["d1", "d2"])]
    folds, _ = calibration_folds(two, "label", "batch", 0.2, 0)
    assert [f.sum() for f in folds] == [400, 150]
    folds, donors = calibration_folds(obs, "label", None, 0.2, 0)
    assert len(folds) == 1 and folds[0].mean() == pytest.approx(0.2)
    assert obs["label"][folds[0]].value_counts().to_dict() == {"a": 120, "b": 120}
    assert set(donors[folds[0]]) == {"half 1", "half 2"} and set(donors[~folds[0]]) == {""}


def test_cached_demo_loads_without_rebuilding(demo_bundle):
    again = sct.atlas.load("pbmc_demo")
    assert again.path == demo_bundle.path and again.sha256 == demo_bundle.sha256
    assert "pbmc_demo" in set(sct.atlas.list()["name"])


@pytest.fixture
def bundle_copy(demo_bundle, tmp_path):
    path = tmp_path / "bundle"
    shutil.copytree(demo_bundle.path, path)
    return path


def test_changed_file_refused(bundle_copy):
    with open(bundle_copy / "reference_latent.npz", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(BundleError, match="'reference_latent.npz' has changed"):
        sct.atlas.load(bundle_copy)


def test_missing_file_refused(bundle_copy):
    (bundle_copy / "models" / "0" / "model.pt").unlink()
    with pytest.raises(BundleError, match=r"missing file\(s\) \['models/0/model.pt'\]"):
        sct.atlas.load(bundle_copy)


def test_extra_file_refused(bundle_copy):
    (bundle_copy / "notes.txt").write_text("added later")
    with pytest.raises(BundleError, match=r"not in its manifest: \['notes.txt'\]"):
        sct.atlas.load(bundle_copy)


def test_edited_manifest_refused(bundle_copy):
    m = json.loads((bundle_copy / "bundle.json").read_text())
    m["calibration"]["temperature"] = 0.1
    (bundle_copy / "bundle.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="bundle.json has been edited"):
        sct.atlas.load(bundle_copy)


def test_incompatible_scvi_version_refused(bundle_copy):
    m = json.loads((bundle_copy / "bundle.json").read_text())
    m["versions"]["scvi-tools"] = "2.0.0"
    m["manifest_sha256"] = manifest_digest(m)  # as if genuinely built with scvi-tools 2.0
    (bundle_copy / "bundle.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="built with scvi-tools 2.0.0"):
        sct.atlas.load(bundle_copy)


def test_unknown_bundle_name():
    with pytest.raises(BundleError, match="No reference bundle 'nonexistent'"):
        sct.atlas.load("nonexistent")


def test_build_refuses_existing_dir_and_bad_labels(tmp_path):
    ref = sct.datasets.pbmc_reference()
    (tmp_path / "exists").mkdir()
    with pytest.raises(BundleError, match="never overwritten"):
        sct.atlas.build(
            ref, labels_key="cell_type", name="x", version="1", out_dir=tmp_path / "exists"
        )
    with pytest.raises(sct.InputError, match="labels_key 'celltype' not found"):
        sct.atlas.build(ref, labels_key="celltype", name="x", version="1", out_dir=tmp_path / "b")
    with pytest.raises(sct.InputError, match="n_members must be an integer from 1 to 10, got 0"):
        sct.atlas.build(
            ref, labels_key="cell_type", name="x", version="1", out_dir=tmp_path / "b", n_members=0
        )
    assert not (tmp_path / "b").exists()


def test_temperature_scaling_fixes_overconfidence():
    """Known truth: probabilities sharpened by T=3 are recovered by fitting T ~ 1/3."""
    rng = np.random.default_rng(0)
    n, k = 4000, 4
    true_p = rng.dirichlet(np.ones(k) * 0.7, n)
    y = np.array([rng.choice(k, p=p) for p in true_p])
    overconfident = apply_temperature(true_p, 1 / 3)
    fitted = _fit_temperature(overconfident, y)["temperature"]
    assert fitted == pytest.approx(3.0, rel=0.15)
    assert expected_calibration_error(overconfident, y) > 0.1
    assert expected_calibration_error(apply_temperature(overconfident, fitted), y) < 0.03
    assert expected_calibration_error(true_p, y) < 0.03


def test_conformal_oor_threshold_keeps_its_false_positive_bound():
    """Known truth: reference scores and new in-reference cells from one distribution. Over many
    draws of 150 held-out cells, new cells above the threshold stay at or under the 1% bound
    (exact mean: 1/151), where the plain 99th percentile lets through more than 1%."""
    rng = np.random.default_rng(0)
    conformal, plain = [], []
    for _ in range(2000):
        held, new = rng.lognormal(size=150), rng.lognormal(size=2000)
        threshold, bound = oor_threshold(held, 0.99)
        conformal.append(np.mean(new > threshold))
        plain.append(np.mean(new > np.quantile(held, 0.99)))
    assert bound == pytest.approx(1 / 151)
    assert np.mean(conformal) == pytest.approx(1 / 151, abs=0.001)
    assert np.mean(plain) > 0.011
    # enough cells for the level: rank ceil(1001 * 0.99) = 991 of 1000, bound 10/1001 <= 1%
    scores = np.arange(1, 1001, dtype=float)
    assert oor_threshold(scores, 0.99) == (991.0, pytest.approx(10 / 1001))
    with pytest.raises(sct.InputError, match="No held-out reference cell"):
        oor_threshold(np.array([]), 0.99)


def test_ensemble_bundle_maps_with_every_member(tmp_path):
    """A 2-member bundle (short training, real PBMC cells): each member is its own model with
    its own latent space, and mapping averages them into one score and one probability table."""
    ref = sct.datasets.pbmc_reference()
    bundle = sct.atlas.build(
        ref,
        labels_key="cell_type",
        batch_key="dataset",
        name="ens",
        version="1",
        out_dir=tmp_path / "ens",
        max_epochs=30,
        scanvi_max_epochs=2,
        n_members=2,
        seed=3,
    )
    m = bundle.manifest
    assert m["model"]["n_members"] == 2 and m["model"]["member_seeds"] == [3, 4]
    assert set(m["files"]) == {
        "models/0/model.pt",
        "models/1/model.pt",
        "reference_latent.npz",
        "expression_levels.npz",
        "held_out_predictions.npz",
    }
    latent, _, _ = bundle.reference_latent()
    assert latent.shape == (2, 700, 10) and not np.allclose(latent[0], latent[1])
    lot = ref[:200].copy()
    sct.tl.map_to_reference(lot, bundle)
    rec = lot.uns["sct_ref"]
    assert rec["n_members"] == 2 and "mean over 2 ensemble member(s)" in rec["oor_method"]
    # 100k cell passes shared by two members: 250 epochs each, capped at 50
    assert rec["max_epochs"] == 50
    np.testing.assert_allclose(lot.obsm["sct_ref_probs"].sum(axis=1), 1, atol=1e-6)
    # reference cells mapped back sit inside the reference in both members' spaces
    assert 0.7 < np.median(lot.obs["sct_ref_oor_latent"]) < 1.2
    assert np.median(lot.obs["sct_ref_oor_score"]) < rec["oor_threshold"]
    assert lot.obsm["X_sct_ref"].shape == (200, 10)
