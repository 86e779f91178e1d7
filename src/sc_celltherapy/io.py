"""Reading product lots: 10x ``.h5``, 10x matrix folders and ``.h5ad``.

Every reader returns raw counts with unique gene names, Ensembl ids and feature types kept in
``.var`` (``gene_ids``, ``feature_types``), and extra features such as a CAR transgene left in the
matrix. Bad files fail here, before any analysis, with a message that says what to do.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
from anndata import AnnData

from ._checks import (
    InputError,
    UnsupportedFormatError,
    check_counts,
    check_unique_obs_names,
)
from ._keys import KEYS
from ._logging import logger

__all__ = ["read", "file_sha256", "guess_species"]

_MTX_NAMES = ("matrix.mtx.gz", "matrix.mtx")


class MissingFileError(InputError, FileNotFoundError):
    """The input path does not exist."""


def read(path: str | os.PathLike, *, layer: str | None = None) -> AnnData:
    """Read a lot's count matrix.

    Parameters
    ----------
    path
        A 10x ``.h5`` file, a 10x matrix folder (``matrix.mtx.gz``, ``features.tsv.gz``,
        ``barcodes.tsv.gz``) or an ``.h5ad`` file.
    layer
        Where the raw counts are. For 10x input they are always read into ``.X``; a name here also
        places them in ``adata.layers[layer]``. For ``.h5ad`` input, the layer that already holds
        the counts (``None``: ``.X``).

    Returns
    -------
    The AnnData, validated as counts, with ``.var["gene_ids"]`` / ``.var["feature_types"]`` where
    the file has them, unique ``var_names`` and ``uns["sct_input"]`` (path, format, sha256).

    Examples
    --------
    >>> import sc_celltherapy as sct
    >>> adata = sct.io.read("filtered_feature_bc_matrix.h5")  # doctest: +SKIP
    """
    path = Path(path)
    if not path.exists():
        msg = f"Input not found: {path}. Check the path (relative paths start at {Path.cwd()})."
        raise MissingFileError(msg)
    if not os.access(path, os.R_OK):
        msg = f"Input {path} is not readable (permission denied). Fix its permissions."
        raise InputError(msg)

    fmt = _detect_format(path)
    try:
        adata = _read(path, fmt)
    except (OSError, KeyError, ValueError, TypeError) as err:
        msg = (
            f"{path} could not be read as {fmt.replace('_', ' ')} ({type(err).__name__}: {err}). "
            "The file may be truncated or corrupt: copy it again and compare its checksum."
        )
        raise UnsupportedFormatError(msg) from err

    if fmt != "h5ad" and layer is not None:
        adata.layers[layer] = adata.X
    if not adata.var_names.is_unique:
        adata.var_names_make_unique()
    adata.obs_names = adata.obs_names.astype(str)
    check_counts(adata, layer=layer)
    check_unique_obs_names(adata)
    adata.uns[KEYS.INPUT] = {"path": str(path), "format": fmt, "sha256": file_sha256(path)}
    logger.info("read %s: %d cells x %d features", path, adata.n_obs, adata.n_vars)
    return adata


def _read(path: Path, fmt: str) -> AnnData:
    with warnings.catch_warnings():
        # 10x gene symbols repeat (read() makes them unique) and duplicate barcodes get our own
        # error just after, so anndata's warnings would only repeat what we handle.
        warnings.filterwarnings(
            "ignore", "(Variable|Observation) names are not unique", UserWarning
        )
        if fmt == "10x_h5":
            return sc.read_10x_h5(path, gex_only=False)
        if fmt == "10x_mtx":
            return sc.read_10x_mtx(
                path, var_names="gene_symbols", gex_only=False, make_unique=False
            )
        return ad.read_h5ad(path)


def _detect_format(path: Path) -> str:
    if path.is_dir():
        if any((path / n).exists() for n in _MTX_NAMES):
            missing = [
                group[0]
                for group in (
                    ("features.tsv.gz", "features.tsv", "genes.tsv.gz", "genes.tsv"),
                    ("barcodes.tsv.gz", "barcodes.tsv"),
                )
                if not any((path / n).exists() for n in group)
            ]
            if missing:
                msg = (
                    f"Folder {path} has a 10x matrix but no {' or '.join(missing)}: the three "
                    "files of Cell Ranger's filtered_feature_bc_matrix belong together. Copy the "
                    "whole folder."
                )
                raise UnsupportedFormatError(msg)
            return "10x_mtx"
        msg = (
            f"Folder {path} holds no 10x matrix (expected one of {list(_MTX_NAMES)} with "
            "features.tsv.gz and barcodes.tsv.gz). Point at Cell Ranger's "
            "filtered_feature_bc_matrix folder."
        )
        raise UnsupportedFormatError(msg)
    suffix = path.name.lower()
    if suffix.endswith(".h5ad"):
        return "h5ad"
    if suffix.endswith(".h5"):
        return "10x_h5"
    msg = (
        f"Unsupported input {path.name!r}: expected a 10x .h5 file, a 10x matrix folder or an "
        ".h5ad file. Convert other formats to .h5ad with anndata first."
    )
    raise UnsupportedFormatError(msg)


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file, or of every file under a folder (names and contents, sorted).

    Parameters
    ----------
    path
        A file or a folder.

    Returns
    -------
    The hex digest.
    """
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(file.relative_to(path).as_posix().encode())
        with open(file, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def guess_species(adata: AnnData) -> str:
    """``"human"``, ``"mouse"`` or ``"unknown"``, from Ensembl ids or the case of gene symbols.

    Human symbols are upper case (``CD3E``), mouse symbols capitalised (``Cd3e``); Ensembl ids
    start ``ENSG`` / ``ENSMUSG``.

    Parameters
    ----------
    adata
        Any AnnData; ``.var["gene_ids"]`` is read when present, else the var names.
    """
    ids = adata.var["gene_ids"].astype(str) if "gene_ids" in adata.var else adata.var_names
    ids = pd.Index(ids)
    if ids.str.startswith("ENSMUSG").mean() > 0.5:
        return "mouse"
    if ids.str.startswith("ENSG").mean() > 0.5:
        return "human"
    names = pd.Index(adata.var_names.astype(str))
    letters = names[names.str.match(r"^[A-Za-z][A-Za-z0-9]+$")]
    if len(letters) == 0:
        return "unknown"
    upper = np.mean([n.isupper() for n in letters])
    capitalised = np.mean([n[0].isupper() and n[1:] == n[1:].lower() for n in letters])
    if upper > 0.6:
        return "human"
    if capitalised > 0.6:
        return "mouse"
    return "unknown"
