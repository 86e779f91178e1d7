"""Release specs: a frozen dataclass that round-trips to YAML and refuses nonsense clearly."""

from __future__ import annotations

import dataclasses

import pytest

from sc_celltherapy.atlas._manifests import _names
from sc_celltherapy.release import Spec, SpecError


def _spec(**kw):
    base = {
        "product": "car_t_demo",
        "target": ("T cells",),
        "min_target_fraction": 0.8,
        "max_impurity": {"off_target": 0.1, "residual_pluripotent": 0.0001},
        "max_identity_fraction": {"B-lineage cells": 0.01},
    }
    return Spec(**(base | kw))


def test_yaml_round_trip(tmp_path):
    spec = _spec(transgene_features=("CAT_scFv",), note="lot release v2")
    assert Spec.from_yaml(spec.to_yaml()) == spec
    path = tmp_path / "spec.yaml"
    spec.to_yaml(path)
    assert Spec.from_yaml(path) == spec
    assert Spec.from_yaml(str(path)) == spec


def test_frozen_and_independent_of_the_callers_dicts():
    limits = {"off_target": 0.1}
    spec = _spec(max_impurity=limits)
    limits["off_target"] = 0.9
    assert spec.max_impurity["off_target"] == 0.1
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.min_target_fraction = 0.1


@pytest.mark.parametrize("name", _names("profile"))
def test_every_profile_example_spec_loads(name):
    spec = Spec.from_profile(name)
    assert spec.example and "not a regulatory limit" in spec.note
    assert Spec.from_yaml(spec.to_yaml()) == spec


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"min_target_fraction": 1.2}, r"min_target_fraction = 1.2 is not a fraction in \[0, 1\]"),
        ({"max_impurity": {"off_target": -0.1}}, r"max_impurity\[off_target\] = -0.1"),
        ({"max_identity_fraction": {"B-lineage cells": 2}}, r"max_identity_fraction\[B-lineage"),
        ({"max_impurity": {"bacteria": 0.1}}, r"Unknown impurity class\(es\) \['bacteria'\]"),
        ({"min_target_fraction": 0.9, "max_target_fraction": 0.5}, "is above max_target_fraction"),
        ({"target": ()}, "must name at least one identity"),
        ({"min_target_fraction": float("nan")}, "not a fraction"),
    ],
)
def test_invalid_specs_refused(kwargs, match):
    with pytest.raises(SpecError, match=match):
        _spec(**kwargs)


def test_unknown_identity_named():
    spec = _spec(max_identity_fraction={"Martian cells": 0.01})
    with pytest.raises(SpecError, match=r"identities \['Martian cells'\] that the reference"):
        spec.check_identities({"T cells", "B-lineage cells"}, where="the reference")


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("product: x\ntarget: [a\n", "is not valid YAML"),
        ("- just\n- a list\n", "must be a mapping"),
        ("product: x\ntarget: [a]\ncolour: blue\n", r"unknown spec field\(s\) \['colour'\]"),
        ("target: [a]\nmin_target_fraction: 0.5\n", r"lacks required field\(s\) \['product'\]"),
        ("product: x\ntarget: [a]\nmax_impurity: 0.1\n", "max_impurity must map names"),
    ],
)
def test_malformed_yaml_refused(text, match):
    with pytest.raises(SpecError, match=match):
        Spec.from_yaml(text)


def test_missing_spec_file_refused(tmp_path):
    with pytest.raises(SpecError, match="does not exist"):
        Spec.from_yaml(tmp_path / "nope.yaml")


def test_single_names_none_and_yaml_strings_read_as_meant():
    """A scalar transgene feature is one feature, not its characters; ``None`` limits are no
    limits; a quoted 'no' is not false; one-line YAML text is text, not a path."""
    spec = Spec(product="p", target="T cells", transgene_features="CAT_scFv", max_impurity=None)
    assert spec.transgene_features == ("CAT_scFv",) and spec.target == ("T cells",)
    assert spec.max_impurity == {}
    with pytest.raises(SpecError, match="example must be true or false, got 'no'"):
        Spec.from_yaml("product: p\ntarget: [T cells]\nexample: 'no'\n")
    with pytest.raises(SpecError, match="max_impurity must map names to fractions"):
        Spec(product="p", target="T cells", max_impurity=0.1)
    one_line = Spec.from_yaml("{product: p, target: [T cells], min_target_fraction: 0.8}")
    assert one_line.min_target_fraction == 0.8
    with pytest.raises(SpecError, match="Spec file missing.yaml does not exist"):
        Spec.from_yaml("missing.yaml")


def test_chain_of_identity_fields_round_trip_and_leave_older_specs_unchanged():
    spec = Spec(product="p", target="T cells", expected_sex="male", single_donor=True)
    assert Spec.from_yaml(spec.to_yaml()) == spec
    with pytest.raises(SpecError, match="expected_sex must be 'female', 'male' or null"):
        Spec.from_yaml("product: p\ntarget: [T cells]\nexpected_sex: M\n")
    with pytest.raises(SpecError, match="single_donor must be true, false or null"):
        Spec(product="p", target="T cells", single_donor="yes")
    # a spec that states neither is written as before, so its hash does not move
    assert "expected_sex" not in Spec(product="p", target="T cells").to_yaml()


def test_spec_schema_holds_every_shipped_example_and_refuses_what_the_dataclass_allows():
    """The JSON Schema ships with the package: every profile's example spec, written out,
    validates; a value the dataclass lets through (a numeric note) is refused by it, naming the
    field."""
    import jsonschema

    from sc_celltherapy._spec import spec_schema

    schema = spec_schema()
    assert schema["$id"] == "sc_celltherapy.release.spec/1"
    for name in _names("profile"):
        jsonschema.validate(Spec.from_profile(name).to_dict(), schema)
    with pytest.raises(SpecError, match="field note: 5 is not of type 'string'"):
        Spec.from_yaml("product: p\ntarget: [T]\nnote: 5\n")
