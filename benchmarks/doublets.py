"""Doublet scoring at scale: scrublet's PCA fitted on sparse z-scores (shipped) against
scanpy's own dense one (the previous code), and whether the release's numbers stay put.

Scanpy's scrublet mean-centres the z-scored counts of the lot and of its simulated doublets
(three times the lot's cells), which turns them dense; that was most of a large release's peak
memory. ``sct.pp.doublets`` now fits the same PCA on the sparse, variance-scaled counts
(scikit-learn's arpack solver centres implicitly), so only rounding differs.

Lots are resampled from the 3,138 labelled CAR-T cells (``cart_labelled_dev.h5ad``, counts
thinned to 80%, as ``release.py`` does). Each measurement is a fresh process (peak memory = its
own VmHWM):

- scores: ``sct.pp.doublets`` as shipped (sparse PCA), the previous dense path (scanpy's
  ``sc.pp.scrublet`` with the same settings, ``log_transform=True``), and plain
  ``sc.pp.scrublet`` with its defaults (the peer), same seed and expected rate; time, peak
  memory, and how far the scores agree with ours (correlation, identical scores, shared top 5%
  and 1%);
- release: ``sct.release.run`` of the 20,000-cell lot as shipped and with the dense path; the
  release's numbers (cells assessed, every fraction of the purity table with its interval,
  verdict) side by side. No number may leave its interval.

Prints a table and writes ``benchmarks/results/doublets.json``.
Run: ``python benchmarks/doublets.py [--n-cells 20000 50000]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    machine,
    peak_rss_mb,
    run_child,
    write_json,
    write_resampled_lot,
)

SEED = 0
RATE = 0.08  # the expected rate of a 10,000-cell channel: the same for both sides


def _dense_scores(counts, rate: float, random_state: int):
    """The previous ``_scrublet_scores``: scanpy's scrublet end to end (dense centred PCA)."""
    import anndata as ad
    import numpy as np
    import scanpy as sc

    sub = ad.AnnData(X=counts.copy())
    with np.errstate(divide="ignore", invalid="ignore"):
        sc.pp.scrublet(
            sub,
            expected_doublet_rate=rate,
            threshold=np.inf,
            log_transform=True,
            random_state=random_state,
            verbose=False,
            use_approx_neighbors=counts.shape[0] > 50_000,
        )
    return sub.obs["doublet_score"].to_numpy(), np.asarray(
        sub.uns["scrublet"]["doublet_scores_sim"]
    )


def child(which: str, lot: str, out: str) -> dict:
    """One measurement in this process: ``ours``/``dense``/``peer`` scores, or
    ``release``/``release_dense``."""
    import anndata as ad
    import numpy as np

    if which.endswith("dense"):
        from sc_celltherapy.pp import _doublets

        _doublets._scrublet_scores = _dense_scores
    start = time.perf_counter()
    if which in ("ours", "dense", "peer"):
        adata = ad.read_h5ad(lot)
        if which != "peer":
            import sc_celltherapy as sct

            sct.pp.doublets(adata, expected_rate=RATE, random_state=SEED)
            scores = adata.obs["sct_doublet_score"].to_numpy()
        else:
            import scanpy as sc

            sc.pp.scrublet(
                adata, expected_doublet_rate=RATE, random_state=SEED, verbose=False
            )  # scanpy's defaults: centred PCA, its own threshold
            scores = adata.obs["doublet_score"].to_numpy()
        np.save(out, scores)
        return {"seconds": time.perf_counter() - start, "peak_rss_mb": peak_rss_mb()}
    import sc_celltherapy as sct

    rel = sct.release.run(
        lot, out_dir=out, lot_id="SCALE", operator="benchmark", product="car_t_demo", seed=SEED
    )
    r = rel.results
    return {
        "seconds": time.perf_counter() - start,
        "peak_rss_mb": peak_rss_mb(),
        "verdict": rel.verdict,
        "n_assessed": r["qc"]["n_assessed"],
        "n_doublets": r["qc"]["doublets"]["n_called"],
        "purity": [
            {"name": name, **{k: row[k] for k in ("n", "fraction", "ci_low", "ci_high", "verdict")}}
            for name, row in {
                "target": r["purity"]["target"],
                **r["purity"]["impurities"],
            }.items()
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-cells", type=int, nargs="+", default=[20_000, 50_000])
    parser.add_argument("--release-cells", type=int, default=20_000)
    args = parser.parse_args()
    import numpy as np

    rows, releases = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for n in sorted(set(args.n_cells) | {args.release_cells}):
            lot = tmp / f"lot_{n}.h5ad"
            write_resampled_lot(lot, n, SEED)
            scores = {}
            # the dense PCA holds three times the lot: above 30,000 cells it would not fit this
            # machine's memory beside the rest, so only ours runs there
            for which in ("ours", "dense", "peer") if n <= 30_000 else ("ours",):
                out = tmp / f"{which}_{n}.npy"
                r = run_child("doublets", "--child", which, str(lot), str(out))
                scores[which] = np.load(out)
                rows.append({"n_cells": n, "method": which, **r})
                print(
                    f"  {n:>7,} {which:<9} {r['seconds']:7.1f} s {r['peak_rss_mb']:8.0f} MB",
                    flush=True,
                )
            for other in ("dense", "peer"):
                if other not in scores:
                    break
                a, b = scores["ours"], scores[other]
                top = {}
                for q in (0.95, 0.99):
                    sa, sb = a > np.quantile(a, q), b > np.quantile(b, q)
                    share = float((sa & sb).sum() / sa.sum())
                    top[f"top_{round(100 * (1 - q))}pct_overlap"] = share
                row = next(r for r in rows if r["n_cells"] == n and r["method"] == other)
                row["agreement_with_ours"] = {
                    "pearson": float(np.corrcoef(a, b)[0, 1]),
                    "identical": float(np.mean(a == b)),
                    **top,
                }
            if n == args.release_cells:
                for which in ("release", "release_dense"):
                    out = tmp / f"{which}_{n}"
                    releases[which] = run_child("doublets", "--child", which, str(lot), str(out))
                    print(f"  {n:>7,} {which:<16} {releases[which]['seconds']:7.1f} s", flush=True)
    print()
    labels = {
        "ours": "sct.pp.doublets (sparse PCA)",
        "dense": "previous (scanpy's dense PCA)",
        "peer": "sc.pp.scrublet, its defaults",
    }
    print(f"{'cells':>7} {'method':<30} {'seconds':>8} {'peak MB':>8}  scores against ours")
    for r in rows:
        label = labels[r["method"]]
        agree = r.get("agreement_with_ours")
        text = (
            f"r = {agree['pearson']:.3f}, identical {agree['identical']:.4f}, "
            f"top 5% shared {agree['top_5pct_overlap']:.2f}, "
            f"top 1% shared {agree['top_1pct_overlap']:.2f}"
            if agree
            else ""
        )
        print(
            f"{r['n_cells']:>7,} {label:<30} {r['seconds']:>8.1f} {r['peak_rss_mb']:>8.0f}  {text}"
        )
    ratios = {}
    for n in sorted({r["n_cells"] for r in rows}):
        by = {r["method"]: r for r in rows if r["n_cells"] == n}
        if "peer" in by and "ours" in by:
            ratios[n] = {
                "time_ours_over_peer": by["ours"]["seconds"] / by["peer"]["seconds"],
                "memory_ours_over_peer": by["ours"]["peak_rss_mb"] / by["peer"]["peak_rss_mb"],
            }
            print(
                f"ratio ours / scanpy at {n:,} cells: time {ratios[n]['time_ours_over_peer']:.2f}, "
                f"peak memory {ratios[n]['memory_ours_over_peer']:.2f}"
            )
    print()
    print(f"release of {args.release_cells:,} cells: previous dense path against shipped")
    moved = []
    if releases:
        b, a = releases["release"], releases["release_dense"]
        print(
            f"  verdict {a['verdict']} / {b['verdict']}; assessed {a['n_assessed']} / "
            f"{b['n_assessed']}; doublets {a['n_doublets']} / {b['n_doublets']}; peak "
            f"{a['peak_rss_mb']:.0f} / {b['peak_rss_mb']:.0f} MB; {a['seconds']:.0f} / "
            f"{b['seconds']:.0f} s"
        )
        for ra, rb in zip(a["purity"], b["purity"], strict=True):
            inside = rb["ci_low"] <= ra["fraction"] <= rb["ci_high"]
            if not inside or ra["verdict"] != rb["verdict"]:
                moved.append(ra["name"])
            print(
                f"  {ra['name']:<28} {100 * ra['fraction']:7.3f}% / {100 * rb['fraction']:7.3f}% "
                f"[{100 * rb['ci_low']:.3f}, {100 * rb['ci_high']:.3f}]  inside: {inside}"
            )
        print(f"  rows outside the shipped run's interval or with another verdict: {moved}")
        print(f"  shipped keeps the previous numbers: {not moved}")
    path = write_json(
        "doublets",
        {
            "seed": SEED,
            "expected_rate": RATE,
            "machine": machine(),
            "rows": rows,
            "ratios": ratios,
            "release": releases,
            "release_rows_moved": moved,
            "numbers_kept": not moved,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(child(*sys.argv[2:5])))
    else:
        main()
