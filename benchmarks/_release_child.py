"""One measured run in a fresh process: the sc_celltherapy release, or the peer's plain chain.

Usage: ``python -m _release_child {sct,peer} LOT.h5[ad] BUNDLE_DIR OUT_DIR SEED [REPEAT]``;
prints one JSON line (import seconds, the first run's per-step seconds and total, peak memory,
and with REPEAT > 1 every run's totals: later runs show the cost without one-time compilation)
last.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from _common import peak_rss_mb


def run_sct(lot: Path, bundle: Path, out: Path, seed: int) -> dict:
    import sc_celltherapy as sct

    start = time.perf_counter()
    release = sct.release.run(
        lot,
        out_dir=out,
        lot_id=lot.stem,
        operator="benchmark",
        product="car_t_demo",
        reference=bundle,
        seed=seed,
    )
    total = time.perf_counter() - start
    run = release.results["run"]
    return {
        "steps_s": run["timings_s"],
        "total_s": total,
        "n_cells_assessed": release.results["qc"]["n_assessed"],
        "verdict": release.verdict,
    }


def peer_surgery(adata, bundle: Path, seed: int, *, batches) -> None:
    """What a scvi-tools user writes to map a lot: scArches surgery on the bundle's first
    ensemble member (one scANVI model) with the same epochs, then predictions. ``batches``:
    the lot's batch label(s) in the reference's batch column. Adds ``obsm["X_scanvi"]``,
    ``obs["label"]`` and ``obs["prob"]``."""
    import numpy as np
    import scvi

    from sc_celltherapy.atlas._model import surgery_epochs

    manifest = json.loads((bundle / "bundle.json").read_text())
    query = adata[:, adata.var_names.intersection(manifest["genes"])].copy()
    query.obs[manifest["labels_key"]] = "Unknown"
    if manifest.get("batch_key"):
        query.obs[manifest["batch_key"]] = batches
    model_dir = str(bundle / "models" / "0")
    scvi.model.SCANVI.prepare_query_anndata(query, model_dir)
    scvi.settings.seed = seed
    model = scvi.model.SCANVI.load_query_data(query, model_dir, accelerator="cpu")
    model.train(
        max_epochs=surgery_epochs(query.n_obs),
        plan_kwargs={"weight_decay": 0.0},
        accelerator="cpu",
        enable_progress_bar=False,
    )
    adata.obsm["X_scanvi"] = model.get_latent_representation()
    probs = model.predict(soft=True)
    adata.obs["label"] = probs.idxmax(axis=1).to_numpy()
    adata.obs["prob"] = np.asarray(probs.max(axis=1))


def run_peer(lot: Path, bundle: Path, out: Path, seed: int) -> dict:
    """What a scanpy + scvi-tools user writes for the same chain, without the assay around it:
    scanpy QC (qc metrics, a 200-gene floor, scrublet), scArches surgery on the same reference
    model with the same epochs, predictions, and the annotated lot written to disk."""
    import anndata as ad
    import scanpy as sc

    steps = {}
    t = time.perf_counter()
    adata = sc.read_10x_h5(lot, gex_only=False) if lot.suffix == ".h5" else ad.read_h5ad(lot)
    adata.var_names_make_unique()
    steps["read"] = time.perf_counter() - t
    t = time.perf_counter()
    adata.var["mt"] = adata.var_names.str.startswith("MT-")
    sc.pp.calculate_qc_metrics(adata, qc_vars=["mt"], inplace=True, percent_top=None)
    sc.pp.filter_cells(adata, min_genes=200)
    adata = adata[adata.obs["pct_counts_mt"] < 20].copy()
    sc.pp.scrublet(adata, random_state=seed)
    adata = adata[~adata.obs["predicted_doublet"]].copy()
    steps["qc"] = time.perf_counter() - t
    t = time.perf_counter()
    peer_surgery(adata, bundle, seed, batches="query_lot")
    steps["map"] = time.perf_counter() - t
    t = time.perf_counter()
    adata.write_h5ad(out / "lot.h5ad")
    steps["write"] = time.perf_counter() - t
    return {"steps_s": steps, "total_s": sum(steps.values()), "n_cells_assessed": adata.n_obs}


if __name__ == "__main__":
    which, lot, bundle, out, seed = sys.argv[1:6]
    repeat = int(sys.argv[6]) if len(sys.argv) > 6 else 1
    start = time.perf_counter()
    if which == "sct":
        import sc_celltherapy  # noqa: F401
    else:
        import scanpy  # noqa: F401
        import scvi  # noqa: F401
    import_s = time.perf_counter() - start
    fn = run_sct if which == "sct" else run_peer
    runs = []
    if repeat > 1:
        Path(out).mkdir(parents=True)
    for i in range(repeat):  # later runs in the same process: one-time compilation paid
        run_out = Path(out) / f"run{i}" if repeat > 1 else Path(out)
        if which == "peer":
            run_out.mkdir(parents=True)
        runs.append(fn(Path(lot), Path(bundle), run_out, int(seed)))
    result = runs[0] | {"import_s": import_s, "peak_rss_mb": peak_rss_mb()}
    if repeat > 1:
        result["repeats"] = [{"total_s": r["total_s"], "steps_s": r["steps_s"]} for r in runs]
    print(json.dumps(result))
