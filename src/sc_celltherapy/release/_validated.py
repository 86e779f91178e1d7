"""Which validation dossier covers a release: the dossier is read and its audit trail verified
before any work, and after the chain the lot is checked against what the dossier validated
(product, reference, spec; cells, depth and gene overlap within the validated range).

A lot outside the validated range, or released without a dossier, is released as before: the
report and results.json say so (a warning), the verdict does not change.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .._checks import InputError
from ..io import file_sha256
from ._audit import AuditError, verify_audit

DOSSIER_JSON = "validation.json"
NO_DOSSIER = (
    "no validation dossier was cited (--validation): the method's accuracy, precision and "
    "detection limits for this product, reference and spec are not documented with this release"
)


def read_dossier(path: str | os.PathLike) -> dict:
    """A validation dossier directory (``sc-celltherapy validate``): its ``validation.json``,
    after its audit trail verified and the JSON's hash found in the trail's written outputs.
    Refused naming the problem when it is not a dossier or was changed."""
    folder = Path(path)
    json_file, audit = folder / DOSSIER_JSON, folder / "audit.jsonl"
    if not json_file.is_file() or not audit.is_file():
        msg = (
            f"{folder} is not a validation dossier (no {DOSSIER_JSON} and audit.jsonl): give the "
            "directory `sc-celltherapy validate --out` wrote."
        )
        raise InputError(msg)
    try:
        verify_audit(audit)
    except AuditError as err:
        raise InputError(f"Validation dossier {folder}: {err}") from err
    sha = file_sha256(json_file)
    written = [
        json.loads(line).get("wrote", {}).get(DOSSIER_JSON)
        for line in audit.read_text().splitlines()
    ]
    if sha not in written:
        msg = (
            f"Validation dossier {folder}: {DOSSIER_JSON} (sha256 {sha}) is not the file its "
            "audit trail recorded: it was changed after the validation."
        )
        raise InputError(msg)
    return {"path": str(folder), "sha256": sha, "data": json.loads(json_file.read_text())}


def coverage(
    dossier: dict | None,
    *,
    product: str,
    spec_sha256: str,
    reference_sha256: str | None,
    n_barcodes: int,
    median_counts: float,
    gene_overlap: float | None,
) -> dict:
    """What the cited dossier covers of this lot: ``covers`` is True when it validated this
    product, reference and spec and the lot lies within its validated range; ``outside`` lists
    every reason it does not."""
    if dossier is None:
        return {"dossier": None, "covers": False, "outside": [NO_DOSSIER]}
    data = dossier["data"]
    prov = data["provenance"]
    validated = prov.get("validated_range", {})
    ref = prov.get("reference")
    outside = []
    if data["plan"]["content"]["product"] != product:
        outside.append(
            f"it validated product {data['plan']['content']['product']!r}, not {product!r}"
        )
    if (ref or {}).get("sha256") != reference_sha256:
        outside.append("it validated another reference bundle (sha256 differs)")
    if prov.get("spec_sha256") != spec_sha256:
        outside.append("it validated another spec (sha256 differs)")
    lo, hi = validated.get("n_barcodes", [None, None])
    if lo is not None and not lo <= n_barcodes <= hi:
        outside.append(f"{n_barcodes} barcodes, outside the validated {lo}-{hi}")
    depth = validated.get("median_counts_min")
    if depth is not None and median_counts < depth:
        outside.append(
            f"median {median_counts:.0f} counts per cell, below the validated {depth:.0f}"
        )
    overlap = validated.get("gene_overlap_min")
    if overlap is not None and gene_overlap is not None and gene_overlap < overlap:
        outside.append(f"gene overlap {gene_overlap:.1%}, below the validated {overlap:.1%}")
    return {
        "dossier": dossier["path"],
        "sha256": dossier["sha256"],
        "plan": data["plan"]["name"],
        "plan_sha256": data["plan"]["sha256"],
        "verdict": data["verdict"],
        "validated_range": validated,
        "covers": not outside,
        "outside": outside,
    }


def median_counts(adata) -> float:
    """Median total counts of the cells passing QC (the lot after the release's QC)."""
    return float(np.median(np.asarray(adata.X.sum(axis=1)).ravel()))
