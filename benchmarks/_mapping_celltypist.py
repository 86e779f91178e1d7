"""CellTypist side of the mapping benchmark, run by the CellTypist venv's python.

``python _mapping_celltypist.py REF.h5ad QUERY.h5ad OUT.npz SEED``

CellTypist 1.7.1 passes ``multi_class`` to scikit-learn's LogisticRegression, which scikit-learn
1.7 removed, so this runs in its own environment (``pip install celltypist==1.7.1
"scikit-learn<1.7"``) and imports nothing from sc_celltherapy. Training follows CellTypist's
custom-model tutorial: log1p of counts normalised to 10,000 per cell, ``feature_selection=True``.
"""

from __future__ import annotations

import json
import sys
import time
import warnings

import anndata as ad
import numpy as np

from _common import peak_rss_mb


def lognorm(adata):
    import scanpy as sc

    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    return adata


def main() -> None:
    warnings.simplefilter("ignore")
    ref_path, query_path, out, seed = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    import celltypist

    ref, query = lognorm(ad.read_h5ad(ref_path)), lognorm(ad.read_h5ad(query_path))
    np.random.seed(seed)  # noqa: NPY002  (CellTypist draws from the global generator)
    start = time.perf_counter()
    model = celltypist.train(ref, labels="CellType1", n_jobs=2, feature_selection=True)
    pred = celltypist.annotate(query, model=model, majority_voting=False)
    seconds = time.perf_counter() - start
    probs = pred.probability_matrix
    # CellTypist's probabilities are one-vs-rest sigmoids; the confidence of its call is the
    # probability of the predicted label
    np.savez(
        out,
        labels=np.asarray(probs.columns, dtype=str),
        probs=probs.to_numpy(),
        pred=np.asarray(pred.predicted_labels["predicted_labels"], dtype=str),
        score=1 - probs.to_numpy().max(axis=1),
    )
    peak_mb = peak_rss_mb()
    print(json.dumps({"seconds": seconds, "peak_mb": peak_mb, "calibration": None}))


if __name__ == "__main__":
    main()
