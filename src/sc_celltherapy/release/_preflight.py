"""Pre-flight of a release: every refusal happens here, before heavy work and before anything is
written (inputs, spec, profile, reference, identities, output directory)."""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._checks import InputError
from .._keys import KEYS
from .._spec import Spec, SpecError
from ..io import file_sha256

# --reference none: identity from the profile's marker panels alone
NO_REFERENCE = "none"


class ReleaseExistsError(InputError, FileExistsError):
    """The release directory exists; a release is never overwritten."""


@dataclass
class ResolvedInputs:
    """What the pre-flight checks resolved, so the chain itself cannot fail on bad input."""

    input_path: Path
    adata: Any
    bundle: Any  # None: identity from marker panels, no reference
    spec: Spec
    spec_source: str
    profile: dict | None
    out_dir: Path
    read_hashes: dict[str, str]
    read_seconds: float
    layer: str | None = None
    reference_signature: dict | None = None  # what was checked of the bundle's signature


# ---------------------------------------------------------------------------------------------
# pre-flight: every refusal happens here, before heavy work and before anything is written


def preflight(
    input,
    *,
    out_dir,
    lot_id,
    operator,
    spec,
    product,
    reference,
    batch_key,
    min_gene_overlap,
    seed=0,
    audit_log=None,
    reference_sha256=None,
    reference_public_key=None,
    layer=None,
) -> ResolvedInputs:
    from .. import atlas
    from .._checks import check_obs_key
    from ..tl.checks import (
        check_enough_cells,
        check_genes,
        check_marker_gates,
        check_spec_identities,
        check_transgene_features,
    )

    check_options(seed=seed, min_gene_overlap=min_gene_overlap)
    out_dir = Path(out_dir).absolute()
    check_out_dir(out_dir)
    check_audit_log(audit_log, out_dir)
    for name, value in (("lot_id", lot_id), ("operator", operator)):
        if not isinstance(value, str) or not value.strip():
            raise InputError(
                f"{name} must be a non-empty string (it is recorded in the audit trail)."
            )
    spec_obj, spec_source, read_hashes = _resolve_spec(spec, product)
    profile = resolve_profile(product, spec_obj)
    input_path = Path(input)
    start = time.perf_counter()
    # missing, corrupt, empty, non-count, duplicate input and an unknown layer stop here
    adata = read_counts(input_path, layer)
    check_obs_key(adata, batch_key, what="batch column")
    check_enough_cells(adata, what="barcode(s) in the input")
    read_hashes[f"input:{input_path.name}"] = adata.uns[KEYS.INPUT]["sha256"]
    read_seconds = round(time.perf_counter() - start, 3)
    if reference is None and profile is not None and profile.get("atlas") is None:
        reference = NO_REFERENCE
    if reference is None:
        if profile is None:
            msg = (
                "No reference: pass --reference (a bundle, or 'none' for marker panels alone), "
                "or a product whose profile names an atlas."
            )
            raise InputError(msg)
        reference = profile["atlas"]
    bundle, signature = None, None
    if str(reference).lower() == NO_REFERENCE:
        if profile is None:
            msg = (
                "Without a reference, identities come from a product profile's marker panels: "
                "pass --product (a shipped name or the path of your profile YAML)."
            )
            raise InputError(msg)
        if reference_public_key is not None:
            msg = (
                "A reference public key was given, but there is no reference to check: pass "
                "--reference with the signed bundle, or drop --reference-public-key."
            )
            raise InputError(msg)
    else:
        bundle = atlas.load(reference)  # refuses a changed, missing or extra file
        if reference_sha256 is not None and bundle.sha256 != reference_sha256:
            msg = (
                f"Reference {bundle.name} v{bundle.version} at {bundle.path} has sha256 "
                f"{bundle.sha256}, not the {reference_sha256} this release was told to expect: "
                "its bundle.json was changed and re-sealed, or it is another build. Use the "
                "qualified bundle."
            )
            raise atlas.BundleError(msg)
        read_hashes[f"reference:{bundle.name}"] = bundle.sha256
        signature = {"checked": False}
        if reference_public_key is not None:
            signature = atlas.check_signature(bundle, reference_public_key)
        # refusal only here; the low-overlap warning comes from the mapping step, into the results
        check_genes(adata, bundle, min_gene_overlap=min_gene_overlap, warn_gene_overlap=0.0)
    check_spec_identities(adata, profile, spec_obj, bundle)
    check_transgene_features(adata, spec_obj)
    check_marker_gates(adata, spec_obj)
    return ResolvedInputs(
        input_path,
        adata,
        bundle,
        spec_obj,
        spec_source,
        profile,
        out_dir,
        read_hashes,
        read_seconds,
        layer,
        signature,
    )


def preflight_again(inputs: ResolvedInputs) -> ResolvedInputs:
    """The inputs of a rerun: the lot read again from disk, everything else as resolved."""
    adata = read_counts(inputs.input_path, inputs.layer)
    return ResolvedInputs(**{**inputs.__dict__, "adata": adata})


def read_counts(path: Path, layer: str | None):
    """The lot with its raw counts in ``.X``: from ``.layers[layer]`` when the counts are kept
    there (an ``.h5ad`` whose ``.X`` is normalised); the normalised ``.X`` is not carried, as
    every step starts from counts."""
    from .. import io

    adata = io.read(path, layer=layer)
    if layer is not None:
        adata.X = adata.layers.pop(layer)
        adata.uns[KEYS.INPUT]["counts_layer"] = layer
    return adata


def check_options(*, seed, min_gene_overlap) -> None:
    """Refuse option values that would disable a check or crash later: a seed that is not a
    non-negative integer, a gene-overlap gate outside (0, 1] (NaN included)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        msg = f"seed must be a non-negative integer (it seeds numpy and torch), got {seed!r}."
        raise InputError(msg)
    ok = isinstance(min_gene_overlap, int | float) and not isinstance(min_gene_overlap, bool)
    if not ok or not 0 < min_gene_overlap <= 1:  # NaN fails the comparison too
        msg = (
            f"min_gene_overlap must be a fraction in (0, 1], got {min_gene_overlap!r}: it is the "
            "share of the reference's genes a lot must have to be mapped (default 0.5)."
        )
        raise InputError(msg)


def check_audit_log(audit_log, out_dir: Path) -> None:
    """A lab-wide audit log is a file (new or existing) in an existing directory, outside
    this release and outside any other release directory."""
    if audit_log is None:
        return
    path = Path(audit_log).absolute()
    if path.is_dir():
        msg = f"--audit-log {path} is a directory; give the path of the lab's log file."
        raise InputError(msg)
    if not path.parent.is_dir():
        msg = (
            f"--audit-log {path}: its folder {path.parent} does not exist. Create it first "
            "(the lab log is appended to, never created with its folders)."
        )
        raise InputError(msg)
    inside = [p for p in (path.parent, *path.parent.parents) if _is_release(p)]
    if out_dir in (path, *path.parents) or inside:
        where = out_dir if out_dir in path.parents else inside[0]
        msg = (
            f"--audit-log {path} lies inside the release directory {where}; a release's own "
            "audit.jsonl is written there. Keep the lab log outside every release."
        )
        raise InputError(msg)


def _is_release(folder: Path) -> bool:
    return (folder / "results.json").is_file() and (folder / "audit.jsonl").is_file()


def check_out_dir(out_dir: Path) -> None:
    """Refuse an existing release directory (a dangling link included) or a location that
    cannot be written, with the run's own temporary name (so a name too long for it is
    refused here, not after the chain has run).

    Parameters
    ----------
    out_dir
        The release directory a run would create.

    Raises
    ------
    ReleaseExistsError
        The directory (or a link of that name) exists.
    InputError
        Its parent cannot be written, or the name is too long.
    """
    if os.path.islink(out_dir) and not out_dir.exists():
        msg = (
            f"{out_dir} is a symbolic link to nothing; a release is written as a new directory. "
            "Remove the link or choose another --out."
        )
        raise ReleaseExistsError(msg)
    if out_dir.exists():
        msg = (
            f"Release directory {out_dir} exists; a release is never overwritten. Choose a new "
            "--out (one directory per lot and run)."
        )
        raise ReleaseExistsError(msg)
    parent = out_dir.parent
    if not parent.is_dir():
        msg = f"Cannot write the release: {parent} is not an existing directory. Create it first."
        raise InputError(msg)
    try:  # the only honest test of writability (root ignores permission bits)
        probe = tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=parent)
        os.rmdir(probe)
    except OSError as err:
        msg = f"Cannot write in {parent} ({err.strerror or err}). Choose a writable --out location."
        raise InputError(msg) from err


def _resolve_spec(spec, product) -> tuple[Spec, str, dict[str, str]]:
    if spec is None:
        if product is None:
            raise InputError("No spec: pass a spec YAML (--spec) or a product (--product).")
        profile = _load_profile(product)
        return Spec.from_profile(profile), f"example spec of product profile {product!r}", {}
    if isinstance(spec, Spec):
        kind = "example spec" if spec.example else "spec"
        return spec, f"{kind} of {spec.product!r} given in Python", {}
    path = Path(spec)
    if not path.is_file():
        raise SpecError(f"Spec file {path} does not exist. Give the path of a spec YAML file.")
    return Spec.from_yaml(path), str(path), {f"spec:{path.name}": file_sha256(path)}


def _load_profile(name: str) -> dict:
    from ..atlas import load_profile, manifest_path

    try:
        path = manifest_path(name, "profile")
    except InputError as err:
        raise InputError(f"Unknown product {name!r}: {err}") from err
    return load_profile(path)


def resolve_profile(product: str | None, spec: Spec) -> dict | None:
    from ..atlas import list_manifests

    if product is not None:
        return _load_profile(product)
    shipped = list_manifests().query("kind == 'profile'")["name"].tolist()
    return _load_profile(spec.product) if spec.product in shipped else None
