"""Time and peak memory of a whole release against lot size, per step, ours beside the peer.

Lots of 10,000, 50,000 and 100,000 cells are resampled from the 3,138 labelled CAR-T cells
(``cart_labelled_dev.h5ad``, counts thinned to 80% so no two cells are identical, as
``release.py`` does) and pooled the way large lots are: 10x channels of at most 12,500 cells
(``obs["channel"]``, doublets scored per channel). Reference: the embedded ``pbmc_demo`` bundle,
built beforehand (not timed).

- ours: ``sct.release.run`` (QC with doublets, mapping, identity, purity, clustering and UMAP,
  figures, report, results.json, lot.h5ad), with time and peak RSS per step and per sub-step the
  package logs (``_scale_child.py``);
- peer: the plain scanpy + scvi-tools chain (scanpy QC and scrublet per channel, surgery on the
  bundle's first model, normalise, HVG, PCA, neighbours, Leiden, UMAP, write), same seed.

Each run is a fresh process; peak memory is its VmHWM. The peer is not run at a size where its
peak, extrapolated linearly from the last size it ran, would exceed ``--peer-max-gb`` (the
machine would swap or kill it); the table says so. Targets (issue 20): a 100,000-cell release
within 8 GB, and time per cell at 100k no more than 1.2x that at 10k.

Prints a table, writes ``benchmarks/results/scale.json`` and ``scale.png`` (seconds and peak
memory against cells). Run: ``python benchmarks/scale.py [--n-cells 10000 50000 100000]``.

``--gpu`` (on a machine with a CUDA device; the CPU grid above is not rerun) measures the GPU
path instead and writes ``benchmarks/results/scale_gpu.json``: ``sct.tl.map_to_reference`` of
lots of 100,000 and 1,000,000 cells (on the bundle's genes) on the GPU, with prediction and
latent inference cells/s timed apart (``_gpu_child.py``); the 100,000-cell lot again on the
CPU, with per-cell label agreement and label fractions of both; and a whole 10,000-cell release
on each device, whose verdicts and purity rows must agree. Targets (issue 20): prediction at
least 200,000 cells/s, a 1,000,000-cell lot mapped in under 2 minutes, no verdict changed.
Training cells/s of a 200,000-cell reference on the GPU: ``atlas_scale.py --gpu``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine, run_child, write_json, write_resampled_lot  # noqa: E402

SEED = 0
CHANNEL_CELLS = 12_500  # about the most cells one 10x channel recovers
GPU_MAP_CELLS = [100_000, 1_000_000]
GPU_CPU_MAX_CELLS = 100_000  # the largest lot also mapped on the CPU, for agreement
GPU_RELEASE_CELLS = 10_000


def _plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for method, style in (("ours", "o-"), ("peer", "s--")):
        pts = sorted((r["n_cells"], r) for r in runs if r["method"] == method)
        if not pts:
            continue
        x = [n for n, _ in pts]
        axes[0].plot(x, [r["total_s"] for _, r in pts], style, label=method)
        axes[1].plot(x, [r["peak_rss_mb"] / 1024 for _, r in pts], style, label=method)
    axes[0].set(xlabel="cells in the lot", ylabel="seconds", title="release time")
    axes[1].set(xlabel="cells in the lot", ylabel="peak memory (GB)", title="peak memory")
    axes[1].axhline(8, color="grey", lw=0.8, ls=":")
    for ax in axes:
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-cells", type=int, nargs="+", default=[10_000, 50_000, 100_000])
    parser.add_argument("--peer-max-gb", type=float, default=20.0)
    parser.add_argument("--no-peer", action="store_true")
    parser.add_argument("--gpu", action="store_true", help="the GPU measures instead (above)")
    parser.add_argument("--gpu-map-cells", type=int, nargs="+", default=GPU_MAP_CELLS)
    parser.add_argument("--gpu-device", default="gpu", help="'cpu' checks the script without one")
    args = parser.parse_args()
    if args.gpu:
        gpu_main(args.gpu_map_cells, args.gpu_device)
        return
    import sc_celltherapy as sct

    bundle = sct.atlas.load("pbmc_demo").path  # built once, not timed
    runs: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        peer_last = None
        for n in sorted(args.n_cells):
            lot = tmp / f"lot_{n}.h5ad"
            write_resampled_lot(lot, n, SEED, channel_cells=CHANNEL_CELLS)
            methods = [("ours", "sct")]
            if not args.no_peer:
                methods.append(("peer", "peer"))
            for method, which in methods:
                if method == "peer" and peer_last is not None:
                    predicted = peer_last[1] * n / peer_last[0] / 1024
                    if predicted > args.peer_max_gb:
                        runs.append(
                            {
                                "n_cells": n,
                                "method": "peer",
                                "not_run": f"predicted peak {predicted:.0f} GB > "
                                f"{args.peer_max_gb:.0f} GB on this machine",
                            }
                        )
                        print(f"  {n:>7,} peer  not run (predicted {predicted:.0f} GB)", flush=True)
                        continue
                out = tmp / f"{method}_{n}"
                r = run_child("_scale_child", which, str(lot), str(bundle), str(out), str(SEED))
                runs.append({"n_cells": n, "method": method, **r})
                if method == "peer":
                    peer_last = (n, r["peak_rss_mb"])
                print(
                    f"  {n:>7,} {method:<5} {r['total_s']:7.1f} s {r['peak_rss_mb']:8.0f} MB",
                    flush=True,
                )
            os.remove(lot)
    _report(runs)


def gpu_main(map_cells: list[int], device: str) -> None:
    """The GPU measures of the module docstring; ``device="cpu"`` runs them on the CPU to
    check the script where no GPU is present (the comparison is then CPU against CPU)."""
    import numpy as np

    import sc_celltherapy as sct

    bundle = sct.atlas.load("pbmc_demo")
    maps, agreement, releases = [], [], {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for n in sorted(map_cells):
            lot = tmp / f"map_{n}.h5ad"
            write_resampled_lot(
                lot, n, SEED, channel_cells=CHANNEL_CELLS, genes=bundle.manifest["genes"]
            )
            devices = [device] + (["cpu"] if n <= GPU_CPU_MAX_CELLS else [])
            for d in devices:
                r = run_child("_gpu_child", d, str(lot), str(bundle.path), str(tmp / f"{d}{n}"), str(SEED))  # fmt: skip
                maps.append(r)
                print(f"  {n:>9,} {d}: mapped in {r['map_to_reference_s']:.1f} s, prediction "
                      f"{r['prediction_cells_per_s']:,.0f} cells/s", flush=True)  # fmt: skip
            if len(devices) == 2:
                a, b = (np.load(tmp / f"{d}{n}" / "labels.npy", allow_pickle=True) for d in devices)
                fa, fb = maps[-2]["label_fractions"], maps[-1]["label_fractions"]
                agreement.append(
                    {
                        "n_cells": n,
                        "devices": devices,
                        "labels_identical": float(np.mean(a == b)),
                        "largest_fraction_difference": max(
                            abs(fa.get(k, 0.0) - fb.get(k, 0.0)) for k in set(fa) | set(fb)
                        ),
                    }
                )
            os.remove(lot)
        lot = tmp / "release.h5ad"
        write_resampled_lot(lot, GPU_RELEASE_CELLS, SEED, channel_cells=CHANNEL_CELLS)
        for d in dict.fromkeys([device, "cpu"]):
            r = run_child("_scale_child", "sct", str(lot), str(bundle.path), str(tmp / f"release_{d}"), str(SEED), d)  # fmt: skip
            releases[d] = {k: r[k] for k in ("verdict", "purity", "n_assessed", "total_s")}
    same = None  # one device only (a check of the script): nothing compared
    if len(releases) == 2:
        same = all(releases[device][k] == releases["cpu"][k] for k in ("verdict", "n_assessed"))
    big = [m for m in maps if m["device"] == device and m["n_cells"] == max(map_cells)][0]
    targets = {
        "prediction_cells_per_s_min": min(
            m["prediction_cells_per_s"] for m in maps if m["device"] == device
        ),
        "prediction_at_least_200k_per_s": all(
            m["prediction_cells_per_s"] >= 200_000 for m in maps if m["device"] == device
        ),
        "largest_lot_map_s": big["map_to_reference_s"],
        "largest_lot_under_2_min": big["map_to_reference_s"] < 120,
        "release_verdict_unchanged": same,
    }
    print()
    print(f"{'cells':>9} {'device':<6} {'map s':>7} {'map cells/s':>12} {'predict cells/s':>16} "
          f"{'latent cells/s':>15} {'peak MB':>8}")  # fmt: skip
    for m in maps:
        print(f"{m['n_cells']:>9,} {m['device']:<6} {m['map_to_reference_s']:>7.1f} "
              f"{m['map_cells_per_s']:>12,.0f} {m['prediction_cells_per_s']:>16,.0f} "
              f"{m['latent_cells_per_s']:>15,.0f} {m['peak_rss_mb']:>8.0f}")  # fmt: skip
    for a in agreement:
        print(f"{a['n_cells']:,} cells, {' vs '.join(a['devices'])}: labels identical "
              f"{a['labels_identical']:.4f}, largest label-fraction difference "
              f"{a['largest_fraction_difference']:.4f}")  # fmt: skip
    for d, r in releases.items():
        print(f"release of {GPU_RELEASE_CELLS:,} cells on {d}: {r['verdict']}, "
              f"{r['n_assessed']} assessed, {r['total_s']:.1f} s")  # fmt: skip
    print(f"targets: {targets}")
    path = write_json(
        "scale_gpu",
        {
            "seed": SEED,
            "device_asked": device,
            "machine": machine(),
            "maps": maps,
            "agreement": agreement,
            "releases": releases,
            "targets": targets,
        },
    )
    print(f"wrote {path}")


def _report(runs: list[dict]) -> None:
    done = [r for r in runs if "not_run" not in r]
    print()
    print(f"{'cells':>7} {'method':<5} {'step':<58} {'seconds':>8} {'peak MB':>8}")
    for r in done:
        for st in r["steps"]:
            name = ("  " * st["depth"] + st["step"])[:58]
            peak = st["peak_mb"]
            peak = "-" if peak is None or peak != peak else f"{peak:.0f}"  # NaN: not separable
            print(f"{r['n_cells']:>7,} {r['method']:<5} {name:<58} {st['seconds']:>8.1f} {peak:>8}")
    print()
    print(
        f"{'cells':>7} {'ours s':>8} {'peer s':>8} {'time ratio':>10} {'ours MB':>8} "
        f"{'peer MB':>8} {'mem ratio':>9} {'ours ms/cell':>12}"
    )
    summary = []
    for n in sorted({r["n_cells"] for r in runs}):
        by = {r["method"]: r for r in runs if r["n_cells"] == n}
        ours, peer = by["ours"], by.get("peer", {})
        row = {
            "n_cells": n,
            "ours_s": ours["total_s"],
            "ours_peak_mb": ours["peak_rss_mb"],
            "ours_ms_per_cell": 1000 * ours["total_s"] / n,
            "peer_s": peer.get("total_s"),
            "peer_peak_mb": peer.get("peak_rss_mb"),
            "peer_not_run": peer.get("not_run"),
        }
        if row["peer_s"]:
            row["time_ours_over_peer"] = row["ours_s"] / row["peer_s"]
            row["memory_ours_over_peer"] = row["ours_peak_mb"] / row["peer_peak_mb"]
        summary.append(row)

        def fmt(v, spec):
            return format(v, spec) if v is not None else "-"

        print(
            f"{n:>7,} {row['ours_s']:>8.1f} {fmt(row['peer_s'], '8.1f'):>8} "
            f"{fmt(row.get('time_ours_over_peer'), '10.2f'):>10} {row['ours_peak_mb']:>8.0f} "
            f"{fmt(row['peer_peak_mb'], '8.0f'):>8} "
            f"{fmt(row.get('memory_ours_over_peer'), '9.2f'):>9} {row['ours_ms_per_cell']:>12.2f}"
        )
        if row["peer_not_run"]:
            print(f"        peer not run: {row['peer_not_run']}")
    targets = {}
    if len(summary) > 1:
        first, last = summary[0], summary[-1]
        targets = {
            "largest_lot_cells": last["n_cells"],
            "largest_lot_peak_mb": last["ours_peak_mb"],
            "within_8_gb": last["ours_peak_mb"] <= 8 * 1024,
            "time_per_cell_ratio_largest_over_smallest": last["ours_ms_per_cell"]
            / first["ours_ms_per_cell"],
        }
        print(
            f"largest lot {last['n_cells']:,}: peak {last['ours_peak_mb'] / 1024:.2f} GB (target "
            f"8 GB); time per cell {targets['time_per_cell_ratio_largest_over_smallest']:.2f}x "
            f"that at {first['n_cells']:,} (target 1.2x)"
        )
    _plot(done, RESULTS / "scale.png")
    path = write_json(
        "scale",
        {
            "seed": SEED,
            "channel_cells": CHANNEL_CELLS,
            "machine": machine(),
            "summary": summary,
            "targets": targets,
            "runs": runs,
        },
    )
    print(f"wrote {path} and {RESULTS / 'scale.png'}")


if __name__ == "__main__":
    main()
