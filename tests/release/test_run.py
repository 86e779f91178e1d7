"""The release command on the real CAR-T product: outputs, determinism, audit trail, atomicity."""

from __future__ import annotations

import json
import shutil

import anndata as ad
import pytest

import sc_celltherapy as sct
from cpu_spread import CPU_SPREAD
from sc_celltherapy.cli import main
from sc_celltherapy.release import compare_results, verify_audit
from sc_celltherapy.release._results import PER_RUN_KEY, RESULTS_SCHEMA


def _release(args, out, *, capsys=None) -> int:
    return main(["release", *map(str, args), "--out", str(out)])


@pytest.fixture(scope="module")
def cart_releases(cart_product_path, demo_bundle, tmp_path_factory):
    """The CAR-T product released twice with the same inputs and seed."""
    base = tmp_path_factory.mktemp("cart")
    outs = []
    for i in (1, 2):
        out = base / f"release{i}"
        code = _release(
            [
                cart_product_path,
                "--product",
                "car_t_demo",
                "--reference",
                demo_bundle.path,
                "--lot-id",
                "P02-M0",
                "--operator",
                "tester",
                "--seed",
                "0",
            ],
            out,
        )
        assert code == 0
        outs.append(out)
    return outs


def test_release_outputs(cart_releases, demo_bundle, cart_product_path):
    out = cart_releases[0]
    assert sorted(p.name for p in out.iterdir()) == [
        "audit.jsonl",
        "composition.png",
        "lot.h5ad",
        "report.html",
        "results.json",
    ]
    r = json.loads((out / "results.json").read_text())
    assert r["schema"] == RESULTS_SCHEMA and r["lot_id"] == "P02-M0"
    sct.release.validate_results(r)  # the shipped JSON Schema holds
    assert r["inputs"]["sha256"] == sct.io.file_sha256(cart_product_path)
    assert r["inputs"]["n_barcodes"] == 1099
    assert r["reference"]["sha256"] == demo_bundle.sha256
    # measured: 705 of the 734 cells passing QC are T cells (96.0%), every criterion of the
    # example spec passes; no cell's lineage label set spans T cells and an impurity
    assert r["verdict"] == "PASS"
    assert r["qc"]["n_assessed"] == 734 and r["criteria"][0]["n"] == 705
    ambiguous = r["purity"]["impurities"]["ambiguous"]
    assert ambiguous["n"] == 0 and ambiguous["limit"] is None  # reported, not judged
    # what the reference promises, as its bundle measured it: one batch, so within-donor only
    reliability = r["reference"]["calibration"]
    assert reliability["across_donors"] is False and "One batch" in reliability["note"]
    assert reliability["label_sets"]["alpha"] == 0.1
    assert set(reliability["per_donor"]) == {"half 1", "half 2"}
    levels = r["mapping"]["set_levels"]
    assert levels["mixed"] == 0 and levels["fine"] + levels["coarse"] == 734
    assert levels["fine"] in CPU_SPREAD["fine-level cells"]
    # the profile's CD3 gate is recorded with its effect: in this unsorted product no cell
    # called NK carries T-lineage transcripts beyond ambient
    gate = r["identity"]["rules"]["lineage_gate"]
    assert gate["genes_found"] == ["CD3D", "CD3E", "CD3G", "TRAC"] and gate["n_rescued"] == 0
    assert "id='lineage-gate'" in (out / "report.html").read_text()
    # every judged criterion carries its interval, limit and verdict
    target = r["criteria"][0]
    assert target["criterion"] == "target" and target["limit"] == 0.8
    assert target["ci_low"] <= target["fraction"] <= target["ci_high"]
    assert r["detection"]["lod95"] == pytest.approx(1 - 0.05 ** (1 / r["qc"]["n_assessed"]))
    # the CAR transgene is reported, as a lower bound
    assert r["purity"]["transgene"]["features"] == ["CAT_scFv"]
    assert r["purity"]["transgene"]["lower_bound"] is True
    # the donor's sex is read from the cells and reported; the example spec judges nothing
    donor = r["purity"]["chain_of_identity"]
    assert donor["call"] == "male" and donor["verdict"] is None
    assert donor["n"]["male"] > 400 and donor["n"]["female"] == 0
    assert "id='chain-of-identity'" in (out / "report.html").read_text()
    run = r[PER_RUN_KEY]
    assert set(run["timings_s"]) >= {"read", "qc", "map", "identity", "purity", "report"}
    assert run["operator"] == "tester" and "cpu_count" in run["hardware"]
    # the facts that decide whether a rerun elsewhere is bit-identical (see CPU_SPREAD)
    assert {"cpu_model", "torch_cpu_capability", "blas"} <= set(run["hardware"])
    lot = ad.read_h5ad(out / "lot.h5ad")
    assert lot.n_obs == r["qc"]["n_assessed"]
    assert (lot.obs["sct_identity_class"] == "target").sum() == target["n"]
    # the audit trail names what was read and written, by hash
    summary = verify_audit(out / "audit.jsonl")
    records = [json.loads(line) for line in (out / "audit.jsonl").read_text().splitlines()]
    assert summary.n_records == len(records) and records[0]["action"] == "run started"
    assert records[-1]["action"] == "run finished"
    assert records[0]["read"][f"input:{cart_product_path.name}"] == r["inputs"]["sha256"]
    written = next(x for x in records if x["action"] == "outputs written")["wrote"]
    assert written["results.json"] == sct.io.file_sha256(out / "results.json")
    assert written["report.html"] == sct.io.file_sha256(out / "report.html")
    assert {x["operator"] for x in records} == {"tester"}


def test_a_lot_recorded_as_another_sex_fails_its_chain_of_identity(
    cart_product_path, demo_bundle, tmp_path
):
    """Patient P02's product released against a record that says the donor is female: the
    lot FAILs on the chain of identity alone (every other criterion passes, as above)."""
    import dataclasses

    from sc_celltherapy.release import Spec

    spec = dataclasses.replace(
        Spec.from_profile("car_t_demo"), expected_sex="female", single_donor=True
    )
    spec.to_yaml(tmp_path / "spec.yaml")
    out = tmp_path / "swapped"
    args = [cart_product_path, "--spec", tmp_path / "spec.yaml", "--product", "car_t_demo"]
    args += ["--reference", demo_bundle.path, "--lot-id", "P02-M0", "--operator", "tester"]
    assert _release(args, out) == 0
    r = json.loads((out / "results.json").read_text())
    donor = r["purity"]["chain_of_identity"]
    assert r["verdict"] == "FAIL" and donor["verdict"] == "FAIL"
    assert "the record says female" in donor["reason"]
    assert all(c["verdict"] == "PASS" for c in r["criteria"])
    assert "the record says female" in (out / "report.html").read_text()


def test_release_is_deterministic(cart_releases):
    first, second = (json.loads((o / "results.json").read_text()) for o in cart_releases)
    assert first[PER_RUN_KEY]["run_id"] != second[PER_RUN_KEY]["run_id"]
    assert compare_results(first, second) == {"agrees": True, "differences": []}
    strip = lambda r: {k: v for k, v in r.items() if k != PER_RUN_KEY}  # noqa: E731
    assert json.dumps(strip(first), sort_keys=True) == json.dumps(strip(second), sort_keys=True)


def test_compare_results_names_a_difference(cart_releases):
    first = json.loads((cart_releases[0] / "results.json").read_text())
    changed = json.loads(json.dumps(first))
    changed["criteria"][0]["fraction"] += 1e-9
    assert compare_results(first, changed) == {"agrees": False, "differences": ["criteria"]}


@pytest.mark.parametrize("tamper", ["edit", "delete_middle", "delete_last", "reorder", "insert"])
def test_audit_verify_detects_tampering(cart_releases, tmp_path, capsys, tamper):
    log = tmp_path / "audit.jsonl"
    shutil.copy(cart_releases[0] / "audit.jsonl", log)
    assert main(["audit", "verify", str(log)]) == 0
    lines = log.read_text().splitlines()
    if tamper == "edit":
        lines[2] = lines[2].replace('"operator":"tester"', '"operator":"someone else"')
        assert '"someone else"' in lines[2]
    elif tamper == "delete_middle":
        del lines[3]
    elif tamper == "delete_last":
        del lines[-1]
    elif tamper == "reorder":
        lines[2], lines[3] = lines[3], lines[2]
    else:
        lines.insert(2, lines[2])
    log.write_text("\n".join(lines) + "\n")
    capsys.readouterr()
    assert main(["audit", "verify", str(log)]) == 2
    err = capsys.readouterr().err
    expected = {
        "edit": "was edited",
        "delete_middle": "expected 3",
        "delete_last": "ends inside run",
        "reorder": "expected 2",
        "insert": "expected 3",
    }[tamper]
    assert expected in err


def test_verify_rerun_states_agreement(small_lot, demo_bundle, demo_spec, tmp_path, capsys):
    path, _ = small_lot
    out = tmp_path / "rerun"
    args = [path, "--spec", demo_spec, "--reference", demo_bundle.path]
    args += ["--lot-id", "S1", "--operator", "tester", "--verify-rerun"]
    assert _release(args, out) == 0
    assert "verify-rerun: results agree" in capsys.readouterr().out
    r = json.loads((out / "results.json").read_text())
    assert r[PER_RUN_KEY]["rerun"] == {"agrees": True, "differences": []}
    actions = [json.loads(x)["action"] for x in (out / "audit.jsonl").read_text().splitlines()]
    assert actions.count("rerun started") == 1 and "rerun compared" in actions
    verify_audit(out / "audit.jsonl")


def test_release_that_fails_midway_leaves_nothing(
    small_lot, demo_bundle, demo_spec, tmp_path, monkeypatch, capsys
):
    """A step that raises: exit 1, no release directory, no partial directory; the lab-wide
    audit log keeps the failed run, and its chain still verifies."""
    path, _ = small_lot

    def broken(*args, **kwargs):
        raise RuntimeError("simulated crash in the purity step")

    monkeypatch.setattr(sct.tl, "assess_purity", broken)
    parent = tmp_path / "releases"
    parent.mkdir()
    lab_log = tmp_path / "lab_audit.jsonl"
    args = [path, "--spec", demo_spec, "--reference", demo_bundle.path]
    args += ["--lot-id", "S1", "--operator", "tester", "--audit-log", lab_log]
    assert _release(args, parent / "lot1") == 1
    assert "simulated crash" in capsys.readouterr().err
    assert list(parent.iterdir()) == []
    records = [json.loads(x) for x in lab_log.read_text().splitlines()]
    assert records[0]["action"] == "run started" and records[-1]["action"] == "run failed"
    assert "simulated crash" in records[-1]["details"]["error"]
    assert verify_audit(lab_log).runs == [records[0]["run_id"]]


def test_demo_release(demo_release):
    """The README's first command: a full release of a lot with planted contaminants."""
    out, proc, r = demo_release
    assert "verdict" in proc.stdout and (out / "report.html").stat().st_size > 0
    verify_audit(out / "audit.jsonl")
    lot = ad.read_h5ad(out / "lot.h5ad")
    # B cells were planted at 2.5% against the example spec's 1% limit: the release must see
    # them at about that fraction and fail the lot on that criterion
    planted = (lot.obs["planted_identity"] == "CD19+ B").mean()
    b = next(c for c in r["criteria"] if c["criterion"] == "identity:B-lineage cells")
    assert abs(b["fraction"] - planted) < 0.01
    assert b["verdict"] == "FAIL" and r["verdict"] == "FAIL"
    target = r["criteria"][0]
    planted_t = (lot.obs["planted_identity"] == "T cells").mean()
    assert abs(target["fraction"] - planted_t) < 0.05
    assert r["spec"]["example"] is True


def test_score_and_release_judge_the_same_classes(small_lot, demo_bundle, tmp_path):
    """One resolution of spec + profile + reference: a spec whose target lists reference labels
    (CD8 T cells of the PBMC reference, not the profile's target name) gets the same classes
    and the same target count from `release` and from `score` on the released, mapped lot."""
    import dataclasses

    path, _ = small_lot
    spec = dataclasses.replace(
        sct.release.Spec.from_profile("car_t_demo"),
        target=("CD8+ Cytotoxic T", "CD8+/CD45RA+ Naive Cytotoxic"),
        min_target_fraction=0.05,
        transgene_features=(),
    )
    spec_path = tmp_path / "cd8.yaml"
    spec.to_yaml(spec_path)
    out = tmp_path / "cd8"
    args = [path, "--spec", spec_path, "--reference", demo_bundle.path]
    assert _release([*args, "--lot-id", "S1", "--operator", "tester"], out) == 0
    released = ad.read_h5ad(out / "lot.h5ad")
    scored_path = tmp_path / "scored.h5ad"
    assert (
        main(["score", str(out / "lot.h5ad"), "--spec", str(spec_path), "--out", str(scored_path)])
        == 0
    )
    scored = ad.read_h5ad(scored_path)
    classes = released.obs["sct_identity_class"].astype(str)
    assert (classes == scored.obs["sct_identity_class"].astype(str)).all()
    r = json.loads((out / "results.json").read_text())
    # measured: 46 of 279 cells are CD8 target (41 on a CPU with other kernels); 137 are
    # ambiguous (their label sets span CD8 and the other T labels, which this spec treats as
    # an impurity)
    n_target = int((classes == "target").sum())
    assert r["criteria"][0]["n"] == n_target
    assert n_target in CPU_SPREAD["CD8 target cells"]
    assert list(released.uns["sct_identity"]["target"]) == list(spec.target)  # array after h5ad
    # the library call resolves the same way
    lot = released.copy()
    report = sct.release.score(lot, spec)
    assert report.target.n == n_target


def test_results_schema_rejects_what_a_reader_could_not_trust():
    """The shipped schema is not a formality: a verdict outside PASS/FAIL/INCONCLUSIVE, a
    fraction above 1 or a missing per-run record each fail it, naming the field."""
    import jsonschema

    schema = json.loads(sct.release._results.RESULTS_SCHEMA_FILE.read_text())
    assert schema["$id"] == RESULTS_SCHEMA
    row = {"n": 3, "fraction": 0.1, "ci_low": 0.02, "ci_high": 0.26, "limit": 0.2}
    row |= {"verdict": "PASS", "cells_needed": None}
    validator = jsonschema.Draft202012Validator({"$ref": "#/$defs/row", "$defs": schema["$defs"]})
    assert validator.is_valid(row)
    assert not validator.is_valid(row | {"verdict": "OK"})
    assert not validator.is_valid(row | {"fraction": 1.5})
    with pytest.raises(jsonschema.ValidationError, match="'run' is a required property"):
        sct.release.validate_results({k: None for k in schema["required"] if k != "run"})


def test_audit_verify_checks_a_release_directory_against_its_files(cart_releases, tmp_path):
    """Re-sealing the chain is not enough: a release's own log holds one run and the hashes
    of what it wrote, so a flipped verdict or an appended forged run is refused."""
    from sc_celltherapy.release import AuditError, AuditLog

    flipped = tmp_path / "flipped"
    shutil.copytree(cart_releases[0], flipped)
    verify_audit(flipped / "audit.jsonl")
    r = json.loads((flipped / "results.json").read_text())
    r["verdict"] = "FAIL" if r["verdict"] == "PASS" else "PASS"
    (flipped / "results.json").write_text(json.dumps(r, indent=2))
    with pytest.raises(AuditError, match="results.json does not match the hash"):
        verify_audit(flipped / "audit.jsonl")
    assert main(["audit", "verify", str(flipped / "audit.jsonl")]) == 2

    appended = tmp_path / "appended"
    shutil.copytree(cart_releases[0], appended)
    forged = AuditLog(appended / "audit.jsonl", operator="mallory", run_id="forged")
    forged.append("run started")
    forged.append("run finished", verdict="PASS")
    with pytest.raises(AuditError, match="holds 2 runs"):
        verify_audit(appended / "audit.jsonl")
