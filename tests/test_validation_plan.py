"""Validation plans (issue 24 item 1): the shipped examples load, a plan that cannot be run is
refused with the field named, before any cell is read."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

import sc_celltherapy as sct
from sc_celltherapy.validation import PlanError, load_plan

REPO = Path(__file__).resolve().parents[1]
PLANS = REPO / "reference_atlases" / "validation_plans"
PROFILES = ["car_t_demo", "da_progenitor", "msc", "ipsc_nk_t_car", "hepatocyte_like"]


def test_every_profile_has_an_example_plan_that_loads():
    for name in PROFILES:
        plan = load_plan(PLANS / f"{name}.yaml", check_files=False)
        assert plan.content["example"] is True
        assert plan.content["product"] == name


def test_car_t_example_plan_on_the_real_data(shared_data, tmp_path, monkeypatch):
    """The CAR-T example names real files of ../shared/data; loaded from a directory where
    they exist, every file is found and each impurity gets its spec limit."""
    data = yaml.safe_load((PLANS / "car_t_demo.yaml").read_text())
    for material in [data["base"], *(i["material"] for i in data["impurities"])]:
        material["file"] = str(shared_data / Path(material["file"]).name)
    plan = load_plan(data)
    assert plan.limits == {
        "off_target": 0.2,
        "off_target: B-lineage cells": 0.01,
        "residual_pluripotent": None,
    }
    # a CAR-T spec sets no residual-pluripotent limit: recorded, not silently judged
    assert len(plan.warnings) == 1 and "residual_pluripotent" in plan.warnings[0]
    assert repr(plan).startswith(
        "ValidationPlan 'car_t_demo_example' (plan): 3 impurities x 6 levels x 5 replicates "
        "+ 10 blanks = 100 mixtures of 2000 cells"
    )
    assert len(plan.sha256) == 64
    # naming an identity the spec does not limit on its own is said, not silently judged
    data["impurities"][0]["identity"] = "monocytes"
    notes = load_plan(data).warnings
    assert len(notes) == 2
    assert "limits 'off_target' as a class, not 'monocytes' alone" in notes[1]


@pytest.fixture
def plan_dict():
    return yaml.safe_load((PLANS / "msc.yaml").read_text())


def _refused(data, **kwargs) -> str:
    with pytest.raises(PlanError) as err:
        load_plan(data, **kwargs)
    return str(err.value)


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda d: d.pop("acceptance"), "'acceptance' is a required property"),
        (lambda d: d.update(levels=[0.01, 1.5, 2]), "field levels/1"),
        (lambda d: d.update(levels=[0.05, 0.01, 0.02]), "field levels: [0.05, 0.01, 0.02] must increase"),
        (lambda d: d["impurities"][1].update({"class": "doublets"}), "field impurities/1/class"),
        (lambda d: d["robustness"].update(temperature=[37]), "field robustness"),
        (lambda d: d["acceptance"].update(slope={"min": 1.1, "max": 0.9}), "field acceptance/slope: min 1.1 exceeds max 0.9"),
        (lambda d: d["impurities"][1].update(identity="neurons"), "field impurities/1/identity: 'neurons' is not an identity of profile 'msc'"),
        (lambda d: d["impurities"][1].update({"class": "residual_pluripotent"}), "'haematopoietic cells' is of class 'off_target' in the profile"),
        (lambda d: d["impurities"].append(copy.deepcopy(d["impurities"][2])), "['off_target: endothelial cells'] listed more than once"),
        (lambda d: d["base"].update(select={"markers": {"positive": ["A"]}, "obs": {"column": "c", "values": ["v"]}}), "field base/select"),
        (lambda d: d.update(product="no_such_product"), "No profile manifest 'no_such_product'"),
        (lambda d: d.update(spec="missing_spec.yaml"), "missing_spec.yaml"),
    ],
)  # fmt: skip
def test_a_plan_that_cannot_run_is_refused_naming_the_field(plan_dict, edit, named):
    edit(plan_dict)
    assert named in _refused(plan_dict, check_files=False)


def test_missing_material_files_are_named(plan_dict, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    message = _refused(plan_dict)
    assert (
        "field base/file: file 'data/qualified_lots/MSC-qualified.h5ad' does not exist" in message
    )
    assert "field impurities/2/material/file: file 'data/materials/huvec.h5ad'" in message


def test_plan_file_errors(tmp_path):
    assert "does not exist" in _refused(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n- not a plan\n")
    assert "a plan is a YAML mapping" in _refused(bad)


def test_plan_schema_is_shipped_and_named():
    assert sct.validation.plan_schema()["$id"] == "sc_celltherapy.validation.plan/1"
