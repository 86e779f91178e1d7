"""Reading 10x .h5, 10x matrix folders and .h5ad; every bad input refused with a clear message."""

from __future__ import annotations

import gzip
import shutil
import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.io
import scipy.sparse as sp
from anndata import AnnData

import sc_celltherapy as sct
from sc_celltherapy._checks import (
    DuplicateBarcodesError,
    EmptyDataError,
    NotCountsError,
    UnsupportedFormatError,
)
from sc_celltherapy.io import MissingFileError


@pytest.fixture(scope="module")
def product(cart_product_path):
    return sct.io.read(cart_product_path)


def test_read_10x_h5_keeps_features(product):
    assert product.shape == (1099, 36602)
    assert product.var_names.is_unique
    assert {"gene_ids", "feature_types"} <= set(product.var.columns)
    assert product.var.loc["CD3E", "gene_ids"].startswith("ENSG")
    # the CAR transgene stays in the matrix, detected in 13 barcodes of this lot
    assert "CAT_scFv" in product.var_names
    assert int((product[:, "CAT_scFv"].X > 0).sum()) == 13
    assert product.uns["sct_input"]["format"] == "10x_h5"
    assert len(product.uns["sct_input"]["sha256"]) == 64


def _write_mtx_folder(adata: AnnData, folder) -> None:
    folder.mkdir()
    with gzip.open(folder / "matrix.mtx.gz", "wb") as fh:
        scipy.io.mmwrite(fh, sp.csr_matrix(adata.X).T.astype(np.int64))
    features = pd.DataFrame(
        {"id": adata.var["gene_ids"], "name": adata.var_names, "type": adata.var["feature_types"]}
    )
    features.to_csv(folder / "features.tsv.gz", sep="\t", header=False, index=False)
    pd.Series(adata.obs_names).to_csv(folder / "barcodes.tsv.gz", header=False, index=False)


def test_read_mtx_folder_matches_h5(product, tmp_path):
    small = product[:50].copy()
    _write_mtx_folder(small, tmp_path / "mtx")
    back = sct.io.read(tmp_path / "mtx")
    assert back.shape == small.shape
    assert (back.X != small.X).nnz == 0
    assert list(back.var["gene_ids"]) == list(small.var["gene_ids"])
    assert back.uns["sct_input"]["format"] == "10x_mtx"


def test_read_h5ad_and_counts_layer(product, tmp_path):
    small = product[:40].copy()
    small.layers["counts"] = small.X.copy()
    small.X = np.log1p(small.X)
    small.write_h5ad(tmp_path / "lot.h5ad")
    with pytest.raises(NotCountsError, match="log-normalised.*layer='counts'"):
        sct.io.read(tmp_path / "lot.h5ad")
    back = sct.io.read(tmp_path / "lot.h5ad", layer="counts")
    assert (back.layers["counts"] != small.layers["counts"]).nnz == 0


def test_layer_for_10x_input_holds_counts(cart_product_path):
    adata = sct.io.read(cart_product_path, layer="counts")
    assert (adata.layers["counts"] != adata.X).nnz == 0


# ---- bad input ----------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(MissingFileError, match="Input not found"):
        sct.io.read(tmp_path / "nope.h5")


def test_unsupported_format(tmp_path):
    path = tmp_path / "lot.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(UnsupportedFormatError, match="expected a 10x .h5 file"):
        sct.io.read(path)


def test_folder_without_matrix(tmp_path):
    with pytest.raises(UnsupportedFormatError, match="holds no 10x matrix"):
        sct.io.read(tmp_path)


def test_truncated_h5(cart_product_path, tmp_path):
    broken = tmp_path / "broken.h5"
    data = cart_product_path.read_bytes()
    broken.write_bytes(data[: len(data) // 3])
    with pytest.raises(UnsupportedFormatError, match="truncated or corrupt"):
        sct.io.read(broken)


def test_not_hdf5_at_all(tmp_path):
    bad = tmp_path / "lot.h5ad"
    bad.write_bytes(b"this is not an HDF5 file")
    with pytest.raises(UnsupportedFormatError, match="could not be read as h5ad"):
        sct.io.read(bad)


def test_unreadable_file(cart_product_path, tmp_path, monkeypatch):
    path = tmp_path / "lot.h5"
    shutil.copy(cart_product_path, path)
    path.chmod(0)
    # root reads any file, so CI (as root) simulates the denial the way read() checks for it
    monkeypatch.setattr(sct.io.os, "access", lambda p, mode: False)
    with pytest.raises(sct.InputError, match="not readable"):
        sct.io.read(path)


def _h5ad(tmp_path, X, obs_names=None):
    adata = AnnData(X=X)
    if obs_names is not None:
        with warnings.catch_warnings():  # duplicates are the point of the test
            warnings.simplefilter("ignore", UserWarning)
            adata.obs_names = obs_names
    path = tmp_path / "lot.h5ad"
    adata.write_h5ad(path)
    return path


def test_empty_matrix(tmp_path):
    with pytest.raises(EmptyDataError, match="empty"):
        sct.io.read(_h5ad(tmp_path, np.zeros((0, 5), dtype=np.float32)))


def test_all_zero_matrix(tmp_path):
    with pytest.raises(EmptyDataError, match="zero counts"):
        sct.io.read(_h5ad(tmp_path, sp.csr_matrix((4, 5), dtype=np.float32)))


def test_negative_values(tmp_path):
    X = np.array([[1, -2, 0], [3, 0, 1]], dtype=np.float32)
    with pytest.raises(NotCountsError, match="negative values"):
        sct.io.read(_h5ad(tmp_path, X))


def test_nan_values(tmp_path):
    X = np.array([[1, np.nan, 0], [3, 0, 1]], dtype=np.float32)
    with pytest.raises(NotCountsError, match="NaN"):
        sct.io.read(_h5ad(tmp_path, X))


def test_infinite_count_refused(tmp_path):
    X = np.array([[1, np.inf, 0], [3, 0, 1]], dtype=np.float32)
    with pytest.raises(NotCountsError, match="1 NaN or infinite values"):
        sct.io.read(_h5ad(tmp_path, X))


def test_one_stray_non_integer_among_millions_is_found(tmp_path):
    """Every value is checked, not a sample: one 16.5 among 3 million integer counts."""
    X = sp.random(20_000, 3_000, density=0.05, format="csr", random_state=0, dtype=np.float32)
    X.data = np.round(X.data * 20) + 1
    X.data[2_500_001] += 0.5
    with pytest.raises(NotCountsError, match=r"1 non-integer value\(s\) among 3000000"):
        sct.io.read(_h5ad(tmp_path, X))


def test_log_normalised_values_named(tmp_path):
    X = np.log1p(np.random.default_rng(0).poisson(2, (20, 10))).astype(np.float32)
    with pytest.raises(NotCountsError, match="looks log-normalised"):
        sct.io.read(_h5ad(tmp_path, X))


def test_duplicate_barcodes(tmp_path):
    X = np.ones((3, 4), dtype=np.float32)
    with pytest.raises(DuplicateBarcodesError, match="occur more than once.*index_unique"):
        sct.io.read(_h5ad(tmp_path, X, obs_names=["AAAC-1", "AAAC-1", "GGGT-1"]))


def test_guess_species():
    human = AnnData(X=np.ones((2, 3)), var=pd.DataFrame(index=["CD3E", "LYZ", "MT-CO1"]))
    mouse = AnnData(X=np.ones((2, 3)), var=pd.DataFrame(index=["Cd3e", "Lyz2", "mt-Co1"]))
    assert sct.io.guess_species(human) == "human"
    assert sct.io.guess_species(mouse) == "mouse"


def test_mtx_folder_without_features_is_named(tmp_path):
    folder = tmp_path / "mtx"
    folder.mkdir()
    with gzip.open(folder / "matrix.mtx.gz", "wb") as fh:
        scipy.io.mmwrite(fh, sp.csr_matrix(np.ones((4, 3), dtype=np.int64)))
    pd.Series(["A-1", "B-1", "C-1"]).to_csv(folder / "barcodes.tsv.gz", header=False, index=False)
    with pytest.raises(UnsupportedFormatError, match="no features.tsv.gz: the three files"):
        sct.io.read(folder)


def test_all_zero_x_with_counts_in_raw_points_at_raw(tmp_path):
    adata = AnnData(X=sp.csr_matrix((4, 5), dtype=np.float32))
    adata.raw = AnnData(X=sp.csr_matrix(np.ones((4, 5), dtype=np.float32)))
    adata.X = sp.csr_matrix((4, 5), dtype=np.float32)
    path = tmp_path / "lot.h5ad"
    adata.write_h5ad(path)
    with pytest.raises(EmptyDataError, match=r"Counts may be in \.raw"):
        sct.io.read(path)
