"""Mapping speed of one lot on one device, in a fresh process (``scale.py --gpu``).

Usage: ``python -m _gpu_child DEVICE LOT.h5ad BUNDLE_DIR OUT_DIR SEED``; prints one JSON line
last. ``sct.tl.map_to_reference`` maps the lot onto every member of the bundle (surgery,
prediction, latent, out-of-reference evidence) with the package's timed steps; then, on the
first member alone, prediction and latent inference are timed apart (cells/s), on the query
loaded without surgery training (inference cost does not depend on the batch weights). The
lot's labels are written to ``OUT_DIR/labels.npy`` so that devices can be compared per cell.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

from _common import peak_rss_mb
from _scale_child import CHANNEL_KEY, StepMeter, _TimedLines


def run(device: str, lot: Path, bundle_dir: Path, out: Path, seed: int) -> dict:
    import anndata as ad
    import numpy as np

    import sc_celltherapy as sct
    from sc_celltherapy._logging import logger
    from sc_celltherapy.atlas import _model

    sct.settings.accelerator = device
    meter = StepMeter()
    logger.addHandler(_TimedLines(meter))
    logger.setLevel(logging.INFO)
    for handler in logger.handlers[:-1]:
        handler.setLevel(logging.WARNING)
    with meter.step("read"):
        adata = ad.read_h5ad(lot)
    bundle = sct.atlas.load(bundle_dir)
    start = time.perf_counter()
    with meter.step("map_to_reference (total)"):
        sct.tl.map_to_reference(adata, bundle, batch_key=CHANNEL_KEY, seed=seed)
    map_s = time.perf_counter() - start
    labels = adata.obs["sct_ref_label"].astype(str).to_numpy()
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "labels.npy", labels)

    # the query as a scvi-tools user prepares it (the lot's counts, which mapping leaves in
    # .X; the bundle's genes)
    manifest = bundle.manifest
    query = adata[:, adata.var_names.intersection(manifest["genes"])].copy()
    query.obs[manifest["labels_key"]] = "Unknown"
    if manifest.get("batch_key"):
        query.obs[manifest["batch_key"]] = query.obs[CHANNEL_KEY].astype(str).to_numpy()
    with meter.step("load query on member 1 (no training)"):
        model = _model.map_query(
            query, str(bundle.member_dirs[0]), train=False, max_epochs=0, batch_size=128, seed=seed
        )
    timings = {}
    for name, call in (
        ("prediction", lambda: _model.predict_probs(model, query, list(manifest["labels"]))),
        ("latent", lambda: _model.latent_of(model, query)),
    ):
        call()  # once to warm the device (kernels, allocator)
        with meter.step(f"{name} (member 1, warm)"):
            t = time.perf_counter()
            call()
            timings[name] = time.perf_counter() - t
    n = adata.n_obs
    return {
        "device": device,
        "accelerator_used": _model.accelerator(),
        "n_cells": n,
        "map_to_reference_s": map_s,
        "map_cells_per_s": n / map_s,
        "prediction_cells_per_s": n / timings["prediction"],
        "latent_cells_per_s": n / timings["latent"],
        "inference_batch_size": _model.inference_batch_size(),
        "label_fractions": {
            str(k): float(c / n)
            for k, c in zip(*np.unique(labels, return_counts=True), strict=True)
        },
        "peak_rss_mb": peak_rss_mb(),
        "steps": meter.stop(),
    }


if __name__ == "__main__":
    device, lot, bundle, out, seed = sys.argv[1:6]
    print(json.dumps(run(device, Path(lot), Path(bundle), Path(out), int(seed))))
