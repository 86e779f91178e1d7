"""A reference bundle on disk: its layout, its hashes, and the checks before anything is used.

A bundle is a directory::

    bundle.json            name, version, genes, labels, versions, calibration, OOR statistics,
                           and the sha256 of every other file
    models/<i>/model.pt    the scvi-tools scANVI model of ensemble member i (scvi's own format)
    reference_latent.npz   each member's latent coordinates of the training cells, and their
                           labels (for the out-of-reference score)
    expression_levels.npz  each gene's upper level in the reference (the expression excess)
    bundle.sig             optional: the lab's signature of the bundle's hash (``_signature``)

:func:`verify` checks every hash and the scvi-tools version before anything is used.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

import numpy as np

from .._checks import InputError
from .._display import html_table
from .._logging import logger
from ..io import file_sha256

# 2: per-label OOR thresholds; 3: local outlier ratio; 4: conformal threshold; 5: seed ensemble;
# 6: cross-donor calibration, conformal label sets, expression evidence of out-of-reference;
# 7: neighbourhood evidence of out-of-reference (the lot's own expression kNN)
BUNDLE_FORMAT = 7
MANIFEST = "bundle.json"
EXPRESSION_LEVELS = "expression_levels.npz"
# the out-of-fold predictions the calibration, label sets and OOR threshold were fitted on
HELD_OUT_PREDICTIONS = "held_out_predictions.npz"
SIGNATURE = "bundle.sig"  # beside the manifest, not in it: signing leaves the bundle's hash as is


class BundleError(InputError):
    """A reference bundle is missing, tampered with, or incompatible with this installation."""


@dataclass(frozen=True)
class ReferenceBundle:
    """A verified reference bundle on disk (see :func:`load`)."""

    path: Path
    manifest: dict = field(repr=False)

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def version(self) -> str:
        return self.manifest["version"]

    @property
    def genes(self) -> list[str]:
        return self.manifest["genes"]

    @property
    def labels(self) -> list[str]:
        return list(self.manifest["labels"])

    @property
    def sha256(self) -> str:
        """One hash for the whole bundle (of bundle.json, which pins every other file)."""
        return file_sha256(self.path / MANIFEST)

    @property
    def member_dirs(self) -> list[Path]:
        """Model directory of each ensemble member (seeds ``seed``, ``seed + 1``, ...)."""
        return [self.path / "models" / str(i) for i in range(self.manifest["model"]["n_members"])]

    @property
    def model_dir(self) -> Path:
        """The first member's model: one plain scANVI model trained on the reference."""
        return self.member_dirs[0]

    def reference_latent(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The reference cells' latent coordinates in each member's space ``(members, cells,
        n_latent)``, their labels, and each cell's mean distance to its ``k`` nearest other
        reference cells in each member's space ``(members, cells)``; one read of the file."""
        with np.load(self.path / "reference_latent.npz", allow_pickle=False) as npz:
            return npz["latent"], npz["labels"], npz["spacing"]

    def expression_levels(self) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """The genes the expression excess reads (symbols, Ensembl ids or None) and each gene's
        upper level in the reference (99th percentile of counts per 10,000)."""
        with np.load(self.path / EXPRESSION_LEVELS, allow_pickle=False) as npz:
            ids = npz["gene_ids"] if npz["gene_ids"].size else None
            return npz["genes"], ids, npz["levels"]

    def held_out_predictions(self) -> dict[str, np.ndarray]:
        """The out-of-fold predictions the bundle's calibration, label sets and out-of-reference
        threshold were fitted on: ``probs`` (uncalibrated, columns in label order), ``y`` (true
        label's column), ``donors``, the OOR components ``oor_latent``, ``oor_expression``,
        and ``marker_loglik`` (marker-detection log-likelihoods, cells x labels; bundles built
        since pbmc_demo 1.8).
        With them a calibration method can be re-fitted and compared without retraining."""
        path = self.path / HELD_OUT_PREDICTIONS
        if not path.is_file():
            msg = f"{self.name!r} v{self.version} predates stored held-out predictions; rebuild it."
            raise BundleError(msg)
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}

    _HEADER = (
        "held-out donor",
        "cells",
        "accuracy",
        "ECE",
        "ECE by chance",
        "set coverage",
        "set size",
    )

    def _headline(self) -> str:
        """The figure a report quotes first: the worst held-out donor's calibration."""
        cal = self.manifest.get("calibration", {})
        scope = "across donors" if cal.get("across_donors") else "within-donor only"
        ece = cal.get("ece_worst_donor")
        coverage = cal.get("conformal", {}).get("coverage_worst_donor")
        return (
            f"{self.name!r} v{self.version}: {len(self.labels)} labels, {len(self.genes)} genes; "
            f"calibration {cal.get('method', 'none')} ({scope}), worst donor ECE "
            + ("–" if ece is None else f"{ece:.3f}")
            + ", label-set coverage "
            + ("–" if coverage is None else f"{coverage:.3f}")
        )

    def _rows(self) -> list[list[str]]:
        def num(value) -> str:
            return "–" if value is None else f"{value:.3f}"

        per_donor = self.manifest.get("calibration", {}).get("per_donor", {})
        return [
            [
                str(donor),
                str(d.get("n_cells", "–")),
                num(d.get("accuracy")),
                num(d.get("ece")),
                num(d.get("ece_chance_95")),
                num(d.get("coverage")),
                num(d.get("mean_set_size")),
            ]
            for donor, d in per_donor.items()
        ]

    def __repr__(self) -> str:
        return f"ReferenceBundle {self._headline()}\n  {self.path}"

    def _repr_html_(self) -> str:
        return html_table(f"Reference bundle {self._headline()}", self._rows(), self._HEADER, None)


def write_bundle(
    out_dir: Path, models, latent, labels, spacing, levels: dict, held_out: dict, manifest: dict
) -> ReferenceBundle:
    """Write into a temporary sibling, hash every file, then rename into place (atomic)."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        for i, model in enumerate(models):
            model.save(str(tmp / "models" / str(i)), save_anndata=False)
        np.savez(
            tmp / "reference_latent.npz",
            latent=latent.astype(np.float32),
            labels=labels.astype(str),
            spacing=spacing.astype(np.float32),
        )
        np.savez(tmp / EXPRESSION_LEVELS, **levels)
        np.savez(tmp / HELD_OUT_PREDICTIONS, **held_out)
        manifest["files"] = {
            p.relative_to(tmp).as_posix(): file_sha256(p)
            for p in sorted(tmp.rglob("*"))
            if p.is_file()
        }
        manifest["manifest_sha256"] = manifest_digest(manifest)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("wrote reference bundle %s", out_dir)
    return verify(out_dir)


def verify(path: str | os.PathLike) -> ReferenceBundle:
    """Check a bundle's files against its hashes and its versions against this installation.

    Parameters
    ----------
    path
        The bundle directory.

    Returns
    -------
    The verified :class:`ReferenceBundle`.

    Raises
    ------
    BundleError
        Naming the changed, missing or extra file, or the versions.
    """
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        msg = f"{path} is not a reference bundle: {MANIFEST} is missing."
        raise BundleError(msg)
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except (json.JSONDecodeError, KeyError) as err:
        msg = f"{manifest_path} is corrupt ({err}); rebuild or re-copy the bundle."
        raise BundleError(msg) from err
    if manifest.get("manifest_sha256") != manifest_digest(manifest):
        msg = (
            f"Bundle {path}: {MANIFEST} has been edited (its content no longer matches its "
            "recorded digest). Re-copy or rebuild the bundle."
        )
        raise BundleError(msg)
    present = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()}
    present -= {MANIFEST, SIGNATURE}
    missing = sorted(set(files) - present)
    extra = sorted(present - set(files))
    if missing:
        msg = f"Bundle {path} is incomplete: missing file(s) {missing}. Re-copy the bundle."
        raise BundleError(msg)
    if extra:
        msg = (
            f"Bundle {path} has file(s) not in its manifest: {extra}. A locked bundle must not "
            "change; remove them or re-copy the bundle."
        )
        raise BundleError(msg)
    for rel, expected in files.items():
        found = file_sha256(path / rel)
        if found != expected:
            msg = (
                f"Bundle {path}: file {rel!r} has changed (sha256 {found[:12]}..., expected "
                f"{expected[:12]}...). The bundle was modified; re-copy or rebuild it."
            )
            raise BundleError(msg)
    _check_versions(path, manifest)
    return ReferenceBundle(path=path, manifest=manifest)


def manifest_digest(manifest: dict) -> str:
    """sha256 of the manifest's canonical JSON, without its own digest field."""
    import hashlib

    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _check_versions(path: Path, manifest: dict) -> None:
    if manifest.get("format") != BUNDLE_FORMAT:
        msg = (
            f"Bundle {path} has format {manifest.get('format')}; this version reads "
            f"{BUNDLE_FORMAT}. Rebuild it with sct.atlas.build (or sc-celltherapy atlas build)."
        )
        raise BundleError(msg)
    built = manifest.get("versions", {}).get("scvi-tools", "0")
    installed = version("scvi-tools")
    if _major_minor(built)[0] != _major_minor(installed)[0] or _major_minor(built) > _major_minor(
        installed
    ):
        msg = (
            f"Bundle {path} was built with scvi-tools {built}; installed is {installed}, which "
            f"cannot load it safely. Install scvi-tools=={built} or rebuild the bundle."
        )
        raise BundleError(msg)


def _major_minor(v: str) -> tuple[int, int]:
    parts = [int("".join(ch for ch in p if ch.isdigit()) or 0) for p in v.split(".")[:2]]
    return (parts + [0, 0])[0], (parts + [0, 0])[1]
