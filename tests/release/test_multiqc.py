"""MultiQC custom content of a released lot: bad arguments are refused before anything is
written (the content itself is checked against real releases in the workflow test)."""

from __future__ import annotations

import json

import pytest
import yaml

import sc_celltherapy as sct
from sc_celltherapy.cli import main


def test_content_file_must_be_one_multiqc_reads(tmp_path):
    (tmp_path / "results.json").write_text("{}")
    with pytest.raises(sct.InputError, match="files ending in _mqc.yaml"):
        sct.release.write_multiqc_content(tmp_path / "results.json", tmp_path / "lot.yaml")
    assert not (tmp_path / "lot.yaml").exists()


def test_command_refuses_a_missing_results_file(tmp_path, capsys):
    code = main(
        ["multiqc-content", str(tmp_path / "nope.json"), "--out", str(tmp_path / "a_mqc.yaml")]
    )
    assert code == 2
    assert "nope.json not found: give the lot's release/results.json" in capsys.readouterr().err
    assert not (tmp_path / "a_mqc.yaml").exists()


def test_marker_only_lot_names_no_reference(tmp_path):
    """A lot released without a reference: the row says so instead of a bundle name."""
    results = {
        "lot_id": "LOT-M",
        "verdict": "PASS",
        "purity": {
            "target": {"fraction": 0.95, "ci_low": 0.93, "ci_high": 0.965},
            "impurities": {
                "residual_pluripotent": {
                    "fraction": 0.0,
                    "ci_high": 0.001,
                    "denominator": "assessed",
                }
            },
        },
        "qc": {"n_barcodes": 1000, "n_assessed": 900, "excluded": {"sct_doublet": 12}},
        "detection": {"lod95": 0.0033},
        "mapping": None,
        "reference": None,
    }
    (tmp_path / "results.json").write_text(json.dumps(results))
    out = sct.release.write_multiqc_content(tmp_path / "results.json", tmp_path / "m_mqc.yaml")
    row = yaml.safe_load(out.read_text())["data"]["LOT-M"]
    assert row["reference"] == "none (marker panels)" and row["gene_overlap_pct"] is None
    assert row["target_pct"] == 95.0 and row["target_ci"] == "93.00-96.50"
    assert row["qc_removed_pct"] == 10.0 and row["n_doublets"] == 12
