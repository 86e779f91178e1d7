"""A validation plan: what a laboratory validates before releasing lots of a product (ICH Q2(R2)).

The plan names the base material (cells of the target product free of impurities), one material
per impurity class of the spec, the fraction series and replicates of the spike-in mixtures, the
robustness factors and the acceptance criterion of each parameter. It is a YAML file checked
against a JSON Schema shipped beside this module (``plan.schema.json``, ``$id``
``sc_celltherapy.validation.plan/1``), then against the product's profile and spec, before any
cell is read: a plan that cannot be run is refused with the field named.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .._checks import InputError, check_json_schema
from .._spec import Spec
from ..atlas import load_profile

PLAN_SCHEMA_FILE = Path(__file__).with_name("plan.schema.json")
DEFAULTS = {"seed": 0, "n_cells": 2000, "replicates": 5, "spec": None, "robustness": {}}


class PlanError(InputError):
    """A validation plan that cannot be run: the message names the field and the fix."""


@functools.cache
def plan_schema() -> dict:
    """The JSON Schema of a validation plan, read once."""
    return json.loads(PLAN_SCHEMA_FILE.read_text())


@dataclass(frozen=True)
class ValidationPlan:
    """A checked validation plan (:func:`load_plan`). ``content`` is the plan with defaults
    filled in; ``spec`` the release spec it validates; ``sha256`` the hash of the plan as
    written (the dossier cites it); ``warnings`` what the checks noted without refusing."""

    content: dict[str, Any] = field(repr=False)
    spec: Spec = field(repr=False)
    source: str
    sha256: str
    warnings: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.content["name"]

    @property
    def limits(self) -> dict[str, float | None]:
        """Each impurity's spec limit, keyed ``class`` or ``class: identity``."""
        return {impurity_key(imp): _limit(self.spec, imp) for imp in self.content["impurities"]}

    def __repr__(self) -> str:
        c = self.content
        n_blanks = 2 * c["replicates"]  # the base alone, shared by every impurity
        n_mixtures = len(c["impurities"]) * len(c["levels"]) * c["replicates"] + n_blanks
        return (
            f"ValidationPlan {self.name!r} ({self.source}): {len(c['impurities'])} impurities x "
            f"{len(c['levels'])} levels x {c['replicates']} replicates + {n_blanks} blanks = "
            f"{n_mixtures} "
            f"mixtures of {c['n_cells']} cells; robustness: "
            + (", ".join(c["robustness"]) or "none")
        )


def load_plan(plan: str | os.PathLike | Mapping, *, check_files: bool = True) -> ValidationPlan:
    """Read and check a validation plan.

    Parameters
    ----------
    plan
        Path of the plan's YAML file, or the plan as a dict (checked exactly like a file).
    check_files
        Require every material file to exist (relative paths from the working directory);
        ``False`` checks the plan alone (a shipped example, a plan written before its data).

    Returns
    -------
    The :class:`ValidationPlan`, with defaults filled in.

    Raises
    ------
    PlanError
        Naming the field: a break of the schema, levels not increasing, a range whose minimum
        exceeds its maximum, an identity the profile does not have or of another class, an
        impurity listed twice, a spec or material file that does not exist.
    """
    if isinstance(plan, Mapping):
        text, source = yaml.safe_dump(dict(plan), sort_keys=True), "plan"
        data = dict(plan)
    else:
        path = Path(plan)
        if not path.is_file():
            raise PlanError(f"Validation plan {path} does not exist; check the path.")
        text, source = path.read_text(), str(path)
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise PlanError(f"{source} is not valid YAML: {err}") from err
        if not isinstance(data, dict):
            raise PlanError(f"{source}: a plan is a YAML mapping (schema, name, product, ...).")
    _check_schema(data, source)
    content = {**DEFAULTS, **data}
    problems = _check_consistency(content)
    try:
        spec = Spec.from_yaml(content["spec"]) if content["spec"] else None
        profile = load_profile(content["product"])
        spec = spec or Spec.from_profile(content["product"])
    except InputError as err:
        raise PlanError(f"{source}: {err}") from err
    problems += _check_identities(content, profile)
    if check_files:
        problems += [
            f"{where}: file {m['file']!r} does not exist (relative paths are from {Path.cwd()})"
            for where, m in _materials(content)
            if not Path(m["file"]).exists()
        ]
    if problems:
        raise PlanError(f"{source}: " + "; ".join(problems) + ".")
    notes = tuple(
        f"impurities[{i}] ({impurity_key(imp)}): the spec sets no limit for it, so the limit-relative "
        "criteria (LOD, repeatability at the limit) are reported, not judged"
        for i, imp in enumerate(content["impurities"])
        if _limit(spec, imp) is None
    )
    notes += tuple(
        f"impurities[{i}] ({impurity_key(imp)}): the spec limits {imp['class']!r} as a class, "
        f"not {imp['identity']!r} alone; its recovery counts {imp['identity']!r} calls, its "
        "limit-relative criteria use the class's limit"
        for i, imp in enumerate(content["impurities"])
        if imp.get("identity")
        and imp["identity"] not in spec.max_identity_fraction
        and _limit(spec, imp) is not None
    )
    return ValidationPlan(
        content=content,
        spec=spec,
        source=source,
        sha256=hashlib.sha256(text.encode()).hexdigest(),
        warnings=notes,
    )


def _check_schema(data: Mapping, source: str) -> None:
    check_json_schema(
        data, plan_schema(), source=source, schema_file="plan.schema.json", error=PlanError
    )


def _check_consistency(content: dict) -> list[str]:
    problems = []
    levels = content["levels"]
    if any(b <= a for a, b in zip(levels, levels[1:], strict=False)):
        problems.append(f"field levels: {levels} must increase")
    for name, criterion in content["acceptance"].items():
        lo, hi = criterion.get("min"), criterion.get("max")
        if lo is not None and hi is not None and lo > hi:
            problems.append(f"field acceptance/{name}: min {lo} exceeds max {hi}")
    keys = [impurity_key(imp) for imp in content["impurities"]]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        problems.append(f"field impurities: {repeated} listed more than once")
    return problems


def _check_identities(content: dict, profile: dict) -> list[str]:
    """A named identity must be one of the profile's off-target or forbidden identities, of
    the class the plan says."""
    classes = {i["name"]: i["class"] for i in (*profile["off_target"], *profile["forbidden"])}
    problems = []
    for i, imp in enumerate(content["impurities"]):
        name = imp.get("identity")
        if name is None:
            continue
        if name not in classes:
            problems.append(
                f"field impurities/{i}/identity: {name!r} is not an identity of profile "
                f"{profile['name']!r} (it has {sorted(classes)})"
            )
        elif classes[name] != imp["class"]:
            problems.append(
                f"field impurities/{i}: {name!r} is of class {classes[name]!r} in the profile, "
                f"not {imp['class']!r}"
            )
    return problems


def _materials(content: dict):
    yield "field base/file", content["base"]
    for i, imp in enumerate(content["impurities"]):
        yield f"field impurities/{i}/material/file", imp["material"]


def impurity_key(impurity: Mapping) -> str:
    return impurity["class"] + (f": {impurity['identity']}" if impurity.get("identity") else "")


def _limit(spec: Spec, impurity: Mapping) -> float | None:
    """The spec's limit the impurity is judged against: the named identity's own limit when
    the spec sets one, else its class's."""
    name = impurity.get("identity")
    if name and name in spec.max_identity_fraction:
        return spec.max_identity_fraction[name]
    return spec.max_impurity.get(impurity["class"])
