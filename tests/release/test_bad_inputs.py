"""Every bad input is refused with exit 2, a message naming the problem, and nothing written."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import scipy.sparse as sp

from sc_celltherapy.cli import main


@pytest.fixture
def release(small_lot, demo_bundle, demo_spec, tmp_path, capsys):
    """Run `release` on (by default) the valid small lot and spec; returns exit code, stderr,
    out dir."""

    def _run(
        input=None, *, extra=(), spec=demo_spec, product="car_t_demo", reference=None, out=None
    ):
        out = out if out is not None else tmp_path / "release"
        args = ["release", str(input if input is not None else small_lot[0])]
        args += ["--spec", str(spec)] if spec is not None else []
        args += ["--product", product] if product is not None else []
        args += ["--reference", str(reference or demo_bundle.path)]
        args += ["--lot-id", "BAD-1", "--operator", "tester", "--out", str(out), *extra]
        capsys.readouterr()
        code = main(args)
        return code, capsys.readouterr().err, out

    return _run


def _write(tmp_path, adata, name="lot.h5ad"):
    path = tmp_path / name
    adata.write_h5ad(path)
    return path


def _expect_refusal(result, fragment):
    code, err, out = result
    assert code == 2, err
    assert fragment.lower() in err.lower(), err
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.*")), "a partial directory was left"


def test_missing_file(release, tmp_path):
    _expect_refusal(release(tmp_path / "nope.h5ad"), "Input not found")


@pytest.mark.parametrize("kind", ["h5", "h5ad"])
def test_truncated_file(release, tmp_path, cart_product_path, small_lot, kind):
    source = cart_product_path if kind == "h5" else small_lot[0]
    data = source.read_bytes()
    path = tmp_path / f"truncated.{kind}"
    path.write_bytes(data[: len(data) // 2])
    _expect_refusal(release(path), "truncated or corrupt")


def test_empty_matrix(release, tmp_path, small_lot):
    _expect_refusal(release(_write(tmp_path, small_lot[1][:0].copy())), "matrix is empty")


def test_x_none_with_counts_in_a_layer_names_the_layer(release, tmp_path, small_lot):
    import anndata as ad

    lot = ad.AnnData(obs=small_lot[1].obs.copy(), var=small_lot[1].var.copy())
    lot.layers["counts"] = small_lot[1].X.copy()
    _expect_refusal(release(_write(tmp_path, lot)), "--layer counts")


def test_log_normalised_values(release, tmp_path, small_lot):
    lot = small_lot[1].copy()
    lot.X = sp.csr_matrix(np.log1p(lot.X.toarray() / lot.X.sum(1).A * 1e4))
    _expect_refusal(release(_write(tmp_path, lot)), "raw counts")


def test_mouse_genes_against_human_reference(release, tmp_path, small_lot):
    lot = small_lot[1].copy()
    lot.var_names = [g[:1] + g[1:].lower() for g in lot.var_names]
    _expect_refusal(release(_write(tmp_path, lot)), "species mismatch")


def test_gene_overlap_below_threshold(release, tmp_path, small_lot):
    lot = small_lot[1][:, :200].copy()  # 200 of the reference's 765 genes
    _expect_refusal(release(_write(tmp_path, lot)), "below the 50% needed")


def test_spec_with_unknown_identity(release, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "product: car_t_demo\ntarget: [T cells]\nmin_target_fraction: 0.8\n"
        "max_identity_fraction:\n  Martian cells: 0.01\n"
    )
    _expect_refusal(release(spec=spec, product=None), "['Martian cells']")


def test_unknown_product(release):
    _expect_refusal(release(product="car_t_deluxe"), "Unknown product 'car_t_deluxe'")


def test_tampered_bundle(release, demo_bundle, tmp_path):
    tampered = tmp_path / "tampered_bundle"
    shutil.copytree(demo_bundle.path, tampered)
    latent = next(p for p in tampered.rglob("*") if p.is_file() and p.name != "bundle.json")
    latent.write_bytes(latent.read_bytes() + b"\0")
    _expect_refusal(release(reference=tampered), latent.name)


def test_resealed_bundle_is_refused_when_its_hash_is_pinned(release, demo_bundle, tmp_path):
    """The attack the manifest digest cannot stop: bundle.json edited (a laxer out-of-reference
    threshold) and its manifest_sha256 recomputed. The bundle verifies; the pinned hash does
    not."""
    import json

    from sc_celltherapy import atlas
    from sc_celltherapy.atlas._store import manifest_digest

    resealed = tmp_path / "resealed"
    shutil.copytree(demo_bundle.path, resealed)
    manifest = json.loads((resealed / "bundle.json").read_text())
    manifest["oor"]["threshold"] = 99.0
    manifest["manifest_sha256"] = manifest_digest(manifest)
    (resealed / "bundle.json").write_text(json.dumps(manifest, indent=2))
    assert atlas.load(resealed).manifest["oor"]["threshold"] == 99.0  # accepted on its own
    pinned = ["--reference-sha256", demo_bundle.sha256]
    _expect_refusal(release(reference=resealed, extra=pinned), "not the " + demo_bundle.sha256)


@pytest.fixture
def lab_keys(tmp_path):
    from sc_celltherapy.release import generate_key

    return generate_key(tmp_path / "lab.key")


@pytest.fixture
def signed_bundle(demo_bundle, lab_keys, tmp_path):
    from sc_celltherapy import atlas

    signed = tmp_path / "signed"
    shutil.copytree(demo_bundle.path, signed)
    atlas.sign_bundle(signed, lab_keys[0])
    return signed


def test_a_signed_bundle_verifies_and_keeps_its_hash(signed_bundle, demo_bundle, lab_keys):
    """The signature sits beside bundle.json, not in it: the bundle still verifies (it is not
    an extra file) and its hash, which a lab may have pinned, is unchanged."""
    from sc_celltherapy import atlas

    bundle = atlas.load(signed_bundle)
    assert bundle.sha256 == demo_bundle.sha256
    checked = atlas.check_signature(bundle, lab_keys[1])
    assert checked["checked"] and len(checked["public_key_sha256"]) == 64
    with pytest.raises(atlas.BundleError, match="never overwritten"):
        atlas.sign_bundle(signed_bundle, lab_keys[0])


def test_resealed_signed_bundle_is_refused_with_the_lab_key(
    release, signed_bundle, lab_keys, tmp_path
):
    """The re-sealing attack without a pinned hash: the lab's public key catches it, because
    the forger cannot sign the new bundle.json."""
    import json

    from sc_celltherapy import atlas
    from sc_celltherapy.atlas._store import manifest_digest

    manifest = json.loads((signed_bundle / "bundle.json").read_text())
    manifest["oor"]["threshold"] = 99.0
    manifest["manifest_sha256"] = manifest_digest(manifest)
    (signed_bundle / "bundle.json").write_text(json.dumps(manifest, indent=2))
    assert atlas.load(signed_bundle).manifest["oor"]["threshold"] == 99.0  # verifies alone
    key = ["--reference-public-key", str(lab_keys[1])]
    _expect_refusal(release(reference=signed_bundle, extra=key), "signature does not hold")


def test_unsigned_or_other_keys_bundle_is_refused(release, demo_bundle, signed_bundle, tmp_path):
    from sc_celltherapy.release import generate_key

    _, other_public = generate_key(tmp_path / "other.key")
    key = ["--reference-public-key", str(other_public)]
    _expect_refusal(release(reference=signed_bundle, extra=key), "signature does not hold")
    _expect_refusal(release(reference=demo_bundle.path, extra=key), "is not signed")
    no_ref = [*key, "--reference", "none"]
    _expect_refusal(release(extra=no_ref), "no reference to check")


def test_the_checked_signature_is_what_the_release_records(
    signed_bundle, lab_keys, small_lot, demo_spec
):
    from sc_celltherapy.release._preflight import preflight

    def resolved(public_key):
        return preflight(
            small_lot[0],
            out_dir=signed_bundle.parent / "out",
            lot_id="L",
            operator="o",
            spec=demo_spec,
            product="car_t_demo",
            reference=signed_bundle,
            batch_key=None,
            min_gene_overlap=0.5,
            reference_public_key=public_key,
        ).reference_signature

    assert resolved(None) == {"checked": False}
    checked = resolved(lab_keys[1])
    assert checked["checked"] and checked["public_key_sha256"] == _fingerprint(lab_keys[1])


def _fingerprint(public_key_path) -> str:
    import hashlib

    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_public_key(public_key_path.read_bytes())
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def test_output_directory_exists(release, tmp_path):
    out = tmp_path / "existing"
    out.mkdir()
    (out / "keep.txt").write_text("earlier release")
    code, err, _ = release(out=out)
    assert code == 2 and "never overwritten" in err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert (out / "keep.txt").read_text() == "earlier release"


@pytest.mark.parametrize("where", ["under_a_file", "read_only_fs"])
def test_unwritable_output_location(release, tmp_path, where):
    if where == "under_a_file":
        blocker = tmp_path / "a_file"
        blocker.write_text("x")
        out = blocker / "release"
        fragment = "not an existing directory"
    else:  # /proc refuses new directories even to root, unlike permission bits
        out = __import__("pathlib").Path("/proc/sct_release_test")
        fragment = "Cannot write in /proc"
    _expect_refusal(release(out=out), fragment)


def test_zero_cells_after_qc(release, tmp_path, small_lot):
    lot = small_lot[1].copy()
    rng = np.random.default_rng(0)
    X = lot.X.tocsr()
    X.data = rng.binomial(X.data.astype(np.int64), 0.15).astype(np.float32)  # < 200 genes each
    X.eliminate_zeros()
    lot.X = X
    _expect_refusal(release(_write(tmp_path, lot)), "QC would remove all")


@pytest.mark.parametrize("n_cells", [1, 9])
def test_lot_too_small_to_release(release, tmp_path, small_lot, n_cells):
    """One cell crashed the QC plot's histogram after the chain had started; nine reached
    mapping and only clustering refused them."""
    lot = small_lot[1][:n_cells].copy()
    _expect_refusal(release(_write(tmp_path, lot)), f"Only {n_cells} barcode(s) in the input")


def test_too_few_cells_left_after_qc_is_refused_before_mapping(release, tmp_path, small_lot):
    # 90 barcodes: the nine richest cells whole (a tenth of the lot, so still its upper mode
    # of genes per cell), the rest thinned to 15% (a low mode of broken barcodes)
    lot = small_lot[1].copy()
    rng = np.random.default_rng(0)
    X = lot.X.tocsr().astype(np.float32)
    order = np.argsort(-np.diff(X.indptr))[:90]
    lot = lot[order].copy()
    X = X[order]
    thinned = X[9:].copy()
    thinned.data = rng.binomial(thinned.data.astype(np.int64), 0.15).astype(np.float32)
    lot.X = sp.vstack([X[:9], thinned]).tocsr()
    lot.X.eliminate_zeros()
    code, err, out = release(_write(tmp_path, lot))
    _expect_refusal((code, err, out), "cell(s) left after QC")
    assert "[3/" not in err  # no mapping step was started


def test_all_cells_with_the_same_few_genes(release, tmp_path, small_lot):
    """Every cell holding only the lot's five largest genes used to crash; QC refuses it and
    names the genes-per-cell criterion."""
    lot = small_lot[1].copy()
    X = lot.X.tocsc()
    keep = np.argsort(-np.asarray(X.sum(axis=0)).ravel())[:5]
    mask = np.zeros(X.shape[1], dtype=np.float32)
    mask[keep] = 1
    lot.X = sp.csr_matrix(X @ sp.diags(mask))
    lot.X.eliminate_zeros()
    _expect_refusal(release(_write(tmp_path, lot)), "'sct_low_quality_genes': 300")


def test_duplicate_barcodes(release, tmp_path, small_lot):
    lot = small_lot[1].copy()
    lot.obs_names = ["same_barcode"] * 2 + list(lot.obs_names[2:])
    _expect_refusal(release(_write(tmp_path, lot)), "occur more than once")


@pytest.mark.parametrize("value", [np.nan, -1.0])
def test_nan_or_negative_values(release, tmp_path, small_lot, value):
    lot = small_lot[1].copy()
    X = lot.X.toarray()
    X[0, np.flatnonzero(X[0])[0]] = value
    lot.X = sp.csr_matrix(X)
    fragment = "NaN" if np.isnan(value) else "negative"
    _expect_refusal(release(_write(tmp_path, lot)), fragment)


def test_malformed_spec_yaml(release, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("product: car_t_demo\ntarget: [T cells\nmin_target_fraction: 0.8\n")
    _expect_refusal(release(spec=spec, product=None), "not valid YAML")


def test_spec_limit_outside_unit_interval(release, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("product: car_t_demo\ntarget: [T cells]\nmin_target_fraction: 80\n")
    _expect_refusal(release(spec=spec, product=None), "not a fraction in [0, 1]")


def test_neither_spec_nor_product(release):
    _expect_refusal(release(spec=None, product=None), "--product")


def test_spec_transgene_missing_from_lot(release):
    # the example spec names the CAR feature CAT_scFv, which the PBMC lot does not have
    _expect_refusal(release(spec=None), "CAT_scFv")


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--min-gene-overlap", "nan"], "min_gene_overlap must be a fraction in (0, 1]"),
        (["--min-gene-overlap", "-1"], "min_gene_overlap must be a fraction in (0, 1]"),
        (["--min-gene-overlap", "0"], "min_gene_overlap must be a fraction in (0, 1]"),
        (["--min-gene-overlap", "1.5"], "min_gene_overlap must be a fraction in (0, 1]"),
        (["--seed", "-1"], "seed must be a non-negative integer"),
    ],
)
def test_options_that_would_disable_a_check_are_refused(release, extra, fragment):
    """A gate of NaN or -1 would let a lot with no reference gene through; a negative seed
    crashed numpy after the chain had started. Both are refused before anything is read."""
    _expect_refusal(release(extra=extra), fragment)


def test_dangling_link_at_out_is_refused_before_work(release, tmp_path):
    out = tmp_path / "release"
    out.symlink_to(tmp_path / "nowhere")
    code, err, _ = release(out=out)
    assert code == 2 and "symbolic link to nothing" in err
    assert out.is_symlink() and not list(tmp_path.glob(".release.*"))


def test_out_name_too_long_for_its_partial_sibling(release, tmp_path):
    # 250 characters fit a file name (255) but not ".<name>.partial-xxxxxxxx"
    _expect_refusal(release(out=tmp_path / ("L" * 250)), "File name too long")


@pytest.mark.parametrize("where", ["missing_folder", "a_directory", "inside_a_release"])
def test_bad_lab_audit_log_is_refused_before_work(release, tmp_path, where):
    other = tmp_path / "old_release"
    other.mkdir()
    (other / "results.json").write_text("{}")
    (other / "audit.jsonl").write_text("")
    log = {
        "missing_folder": tmp_path / "no" / "such" / "lab.jsonl",
        "a_directory": tmp_path,
        "inside_a_release": other / "lab.jsonl",
    }[where]
    fragment = {
        "missing_folder": "does not exist",
        "a_directory": "is a directory",
        "inside_a_release": "lies inside the release directory",
    }[where]
    _expect_refusal(release(extra=["--audit-log", str(log)]), fragment)
    assert not (other / "lab.jsonl").exists()
