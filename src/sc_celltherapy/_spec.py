"""A release specification: what a lot must meet, as a frozen dataclass that round-trips to YAML."""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._checks import InputError, check_json_schema

# Impurity classes a spec may limit. Fractions are of cells passing QC, except doublets and
# low_quality, which are fractions of all barcodes called cells (before QC removed them).
IMPURITY_CLASSES = (
    "off_target",
    "residual_pluripotent",
    "proliferating",
    "unassigned",
    "ambiguous",
    "doublets",
    "low_quality",
)
_FIELDS = (
    "product",
    "target",
    "min_target_fraction",
    "max_target_fraction",
    "max_impurity",
    "max_identity_fraction",
    "min_positive",
    "max_positive",
    "transgene_features",
    "comparability_margin",
    "expected_sex",
    "single_donor",
    "example",
    "note",
)
# Written only when set, so a spec written before these fields keeps its YAML and its hash.
_OPTIONAL_FIELDS = ("expected_sex", "single_donor")


# The spec's JSON Schema, shipped beside this module; its "$id" names the format.
SPEC_SCHEMA_FILE = Path(__file__).with_name("spec.schema.json")


@functools.cache
def spec_schema() -> dict:
    """The JSON Schema of a release spec (YAML or ``Spec.to_dict()``), read once."""
    import json

    return json.loads(SPEC_SCHEMA_FILE.read_text())


class SpecError(InputError):
    """A release specification is malformed or names something unknown."""


GATE_RULES = ("all", "any")
# The detection rule of marker gates, in the words every output uses.
DETECTION_RULE = (
    "a cell is positive for a gene when at least one count (UMI or read) of it is detected; for a "
    "gate of several genes, rule 'all' needs every gene and 'any' at least one. Transcript "
    "detection is concordance with a flow-cytometry marker, never equivalence: dropout lowers "
    "positive fractions of weakly expressed genes, ambient RNA raises negative ones."
)


@dataclass(frozen=True)
class MarkerGate:
    """One marker gate of a spec: the fraction of cells positive for ``genes`` (``rule``: all
    of them or any of them detected) must be at least, or at most, ``fraction``."""

    genes: tuple[str, ...]
    fraction: float
    rule: str = "all"

    def __post_init__(self) -> None:
        genes = (self.genes,) if isinstance(self.genes, str) else tuple(self.genes)
        object.__setattr__(self, "genes", genes)

    def to_yaml_value(self, name: str) -> float | dict:
        if self.genes == (name,):
            return self.fraction
        return {"genes": list(self.genes), "rule": self.rule, "fraction": self.fraction}

    @classmethod
    def from_value(cls, name: str, value: Any, *, source: str) -> MarkerGate:
        """``GENE: fraction`` or ``name: {genes: [...], rule: all|any, fraction: f}``."""
        if isinstance(value, MarkerGate):
            return value
        if isinstance(value, Mapping):
            unknown = sorted(set(value) - {"genes", "rule", "fraction"})
            if unknown or "genes" not in value or "fraction" not in value:
                msg = (
                    f"{source}: marker gate {name!r} must be a fraction or a mapping with genes, "
                    f"fraction and optionally rule (all / any); got {dict(value)!r}."
                )
                raise SpecError(msg)
            return cls(tuple(value["genes"]), value["fraction"], value.get("rule", "all"))
        return cls((name,), value)


@dataclass(frozen=True)
class Spec:
    """Release specification of a product (the user's; profiles ship only examples).

    Parameters
    ----------
    product
        Product profile name (``reference_atlases/profiles``) or a free product name.
    target
        Target identities: reference labels, or the name of the profile's target.
    min_target_fraction, max_target_fraction
        Acceptable range of the target fraction among cells passing QC.
    max_impurity
        Highest acceptable fraction per impurity class (:data:`IMPURITY_CLASSES`).
    max_identity_fraction
        Highest acceptable fraction of single named identities (off-target or forbidden
        identities of the profile, or reference labels).
    min_positive, max_positive
        Marker gates as release specs write them from flow cytometry (ISCT for MSC: at least
        95% CD73/CD90/CD105-positive, at most 2% CD45-positive): gate name to a
        :class:`MarkerGate`, or in YAML to a fraction (the name is then the gene) or to
        ``{genes, rule, fraction}``. Positive means detected (:data:`DETECTION_RULE`); the
        fractions are transcript concordance, never flow equivalence.
    transgene_features
        Count-matrix features of the transgene (e.g. ``CAT_scFv``); their positive fraction is
        reported as a lower bound.
    comparability_margin
        Equivalence margins of lot-to-lot comparison (:func:`~sc_celltherapy.tl.compare_lots`):
        the largest absolute difference in an identity class's fraction between a new lot and
        the qualified lots that still counts as equivalent, per class name, with ``"default"``
        for the classes not named.
    expected_sex
        The donor's recorded sex (``"female"`` or ``"male"``) for the chain of identity: a lot
        whose cells say otherwise FAILs (:func:`~sc_celltherapy.tl.donor_sex`); a lot without
        XIST or chrY genes, or with too few cells carrying them, is INCONCLUSIVE, never PASS.
        ``None``: not judged (the evidence is still reported).
    single_donor
        ``True`` for an autologous or single-donor product: cells of both sexes above the mix
        limit FAIL the lot as a possible mix of donors. ``None``: not judged.
    example
        True for the example specs shipped with profiles (never a regulatory limit).
    note
        Free text carried into the report.

    Examples
    --------
    >>> from sc_celltherapy.release import Spec
    >>> spec = Spec(product="car_t_demo", target=("T cells",), min_target_fraction=0.8,
    ...             max_impurity={"off_target": 0.2})
    >>> Spec.from_yaml(spec.to_yaml()) == spec
    True
    """

    product: str
    target: tuple[str, ...]
    min_target_fraction: float = 0.0
    max_target_fraction: float = 1.0
    max_impurity: Mapping[str, float] = field(default_factory=dict)
    max_identity_fraction: Mapping[str, float] = field(default_factory=dict)
    min_positive: Mapping[str, MarkerGate] = field(default_factory=dict)
    max_positive: Mapping[str, MarkerGate] = field(default_factory=dict)
    transgene_features: tuple[str, ...] = ()
    comparability_margin: Mapping[str, float] = field(default_factory=dict)
    expected_sex: str | None = None
    single_donor: bool | None = None
    example: bool = False
    note: str = ""

    def __post_init__(self) -> None:
        # copies, so the caller's dicts and lists cannot change a frozen spec afterwards
        # a single name is one name, never its characters; None is "none given"
        for key in ("target", "transgene_features"):
            value = getattr(self, key)
            value = () if value is None else (value,) if isinstance(value, str) else tuple(value)
            object.__setattr__(self, key, value)
        for key in ("max_impurity", "max_identity_fraction", "comparability_margin"):
            value = getattr(self, key)
            if value is not None and not isinstance(value, Mapping):
                msg = f"Spec.{key} must map names to fractions, got {value!r}."
                raise SpecError(msg)
            object.__setattr__(self, key, dict(value or {}))
        if not isinstance(self.example, bool):
            msg = (
                f"Spec.example must be true or false, got {self.example!r} (a YAML string such "
                "as 'no' in quotes is not false)."
            )
            raise SpecError(msg)
        for key in ("min_positive", "max_positive"):
            gates = getattr(self, key) or {}
            if not isinstance(gates, Mapping):
                raise SpecError(f"Spec.{key} must map gate names to gates, got {gates!r}.")
            source = f"Spec.{key}"
            object.__setattr__(
                self,
                key,
                {str(k): MarkerGate.from_value(str(k), v, source=source) for k, v in gates.items()},
            )
        self._check()

    def _check(self) -> None:
        if not isinstance(self.product, str) or not self.product:
            raise SpecError("Spec.product must be a non-empty string (the product's name).")
        if not self.target or not all(isinstance(t, str) and t for t in self.target):
            msg = f"Spec.target must name at least one identity, got {self.target!r}."
            raise SpecError(msg)
        unknown = sorted(set(self.max_impurity) - set(IMPURITY_CLASSES))
        if unknown:
            msg = (
                f"Unknown impurity class(es) {unknown} in max_impurity; "
                f"known classes: {list(IMPURITY_CLASSES)}."
            )
            raise SpecError(msg)
        limits = {
            "min_target_fraction": self.min_target_fraction,
            "max_target_fraction": self.max_target_fraction,
            **{f"max_impurity[{k}]": v for k, v in self.max_impurity.items()},
            **{f"max_identity_fraction[{k}]": v for k, v in self.max_identity_fraction.items()},
            **{f"comparability_margin[{k}]": v for k, v in self.comparability_margin.items()},
            **{f"min_positive[{k}]": g.fraction for k, g in self.min_positive.items()},
            **{f"max_positive[{k}]": g.fraction for k, g in self.max_positive.items()},
        }
        for key in ("min_positive", "max_positive"):
            for name, gate in getattr(self, key).items():
                if not gate.genes or not all(isinstance(g, str) and g for g in gate.genes):
                    msg = f"Spec {key}[{name}] must name at least one gene, got {gate.genes!r}."
                    raise SpecError(msg)
                if gate.rule not in GATE_RULES:
                    msg = f"Spec {key}[{name}] rule {gate.rule!r} is not one of {GATE_RULES}."
                    raise SpecError(msg)
        for name, value in limits.items():
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            if not ok or math.isnan(value) or not 0 <= value <= 1:
                msg = f"Spec {name} = {value!r} is not a fraction in [0, 1]."
                raise SpecError(msg)
        if self.expected_sex not in (None, "female", "male"):
            msg = f"Spec expected_sex must be 'female', 'male' or null, got {self.expected_sex!r}."
            raise SpecError(msg)
        if self.single_donor not in (None, True, False):
            msg = f"Spec single_donor must be true, false or null, got {self.single_donor!r}."
            raise SpecError(msg)
        if self.min_target_fraction > self.max_target_fraction:
            msg = (
                f"Spec min_target_fraction ({self.min_target_fraction}) is above "
                f"max_target_fraction ({self.max_target_fraction}); no lot could pass."
            )
            raise SpecError(msg)

    # ----------------------------------------------------------------------------------------
    def check_identities(self, known: Iterable[str], *, where: str = "the reference") -> None:
        """Raise :class:`SpecError` if the spec names an identity outside ``known``."""
        known = set(known)
        named = set(self.target) | set(self.max_identity_fraction)
        unknown = sorted(named - known)
        if unknown:
            msg = (
                f"The spec names identities {unknown} that {where} does not know. Known "
                f"identities: {sorted(known)}. Fix the spec's target / max_identity_fraction."
            )
            raise SpecError(msg)

    def to_dict(self) -> dict[str, Any]:
        out = {
            "product": self.product,
            "target": list(self.target),
            "min_target_fraction": self.min_target_fraction,
            "max_target_fraction": self.max_target_fraction,
            "max_impurity": dict(self.max_impurity),
            "max_identity_fraction": dict(self.max_identity_fraction),
            "min_positive": {k: g.to_yaml_value(k) for k, g in self.min_positive.items()},
            "max_positive": {k: g.to_yaml_value(k) for k, g in self.max_positive.items()},
            "transgene_features": list(self.transgene_features),
            "comparability_margin": dict(self.comparability_margin),
            "expected_sex": self.expected_sex,
            "single_donor": self.single_donor,
            "example": self.example,
            "note": self.note,
        }
        return {k: v for k, v in out.items() if k not in _OPTIONAL_FIELDS or v is not None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "spec") -> Spec:
        if not isinstance(data, Mapping):
            msg = f"{source}: a spec must be a mapping of fields, got {type(data).__name__}."
            raise SpecError(msg)
        unknown = sorted(set(data) - set(_FIELDS))
        if unknown:
            msg = f"{source}: unknown spec field(s) {unknown}; fields are {list(_FIELDS)}."
            raise SpecError(msg)
        missing = [f for f in ("product", "target") if f not in data]
        if missing:
            msg = f"{source}: the spec lacks required field(s) {missing}."
            raise SpecError(msg)
        kwargs = dict(data)
        for key in (
            "max_impurity",
            "max_identity_fraction",
            "comparability_margin",
            "min_positive",
            "max_positive",
        ):
            if kwargs.get(key) is None:
                kwargs[key] = {}
            elif not isinstance(kwargs[key], Mapping):
                msg = f"{source}: {key} must map names to fractions, got {kwargs[key]!r}."
                raise SpecError(msg)
        try:
            spec = cls(**kwargs)
        except TypeError as err:
            raise SpecError(f"{source}: {err}") from err
        _check_schema(data, source)  # what the checks above let through, the schema names
        return spec

    def to_yaml(self, path: str | os.PathLike | None = None) -> str:
        """The spec as YAML; written to ``path`` too when given."""
        import yaml

        text = yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_yaml(cls, text_or_path: str | os.PathLike) -> Spec:
        """Read a spec from YAML text or a ``.yaml`` file, with errors that name the problem."""
        import yaml

        source = "spec"
        text = text_or_path
        looks_like_path = (
            isinstance(text_or_path, str)
            and "\n" not in text_or_path
            and (
                Path(text_or_path).suffix.lower() in (".yaml", ".yml")
                or Path(text_or_path).exists()
            )
        )
        if isinstance(text_or_path, os.PathLike) or looks_like_path:
            path = Path(text_or_path)
            if not path.is_file():
                msg = f"Spec file {path} does not exist. Give the path of a spec YAML file."
                raise SpecError(msg)
            source, text = str(path), path.read_text()
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            msg = f"{source} is not valid YAML: {err}. Fix the file's syntax."
            raise SpecError(msg) from err
        return cls.from_dict(data, source=source)

    @classmethod
    def from_profile(cls, profile: str | Mapping) -> Spec:
        """The example spec of a product profile (marked as an example, not a limit)."""
        from .atlas import load_profile, validate_manifest

        p = (
            load_profile(profile)
            if isinstance(profile, str | os.PathLike)
            else validate_manifest(profile, "profile")
        )
        ex = p["example_spec"]
        return cls(
            product=p["name"],
            target=(p["target"]["name"],),
            min_target_fraction=ex["min_target_fraction"],
            max_impurity=ex["max_impurity"],
            max_identity_fraction={
                d["identity"]: d["max_fraction"] for d in ex.get("max_identity_fraction") or []
            },
            min_positive=ex.get("min_positive") or {},
            max_positive=ex.get("max_positive") or {},
            transgene_features=tuple(t["name"] for t in p.get("transgene_features", [])),
            example=True,
            note=" ".join(ex["note"].split()),
        )


def _check_schema(data: Mapping, source: str) -> None:
    """The shipped JSON Schema, after the checks above have named the common mistakes."""
    check_json_schema(
        data, spec_schema(), source=source, schema_file="spec.schema.json", error=SpecError
    )
