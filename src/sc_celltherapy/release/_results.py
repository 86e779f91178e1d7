"""What a release's results.json holds: the verdict and criteria, how identities were called,
QC, mapping, reference, spec, inputs and versions, and how two runs' results are compared.

Everything here is identical for the same inputs, spec, reference and seed on CPU; what differs
between runs by nature goes under :data:`PER_RUN_KEY`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .._keys import KEYS
from .._provenance import versions
from .._spec import Spec
from .._utils import plain

RESULTS_SCHEMA = "sc_celltherapy.release.results/1"
# its JSON Schema, shipped beside this module; "$id" is RESULTS_SCHEMA
RESULTS_SCHEMA_FILE = Path(__file__).with_name("results.schema.json")
# fields that differ between two runs of the same inputs by nature; all under this key
PER_RUN_KEY = "run"


def spec_digest(spec: Spec) -> str:
    """sha256 of the spec's canonical YAML: the same spec has the same hash wherever it came from.

    Parameters
    ----------
    spec
        The release specification.

    Returns
    -------
    The hex digest (results.json ``spec.sha256``; a validation dossier's ``spec_sha256``).
    """
    import hashlib

    return hashlib.sha256(spec.to_yaml().encode()).hexdigest()


def build_results(inputs, adata, report, lot_id, seed, batch_key, min_gene_overlap) -> dict:
    """results.json of a release, without its per-run key (``inputs``: the resolved inputs of
    :func:`~sc_celltherapy.release.run`)."""
    qc = adata.uns[KEYS.QC]
    purity = report.to_dict()
    target = {**purity["target"], "denominator": "assessed", "kind": "min"}
    judged = {"target": target, **purity["impurities"]}
    criteria = [
        {"criterion": k, "kind": "max", **row}
        for k, row in judged.items()
        if row["limit"] is not None
    ]
    criteria += [
        {"criterion": f"marker:{k}", "denominator": "assessed", **row}
        for k, row in purity["marker_gates"].items()
    ]
    src = adata.uns[KEYS.INPUT]
    n = report.n_cells
    results = {
        "schema": RESULTS_SCHEMA,
        "lot_id": lot_id,
        "product": inputs.spec.product,
        "verdict": report.verdict,
        "identity": identity_record(adata, inputs.bundle),
        "criteria": criteria,
        "purity": purity,
        "detection": {
            "n_cells_assessed": n,
            "lod95": report.lod95,
            "upper_bound_when_zero": report.lod95,
            "statement": (
                f"With {n} cells assessed, an impurity present at {report.lod95:.2%} or more of "
                "the lot is seen at least once with 95% probability (1 - 0.05^(1/n)); a class "
                f"with no cell seen is below {report.lod95:.2%} with 95% confidence. Rarer "
                "impurities (e.g. residual pluripotent cells at 1 in 100,000) cannot be excluded "
                "by this run and need an orthogonal assay (ddPCR, flow)."
            ),
        },
        "qc": {
            "n_barcodes": qc["n_cells_before"],
            "n_assessed": qc["n_cells_after"],
            "excluded": qc["n_removed"],
            "thresholds": adata.uns.get(KEYS.LOW_QUALITY, {}),
            "doublets": adata.uns.get(KEYS.DOUBLET, {}),
        },
        "mapping": _mapping_record(adata),
        "reference": None
        if inputs.bundle is None
        else {
            "name": inputs.bundle.name,
            "version": inputs.bundle.version,
            "sha256": inputs.bundle.sha256,
            "signature": inputs.reference_signature,
            "calibration": _reliability(inputs.bundle.manifest),
        },
        "spec": {
            # a file is named without its folder (paths differ between runs, contents do not)
            "source": Path(inputs.spec_source).name
            if Path(inputs.spec_source).is_file()
            else inputs.spec_source,
            "sha256": spec_digest(inputs.spec),
            "example": inputs.spec.example,
            "content": inputs.spec.to_dict(),
        },
        "profile": inputs.profile["name"] if inputs.profile else None,
        "identity_method": adata.uns[KEYS.IDENTITY]["method"],
        "inputs": {
            "file": inputs.input_path.name,
            "format": src["format"],
            "sha256": src["sha256"],
            # where the counts were read from: ".X", or the layer named by --layer
            "counts": f"layers[{src['counts_layer']!r}]" if src.get("counts_layer") else ".X",
            "n_barcodes": int(qc["n_cells_before"]),
            "n_features": int(adata.n_vars),
        },
        "seed": seed,
        "settings": {"batch_key": batch_key, "min_gene_overlap": min_gene_overlap},
        "versions": versions(),
    }
    return plain(results)


def identity_record(adata, bundle) -> dict[str, Any]:
    """How identities were called, stated first in results.json and the report: the method,
    the rules and thresholds, and per identity the panel genes used, missing and whether it was
    assessed."""
    from ..tl import identity_records

    info = adata.uns[KEYS.IDENTITY]
    if bundle is None:
        statement = (
            "Identity comes from the product profile's marker panels alone, with no reference "
            "atlas: each cell is the identity whose panel is enriched against random genes of "
            "the same cell and beats every other panel; residual pluripotent cells come from the "
            "pluripotency detector."
        )
    else:
        statement = (
            f"Identity comes from mapping onto the reference {bundle.name} v{bundle.version} "
            "(calibrated label probabilities, out-of-reference call); marker panels give an "
            "orthogonal score; residual pluripotent cells come from the pluripotency detector."
        )
    return {
        "method": info["method"],
        "reference": None if bundle is None else bundle.name,
        "statement": statement,
        "rules": dict(info.get("rules", {})),
        "thresholds": dict(info.get("thresholds", {})),
        "pluripotency_genes_used": list(info.get("pluripotency_genes_used", [])),
        "identities": {
            name: {
                "class": rec["class"],
                "assessed": bool(rec.get("assessed", False)),
                "called_by": rec.get("called_by"),
                "reason": rec.get("reason", ""),
                "genes_found": list(rec.get("genes_found", [])),
                "genes_missing": list(rec.get("genes_missing", [])),
            }
            for name, rec in identity_records(adata).items()
        },
        "not_assessed": list(info.get("not_assessed", [])),
    }


def _reliability(manifest: Mapping) -> dict[str, Any]:
    """What the bundle measured of its own reliability, on donors left out of its models and
    of its calibration (within one donor when it has a single batch)."""
    from ..atlas import reads_markers

    cal, oor = manifest["calibration"], manifest["oor"]
    return {
        "method": cal["method"],
        "across_donors": cal["across_donors"],
        "ece_worst_donor": cal["ece_worst_donor"],
        "ece_mean_donor": cal["ece_mean_donor"],
        "worst_donor": cal["worst_donor"],
        "per_donor": cal["per_donor"],
        # the marker genes whose detection the calibration reads, and their weight (stacking)
        "marker_evidence": {
            "genes": (cal.get("marker_evidence") or {}).get("genes", []),
            "weights": cal["params"] if reads_markers(cal) else {},
        },
        "label_sets": {
            k: cal["conformal"][k]
            for k in ("method", "alpha", "coverage_worst_donor", "mean_set_size")
        },
        "out_of_reference": {
            "method": oor["method"],
            "threshold": oor["threshold"],
            "fpr_bound": oor["fpr_bound"],
            "n_held_out_cells": oor["n_held_out_cells"],
        },
        **({"note": cal["note"]} if "note" in cal else {}),
    }


def _mapping_record(adata) -> dict[str, Any] | None:
    ref = adata.uns.get(KEYS.REF)
    if ref is None:
        return None
    return {
        "gene_overlap": ref["gene_overlap"],
        "n_reference_genes": ref["n_reference_genes"],
        "n_missing_genes": ref["n_missing_genes"],
        "n_unassigned": ref["n_unassigned"],
        "surgery_trained": ref["surgery_trained"],
        "surgery_epochs": ref["max_epochs"],
        "composition": ref.get("composition"),
        "marker_genes_lacking": list(ref["calibration"]["marker_evidence"]["lacking_in_lot"])
        if "marker_evidence" in ref["calibration"]
        else [],
        "set_levels": adata.obs["sct_ref_set_level"].value_counts().astype(int).to_dict()
        if "sct_ref_set_level" in adata.obs
        else None,
    }


def compare_results(first: Mapping, second: Mapping) -> dict[str, Any]:
    """Whether two results agree outside the per-run key; the top-level keys that differ.

    Parameters
    ----------
    first, second
        Two results.json contents (as dicts), e.g. a release and its ``--verify-rerun``.

    Returns
    -------
    ``{"agrees": bool, "differences": [top-level keys that differ]}``.
    """
    keys = (set(first) | set(second)) - {PER_RUN_KEY}
    differences = sorted(
        k
        for k in keys
        if json.dumps(first.get(k), sort_keys=True) != json.dumps(second.get(k), sort_keys=True)
    )
    return {"agrees": not differences, "differences": differences}


def validate_results(results: Mapping) -> None:
    """Check a results.json against its shipped JSON Schema (:data:`RESULTS_SCHEMA_FILE`).

    Parameters
    ----------
    results
        The results.json content, as a dict.

    Raises
    ------
    jsonschema.ValidationError
        Naming the first field that does not fit the schema.
    """
    import jsonschema

    schema = json.loads(RESULTS_SCHEMA_FILE.read_text())
    jsonschema.validate(dict(results), schema)
