"""A query on a bundle: each ensemble member's scArches surgery, its label probabilities and
how far its cells lie from the member's reference cells. What the bundle knows of a query,
with no opinion on what a lot is (that is :func:`sc_celltherapy.tl.map_to_reference`'s)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from anndata import AnnData

from .._logging import timed
from ._model import (
    accelerator,
    latent_of,
    map_query,
    predict_probs,
    surgery_batch_size,
    surgery_epochs,
)
from ._novelty import local_outlier_ratio
from ._store import ReferenceBundle


@dataclass(frozen=True)
class QueryResult:
    """What the bundle's members say of a query's cells."""

    latent: np.ndarray  # the first member's latent space (for neighbours and UMAPs)
    probs: np.ndarray  # mean of the members' label probabilities, uncalibrated
    latent_ratio: np.ndarray  # mean of the members' local outlier ratios
    epochs: int  # surgery epochs per member (0: no new batch, nothing trained)
    batch_size: int
    accelerator: str


def query_bundle(
    bundle: ReferenceBundle,
    query: AnnData,
    *,
    train: bool,
    max_epochs: int | None = None,
    seed: int = 0,
) -> QueryResult:
    """Map ``query`` (counts on the bundle's genes, its batch and label columns set as
    :func:`sc_celltherapy.tl.map_to_reference` sets them) onto every member of ``bundle``.

    Parameters
    ----------
    bundle
        A loaded reference bundle.
    query
        The query AnnData as described above.
    train
        Whether the query brings batches the reference has not seen: surgery then trains
        their weights.
    max_epochs
        Surgery epochs per member (``None``: 5-50 by lot size).
    seed
        Member ``i`` trains with ``seed + i``.
    """
    n_members = len(bundle.member_dirs)
    epochs = max_epochs if max_epochs is not None else surgery_epochs(query.n_obs, n_members)
    batch_size = surgery_batch_size(query.n_obs)
    labels = list(bundle.manifest["labels"])
    k = bundle.manifest["oor"]["k"]
    ref_latent, _, spacing = bundle.reference_latent()
    probs, ratios, latent = [], [], None
    with timed(f"mapping {query.n_obs} cells onto {bundle.name} ({n_members} member(s))"):
        for i, model_dir in enumerate(bundle.member_dirs):
            member_query = query.copy()  # surgery prepares and registers its query in place
            model = map_query(
                member_query,
                str(model_dir),
                train=train,
                max_epochs=epochs,
                batch_size=batch_size,
                seed=seed + i,
            )
            member_latent = latent_of(model, member_query)
            latent = member_latent if latent is None else latent
            probs.append(predict_probs(model, member_query, labels))
            ratios.append(local_outlier_ratio(ref_latent[i], member_latent, spacing[i], k=k))
    return QueryResult(
        latent=latent,
        probs=np.mean(probs, axis=0),
        latent_ratio=np.mean(ratios, axis=0),
        epochs=epochs if train else 0,
        batch_size=batch_size if train else 0,
        accelerator=accelerator(),
    )
