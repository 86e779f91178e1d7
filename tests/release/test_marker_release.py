"""Releases without a reference: identity from the profile's marker panels, the same audit and
outputs, and the bad inputs of a marker-only run refused before anything is written."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp

import sc_celltherapy as sct
from sc_celltherapy.cli import main
from sc_celltherapy.tl._identity import MARKER_METHOD


@pytest.fixture(scope="module")
def marker_release(cart_product_path, tmp_path_factory):
    """The real CAR-T product released with --reference none (car_t_demo example spec)."""
    out = tmp_path_factory.mktemp("marker") / "P02"
    args = ["release", str(cart_product_path), "--product", "car_t_demo", "--reference", "none"]
    args += ["--lot-id", "P02-M0", "--operator", "tester", "--out", str(out)]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    sct.release.validate_results(results)  # no mapping, no reference: still the schema
    return out, results


def test_marker_only_release_of_the_real_product(marker_release):
    """Measured on the 734 cells that pass QC: 508 target (69.2%), 12 off-target (1.6%), 214
    unassigned (29.2%: cells with few T-cell transcripts, mitochondrial and MALAT1/NEAT1-rich,
    that marker evidence cannot place), verdict FAIL on the example spec's target minimum and
    unassigned maximum."""
    out, results = marker_release
    keys = list(results)
    # the identity method is stated before the criteria
    assert keys.index("identity") < keys.index("criteria")
    ident = results["identity"]
    assert ident["method"] == MARKER_METHOD and ident["reference"] is None
    assert "no reference" in ident["statement"]
    assert ident["identities"]["T cells"]["genes_found"][:3] == ["CD3D", "CD3E", "CD3G"]
    assert ident["identities"]["T cells"]["assessed"] is True
    assert results["reference"] is None and results["mapping"] is None
    criteria = {c["criterion"]: c for c in results["criteria"]}
    assert criteria["target"]["n"] == 508 and results["purity"]["n_cells"] == 734
    assert criteria["target"]["verdict"] == "FAIL" and criteria["unassigned"]["verdict"] == "FAIL"
    assert criteria["off_target"]["n"] == 12
    assert results["verdict"] == "FAIL"
    html = (out / "report.html").read_text()
    assert html.index("id='identity-method'") < html.index("id='verdict-table'")
    summary = sct.release.verify_audit(out / "audit.jsonl")
    assert summary.n_records >= 7


def test_score_judges_the_same_classes_as_release(marker_release, tmp_path, capsys):
    """`score` on a QC'd, unmapped lot resolves spec, profile and target as `release` does."""
    out, _ = marker_release
    released = sct.io.read(out / "lot.h5ad")
    qc_path = tmp_path / "qc.h5ad"
    lot = released.copy()
    for key in [k for k in lot.uns if k.startswith(("sct_identity", "sct_purity"))]:
        del lot.uns[key]
    lot.write_h5ad(qc_path)
    scored = tmp_path / "scored.h5ad"
    assert main(["score", str(qc_path), "--product", "car_t_demo", "--out", str(scored)]) == 0
    assert MARKER_METHOD in capsys.readouterr().out
    again = sct.io.read(scored)
    np.testing.assert_array_equal(
        again.obs["sct_identity_class"].astype(str), released.obs["sct_identity_class"].astype(str)
    )


def test_marker_gates_of_the_msc_example_spec(cart_product_path, tmp_path):
    """The msc example spec's ISCT gates on a lot that is not MSC: NT5E, THY1 and ENG positive
    fractions FAIL their 95% minimum, haematopoietic markers (any of seven) FAIL their 2%
    maximum, each with its interval, labelled as transcripts."""
    out = tmp_path / "msc"
    args = ["release", str(cart_product_path), "--product", "msc", "--reference", "none"]
    args += ["--lot-id", "X", "--operator", "tester", "--out", str(out)]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    sct.release.validate_results(results)  # marker-gate criteria included
    gates = {c["criterion"]: c for c in results["criteria"] if c["criterion"].startswith("marker")}
    assert set(gates) == {
        "marker:NT5E",
        "marker:THY1",
        "marker:ENG",
        "marker:haematopoietic (ISCT negative markers)",
    }
    assert gates["marker:THY1"]["kind"] == "min" and gates["marker:THY1"]["verdict"] == "FAIL"
    haem = gates["marker:haematopoietic (ISCT negative markers)"]
    assert haem["kind"] == "max" and haem["rule"] == "any" and haem["verdict"] == "FAIL"
    assert haem["fraction"] > 0.95  # PTPRC is detected in nearly every T cell
    assert "not flow" in (out / "report.html").read_text()
    assert (results["purity"]["method"]["marker_gates"]).startswith("a cell is positive")


def _refused(args, out, capsys, fragment):
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert fragment in err, err
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.*"))
    return err


def _release_args(path, out, product="car_t_demo"):
    return [
        "release",
        str(path),
        "--product",
        product,
        "--reference",
        "none",
        "--lot-id",
        "BAD",
        "--operator",
        "tester",
        "--out",
        str(out),
    ]


def test_marker_only_bad_inputs_are_refused_before_work(cart_product_path, tmp_path, capsys):
    lot = sct.io.read(cart_product_path)
    # the target's panel is not in the lot (a gene subset)
    subset = lot[:, ~lot.var_names.isin(["CD3D", "CD3E", "CD3G", "CD2", "CD5", "TRAC"])].copy()
    path = tmp_path / "subset.h5ad"
    subset.write_h5ad(path)
    out = tmp_path / "r1"
    _refused(_release_args(path, out), out, capsys, "cannot be assessed from its marker panel")
    # Ensembl ids and no symbol column
    ids = lot.copy()
    ids.var_names = ids.var["gene_ids"].astype(str).to_numpy()
    ids.var_names_make_unique()
    path = tmp_path / "ensembl.h5ad"
    ids.write_h5ad(path)
    out = tmp_path / "r2"
    _refused(_release_args(path, out), out, capsys, "no gene-symbol column")
    # normalised values: refused, and not told to round
    tpm = lot.copy()
    tpm.X = sp.csr_matrix(tpm.X.multiply(1e6 / tpm.X.sum(axis=1)), dtype=np.float32)
    path = tmp_path / "tpm.h5ad"
    tpm.write_h5ad(path)
    out = tmp_path / "r3"
    err = _refused(_release_args(path, out), out, capsys, "looks normalised")
    assert "np.round" not in err
    # a profile without a reference needs a profile
    out = tmp_path / "r4"
    args = ["release", str(cart_product_path), "--spec", str(_spec_file(tmp_path)), "--reference"]
    args += ["none", "--lot-id", "B", "--operator", "t", "--out", str(out)]
    _refused(args, out, capsys, "pass --product")


def _spec_file(tmp_path):
    spec = sct.release.Spec(product="unshipped product", target=("T cells",))
    path = tmp_path / "spec.yaml"
    spec.to_yaml(path)
    return path


def test_counts_in_a_layer_are_released_with_layer(marker_release, cart_product_path, tmp_path):
    """An .h5ad whose .X is normalised and whose counts sit in layers['counts'] (as scanpy
    users keep them) is refused without --layer, naming the flag, and released with it to the
    same numbers as the counts file itself; results.json says where the counts came from."""
    import scanpy as sc

    _, plain = marker_release
    lot = sct.io.read(cart_product_path)
    lot.layers["counts"] = lot.X.copy()
    sc.pp.normalize_total(lot, target_sum=1e4)
    sc.pp.log1p(lot)
    path = tmp_path / "normalised.h5ad"
    lot.write_h5ad(path)
    base = ["release", str(path), "--product", "car_t_demo", "--reference", "none"]
    base += ["--lot-id", "P02-L0", "--operator", "tester"]
    with pytest.raises(sct.InputError, match="--layer counts"):
        sct.release.run(
            path,
            out_dir=tmp_path / "refused",
            lot_id="x",
            operator="t",
            product="car_t_demo",
            reference="none",
        )
    assert not (tmp_path / "refused").exists()
    out = tmp_path / "layered"
    assert main([*base, "--out", str(out), "--layer", "counts"]) == 0
    results = json.loads((out / "results.json").read_text())
    sct.release.validate_results(results)
    assert results["inputs"]["counts"] == "layers['counts']"
    assert plain["inputs"]["counts"] == ".X"
    assert results["criteria"] == plain["criteria"]
    assert results["verdict"] == plain["verdict"] == "FAIL"
