"""Fetching atlas files (hash-verified, trust on first use) and applying a manifest's recipe.

No test touches the network: downloads use file:// URLs of temporary files, and a guard fails
any socket connection.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import socket

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import sc_celltherapy as sct
from sc_celltherapy._checks import MissingKeyError, NotCountsError
from sc_celltherapy.atlas import FetchError, HashMismatchError
from sc_celltherapy.atlas._download import LOCK_FILE
from sc_celltherapy.atlas._recipe import (
    apply_recipe,
    prepare_obs,
    prepare_reference,
    read_cef,
)

_REAL_CONNECT = socket.socket.connect
_REAL_CREATE_CONNECTION = socket.create_connection


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _atlas(sources, build, **overrides) -> dict:
    """A minimal valid atlas manifest around the given sources and build section."""
    manifest = {
        "schema_version": 1,
        "name": "tiny",
        "version": "1.0",
        "species": "human",
        "description": "test atlas",
        "source": sources,
        "licence": "CC0",
        "citation": {"text": "Test (2024)", "doi": "10.1234/test"},
        "label_keys": {"fine": "cell_type", "coarse": "lineage"},
        "gene_id_type": "symbol",
        "model": {
            "n_hvg": 100,
            "batch_key": None,
            "scvi": {"n_latent": 2, "n_layers": 1, "max_epochs": 1},
            "scanvi": {"max_epochs": 1},
        },
        "build": build,
    }
    manifest.update(overrides)
    return manifest


def _file_atlas(path, sha256, **source) -> dict:
    src = {"filename": path.name, "url": path.as_uri(), "sha256": sha256, **source}
    if sha256 is None:
        src["sha256_policy"] = "trust_on_first_use"
    return _atlas([src], {"reader": "h5ad", "matrix": path.name, "counts": "X"})


@pytest.fixture
def remote(tmp_path):
    """A 'remote' file served by file:// and a download folder."""
    folder = tmp_path / "remote"
    folder.mkdir()
    path = folder / "data.bin"
    path.write_bytes(b"version one of the atlas")
    return path, tmp_path / "downloads"


def _leftovers(dest) -> list[str]:
    return [p.name for p in dest.iterdir() if p.name.endswith(".part")] if dest.exists() else []


# ---- fetch: pinned hashes ---------------------------------------------------------------------


def test_fetch_pinned_hash_downloads_and_verifies(remote):
    path, dest = remote
    manifest = _file_atlas(path, _sha(path.read_bytes()))
    paths = sct.atlas.fetch(manifest, dest=dest)
    assert paths == {"data.bin": dest / "data.bin"}
    assert (dest / "data.bin").read_bytes() == b"version one of the atlas"
    lock = json.loads((dest / LOCK_FILE).read_text())
    entry = lock["files"]["data.bin"]
    assert entry["sha256"] == _sha(b"version one of the atlas") and entry["policy"] == "pinned"
    assert entry["url"] == path.as_uri() and entry["size"] == len(b"version one of the atlas")
    assert lock["atlas"] == "tiny" and _leftovers(dest) == []
    # a second fetch verifies the local copy and downloads nothing: the source may be gone
    path.unlink()
    assert sct.atlas.fetch(manifest, dest=dest) == {"data.bin": dest / "data.bin"}


@pytest.fixture
def http_remote(remote, monkeypatch):
    """The remote folder served over HTTP on the loopback interface (the only address a test
    may connect to), for pooch's downloader."""
    import functools
    import http.server
    import threading

    def loopback_only(connect):
        def guarded(*args, **kwargs):
            address = args[-1] if connect is _REAL_CONNECT else args[0]
            if address[0] not in ("127.0.0.1", "localhost"):
                raise AssertionError("a test tried to use the network")
            return connect(*args, **kwargs)

        return guarded

    monkeypatch.setattr(socket.socket, "connect", loopback_only(_REAL_CONNECT))
    monkeypatch.setattr(socket, "create_connection", loopback_only(_REAL_CREATE_CONNECTION))
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    path, dest = remote
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(path.parent))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield path, dest, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_fetch_over_http_with_pooch(http_remote):
    path, dest, base = http_remote
    data = path.read_bytes()
    manifest = _atlas(
        [{"filename": "data.bin", "url": f"{base}/data.bin", "sha256": _sha(data)}],
        {"reader": "h5ad", "matrix": "data.bin", "counts": "X"},
    )
    assert sct.atlas.fetch(manifest, dest=dest) == {"data.bin": dest / "data.bin"}
    assert (dest / "data.bin").read_bytes() == data and _leftovers(dest) == []
    # a wrong hash keeps nothing; a missing file is named with the server's answer
    manifest["source"][0].update(url=f"{base}/data.bin", sha256=_sha(b"other"))
    with pytest.raises(HashMismatchError, match="Nothing was overwritten"):
        sct.atlas.fetch(manifest, dest=dest, force=True)
    assert (dest / "data.bin").read_bytes() == data and _leftovers(dest) == []
    manifest["source"][0].update(filename="gone.bin", url=f"{base}/gone.bin")
    manifest["build"]["matrix"] = "gone.bin"
    with pytest.raises(FetchError, match="Could not download gone.bin.*404"):
        sct.atlas.fetch(manifest, dest=dest)
    assert not (dest / "gone.bin").exists() and _leftovers(dest) == []


def test_fetch_refuses_a_download_with_the_wrong_hash(remote):
    path, dest = remote
    wrong = "0" * 64
    with pytest.raises(HashMismatchError) as err:
        sct.atlas.fetch(_file_atlas(path, wrong), dest=dest)
    message = str(err.value)
    assert "data.bin" in message and wrong in message
    assert _sha(path.read_bytes()) in message and "Nothing was overwritten" in message
    assert not (dest / "data.bin").exists() and _leftovers(dest) == []


def test_mismatch_leaves_the_existing_file_intact(remote):
    path, dest = remote
    manifest = _file_atlas(path, _sha(path.read_bytes()))
    sct.atlas.fetch(manifest, dest=dest)
    # the publisher silently replaces the file: a forced download is refused, the copy kept
    path.write_bytes(b"version two, changed upstream")
    with pytest.raises(HashMismatchError, match="was kept") as err:
        sct.atlas.fetch(manifest, dest=dest, force=True)
    assert _sha(b"version two, changed upstream") in str(err.value)
    assert (dest / "data.bin").read_bytes() == b"version one of the atlas"
    assert _leftovers(dest) == []
    # a local copy that was tampered with is reported, and left as it is
    (dest / "data.bin").write_bytes(b"tampered")
    with pytest.raises(HashMismatchError, match="was not changed") as err:
        sct.atlas.fetch(manifest, dest=dest)
    assert _sha(b"tampered") in str(err.value) and manifest["source"][0]["sha256"] in str(err.value)
    assert (dest / "data.bin").read_bytes() == b"tampered"


# ---- fetch: trust on first use ----------------------------------------------------------------


def test_trust_on_first_use_records_then_enforces_the_hash(remote):
    path, dest = remote
    manifest = _file_atlas(path, None)
    first = _sha(path.read_bytes())
    sct.atlas.fetch(manifest, dest=dest)
    lock_path = dest / LOCK_FILE
    entry = json.loads(lock_path.read_text())["files"]["data.bin"]
    assert entry["sha256"] == first and entry["policy"] == "trust_on_first_use"
    # the same bytes again: accepted
    sct.atlas.fetch(manifest, dest=dest, force=True)
    # changed upstream: refused against the lock, nothing replaced, lock unchanged
    path.write_bytes(b"version two, changed upstream")
    lock_before = lock_path.read_text()
    with pytest.raises(HashMismatchError) as err:
        sct.atlas.fetch(manifest, dest=dest, force=True)
    message = str(err.value)
    assert first in message and _sha(b"version two, changed upstream") in message
    assert str(lock_path) in message and "remove the entry for data.bin" in message
    assert (dest / "data.bin").read_bytes() == b"version one of the atlas"
    assert lock_path.read_text() == lock_before
    # accepting the new version is explicit: drop the lock entry, fetch again
    lock = json.loads(lock_before)
    del lock["files"]["data.bin"]
    lock_path.write_text(json.dumps(lock))
    sct.atlas.fetch(manifest, dest=dest, force=True)
    assert json.loads(lock_path.read_text())["files"]["data.bin"]["sha256"] == _sha(
        b"version two, changed upstream"
    )


def test_a_file_placed_by_hand_is_trusted_once_then_locked(tmp_path):
    dest = tmp_path / "dl"
    dest.mkdir()
    (dest / "data.bin").write_bytes(b"copied from a USB stick")
    manifest = _atlas(
        [
            {
                "filename": "data.bin",
                "url": None,
                "manual_download": True,
                "landing_page": "https://example.org/atlas",
                "sha256": None,
                "sha256_policy": "trust_on_first_use",
            }
        ],
        {"reader": "h5ad", "matrix": "data.bin", "counts": "X"},
    )
    sct.atlas.fetch(manifest, dest=dest)
    entry = json.loads((dest / LOCK_FILE).read_text())["files"]["data.bin"]
    assert entry["sha256"] == _sha(b"copied from a USB stick")
    (dest / "data.bin").write_bytes(b"edited")
    with pytest.raises(HashMismatchError, match="data.bin"):
        sct.atlas.fetch(manifest, dest=dest)
    (dest / "data.bin").unlink()
    with pytest.raises(FetchError, match="by hand from https://example.org/atlas"):
        sct.atlas.fetch(manifest, dest=dest)


def test_embedded_atlas_has_nothing_to_fetch(tmp_path):
    assert sct.atlas.fetch("pbmc_demo", dest=tmp_path / "dl") == {}
    assert not (tmp_path / "dl").exists()


def test_no_download_when_not_allowed(remote):
    path, dest = remote
    with pytest.raises(FetchError, match="downloading was not allowed"):
        prepare_reference(_file_atlas(path, None), dest=dest, download=False)
    assert not (dest / "data.bin").exists()


# ---- the CELLxGENE resolver and the h5ad reader -----------------------------------------------


def _cellxgene_like(tmp_path):
    """A CELLxGENE-style h5ad: normalised X, counts in raw.X, Ensembl ids, feature_name."""
    rng = np.random.default_rng(0)
    n_cells, n_genes = 60, 12
    counts = rng.poisson(3, size=(n_cells, n_genes)).astype(np.float32)
    counts[:, 0] += 1  # no empty cell
    ids = [f"ENSG{i:011d}" for i in range(n_genes)]
    symbols = [f"GENE{i}" for i in range(n_genes - 1)] + ["ERCC-00002"]
    obs = pd.DataFrame(
        {
            "cell_type": np.repeat(["T cell", "B cell", "monocyte", "doublet"], 15),
            "assay": ["10x 3' v3"] * 30 + ["Smart-seq2"] * 15 + ["10x 3' v3"] * 15,
            "donor_id": np.tile(["d1", "d2"], 30),
        },
        index=[f"cell{i}" for i in range(n_cells)],
    )
    raw = ad.AnnData(X=sp.csr_matrix(counts), obs=obs.copy())
    raw.var_names = ids
    adata = ad.AnnData(
        X=sp.csr_matrix(np.log1p(counts / counts.sum(1, keepdims=True) * 1e4)),
        obs=obs,
        var=pd.DataFrame({"feature_name": symbols}, index=ids),
    )
    adata.raw = raw  # raw.var without feature_name: the reader maps symbols from .var
    path = tmp_path / "served" / "dataset.h5ad"
    path.parent.mkdir()
    adata.write_h5ad(path)
    return path, counts, obs


def _collection(tmp_path, h5ad_path) -> str:
    collection = {
        "collection_id": "0000",
        "datasets": [
            {
                "dataset_id": "11111111-2222-3333-4444-555555555555",
                "dataset_version_id": "v-2",
                "title": "Global",
                "assets": [
                    {"filetype": "RDS", "url": "https://example.org/x.rds"},
                    {"filetype": "H5AD", "url": h5ad_path.as_uri()},
                ],
            },
            {"dataset_id": "x", "title": "Myeloid", "assets": []},
        ],
    }
    api = tmp_path / "api.json"
    api.write_text(json.dumps(collection))
    return api.as_uri()


def _h5ad_manifest(api_url, **resolver) -> dict:
    source = {
        "filename": "atlas.h5ad",
        "url": api_url,
        "resolver": {"kind": "cellxgene_curation", **resolver},
        "sha256": None,
        "sha256_policy": "trust_on_first_use",
    }
    build = {
        "reader": "h5ad",
        "matrix": "atlas.h5ad",
        "counts": "raw.X_if_present",
        "gene_symbols_column": "feature_name",
        "exclude_genes_pattern": "ERCC-",
        "keep_obs": ["assay", "not_a_column"],
        "subset": [{"column": "assay", "op": "not_in", "values": ["Smart-seq2"]}],
        "drop_labels": ["doublet"],
        "derive_labels": [
            {
                "column": "lineage",
                "from_column": "cell_type",
                "default": None,
                "groups": [
                    {"label": "lymphoid", "members": ["T cell", "B cell"]},
                    {"label": "myeloid", "members": ["monocyte"]},
                ],
            }
        ],
        "max_cells_per_label": 10,
        "seed": 0,
    }
    model = {
        "n_hvg": 100,
        "batch_key": "donor_id",
        "scvi": {"n_latent": 2, "n_layers": 1, "max_epochs": 1},
        "scanvi": {"max_epochs": 1},
    }
    return _atlas([source], build, gene_id_type="ensembl", model=model)


def test_cellxgene_resolver_and_h5ad_recipe(tmp_path):
    h5ad_path, counts, obs = _cellxgene_like(tmp_path)
    manifest = _h5ad_manifest(_collection(tmp_path, h5ad_path), dataset_title="Global")
    dest = tmp_path / "dl"
    ref = prepare_reference(manifest, dest=dest)
    entry = json.loads((dest / LOCK_FILE).read_text())["files"]["atlas.h5ad"]
    assert entry["url"] == h5ad_path.as_uri()
    assert entry["resolved"]["dataset_version_id"] == "v-2"
    assert ref.uns["sct_atlas_build"]["source_sha256"] == {"atlas.h5ad": entry["sha256"]}
    # Smart-seq2 cells and doublets gone, at most 10 cells per label
    kept = obs.loc[ref.obs_names]
    assert set(kept["assay"]) == {"10x 3' v3"} and "doublet" not in set(kept["cell_type"])
    assert ref.obs["cell_type"].value_counts().to_dict() == {"B cell": 10, "T cell": 10}
    assert set(ref.obs["lineage"]) == {"lymphoid"}  # monocytes were all Smart-seq2 or cut
    # symbols as var names, the spike-in excluded, ids kept; counts are raw.X's
    assert list(ref.var_names) == [f"GENE{i}" for i in range(11)]
    assert ref.var["gene_ids"].iloc[0] == "ENSG00000000000"
    rows = [obs.index.get_loc(c) for c in ref.obs_names]
    np.testing.assert_array_equal(ref.X.toarray(), counts[rows][:, :11])
    assert list(ref.obs.columns) == ["cell_type", "lineage", "donor_id", "assay"]


def test_resolver_names_the_titles_when_the_dataset_is_missing(tmp_path):
    h5ad_path, _, _ = _cellxgene_like(tmp_path)
    manifest = _h5ad_manifest(_collection(tmp_path, h5ad_path), dataset_title="Globl")
    with pytest.raises(FetchError, match=r"0 datasets with title 'Globl'.*\['Global', 'Myeloid'\]"):
        sct.atlas.fetch(manifest, dest=tmp_path / "dl")


# ---- the recipe on in-memory data -------------------------------------------------------------


def _recipe_manifest(build_extra=None, **label_keys) -> dict:
    build = {"reader": "embedded", "function": "sc_celltherapy.datasets.pbmc_reference"}
    build.update({"counts": "X", **(build_extra or {})})
    manifest = _atlas("embedded", build)
    manifest["label_keys"] = {"fine": "fine", "coarse": "coarse", **label_keys}
    return manifest


@pytest.fixture
def obs():
    return pd.DataFrame(
        {
            "author_label": ["CD4 T"] * 8 + ["CD8 T"] * 6 + ["NK"] * 3 + ["B"] * 4 + ["junk"] * 2,
            "assay": ["10x"] * 20 + ["smartseq"] * 3,
            "donor": ["d1", "d2", "d3"] * 7 + ["d1", "d2"],
        },
        index=[f"c{i}" for i in range(23)],
    )


def test_selectors_and_derived_labels(obs):
    manifest = _recipe_manifest(
        {
            "subset": [
                {"column": "assay", "op": "in", "values": ["10x"]},
                {"column": "donor", "op": "not_in", "values": ["d3"]},
            ],
            "derive_labels": [
                {
                    "column": "fine",
                    "from_column": "author_label",
                    "default": None,
                    "groups": [
                        {"label": "T cell", "members": ["CD4 T", "CD8 T"]},
                        {"label": "NK cell", "members": ["NK"]},
                        {"label": "B cell", "members": ["B"]},
                    ],
                },
                {
                    "column": "coarse",
                    "from_column": "fine",
                    "default": "other",
                    "groups": [{"label": "lymphocyte", "members": ["T cell", "NK cell"]}],
                },
            ],
        }
    )
    rows, out = prepare_obs(obs, manifest)
    expected = obs[(obs["assay"] == "10x") & (obs["donor"] != "d3")].index
    assert list(out.index) == list(expected) and list(rows) == sorted(rows)
    assert out["fine"].value_counts().to_dict() == {"T cell": 10, "NK cell": 2, "B cell": 2}
    assert out.loc[out["fine"] == "B cell", "coarse"].eq("other").all()
    assert out.loc[out["fine"] == "T cell", "coarse"].eq("lymphocyte").all()
    # "junk" is in no group and the default is null: those cells are dropped
    assert "junk" not in set(out["author_label"])


def test_drop_min_and_seeded_downsampling(obs):
    build = {
        "drop_labels": ["junk"],
        "min_cells_per_label": 4,
        "max_cells_per_label": 5,
        "seed": 3,
    }
    manifest = _recipe_manifest(build, fine="author_label", coarse="author_label")
    rows, out = prepare_obs(obs, manifest)
    # NK (3 cells) is below the minimum; CD4 T (8) and CD8 T (6) are cut to 5; B keeps its 4
    assert out["author_label"].value_counts().to_dict() == {"CD4 T": 5, "CD8 T": 5, "B": 4}
    again, _ = prepare_obs(obs, manifest)
    np.testing.assert_array_equal(rows, again)  # same seed, same cells
    other_seed = _recipe_manifest({**build, "seed": 4}, fine="author_label", coarse="author_label")
    assert not np.array_equal(prepare_obs(obs, other_seed)[0], rows)


def test_missing_column_is_named(obs):
    manifest = _recipe_manifest({"subset": [{"column": "tissue", "op": "in", "values": ["blood"]}]})
    with pytest.raises(MissingKeyError, match=r"build\.subset: column 'tissue'.*\['author_label'"):
        prepare_obs(obs, manifest)


def test_bytes_strings_are_decoded(obs):
    obs = obs.assign(author_label=[f"b'{v}'" for v in obs["author_label"]])
    manifest = _recipe_manifest(
        {"decode_bytes_strings": True}, fine="author_label", coarse="author_label"
    )
    _, out = prepare_obs(obs, manifest)
    assert set(out["author_label"]) == {"CD4 T", "CD8 T", "NK", "B", "junk"}


def _counts_adata(rng, n_cells=40, n_genes=30):
    counts = rng.poisson(2, size=(n_cells, n_genes)).astype(np.float64)
    counts[:, 1] = 1  # every cell has a gene counted once: the recovery's anchor
    obs = pd.DataFrame(
        {"fine": np.repeat(["a", "b"], n_cells // 2)}, index=[f"c{i}" for i in range(n_cells)]
    )
    obs["coarse"] = "all"
    var = pd.DataFrame(index=[f"G{i}" for i in range(n_genes)])
    return counts, obs, var


def test_recover_counts_from_lognormalised_values():
    counts, obs, var = _counts_adata(np.random.default_rng(1))
    lognorm = np.log1p(counts / counts.sum(1, keepdims=True) * 1e4).astype(np.float32)
    manifest = _recipe_manifest(
        {"recover_counts": {"method": "lognorm_min_nonzero_is_one", "scale_factor": 10000}}
    )
    ref = apply_recipe(ad.AnnData(X=sp.csr_matrix(lognorm), obs=obs, var=var), manifest)
    np.testing.assert_array_equal(ref.X.toarray(), counts)
    assert ref.uns["sct_atlas_build"]["counts_recovered"] is True
    # a matrix of integers is used as it is
    ref = apply_recipe(ad.AnnData(X=sp.csr_matrix(counts), obs=obs, var=var), manifest)
    np.testing.assert_array_equal(ref.X.toarray(), counts)
    assert ref.uns["sct_atlas_build"]["counts_recovered"] is False
    # anything else is refused, not silently rounded
    with pytest.raises(NotCountsError, match="did not give integers"):
        apply_recipe(ad.AnnData(X=sp.csr_matrix(counts * 0.37), obs=obs, var=var), manifest)


def test_round_counts_and_integer_check():
    counts, obs, var = _counts_adata(np.random.default_rng(2))
    fractional = counts + 0.2
    fractional[counts == 0] = 0
    manifest = _recipe_manifest({"round_counts": True})
    ref = apply_recipe(ad.AnnData(X=sp.csr_matrix(fractional), obs=obs, var=var), manifest)
    np.testing.assert_array_equal(ref.X.toarray(), counts)
    assert ref.uns["sct_atlas_build"]["counts_rounded"] is True
    with pytest.raises(NotCountsError):
        apply_recipe(ad.AnnData(X=sp.csr_matrix(fractional), obs=obs, var=var), _recipe_manifest())


# ---- CEF and csv readers, end to end through fetch --------------------------------------------


def _write_cef(path, genes, cells, labels, values):
    lines = [
        ["CEF", "0", "1", "3", str(len(genes)), str(len(cells)), "0"],
        ["", "Cell_ID", *cells],
        ["", "Cell_type", *labels],
        ["", "Timepoint", *["week_7"] * len(cells)],
        ["Gene", ""],
    ]
    lines += [[g, "", *(str(v) for v in row)] for g, row in zip(genes, values, strict=True)]
    with gzip.open(path, "wt") as fh:
        fh.write("\n".join("\t".join(line) for line in lines) + "\n")


def test_read_cef(tmp_path):
    path = tmp_path / "x.cef.txt.gz"
    values = np.array([[0, 1, 2], [3, 0, 5]])
    _write_cef(path, ["TH", "FOXA2"], ["c1", "c2", "c3"], ["hDA1", "hDA1", "Unk"], values)
    adata = read_cef(path)
    assert adata.shape == (3, 2) and list(adata.var_names) == ["TH", "FOXA2"]
    assert list(adata.obs_names) == ["c1", "c2", "c3"]
    assert list(adata.obs["Cell_type"]) == ["hDA1", "hDA1", "Unk"]
    np.testing.assert_array_equal(adata.X.toarray(), values.T)


def test_cef_atlas_end_to_end(tmp_path):
    rng = np.random.default_rng(3)
    genes = ["TH", "FOXA2", "LMX1A", "ERCC-00002", "r_L1", "FEV"]
    cells = [f"c{i}" for i in range(30)]
    labels = ["hDA1"] * 12 + ["hSert"] * 12 + ["Unk"] * 6
    values = rng.poisson(3, size=(len(genes), len(cells))) + 1.0
    remote = tmp_path / "GSE0_Embryo.cef.txt.gz"
    _write_cef(remote, genes, cells, labels, values)
    manifest = _atlas(
        [
            {
                "filename": remote.name,
                "url": remote.as_uri(),
                "sha256": _sha(remote.read_bytes()),
            }
        ],
        {
            "reader": "cef",
            "matrix": remote.name,
            "cef_label_row": "Cell_type",
            "counts": "X",
            "round_counts": True,
            "exclude_genes_pattern": "(ERCC-|r_)",
            "keep_obs": ["Timepoint"],
            "drop_labels": ["Unk"],
            "derive_labels": [
                {
                    "column": "lineage",
                    "from_column": "Cell_type",
                    "default": "other",
                    "groups": [{"label": "DA", "members": ["hDA1"]}],
                }
            ],
        },
        label_keys={"fine": "Cell_type", "coarse": "lineage"},
    )
    ref = prepare_reference(manifest, dest=tmp_path / "dl")
    assert list(ref.var_names) == ["TH", "FOXA2", "LMX1A", "FEV"]
    assert ref.obs["Cell_type"].value_counts().to_dict() == {"hDA1": 12, "hSert": 12}
    assert ref.obs.groupby("Cell_type", observed=True)["lineage"].first().to_dict() == {
        "hDA1": "DA",
        "hSert": "other",
    }
    np.testing.assert_array_equal(ref.X.toarray(), values[[0, 1, 2, 5]][:, :24].T)


def test_csv_atlas_with_obs_table_end_to_end(tmp_path):
    rng = np.random.default_rng(4)
    counts = rng.poisson(30, size=(5, 16)).astype(float)  # genes x cells
    counts[1] = 1  # every cell has a gene counted once: the recovery's anchor
    cells = [f"P1_{i}" for i in range(16)]
    lognorm = np.log1p(counts / counts.sum(0, keepdims=True) * 1e4)
    matrix = pd.DataFrame(np.round(lognorm, 7), index=[f"G{i}" for i in range(5)], columns=cells)
    remote = tmp_path / "remote"
    remote.mkdir()
    matrix.to_csv(remote / "data.csv.gz")
    meta = pd.DataFrame(
        {
            "CellName": cells[::-1],  # another order than the matrix
            "Sample": ["P1"] * 16,
            "CellType": (["Hepatocyte_1"] * 8 + ["Cholangiocytes"] * 8)[::-1],
        }
    )
    meta.to_csv(remote / "meta.txt.gz", sep="\t", index=False)
    sources = [
        {"filename": n, "url": (remote / n).as_uri(), "sha256": _sha((remote / n).read_bytes())}
        for n in ("data.csv.gz", "meta.txt.gz")
    ]
    build = {
        "reader": "csv",
        "matrix": "data.csv.gz",
        "orientation": "genes_by_cells",
        "delimiter": ",",
        "obs_table": {"filename": "meta.txt.gz", "delimiter": "\t", "index_column": "CellName"},
        "counts": "X",
        "recover_counts": {"method": "lognorm_min_nonzero_is_one", "scale_factor": 10000},
    }
    model = {
        "n_hvg": 100,
        "batch_key": "Sample",
        "scvi": {"n_latent": 2, "n_layers": 1, "max_epochs": 1},
        "scanvi": {"max_epochs": 1},
    }
    manifest = _atlas(
        sources, build, label_keys={"fine": "CellType", "coarse": "CellType"}, model=model
    )
    ref = prepare_reference(manifest, dest=tmp_path / "dl")
    assert list(ref.obs_names) == cells
    assert list(ref.obs["CellType"][:8]) == ["Hepatocyte_1"] * 8
    np.testing.assert_array_equal(ref.X.toarray(), counts.T)
    assert list(ref.obs.columns) == ["CellType", "Sample"]


# ---- the embedded PBMC reference builds offline -----------------------------------------------


def test_pbmc_demo_prepares_offline():
    ref = prepare_reference("pbmc_demo")
    assert ref.shape == (700, 765)
    assert list(ref.obs.columns) == ["cell_type", "cell_lineage", "dataset", "n_counts_original"]
    assert ref.obs["cell_lineage"].value_counts().sum() == 700
    assert ref.uns["sct_atlas_build"]["source_sha256"] == {}


def test_build_from_manifest_pbmc_demo(tmp_path):
    """Every model key the manifest schema accepts reaches the models (n_hidden and
    n_samples_per_label were once accepted and ignored)."""
    import copy

    import torch

    recipe = copy.deepcopy(sct.atlas.load_manifest("pbmc_demo"))
    recipe["model"]["scvi"]["n_hidden"] = 64
    recipe["model"]["scanvi"]["n_samples_per_label"] = 50
    bundle = sct.atlas.build_from_manifest(
        recipe, out_dir=tmp_path / "bundle", max_epochs=2, scanvi_max_epochs=1
    )
    manifest = bundle.manifest
    assert manifest["model"]["n_hidden"] == 64 and manifest["model"]["n_samples_per_label"] == 50
    saved = torch.load(bundle.member_dirs[0] / "model.pt", weights_only=False)
    weights = saved["model_state_dict"]
    first = next(
        v for k, v in weights.items() if k.startswith("z_encoder") and k.endswith("weight")
    )
    assert 64 in first.shape  # the encoder's hidden layer
    assert (bundle.name, bundle.version) == ("pbmc_demo", "1.11")
    # the manifest's lineage level becomes the bundle's label hierarchy
    assert manifest["coarse_key"] == "cell_lineage"
    assert manifest["hierarchy"]["CD56+ NK"] == "NK cell"
    assert manifest["hierarchy"]["Dendritic"] == "myeloid"
    assert len(bundle.labels) == 10 and len(bundle.genes) == 765
    assert manifest["n_cells"]["total"] == 700 and manifest["species"] == "human"
    assert manifest["model"]["n_latent"] == 10 and manifest["model"]["max_epochs"] == 2
    assert manifest["labels_key"] == "cell_type" and manifest["seed"] == 0


def test_cached_bundles_are_ordered_by_version_not_by_text(tmp_path):
    from sc_celltherapy.atlas._registry import newest_first

    for v in ("1.9", "1.10", "1.2", "notaversion"):
        (tmp_path / f"conde2022_immune-{v}").mkdir()
    names = [p.name for p in newest_first(tmp_path.glob("conde2022_immune-*"), "conde2022_immune")]
    assert names == ["conde2022_immune-1.10", "conde2022_immune-1.9", "conde2022_immune-1.2"]
