"""Input checks shared by every entry point.

Each check raises before any heavy work, with a message that says what was found, what was
expected and how to fix it. All errors derive from :class:`InputError` (a ``ValueError``), so a
command-line front end can map them to one exit code.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from anndata import AnnData

# Integer checks look at this many non-zero values at most (evenly spaced): enough to catch
# normalised data, cheap on a million cells.
_MAX_VALUES_CHECKED = 1_000_000


class InputError(ValueError):
    """Bad input: the message names the problem and the fix."""


class EmptyDataError(InputError):
    """The matrix has no cells or no genes."""


class NotCountsError(InputError):
    """Values are not raw counts (negative, NaN, or normalised)."""


class DuplicateBarcodesError(InputError):
    """Cell barcodes (obs names) are not unique."""


class UnsupportedFormatError(InputError):
    """The file is none of the formats we read, or it is corrupt."""


class MissingKeyError(InputError, KeyError):
    """A required ``.obs`` column or layer is absent."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def get_matrix(adata: AnnData, layer: str | None):
    """``adata.layers[layer]`` or ``adata.X``, with a clear error for an unknown layer."""
    if layer is None:
        return adata.X
    if layer not in adata.layers:
        msg = (
            f"Layer {layer!r} not found; the AnnData has layers {list(adata.layers)}. "
            "Pass layer=None to use .X, or one of the listed layers."
        )
        raise MissingKeyError(msg)
    return adata.layers[layer]


def _values(matrix) -> np.ndarray:
    if sp.issparse(matrix):
        return np.asarray(matrix.data)
    return np.asarray(matrix).ravel()


def check_not_empty(adata: AnnData) -> None:
    if adata.n_obs == 0 or adata.n_vars == 0:
        msg = (
            f"The matrix is empty ({adata.n_obs} cells x {adata.n_vars} genes). "
            "Check the input file: a filtered 10x matrix with cells is expected."
        )
        raise EmptyDataError(msg)


def check_counts(adata: AnnData, *, layer: str | None = None) -> None:
    """Raise unless the matrix holds non-negative integer counts with at least one cell and gene."""
    check_not_empty(adata)
    matrix = get_matrix(adata, layer)
    where = ".X" if layer is None else f".layers[{layer!r}]"
    values = _values(matrix)
    if values.size == 0:
        msg = f"{where} has no non-zero value: every cell has zero counts. Check the input file."
        raise EmptyDataError(msg)
    n_nan = int(np.isnan(values).sum()) if values.dtype.kind == "f" else 0
    if n_nan:
        msg = f"{where} contains {n_nan} NaN values; counts must be finite. Remove or fix them."
        raise NotCountsError(msg)
    vmin = values.min()
    if vmin < 0:
        msg = (
            f"{where} contains negative values (minimum {vmin:.3g}): it looks scaled or "
            f"centred, not raw counts. {_counts_hint(adata, layer)}"
        )
        raise NotCountsError(msg)
    if values.dtype.kind == "f":
        step = max(1, values.size // _MAX_VALUES_CHECKED)
        sample = values[::step]
        frac = float(np.mean(np.abs(sample - np.round(sample)) > 1e-3))
        if frac > 0:
            looks_log = float(values.max()) < 30
            kind = "log-normalised" if looks_log else "normalised or expected (non-integer) counts"
            msg = (
                f"{where} holds non-integer values ({frac:.1%} of non-zeros, maximum "
                f"{values.max():.3g}): it looks {kind}, but raw counts are needed. "
                f"{_counts_hint(adata, layer)} Full-length expected counts (RSEM, Salmon) may "
                "be rounded to integers first: adata.X = np.round(adata.X)."
            )
            raise NotCountsError(msg)


def _counts_hint(adata: AnnData, layer: str | None) -> str:
    candidates = [k for k in adata.layers if k != layer]
    if candidates:
        return f"Name the layer that holds raw counts, e.g. layer={candidates[0]!r} (layers: {candidates})."
    if adata.raw is not None:
        return "Raw counts may be in .raw: use adata.raw.to_adata()."
    return "Load the raw UMI matrix (e.g. Cell Ranger's filtered_feature_bc_matrix)."


def check_unique_obs_names(adata: AnnData) -> None:
    if adata.obs_names.is_unique:
        return
    dup = adata.obs_names[adata.obs_names.duplicated()].unique()
    msg = (
        f"{len(dup)} cell barcodes occur more than once (e.g. {list(dup[:3])}). Barcodes must be "
        "unique: when concatenating samples, prefix each with its sample id "
        "(anndata.concat(..., index_unique='-')), or call adata.obs_names_make_unique()."
    )
    raise DuplicateBarcodesError(msg)


def check_obs_key(adata: AnnData, key: str | None, *, what: str = "column") -> None:
    if key is None or key in adata.obs.columns:
        return
    msg = (
        f"{what} {key!r} not found in adata.obs; available columns: {list(adata.obs.columns)}. "
        "Pass the name of an existing column."
    )
    raise MissingKeyError(msg)


def check_lot(adata: AnnData, *, layer: str | None = None, batch_key: str | None = None) -> None:
    """All checks a counts-based entry point needs, in the order a user would fix them."""
    check_counts(adata, layer=layer)
    check_unique_obs_names(adata)
    check_obs_key(adata, batch_key, what="batch_key")
