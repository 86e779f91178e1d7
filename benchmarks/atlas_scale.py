"""``sct.atlas.build`` at atlas scale: peak memory, time per step and training cells/s.

A 200,000-cell reference is resampled from the 3,138 labelled CAR-T cells
(``cart_labelled_dev.h5ad``: real labels ``CellType1``, the five patients as batches; counts
thinned to 80% so no two cells are identical) and built with one member and a few epochs, in a
fresh process whose peak memory is its VmHWM. Epochs are cut because on this 2-core CPU a full
build of 200,000 cells takes hours; memory does not grow with epochs (minibatches stream from
the sparse matrix), and time per epoch is what the training cells/s measure. The peer is
scvi-tools' own scVI + scANVI training on the same cells with the same epochs (what a user
writes without the bundle: no HVG selection of ours, no cross-fitting, no calibration).

From cells/s the script estimates a full default build (3 members, 5 folds + final models,
scvi-tools' default epochs for that size) of 200,000 and 1,000,000 cells on this CPU, and on
a GPU when ``--gpu`` measured one. Prints a table, writes ``benchmarks/results/atlas_scale.json``
(``--gpu-only``: the GPU runs alone, into ``atlas_scale_gpu.json``, for a session whose device
time is short). Run: ``python benchmarks/atlas_scale.py [--n-cells 200000] [--epochs 2]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, peak_rss_mb, resample_thinned, run_child, shared_data, write_json  # noqa: E402

SEED = 0
LABELS, BATCH = "CellType1", "Patient"


def _reference(n_cells: int, path: Path) -> None:
    import anndata as ad

    src = ad.read_h5ad(shared_data() / "cart_labelled_dev.h5ad")
    import numpy as np

    rows = np.random.default_rng(SEED).integers(0, src.n_obs, n_cells)
    ref = ad.AnnData(
        X=resample_thinned(src.X.tocsr(), n_cells, SEED),
        var=src.var.copy(),
        obs=src.obs.iloc[rows][[LABELS, BATCH]].astype(str).reset_index(drop=True),
    )
    ref.obs_names = [f"cell{i:07d}" for i in range(n_cells)]
    ref.write_h5ad(path)


def child(which: str, path: str, out: str, epochs: int, accelerator: str) -> dict:
    """One build in this process: ``ours`` (sct.atlas.build) or ``peer`` (plain scvi-tools)."""
    import anndata as ad

    from _scale_child import StepMeter, _TimedLines

    meter = StepMeter()
    start = time.perf_counter()
    with meter.step("read"):
        ref = ad.read_h5ad(path)
    n = ref.n_obs
    if which == "ours":
        import logging

        import sc_celltherapy as sct
        from sc_celltherapy._logging import logger

        sct.settings.accelerator = accelerator
        logger.addHandler(_TimedLines(meter))
        logger.setLevel(logging.INFO)
        for handler in logger.handlers[:-1]:
            handler.setLevel(logging.WARNING)
        with meter.step("build (total)"):
            sct.atlas.build(
                ref,
                labels_key=LABELS,
                batch_key=BATCH,
                name="scale",
                version="0",
                out_dir=out,
                n_members=1,
                max_epochs=epochs,
                scanvi_max_epochs=epochs,
                seed=SEED,
            )
    else:
        import scanpy as sc
        import scvi

        with meter.step("highly variable genes"):
            sc.pp.highly_variable_genes(
                ref, n_top_genes=2000, flavor="seurat_v3", batch_key=BATCH, subset=True
            )
        scvi.settings.seed = SEED
        with meter.step("train scVI + scANVI"):
            scvi.model.SCVI.setup_anndata(ref, batch_key=BATCH, labels_key=LABELS)
            vae = scvi.model.SCVI(ref, n_latent=10)
            vae.train(max_epochs=epochs, accelerator=accelerator, enable_progress_bar=False)
            lvae = scvi.model.SCANVI.from_scvi_model(vae, unlabeled_category="Unknown")
            lvae.train(max_epochs=epochs, accelerator=accelerator, enable_progress_bar=False)
    steps = meter.stop()
    return {
        "n_cells": n,
        "epochs": epochs,
        "total_s": time.perf_counter() - start,
        "peak_rss_mb": peak_rss_mb(),
        "steps": steps,
    }


def _training_seconds(run: dict) -> float:
    """Seconds spent training the final models (ours) or the one pair (peer)."""
    for st in run["steps"]:
        if st["step"].startswith("training ") or st["step"] == "train scVI + scANVI":
            return st["seconds"]
    raise KeyError("no training step logged")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-cells", type=int, default=200_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--gpu", action="store_true", help="also build on the CUDA device")
    parser.add_argument(
        "--gpu-only",
        action="store_true",
        help="only on the CUDA device (writes atlas_scale_gpu.json; the CPU figures stay)",
    )
    args = parser.parse_args()
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        path = tmp / "reference.h5ad"
        _reference(args.n_cells, path)
        plan = [] if args.gpu_only else [("ours", "cpu"), ("peer", "cpu")]
        if args.gpu or args.gpu_only:
            plan += [("ours", "gpu"), ("peer", "gpu")]
        for which, acc in plan:
            key = f"{which}_{acc}"
            out = str(tmp / key)
            runs[key] = run_child(
                "atlas_scale", "--child", which, str(path), out, str(args.epochs), acc
            )
            r = runs[key]
            print(f"  {key:<9} {r['total_s']:8.1f} s {r['peak_rss_mb']:8.0f} MB", flush=True)
    print()
    print(f"{'run':<10} {'step':<64} {'seconds':>8} {'peak MB':>8}")
    for key, r in runs.items():
        for st in r["steps"]:
            name = ("  " * st["depth"] + st["step"])[:64]
            print(f"{key:<10} {name:<64} {st['seconds']:>8.1f} {st['peak_mb']:>8.0f}")
    print()
    estimates = {}
    for key, r in runs.items():
        # scVI and scANVI epochs over all cells, in the final training step
        cells_per_s = r["n_cells"] * 2 * r["epochs"] / _training_seconds(r)
        r["training_cells_per_s"] = cells_per_s
        if key.startswith("ours"):
            estimates[key] = {
                str(n): _full_build_hours(n, cells_per_s) for n in (200_000, 1_000_000)
            }
    print(f"{'run':<10} {'peak MB':>8} {'total s':>8} {'training cells/s':>17}")
    for key, r in runs.items():
        print(
            f"{key:<10} {r['peak_rss_mb']:>8.0f} {r['total_s']:>8.1f} "
            f"{r['training_cells_per_s']:>17.0f}"
        )
    device = "gpu" if args.gpu_only else "cpu"
    ratio = runs[f"ours_{device}"]["peak_rss_mb"] / runs[f"peer_{device}"]["peak_rss_mb"]
    print(f"peak memory ours / peer ({device}): {ratio:.2f}")
    for key, est in estimates.items():
        print(
            f"estimated full default build ({key}): 200k cells {est['200000']:.1f} h, "
            f"1M cells {est['1000000']:.1f} h"
        )
    path = write_json(
        "atlas_scale_gpu" if args.gpu_only else "atlas_scale",
        {
            "seed": SEED,
            "n_cells": args.n_cells,
            "epochs": args.epochs,
            "machine": machine(),
            "runs": runs,
            f"memory_ours_over_peer_{device}": ratio,
            "full_build_hours_estimate": estimates,
            "estimate_rule": (
                "3 members x (5 fold models on 4/5 of the cells + 1 final model on all), each "
                "scVI then scANVI with scvi-tools' default epochs min(400, 20000 * 400 / n) and "
                "20 scANVI epochs, at the measured training cells/s; surgery of the held-out "
                "folds not counted"
            ),
        },
    )
    print(f"wrote {path}")


def _full_build_hours(n_cells: int, cells_per_s: float) -> float:
    """A default 3-member, 5-fold build at ``cells_per_s`` (see ``estimate_rule``)."""
    scvi_epochs = min(400, round(20_000 * 400 / n_cells))
    per_member = (5 * 0.8 + 1) * n_cells * (scvi_epochs + 20)
    return 3 * per_member / cells_per_s / 3600


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        which, path, out, epochs, acc = sys.argv[2:7]
        print(json.dumps(child(which, path, out, int(epochs), acc)))
    else:
        main()
