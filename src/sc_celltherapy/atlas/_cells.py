"""Which cells and label columns an atlas keeps: the manifest's cell filters, derived label
columns and obs columns, applied to an atlas's cell table before its matrix is read."""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np
import pandas as pd

from .._checks import MissingKeyError
from .._logging import logger


def obs_column(obs: pd.DataFrame, column: str, what: str) -> pd.Series:
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
        values = obs_column(obs, sel["column"], "build.subset").astype(str)
        inside = values.isin([str(v) for v in sel["values"]]).to_numpy()
        keep &= inside if sel["op"] == "in" else ~inside
        logger.info(
            "subset %s %s %s: %d cells left", sel["column"], sel["op"], sel["values"], keep.sum()
        )
    for derived in build.get("derive_labels", []):
        source = obs_column(obs, derived["from_column"], "build.derive_labels")
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
    labels = obs_column(obs, fine, "label_keys.fine")
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
