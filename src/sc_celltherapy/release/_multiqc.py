"""A released lot as MultiQC custom content: one row of the sequencing core's MultiQC table.

Every lot's file carries the same section id, so MultiQC merges them into one table with a row
per lot. The numbers are read from the lot's results.json, never recomputed: the table shows
what the release signed (fractions and their 95% intervals as percentages).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

SECTION_ID = "sc_celltherapy"
PCT = "{:,.2f}"  # percentages as the release report prints them


def _pct(value) -> float | None:
    return None if value is None else round(100 * float(value), 4)


def multiqc_content(results: dict) -> dict:
    """The MultiQC custom-content document (``plot_type: table``) of one released lot.

    Parameters
    ----------
    results
        The lot's results.json, read (a dict).

    Returns
    -------
    The document as a dict: section ``sc_celltherapy``, one row keyed by the lot id.
    """
    lot = results["lot_id"]
    purity = results["purity"]
    qc = results["qc"]
    target = purity["target"]
    row = {
        "verdict": results["verdict"],
        "target_pct": _pct(target["fraction"]),
        "target_ci": f"{_pct(target['ci_low']):.2f}-{_pct(target['ci_high']):.2f}",
        "n_barcodes": qc["n_barcodes"],
        "n_assessed": qc["n_assessed"],
        "qc_removed_pct": _pct(1 - qc["n_assessed"] / max(qc["n_barcodes"], 1)),
        "n_doublets": qc["excluded"].get("sct_doublet", 0),
        "lod95_pct": _pct(results["detection"]["lod95"]),
    }
    headers = {
        "verdict": {"title": "Verdict", "description": "Release verdict of the lot"},
        "target_pct": {
            "title": "Target",
            "description": "Target identity, % of assessed cells",
            "suffix": "%",
            "format": PCT,
            "min": 0,
            "max": 100,
        },
        "target_ci": {"title": "Target 95% CI", "description": "Wilson interval, %"},
    }
    for name, imp in purity["impurities"].items():
        row[f"{name}_pct"] = _pct(imp["fraction"])
        row[f"{name}_upper_pct"] = _pct(imp["ci_high"])
        denominator = imp.get("denominator", "assessed")
        of_what = "assessed cells" if denominator == "assessed" else denominator
        headers[f"{name}_pct"] = {
            "title": name,
            "description": f"{name}, % of {of_what}",
            "suffix": "%",
            "format": PCT,
        }
        headers[f"{name}_upper_pct"] = {
            "title": f"{name} (95% upper)",
            "description": f"upper end of the 95% interval of {name}, %",
            "suffix": "%",
            "format": PCT,
            "hidden": True,
        }
    mapping = results.get("mapping") or {}
    reference = results.get("reference") or {}
    row["gene_overlap_pct"] = _pct(mapping.get("gene_overlap"))
    row["reference"] = (
        f"{reference['name']} v{reference['version']}" if reference else "none (marker panels)"
    )
    headers |= {
        "n_barcodes": {"title": "Barcodes", "format": "{:,.0f}"},
        "n_assessed": {"title": "Assessed", "description": "Cells passing QC", "format": "{:,.0f}"},
        "qc_removed_pct": {"title": "QC removed", "suffix": "%", "format": PCT},
        "n_doublets": {"title": "Doublets called", "format": "{:,.0f}"},
        "lod95_pct": {
            "title": "LOD95",
            "description": "Smallest impurity seen at least once with 95% probability, %",
            "suffix": "%",
            "format": PCT,
        },
        "gene_overlap_pct": {"title": "Gene overlap", "suffix": "%", "format": PCT},
        "reference": {"title": "Reference"},
    }
    return {
        "id": SECTION_ID,
        "section_name": "sc_celltherapy release",
        "description": "Identity and purity of each released lot, from its results.json "
        "(fractions of assessed cells with 95% intervals).",
        "plot_type": "table",
        "pconfig": {"id": f"{SECTION_ID}_lots", "title": "sc_celltherapy: released lots"},
        "headers": headers,
        "data": {lot: row},
    }


def write_multiqc_content(results_json: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write one released lot's MultiQC custom content.

    Parameters
    ----------
    results_json
        The lot's ``release/results.json``.
    out
        The file to write; its name must end in ``_mqc.yaml`` (what MultiQC picks up).

    Returns
    -------
    The path written.
    """
    out = Path(out)
    if not out.name.endswith("_mqc.yaml"):
        from .._checks import InputError

        raise InputError(f"{out}: MultiQC reads custom content from files ending in _mqc.yaml.")
    results = json.loads(Path(results_json).read_text())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(multiqc_content(results), sort_keys=False))
    return out
