"""How close each cell is to the product's target identity, and what else it could be."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from anndata import AnnData

from .._checks import MissingKeyError, check_counts
from .._keys import KEYS
from .._logging import logger, timed
from .._utils import uns_safe
from . import _panels
from ._identities import (
    AMBIGUOUS,
    RESIDUAL_PLURIPOTENT,
    TARGET,
    UNASSIGNED,
    check_target_coverage,
    load_profile_arg,
    panel_coverage,
    resolve_identities,
)
from ._lineage_gate import gate_settings, lineage_gate

MARKER_METHOD = "marker panels (within-cell rank enrichment, no reference)"
REFERENCE_METHOD = "reference"


class IdentityWarning(UserWarning):
    """Something about the lot limits what the identity call can use (e.g. a profile's lineage
    gate genes are not in the lot)."""


def identity_score(
    adata: AnnData,
    *,
    target: str | Sequence[str] | None = None,
    reference_key: str = KEYS.REF,
    profile: str | Mapping | None = None,
    layer: str | None = None,
    min_z: float = _panels.MIN_ENRICHMENT_Z,
    margin: float = _panels.MIN_MARGIN,
    min_genes: int = _panels.MIN_GENES_FOUND,
    min_fraction: float = _panels.MIN_FRACTION_FOUND,
    key_added: str = KEYS.IDENTITY,
) -> None:
    """Score each cell's closeness to the target identity and classify it.

    With a mapped reference (:func:`map_to_reference`), the identity score is the calibrated
    probability of the target's reference labels, shrunk beyond the out-of-reference threshold
    (times ``min(1, threshold / oor_score)``); the class is the identity (target, each off-target
    or forbidden identity, or each other reference label when no profile is given) whose labels
    hold the most probability, or ``"unassigned"`` for cells out of the reference.

    Without a reference (hPSC products on a machine with no network, or ``reference none``), the
    profile's marker panels decide, each with an absolute test. A panel's score is the mean
    within-cell percentile of its positive genes minus that of its negative genes; its z-score
    measures how far that lies above what random genes of the same cell give (see
    :mod:`~sc_celltherapy.tl._panels`). A cell is an identity when that identity's panel is
    enriched (``z >= min_z``) and its score beats every other assessed identity's by
    ``margin`` null standard deviations of the difference; otherwise it is ``"unassigned"``. The identity score is then the target panel's
    score, a continuous closeness in [0, 1].

    Either way: an identity is assessed only when at least ``min_genes`` and ``min_fraction`` of
    its positive genes are in the lot; in marker mode a target below that is refused, other
    identities are reported "not assessed". Residual pluripotent cells come only from the
    pluripotency detector (:data:`~sc_celltherapy.tl._panels.PLURIPOTENCY_PANEL`, the same for
    every profile: half or more of it in the top quarter of the cell's expressed genes), never
    from the panel contest, and the call overrides the class.

    Parameters
    ----------
    adata
        Lot with raw counts in ``.X`` or ``layer``, mapped with :func:`map_to_reference` unless
        the marker panels alone are to be used. Genes are matched by symbol (``var_names``, or a
        symbol column of ``.var`` when ``var_names`` are Ensembl ids).
    target
        Target identity: the profile's target name, or one or several reference labels.
        ``None``: the profile's target.
    reference_key
        ``key_added`` of :func:`map_to_reference`; when absent from ``.uns``, the marker
        panels of ``profile`` classify cells.
    profile
        Product profile: a shipped name, the path of a YAML file, or a dict (validated like a
        file, :func:`sc_celltherapy.atlas.validate_manifest`).
    layer
        Layer with raw counts; ``None`` uses ``.X``.
    min_z, margin
        Enrichment threshold of the marker-panel decision, and the margin (in null standard
        deviations of the difference of two panel scores) by which the winner must beat every
        other identity.
    min_genes, min_fraction
        Coverage an identity's panel needs in the lot to be assessed.
    key_added
        Prefix of the result keys.

    Returns
    -------
    Nothing; adds ``obs[key_added]`` (identity score in [0, 1]),
    ``obs[f"{key_added}_markers"]`` (target panel score, NaN when the target panel is not
    assessed), ``obs[f"{key_added}_class"]`` (``"target"``, an off-target / forbidden identity
    name, the profile's name for residual pluripotent cells, or ``"unassigned"``),
    ``obs[f"{key_added}_pluripotency"]`` and ``obs[f"{key_added}_pluripotent"]`` (the
    detector), ``obsm[f"{key_added}_panel_scores"]`` and ``obsm[f"{key_added}_panel_z"]``
    (cells x assessed identities, columns named in ``uns[key_added]["panel_columns"]``), and
    ``uns[key_added]``: method, thresholds, every identity's panel genes found and missing and
    whether it was assessed (:func:`identity_records` reads them by name), target, profile.

    Examples
    --------
    >>> import sc_celltherapy as sct
    >>> lot = sct.datasets.toy_product(n_cells=300, fractions={"T cell": 0.9, "monocyte": 0.1})
    >>> sct.tl.identity_score(lot, profile="car_t_demo")  # no reference: marker panels
    >>> lot.uns["sct_identity"]["method"]
    'marker panels (within-cell rank enrichment, no reference)'
    """
    check_counts(adata, layer=layer)
    prof = load_profile_arg(profile)
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
    coarse = [str(c) for c in adata.uns[reference_key].get("coarse_labels", [])] if mapped else []
    identities = resolve_identities(prof, target, ref_labels, coarse)
    coverage = panel_coverage(adata, identities, min_genes=min_genes, min_fraction=min_fraction)
    if not mapped:
        check_target_coverage(coverage.get(identities[0]["name"]), identities[0]["name"])

    pluri_name = next(
        (i["name"] for i in identities if i["class"] == "residual_pluripotent"),
        RESIDUAL_PLURIPOTENT,
    )
    with timed(f"identity of {adata.n_obs} cells"):
        genes = [*_panels.PLURIPOTENCY_PANEL]
        for i in identities:
            genes += i.get("markers", {}).get("positive", [])
            genes += i.get("markers", {}).get("negative", [])
        table = _panels.percentile_table(adata, genes, layer=layer)
        p = _panels.detected_fraction(adata, layer=layer)
        contest = [i for i in identities if coverage.get(i["name"], {}).get("assessed")]
        panels = {
            i["name"]: _panels.panel_score(
                table, p, i["markers"]["positive"], i["markers"].get("negative", [])
            )
            for i in contest
        }
        pluri_score, pluripotent, pluri_genes = _panels.pluripotency(table)
        ambiguity_level, spans = None, {}
        if mapped:
            score, classes, ambiguity_level, spans = _from_reference(
                adata, reference_key, identities
            )
            method = REFERENCE_METHOD
        else:
            score, classes = _from_markers(panels, contest, p, min_z=min_z, margin=margin)
            method = MARKER_METHOD
        classes, gate_record = _apply_gate(adata, identities, classes, spans, layer, key_added)
    classes = np.where(pluripotent, pluri_name, classes)

    records = _records(identities, coverage, mapped=mapped, pluri_genes=pluri_genes)
    target_panel = panels.get(identities[0]["name"])
    adata.obs[key_added] = score
    adata.obs[f"{key_added}_markers"] = (
        target_panel.score if target_panel is not None else np.full(adata.n_obs, np.nan)
    )
    adata.obs[f"{key_added}_class"] = pd.Categorical(classes)
    adata.obs[f"{key_added}_pluripotency"] = pluri_score
    adata.obs[f"{key_added}_pluripotent"] = pluripotent
    columns = list(panels)
    adata.obsm[f"{key_added}_panel_scores"] = _columns(panels, "score", adata.n_obs)
    adata.obsm[f"{key_added}_panel_z"] = _columns(panels, "z", adata.n_obs)
    adata.uns[key_added] = uns_safe(
        {
            "method": method,
            "reference_key": reference_key if mapped else None,
            "profile": prof["name"] if prof else None,
            "target": list(identities[0]["reference_labels"]) or [identities[0]["name"]],
            "target_name": identities[0]["name"],
            # by position, the name a field: h5ad keys cannot hold the "/" of some names
            "identities": {
                str(k): {
                    "name": i["name"],
                    "class": i["class"],
                    "reference_labels": list(i["reference_labels"]),
                    **records[i["name"]],
                }
                for k, i in enumerate(identities)
            },
            "pluripotent_name": pluri_name,
            "not_assessed": [name for name, rec in records.items() if not rec["assessed"]],
            "panel_columns": columns,
            "marker_genes_used": (
                target_panel.positive + target_panel.negative if target_panel else []
            ),
            "pluripotency_genes_used": pluri_genes,
            "thresholds": {
                "min_z": min_z,
                "margin": margin,
                "min_genes": min_genes,
                "min_fraction": min_fraction,
                "pluripotent_min_percentile": _panels.PLURIPOTENT_MIN_PERCENTILE,
            },
            "rules": {
                "identity": (
                    "an identity when its panel's z >= min_z against random genes of the same "
                    "cell and its score (mean within-cell percentile of positive genes minus "
                    "negative genes) exceeds every other assessed identity's by margin null "
                    "standard deviations of the difference; else unassigned"
                    if method == MARKER_METHOD
                    else "the identity whose reference labels hold the most calibrated "
                    "probability; ambiguous when the cell's conformal label set spans the target "
                    "and an impurity class, or two impurity classes (coarse label sets when "
                    "every identity is made of whole coarse labels); unassigned beyond the "
                    "out-of-reference threshold"
                ),
                "ambiguity_level": ambiguity_level,
                "lineage_gate": gate_record,
                "residual_pluripotent": (
                    "pluripotency detector: median within-cell percentile of "
                    f"{list(_panels.PLURIPOTENCY_PANEL)} (genes found: at least "
                    f"{_panels.MIN_PANEL_GENES}) >= {_panels.PLURIPOTENT_MIN_PERCENTILE}; the "
                    "same panel for every profile, overriding the class"
                ),
            },
        }
    )
    counts = pd.Series(classes).value_counts()
    logger.info("identity classes: %s", counts.to_dict())


def _records(identities, coverage, *, mapped: bool, pluri_genes: list[str]) -> dict[str, dict]:
    """Per identity: its panel's coverage, whether this run can call it at all (``assessed``)
    and by what (``called_by``: reference labels, marker panel or the pluripotency detector)."""
    out = {}
    for ident in identities:
        rec = {"genes_found": [], "genes_missing": [], "genes_needed": 0}
        rec |= coverage.get(ident["name"], {"assessed": False, "reason": "no marker panel"})
        rec["panel_assessed"] = rec["assessed"]
        if ident["class"] == "residual_pluripotent":
            ok = len(pluri_genes) >= _panels.MIN_PANEL_GENES
            rec |= {
                "assessed": ok,
                "called_by": "pluripotency detector" if ok else None,
                "reason": ""
                if ok
                else f"not assessed: {len(pluri_genes)} pluripotency detector "
                f"genes in the lot, {_panels.MIN_PANEL_GENES} needed",
            }
        elif mapped and ident["reference_labels"]:
            rec |= {"assessed": True, "called_by": "reference labels", "reason": ""}
        elif mapped:
            rec |= {
                "assessed": False,
                "called_by": None,
                "reason": "not assessed: no label of this reference (its cells go to the nearest "
                "label or are unassigned)",
            }
        else:
            rec["called_by"] = "marker panel" if rec["assessed"] else None
        out[ident["name"]] = rec
    return out


def _columns(panels: dict, what: str, n: int) -> np.ndarray:
    if not panels:
        return np.zeros((n, 0))
    return np.column_stack([getattr(s, what) for s in panels.values()])


def _from_reference(adata, reference_key, identities) -> tuple[np.ndarray, np.ndarray, str]:
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
    ambiguous, level, spans = ambiguous_cells(adata, reference_key, scored)
    classes = np.where(ambiguous, AMBIGUOUS, classes)
    unassigned = adata.obs[f"{reference_key}_unassigned"].to_numpy(dtype=bool)
    return score, np.where(unassigned, UNASSIGNED, classes), level, spans


def ambiguous_cells(adata, reference_key, identities) -> tuple[np.ndarray, str, dict]:
    """Cells whose conformal label set spans identities a spec treats differently (the target
    and an impurity, or two impurity classes): argmax would split them, so they are counted
    apart. The coarse sets decide when every identity is made of whole coarse labels (a
    T-cell target is not ambiguous between two T-cell states), the fine sets otherwise.
    Returns the mask, the level used and, per identity name, the cells whose set reaches it."""
    rec = adata.uns[reference_key]
    labels = list(rec["labels"])
    bucket, kind = {}, {}
    for ident in identities:
        kind[ident["name"]] = ident["class"]
        for lab in ident["reference_labels"]:
            bucket[lab] = ident["name"]
    coarse = [str(c) for c in rec.get("coarse_labels", [])]  # an array after an h5ad round trip
    set_key = f"{reference_key}_set"
    if set_key not in adata.obsm:  # mapped before label sets existed
        return np.zeros(adata.n_obs, dtype=bool), "none", {}
    whole = len(coarse) == len(labels) and f"{set_key}_coarse" in adata.obsm
    by_coarse: dict[str, set] = {}
    if whole:
        for lab, c in zip(labels, coarse, strict=True):
            by_coarse.setdefault(c, set()).add(bucket.get(lab))
        whole = all(len({kind.get(n) for n in b}) == 1 for b in by_coarse.values())
    if whole:  # a coarse column reaches every identity among its fine labels
        sets = np.asarray(adata.obsm[f"{set_key}_coarse"], dtype=bool)
        reaches = [by_coarse[c] for c in rec["coarse_set_labels"]]
        level = "coarse"
    else:
        sets = np.asarray(adata.obsm[set_key], dtype=bool)
        reaches = [{bucket.get(lab)} for lab in labels]
        level = "fine"
    spans = {
        name: sets[:, [name in r for r in reaches]].any(axis=1)
        for name in kind
        if any(name in r for r in reaches)
    }
    reached = {
        c: np.any([m for name, m in spans.items() if kind[name] == c], axis=0)
        for c in {kind[name] for name in spans}
    }
    n_classes = sum((m.astype(int) for m in reached.values()), np.zeros(adata.n_obs, dtype=int))
    return n_classes > 1, level, spans


def _apply_gate(adata, identities, classes, spans, layer, key_added):
    """The target's lineage gate (:mod:`~sc_celltherapy.tl._lineage_gate`), when the profile's
    target has one: cells classed as an identity it rescues, or ambiguous between such
    identities and the target only, become target when they pass. Returns the classes and
    the gate's record (``None`` without a gate)."""
    gate = identities[0].get("lineage_gate")
    if not gate:
        return classes, None
    settings = gate_settings(gate)
    passed, record = lineage_gate(adata, gate, layer=layer)
    if not record["genes_found"]:
        msg = (
            f"None of the lineage gate genes {settings['genes']} is in the lot, so the "
            f"target's gate rescues no cell classed {settings['rescues']}. Give the full count "
            "matrix with gene symbols."
        )
        warnings.warn(msg, IdentityWarning, stacklevel=3)
    allowed = {identities[0]["name"], *settings["rescues"]}
    classes = np.asarray(classes, dtype=object)
    eligible = np.isin(classes, settings["rescues"])
    if spans:
        outside = np.any([m for name, m in spans.items() if name not in allowed], axis=0)
        eligible |= (classes == AMBIGUOUS) & ~np.asarray(outside, dtype=bool)
    rescued = eligible & passed
    record["n_rescued"] = int(rescued.sum())
    record["rescued_from"] = {
        str(c): int(n) for c, n in pd.Series(classes[rescued]).value_counts().items()
    }
    adata.obs[f"{key_added}_lineage_gate"] = passed
    return np.where(rescued, TARGET, classes), record


def _from_markers(
    panels: dict[str, _panels.PanelScore],
    contest: list[dict],
    p: np.ndarray,
    *,
    min_z: float,
    margin: float,
) -> tuple[np.ndarray, np.ndarray]:
    """The identity with the highest panel score, when its panel is enriched (``z >= min_z``)
    and its score exceeds every other assessed identity's by ``margin`` null standard deviations
    of the difference; unassigned otherwise. The identity score is the target panel's score."""
    scores = np.column_stack([panels[i["name"]].score for i in contest])
    z = np.column_stack([panels[i["name"]].z for i in contest])
    sizes = np.array([len(panels[i["name"]].positive) for i in contest], dtype=np.float64)
    names = np.array([i.get("name_in_class", i["name"]) for i in contest], dtype=object)
    rows = np.arange(len(scores))
    best = scores.argmax(axis=1)
    # the difference of two panels' means under the within-cell null: variance v (1/m1 + 1/m2)
    v = np.maximum(p / 3 - p**2 / 4, 1e-12)[:, None]
    sd = np.sqrt(v * (1 / sizes[best][:, None] + 1 / sizes[None, :]))
    contrast = (scores[rows, best][:, None] - scores) / sd
    contrast[rows, best] = np.inf
    decided = (z[rows, best] >= min_z) & (contrast.min(axis=1) >= margin)
    return scores[:, 0], np.where(decided, names[best], UNASSIGNED)
