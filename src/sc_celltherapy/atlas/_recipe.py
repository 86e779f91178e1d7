"""Build a reference bundle from an atlas's files, as its manifest's ``build`` section says.

``build_from_manifest`` reads the files fetched by :func:`._download.fetch` (cell filters,
derived label columns, count recovery), then trains the reference with
:func:`sc_celltherapy.atlas.build` and the manifest's model settings. Nothing here touches the
network unless a file is missing.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .._checks import (
    InputError,
    MissingKeyError,
    NotCountsError,
    UnsupportedFormatError,
    check_counts,
)
from .._keys import KEYS
from .._logging import logger, timed
from ._cells import obs_column, prepare_obs
from ._download import as_manifest, default_dest, fetch_files, read_lock


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
        obs_column(ref.obs, col, "label_keys / model.batch_key")
    extra = [c for c in build.get("keep_obs", []) if c in ref.obs.columns]
    missing = sorted(set(build.get("keep_obs", [])) - set(extra))
    if missing:
        logger.info("keep_obs columns not in the atlas, skipped: %s", missing)
    cols = list(dict.fromkeys(required + extra))
    ref.obs = ref.obs[cols].copy()
    for col in cols:
        if ref.obs[col].dtype == object:
            ref.obs[col] = ref.obs[col].astype(str).astype("category")
    ref.uns[KEYS.ATLAS_BUILD] = {
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
    manifest = as_manifest(name)
    build = manifest["build"]
    reader = build["reader"]
    with timed(f"reading atlas {manifest['name']} ({reader})"):
        if reader == "embedded":
            ref = apply_recipe(_read_embedded(build), manifest)
            hashes: dict[str, str] = {}
        else:
            dest = Path(dest) if dest is not None else default_dest(manifest)
            paths = fetch_files(manifest, dest, force=False, allow_download=download)
            hashes = read_lock(dest)["files"]
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
                obs_column(adata.obs, build["cef_label_row"], "build.cef_label_row")
                ref = apply_recipe(adata, manifest)
    ref.uns[KEYS.ATLAS_BUILD]["source_sha256"] = hashes
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

    manifest = as_manifest(name)
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
        "n_hidden": model["scvi"].get("n_hidden", 128),
        "n_samples_per_label": model["scanvi"].get("n_samples_per_label", 100),
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
    with timed(f"building reference bundle {manifest['name']} v{manifest['version']}"):
        return build(ref, **kwargs)
