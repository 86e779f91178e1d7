"""Reference bundles: a trained scANVI model plus the manifest that locks it.

A bundle is a directory::

    bundle.json            name, version, genes, labels, versions, calibration, OOR statistics,
                           and the sha256 of every other file
    models/<i>/model.pt    the scvi-tools scANVI model of ensemble member i (scvi's own format)
    reference_latent.npz   each member's latent coordinates of the training cells, and their
                           labels (for the out-of-reference score)

``load`` verifies every hash and the scvi-tools version before anything is used.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData

from .._hvg import seurat_v3_hvg
from .._logging import logger, timed
from .._validate import InputError, check_counts, check_obs_key, get_matrix
from ..io import file_sha256, guess_species
from . import _model

# 2: per-label OOR thresholds; 3: local outlier ratio; 4: conformal threshold; 5: seed ensemble
BUNDLE_FORMAT = 5
MANIFEST = "bundle.json"
UNLABELED = "Unknown"
HELD_OUT_BATCH = "sct_held_out"  # the held-out cells' batch when the reference has only one
# The out-of-reference call's false-positive rate: a cell like the held-out reference cells is
# called "unassigned" with probability at most 1 - OOR_QUANTILE (split-conformal, oor_threshold).
OOR_QUANTILE = 0.99
# Neighbours of the local outlier ratio. Chosen on the leave-one-patient-out benchmark (CD8 gdT
# left out of the reference): k = 50 gave AUROC 0.86 where 5 and 15 gave 0.78 and 0.70.
OOR_K = 50
# Members of the seed ensemble: models trained alike from seeds seed, seed + 1, ... whose
# out-of-reference ratios and label probabilities are averaged. One model's ratio moves with its
# seed (CD8 gdT left out, patient P02: AUROC 0.846, 0.863, 0.827 for seeds 0-2); the mean of
# three beat the mean single seed on all four left-out cases of benchmarks/oor_space.py.
N_MEMBERS = 3
MAX_LATENT_CELLS = 50_000
MIN_CELLS_PER_LABEL = 5


class BundleError(InputError):
    """A reference bundle is missing, tampered with, or incompatible with this installation."""


@dataclass(frozen=True)
class ReferenceBundle:
    """A verified reference bundle on disk (see :func:`load`)."""

    path: Path
    manifest: dict = field(repr=False)

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def version(self) -> str:
        return self.manifest["version"]

    @property
    def genes(self) -> list[str]:
        return self.manifest["genes"]

    @property
    def labels(self) -> list[str]:
        return list(self.manifest["labels"])

    @property
    def sha256(self) -> str:
        """One hash for the whole bundle (of bundle.json, which pins every other file)."""
        return file_sha256(self.path / MANIFEST)

    @property
    def member_dirs(self) -> list[Path]:
        """Model directory of each ensemble member (seeds ``seed``, ``seed + 1``, ...)."""
        return [self.path / "models" / str(i) for i in range(self.manifest["model"]["n_members"])]

    @property
    def model_dir(self) -> Path:
        """The first member's model: one plain scANVI model trained on the reference."""
        return self.member_dirs[0]

    def reference_latent(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The reference cells' latent coordinates in each member's space ``(members, cells,
        n_latent)``, their labels, and each cell's mean distance to its ``k`` nearest other
        reference cells in each member's space ``(members, cells)``; one read of the file."""
        with np.load(self.path / "reference_latent.npz", allow_pickle=False) as npz:
            return npz["latent"], npz["labels"], npz["spacing"]

    def __repr__(self) -> str:
        return (
            f"ReferenceBundle({self.name!r} v{self.version}, {len(self.labels)} labels, "
            f"{len(self.genes)} genes, {self.path})"
        )


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
    max_epochs: int | None = None,
    scanvi_max_epochs: int = 20,
    holdout_fraction: float = 0.2,
    species: str | None = None,
    n_members: int = N_MEMBERS,
    seed: int = 0,
) -> ReferenceBundle:
    """Train scVI then scANVI on a labelled reference and write a locked bundle.

    The bundle is a seed ensemble of ``n_members`` models trained alike (seeds ``seed``,
    ``seed + 1``, ...): mapping averages their label probabilities and out-of-reference ratios,
    which moves less with the seed than one model's. Each member is trained twice. A calibration
    model leaves out about ``holdout_fraction`` of the cells: whole batches when there are two
    or more (they are then mapped onto it by scArches surgery, as a lot would be), else that
    fraction of each label. On the held-out cells the bundle fits temperature scaling of the
    members' mean label probabilities (measuring the expected calibration error before and after
    by two-fold cross-fitting) and the members' mean local outlier ratio in the latent space
    (mean distance to the 50 nearest training cells over those cells' own spacing), whose
    split-conformal 99% quantile becomes the out-of-reference threshold (a cell exchangeable
    with the held-out ones is called unassigned with probability at most 1%). The models in the
    bundle are then trained on all cells, and the temperature and threshold carried over to
    them. Building and mapping take about ``n_members`` times one model's time.

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
    layer
        Layer with raw counts; ``None`` uses ``.X``.
    n_hvg
        Genes kept (seurat_v3 highly variable genes) when the reference has more.
    n_latent, n_layers, max_epochs, scanvi_max_epochs
        Model settings (``max_epochs=None``: scvi-tools' heuristic for scVI).
    holdout_fraction
        Fraction of cells held out of the calibration model.
    species
        ``"human"`` or ``"mouse"``; guessed from the genes when ``None``.
    n_members
        Models in the seed ensemble (1: a single scANVI model).
    seed
        Seed of the split and of the first member's training.

    Returns
    -------
    The verified :class:`ReferenceBundle`.
    """
    out_dir = Path(out_dir)
    _check_build_args(adata, labels_key, batch_key, layer, out_dir, holdout_fraction, n_members)
    species = species or guess_species(adata)
    ref = _reference_subset(
        adata, layer=layer, labels_key=labels_key, batch_key=batch_key, n_hvg=n_hvg
    )
    held_mask, held_batches = _calibration_split(
        ref.obs, labels_key, batch_key, holdout_fraction, seed
    )
    fit, held = ref[~held_mask].copy(), ref[held_mask].copy()
    seeds = [seed + i for i in range(n_members)]
    train_kwargs = {
        "labels_key": labels_key,
        "batch_key": batch_key,
        "unlabeled": UNLABELED,
        "n_latent": n_latent,
        "n_layers": n_layers,
        "max_epochs": max_epochs,
        "scanvi_max_epochs": scanvi_max_epochs,
    }
    with timed(f"{n_members} calibration model(s) on {fit.n_obs} cells, {held.n_obs} held out"):
        for col in (labels_key, batch_key):
            if col is not None:
                fit.obs[col] = fit.obs[col].cat.remove_unused_categories()
        truth = held.obs[labels_key].astype(str).to_numpy()
        # held-out cells are mapped exactly as a lot would be: unlabelled, and through scArches
        # surgery as a batch the model never saw (with one reference batch, a batch of their
        # own), so that calibration and the out-of-reference threshold see the shift lots get
        held.obs[labels_key] = pd.Categorical([UNLABELED] * held.n_obs)
        if batch_key is not None and not held_batches:
            held.obs[batch_key] = pd.Categorical([HELD_OUT_BATCH] * held.n_obs)
        probs, ratios = [], []
        for member_seed in seeds:
            cal_labels, p, ratio = _held_out_member(fit, held, train_kwargs, member_seed, n_members)
            probs.append(p)
            ratios.append(ratio)
        calibration = fit_calibration(np.mean(probs, axis=0), truth, cal_labels, seed=seed)
        held_out = (
            {"batches": held_batches} if held_batches else {"cells_per_label": holdout_fraction}
        )
        mapped_by = (
            "scArches surgery (as a new batch)" if batch_key is not None else "reference model"
        )
        calibration["held_out"] = {**held_out, "mapped_by": mapped_by}
        known = np.isin(truth, cal_labels)  # a label only in held-out batches is novel to it
        threshold, fpr_bound = oor_threshold(np.mean(ratios, axis=0)[known], OOR_QUANTILE)

    with timed(f"training {n_members} scVI + scANVI model(s) on all {ref.n_obs} reference cells"):
        models = [_model.train_scanvi(ref, **train_kwargs, seed=s) for s in seeds]
        labels = _model_labels(models[0])
        keep = _subsample(ref.n_obs, MAX_LATENT_CELLS, seed)
        ref_latent = np.stack([m.get_latent_representation()[keep] for m in models])
        ref_labels = ref.obs[labels_key].astype(str).to_numpy()[keep]
        spacing = np.stack([reference_spacing(lat, k=OOR_K) for lat in ref_latent])
        # a ratio of distances carries over from the calibration models' latent spaces to the
        # final models': the threshold fitted on held-out cells applies unchanged
        oor = {
            "method": f"local outlier ratio, mean over {n_members} ensemble member(s)",
            "k": OOR_K,
            "quantile": OOR_QUANTILE,
            "threshold": threshold,
            "threshold_rule": "split-conformal order statistic of held-out cells' ratios",
            "fpr_bound": fpr_bound,
            "n_reference_cells": int(ref_latent.shape[1]),
            "n_held_out_cells": int(known.sum()),
            "metric": "euclidean",
        }
        markers = _label_markers(ref, labels_key)

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
        "genes": list(map(str, ref.var_names)),
        "gene_ids": list(map(str, ref.var["gene_ids"])) if "gene_ids" in ref.var else None,
        "label_markers": markers,
        "n_cells": {
            "total": int(ref.n_obs),
            "calibration_fit": int(fit.n_obs),
            "held_out": int(held.n_obs),
        },
        "model": {
            "class": "scvi.model.SCANVI",
            "n_latent": n_latent,
            "n_layers": n_layers,
            "architecture": dict(_model.ARCHES_PARAMS),
            "hvg": dict(ref.uns["sct_hvg"]),
            "max_epochs": max_epochs,
            "scanvi_max_epochs": scanvi_max_epochs,
            "unlabeled_category": UNLABELED,
            "n_members": n_members,
            "member_seeds": seeds,
        },
        "calibration": calibration,
        "oor": oor,
        "seed": seed,
        "versions": _versions(),
    }
    return _write_bundle(out_dir, models, ref_latent, ref_labels, spacing, manifest)


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
    fit_latent = model.get_latent_representation()
    ratio = local_outlier_ratio(
        fit_latent,
        held_model.get_latent_representation(query),
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
        ref.uns["sct_hvg"] = {"flavor": None, "note": f"all {ref.n_vars} genes kept"}
        return ref
    ref.uns["sct_hvg"] = seurat_v3_hvg(
        ref, n_top_genes=n_hvg, layer=None, batch_key=batch_key, subset=True
    )
    return ref


def _calibration_split(
    obs: pd.DataFrame, labels_key: str, batch_key: str | None, holdout: float, seed: int
) -> tuple[np.ndarray, list[str]]:
    """Cells held out of the calibration model, and the batches they are (if any).

    With two or more batches, whole batches are held out (about ``holdout`` of the cells): a
    lot is always a batch the reference never saw, so calibration and the out-of-reference
    threshold must be fitted across that shift, not on cells of batches the model trained on.
    With one batch, ``holdout`` of each label's cells is held out.
    """
    rng = np.random.default_rng(seed)
    if batch_key is not None and obs[batch_key].nunique() >= 2:
        sizes = obs[batch_key].astype(str).value_counts().sort_index()
        target = holdout * sizes.sum()
        held: list[str] = []
        for b in rng.permutation(sizes.index.to_numpy()):
            if sizes[held].sum() + sizes[b] <= 1.5 * target and len(held) < sizes.size - 1:
                held.append(str(b))
        if not held:  # every batch is large: hold out the smallest
            held = [str(sizes.idxmin())]
        return obs[batch_key].astype(str).isin(held).to_numpy(), sorted(held)
    labels = obs[labels_key].astype(str).to_numpy()
    mask = np.zeros(labels.size, dtype=bool)
    for lab in np.unique(labels):
        idx = np.flatnonzero(labels == lab)
        mask[rng.choice(idx, max(2, int(round(holdout * idx.size))), replace=False)] = True
    return mask, []


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


def reference_spacing(reference: np.ndarray, *, k: int) -> np.ndarray:
    """Each reference point's mean distance to its ``k`` nearest other reference points."""
    from sklearn.neighbors import NearestNeighbors

    n = min(k + 1, reference.shape[0])
    dist, _ = NearestNeighbors(n_neighbors=n).fit(reference).kneighbors(reference)
    return dist[:, 1:].mean(axis=1)


def local_outlier_ratio(
    reference: np.ndarray, query: np.ndarray, spacing: np.ndarray, *, k: int
) -> np.ndarray:
    """Out-of-reference score (the idea of Breunig et al. 2000's local outlier factor): a query
    point's mean distance to its ``k`` nearest reference points over the mean ``spacing`` of
    those neighbours. About 1 inside the reference wherever it is dense or sparse; large for a
    point that sits apart from its nearest reference cells."""
    from sklearn.neighbors import NearestNeighbors

    nn = NearestNeighbors(n_neighbors=min(k, reference.shape[0])).fit(reference)
    dist, idx = nn.kneighbors(query)
    return dist.mean(axis=1) / np.maximum(spacing[idx].mean(axis=1), 1e-12)


def oor_threshold(held_out: np.ndarray, quantile: float) -> tuple[float, float]:
    """Split-conformal threshold: the ``ceil((n + 1) * quantile)``-th smallest of ``n`` held-out
    scores. A new cell exchangeable with the held-out ones exceeds it with probability at most
    ``1 - quantile`` whatever the scores' distribution; a plain empirical quantile of ~150 cells
    (the demo) sits anywhere from the 97th to the 99.7th percentile. With too few held-out cells
    for that level the largest score is used, and the bound returned, ``(n + 1 - k) / (n + 1)``,
    says what is guaranteed instead."""
    scores = np.sort(np.asarray(held_out, dtype=float))
    n = scores.size
    if n == 0:
        msg = "No held-out reference cell to fit the out-of-reference threshold on."
        raise InputError(msg)
    k = min(int(np.ceil((n + 1) * quantile)), n)
    return float(scores[k - 1]), float((n + 1 - k) / (n + 1))


def fit_calibration(probs: np.ndarray, truth: np.ndarray, labels: list[str], *, seed: int) -> dict:
    """Temperature scaling of label probabilities, with its ECE measured by two-fold cross-fitting.

    The temperature stored is fitted on all held-out cells; the ECE reported for it comes from
    fitting on one half and measuring on the other (both ways), so it is not optimistic.
    """
    y = np.array([labels.index(t) if t in labels else -1 for t in truth])
    ok = y >= 0
    probs, y = probs[ok], y[ok]
    rng = np.random.default_rng(seed)
    fold = rng.permutation(y.size) % 2
    calibrated = np.empty_like(probs)
    for f in (0, 1):
        t = _fit_temperature(probs[fold != f], y[fold != f])
        calibrated[fold == f] = apply_temperature(probs[fold == f], t)
    temperature = _fit_temperature(probs, y)
    return {
        "method": "temperature scaling",
        "temperature": temperature,
        "ece_uncalibrated": expected_calibration_error(probs, y),
        "ece_calibrated": expected_calibration_error(calibrated, y),
        "ece_measured_by": "two-fold cross-fitting on held-out reference cells",
        "n_held_out": int(y.size),
    }


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    logits = np.log(np.clip(probs, 1e-12, 1)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    out = np.exp(logits)
    return out / out.sum(axis=1, keepdims=True)


def _fit_temperature(probs: np.ndarray, y: np.ndarray) -> float:
    from scipy.optimize import minimize_scalar

    def nll(log_t: float) -> float:
        p = apply_temperature(probs, float(np.exp(log_t)))
        return -float(np.mean(np.log(np.clip(p[np.arange(y.size), y], 1e-12, 1))))

    res = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20)), method="bounded")
    return float(np.exp(res.x))


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, n_bins: int = 15) -> float:
    """Top-label ECE of a probability matrix against integer labels ``y``."""
    return calibration_error(probs.max(axis=1), probs.argmax(axis=1) == y, n_bins=n_bins)


def calibration_error(conf: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> float:
    """ECE: |confidence - accuracy| in equal-width confidence bins, weighted by bin size."""
    edges = np.linspace(0, 1, n_bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        sel = (conf > lo) & (conf <= hi)
        if sel.any():
            ece += sel.mean() * abs(conf[sel].mean() - correct[sel].mean())
    return float(ece)


def _versions() -> dict[str, str]:
    return {p: version(p) for p in ("sc-celltherapy", "scvi-tools", "torch", "anndata", "scanpy")}


def _write_bundle(
    out_dir: Path, models, latent, labels, spacing, manifest: dict
) -> ReferenceBundle:
    """Write into a temporary sibling, hash every file, then rename into place (atomic)."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        for i, model in enumerate(models):
            model.save(str(tmp / "models" / str(i)), save_anndata=False)
        np.savez(
            tmp / "reference_latent.npz",
            latent=latent.astype(np.float32),
            labels=labels.astype(str),
            spacing=spacing.astype(np.float32),
        )
        manifest["files"] = {
            p.relative_to(tmp).as_posix(): file_sha256(p)
            for p in sorted(tmp.rglob("*"))
            if p.is_file()
        }
        manifest["manifest_sha256"] = manifest_digest(manifest)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("wrote reference bundle %s", out_dir)
    return verify(out_dir)


def verify(path: str | os.PathLike) -> ReferenceBundle:
    """Check a bundle's files against its hashes and its versions against this installation.

    Raises :class:`BundleError` naming the changed, missing or extra file, or the versions.
    """
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        msg = f"{path} is not a reference bundle: {MANIFEST} is missing."
        raise BundleError(msg)
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except (json.JSONDecodeError, KeyError) as err:
        msg = f"{manifest_path} is corrupt ({err}); rebuild or re-copy the bundle."
        raise BundleError(msg) from err
    if manifest.get("manifest_sha256") != manifest_digest(manifest):
        msg = (
            f"Bundle {path}: {MANIFEST} has been edited (its content no longer matches its "
            "recorded digest). Re-copy or rebuild the bundle."
        )
        raise BundleError(msg)
    present = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()}
    present.discard(MANIFEST)
    missing = sorted(set(files) - present)
    extra = sorted(present - set(files))
    if missing:
        msg = f"Bundle {path} is incomplete: missing file(s) {missing}. Re-copy the bundle."
        raise BundleError(msg)
    if extra:
        msg = (
            f"Bundle {path} has file(s) not in its manifest: {extra}. A locked bundle must not "
            "change; remove them or re-copy the bundle."
        )
        raise BundleError(msg)
    for rel, expected in files.items():
        found = file_sha256(path / rel)
        if found != expected:
            msg = (
                f"Bundle {path}: file {rel!r} has changed (sha256 {found[:12]}..., expected "
                f"{expected[:12]}...). The bundle was modified; re-copy or rebuild it."
            )
            raise BundleError(msg)
    _check_versions(path, manifest)
    return ReferenceBundle(path=path, manifest=manifest)


def manifest_digest(manifest: dict) -> str:
    """sha256 of the manifest's canonical JSON, without its own digest field."""
    import hashlib

    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _check_versions(path: Path, manifest: dict) -> None:
    if manifest.get("format") != BUNDLE_FORMAT:
        msg = (
            f"Bundle {path} has format {manifest.get('format')}; this version reads "
            f"{BUNDLE_FORMAT}. Rebuild it with sct.atlas.build (or sc-celltherapy atlas build)."
        )
        raise BundleError(msg)
    built = manifest.get("versions", {}).get("scvi-tools", "0")
    installed = version("scvi-tools")
    if _major_minor(built)[0] != _major_minor(installed)[0] or _major_minor(built) > _major_minor(
        installed
    ):
        msg = (
            f"Bundle {path} was built with scvi-tools {built}; installed is {installed}, which "
            f"cannot load it safely. Install scvi-tools=={built} or rebuild the bundle."
        )
        raise BundleError(msg)


def _major_minor(v: str) -> tuple[int, int]:
    parts = [int("".join(ch for ch in p if ch.isdigit()) or 0) for p in v.split(".")[:2]]
    return (parts + [0, 0])[0], (parts + [0, 0])[1]
