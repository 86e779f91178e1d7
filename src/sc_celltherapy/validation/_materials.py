"""The cells a validation plan names: its base and impurity materials, read and selected."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .._checks import InputError, check_counts
from ..io import read
from ._spike_in import select_by_markers

MATERIAL_KEY = "sct_material"  # obs of the pooled cells: "base" or the impurity's key
BATCH_KEY = "sct_base_batch"  # obs of the pooled cells: the base's batch (batch_key)


def read_material(material: Mapping, *, where: str) -> AnnData:
    """A material's cells: its file read as a lot (counts checked), then its selection (an obs
    column's values, or a marker rule). ``where`` names the plan field in errors."""
    if material.get("round_counts"):
        adata = ad.read_h5ad(material["file"]) if str(material["file"]).endswith(".h5ad") else None
        if adata is None:
            msg = f"{where}: round_counts is for .h5ad files of expected counts only."
            raise InputError(msg)
        adata.X = _rounded(adata.X)
        adata.var_names_make_unique()
        check_counts(adata)
    else:
        adata = read(Path(material["file"]))
    select = material.get("select")
    if select and "obs" in select:
        column, values = select["obs"]["column"], select["obs"]["values"]
        if column not in adata.obs:
            msg = f"{where}: {material['file']} has no obs column {column!r} to select on."
            raise InputError(msg)
        keep = adata.obs[column].astype(str).isin(values).to_numpy()
    elif select and "markers" in select:
        rule = select["markers"]
        keep = select_by_markers(
            adata, positive=rule["positive"], negative=rule.get("negative", ())
        )
    else:
        keep = np.ones(adata.n_obs, dtype=bool)
    if keep.sum() == 0:
        msg = f"{where}: no cell of {material['file']} meets the selection {select}."
        raise InputError(msg)
    cells = adata[keep].copy()
    batch_key = material.get("batch_key")
    if batch_key is not None and batch_key not in cells.obs:
        msg = f"{where}: {material['file']} has no obs column {batch_key!r} (batch_key)."
        raise InputError(msg)
    batch = None if batch_key is None else cells.obs[batch_key].astype(str).to_numpy()
    cells.obs = cells.obs[[]]
    if batch is not None:
        cells.obs[BATCH_KEY] = batch
    return cells


def draw_mixture(rng, base: np.ndarray, spike: np.ndarray, fraction: float, n_cells: int):
    """Indices of a mixture: ``round(fraction * n_cells)`` spike cells, the rest base cells,
    each drawn without replacement unless its material has too few cells (then with)."""
    n_spike = int(round(fraction * n_cells))
    n_base = n_cells - n_spike
    parts = [
        rng.choice(cells, n, replace=n > cells.size)
        for cells, n in ((base, n_base), (spike, n_spike))
    ]
    return np.concatenate(parts), n_spike > spike.size or n_base > base.size


def mixture_estimate(calls, key: str, idx: np.ndarray) -> tuple[int, int, float]:
    """A mixture's assessed cells, those called ``key`` among them, and the estimate (their
    share, the release's rule), from per-cell ``calls`` (columns ``assessed`` and ``key``)."""
    assessed = calls["assessed"].to_numpy()[idx]
    n_assessed, n_called = int(assessed.sum()), int((calls[key].to_numpy()[idx] & assessed).sum())
    return n_assessed, n_called, n_called / max(n_assessed, 1)


def take(cells: AnnData, idx: np.ndarray) -> AnnData:
    """The cells at ``idx`` (a cell drawn twice appears twice) as a new lot, renamed
    ``cell-0``, ``cell-1``, ... so that every barcode is unique."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Observation names are not unique", UserWarning)
        lot = cells[idx].copy()
    lot.obs_names = [f"cell-{i}" for i in range(lot.n_obs)]
    return lot


def match_depth(cells: AnnData, base: AnnData, rng) -> AnnData:
    """Each cell's counts binomially thinned to a library size drawn from the base's (never
    raised): the same cells as the lots' sequencing would have counted them."""
    totals = np.asarray(base.X.sum(axis=1)).ravel()
    X = sp.csr_matrix(cells.X, dtype=np.float32, copy=True)
    size = np.asarray(X.sum(axis=1)).ravel()
    keep = np.minimum(1.0, rng.choice(totals, cells.n_obs) / np.maximum(size, 1))
    per_value = np.repeat(keep, np.diff(X.indptr))
    X.data = rng.binomial(X.data.astype(np.int64), per_value).astype(np.float32)
    X.eliminate_zeros()
    out = cells.copy()
    out.X = X
    return out


def _rounded(X):
    if sp.issparse(X):
        X = X.copy()
        X.data = np.round(X.data)
        X.eliminate_zeros()
        return X
    return sp.csr_matrix(np.round(np.asarray(X)))


def pool(base: AnnData, impurities: Mapping[str, AnnData], *, base_only=()) -> AnnData:
    """Every material's cells in one lot on the genes all of them measured, each cell's material
    in ``obs["sct_material"]``. Features in ``base_only`` (a spec's transgene features: the
    product's own construct) are kept from the base and are zero in impurity materials that
    lack them, whose cells were never transduced."""
    parts = {"base": base}
    for key, cells in impurities.items():
        absent = [f for f in base_only if f in base.var_names and f not in cells.var_names]
        if absent:
            zeros = ad.AnnData(
                X=sp.csr_matrix((cells.n_obs, len(absent)), dtype=np.float32),
                obs=cells.obs[[]],
                var=pd.DataFrame(index=absent),
            )
            cells = ad.concat([cells, zeros], axis=1, join="outer", merge="first")
        parts[key] = cells
    pooled = ad.concat(parts, join="inner", label=MATERIAL_KEY, index_unique="-")
    if BATCH_KEY in base.obs:  # concat keeps only obs columns every material has
        batch = [base.obs[BATCH_KEY].to_numpy()]
        batch += [np.full(p.n_obs, None, dtype=object) for k, p in parts.items() if k != "base"]
        pooled.obs[BATCH_KEY] = np.concatenate(batch)
    if pooled.n_vars < 0.5 * min(p.n_vars for p in parts.values()):
        msg = (
            f"The materials share only {pooled.n_vars} genes; read them with the same gene "
            "naming (symbols or Ensembl IDs) and the same feature set."
        )
        raise InputError(msg)
    return pooled
