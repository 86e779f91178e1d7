"""Download an atlas's source files (hash-verified) and build a reference bundle from them.

``fetch`` streams each file to a temporary name in the download folder and renames it into
place only once its sha256 matches: the manifest's pinned hash, or, for files whose hash cannot
be known in advance (``sha256: null``, trust on first use), the hash recorded in the folder's
lock file ``hashes.json`` by the first download. A mismatch never overwrites anything.

``build_from_manifest`` reads the files as the manifest's ``build`` section says (cell filters,
derived label columns, count recovery), then trains the reference with
:func:`sc_celltherapy.atlas.build` and the manifest's model settings. Nothing here touches the
network unless a file is missing (or ``force=True``).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
import tempfile
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .._logging import logger, timed
from .._settings import settings
from .._validate import (
    InputError,
    MissingKeyError,
    NotCountsError,
    UnsupportedFormatError,
    check_counts,
)
from ..io import file_sha256
from ._manifests import load_manifest, validate

LOCK_FILE = "hashes.json"
LOCK_FORMAT = 1
_TIMEOUT_S = 60
_CHUNK = 1 << 20
_LOG_EVERY = 256 << 20  # progress line every 256 MiB
# What sct.atlas.build does for settings it does not expose (scvi-tools defaults, our flavour).
_BUILD_IMPLICIT = {"n_hidden": 128, "hvg_flavor": "seurat_v3", "n_samples_per_label": 100}


class FetchError(InputError):
    """An atlas file could not be obtained (network, portal, manual download missing)."""


class HashMismatchError(FetchError):
    """A file's sha256 differs from the pinned or locked hash; nothing was overwritten."""


# --------------------------------------------------------------------------------------------
# fetch
# --------------------------------------------------------------------------------------------


def _as_manifest(name: str | os.PathLike | Mapping) -> dict:
    if isinstance(name, Mapping):
        return validate(name, "atlas")
    return load_manifest(name)


def default_dest(manifest: Mapping) -> Path:
    """Download folder of an atlas: ``<settings.cache_dir>/atlases/<name>-<version>``."""
    return Path(settings.cache_dir) / "atlases" / f"{manifest['name']}-{manifest['version']}"


def _read_lock(dest: Path) -> dict:
    path = dest / LOCK_FILE
    if not path.is_file():
        return {"format": LOCK_FORMAT, "files": {}}
    try:
        lock = json.loads(path.read_text())
        if not isinstance(lock.get("files"), dict):
            raise KeyError("files")
    except (json.JSONDecodeError, KeyError, AttributeError) as err:
        msg = (
            f"The lock file {path} is corrupt ({err}). It records the hashes of first "
            "downloads; restore it from a backup, or delete it to trust the files anew."
        )
        raise FetchError(msg) from err
    return lock


def _write_lock(dest: Path, lock: dict) -> None:
    """Write through a temporary file and rename, so a crash never leaves half a lock."""
    fd, tmp = tempfile.mkstemp(prefix=f".{LOCK_FILE}.", dir=dest)
    with os.fdopen(fd, "w") as fh:
        json.dump(lock, fh, indent=2, sort_keys=True)
    os.replace(tmp, dest / LOCK_FILE)


def _urlopen(url: str):
    import urllib.request

    from .. import __version__

    request = urllib.request.Request(url, headers={"User-Agent": f"sc-celltherapy/{__version__}"})
    return urllib.request.urlopen(
        request, timeout=_TIMEOUT_S
    )  # URL schemes are limited by the schema


def _resolve_url(src: Mapping) -> tuple[str, dict]:
    """The address to download, and what a resolver learnt on the way (recorded in the lock)."""
    resolver = src.get("resolver")
    if not resolver:
        return src["url"], {}
    try:
        with _urlopen(src["url"]) as resp:
            collection = json.load(resp)
    except (OSError, ValueError) as err:
        msg = f"Could not read the CELLxGENE collection {src['url']} for {src['filename']}: {err}."
        raise FetchError(msg) from err
    datasets = collection.get("datasets", [])
    if "dataset_id" in resolver:
        found = [d for d in datasets if d.get("dataset_id") == resolver["dataset_id"]]
        wanted = f"dataset_id {resolver['dataset_id']!r}"
    else:
        found = [d for d in datasets if d.get("title") == resolver["dataset_title"]]
        wanted = f"title {resolver['dataset_title']!r}"
    if len(found) != 1:
        titles = sorted(str(d.get("title")) for d in datasets)
        msg = (
            f"{src['filename']}: the collection {src['url']} has {len(found)} datasets with "
            f"{wanted}; its titles are {titles}. Update the manifest's resolver."
        )
        raise FetchError(msg)
    dataset = found[0]
    assets = [a for a in dataset.get("assets", []) if str(a.get("filetype", "")).upper() == "H5AD"]
    if not assets:
        msg = f"{src['filename']}: dataset {wanted} offers no H5AD asset in {src['url']}."
        raise FetchError(msg)
    info = {
        "dataset_id": dataset.get("dataset_id"),
        "dataset_version_id": dataset.get("dataset_version_id"),
        "title": dataset.get("title"),
    }
    return assets[0]["url"], info


def _download_to_temp(url: str, dest: Path, filename: str) -> tuple[Path, str, int]:
    """Stream ``url`` into a temporary file in ``dest``, hashing as it goes."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{filename}.", suffix=".part", dir=dest)
    tmp = Path(tmp_name)
    digest = hashlib.sha256()
    size = 0
    try:
        with os.fdopen(fd, "wb") as out, _urlopen(url) as resp:
            total = resp.headers.get("Content-Length") if resp.headers else None
            next_log = _LOG_EVERY
            while chunk := resp.read(_CHUNK):
                out.write(chunk)
                digest.update(chunk)
                size += len(chunk)
                if size >= next_log:
                    logger.info("%s: %d MiB of %s", filename, size >> 20, total or "?")
                    next_log += _LOG_EVERY
    except OSError as err:
        tmp.unlink(missing_ok=True)
        msg = (
            f"Could not download {filename} from {url}: {err}. Check the network (or proxy "
            "settings) and try again; nothing was written."
        )
        raise FetchError(msg) from err
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp, digest.hexdigest(), size


def _expected(src: Mapping, lock: dict, lock_path: Path) -> tuple[str | None, str]:
    if src["sha256"]:
        return src["sha256"], "the manifest's pinned sha256"
    entry = lock["files"].get(src["filename"])
    if entry and entry.get("sha256"):
        return entry["sha256"], f"the lock file {lock_path} (recorded {entry.get('recorded')})"
    return None, "nothing yet (trust on first use)"


def _mismatch_advice(src: Mapping, lock_path: Path) -> str:
    if src["sha256"]:
        return (
            "If the publisher replaced the file, the manifest must be updated (new sha256 and "
            "version) before it can be used."
        )
    return (
        "The file changed since its hash was first recorded. If the change is expected (a new "
        f"version of the dataset), remove the entry for {src['filename']} from {lock_path} "
        "and fetch again to record the new hash; otherwise keep the file you have."
    )


def _fetch(manifest: dict, dest: Path, *, force: bool, allow_download: bool) -> dict[str, Path]:
    if manifest["source"] == "embedded":
        return {}
    dest.mkdir(parents=True, exist_ok=True)
    lock_path = dest / LOCK_FILE
    lock = _read_lock(dest)
    lock.update({"format": LOCK_FORMAT, "atlas": manifest["name"], "version": manifest["version"]})
    changed = False
    paths: dict[str, Path] = {}
    for src in manifest["source"]:
        name = src["filename"]
        target = dest / name
        expected, origin = _expected(src, lock, lock_path)
        policy = "pinned" if src["sha256"] else "trust_on_first_use"
        if target.is_file() and not force:
            with timed(f"verifying sha256 of {name}"):
                got = file_sha256(target)
            if expected is None:
                logger.warning(
                    "%s: no hash known; trusting the file found in %s on first use", name, dest
                )
            elif got != expected:
                msg = (
                    f"{target} does not match its expected sha256: expected {expected} (from "
                    f"{origin}), got {got}. The file was not changed. "
                    + _mismatch_advice(src, lock_path)
                    + " To download it again, delete it or pass force=True (it is only "
                    "replaced by a download that matches)."
                )
                raise HashMismatchError(msg)
            if name not in lock["files"]:
                lock["files"][name] = {"sha256": got, "policy": policy, "recorded": _now()}
                lock["files"][name]["note"] = "file found in the folder, not downloaded"
                changed = True
            paths[name] = target
            continue
        if src.get("manual_download") or src.get("url") is None:
            msg = (
                f"{name} must be downloaded by hand from {src.get('landing_page')} and placed "
                f"in {dest}; fetch then checks its hash."
            )
            raise FetchError(msg)
        if not allow_download:
            msg = (
                f"{name} is not in {dest} and downloading was not allowed. Run "
                f"sct.atlas.fetch({manifest['name']!r}) on a machine with internet access, "
                "or copy the download folder here."
            )
            raise FetchError(msg)
        url, resolved = _resolve_url(src)
        with timed(f"downloading {name} from {url}"):
            tmp, got, size = _download_to_temp(url, dest, name)
        if expected is not None and got != expected:
            tmp.unlink(missing_ok=True)
            kept = f"The existing {target} was kept." if target.exists() else ""
            msg = (
                f"Downloaded {name} from {url} does not match its expected sha256: expected "
                f"{expected} (from {origin}), got {got}. Nothing was overwritten; the download "
                f"was discarded. {kept} " + _mismatch_advice(src, lock_path)
            )
            raise HashMismatchError(msg)
        os.replace(tmp, target)
        entry = {"sha256": got, "policy": policy, "recorded": _now(), "url": url, "size": size}
        if resolved:
            entry["resolved"] = resolved
        if expected is None:
            logger.warning(
                "%s: recorded sha256 %s on first download (trust on first use)", name, got
            )
        lock["files"][name] = entry
        changed = True
        paths[name] = target
    if changed:
        _write_lock(dest, lock)
    return paths


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def fetch(
    name: str | os.PathLike | Mapping,
    *,
    dest: str | os.PathLike | None = None,
    force: bool = False,
) -> dict[str, Path]:
    """Download an atlas's source files and verify their sha256.

    Files already in ``dest`` are verified, not downloaded again. A file whose manifest hash is
    ``null`` (trust on first use) has the hash of its first download recorded in
    ``<dest>/hashes.json``; every later fetch must match it. A mismatch raises
    :class:`HashMismatchError` naming the file, the expected and the actual hash, and leaves
    every existing file untouched.

    Parameters
    ----------
    name
        Name of a shipped atlas manifest, the path of a YAML manifest, or a manifest dict.
    dest
        Download folder; default ``<settings.cache_dir>/atlases/<name>-<version>``.
    force
        Download again even when the file is present (it is replaced only by a download that
        matches the expected hash).

    Returns
    -------
    ``{filename: path}`` of the verified files; empty for an embedded atlas.
    """
    manifest = _as_manifest(name)
    dest = Path(dest) if dest is not None else default_dest(manifest)
    return _fetch(manifest, dest, force=force, allow_download=True)


# --------------------------------------------------------------------------------------------
# reading the files
# --------------------------------------------------------------------------------------------


def _read_embedded(build: Mapping) -> AnnData:
    module_name, _, func_name = build["function"].rpartition(".")
    try:
        func = getattr(importlib.import_module(module_name), func_name)
    except (ImportError, AttributeError) as err:
        msg = f"build.function {build['function']!r} cannot be imported: {err}."
        raise InputError(msg) from err
    return func()


def read_cef(path: str | os.PathLike) -> AnnData:
    """Read a Linnarsson-lab CEF text file (genes x cells) into a cells x genes AnnData.

    Parameters
    ----------
    path
        A ``.cef`` / ``.cef.txt`` file, optionally gzip-compressed.

    Returns
    -------
    AnnData with the values in ``.X`` (CSR, float32), every column attribute as an ``.obs``
    column (the first one also as obs names) and every row attribute as a ``.var`` column (the
    first one also as var names).
    """
    import csv
    import gzip

    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", newline="") as fh:
        rows = csv.reader(fh, delimiter="\t")
        first = next(rows, [])
        if not first or first[0] != "CEF" or len(first) < 6:
            msg = f"{path} is not a CEF file (its first field is not 'CEF')."
            raise UnsupportedFormatError(msg)
        n_headers, n_row_attr, n_col_attr, n_rows, n_cols = (int(v) for v in first[1:6])
        for _ in range(n_headers):
            next(rows)
        offset = n_row_attr + 1
        col_attrs: dict[str, list[str]] = {}
        for _ in range(n_col_attr):
            row = next(rows)
            values = row[offset : offset + n_cols]
            col_attrs[row[n_row_attr]] = values + [""] * (n_cols - len(values))
        row_attr_names = next(rows)[:n_row_attr]
        row_attrs: list[list[str]] = []
        data = np.zeros((n_rows, n_cols), dtype=np.float32)
        for i in range(n_rows):
            row = next(rows, None)
            if row is None:
                msg = f"{path} ends after {i} of the {n_rows} rows its header announces."
                raise UnsupportedFormatError(msg)
            row_attrs.append(row[:n_row_attr])
            values = [v if v != "" else "nan" for v in row[offset : offset + n_cols]]
            data[i, : len(values)] = np.asarray(values, dtype=np.float32)
    obs = pd.DataFrame(col_attrs)
    var = pd.DataFrame(row_attrs, columns=row_attr_names)
    # string indices up front: anndata warns when it has to convert a RangeIndex itself
    obs.index = _unique(obs.iloc[:, 0] if n_col_attr else range(n_cols))
    var.index = _unique(var.iloc[:, 0] if n_row_attr else range(n_rows))
    return AnnData(X=sp.csr_matrix(data.T), obs=obs, var=var)


def _unique(values) -> pd.Index:
    from anndata.utils import make_index_unique

    return make_index_unique(pd.Index([str(v) for v in values]))


def _read_csv(path: Path, build: Mapping, obs_path: Path | None) -> AnnData:
    sep = build.get("delimiter", ",")
    header = pd.read_csv(path, sep=sep, nrows=0, index_col=0).columns
    # float32 throughout: half the memory of pandas' default float64 on a dense matrix
    table = pd.read_csv(path, sep=sep, index_col=0, dtype=dict.fromkeys(header, np.float32))
    if build["orientation"] == "genes_by_cells":
        matrix, genes, cells = table.to_numpy().T, table.index, table.columns
    else:
        matrix, genes, cells = table.to_numpy(), table.columns, table.index
    del table
    cells = pd.Index([str(c) for c in cells])
    obs = pd.DataFrame(index=cells)
    if obs_path is not None:
        spec = build["obs_table"]
        meta = pd.read_csv(obs_path, sep=spec.get("delimiter", ","))
        if spec["index_column"] not in meta.columns:
            msg = (
                f"{obs_path} has no column {spec['index_column']!r} (columns: "
                f"{list(meta.columns)}); fix build.obs_table.index_column."
            )
            raise MissingKeyError(msg)
        meta = meta.set_index(meta[spec["index_column"]].astype(str))
        meta.index.name = None  # the column stays; an index of the same name confuses anndata
        missing = cells.difference(meta.index)
        if len(missing):
            msg = (
                f"{len(missing)} cells of {path.name} are not in {obs_path.name} (e.g. "
                f"{list(missing[:3])}); the two files do not belong together."
            )
            raise InputError(msg)
        obs = meta.loc[cells].copy()
    adata = AnnData(X=sp.csr_matrix(matrix), obs=obs)
    adata.obs_names = _unique(cells)
    adata.var_names = _unique(genes)
    return adata


def _h5_counts_key(h5, counts: str) -> str:
    if counts == "X":
        return "X"
    if counts in ("raw.X", "raw.X_if_present"):
        if "raw" in h5 and "X" in h5["raw"]:
            return "raw/X"
        if counts == "raw.X":
            msg = "build.counts is raw.X but the file has no .raw; use X or raw.X_if_present."
            raise MissingKeyError(msg)
        return "X"
    return counts  # layers/<name>


def _read_h5ad(path: Path, manifest: Mapping) -> tuple[AnnData, dict]:
    """Read only the cells the recipe keeps: large atlases never sit whole in memory."""
    import anndata as ad
    import h5py

    try:
        from anndata.io import sparse_dataset
    except ImportError:  # anndata < 0.11
        from anndata.experimental import sparse_dataset

    backed = ad.read_h5ad(path, backed="r")
    try:
        obs = backed.obs.copy()
        var = backed.var.copy()
        raw_var = backed.raw.var.copy() if backed.raw is not None else None
    finally:
        backed.file.close()
    rows, obs_kept = prepare_obs(obs, manifest)
    with h5py.File(path, "r") as h5:
        key = _h5_counts_key(h5, manifest["build"]["counts"])
        if key not in h5:
            msg = f"{path} has no {key!r}; fix build.counts (found: {list(h5.keys())})."
            raise MissingKeyError(msg)
        elem = h5[key]
        if isinstance(elem, h5py.Group):
            matrix = sp.csr_matrix(sparse_dataset(elem)[rows])
        else:
            matrix = sp.csr_matrix(elem[rows] if rows.size else np.zeros((0, elem.shape[1])))
    if key == "raw/X":
        symbols_col = manifest["build"].get("gene_symbols_column")
        if symbols_col and symbols_col not in raw_var and symbols_col in var:
            raw_var[symbols_col] = var[symbols_col].reindex(raw_var.index)
        var = raw_var
    adata = AnnData(X=matrix, obs=obs_kept, var=var)
    return adata, {"counts_from": key}


# --------------------------------------------------------------------------------------------
# the recipe: cells, labels, genes, counts
# --------------------------------------------------------------------------------------------


def _column(obs: pd.DataFrame, column: str, what: str) -> pd.Series:
    if column not in obs.columns:
        msg = (
            f"{what}: column {column!r} is not in the atlas's cell annotations; available: "
            f"{list(obs.columns)}. Fix the manifest."
        )
        raise MissingKeyError(msg)
    return obs[column]


def _decode_bytes(series: pd.Series) -> pd.Series:
    pattern = re.compile(r"""^b(['"])(.*)\1$""")

    def decode(v):
        if isinstance(v, bytes):
            return v.decode()
        if isinstance(v, str) and (m := pattern.match(v)):
            return m.group(2)
        return v

    return series.astype(object).map(decode)


def prepare_obs(obs: pd.DataFrame, manifest: Mapping) -> tuple[np.ndarray, pd.DataFrame]:
    """Apply the manifest's cell filters and derived label columns to a cell table.

    In order: decode bytes strings, ``build.subset`` selectors, ``build.derive_labels``, then
    drop cells without a fine label or with one of ``build.drop_labels``, labels with fewer than
    ``build.min_cells_per_label`` cells, and downsample to ``build.max_cells_per_label`` cells
    per label (seeded by ``build.seed``).

    Parameters
    ----------
    obs
        The atlas's ``.obs``.
    manifest
        A validated atlas manifest.

    Returns
    -------
    Positions of the kept cells (increasing) and their ``.obs`` with the derived columns.
    """
    build = manifest["build"]
    fine = manifest["label_keys"]["fine"]
    obs = obs.copy()
    if build.get("decode_bytes_strings"):
        for col in obs.columns:
            if obs[col].dtype == object or isinstance(obs[col].dtype, pd.CategoricalDtype):
                obs[col] = _decode_bytes(obs[col])
    keep = np.ones(len(obs), dtype=bool)
    for sel in build.get("subset", []):
        values = _column(obs, sel["column"], "build.subset").astype(str)
        inside = values.isin([str(v) for v in sel["values"]]).to_numpy()
        keep &= inside if sel["op"] == "in" else ~inside
        logger.info(
            "subset %s %s %s: %d cells left", sel["column"], sel["op"], sel["values"], keep.sum()
        )
    for derived in build.get("derive_labels", []):
        source = _column(obs, derived["from_column"], "build.derive_labels")
        mapping = {str(v): g["label"] for g in derived["groups"] for v in g["members"]}
        new = source.astype(object).map(lambda v, m=mapping: m.get(str(v)) if pd.notna(v) else None)
        unmatched = source[keep & new.isna().to_numpy()]
        if len(unmatched):
            top = unmatched.astype(str).value_counts().head(10).to_dict()
            fate = f"set to {derived['default']!r}" if derived.get("default") else "left unlabelled"
            logger.info(
                "derive %s: %d cells in no group (%s): %s",
                derived["column"],
                len(unmatched),
                fate,
                top,
            )
        if derived.get("default") is not None:
            new = new.fillna(derived["default"])
        obs[derived["column"]] = new.astype(object)
    labels = _column(obs, fine, "label_keys.fine")
    dropped = {str(v) for v in build.get("drop_labels", [])}
    keep &= labels.notna().to_numpy() & ~labels.astype(str).isin(dropped).to_numpy()
    labels = labels.astype(str).to_numpy()
    counts = pd.Series(labels[keep]).value_counts()
    lo = build.get("min_cells_per_label")
    if lo:
        small = counts[counts < lo]
        if len(small):
            logger.info("dropping labels with fewer than %d cells: %s", lo, small.to_dict())
            keep &= ~np.isin(labels, small.index.to_numpy())
    hi = build.get("max_cells_per_label")
    if hi:
        rng = np.random.default_rng(build.get("seed", 0))
        for label in sorted(counts.index):
            idx = np.flatnonzero(keep & (labels == label))
            if idx.size > hi:
                # keep a seeded random subset; sorted label order makes it reproducible
                drop = np.setdiff1d(idx, rng.choice(idx, hi, replace=False))
                keep[drop] = False
    rows = np.flatnonzero(keep)
    return rows, obs.iloc[rows].copy()


def _integral(values: np.ndarray) -> bool:
    return values.size == 0 or bool(np.all(np.abs(values - np.rint(values)) < 1e-6))


def _recover_counts(X: sp.csr_matrix, spec: Mapping) -> tuple[sp.csr_matrix, bool]:
    """Undo log1p(count / total * scale): each cell's smallest non-zero value is one count."""
    if _integral(X.data):
        return X, False
    X = sp.csr_matrix(X, dtype=np.float64, copy=True)
    lengths = np.diff(X.indptr)
    nonempty = lengths > 0
    mins = np.zeros(X.shape[0])
    mins[nonempty] = np.minimum.reduceat(X.data, X.indptr[:-1][nonempty])
    if np.any(mins[nonempty] <= 0):
        msg = "recover_counts: the matrix has non-positive values; it is not log-normalised counts."
        raise NotCountsError(msg)
    ratio = np.expm1(X.data) / np.expm1(np.repeat(mins, lengths))
    rounded = np.rint(ratio)
    # published text matrices carry a few digits: allow 0.01 plus 0.01% of the value
    bad = np.abs(ratio - rounded) > 0.01 + 1e-4 * ratio
    if bad.any():
        msg = (
            f"recover_counts ({spec['method']}, scale_factor {spec['scale_factor']}) did not give "
            f"integers for {int(bad.sum())} of {bad.size} values (e.g. {ratio[bad][:3]}): the "
            "matrix is not log1p(count / total * scale_factor). Remove recover_counts or fix "
            "the scale factor."
        )
        raise NotCountsError(msg)
    X.data = rounded
    return X, True


def apply_recipe(adata: AnnData, manifest: Mapping, *, cells_selected: bool = False) -> AnnData:
    """Turn an atlas's AnnData into the reference the build trains on.

    Parameters
    ----------
    adata
        The atlas as read (all cells, or only the kept ones with ``cells_selected=True``).
    manifest
        A validated atlas manifest.
    cells_selected
        The cells were already chosen by :func:`prepare_obs` (the h5ad reader does that
        before loading the matrix).

    Returns
    -------
    AnnData with integer counts (CSR, float32) in ``.X``, gene symbols as var names, and in
    ``.obs`` only the fine and coarse label columns, the batch column and ``build.keep_obs``.
    ``.uns["sct_atlas_build"]`` records what was done.
    """
    build = manifest["build"]
    label_keys = manifest["label_keys"]
    if not cells_selected:
        matrix, var = _counts_matrix(adata, build["counts"])
        rows, obs = prepare_obs(adata.obs, manifest)
        ref = AnnData(X=sp.csr_matrix(matrix[rows]), obs=obs, var=var.copy())
    else:
        ref = AnnData(X=sp.csr_matrix(adata.X), obs=adata.obs.copy(), var=adata.var.copy())
    symbols_col = build.get("gene_symbols_column")
    if symbols_col:
        symbols = ref.var[symbols_col] if symbols_col in ref.var else None
        if symbols is None:
            msg = (
                f"build.gene_symbols_column {symbols_col!r} is not a .var column (columns: "
                f"{list(ref.var.columns)}); fix the manifest."
            )
            raise MissingKeyError(msg)
        ids = ref.var_names.to_numpy()
        symbols = symbols.astype(object).where(symbols.notna() & (symbols.astype(str) != ""), ids)
        ref.var["gene_ids"] = ids
        ref.var_names = _unique(symbols)
    pattern = build.get("exclude_genes_pattern")
    if pattern:
        drop = np.array([re.match(pattern, g) is not None for g in ref.var_names])
        if drop.any():
            logger.info("excluding %d genes matching %r", drop.sum(), pattern)
            ref = ref[:, ~drop].copy()
    X = sp.csr_matrix(ref.X, dtype=np.float64)
    recovered = rounded = False
    if build.get("recover_counts"):
        X, recovered = _recover_counts(X, build["recover_counts"])
    if build.get("round_counts") and not _integral(X.data):
        X.data = np.rint(X.data)
        rounded = True
    ref.X = sp.csr_matrix(X, dtype=np.float32)
    ref.X.eliminate_zeros()
    check_counts(ref)
    batch_key = manifest["model"]["batch_key"]
    required = [label_keys["fine"], label_keys["coarse"]] + ([batch_key] if batch_key else [])
    for col in required:
        _column(ref.obs, col, "label_keys / model.batch_key")
    extra = [c for c in build.get("keep_obs", []) if c in ref.obs.columns]
    missing = sorted(set(build.get("keep_obs", [])) - set(extra))
    if missing:
        logger.info("keep_obs columns not in the atlas, skipped: %s", missing)
    cols = list(dict.fromkeys(required + extra))
    ref.obs = ref.obs[cols].copy()
    for col in cols:
        if ref.obs[col].dtype == object:
            ref.obs[col] = ref.obs[col].astype(str).astype("category")
    ref.uns["sct_atlas_build"] = {
        "atlas": manifest["name"],
        "version": manifest["version"],
        "n_cells": int(ref.n_obs),
        "n_genes": int(ref.n_vars),
        "counts": build["counts"],
        "counts_recovered": recovered,
        "counts_rounded": rounded,
    }
    return ref


def _counts_matrix(adata: AnnData, counts: str):
    if counts == "X":
        return adata.X, adata.var
    if counts in ("raw.X", "raw.X_if_present"):
        if adata.raw is not None:
            return adata.raw.X, adata.raw.var
        if counts == "raw.X":
            msg = "build.counts is raw.X but the AnnData has no .raw; use X or raw.X_if_present."
            raise MissingKeyError(msg)
        return adata.X, adata.var
    layer = counts.split("/", 1)[1]
    if layer not in adata.layers:
        msg = f"build.counts names layer {layer!r}; the AnnData has layers {list(adata.layers)}."
        raise MissingKeyError(msg)
    return adata.layers[layer], adata.var


def prepare_reference(
    name: str | os.PathLike | Mapping,
    *,
    dest: str | os.PathLike | None = None,
    download: bool = True,
) -> AnnData:
    """Read an atlas as its manifest says and apply the recipe, without training.

    Parameters
    ----------
    name
        Name of a shipped atlas manifest, the path of a YAML manifest, or a manifest dict.
    dest
        Download folder (see :func:`fetch`).
    download
        Download missing files; with ``False`` a missing file is an error.

    Returns
    -------
    The reference AnnData of :func:`apply_recipe`, with the source hashes in
    ``.uns["sct_atlas_build"]["source_sha256"]``.
    """
    manifest = _as_manifest(name)
    build = manifest["build"]
    reader = build["reader"]
    with timed(f"reading atlas {manifest['name']} ({reader})"):
        if reader == "embedded":
            ref = apply_recipe(_read_embedded(build), manifest)
            hashes: dict[str, str] = {}
        else:
            dest = Path(dest) if dest is not None else default_dest(manifest)
            paths = _fetch(manifest, dest, force=False, allow_download=download)
            hashes = _read_lock(dest)["files"]
            hashes = {f: hashes[f]["sha256"] for f in paths if f in hashes}
            matrix = paths[build["matrix"]]
            if reader == "h5ad":
                adata, _ = _read_h5ad(matrix, manifest)
                ref = apply_recipe(adata, manifest, cells_selected=True)
            elif reader == "csv":
                obs_table = build.get("obs_table")
                obs_path = paths[obs_table["filename"]] if obs_table else None
                ref = apply_recipe(_read_csv(matrix, build, obs_path), manifest)
            else:  # cef
                adata = read_cef(matrix)
                _column(adata.obs, build["cef_label_row"], "build.cef_label_row")
                ref = apply_recipe(adata, manifest)
    ref.uns["sct_atlas_build"]["source_sha256"] = hashes
    logger.info(
        "atlas %s: %d cells, %d genes, %d labels",
        manifest["name"],
        ref.n_obs,
        ref.n_vars,
        ref.obs[manifest["label_keys"]["fine"]].nunique(),
    )
    return ref


def build_from_manifest(
    name: str | os.PathLike | Mapping,
    *,
    dest: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None,
    max_epochs: int | None = None,
    scanvi_max_epochs: int | None = None,
    seed: int | None = None,
    download: bool = True,
):
    """Download (if needed), read and train a reference bundle exactly as a manifest says.

    Parameters
    ----------
    name
        Name of a shipped atlas manifest, the path of a YAML manifest, or a manifest dict.
        ``"pbmc_demo"`` is embedded and builds offline.
    dest
        Download folder (see :func:`fetch`).
    out_dir
        Bundle folder to create; default ``<settings.cache_dir>/bundles/<name>-<version>``,
        where :func:`sct.atlas.load` finds it by name.
    max_epochs, scanvi_max_epochs
        Override the manifest's training length (e.g. a quick smoke test); the bundle records
        what was used.
    seed
        Seed of the split and training; default ``build.seed`` of the manifest.
    download
        Download missing files; with ``False`` a missing file is an error.

    Returns
    -------
    The verified :class:`ReferenceBundle`.
    """
    from ._bundle import N_MEMBERS, build
    from ._registry import bundles_dir

    manifest = _as_manifest(name)
    ref = prepare_reference(manifest, dest=dest, download=download)
    model = manifest["model"]
    kwargs = {
        "labels_key": manifest["label_keys"]["fine"],
        "name": manifest["name"],
        "version": manifest["version"],
        "out_dir": Path(out_dir)
        if out_dir is not None
        else bundles_dir() / f"{manifest['name']}-{manifest['version']}",
        "batch_key": model["batch_key"],
        "n_hvg": model["n_hvg"],
        "n_latent": model["scvi"]["n_latent"],
        "n_layers": model["scvi"]["n_layers"],
        "max_epochs": max_epochs if max_epochs is not None else model["scvi"]["max_epochs"],
        "scanvi_max_epochs": scanvi_max_epochs
        if scanvi_max_epochs is not None
        else model["scanvi"]["max_epochs"],
        "species": manifest["species"],
        "n_members": model.get("n_members", N_MEMBERS),
        "coarse_key": manifest["label_keys"]["coarse"]
        if manifest["label_keys"]["coarse"] != manifest["label_keys"]["fine"]
        else None,
        "seed": seed if seed is not None else manifest["build"].get("seed", 0),
    }
    # settings sct.atlas.build does not expose: it always uses _BUILD_IMPLICIT; say so when a
    # manifest asks for something else
    asked = {
        "n_hidden": model["scvi"].get("n_hidden"),
        "hvg_flavor": model.get("hvg_flavor"),
        "n_samples_per_label": model["scanvi"].get("n_samples_per_label"),
    }
    for key, value in asked.items():
        if value is not None and value != _BUILD_IMPLICIT[key]:
            logger.warning(
                "manifest %s sets %s=%r, which sct.atlas.build does not expose (it uses %r)",
                manifest["name"],
                key,
                value,
                _BUILD_IMPLICIT[key],
            )
    with timed(f"building reference bundle {manifest['name']} v{manifest['version']}"):
        return build(ref, **kwargs)
