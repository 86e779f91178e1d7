"""Lot-to-lot comparison on generated lots with known composition (and latent) shifts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData

import sc_celltherapy as sct
from sc_celltherapy.release import Spec

BASE = {"target": 0.90, "monocytes": 0.05, "NK cells": 0.03, "unassigned": 0.02}
CENTRES = {name: np.eye(4)[i] * 4 for i, name in enumerate(BASE)}


def _lot(fractions: dict, n: int, seed: int, latent_offset: float = 0.0) -> AnnData:
    """A scored lot: classes drawn at known fractions, a latent point per cell around its class
    centre (shifted by ``latent_offset`` in every dimension)."""
    rng = np.random.default_rng(seed)
    names = list(fractions)
    classes = rng.choice(names, size=n, p=np.array(list(fractions.values())))
    latent = np.array([CENTRES[c] for c in classes]) + rng.normal(size=(n, 4)) + latent_offset
    adata = AnnData(X=np.zeros((n, 1), dtype=np.float32))
    adata.obs["sct_identity_class"] = pd.Categorical(classes)
    adata.obsm["X_sct_ref"] = latent
    return adata


@pytest.fixture(scope="module")
def history():
    return {f"Q{i}": _lot(BASE, 2000, seed=i) for i in range(1, 5)}


def test_no_shift_is_equivalent(history):
    new = _lot(BASE, 2000, seed=99)
    result = sct.tl.compare_lots(new, history)
    assert result.verdict == "equivalent"
    assert set(result.classes["verdict"]) == {"equivalent"}
    row = result.classes.loc["monocytes"]
    assert row["diff_ci_low"] > -0.05 and row["diff_ci_high"] < 0.05
    assert abs(row["history_mean"] - 0.05) < 0.01
    assert result.shift["p_value"] > 0.05  # same latent distribution
    assert new.uns["sct_compare"]["verdict"] == "equivalent"


def test_shift_beyond_margin_is_not_equivalent(history):
    impure = {"target": 0.78, "monocytes": 0.15, "NK cells": 0.05, "unassigned": 0.02}
    new = _lot(impure, 2000, seed=98)
    result = sct.tl.compare_lots(new, history)
    assert result.classes.loc["monocytes", "verdict"] == "not equivalent"
    assert result.classes.loc["target", "verdict"] == "not equivalent"
    assert result.classes.loc["unassigned", "verdict"] == "equivalent"
    assert result.verdict == "not equivalent"
    assert result.classes.loc["monocytes", "difference"] == pytest.approx(0.10, abs=0.02)
    # the composition change moves the lot in the latent space, beyond any qualified lot
    assert result.shift["p_value"] < 0.01
    assert result.shift["energy_distance"] > result.shift["max_within_history"]


def test_latent_shift_alone_is_detected(history):
    new = _lot(BASE, 2000, seed=97, latent_offset=0.5)
    result = sct.tl.compare_lots(new, history)
    assert result.verdict == "equivalent"  # composition unchanged
    assert result.shift["p_value"] < 0.01


def test_tiny_lot_is_inconclusive(history):
    new = _lot(BASE, 30, seed=96)
    result = sct.tl.compare_lots(new, history)
    assert result.classes.loc["target", "verdict"] == "inconclusive"
    assert result.verdict == "inconclusive"


def test_margins_come_from_the_spec(history):
    slightly = {"target": 0.87, "monocytes": 0.08, "NK cells": 0.03, "unassigned": 0.02}
    new = _lot(slightly, 5000, seed=95)
    loose = Spec(product="p", target=("T",), comparability_margin={"default": 0.1})
    tight = Spec(product="p", target=("T",), comparability_margin={"monocytes": 0.01})
    assert sct.tl.compare_lots(new, history, spec=loose).classes.loc["monocytes", "verdict"] == (
        "equivalent"
    )
    assert sct.tl.compare_lots(new, history, spec=tight).classes.loc["monocytes", "verdict"] == (
        "not equivalent"
    )


def test_comparison_is_deterministic(history):
    new = _lot(BASE, 500, seed=94)
    first = sct.tl.compare_lots(new, history, seed=3).to_dict()
    assert sct.tl.compare_lots(new, history, seed=3).to_dict() == first


def test_unscored_lot_is_refused(history):
    with pytest.raises(sct.InputError, match="identity_score"):
        sct.tl.compare_lots(AnnData(X=np.zeros((5, 1))), history)
