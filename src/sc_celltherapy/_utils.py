"""Small helpers shared by several modules."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from anndata import AnnData

ALL_CELLS = "all"
# Exact nearest neighbours up to this many cells, approximate (pynndescent) above. On 20,000
# cells and 2 CPU cores exact search took 40 s in scrublet (pynndescent 150 s, mostly index
# building and numba compilation) and 13 s for the clustering graph (pynndescent 32 s), and
# nothing about it is approximate.
EXACT_KNN_MAX_CELLS = 50_000


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


# h5ad keys cannot hold "/" (a path separator in HDF5); names such as "epithelial / mesothelial
# cells" are stored with the look-alike division slash instead
_H5_SLASH = "\u2215"


def uns_safe(value):
    """Drop ``None``, turn numpy scalars into Python ones and replace "/" in keys with a
    division slash, so ``.uns`` writes to ``.h5ad``."""
    if isinstance(value, dict):
        return {
            str(k).replace("/", _H5_SLASH): uns_safe(v) for k, v in value.items() if v is not None
        }
    if isinstance(value, list | tuple):
        return [uns_safe(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
