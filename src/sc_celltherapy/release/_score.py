"""Identity and purity of a lot against a spec, resolved one way for every caller: the spec's
target and the product profile decide the identities, whether the library, ``score``,
``release`` or a Snakemake rule asks."""

from __future__ import annotations

from anndata import AnnData

from .. import pp, tl
from .._checks import InputError
from .._keys import KEYS
from .._spec import Spec
from ..tl.checks import check_enough_cells
from ._preflight import resolve_profile


def flag_cells(adata: AnnData, *, species: str, batch_key: str | None, seed: int) -> None:
    """The release's QC before filtering: metrics, low-quality and doublet flags."""
    pp.qc_metrics(adata, species=species, batch_key=batch_key)
    pp.flag_low_quality(adata, batch_key=batch_key)
    pp.doublets(adata, batch_key=batch_key, random_state=seed)


def remove_flagged_cells(adata: AnnData) -> None:
    """Remove the flagged cells; refuse a lot with too few left, before mapping."""
    pp.remove_flagged(adata)  # refuses when no cell would be left
    check_enough_cells(adata, what="cell(s) left after QC")


def assess(
    adata: AnnData,
    *,
    spec: Spec,
    profile: dict | None,
    bundle=None,
    batch_key: str | None = None,
    seed: int = 0,
    min_gene_overlap: float = 0.5,
) -> tl.PurityReport:
    """The release chain in memory, without outputs: QC, mapping (or marker panels when
    ``bundle`` is None), identity and purity, as :func:`sc_celltherapy.release.run` runs them
    (validation runs its mixtures through it).

    Parameters
    ----------
    adata
        The lot's counts; modified in place (flagged cells removed, mapping and calls added).
    spec
        The release specification.
    profile
        The product profile (a dict, as :func:`sc_celltherapy.atlas.load_profile` returns it),
        or ``None`` for a spec whose target names reference labels.
    bundle
        The reference bundle; ``None``: identities from the profile's marker panels.
    batch_key
        Column of ``.obs`` with the lot's channels.
    seed
        Seed of every random step.
    min_gene_overlap
        Smallest share of the reference's genes the lot must have.

    Returns
    -------
    The :class:`~sc_celltherapy.tl.PurityReport`.
    """
    species = "human" if bundle is None else bundle.manifest.get("species", "human")
    flag_cells(adata, species=species, batch_key=batch_key, seed=seed)
    remove_flagged_cells(adata)
    if bundle is not None:
        tl.map_to_reference(
            adata, bundle, batch_key=batch_key, seed=seed, min_gene_overlap=min_gene_overlap
        )
    identities(adata, spec, profile)
    return tl.assess_purity(adata, spec)


def identities(adata: AnnData, spec: Spec, profile: dict | None) -> None:
    """Classify the lot's cells for ``spec``: its target (the profile's target name or
    reference labels) against the profile's identities (``profile`` as
    :func:`~sc_celltherapy.release._preflight.resolve_profile` gives it)."""
    tl.identity_score(adata, target=list(spec.target), profile=profile)


def score(adata: AnnData, spec: Spec, *, product: str | None = None) -> tl.PurityReport:
    """Identity and purity of a lot (mapped, or QC'd for marker panels) against ``spec``.

    The same resolution of spec, profile and target as :func:`sc_celltherapy.release.run`, so
    the two judge the same classes.

    Parameters
    ----------
    adata
        A lot mapped by :func:`sc_celltherapy.tl.map_to_reference`, or QC'd only when
        identities come from the profile's marker panels.
    spec
        The release specification.
    product
        A shipped profile name or a profile YAML; ``None`` uses the spec's product when it is
        a shipped profile.

    Returns
    -------
    The :class:`~sc_celltherapy.tl.PurityReport`; identity and purity are also written to
    ``adata`` as :func:`~sc_celltherapy.tl.identity_score` and
    :func:`~sc_celltherapy.tl.assess_purity` write them.
    """
    profile = resolve_profile(product, spec)
    if KEYS.REF not in adata.uns and profile is None:
        msg = (
            f"The lot is not mapped and spec product {spec.product!r} is no shipped profile: "
            "map it first (sct.tl.map_to_reference, `sc-celltherapy map`), or give a product "
            "profile (product=, --product: a shipped name or your profile YAML) to call "
            "identities from its marker panels."
        )
        raise InputError(msg)
    identities(adata, spec, profile)
    return tl.assess_purity(adata, spec)
