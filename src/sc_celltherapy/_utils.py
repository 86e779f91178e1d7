"""Small helpers shared by several modules."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from anndata import AnnData

ALL_CELLS = "all"


def iter_samples(adata: AnnData, batch_key: str | None) -> Iterator[tuple[str, np.ndarray]]:
    """Yield ``(sample name, boolean mask)`` per sample; one sample ``"all"`` without a key."""
    if batch_key is None:
        yield ALL_CELLS, np.ones(adata.n_obs, dtype=bool)
        return
    values = adata.obs[batch_key].astype(str).to_numpy()
    for name in sorted(set(values)):
        yield name, values == name


def plain(value):
    """Numpy scalars to Python ones (recursively), ``None`` kept: ready for JSON."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and np.isnan(value):
        return None
    return value


def uns_safe(value):
    """Drop ``None`` and turn numpy scalars into Python ones, so ``.uns`` writes to ``.h5ad``."""
    if isinstance(value, dict):
        return {str(k): uns_safe(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [uns_safe(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
