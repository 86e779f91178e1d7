"""What tl can check of a lot before any heavy work: the release's pre-flight runs these, so a
lot that mapping, identity or purity would refuse is refused before anything is computed.

Each check raises :class:`sc_celltherapy.InputError` naming the problem and its fix."""

from __future__ import annotations

from anndata import AnnData

from .._checks import InputError
from .._spec import Spec
from ._cluster import MIN_CELLS_TO_CLUSTER
from ._feature_gates import check_marker_gates, check_transgene_features
from ._identities import (
    RESIDUAL_PLURIPOTENT,
    UNASSIGNED,
    check_target_coverage,
    panel_coverage,
    resolve_identities,
)
from ._map import check_genes
from ._panels import MIN_FRACTION_FOUND, MIN_GENES_FOUND

__all__ = [
    "MIN_CELLS_TO_CLUSTER",
    "check_enough_cells",
    "check_genes",
    "check_marker_gates",
    "check_spec_identities",
    "check_transgene_features",
]


def check_enough_cells(adata: AnnData, *, what: str) -> None:
    """Refuse a lot with fewer cells than clustering needs (:data:`MIN_CELLS_TO_CLUSTER`).

    Parameters
    ----------
    adata
        The lot.
    what
        Which cells these are, for the message (e.g. ``"barcodes in the input"``).
    """
    if adata.n_obs < MIN_CELLS_TO_CLUSTER:
        msg = (
            f"Only {adata.n_obs} {what}: a release needs at least {MIN_CELLS_TO_CLUSTER} cells "
            "(to cluster them, and for a fraction with a useful interval). Check that the input "
            "is the whole lot, not a subset of it."
        )
        raise InputError(msg)


def check_spec_identities(adata: AnnData, profile: dict | None, spec: Spec, bundle) -> None:
    """The spec names only identities the profile and reference know; without a reference the
    target's marker panel must be in the lot.

    Parameters
    ----------
    adata
        The lot (its genes are read for the marker-panel coverage).
    profile
        The product profile, or ``None``.
    spec
        The release spec.
    bundle
        The reference bundle, or ``None`` for marker panels alone.
    """
    labels = [] if bundle is None else list(bundle.labels)
    hierarchy = {} if bundle is None else bundle.manifest.get("hierarchy") or {}
    coarse = [hierarchy.get(lab) for lab in labels]
    identities = resolve_identities(profile, list(spec.target), labels, coarse)
    known = {i["name"] for i in identities} | set(labels) | set(hierarchy.values())
    known |= {UNASSIGNED, RESIDUAL_PLURIPOTENT}
    parts = []
    if bundle is not None:
        parts.append(f"the reference {bundle.name!r}")
    if profile is not None:
        parts.append(f"profile {profile['name']!r}")
    where = " and ".join(parts) + ("" if bundle is not None else " (marker panels, no reference)")
    spec.check_identities(known, where=where)
    if bundle is None:
        coverage = panel_coverage(
            adata, identities, min_genes=MIN_GENES_FOUND, min_fraction=MIN_FRACTION_FOUND
        )
        check_target_coverage(coverage.get(identities[0]["name"]), identities[0]["name"])
