"""QC + clustering: sc_celltherapy against the same steps written in plain scanpy.

Run: ``python benchmarks/qc_cluster.py [--n-cells 50000]``. Each pipeline runs in its own fresh
process (so peak memory is its own), on the real CAR-T product and on a lot resampled from the
real CAR-T cells. Prints a table and writes ``benchmarks/results/qc_cluster.json``
(``qc_cluster_product.json`` with ``--n-cells 0``).
Target: our wrapper costs at most 15% more time and memory than plain scanpy.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402

from _common import machine, resample_thinned, run_child, shared_data, write_json  # noqa: E402

SEED = 0


def resampled_lot(n_cells: int, out: Path) -> Path:
    """``n_cells`` drawn with replacement from the real CAR-T cells (product + labelled), each
    binomially thinned to 80% of its counts so no two cells are identical."""
    import anndata as ad
    import scanpy as sc
    import scipy.sparse as sp

    data = shared_data()
    product = sc.read_10x_h5(data / "cart_product_P02_M0_filtered_feature_bc_matrix.h5")
    product.var_names_make_unique()
    labelled = ad.read_h5ad(data / "cart_labelled_dev.h5ad")
    labelled.var_names_make_unique()
    pool = sp.vstack([product.X, labelled[:, product.var_names].X]).tocsr()
    lot = ad.AnnData(X=resample_thinned(pool, n_cells, SEED), var=product.var.copy())
    lot.obs_names = [f"cell{i:07d}" for i in range(n_cells)]
    lot.write_h5ad(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n-cells", type=int, default=50_000, help="0: product lot only")
    parser.add_argument("--repeats", type=int, default=3, help="runs per side; medians reported")
    args = parser.parse_args()

    data = shared_data()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        inputs = {
            "CAR-T product (1,099 barcodes)": data
            / "cart_product_P02_M0_filtered_feature_bc_matrix.h5"
        }
        if args.n_cells:
            t0 = time.perf_counter()
            big = resampled_lot(args.n_cells, Path(tmp) / "resampled.h5ad")
            print(f"built the {args.n_cells}-cell lot in {time.perf_counter() - t0:.0f}s")
            inputs[f"resampled CAR-T ({args.n_cells:,} cells)"] = big
        for name, path in inputs.items():
            result = {"input": name}
            runs = {"scanpy": [], "sct": []}
            for _ in range(args.repeats):  # sides alternate so drift hits both alike
                for side in runs:
                    r = run_child("_qc_cluster_child", side, str(path), str(SEED))
                    runs[side].append(r)
                    print(
                        f"  {name} / {side}: {r['seconds']:.1f}s, {r['peak_mb']:.0f} MB", flush=True
                    )
            for side, rs in runs.items():
                result[side] = {
                    "seconds": float(np.median([r["seconds"] for r in rs])),
                    "peak_mb": float(np.median([r["peak_mb"] for r in rs])),
                    "cells_after_qc": rs[0]["cells_after_qc"],
                    "runs": rs,
                }
            result["time_ratio"] = result["sct"]["seconds"] / result["scanpy"]["seconds"]
            result["memory_ratio"] = result["sct"]["peak_mb"] / result["scanpy"]["peak_mb"]
            rows.append(result)

    header = (
        f"{'input':<34} {'scanpy s':>9} {'sct s':>8} {'time ratio':>10} "
        f"{'scanpy MB':>10} {'sct MB':>8} {'mem ratio':>9} {'cells kept (scanpy/sct)':>24}"
    )
    print("\n" + header + "\n" + "-" * len(header))
    for r in rows:
        kept = f"{r['scanpy']['cells_after_qc']}/{r['sct']['cells_after_qc']}"
        print(
            f"{r['input']:<34} {r['scanpy']['seconds']:>9.1f} {r['sct']['seconds']:>8.1f} "
            f"{r['time_ratio']:>10.2f} {r['scanpy']['peak_mb']:>10.0f} {r['sct']['peak_mb']:>8.0f} "
            f"{r['memory_ratio']:>9.2f} {kept:>24}"
        )
    path = write_json(
        "qc_cluster" if args.n_cells else "qc_cluster_product",
        {
            "seed": SEED,
            "repeats": args.repeats,
            "target": "ratio <= 1.15",
            "rows": rows,
            "machine": machine(),
        },
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
