"""Building a reference bundle: scANVI models, calibration across donors, out-of-reference
evidence, all locked into a bundle (:mod:`._store`)."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData

from .._checks import InputError, check_counts, check_obs_key, get_matrix
from .._hvg import seurat_v3_hvg
from .._keys import KEYS
from .._logging import timed
from .._provenance import versions
from ..io import guess_species
from . import _model
from ._calibration import ALPHA, fit_across_donors
from ._folds import calibration_folds
from ._marker_evidence import cross_fitted_evidence, reorder_labels
from ._neighbourhood import LOT_K, fit_oor_with_neighbourhood
from ._novelty import (
    OOR_K,
    OOR_QUANTILE,
    expression_excess,
    gene_levels,
    lineage_genes,
    local_outlier_ratio,
    reference_spacing,
)
from ._store import BUNDLE_FORMAT, BundleError, ReferenceBundle, write_bundle

UNLABELED = "Unknown"
HELD_OUT_BATCH = "sct_held_out"  # the held-out cells' batch when the reference has only one
# Members of the seed ensemble: models trained alike from seeds seed, seed + 1, ... whose
# out-of-reference ratios and label probabilities are averaged. One model's ratio moves with its
# seed (CD8 gdT left out, patient P02: AUROC 0.846, 0.863, 0.827 for seeds 0-2); the mean of
# three beat the mean single seed on all four left-out cases of benchmarks/oor_space.py.
N_MEMBERS = 3
MAX_LATENT_CELLS = 50_000
MIN_CELLS_PER_LABEL = 5


def build(
    adata: AnnData,
    *,
    labels_key: str,
    name: str,
    version: str,
    out_dir: str | os.PathLike,
    batch_key: str | None = None,
    layer: str | None = None,
    n_hvg: int = 2000,
    n_latent: int = 10,
    n_layers: int = 1,
    n_hidden: int = 128,
    max_epochs: int | None = None,
    scanvi_max_epochs: int = 20,
    n_samples_per_label: int | None = 100,
    holdout_fraction: float = 0.2,
    species: str | None = None,
    n_members: int = N_MEMBERS,
    alpha: float = ALPHA,
    coarse_key: str | None = None,
    seed: int = 0,
) -> ReferenceBundle:
    """Train scVI then scANVI on a labelled reference and write a locked bundle.

    The bundle is a seed ensemble of ``n_members`` models trained alike (seeds ``seed``,
    ``seed + 1``, ...): mapping averages their label probabilities and out-of-reference scores.

    Calibration is fitted across donors. With two or more batches the batches are split into
    up to five folds; for each fold, calibration models are trained on the other folds and the
    fold's cells mapped onto them by scArches surgery, as a lot would be, so every reference
    cell is predicted by models that never saw its donor. On these out-of-fold predictions the
    bundle chooses its calibration (none, temperature, vector or distance-aware temperature
    scaling, or stacking with marker-detection evidence cross-fitted on the same folds, see
    :mod:`._marker_evidence`; by nested donor cross-validation), fits the conformal label sets (least
    ambiguous sets at ``alpha``), and fits the out-of-reference threshold (split-conformal
    99% quantile of the combined latent and expression evidence, see :mod:`._novelty`). Per donor it stores the
    ECE, the label sets' coverage and their size, each measured on a donor left out of both
    the models and the calibration. With a single batch, ``holdout_fraction`` of each label's
    cells is held out once, and the bundle records that its calibration is within-donor only.
    The models in the bundle are then trained on all cells. Building takes about
    ``n_members * (folds + 1)`` times one model's training.

    Parameters
    ----------
    adata
        Reference with raw counts in ``.X`` or ``layer`` and labels in ``obs[labels_key]``.
    labels_key
        Column of cell-type labels.
    name, version
        Identity of the bundle, recorded in ``bundle.json``.
    out_dir
        Directory to create; it must not exist (a bundle is never overwritten).
    batch_key
        Column of batches (donors, runs) for scVI; query lots become new batches at mapping.
        Batches are also the units of cross-donor calibration.
    layer
        Layer with raw counts; ``None`` uses ``.X``.
    n_hvg
        Genes kept (seurat_v3 highly variable genes) when the reference has more.
    n_latent, n_layers, n_hidden, max_epochs, scanvi_max_epochs
        Model settings (``max_epochs=None``: scvi-tools' heuristic for scVI).
    n_samples_per_label
        Labelled cells sampled per label in each scANVI epoch (``None``: all), so that a rare
        label weighs in the classifier as much as a common one.
    holdout_fraction
        With a single batch: the fraction of each label's cells held out for calibration.
    species
        ``"human"`` or ``"mouse"``; guessed from the genes when ``None``.
    n_members
        Models in the seed ensemble (1: a single scANVI model).
    coarse_key
        Column of coarse labels (e.g. CD4 T / CD8 T / gdT above fine T-cell states): each fine
        label must sit under one coarse label. Mapping then also reports each cell at the
        coarse level (its probability is the sum of its fine labels'), and specs and profiles
        may name coarse labels.
    alpha
        Miscoverage of the conformal label sets (0.1: a set holds the true label of at least
        90% of cells like the held-out ones).
    seed
        Seed of the split and of the first member's training.

    Returns
    -------
    The verified :class:`ReferenceBundle`.
    """
    out_dir = Path(out_dir)
    _check_build_args(adata, labels_key, batch_key, layer, out_dir, holdout_fraction, n_members)
    if not 0.01 <= alpha <= 0.5:
        msg = f"alpha must be in [0.01, 0.5], got {alpha}."
        raise InputError(msg)
    species = species or guess_species(adata)
    check_obs_key(adata, coarse_key, what="coarse_key")
    hierarchy = label_hierarchy(adata.obs, labels_key, coarse_key)
    ref = _reference_subset(
        adata, layer=layer, labels_key=labels_key, batch_key=batch_key, n_hvg=n_hvg
    )
    # the expression excess reads every gene the reference measured, not only the model's HVGs
    lineage = lineage_genes(adata.var_names)
    counts = get_matrix(adata, layer)[:, np.flatnonzero(lineage)]
    folds, donors = calibration_folds(ref.obs, labels_key, batch_key, holdout_fraction, seed)
    seeds = [seed + i for i in range(n_members)]
    train_kwargs = {
        "labels_key": labels_key,
        "batch_key": batch_key,
        "unlabeled": UNLABELED,
        "n_latent": n_latent,
        "n_layers": n_layers,
        "n_hidden": n_hidden,
        "max_epochs": max_epochs,
        "scanvi_max_epochs": scanvi_max_epochs,
        "n_samples_per_label": n_samples_per_label,
    }
    truth = ref.obs[labels_key].astype(str).to_numpy()
    all_labels = sorted(set(truth))
    oof_probs = np.zeros((ref.n_obs, len(all_labels)))
    oof = {"latent": np.full(ref.n_obs, np.nan), "expression": np.full(ref.n_obs, np.nan)}
    known = np.zeros(ref.n_obs, dtype=bool)  # a label absent from a fold's models is novel to it
    for f, held_mask in enumerate(folds):
        what = f"fold {f + 1}/{len(folds)}: {n_members} calibration model(s) on"
        with timed(f"{what} {int((~held_mask).sum())} cells, {int(held_mask.sum())} held out"):
            fit, held = ref[~held_mask].copy(), ref[held_mask].copy()
            probs, ratios, fold_labels = _held_out_fold(fit, held, train_kwargs, seeds, batch_key)
            cols = [all_labels.index(lab) for lab in fold_labels]
            oof_probs[np.ix_(held_mask, cols)] = probs
            oof["latent"][held_mask] = ratios
            levels = gene_levels(counts[~held_mask])
            oof["expression"][held_mask] = expression_excess(counts[held_mask], levels)
            known[held_mask] = np.isin(truth[held_mask], fold_labels)
    held_any = np.any(folds, axis=0)
    # marker-detection evidence, cross-fitted like the models (see _marker_evidence)
    y_all = np.array([all_labels.index(t) for t in truth])
    oof_markers, evidence = cross_fitted_evidence(ref, y_all, donors, folds, len(all_labels))

    with timed(f"training {n_members} scVI + scANVI model(s) on all {ref.n_obs} reference cells"):
        models = [_model.train_scanvi(ref, **train_kwargs, seed=s) for s in seeds]
        labels = _model_labels(models[0])
        keep = _subsample(ref.n_obs, MAX_LATENT_CELLS, seed)
        ref_latent = np.stack([_model.latent_of(m)[keep] for m in models])
        ref_labels = truth[keep]
        spacing = np.stack([reference_spacing(lat, k=OOR_K) for lat in ref_latent])
        markers = _label_markers(ref, labels_key)

    # calibration, label sets and the out-of-reference threshold, all on out-of-fold cells
    cells = held_any & known
    probs = oof_probs[:, [all_labels.index(lab) for lab in labels]][cells]
    probs /= probs.sum(axis=1, keepdims=True)
    y = np.array([labels.index(t) for t in truth[cells]])
    order = [all_labels.index(lab) for lab in labels]
    marker_ll = oof_markers[:, order][cells]
    calibration = fit_across_donors(
        probs,
        y,
        donors[cells],
        alpha=alpha,
        groups=[hierarchy.get(lab) for lab in labels],
        latent_ratio=oof["latent"][cells],
        marker_loglik=marker_ll,
    )
    calibration["marker_evidence"] = reorder_labels(evidence, order)
    n_batches = ref.obs[batch_key].nunique() if batch_key is not None else 1
    calibration["across_donors"] = n_batches >= 2
    calibration["folds"] = {
        "n_folds": len(folds),
        "unit": "batches" if n_batches >= 2 else "cells of each label (one batch)",
        "held_out": {str(d): int((donors == d).sum()) for d in np.unique(donors[held_any])},
        "mapped_by": "scArches surgery (as a new batch)" if batch_key else "reference model",
    }
    if n_batches < 2:
        calibration["note"] = (
            "One batch: calibration, label sets and the out-of-reference threshold were fitted "
            "and measured on held-out cells of the same donor(s) as the models; on new donors "
            "they may be optimistic."
        )
    oor = fit_oor_with_neighbourhood(oof, counts, donors, held_any, cells)
    oor |= {
        "method": (
            "larger of the latent local outlier ratio (mean over "
            f"{n_members} ensemble member(s)) and the expression excess, each over its "
            "held-out 99% quantile, and the median of that over the cell and its "
            f"{LOT_K - 1} nearest cells in the lot's own expression space"
        ),
        "k": OOR_K,
        "lot_k": LOT_K,
        "quantile": OOR_QUANTILE,
        "threshold_rule": "split-conformal order statistic of out-of-fold reference cells",
        "n_reference_cells": int(ref_latent.shape[1]),
        "n_held_out_cells": int(cells.sum()),
        "n_expression_genes": int(lineage.sum()),
        "metric": "euclidean",
    }

    manifest = {
        "format": BUNDLE_FORMAT,
        "name": name,
        "version": version,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "species": species,
        "labels_key": labels_key,
        "batch_key": batch_key,
        "batches": sorted(map(str, ref.obs[batch_key].unique())) if batch_key else [],
        "labels": {lab: int((ref.obs[labels_key] == lab).sum()) for lab in labels},
        "coarse_key": coarse_key,
        "hierarchy": hierarchy,
        "composition": donor_composition(
            truth, ref.obs[batch_key].astype(str).to_numpy() if batch_key else None, labels
        ),
        "genes": list(map(str, ref.var_names)),
        "gene_ids": list(map(str, ref.var["gene_ids"])) if "gene_ids" in ref.var else None,
        "label_markers": markers,
        "n_cells": {"total": int(ref.n_obs), "held_out": int(held_any.sum())},
        "model": {
            "class": "scvi.model.SCANVI",
            "n_latent": n_latent,
            "n_layers": n_layers,
            "n_hidden": n_hidden,
            "n_samples_per_label": n_samples_per_label,
            "architecture": dict(_model.ARCHES_PARAMS),
            "hvg": dict(ref.uns[KEYS.HVG]),
            "max_epochs": max_epochs,
            "scanvi_max_epochs": scanvi_max_epochs,
            "unlabeled_category": UNLABELED,
            "n_members": n_members,
            "member_seeds": seeds,
        },
        "calibration": calibration,
        "oor": oor,
        "seed": seed,
        "versions": versions(),
    }
    levels = {
        "genes": np.asarray(adata.var_names[lineage], dtype=str),
        "gene_ids": np.asarray(adata.var["gene_ids"][lineage], dtype=str)
        if "gene_ids" in adata.var
        else np.array([], dtype=str),
        "levels": gene_levels(counts).astype(np.float32),
    }
    held_out = {
        "probs": probs.astype(np.float32),
        "y": y,
        "donors": donors[cells].astype(str),
        **{f"oor_{c}": v[cells] for c, v in oof.items()},
        "marker_loglik": marker_ll.astype(np.float32),
    }
    return write_bundle(
        out_dir, models, ref_latent, ref_labels, spacing, levels, held_out, manifest
    )


def donor_composition(truth: np.ndarray, donors, labels: list[str]) -> dict:
    """Each reference donor's label fractions (in label order), and how far the most unusual
    donor lies from its nearest other donor (total variation): a lot further than that from
    every donor has a composition the bundle never saw."""
    if donors is None or len(set(donors)) < 2:
        fractions = {"all": [float(np.mean(truth == lab)) for lab in labels]}
        return {"fractions": fractions, "max_nearest_distance": None}
    fractions = {
        str(d): [float(np.mean(truth[donors == d] == lab)) for lab in labels]
        for d in np.unique(donors)
    }
    vectors = np.array(list(fractions.values()))
    dist = 0.5 * np.abs(vectors[:, None, :] - vectors[None, :, :]).sum(axis=2)
    np.fill_diagonal(dist, np.inf)
    return {"fractions": fractions, "max_nearest_distance": float(dist.min(axis=1).max())}


def label_hierarchy(obs: pd.DataFrame, labels_key: str, coarse_key: str | None) -> dict:
    """Fine label -> coarse label, from two columns; empty without ``coarse_key``."""
    if coarse_key is None:
        return {}
    fine = obs[labels_key].astype(str)
    # a fine label with no coarse label (a derived column's default) is its own coarse label
    coarse = obs[coarse_key].astype(object).where(obs[coarse_key].notna(), fine).astype(str)
    pairs = pd.DataFrame({labels_key: fine, coarse_key: coarse}).drop_duplicates()
    split = pairs[labels_key][pairs[labels_key].duplicated()].unique()
    if len(split):
        examples = {f: sorted(pairs[coarse_key][pairs[labels_key] == f]) for f in split[:3]}
        msg = (
            f"Fine labels under more than one coarse label in obs[{coarse_key!r}]: {examples}. "
            "Each fine label must belong to one coarse label; fix the columns."
        )
        raise InputError(msg)
    return dict(zip(pairs[labels_key], pairs[coarse_key], strict=True))


def _held_out_fold(fit: AnnData, held: AnnData, train_kwargs: dict, seeds: list, batch_key):
    """One calibration fold: each member trained on ``fit``, the held-out cells mapped onto it
    exactly as a lot would be (unlabelled; through scArches surgery as batches the model never
    saw, a batch of their own when the reference has one). Returns the members' mean label
    probabilities and local outlier ratios of the held-out cells, and the fold's labels."""
    labels_key = train_kwargs["labels_key"]
    # a label left with too few cells once its donors are out cannot be learnt by this fold's
    # models: its few cells leave the fold's training, and its held-out cells are novel to it
    counts = fit.obs[labels_key].value_counts()
    rare = counts.index[counts < MIN_CELLS_PER_LABEL]
    if len(rare):
        fit = fit[~fit.obs[labels_key].isin(rare).to_numpy()].copy()
    for col in (labels_key, batch_key):
        if col is not None:
            fit.obs[col] = fit.obs[col].cat.remove_unused_categories()
    held.obs[labels_key] = pd.Categorical([UNLABELED] * held.n_obs)
    if batch_key is not None and set(held.obs[batch_key]) & set(fit.obs[batch_key]):
        held.obs[batch_key] = pd.Categorical([HELD_OUT_BATCH] * held.n_obs)
    probs, ratios = [], []
    for s in seeds:
        labels, p, ratio = _held_out_member(fit, held, train_kwargs, s, len(seeds))
        probs.append(p)
        ratios.append(ratio)
    return np.mean(probs, axis=0), np.mean(ratios, axis=0), labels


def _held_out_member(fit: AnnData, held: AnnData, train_kwargs: dict, seed: int, n_members: int):
    """One ensemble member's calibration model: trained on ``fit``, the held-out cells mapped
    onto it. Returns its labels, the held-out cells' probabilities and local outlier ratios."""
    model = _model.train_scanvi(fit, **train_kwargs, seed=seed)
    query = held.copy()  # surgery prepares and registers its query in place
    held_model = model
    if train_kwargs["batch_key"] is not None:
        held_model = _model.map_query(
            query,
            model,
            train=True,
            max_epochs=_model.surgery_epochs(held.n_obs, n_members),
            batch_size=_model.surgery_batch_size(held.n_obs),
            seed=seed,
        )
    labels = _model_labels(model)
    fit_latent = _model.latent_of(model)
    ratio = local_outlier_ratio(
        fit_latent,
        _model.latent_of(held_model, query),
        reference_spacing(fit_latent, k=OOR_K),
        k=OOR_K,
    )
    return labels, _model.predict_probs(held_model, query, labels), ratio


def _check_build_args(
    adata, labels_key, batch_key, layer, out_dir, holdout_fraction, n_members
) -> None:
    if out_dir.exists():
        msg = f"Bundle directory {out_dir} exists; a bundle is never overwritten. Choose another."
        raise BundleError(msg)
    if not 0.05 <= holdout_fraction <= 0.5:
        msg = f"holdout_fraction must be in [0.05, 0.5], got {holdout_fraction}."
        raise InputError(msg)
    if not (isinstance(n_members, int) and 1 <= n_members <= 10):
        msg = f"n_members must be an integer from 1 to 10, got {n_members!r}."
        raise InputError(msg)
    check_counts(adata, layer=layer)
    check_obs_key(adata, labels_key, what="labels_key")
    check_obs_key(adata, batch_key, what="batch_key")
    labels = adata.obs[labels_key]
    if labels.isna().any():
        msg = f"{int(labels.isna().sum())} cells have no label in obs[{labels_key!r}]; drop them."
        raise InputError(msg)
    counts = labels.astype(str).value_counts()
    if counts.size < 2:
        msg = f"obs[{labels_key!r}] has {counts.size} label; a reference needs at least 2."
        raise InputError(msg)
    small = counts[counts < MIN_CELLS_PER_LABEL]
    if not small.empty:
        msg = (
            f"Labels with fewer than {MIN_CELLS_PER_LABEL} cells cannot be learnt or calibrated: "
            f"{small.to_dict()}."
            " Merge or drop them."
        )
        raise InputError(msg)


def _reference_subset(adata, *, layer, labels_key, batch_key, n_hvg) -> AnnData:

    obs_cols = [c for c in (labels_key, batch_key) if c is not None]
    var = adata.var[["gene_ids"]] if "gene_ids" in adata.var else None
    ref = AnnData(
        X=get_matrix(adata, layer).copy(),
        obs=adata.obs[obs_cols].copy(),
        var=var.copy() if var is not None else None,
    )
    ref.var_names = adata.var_names
    ref.obs[labels_key] = ref.obs[labels_key].astype(str).astype("category")
    if batch_key is not None:
        ref.obs[batch_key] = ref.obs[batch_key].astype(str).astype("category")
    if ref.n_vars <= n_hvg:
        ref.uns[KEYS.HVG] = {"flavor": None, "note": f"all {ref.n_vars} genes kept"}
        return ref
    ref.uns[KEYS.HVG] = seurat_v3_hvg(
        ref, n_top_genes=n_hvg, layer=None, batch_key=batch_key, subset=True
    )
    return ref


def _model_labels(model) -> list[str]:
    labels = model.adata_manager.get_state_registry("labels")["categorical_mapping"]
    return [str(lab) for lab in labels if lab != UNLABELED]


def _subsample(n: int, cap: int, seed: int) -> np.ndarray:
    if n <= cap:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, cap, replace=False))


def _label_markers(ref: AnnData, labels_key: str, n: int = 10) -> dict[str, list[str]]:
    """Top genes per label (Wilcoxon on log-normalised counts), to name missing genes later."""
    import scanpy as sc

    tmp = AnnData(X=ref.X.copy(), obs=ref.obs[[labels_key]].copy())
    tmp.var_names = ref.var_names
    sc.pp.normalize_total(tmp, target_sum=1e4)
    sc.pp.log1p(tmp)
    sc.tl.rank_genes_groups(tmp, labels_key, method="wilcoxon", n_genes=n)
    names = tmp.uns["rank_genes_groups"]["names"]
    return {lab: [str(g) for g in names[lab]] for lab in names.dtype.names}
