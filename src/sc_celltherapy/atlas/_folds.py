"""Which reference cells each calibration fold holds out: the donors the calibration, label sets
and out-of-reference threshold are fitted and measured on."""

from __future__ import annotations

import numpy as np
import pandas as pd

# Calibration folds: each leaves out whole batches (donors) and trains its own models, so every
# reference cell is predicted by models that never saw its donor. More folds cost build time
# (each trains n_members models) for little: five folds already calibrate on every cell.
MAX_CALIBRATION_FOLDS = 5


def calibration_folds(
    obs: pd.DataFrame, labels_key: str, batch_key: str | None, holdout: float, seed: int
) -> tuple[list[np.ndarray], np.ndarray]:
    """The cells each calibration fold holds out, and each cell's donor for nested validation.

    With two or more batches: the batches are dealt into ``min(batches, 5)`` folds of similar
    cell count (largest batch first, each into the fold with fewest cells; ties by a seeded
    shuffle), so that every cell is held out once, with its whole batch. A lot is always a batch
    the reference never saw. The donor of a cell is its batch.

    With one batch: ``holdout`` of each label's cells are held out in one fold, and the held-out
    cells are split at random in two halves that stand in for donors (within-donor only).
    """
    rng = np.random.default_rng(seed)
    if batch_key is not None and obs[batch_key].nunique() >= 2:
        batch = obs[batch_key].astype(str).to_numpy()
        sizes = pd.Series(batch).value_counts()
        order = rng.permutation(sizes.index.to_numpy())
        order = sorted(order, key=lambda b: -sizes[b])  # stable: the shuffle breaks ties
        n_folds = min(sizes.size, MAX_CALIBRATION_FOLDS)
        totals, members = np.zeros(n_folds), [[] for _ in range(n_folds)]
        for b in order:
            f = int(np.argmin(totals))
            members[f].append(b)
            totals[f] += sizes[b]
        return [np.isin(batch, m) for m in members], batch
    labels = obs[labels_key].astype(str).to_numpy()
    mask = np.zeros(labels.size, dtype=bool)
    for lab in np.unique(labels):
        idx = np.flatnonzero(labels == lab)
        mask[rng.choice(idx, max(2, int(round(holdout * idx.size))), replace=False)] = True
    donors = np.full(labels.size, "", dtype=object)
    half = rng.permutation(int(mask.sum())) % 2
    donors[mask] = np.where(half == 0, "half 1", "half 2")
    return [mask], donors.astype(str)
