"""One side of the QC + clustering benchmark, in its own process.

``python -m _qc_cluster_child {scanpy|sct} PATH SEED`` prints a JSON line: seconds (read to
markers, imports excluded) and peak resident memory of this process.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import scanpy as sc
from scipy.stats import median_abs_deviation

from _common import peak_rss_mb


def plain_scanpy(path: str, seed: int):
    """The same steps, as a scanpy user writes them (sc-best-practices recipe)."""
    adata = sc.read_10x_h5(path) if path.endswith(".h5") else sc.read_h5ad(path)
    adata.var_names_make_unique()
    adata.var["mt"] = adata.var_names.str.startswith("MT-")
    adata.var["ribo"] = adata.var_names.str.startswith(("RPS", "RPL"))
    adata.var["hb"] = adata.var_names.str.contains("^HB[^(P)]")
    sc.pp.calculate_qc_metrics(
        adata, qc_vars=["mt", "ribo", "hb"], percent_top=[20], log1p=True, inplace=True
    )

    def outlier(metric, nmads, upper_only=False):
        m = adata.obs[metric]
        mad = median_abs_deviation(m, scale="normal")
        hi = m > np.median(m) + nmads * mad
        return hi if upper_only else hi | (m < np.median(m) - nmads * mad)

    bad = (
        outlier("log1p_total_counts", 5)
        | outlier("log1p_n_genes_by_counts", 5)
        | outlier("pct_counts_in_top_20_genes", 5)
        | outlier("pct_counts_mt", 3, True)
        | (adata.obs["n_genes_by_counts"] < 200)
    )
    adata = adata[~bad.to_numpy()].copy()
    sc.pp.scrublet(adata, log_transform=True, random_state=seed, verbose=False)
    adata = adata[~adata.obs["predicted_doublet"].to_numpy()].copy()
    adata.layers["lognorm"] = adata.X.copy()
    sc.pp.normalize_total(adata, target_sum=1e4, layer="lognorm")
    sc.pp.log1p(adata, layer="lognorm")
    sc.pp.highly_variable_genes(adata, n_top_genes=2000, flavor="seurat_v3")
    sc.pp.pca(adata, n_comps=30, layer="lognorm", mask_var="highly_variable", random_state=seed)
    sc.pp.neighbors(adata, n_neighbors=15, random_state=seed)
    sc.tl.leiden(adata, flavor="igraph", n_iterations=2, directed=False, random_state=seed)
    sc.tl.umap(adata, random_state=seed)
    sc.tl.rank_genes_groups(adata, "leiden", method="wilcoxon", layer="lognorm", use_raw=False)
    return adata


def ours(path: str, seed: int):
    import sc_celltherapy as sct

    adata = sct.io.read(path)
    sct.pp.qc_metrics(adata)
    sct.pp.flag_low_quality(adata)
    sct.pp.doublets(adata, random_state=seed)
    sct.pp.remove_flagged(adata)
    sct.tl.cluster(adata, random_state=seed)
    return adata


def main() -> None:
    import warnings

    warnings.simplefilter("ignore")
    side, path, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if side == "sct":
        import sc_celltherapy  # noqa: F401  (imports are not timed on either side)
    start = time.perf_counter()
    adata = (ours if side == "sct" else plain_scanpy)(path, seed)
    seconds = time.perf_counter() - start
    peak_mb = peak_rss_mb()
    print(json.dumps({"seconds": seconds, "peak_mb": peak_mb, "cells_after_qc": adata.n_obs}))


if __name__ == "__main__":
    main()
