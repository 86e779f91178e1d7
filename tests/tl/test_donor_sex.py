"""Chain of identity: the donor's sex read from the real CAR-T patients' cells."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest

import sc_celltherapy as sct
from sc_celltherapy.tl._donor_sex import MALE_GENES, judge_donor


@pytest.fixture(scope="module")
def patients(shared_data):
    cells = ad.read_h5ad(shared_data / "cart_labelled_dev.h5ad")
    cells.var_names_make_unique()
    return {p: cells[cells.obs["Patient"] == p].copy() for p in ("P01", "P02", "P03", "P13")}


def test_each_patients_sex_is_read_from_the_cells(patients):
    """P01 and P02 are male, P03 female (measured): not one cell of the other sex. P13's 31
    cells hold 19 with XIST, fewer than the 20 a call needs."""
    calls = {p: sct.tl.donor_sex(lot) for p, lot in patients.items()}
    assert {p: c["call"] for p, c in calls.items()} == {
        "P01": "male",
        "P02": "male",
        "P03": "female",
        "P13": "not assessable",
    }
    assert calls["P01"]["n"] == {"female": 0, "male": 393, "both": 0, "none": 25}
    assert calls["P03"]["n"] == {"female": 629, "male": 0, "both": 0, "none": 349}
    assert calls["P13"]["n"]["female"] == 19 and calls["P13"]["n"]["male"] == 0
    assert calls["P01"]["ci_low"] == pytest.approx(0.9903, abs=1e-4)  # Wilson, k = n = 393
    lot = patients["P03"]
    assert lot.obs["sct_sex"].value_counts()["female"] == 629


def test_a_swapped_lot_fails_and_the_right_one_passes(patients):
    record = sct.tl.donor_sex(patients["P01"])
    swapped = judge_donor(record, expected_sex="female", single_donor=True)
    assert swapped["verdict"] == "FAIL" and "the record says female" in swapped["reason"]
    right = judge_donor(record, expected_sex="male", single_donor=True)
    assert right["verdict"] == "PASS"
    assert judge_donor(record, expected_sex=None, single_donor=None)["verdict"] is None


def test_two_donors_in_one_lot_are_flagged_as_a_possible_mix(patients):
    """P01 (male) pooled with P03 (female): 393 male and 629 female cells."""
    mix = ad.concat([patients["P01"], patients["P03"]])
    record = sct.tl.donor_sex(mix)
    assert record["call"] == "mixed" and record["majority"] == "female"
    assert record["minority_fraction"] == pytest.approx(393 / 1022)
    judged = judge_donor(record, expected_sex="female", single_donor=True)
    assert judged["verdict"] == "FAIL" and "possible mix of two donors" in judged["reason"]
    # a few cells of another donor stay under the mix limit: 6 female cells in 393 male ones
    few = ad.concat([patients["P01"], patients["P03"][:20].copy()])
    small = sct.tl.donor_sex(few)
    assert small["n"]["female"] == 6 and small["call"] == "male"
    assert small["minority_ci_low"] == pytest.approx(0.0069, abs=1e-4)


def test_without_chrY_genes_or_evidence_the_lot_is_never_passed(patients):
    lot = patients["P01"]
    no_y = lot[:, ~lot.var_names.isin(MALE_GENES)].copy()
    record = sct.tl.donor_sex(no_y)
    assert record["call"] == "not assessable" and "every chrY gene" in record["reason"]
    judged = judge_donor(record, expected_sex="male", single_donor=None)
    assert judged["verdict"] == "INCONCLUSIVE"
    tiny = sct.tl.donor_sex(lot[:15].copy())
    assert tiny["call"] == "not assessable" and "only 15 cells" in tiny["reason"]
    # a spec that states nothing judges nothing, whatever the evidence
    assert judge_donor(record, expected_sex=None, single_donor=None)["verdict"] is None
    assert np.array_equal(no_y.obs["sct_sex"].cat.categories, ["female", "male", "both", "none"])
