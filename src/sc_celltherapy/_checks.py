"""Input checks shared by every entry point.

Each check raises before any heavy work, with a message that says what was found, what was
expected and how to fix it. All errors derive from :class:`InputError` (a ``ValueError``), so a
command-line front end can map them to one exit code.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

# The integer check reads every non-zero value, this many at a time (bounded scratch memory);
# its message describes an evenly spaced sample of this size.
_CHUNK_VALUES = 4_000_000
_MESSAGE_SAMPLE = 1_000_000


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
    if matrix is None:
        msg = f"{where} is empty (None). {_counts_hint(adata, layer)}"
        raise NotCountsError(msg)
    values = _values(matrix)
    if values.size == 0:
        raw = " Counts may be in .raw: use adata.raw.to_adata()." if adata.raw is not None else ""
        msg = (
            f"{where} has no non-zero value: every cell has zero counts. Check the input file.{raw}"
        )
        raise EmptyDataError(msg)
    n_bad = int((~np.isfinite(values)).sum()) if values.dtype.kind == "f" else 0
    if n_bad:
        msg = (
            f"{where} contains {n_bad} NaN or infinite values; counts must be finite. Remove or "
            "fix them."
        )
        raise NotCountsError(msg)
    vmin = values.min()
    if vmin < 0:
        msg = (
            f"{where} contains negative values (minimum {vmin:.3g}): it looks scaled or "
            f"centred, not raw counts. {_counts_hint(adata, layer)}"
        )
        raise NotCountsError(msg)
    if values.dtype.kind == "f":
        # every value, in chunks (one stray non-integer must not hide in an unsampled stretch)
        n_off = sum(
            int((np.abs(chunk - np.round(chunk)) > 1e-3).sum())
            for chunk in (
                values[i : i + _CHUNK_VALUES] for i in range(0, values.size, _CHUNK_VALUES)
            )
        )
        if n_off and n_off < 0.01 * values.size:  # a few stray values, not a transformed matrix
            bad = values[np.abs(values - np.round(values)) > 1e-3][:3]
            msg = (
                f"{where} holds {n_off} non-integer value(s) among {values.size} non-zeros "
                f"(e.g. {', '.join(f'{v:.4g}' for v in bad)}); counts must be whole numbers. "
                "Fix or remove them."
            )
            raise NotCountsError(msg)
        if n_off:
            step = max(1, values.size // _MESSAGE_SAMPLE)  # the message describes a sample
            sample = values[::step]
            off = np.abs(sample - np.round(sample))
            frac = n_off / values.size
            raise NotCountsError(_non_integer_message(where, sample, off, frac, adata, layer))


# Expected counts (RSEM, Salmon) are integers wherever reads map uniquely: 43% of the non-zero
# values of the full-length hESC data in ../shared/data are exact integers. TPM, FPKM and
# normalised values almost never are.
_EXPECTED_COUNTS_MIN_INTEGER_SHARE = 0.1


def _non_integer_message(where, sample, off, frac, adata, layer) -> str:
    found = (
        f"{where} holds non-integer values ({frac:.1%} of non-zeros, maximum {sample.max():.3g})"
    )
    hint = _counts_hint(adata, layer)
    if float(sample.max()) < 30:
        return f"{found}: it looks log-normalised, but raw counts are needed. {hint}"
    if float(np.mean(off < 1e-6)) >= _EXPECTED_COUNTS_MIN_INTEGER_SHARE:
        return (
            f"{found}, many of them whole numbers: it looks like expected counts of a "
            f"full-length protocol (RSEM, Salmon), but integer counts are needed. {hint} "
            "Expected counts may be rounded to integers first: adata.X = np.round(adata.X)."
        )
    return (
        f"{found}, almost none of them whole numbers: it looks normalised (TPM, FPKM, CPM), "
        f"and rounding does not turn normalised values back into counts. {hint}"
    )


def _counts_hint(adata: AnnData, layer: str | None) -> str:
    candidates = [k for k in adata.layers if k != layer]
    if candidates:
        return (
            f"Name the layer that holds raw counts, e.g. layer={candidates[0]!r} "
            f"(--layer {candidates[0]} on the command line; layers: {candidates})."
        )
    if adata.raw is not None:
        return "Raw counts may be in .raw: use adata.raw.to_adata()."
    return "Load the raw UMI matrix (e.g. Cell Ranger's filtered_feature_bc_matrix)."


# .var columns that hold gene symbols when var_names are Ensembl ids (10x / Cell Ranger,
# CELLxGENE, GEO and Monocle conventions), in the order they are looked for
SYMBOL_COLUMNS = ("gene_symbols", "feature_name", "gene_name", "gene_short_name", "gene_symbol")
_ENSEMBL_ID = r"^ENS[A-Z]*G\d{6,}"


def gene_symbols(adata: AnnData) -> pd.Index:
    """Gene symbols of ``adata.var`` in its order: ``var_names`` unless they are Ensembl ids, then
    the first symbol column of :data:`SYMBOL_COLUMNS`. Marker panels are written in symbols, so a
    lot named by Ensembl ids without a symbol column is refused rather than matched to nothing."""
    names = pd.Index(adata.var_names.astype(str))
    if not len(names) or names.str.match(_ENSEMBL_ID).mean() <= 0.5:
        return names
    for col in SYMBOL_COLUMNS:
        if col in adata.var.columns:
            return pd.Index(adata.var[col].astype(str).to_numpy())
    msg = (
        f"The lot's genes are named by Ensembl ids (e.g. {names[0]}) and .var has no gene-symbol "
        f"column (looked for {list(SYMBOL_COLUMNS)}; found {list(adata.var.columns)}), so marker "
        "panels, written in HGNC symbols, cannot be matched. Add the symbols, e.g. "
        "adata.var['gene_symbols'] = <symbols>, or read the 10x output with sct.io.read, which "
        "names genes by symbol."
    )
    raise InputError(msg)


def gene_columns(adata: AnnData, genes) -> dict[str, int]:
    """Column index of each gene of ``genes`` found among the lot's gene symbols (first occurrence
    of a repeated symbol), in the order of ``genes``."""
    symbols = gene_symbols(adata)
    first = ~symbols.duplicated()
    wanted = list(dict.fromkeys(genes))
    found = symbols[first].get_indexer(wanted)
    columns = np.flatnonzero(first)
    return {g: int(columns[i]) for g, i in zip(wanted, found, strict=True) if i >= 0}


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


def check_json_schema(
    data, schema: dict, *, source: str, schema_file: str, error: type[InputError]
) -> None:
    """Validate ``data`` against a shipped JSON Schema; raise ``error`` naming the first field
    that breaks it (errors sorted, so the same input always names the same field)."""
    import jsonschema

    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(dict(data)), key=str)
    if errors:
        e = errors[0]
        where = "/".join(str(p) for p in e.absolute_path) or "(top level)"
        raise error(f"{source}: field {where}: {e.message} ({schema_file}).")
