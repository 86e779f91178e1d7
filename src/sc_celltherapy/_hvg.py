"""Highly variable genes (seurat_v3 on counts), robust to small batches."""

from __future__ import annotations

from anndata import AnnData

from ._logging import logger
from ._validate import InputError

SPANS = (0.3, 0.5, 1.0)


def seurat_v3_hvg(
    adata: AnnData, *, n_top_genes: int, layer: str | None, batch_key: str | None, subset: bool
) -> dict:
    """scanpy's seurat_v3 selection; returns the settings used (for ``uns``).

    Its loess fails on the discrete means of a small batch ("reciprocal condition number");
    a wider span is the remedy, so the span widens before giving up with a clear error.
    """
    import scanpy as sc

    for span in SPANS:
        try:
            sc.pp.highly_variable_genes(
                adata,
                n_top_genes=n_top_genes,
                flavor="seurat_v3",
                layer=layer,
                batch_key=batch_key,
                subset=subset,
                span=span,
            )
        except ValueError as err:
            if "reciprocal condition number" not in str(err):
                raise
            logger.warning("seurat_v3 loess failed with span=%s; retrying wider", span)
            continue
        return {"flavor": "seurat_v3", "n_top_genes": n_top_genes, "span": span}
    msg = (
        "Highly variable gene selection failed for every loess span; a batch may have too few "
        f"cells. Merge small batches of {batch_key!r} or pass batch_key=None."
    )
    raise InputError(msg)
