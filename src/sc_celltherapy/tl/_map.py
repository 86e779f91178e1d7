"""Mapping a lot onto a reference bundle: scArches surgery, calibrated labels, out-of-reference."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .._checks import InputError, check_lot, get_matrix
from .._keys import KEYS
from .._logging import logger
from .._utils import uns_safe
from ..io import guess_species


class MappingWarning(UserWarning):
    """Mapping ran, but on a gene overlap low enough to weaken the result."""


def map_to_reference(
    adata: AnnData,
    reference,
    *,
    batch_key: str | None = None,
    layer: str | None = None,
    max_epochs: int | None = None,
    min_gene_overlap: float = 0.5,
    warn_gene_overlap: float = 0.8,
    seed: int = 0,
    key_added: str = KEYS.REF,
) -> None:
    """Map a lot onto a reference bundle (scANVI with scArches surgery).

    Genes are gated first: the fraction of the reference's genes found in the lot (by symbol,
    or by Ensembl id through ``.var["gene_ids"]``) is computed and stored; below
    ``min_gene_overlap`` mapping is refused, below ``warn_gene_overlap`` a warning lists the
    reference's marker genes that are missing. A lot whose genes look like another species than
    the reference's is refused. The lot is then loaded onto the reference model
    (``SCANVI.prepare_query_anndata`` + ``load_query_data``); only when it brings batches the
    reference has not seen are the batch-specific weights trained (``max_epochs``).

    Parameters
    ----------
    adata
        Lot with raw counts in ``.X`` or ``layer``.
    reference
        A :class:`~sc_celltherapy.atlas.ReferenceBundle`, a bundle path or name (``"pbmc_demo"``).
    batch_key
        Column of ``.obs`` with the lot's batches (channels); ``None`` treats the lot as one.
    layer
        Layer with raw counts; ``None`` uses ``.X``.
    max_epochs
        Surgery epochs of each ensemble member when new batches are trained (``None``: 5-50 by
        lot size, about 100k cell passes over all members).
    min_gene_overlap, warn_gene_overlap
        Gene-overlap limits (fractions of the reference's genes).
    seed
        Seed of surgery training (member i uses ``seed + i``; mapping is deterministic on CPU
        for a fixed seed).
    key_added
        Prefix of the result keys.

    Returns
    -------
    Nothing; adds ``adata.obsm[f"X_{key_added}"]`` (latent of the bundle's first ensemble member),
    ``adata.obs[f"{key_added}_label"]``, ``adata.obs[f"{key_added}_prob"]`` (calibrated
    probability of that label; probabilities and scores average the bundle's members),
    ``adata.obsm[f"{key_added}_probs"]`` (all labels, calibrated; columns in the order of
    ``adata.uns[key_added]["labels"]``: an array, as labels such as "CD4+/CD25 T Reg" cannot be
    h5ad column names),
    ``adata.obsm[f"{key_added}_set"]`` (bool, cells x labels in the same column order: the
    conformal label set of each cell, which holds its true label with probability about
    ``1 - alpha`` on donors like the bundle's held-out ones; ``obs[f"{key_added}_set_size"]``),
    ``adata.obs[f"{key_added}_oor_score"]`` (out-of-reference score: the larger of the latent
    local outlier ratio, ``obs[f"{key_added}_oor_latent"]``, and the expression excess,
    ``obs[f"{key_added}_oor_expression"]``, the share of the cell's counts above anything the
    reference's cells have, counted only where the cell's load of the genes the reference lacks
    is beyond what the lot's ambient RNA could give, ``obs[f"{key_added}_oor_ambient_load"]``
    >= 1; each over its 99% quantile on held-out reference cells; and the median of that
    cell-level score over the cell and its 14 nearest cells in the lot's own expression space,
    ``obs[f"{key_added}_oor_neighbourhood"]``, so that a cell whose neighbourhood is mostly out
    of reference is too; at most about 1 inside the reference, higher is further from it),
    ``adata.obs[f"{key_added}_unassigned"]`` (bool: score above the bundle's threshold,
    ``adata.uns[key_added]["oor_threshold"]``, the split-conformal 99% quantile of held-out
    reference cells) and ``adata.uns[key_added]`` (bundle name, version, hash, gene overlap,
    calibration and label-set reliability per donor, settings, seed, whether surgery trained).
    """
    from ..atlas import (
        AMBIENT_LOAD_LIMIT,
        UNLABELED,
        calibrate,
        combine_oor,
        load,
        lot_marker_loglik,
        lot_neighbours,
        neighbourhood_median,
        prediction_sets,
        query_bundle,
        reads_markers,
    )

    check_lot(adata, layer=layer, batch_key=batch_key)
    bundle = load(reference)
    manifest = bundle.manifest
    ref_genes = pd.Index(bundle.genes)
    query_cols, overlap, missing = check_genes(
        adata, bundle, min_gene_overlap=min_gene_overlap, warn_gene_overlap=warn_gene_overlap
    )

    query = _query_anndata(adata, layer, query_cols, ref_genes, manifest, batch_key, UNLABELED)
    new_batches = _new_batches(query, manifest)
    labels = list(manifest["labels"])
    oor = manifest["oor"]
    mapped = query_bundle(bundle, query, train=bool(new_batches), max_epochs=max_epochs, seed=seed)
    calibration = manifest["calibration"]
    # only the stackings read the lot's marker detection
    marker_ll = (
        lot_marker_loglik(calibration["marker_evidence"], query.X, query_cols >= 0)
        if reads_markers(calibration)
        else None
    )
    probs = calibrate(
        mapped.probs, calibration, latent_ratio=mapped.latent_ratio, marker_loglik=marker_ll
    )
    sets = prediction_sets(probs, calibration["conformal"])
    best = probs.argmax(axis=1)
    excess, load, counts = _expression_excess(adata, layer, bundle)
    beyond_ambient = load >= AMBIENT_LOAD_LIMIT
    components = {"latent": mapped.latent_ratio, "expression": np.where(beyond_ambient, excess, 0)}
    cell_score = combine_oor(components, oor["scales"])
    neighbours = lot_neighbours(counts, k=oor["lot_k"], seed=seed)
    components["neighbourhood"] = neighbourhood_median(cell_score, neighbours)
    score = combine_oor(components, oor["scales"])
    latent = mapped.latent

    # each component in units of its held-out 99% quantile: about 1 or below inside the
    # reference for every bundle; the threshold stays a decision, recorded in uns
    unassigned = score > oor["threshold"]
    adata.obsm[f"X_{key_added}"] = latent.astype(np.float32)
    adata.obs[f"{key_added}_label"] = pd.Categorical(np.asarray(labels)[best], categories=labels)
    adata.obs[f"{key_added}_prob"] = probs[np.arange(adata.n_obs), best]
    adata.obsm[f"{key_added}_probs"] = probs
    adata.obsm[f"{key_added}_set"] = sets
    adata.obs[f"{key_added}_set_size"] = sets.sum(axis=1)
    hierarchy = manifest.get("hierarchy") or {}
    _coarse_level(adata, probs, sets, labels, calibration, hierarchy, key_added)
    adata.obs[f"{key_added}_oor_score"] = score
    adata.obs[f"{key_added}_oor_latent"] = components["latent"]
    adata.obs[f"{key_added}_oor_expression"] = components["expression"]
    adata.obs[f"{key_added}_oor_neighbourhood"] = components["neighbourhood"]
    adata.obs[f"{key_added}_oor_ambient_load"] = load
    adata.obs[f"{key_added}_unassigned"] = unassigned
    adata.uns[key_added] = uns_safe(
        {
            "bundle": bundle.name,
            "version": bundle.version,
            "sha256": bundle.sha256,
            "path": str(bundle.path),
            "gene_overlap": overlap,
            "n_reference_genes": int(ref_genes.size),
            "n_missing_genes": len(missing),
            "labels": labels,
            # each label's coarse label, in label order (h5ad keys cannot hold "/")
            "coarse_labels": [hierarchy[lab] for lab in labels] if hierarchy else [],
            # columns of obsm[f"{key_added}_set_coarse"]
            "coarse_set_labels": sorted(set(hierarchy.values())),
            "calibration": {
                "method": calibration["method"],
                "across_donors": calibration["across_donors"],
                "ece_worst_donor": calibration["ece_worst_donor"],
                "ece_mean_donor": calibration["ece_mean_donor"],
                "worst_donor": calibration["worst_donor"],
                # the bundle's reliability diagram per held-out donor (sct.pl.reliability)
                "per_donor": {
                    d: {
                        k: r[k]
                        for k in ("n_cells", "ece", "ece_chance_95", "reliability")
                        if k in r
                    }
                    for d, r in calibration["per_donor"].items()
                },
                "marker_evidence": _marker_record(calibration, query_cols),
            },
            "label_sets": {
                "method": calibration["conformal"]["method"],
                "alpha": calibration["conformal"]["alpha"],
                "coverage_worst_donor": calibration["conformal"]["coverage_worst_donor"],
                "coverage_per_donor": {
                    d: r["coverage"] for d, r in calibration["per_donor"].items()
                },
            },
            "oor_method": oor["method"],
            "oor_scales": oor["scales"],
            "n_members": len(bundle.member_dirs),
            "oor_threshold": oor["threshold"],
            "oor_quantile": oor["quantile"],
            "oor_fpr_bound": oor["fpr_bound"],
            # expression evidence only beyond what the lot's ambient RNA could give a cell
            "oor_ambient_bound": {
                "rule": "the expression excess counts only for cells whose share of the genes "
                "the reference does not express reaches the lot's pooled share "
                f"(obs['{key_added}_oor_ambient_load'] >= {AMBIENT_LOAD_LIMIT:g})",
                "n_cells_within_ambient": int((~beyond_ambient).sum()),
                "n_excess_withdrawn": int(((excess > 0) & ~beyond_ambient).sum()),
            },
            "surgery_trained": bool(new_batches),
            "new_batches": new_batches,
            "max_epochs": mapped.epochs,
            "batch_size": mapped.batch_size,
            "batch_key": batch_key,
            "seed": seed,
            "accelerator": mapped.accelerator,
            "n_unassigned": int(unassigned.sum()),
            "composition": _composition_check(probs, manifest.get("composition")),
        }
    )
    composition = adata.uns[key_added]["composition"]
    if composition.get("far"):
        msg = (
            f"The lot's label composition lies {composition['distance']:.2f} (total variation) "
            f"from the nearest donor of {bundle.name!r}, further than any of its donors lie from "
            f"each other ({composition['reference_max_nearest_distance']:.2f}): calibration and "
            "label sets were never measured on such a mixture."
        )
        warnings.warn(msg, MappingWarning, stacklevel=2)
    logger.info("mapped %d cells; %d unassigned", adata.n_obs, int(unassigned.sum()))


def _marker_record(calibration: dict, query_cols: np.ndarray) -> dict:
    """Which marker genes the calibration read, which the lot lacks, and their weight; a
    lacking marker that the chosen calibration reads is warned about."""
    from ..atlas import reads_markers

    evidence = calibration.get("marker_evidence") or {"genes": [], "columns": []}
    lacking = [
        g for g, c in zip(evidence["genes"], evidence["columns"], strict=True) if query_cols[c] < 0
    ]
    used = reads_markers(calibration)
    if used and lacking:
        msg = (
            f"The lot lacks marker genes {lacking} whose detection the bundle's calibration "
            "reads; those genes are left out of the evidence and calls that rest on them are "
            "weakened. Check the gene names or the assay's gene panel."
        )
        warnings.warn(msg, MappingWarning, stacklevel=3)
    return {
        "genes": list(evidence["genes"]),
        "lacking_in_lot": lacking,
        "used": used,
        "weights": dict(calibration["params"]) if used else {},
    }


def _composition_check(probs: np.ndarray, composition: dict | None) -> dict:
    """How far the lot's label composition (mean calibrated probabilities) lies from the
    nearest reference donor's (total variation), against the largest such distance between
    the reference's own donors: beyond it, the lot is unlike every donor the bundle saw, and
    its calibration and label sets were never measured on such a mixture."""
    lot = probs.mean(axis=0)
    if not composition:
        return {"checked": False}
    donors = composition["fractions"]
    dist = {d: float(0.5 * np.abs(lot - np.asarray(f)).sum()) for d, f in donors.items()}
    nearest = min(dist, key=dist.get)
    limit = composition.get("max_nearest_distance")
    return {
        "checked": limit is not None,
        "nearest_donor": nearest,
        "distance": dist[nearest],
        "reference_max_nearest_distance": limit,
        "far": bool(limit is not None and dist[nearest] > limit),
    }


def _coarse_level(adata, probs, sets, labels, calibration: dict, hierarchy: dict, key) -> None:
    """The coarse call (sum of its fine labels' probabilities), its own conformal label set,
    and the level at which each cell is resolved: one fine label, one coarse label, or mixed
    (the set spans coarse labels)."""
    from ..atlas import coarse_probs, prediction_sets

    n_sets = sets.sum(axis=1)
    if not hierarchy:
        level = np.where(n_sets == 1, "fine", "mixed")
    else:
        coarse, names = coarse_probs(probs, [hierarchy[lab] for lab in labels])
        coarse_sets = prediction_sets(coarse, calibration["conformal"]["coarse"])
        level = np.where(
            n_sets == 1, "fine", np.where(coarse_sets.sum(axis=1) == 1, "coarse", "mixed")
        )
        best = coarse.argmax(axis=1)
        adata.obs[f"{key}_label_coarse"] = pd.Categorical(np.asarray(names)[best], categories=names)
        adata.obs[f"{key}_prob_coarse"] = coarse[np.arange(adata.n_obs), best]
        adata.obsm[f"{key}_set_coarse"] = coarse_sets
    adata.obs[f"{key}_set_level"] = pd.Categorical(level, categories=["fine", "coarse", "mixed"])


def _expression_excess(adata, layer, bundle) -> tuple[np.ndarray, np.ndarray, sp.csr_matrix]:
    """The lot's expression excess over the bundle's gene levels, each cell's load of the
    genes the reference lacks against the lot's pooled share (genes matched by symbol or
    Ensembl id; a reference gene the lot lacks adds nothing), and the counts they read."""
    from ..atlas import ambient_load, expression_excess

    genes, gene_ids, levels = bundle.expression_levels()
    cols = match_genes(adata, genes, gene_ids)
    found = np.flatnonzero(cols >= 0)
    # float64 once: both measures read it without converting again
    counts = sp.csr_matrix(get_matrix(adata, layer), dtype=np.float64)[:, cols[found]]
    levels = levels[found].astype(np.float64)
    return expression_excess(counts, levels), ambient_load(counts, levels), counts


def check_genes(
    adata: AnnData, bundle, *, min_gene_overlap: float = 0.5, warn_gene_overlap: float = 0.8
) -> tuple[np.ndarray, float, list[str]]:
    """Gene gating of a lot against a bundle, before any mapping work.

    Refuses a species mismatch and an overlap below ``min_gene_overlap`` (with the numbers);
    warns below ``warn_gene_overlap`` with the missing marker genes. Returns the lot's column
    of each reference gene (-1 if absent), the overlap and the missing genes.
    """
    manifest = bundle.manifest
    _check_species(adata, manifest)
    n_ref = len(manifest["genes"])
    query_cols, overlap, missing = _match_genes(adata, manifest)
    if overlap < min_gene_overlap:
        msg = (
            f"Only {overlap:.0%} of the reference's {n_ref} genes are in the lot "
            f"({int(round(overlap * n_ref))} genes), below the {min_gene_overlap:.0%} "
            f"needed to map onto {bundle.name!r}. Check the gene names (symbols vs Ensembl "
            "ids) or use a reference built on this assay's genes."
        )
        raise InputError(msg)
    if overlap < warn_gene_overlap:
        markers = sorted(
            {g for genes in manifest.get("label_markers", {}).values() for g in genes}
            & set(missing)
        )
        msg = (
            f"Only {overlap:.0%} of the reference's genes are in the lot; missing marker "
            f"genes of reference labels: {markers[:30]}. Label calls that rest on them are "
            "weakened."
        )
        warnings.warn(msg, MappingWarning, stacklevel=3)
    return query_cols, overlap, missing


def _check_species(adata: AnnData, manifest: dict) -> None:
    ref_species = manifest.get("species", "unknown")
    query_species = guess_species(adata)
    if "unknown" not in (ref_species, query_species) and ref_species != query_species:
        msg = (
            f"The lot's genes look {query_species} but reference {manifest['name']!r} is "
            f"{ref_species}: species mismatch. Map onto a {query_species} reference, or convert "
            "gene names to orthologues first."
        )
        raise InputError(msg)


def _match_genes(adata: AnnData, manifest: dict) -> tuple[np.ndarray, float, list[str]]:
    ref_genes = pd.Index(manifest["genes"])
    cols = match_genes(adata, ref_genes, manifest.get("gene_ids"))
    found = cols >= 0
    return cols, float(found.mean()), list(ref_genes[~found])


def match_genes(adata: AnnData, genes, gene_ids=None) -> np.ndarray:
    """Column of the lot for each reference gene (-1 if absent), by symbol or Ensembl id,
    whichever finds more."""
    cols = adata.var_names.get_indexer(pd.Index(genes))
    if gene_ids is not None and len(gene_ids) and "gene_ids" in adata.var:
        by_id = pd.Index(adata.var["gene_ids"].astype(str)).get_indexer(pd.Index(gene_ids))
        if (by_id >= 0).sum() > (cols >= 0).sum():
            cols = by_id
    return cols


def _query_anndata(adata, layer, cols, ref_genes, manifest, batch_key, unlabeled) -> AnnData:
    """Counts of the reference's genes (zeros where absent), labels unknown, batch set."""
    import scipy.sparse as sp

    found = np.flatnonzero(cols >= 0)
    # counts @ selection: column j of the result is the lot's gene cols[j] (zeros where absent)
    selection = sp.csr_matrix(
        (np.ones(found.size, dtype=np.float32), (cols[found], found)),
        shape=(adata.n_vars, ref_genes.size),
    )
    X = sp.csr_matrix(get_matrix(adata, layer), dtype=np.float32) @ selection
    query = AnnData(X=sp.csr_matrix(X), obs=pd.DataFrame(index=adata.obs_names.copy()))
    query.var_names = ref_genes
    query.obs[manifest["labels_key"]] = unlabeled
    ref_batch = manifest.get("batch_key")
    if ref_batch:
        values = adata.obs[batch_key].astype(str).to_numpy() if batch_key else "query_lot"
        query.obs[ref_batch] = values
    return query


def _new_batches(query: AnnData, manifest: dict) -> list[str]:
    ref_batch = manifest.get("batch_key")
    if not ref_batch:
        return []
    known = set(manifest.get("batches", []))
    return sorted(set(query.obs[ref_batch].astype(str)) - known)
