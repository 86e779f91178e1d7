"""Quality control of a lot: per-cell metrics, low-quality flags, filtering."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import scanpy as sc
from anndata import AnnData
from scipy.stats import median_abs_deviation
from sklearn.mixture import GaussianMixture

from .._checks import InputError, MissingKeyError, check_lot
from .._keys import KEYS
from .._logging import logger, timed
from .._utils import iter_samples, uns_safe

# Gene-name patterns of the QC gene sets (sc-best-practices); haemoglobin excludes HBP1 / HBEGF.
_GENE_SETS = {
    "human": {"mt": r"^MT-", "ribo": r"^RP[SL]", "hb": r"^HB(?!EGF|P1)[A-Z0-9]*$"},
    "mouse": {"mt": r"^mt-", "ribo": r"^Rp[sl]", "hb": r"^Hb(?!egf|p1)[a-z0-9]*$"},
}
# Two modes of log genes per cell are "separated" when Ashman's D exceeds this (D > 2 is the
# usual bimodality criterion for a two-Gaussian mixture).
_ASHMAN_D_MIN = 2.0
# ... and a low mode of broken or empty barcodes has a fraction of the genes of real cells: the
# upper mode must hold at least twice as many. Tight clusters of one cell type (a resampled lot,
# a reduced gene panel) can pass Ashman's D while differing by a few percent in genes.
_MODE_RATIO_MIN = 2.0
# ... and the upper mode must hold at least this share of barcodes: a lot is its cells, so a
# small group with many more genes (cells of another protocol or depth, multiplets) is not the
# lot's real cells; mode-splitting would flag the whole lot (a validation mixture with 2% of
# full-length hESC lost 98% of its cells so). Such cells are left to the MAD criteria.
_UPPER_MODE_MIN = 0.1
_CRITERIA = ("low_mode", "counts", "genes", "top20", "mt")
# The human mitochondrial genome has 13 protein-coding genes; a percentage over fewer than this
# many (a reduced gene panel) measures one or two genes' noise, not the cell's state.
MIN_MT_GENES = 5


class QCWarning(UserWarning):
    """A QC step ran but something about the input deserves attention."""


def qc_metrics(
    adata: AnnData,
    *,
    species: str = "human",
    layer: str | None = None,
    batch_key: str | None = None,
) -> None:
    """Per-cell QC metrics, with scanpy's :func:`~scanpy.pp.calculate_qc_metrics` underneath.

    Metrics use gene-expression features only (antibody captures and other feature types are
    left out of the totals; a CAR transgene annotated as ``Gene Expression`` counts as a gene).

    Parameters
    ----------
    adata
        Lot with raw counts in ``.X`` or ``layer``.
    species
        ``"human"`` or ``"mouse"``: picks the mitochondrial / ribosomal / haemoglobin gene names.
    layer
        Layer holding raw counts; ``None`` uses ``.X``.
    batch_key
        Column of ``.obs`` naming the sample of each cell (checked here, used by later steps).

    Returns
    -------
    Nothing; adds to ``adata.obs`` the scanpy columns ``total_counts``, ``n_genes_by_counts``,
    ``pct_counts_mt``, ``pct_counts_ribo``, ``pct_counts_hb``, ``pct_counts_in_top_20_genes`` and
    their ``log1p_`` versions; to ``adata.var`` the bool columns ``mt``, ``ribo``, ``hb``; and to
    ``adata.uns["sct_qc_metrics"]`` the species, layer and size of each gene set.

    Examples
    --------
    >>> import sc_celltherapy as sct
    >>> adata = sct.datasets.toy_product(n_cells=300)
    >>> sct.pp.qc_metrics(adata)
    >>> float(adata.obs["pct_counts_mt"].median()) < 20
    True
    """
    if species not in _GENE_SETS:
        msg = f"species must be one of {sorted(_GENE_SETS)}, got {species!r}."
        raise InputError(msg)
    check_lot(adata, layer=layer, batch_key=batch_key)
    names = adata.var_names.to_series()
    n_sets = {}
    for name, pattern in _GENE_SETS[species].items():
        adata.var[name] = names.str.contains(pattern, regex=True).to_numpy()
        n_sets[name] = int(adata.var[name].sum())
    if n_sets["mt"] < MIN_MT_GENES:
        other = "mouse" if species == "human" else "human"
        msg = (
            f"{n_sets['mt']} mitochondrial genes found with species={species!r} (names matching "
            f"{_GENE_SETS[species]['mt']!r}), fewer than {MIN_MT_GENES}: pct_counts_mt is not "
            "meaningful and flag_low_quality will skip the mitochondrial criterion. If the genes "
            f"are {other}, pass species={other!r}; for a reduced gene panel this is expected."
        )
        warnings.warn(msg, QCWarning, stacklevel=2)

    gex = _gene_expression_mask(adata)
    view = adata if gex.all() else adata[:, gex]
    with timed("QC metrics"):
        obs_metrics, _ = sc.pp.calculate_qc_metrics(
            view, qc_vars=list(n_sets), percent_top=[20], layer=layer, log1p=True, inplace=False
        )
    keep = [c for c in obs_metrics.columns if not c.startswith("total_counts_")]
    for column in keep:
        adata.obs[column] = obs_metrics[column].to_numpy()
    adata.uns[KEYS.QC_METRICS] = uns_safe(
        {
            "species": species,
            "layer": layer,
            "batch_key": batch_key,
            "n_genes_in_set": n_sets,
            "n_gene_expression_features": int(gex.sum()),
        }
    )


def _gene_expression_mask(adata: AnnData) -> np.ndarray:
    if "feature_types" not in adata.var:
        return np.ones(adata.n_vars, dtype=bool)
    return (adata.var["feature_types"].astype(str) == "Gene Expression").to_numpy()


def flag_low_quality(
    adata: AnnData,
    *,
    nmads: float = 5,
    mt_nmads: float = 3,
    max_pct_mt: float | None = None,
    min_genes: int = 200,
    batch_key: str | None = None,
    key_added: str = KEYS.LOW_QUALITY,
) -> None:
    """Flag low-quality barcodes with per-sample MAD outliers plus absolute floors.

    The sc-best-practices recipe, per sample: a cell is an outlier when its log total counts, log
    genes detected or percent counts in its top 20 genes lie more than ``nmads`` median absolute
    deviations from the sample median, or its mitochondrial percentage more than ``mt_nmads``
    above it. A floor of ``min_genes`` genes and an optional ceiling ``max_pct_mt`` apply too.
    The MAD is normal-consistent (scaled by 1.4826, as R's ``mad()`` in scater's ``isOutlier``),
    so ``n`` MADs mean about ``n`` standard deviations; the unscaled MAD of the sc-best-practices
    notebook would flag about 2% of a healthy, normally distributed population at 3 MADs.

    Lots with many near-empty or broken barcodes have a bimodal genes-per-cell distribution; the
    plain recipe then centres its median between the modes and misses the lower one. So, per
    sample, a two-component Gaussian mixture is fitted to log genes per cell; when the components
    are separated (Ashman's D > 2) and the upper mode has at least twice the genes, the lower mode is flagged (criterion ``low_mode``) and the MAD
    statistics are computed on the upper mode only.

    Parameters
    ----------
    adata
        Lot; QC metrics are computed first (human genes, ``.X``) when absent.
    nmads
        MADs for counts, genes and top-20 percentage (both sides).
    mt_nmads
        MADs above the median for the mitochondrial percentage.
    max_pct_mt
        Absolute mitochondrial ceiling in percent (``None``: none).
    min_genes
        Absolute floor of genes detected.
    batch_key
        Column of ``.obs`` with the sample of each cell; thresholds are fitted per sample.
    key_added
        Name of the result columns.

    Returns
    -------
    Nothing; adds ``adata.obs[key_added]`` (bool, any criterion) and one bool column
    ``adata.obs[f"{key_added}_{criterion}"]`` per criterion (``low_mode``, ``counts``, ``genes``,
    ``top20``, ``mt``; the last is skipped, and says so in ``uns``, when fewer than 5
    mitochondrial genes are present); ``adata.uns[key_added]`` holds the parameters, the numeric thresholds per
    sample (in natural units), whether each sample was bimodal, and the cells each criterion
    flagged.

    Examples
    --------
    >>> import sc_celltherapy as sct
    >>> adata = sct.datasets.toy_product(n_cells=500)
    >>> sct.pp.flag_low_quality(adata)
    >>> int(adata.obs["sct_low_quality"].sum()) > 0
    True
    """
    refuse_after_filter(adata, key_added, "flag_low_quality")
    for value, name in ((nmads, "nmads"), (mt_nmads, "mt_nmads")):
        if not value > 0:
            msg = f"{name} must be positive, got {value}."
            raise InputError(msg)
    if "total_counts" not in adata.obs:
        qc_metrics(adata, batch_key=batch_key)
    else:
        check_lot(adata, batch_key=batch_key)

    n_mt = int(adata.var["mt"].sum()) if "mt" in adata.var else 0
    use_mt = n_mt >= MIN_MT_GENES
    obs = adata.obs
    flags = {c: np.zeros(adata.n_obs, dtype=bool) for c in _CRITERIA}
    thresholds, bimodal = {}, {}
    for sample, mask in iter_samples(adata, batch_key):
        sub = obs.loc[mask]
        upper_mode, split = _upper_mode(sub["log1p_n_genes_by_counts"].to_numpy())
        bimodal[sample] = split is not None
        ref = sub.loc[upper_mode]
        th = {
            "log1p_total_counts": _mad_bounds(ref["log1p_total_counts"], nmads),
            "log1p_n_genes_by_counts": _mad_bounds(ref["log1p_n_genes_by_counts"], nmads),
            "pct_counts_in_top_20_genes": _mad_bounds(ref["pct_counts_in_top_20_genes"], nmads),
        }
        mt_hi = _mad_bounds(ref["pct_counts_mt"], mt_nmads)[1] if use_mt else np.inf
        if max_pct_mt is not None and use_mt:
            mt_hi = min(mt_hi, max_pct_mt)
        idx = np.flatnonzero(mask)
        flags["low_mode"][idx] = ~upper_mode
        flags["counts"][idx] = _outside(sub["log1p_total_counts"], th["log1p_total_counts"])
        flags["genes"][idx] = _outside(
            sub["log1p_n_genes_by_counts"], th["log1p_n_genes_by_counts"]
        ) | (sub["n_genes_by_counts"].to_numpy() < min_genes)
        flags["top20"][idx] = _outside(
            sub["pct_counts_in_top_20_genes"], th["pct_counts_in_top_20_genes"]
        )
        flags["mt"][idx] = sub["pct_counts_mt"].to_numpy() > mt_hi
        thresholds[sample] = {
            "total_counts": np.expm1(th["log1p_total_counts"]).tolist(),
            "n_genes_by_counts": [
                max(float(np.expm1(th["log1p_n_genes_by_counts"][0])), float(min_genes)),
                float(np.expm1(th["log1p_n_genes_by_counts"][1])),
            ],
            "pct_counts_in_top_20_genes": list(th["pct_counts_in_top_20_genes"]),
            "pct_counts_mt": [0.0, float(mt_hi)] if use_mt else None,
            "low_mode_n_genes_below": None if split is None else float(np.expm1(split)),
            "n_cells": int(mask.sum()),
        }

    any_flag = np.zeros(adata.n_obs, dtype=bool)
    for criterion, flag in flags.items():
        obs[f"{key_added}_{criterion}"] = flag
        any_flag |= flag
    obs[key_added] = any_flag
    adata.uns[key_added] = uns_safe(
        {
            "params": {
                "nmads": nmads,
                "mt_nmads": mt_nmads,
                "max_pct_mt": max_pct_mt,
                "min_genes": min_genes,
                "batch_key": batch_key,
                "mad": "normal-consistent (1.4826 x raw MAD, as scater isOutlier)",
            },
            "thresholds": thresholds,
            "bimodal": bimodal,
            "mt_criterion": "applied" if use_mt else f"skipped: {n_mt} mitochondrial genes",
            "n_flagged": {c: int(f.sum()) for c, f in flags.items()} | {"any": int(any_flag.sum())},
        }
    )
    logger.info("flagged %d of %d cells as low quality", any_flag.sum(), adata.n_obs)


def _mad_bounds(values: pd.Series, nmads: float) -> list[float]:
    values = np.asarray(values, dtype=float)
    med = float(np.median(values))
    # Normal-consistent MAD (R's mad(), scater's isOutlier): n MADs ~ n standard deviations.
    mad = float(median_abs_deviation(values, scale="normal"))
    return [med - nmads * mad, med + nmads * mad]


def _outside(values: pd.Series, bounds: list[float]) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    return (values < bounds[0]) | (values > bounds[1])


def _upper_mode(log_genes: np.ndarray) -> tuple[np.ndarray, float | None]:
    """Cells in the upper mode of a bimodal genes-per-cell distribution, and the split point.

    Returns all cells and ``None`` when the distribution is not clearly bimodal.
    """
    everyone = np.ones(log_genes.size, dtype=bool)
    if log_genes.size < 50:
        return everyone, None
    gmm = GaussianMixture(n_components=2, random_state=0).fit(log_genes.reshape(-1, 1))
    means = gmm.means_.ravel()
    sds = np.sqrt(gmm.covariances_.ravel())
    lo, hi = np.argsort(means)
    ashman_d = np.sqrt(2) * abs(means[hi] - means[lo]) / np.sqrt(sds[lo] ** 2 + sds[hi] ** 2)
    ratio = np.exp(means[hi] - means[lo])
    if (
        ashman_d <= _ASHMAN_D_MIN
        or gmm.weights_[lo] < 0.01
        or gmm.weights_[hi] < _UPPER_MODE_MIN
        or ratio < _MODE_RATIO_MIN
    ):
        return everyone, None
    # Split where the upper component becomes the more probable one, between the two means.
    grid = np.linspace(means[lo], means[hi], 512).reshape(-1, 1)
    upper_prob = gmm.predict_proba(grid)[:, hi]
    split = float(grid[np.argmax(upper_prob >= 0.5), 0])
    return log_genes >= split, split


def refuse_after_filter(adata: AnnData, key: str, step: str) -> None:
    """A QC step whose calls a filter already applied cannot run again on the filtered lot:
    its thresholds (MADs, the doublet score's cut) would be refitted on the survivors and flag
    new cells, silently changing the counts the lot's record reports."""
    record = adata.uns.get(KEYS.QC)
    if record is not None and key in list(record.get("keys", [])):
        msg = (
            f"This lot was already filtered on {key!r} (uns['sct_qc']: {record['n_cells_before']} "
            f"cells before QC, {record['n_cells_after']} after). Running sct.pp.{step} again "
            "would refit it on the remaining cells and flag new ones. Run it on the lot before "
            "sct.pp.remove_flagged."
        )
        raise InputError(msg)


def remove_flagged(
    adata: AnnData,
    *,
    keys: tuple[str, ...] = (KEYS.LOW_QUALITY, KEYS.DOUBLET),
    copy: bool = False,
) -> AnnData | None:
    """Remove the cells flagged by QC.

    Parameters
    ----------
    adata
        Lot after :func:`flag_low_quality` and/or :func:`doublets`.
    keys
        Bool ``.obs`` columns whose ``True`` cells are removed; absent keys are skipped, but at
        least one must be present.
    copy
        Return a filtered copy instead of filtering in place.

    Returns
    -------
    The filtered AnnData when ``copy=True``, else ``None``. ``uns["sct_qc"]`` records cells
    before and after, the cells removed by each key and by each low-quality criterion, per sample.

    Examples
    --------
    >>> import sc_celltherapy as sct
    >>> adata = sct.datasets.toy_product(n_cells=500)
    >>> sct.pp.flag_low_quality(adata)
    >>> sct.pp.remove_flagged(adata)
    >>> adata.uns["sct_qc"]["n_cells_after"] == adata.n_obs
    True
    """
    present = [k for k in keys if k in adata.obs]
    if not present:
        msg = (
            f"None of the QC flags {list(keys)} is in adata.obs. Run "
            "sct.pp.flag_low_quality and/or sct.pp.doublets first."
        )
        raise MissingKeyError(msg)
    remove = np.zeros(adata.n_obs, dtype=bool)
    n_removed = {}
    for key in present:
        flag = adata.obs[key].to_numpy(dtype=bool)
        n_removed[key] = int(flag.sum())
        remove |= flag
        for column in adata.obs.columns:
            if column.startswith(f"{key}_") and adata.obs[column].dtype == bool:
                n_removed[column] = int(adata.obs[column].sum())
    if remove.all():
        msg = (
            f"QC would remove all {adata.n_obs} cells ({n_removed}); nothing would be left to "
            "assess. Check the input (is it an empty-droplet matrix?) or relax the QC thresholds."
        )
        raise InputError(msg)
    batch_key = adata.uns.get(KEYS.LOW_QUALITY, {}).get("params", {}).get("batch_key")
    per_sample = {
        sample: {"before": int(mask.sum()), "after": int((mask & ~remove).sum())}
        for sample, mask in iter_samples(adata, batch_key)
    }
    record = uns_safe(
        {
            "n_cells_before": adata.n_obs,
            "n_cells_after": int((~remove).sum()),
            "n_removed": n_removed | {"any": int(remove.sum())},
            "per_sample": per_sample,
            "keys": present,
        }
    )
    first = adata.uns.get(KEYS.QC)
    if first is not None:  # filtered before: the first record stays, this pass is history
        if not remove.any():
            logger.info("remove_flagged: no flagged cell left; the lot is unchanged")
            return adata.copy() if copy else None
        history = [
            *first.get("history", []),
            {k: record[k] for k in ("n_cells_before", "n_cells_after", "n_removed", "keys")},
        ]
        record = uns_safe({**first, "n_cells_after": record["n_cells_after"], "history": history})
    logger.info("kept %d of %d cells", record["n_cells_after"], record["n_cells_before"])
    if copy:
        adata = adata[~remove].copy()
        adata.uns[KEYS.QC] = record
        return adata
    adata._inplace_subset_obs(~remove)
    adata.uns[KEYS.QC] = record
    return None
