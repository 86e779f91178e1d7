"""Which identities a lot is judged on: the target (a profile's target or reference labels) and
the profile's off-target and forbidden identities, each with its reference labels, impurity
class and marker panel, and whether the lot's genes let each be assessed. One resolution for
every caller (identity scoring, the release preflight, the results record)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from anndata import AnnData

from .._checks import InputError
from .._keys import KEYS
from . import _panels

TARGET, UNASSIGNED, OTHER = "target", "unassigned", "other reference labels"
AMBIGUOUS = "ambiguous"
RESIDUAL_PLURIPOTENT = "residual pluripotent"


def identity_records(adata: AnnData) -> dict[str, dict]:
    """A lot's identity records by identity name, in the profile's order: the method, panel
    genes used and missing, class and whether it was assessed, as :func:`identity_score` stored
    them.

    Parameters
    ----------
    adata
        A lot after :func:`identity_score` (read from ``uns["sct_identity"]``).

    Returns
    -------
    Identity name to its record (a new dict each call).
    """
    return records_by_name(adata.uns[KEYS.IDENTITY])


def identity_classes(adata: AnnData) -> dict[str, str]:
    """Each identity a lot's cells can be called (``obs["sct_identity_class"]``) to its
    impurity class (``target``, ``off_target``, ``residual_pluripotent``), the pluripotency
    detector's calls included, as :func:`~sc_celltherapy.tl.assess_purity` counts them.

    Parameters
    ----------
    adata
        A lot after :func:`identity_score`.

    Returns
    -------
    Identity name to its class.
    """
    return impurity_classes(adata.uns[KEYS.IDENTITY])


def records_by_name(info: Mapping) -> dict[str, dict]:
    """``uns["sct_identity"]["identities"]`` (keyed by position for h5ad) by identity name."""
    stored = info["identities"]
    return {stored[k]["name"]: dict(stored[k]) for k in sorted(stored, key=int)}


def impurity_classes(info: Mapping) -> dict[str, str]:
    """Identity name to impurity class (``target``, ``off_target``, ``residual_pluripotent``),
    the pluripotency detector's calls included."""
    out = {name: rec["class"] for name, rec in records_by_name(info).items()}
    return out | {info["pluripotent_name"]: "residual_pluripotent"}


def load_profile_arg(profile) -> dict | None:
    """A profile given by name, path or dict, validated the same way whichever it is."""
    if profile is None:
        return None
    from ..atlas import load_profile, validate_manifest

    if isinstance(profile, Mapping):
        return validate_manifest(profile, "profile")
    return load_profile(profile)


def resolve_identities(
    prof: dict | None, target, ref_labels: list[str], coarse_labels: Sequence = ()
) -> list[dict]:
    """Target first, then off-target and forbidden identities, each with its reference labels,
    impurity class and markers. A coarse label of the reference (``coarse_labels[j]`` is the
    coarse label of ``ref_labels[j]``) stands for all its fine labels."""

    def expand(wanted) -> list[str]:
        out = []
        for lab in wanted:
            if lab in ref_labels:
                out.append(lab)
            else:
                out += [f for f, c in zip(ref_labels, coarse_labels, strict=False) if c == lab]
        return list(dict.fromkeys(out))

    targets = [target] if isinstance(target, str) else list(target or [])
    if prof is not None and (not targets or targets == [prof["target"]["name"]]):
        first = {**prof["target"], "class": TARGET}
        first["reference_labels"] = expand(first.get("reference_labels", []))
    elif targets:
        unknown = [t for t in targets if not expand([t])]
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
            "reference_labels": expand(targets),
            "markers": prof["target"]["markers"] if prof else {"positive": [], "negative": []},
        }
    else:
        msg = "No target identity: pass target= (reference labels) or a profile with a target."
        raise InputError(msg)
    first["name_in_class"] = TARGET
    others = []
    if prof is not None:
        for ident in list(prof.get("off_target", [])) + list(prof.get("forbidden", [])):
            others.append({**ident, "reference_labels": expand(ident.get("reference_labels", []))})
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


def panel_coverage(
    adata: AnnData, identities: list[dict], *, min_genes: int, min_fraction: float
) -> dict[str, dict]:
    """Per identity with a marker panel: positive genes found and missing in the lot, and
    whether that is enough to assess it. The residual-pluripotent identity is the detector's
    business and takes no part in the panel contest."""
    out = {}
    for ident in identities:
        positive = ident.get("markers", {}).get("positive", [])
        if not positive:
            continue
        found = _panels.present_genes(adata, positive)
        missing = [g for g in positive if g not in found]
        needed = _panels.genes_needed(len(positive), min_genes=min_genes, min_fraction=min_fraction)
        record = {"genes_found": found, "genes_missing": missing, "genes_needed": needed}
        if ident["class"] == "residual_pluripotent":  # the detector's, see _records
            record |= {"assessed": False, "reason": ""}
        elif len(found) < needed:
            record |= {
                "assessed": False,
                "reason": f"not assessed: {len(found)} of {len(positive)} panel genes in the lot, "
                f"{needed} needed; missing {missing}",
            }
        else:
            record |= {"assessed": True, "reason": ""}
        out[ident["name"]] = record
    return out


def check_target_coverage(record: dict | None, name: str) -> None:
    """Refuse a marker-only identity call whose target panel is not in the lot."""
    if record is None:
        msg = f"The target {name!r} has no marker panel; marker panels cannot classify cells."
        raise InputError(msg)
    if record["assessed"]:
        return
    msg = (
        f"The target {name!r} cannot be assessed from its marker panel: only "
        f"{len(record['genes_found'])} of its genes are in the lot ({record['genes_found']}), "
        f"{record['genes_needed']} needed; missing {record['genes_missing']}. Likely causes: "
        "genes named by Ensembl ids without a symbol column, another species' symbols, or a "
        "matrix cut to a gene subset (e.g. highly variable genes). Give the full count matrix "
        "with gene symbols, or lower min_genes / min_fraction knowingly."
    )
    raise InputError(msg)
