"""The command line: the demo runs end to end; bad input exits 2 with a message."""

from __future__ import annotations

import subprocess
import sys

import pytest

from sc_celltherapy.cli import main


def test_help_exits_zero(capsys):
    assert main(["--help"]) == 0
    assert "demo" in capsys.readouterr().out


@pytest.mark.parametrize(
    "command",
    [
        ["demo"],
        ["release"],
        ["qc"],
        ["cluster"],
        ["map"],
        ["score"],
        ["audit", "verify"],
        ["atlas", "build"],
        ["atlas", "verify"],
        ["atlas", "list"],
        ["atlas", "fetch"],
    ],
)
def test_every_subcommand_has_help(command, capsys):
    assert main([*command, "--help"]) == 0
    assert "usage: sc-celltherapy " + " ".join(command) in capsys.readouterr().out


def test_python_m_entry_point():
    proc = subprocess.run(
        [sys.executable, "-m", "sc_celltherapy", "release", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and "--verify-rerun" in proc.stdout


def test_qc_command_bad_input_exits_2(tmp_path, capsys):
    code = main(["qc", str(tmp_path / "missing.h5"), "--out", str(tmp_path / "out.h5ad")])
    assert code == 2
    assert "Input not found" in capsys.readouterr().err
    assert not (tmp_path / "out.h5ad").exists()


def test_qc_command_refuses_existing_output(cart_product_path, tmp_path, capsys):
    out = tmp_path / "out.h5ad"
    out.write_text("keep me")
    assert main(["qc", str(cart_product_path), "--out", str(out)]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert out.read_text() == "keep me"


@pytest.mark.slow
def test_qc_then_cluster_commands(cart_product_path, tmp_path):
    qc_out, cl_out = tmp_path / "qc.h5ad", tmp_path / "cl.h5ad"
    assert main(["qc", str(cart_product_path), "--out", str(qc_out)]) == 0
    assert main(["cluster", str(qc_out), "--out", str(cl_out)]) == 0
    import anndata as ad

    adata = ad.read_h5ad(cl_out)
    assert adata.uns["sct_qc"]["n_cells_after"] == adata.n_obs
    assert adata.obs["sct_cluster"].nunique() > 3


def test_atlas_verify_and_map_commands(demo_bundle, tmp_path, capsys):
    import shutil

    import anndata as ad

    import sc_celltherapy as sct

    assert main(["atlas", "verify", str(demo_bundle.path)]) == 0
    assert demo_bundle.sha256 in capsys.readouterr().out
    lot = tmp_path / "lot.h5ad"
    sct.datasets.pbmc_reference()[:150].copy().write_h5ad(lot)
    out = tmp_path / "mapped.h5ad"
    assert main(["map", str(lot), "--reference", str(demo_bundle.path), "--out", str(out)]) == 0
    assert "gene overlap 100.0%" in capsys.readouterr().out
    mapped = ad.read_h5ad(out)
    assert mapped.obs["sct_ref_prob"].between(0, 1).all()
    assert mapped.uns["sct_ref"]["sha256"] == demo_bundle.sha256

    # score: identity + purity of the mapped lot against the profile's example spec
    scored, report = tmp_path / "scored.h5ad", tmp_path / "purity.json"
    args = ["score", str(out), "--product", "car_t_demo", "--out", str(scored)]
    spec = tmp_path / "spec.yaml"
    spec.write_text("product: car_t_demo\ntarget: [T cells]\nmin_target_fraction: 0.5\n")
    assert main([*args, "--spec", str(spec), "--report-json", str(report)]) == 0
    assert "Verdict" in capsys.readouterr().out
    lot_scored = ad.read_h5ad(scored)
    n_target = int((lot_scored.obs["sct_identity_class"] == "target").sum())
    import json

    assert json.loads(report.read_text())["target"]["n"] == n_target
    # the first 150 reference cells are mostly not T cells: the 50% minimum fails
    assert lot_scored.uns["sct_purity"]["verdict"] == "FAIL"

    tampered = tmp_path / "tampered"
    shutil.copytree(demo_bundle.path, tampered)
    (tampered / "reference_latent.npz").write_bytes(b"not the latent")
    assert main(["atlas", "verify", str(tampered)]) == 2
    assert "reference_latent.npz" in capsys.readouterr().err
    out2 = tmp_path / "never.h5ad"
    assert main(["map", str(lot), "--reference", str(tampered), "--out", str(out2)]) == 2
    assert not out2.exists()


def test_atlas_list_command(demo_bundle, capsys):
    assert main(["atlas", "list"]) == 0
    assert "pbmc_demo" in capsys.readouterr().out


def test_atlas_fetch_unknown_name_exits_2(capsys):
    assert main(["atlas", "fetch", "no_such_atlas", "--no-build"]) == 2
    assert "no_such_atlas" in capsys.readouterr().err
