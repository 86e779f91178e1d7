"""How close each cell is to the product's target identity, and what else it could be."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from anndata import AnnData

from .._logging import logger, timed
from .._utils import uns_safe
from .._validate import InputError, MissingKeyError
from . import _panels

TARGET, UNASSIGNED, OTHER = "target", "unassigned", "other reference labels"
RESIDUAL_PLURIPOTENT = "residual pluripotent"


def identity_score(
    adata: AnnData,
    *,
    target: str | Sequence[str] | None = None,
    reference_key: str = "sct_ref",
    profile: str | Mapping | None = None,
    layer: str | None = None,
    key_added: str = "sct_identity",
) -> None:
    """Score each cell's closeness to the target identity and classify it.

    With a mapped reference (:func:`map_to_reference`), the identity score is the calibrated
    probability of the target's reference labels, shrunk beyond the out-of-reference threshold
    (times ``min(1, threshold / oor_score)``); the class is the identity (target, each off-target
    or forbidden identity, or each other reference label when no profile is given) whose labels
    hold the most probability, or ``"unassigned"`` for cells out of the reference. Without a
    reference (hPSC products on a machine with no network), the profile's marker panels alone
    classify cells (each identity's panel score from within-cell ranks, as AUCell and
    singscore do; the highest wins), and ``uns`` says so. Either way a second,
    orthogonal score comes from the target's marker panel (within-cell ranks of its positive
    genes minus its negative genes), and residual pluripotent cells are called from the
    pluripotency panel (:data:`~sc_celltherapy.tl._panels.PLURIPOTENCY_PANEL`: half or more of
    it in the top quarter of the cell's expressed genes), which overrides the class.

    Parameters
    ----------
    adata
        Lot with raw counts in ``.X`` or ``layer``, mapped with :func:`map_to_reference` unless
        the marker panels alone are to be used.
    target
        Target identity: the profile's target name, or one or several reference labels.
        ``None``: the profile's target.
    reference_key
        ``key_added`` of :func:`map_to_reference`; when absent from ``.uns``, the marker
        panels of ``profile`` classify cells.
    profile
        Product profile (name under ``reference_atlases/profiles`` or a loaded profile) that
        names the target, off-target and forbidden identities and their marker panels.
    layer
        Layer with raw counts; ``None`` uses ``.X``.
    key_added
        Prefix of the result keys.

    Returns
    -------
    Nothing; adds ``obs[key_added]`` (identity score in [0, 1]),
    ``obs[f"{key_added}_markers"]`` (target marker-panel score in [0, 1]),
    ``obs[f"{key_added}_class"]`` (``"target"``, an off-target / forbidden identity name,
    ``"residual pluripotent"`` or the profile's name for it, or ``"unassigned"``),
    ``obs[f"{key_added}_pluripotency"]`` and ``obs[f"{key_added}_pluripotent"]``, and
    ``uns[key_added]``: method (``"reference"`` or ``"marker panels (within-cell ranks)"``), the
    identities with their reference labels, impurity classes and marker genes found, target,
    profile.

    Examples
    --------
    >>> import sc_celltherapy as sct
    >>> lot = sct.datasets.toy_product(n_cells=300, fractions={"T cell": 0.9, "monocyte": 0.1})
    >>> sct.tl.identity_score(lot, profile="car_t_demo")  # no reference: marker panels
    >>> lot.uns["sct_identity"]["method"]
    'marker panels (within-cell ranks)'
    """
    prof = _load_profile(profile)
    mapped = reference_key in adata.uns
    ref_labels = list(adata.uns[reference_key]["labels"]) if mapped else []
    if mapped and f"{reference_key}_probs" not in adata.obsm:
        msg = (
            f"adata.uns[{reference_key!r}] exists but obsm[{reference_key + '_probs'!r}] does "
            "not: the mapping result is incomplete. Run sct.tl.map_to_reference again."
        )
        raise MissingKeyError(msg)
    if not mapped and prof is None:
        msg = (
            f"adata.uns has no {reference_key!r} (no reference mapping) and no profile was "
            "given, so there is nothing to score against. Run sct.tl.map_to_reference first, "
            "or pass profile= to classify with its marker panels."
        )
        raise MissingKeyError(msg)
    identities = _identities(prof, target, ref_labels)

    pluri_panel = next(
        (i["markers"]["positive"] for i in identities if i["class"] == "residual_pluripotent"),
        _panels.PLURIPOTENCY_PANEL,
    )
    pluri_name = next(
        (i["name"] for i in identities if i["class"] == "residual_pluripotent"),
        RESIDUAL_PLURIPOTENT,
    )
    panel_genes = [*pluri_panel]
    for i in identities:
        panel_genes += i.get("markers", {}).get("positive", [])
        panel_genes += i.get("markers", {}).get("negative", [])
    table = _panels.percentile_table(adata, panel_genes, layer=layer)
    target_markers = identities[0]["markers"]
    marker_score, marker_genes = _panels.panel_score(
        table, target_markers.get("positive", []), target_markers.get("negative", [])
    )
    pluri_score, pluripotent, pluri_genes = _panels.pluripotency(table, pluri_panel)

    with timed(f"identity of {adata.n_obs} cells"):
        if mapped:
            score, classes = _from_reference(adata, reference_key, identities)
            method = "reference"
        else:
            score, classes = _from_markers(table, identities)
            method = "marker panels (within-cell ranks)"
    classes = np.where(pluripotent, pluri_name, classes)

    adata.obs[key_added] = score
    adata.obs[f"{key_added}_markers"] = marker_score
    adata.obs[f"{key_added}_class"] = pd.Categorical(classes)
    adata.obs[f"{key_added}_pluripotency"] = pluri_score
    adata.obs[f"{key_added}_pluripotent"] = pluripotent
    impurity_class = {i["name"]: i["class"] for i in identities} | {
        pluri_name: "residual_pluripotent"
    }
    adata.uns[key_added] = uns_safe(
        {
            "method": method,
            "reference_key": reference_key if mapped else None,
            "profile": prof["name"] if prof else None,
            "target": list(identities[0]["reference_labels"]) or [identities[0]["name"]],
            "target_name": identities[0]["name"],
            "identities": {
                i["name"]: {
                    "class": i["class"],
                    "reference_labels": list(i["reference_labels"]),
                }
                for i in identities
            },
            "impurity_class": impurity_class,
            "marker_genes_used": marker_genes,
            "pluripotency_genes_used": pluri_genes,
            "pluripotent_min_percentile": _panels.PLURIPOTENT_MIN_PERCENTILE,
        }
    )
    counts = pd.Series(classes).value_counts()
    logger.info("identity classes: %s", counts.to_dict())


def _load_profile(profile) -> dict | None:
    if profile is None or isinstance(profile, Mapping):
        return profile
    from ..atlas import load_profile

    return load_profile(profile)


def _identities(prof: dict | None, target, ref_labels: list[str]) -> list[dict]:
    """Target first, then off-target and forbidden identities, each with its reference labels,
    impurity class and markers."""
    targets = [target] if isinstance(target, str) else list(target or [])
    if prof is not None and (not targets or targets == [prof["target"]["name"]]):
        first = {**prof["target"], "class": TARGET}
        first["reference_labels"] = [lab for lab in first["reference_labels"] if lab in ref_labels]
    elif targets:
        unknown = [t for t in targets if t not in ref_labels]
        if unknown:
            known = ([prof["target"]["name"]] if prof else []) + ref_labels
            msg = (
                f"Target identity {unknown} is neither a reference label nor the profile's "
                f"target. Known identities: {known}."
            )
            raise InputError(msg)
        first = {
            "name": ", ".join(targets),
            "class": TARGET,
            "reference_labels": targets,
            "markers": prof["target"]["markers"] if prof else {"positive": [], "negative": []},
        }
    else:
        msg = "No target identity: pass target= (reference labels) or a profile with a target."
        raise InputError(msg)
    first["name_in_class"] = TARGET
    others = []
    if prof is not None:
        for ident in list(prof.get("off_target", [])) + list(prof.get("forbidden", [])):
            labels = [lab for lab in ident.get("reference_labels", []) if lab in ref_labels]
            others.append({**ident, "reference_labels": labels})
    claimed = set(first["reference_labels"]).union(*(o["reference_labels"] for o in others))
    rest = [lab for lab in ref_labels if lab not in claimed]
    if prof is None:  # every other reference label is an off-target identity of its own
        others += [
            {"name": lab, "class": "off_target", "reference_labels": [lab], "markers": {}}
            for lab in rest
        ]
    elif rest:
        others.append(
            {"name": OTHER, "class": "off_target", "reference_labels": rest, "markers": {}}
        )
    return [first, *others]


def _from_reference(adata, reference_key, identities) -> tuple[np.ndarray, np.ndarray]:
    labels = list(adata.uns[reference_key]["labels"])
    probs = np.asarray(adata.obsm[f"{reference_key}_probs"], dtype=np.float64)
    scored = [i for i in identities if i["reference_labels"]]
    by_identity = np.column_stack(
        [probs[:, [labels.index(lab) for lab in i["reference_labels"]]].sum(axis=1) for i in scored]
    )
    oor = adata.obs[f"{reference_key}_oor_score"].to_numpy(dtype=np.float64)
    threshold = float(adata.uns[reference_key]["oor_threshold"])
    in_reference = np.minimum(1.0, threshold / np.maximum(oor, 1e-12))
    target_prob = by_identity[:, 0] if scored and scored[0] is identities[0] else 0.0
    score = np.clip(target_prob * in_reference, 0, 1)
    names = np.array([i.get("name_in_class", i["name"]) for i in scored], dtype=object)
    classes = names[by_identity.argmax(axis=1)]
    unassigned = adata.obs[f"{reference_key}_unassigned"].to_numpy(dtype=bool)
    return score, np.where(unassigned, UNASSIGNED, classes)


def _from_markers(table, identities) -> tuple[np.ndarray, np.ndarray]:
    """Rank-based panel classification (in the manner of AUCell / singscore): each identity's
    panel score (:func:`~sc_celltherapy.tl._panels.panel_score`), the class with the highest
    score, unassigned when no panel has any evidence; the identity score is the target's share
    of the summed panel scores."""
    with_panel = [i for i in identities if i.get("markers", {}).get("positive")]
    if not with_panel or with_panel[0] is not identities[0]:
        msg = "The profile's target has no positive marker genes; marker panels cannot classify."
        raise InputError(msg)
    scores = np.column_stack(
        [
            _panels.panel_score(table, i["markers"]["positive"], i["markers"].get("negative", []))[
                0
            ]
            for i in with_panel
        ]
    )
    names = np.array([i.get("name_in_class", i["name"]) for i in with_panel], dtype=object)
    total = scores.sum(axis=1)
    share = np.divide(scores[:, 0], total, out=np.zeros_like(total), where=total > 0)
    return share, np.where(total > 0, names[scores.argmax(axis=1)], UNASSIGNED)
