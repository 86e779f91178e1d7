"""Atlas manifests and product profiles: the YAML files under ``reference_atlases/``.

Each file is validated against its JSON Schema (``reference_atlases/schemas/``) and then
cross-checked: file name equals ``name``, a profile's atlas exists, its reference labels are
labels of that atlas, a derived label maps each value once, and so on. Errors name the file, the
JSON path of the failing field and what the field expects.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from .._checks import InputError
from .._logging import logger

Kind = Literal["atlas", "profile"]
KINDS: dict[str, str] = {"atlas": "atlases", "profile": "profiles"}
_PACKAGE_ROOT = Path(__file__).resolve().parents[1]


class ManifestError(InputError):
    """An atlas manifest or product profile is missing, malformed or inconsistent."""


def manifests_dir() -> Path:
    """Folder holding ``atlases/``, ``profiles/`` and ``schemas/``.

    Returns
    -------
    ``sc_celltherapy/reference_atlases`` inside an installed wheel, else ``reference_atlases``
    at the root of a source checkout (editable installs).
    """
    installed = _PACKAGE_ROOT / "reference_atlases"
    if (installed / "schemas").is_dir():
        return installed
    checkout = _PACKAGE_ROOT.parents[1] / "reference_atlases"
    if (checkout / "schemas").is_dir():
        return checkout
    msg = (
        f"No reference_atlases folder found (looked in {installed} and {checkout}). "
        "Reinstall sc-celltherapy: the wheel ships it as sc_celltherapy/reference_atlases."
    )
    raise ManifestError(msg)


def _files(kind: Kind) -> list[Path]:
    folder = manifests_dir() / KINDS[kind]
    return sorted(folder.glob("*.yaml")) if folder.is_dir() else []


def _names(kind: Kind) -> list[str]:
    return [p.stem for p in _files(kind)]


# --------------------------------------------------------------------------------------------
# YAML reading
# --------------------------------------------------------------------------------------------


def _yaml_loader():
    import yaml

    class _StrictLoader(yaml.SafeLoader):
        """SafeLoader that refuses duplicate keys (PyYAML silently keeps the last one)."""

    def _mapping(loader, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            if key in seen:
                msg = f"duplicate key {key!r} (line {key_node.start_mark.line + 1})"
                raise yaml.constructor.ConstructorError(None, None, msg, key_node.start_mark)
            seen.add(key)
        return loader.construct_mapping(node, deep=deep)

    _StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)
    return _StrictLoader


def _read_yaml(path: Path) -> Any:
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        msg = f"Cannot read {path}: {err}."
        raise ManifestError(msg) from err
    try:
        return yaml.load(text, Loader=_yaml_loader())  # a SafeLoader subclass
    except yaml.YAMLError as err:
        msg = f"{path} is not valid YAML: {err}. Fix the syntax and validate again."
        raise ManifestError(msg) from err


@lru_cache(maxsize=4)
def _schema(kind: Kind, folder: str) -> dict:
    path = Path(folder) / "schemas" / f"{kind}.schema.yaml"
    schema = _read_yaml(path)
    from jsonschema import Draft202012Validator

    Draft202012Validator.check_schema(schema)  # a broken schema is our bug, not the user's
    return schema


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------


def _schema_error_message(error, source: str, kind: str) -> str:
    """One readable sentence: where, what is wrong, what the field expects."""
    where = error.json_path
    what = error.message
    hint = ""
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        hint = f" Allowed keys here: {allowed}."
    elif error.validator == "required":
        missing = re.findall(r"'([^']+)' is a required property", what)
        props = error.schema.get("properties", {})
        if missing and missing[0] in props:
            hint = f" {missing[0]}: {props[missing[0]].get('description', '').strip()}"
        elif error.schema.get("description"):  # e.g. the 'then' of a conditional requirement
            hint = f" Rule: {error.schema['description'].strip()}"
    else:
        desc = error.schema.get("description") if isinstance(error.schema, dict) else None
        if desc:
            hint = f" Expected: {desc.strip()}"
    return f"{source}: invalid {kind} at {where}: {what}.{hint}"


def _schema_check(data: Any, kind: Kind, source: str) -> None:
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import best_match

    validator = Draft202012Validator(_schema(kind, str(manifests_dir())))
    error = best_match(validator.iter_errors(data))
    if error is not None:
        raise ManifestError(_schema_error_message(error, source, kind))


def _fail(source: str, where: str, what: str) -> None:
    msg = f"{source}: invalid manifest at {where}: {what}"
    raise ManifestError(msg)


def _check_atlas(m: dict, source: str) -> None:
    source_files = [] if m["source"] == "embedded" else m["source"]
    filenames = [f["filename"] for f in source_files]
    if len(set(filenames)) != len(filenames):
        _fail(source, "$.source", f"filenames must be unique, got {filenames}.")
    build = m["build"]
    reader = build["reader"]
    if (reader == "embedded") != (m["source"] == "embedded"):
        _fail(
            source,
            "$.build.reader",
            f"reader {reader!r} with source {m['source'] if reader != 'embedded' else 'files'}: "
            "use reader 'embedded' exactly when source is 'embedded'.",
        )
    if reader == "embedded":
        func = build.get("function", "")
        if not func.startswith("sc_celltherapy."):
            # A manifest is data: it may only name functions of this package, never run
            # arbitrary code.
            _fail(
                source,
                "$.build.function",
                f"{func!r}: an embedded reader must name a function of sc_celltherapy "
                "(e.g. sc_celltherapy.datasets.pbmc_reference).",
            )
    else:
        if build.get("matrix") not in filenames:
            _fail(
                source,
                "$.build.matrix",
                f"{build.get('matrix')!r} is not one of the source filenames {filenames}.",
            )
        if reader == "csv" and "orientation" not in build:
            _fail(source, "$.build.orientation", "the csv reader needs an orientation.")
        obs_table = build.get("obs_table")
        if obs_table and obs_table["filename"] not in filenames:
            _fail(
                source,
                "$.build.obs_table.filename",
                f"{obs_table['filename']!r} is not one of the source filenames {filenames}.",
            )
        if reader == "cef" and "cef_label_row" not in build:
            _fail(source, "$.build.cef_label_row", "the cef reader needs cef_label_row.")
    if m["gene_id_type"] == "ensembl" and not build.get("gene_symbols_column"):
        _fail(
            source,
            "$.build.gene_symbols_column",
            "gene_id_type is ensembl: name the .var column that holds gene symbols.",
        )
    lo, hi = build.get("min_cells_per_label"), build.get("max_cells_per_label")
    if lo is not None and hi is not None and lo > hi:
        _fail(source, "$.build.min_cells_per_label", f"{lo} exceeds max_cells_per_label {hi}.")
    if build.get("exclude_genes_pattern"):
        try:
            re.compile(build["exclude_genes_pattern"])
        except re.error as err:
            _fail(source, "$.build.exclude_genes_pattern", f"not a regular expression: {err}.")
    known = m["label_keys"].get("known_fine_labels")
    for i, derived in enumerate(build.get("derive_labels", [])):
        where = f"$.build.derive_labels[{i}]"
        members = [v for g in derived["groups"] for v in g["members"]]
        dup = sorted({v for v in members if members.count(v) > 1})
        if dup:
            _fail(source, where, f"values {dup} belong to more than one group; one group each.")
        labels = [g["label"] for g in derived["groups"]]
        if len(set(labels)) != len(labels):
            _fail(source, where, f"group labels must be unique, got {labels}.")
        if known and derived["from_column"] == m["label_keys"]["fine"]:
            unknown = sorted(set(members) - set(known))
            if unknown:
                _fail(
                    source,
                    where,
                    f"members {unknown} are not in label_keys.known_fine_labels; check spelling.",
                )
    if known:
        unknown = sorted(set(build.get("drop_labels", [])) - set(known))
        if unknown:
            _fail(source, "$.build.drop_labels", f"{unknown} are not known fine labels.")


def atlas_fine_labels(manifest: Mapping) -> list[str] | None:
    """Fine labels a built reference of this atlas can hold, when the manifest fixes them.

    Parameters
    ----------
    manifest
        A validated atlas manifest.

    Returns
    -------
    ``label_keys.known_fine_labels`` or, for a fine column derived by the build, its group
    labels (plus the default), less ``build.drop_labels``; ``None`` when neither is given.
    """
    fine = manifest["label_keys"]["fine"]
    labels = manifest["label_keys"].get("known_fine_labels")
    build = manifest["build"]
    for derived in build.get("derive_labels", []):
        if derived["column"] == fine:
            labels = [g["label"] for g in derived["groups"]]
            if derived.get("default") is not None:
                labels.append(derived["default"])
    if labels is None:
        return None
    dropped = set(build.get("drop_labels", []))
    return [lab for lab in labels if lab not in dropped]


def _guess_kind(data: Any, path: Path | None) -> Kind:
    if path is not None and path.parent.name in ("atlases", "profiles"):
        return "atlas" if path.parent.name == "atlases" else "profile"
    if isinstance(data, Mapping) and "target" in data:
        return "profile"
    return "atlas"


def validate_manifest(
    path_or_dict: str | os.PathLike | Mapping,
    kind: Kind | None = None,
    *,
    atlas: Mapping | None = None,
) -> dict:
    """Validate an atlas manifest or product profile against its schema and cross-checks.

    Parameters
    ----------
    path_or_dict
        A YAML file, or the already-parsed manifest.
    kind
        ``"atlas"`` or ``"profile"``; guessed from the folder (``atlases/``, ``profiles/``) or
        the content when ``None``.
    atlas
        For a profile: the atlas manifest it refers to, when that atlas is not one of the
        shipped manifests (a user's own).

    Returns
    -------
    The manifest as a dict. Anything wrong raises :class:`ManifestError` naming the file, the
    JSON path of the failing field and what it expects.
    """
    path = None
    if isinstance(path_or_dict, Mapping):
        data: Any = dict(path_or_dict)
        source = f"{kind or 'manifest'} {data.get('name', '<unnamed>')!r}"
    else:
        path = Path(path_or_dict)
        data = _read_yaml(path)
        source = str(path)
    if kind is None:
        kind = _guess_kind(data, path)
    if kind not in KINDS:
        msg = f"kind must be 'atlas' or 'profile', got {kind!r}."
        raise ValueError(msg)
    _schema_check(data, kind, source)
    if path is not None and path.stem != data["name"]:
        _fail(source, "$.name", f"{data['name']!r} differs from the file name {path.stem!r}.")
    if kind == "atlas":
        _check_atlas(data, source)
        return data
    from ._profiles import check_profile, normalise_profile

    check_profile(data, source, atlas)
    return normalise_profile(data)


# --------------------------------------------------------------------------------------------
# loading and listing
# --------------------------------------------------------------------------------------------


def manifest_path(name: str | os.PathLike, kind: Kind) -> Path:
    """The YAML file of a shipped manifest or a path given, refused when it is neither.

    Parameters
    ----------
    name
        Name of a shipped manifest (``sct.atlas.list_manifests()``) or the path of a YAML file.
    kind
        ``"atlas"`` or ``"profile"``.
    """
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    candidate = manifests_dir() / KINDS[kind] / f"{name}.yaml"
    if candidate.is_file():
        return candidate
    msg = (
        f"No {kind} manifest {str(name)!r}; shipped {KINDS[kind]}: {_names(kind)}. "
        "Pass one of these names or the path of your own YAML file."
    )
    raise ManifestError(msg)


def load_manifest(name: str | os.PathLike) -> dict:
    """Load and validate an atlas manifest.

    Parameters
    ----------
    name
        Name of a shipped atlas (``sct.atlas.list_manifests()``) or the path of a YAML file.

    Returns
    -------
    The validated manifest (see ``reference_atlases/schemas/atlas.schema.yaml``).
    """
    return validate_manifest(manifest_path(name, "atlas"), "atlas")


def load_profile(name: str | os.PathLike) -> dict:
    """Load and validate a product profile, including its cross-checks against its atlas.

    Parameters
    ----------
    name
        Name of a shipped profile (``sct.atlas.list_manifests()``) or the path of a YAML file.

    Returns
    -------
    The validated profile (see ``reference_atlases/schemas/profile.schema.yaml``); its
    ``example_spec`` is an example, never a regulatory limit.
    """
    return validate_manifest(manifest_path(name, "profile"), "profile")


def list_manifests() -> pd.DataFrame:
    """The atlas manifests and product profiles that ship with the package.

    Returns
    -------
    DataFrame with ``name``, ``kind`` (``atlas`` or ``profile``), ``version``, ``species`` (a
    profile's is its atlas's) and ``path``. Files are read, not validated: use
    :func:`load_manifest` / :func:`load_profile` for that.
    """
    rows = []
    species: dict[str, str | None] = {}
    for kind in ("atlas", "profile"):
        for path in _files(kind):
            try:
                data = _read_yaml(path)
            except ManifestError as err:
                logger.warning("skipping unreadable manifest: %s", err)
                data = None
            data = data if isinstance(data, dict) else {}
            if kind == "atlas":
                species[path.stem] = data.get("species")
            rows.append(
                {
                    "name": data.get("name", path.stem),
                    "kind": kind,
                    "version": data.get("version"),
                    "species": data.get("species")
                    if kind == "atlas"
                    else species.get(data.get("atlas")),
                    "path": str(path),
                }
            )
    return pd.DataFrame(rows, columns=["name", "kind", "version", "species", "path"])
