"""Label sets and calibration on donors left out of both: the rules compared on one bundle's
held-out predictions.

A bundle built on the five dev patients of ``cart_labelled_dev.h5ad`` stores the out-of-fold
predictions its calibration was fitted on (every cell predicted by models that never saw its
patient). Here each patient in turn is the new donor, and every three of the other four are
the bundle's donors: the calibration and the label-set thresholds are fitted on those three
(``fit_across_donors``, as ``atlas.build`` does) and measured on the new one. The label-set
rules compared at alpha = 0.1:

- ``one threshold``: the per-donor quantile over all held-out cells (the rule up to pbmc_demo
  1.6);
- ``class-conditional``: each label's own quantile (Mondrian), the per-donor one for labels
  with too few cells;
- ``union`` (the rule now): a label is in the set if either admits it.

Reported per new donor (mean and worst over the four triples): accuracy, coverage, mean set
size, and the ECE of the calibrated top label (15 bins), with the calibration chosen among
every candidate (now, marker-detection stacking included) and among those without the
marker-detection evidence (before), and of the uncalibrated ensemble. The label-set rules are
compared on the calibration chosen now; the "before" coverage is the union rule's on the
calibration chosen before. This isolates the calibration and label-set step: the models saw four
patients, not three (``mapping_new_donors.py`` retrains per split).

Run: ``python benchmarks/label_sets.py [--work-dir DIR] [--max-epochs E]``; the bundle is
built once into the work dir (one member) and reused. Writes
``benchmarks/results/label_sets.json``.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import code_digest, machine, write_json  # noqa: E402
from mapping import labelled_cells  # noqa: E402

SEED = 0
ALPHA = 0.1
RULES = ["one threshold", "class-conditional", "union"]


def build_bundle(work: Path, max_epochs: int):
    import sc_celltherapy as sct

    out = work / "bundle_dev5"
    if out.exists():
        return sct.atlas.load(out), False
    cells = labelled_cells()
    bundle = sct.atlas.build(
        cells,
        labels_key="CellType1",
        batch_key="Patient",
        name="cart_dev5",
        version="0",
        out_dir=out,
        max_epochs=max_epochs,
        n_members=1,
        seed=SEED,
    )
    return bundle, True


def rule_thresholds(conformal: dict) -> dict[str, dict]:
    per_label = np.asarray(conformal["qhat_per_label"], dtype=float)
    own = per_label.copy()
    own[conformal["labels_without_own_threshold"]] = conformal["qhat"]
    return {
        "one threshold": {"qhat": conformal["qhat"]},
        # qhat = 0 leaves each label on its own threshold alone
        "class-conditional": {"qhat": 0.0, "qhat_per_label": own.tolist()},
        "union": conformal,
    }


def evaluate(pred: dict) -> dict:
    from sc_celltherapy.atlas._calibration import calibrate, fit_across_donors, prediction_sets
    from sc_celltherapy.atlas._calibration_error import expected_calibration_error, sampling_ece

    probs, y, donors = pred["probs"].astype(np.float64), pred["y"], pred["donors"].astype(str)
    probs /= probs.sum(axis=1, keepdims=True)
    ratio, markers = pred["oor_latent"], pred["marker_loglik"]
    rows = {}
    for new in np.unique(donors):
        others = [d for d in np.unique(donors) if d != new]
        test = donors == new
        runs = []
        for triple in itertools.combinations(others, 3):
            train = np.isin(donors, triple)
            cal = fit_across_donors(
                probs[train],
                y[train],
                donors[train],
                alpha=ALPHA,
                latent_ratio=ratio[train],
                marker_loglik=markers[train],
            )
            p = calibrate(probs[test], cal, latent_ratio=ratio[test], marker_loglik=markers[test])
            # the candidates before the marker-detection evidence, for comparison
            before = fit_across_donors(
                probs[train], y[train], donors[train], alpha=ALPHA, latent_ratio=ratio[train]
            )
            p_before = calibrate(probs[test], before, latent_ratio=ratio[test])
            sets_before = prediction_sets(p_before, before["conformal"])
            run = {
                "ece": expected_calibration_error(p, y[test]),
                "ece_chance_95": sampling_ece(p),  # what perfect calibration gives by chance
                "accuracy": float(np.mean(p.argmax(axis=1) == y[test])),
                "method": cal["method"],
                "ece_without_markers": expected_calibration_error(p_before, y[test]),
                "accuracy_without_markers": float(np.mean(p_before.argmax(axis=1) == y[test])),
                "coverage_without_markers": float(
                    sets_before[np.arange(test.sum()), y[test]].mean()
                ),
                "ece_uncalibrated": expected_calibration_error(probs[test], y[test]),
                "accuracy_uncalibrated": float(np.mean(probs[test].argmax(axis=1) == y[test])),
            }
            for rule, thresholds in rule_thresholds(cal["conformal"]).items():
                sets = prediction_sets(p, thresholds)
                run[rule] = {
                    "coverage": float(sets[np.arange(test.sum()), y[test]].mean()),
                    "set_size": float(sets.sum(axis=1).mean()),
                }
            runs.append(run)
        rows[new] = {
            "n_cells": int(test.sum()),
            "ece_mean": float(np.mean([r["ece"] for r in runs])),
            "ece_worst": float(np.max([r["ece"] for r in runs])),
            "ece_chance_95_mean": float(np.mean([r["ece_chance_95"] for r in runs])),
            "methods": sorted({r["method"] for r in runs}),
            **{
                f"{k}_{stat}": float(f([r[k] for r in runs]))
                for k in ("ece_without_markers", "ece_uncalibrated")
                for stat, f in (("mean", np.mean), ("worst", np.max))
            },
            **{
                f"{k}_mean": float(np.mean([r[k] for r in runs]))
                for k in ("accuracy", "accuracy_without_markers", "accuracy_uncalibrated")
            },
            "coverage_without_markers_worst": float(
                np.min([r["coverage_without_markers"] for r in runs])
            ),
            **{
                rule: {
                    "coverage_mean": float(np.mean([r[rule]["coverage"] for r in runs])),
                    "coverage_worst": float(np.min([r[rule]["coverage"] for r in runs])),
                    "set_size_mean": float(np.mean([r[rule]["set_size"] for r in runs])),
                }
                for rule in RULES
            },
        }
    return rows


def print_table(rows: dict) -> None:
    print(
        "| donor (cells) | accuracy: uncalibrated / without markers / now | ECE uncalibrated "
        "| without markers | now (method chosen) | union coverage worst: without markers / now |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for d, r in rows.items():
        print(
            f"| {d} ({r['n_cells']}) | {r['accuracy_uncalibrated_mean']:.3f} / "
            f"{r['accuracy_without_markers_mean']:.3f} / {r['accuracy_mean']:.3f} | "
            f"{r['ece_uncalibrated_mean']:.3f} / {r['ece_uncalibrated_worst']:.3f} | "
            f"{r['ece_without_markers_mean']:.3f} / {r['ece_without_markers_worst']:.3f} | "
            f"{r['ece_mean']:.3f} / {r['ece_worst']:.3f} ({', '.join(r['methods'])}) | "
            f"{r['coverage_without_markers_worst']:.3f} / {r['union']['coverage_worst']:.3f} |"
        )
    head = "| donor (cells) | ECE mean / worst (by chance) | " + " | ".join(
        f"{r}: coverage mean / worst, size" for r in RULES
    )
    print(head + " |")
    print("|" + " --- |" * (2 + len(RULES)))
    for d, r in rows.items():
        cells = [f"{r['ece_mean']:.3f} / {r['ece_worst']:.3f} ({r['ece_chance_95_mean']:.3f})"] + [
            f"{r[rule]['coverage_mean']:.3f} / {r[rule]['coverage_worst']:.3f}, "
            f"{r[rule]['set_size_mean']:.2f}"
            for rule in RULES
        ]
        print(f"| {d} ({r['n_cells']}) | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--max-epochs", type=int, default=200)
    args = parser.parse_args()
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="sct_label_sets_"))
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    bundle, built_now = build_bundle(work, args.max_epochs)
    built = time.perf_counter() - start if built_now else None
    pred = bundle.held_out_predictions()
    if "marker_loglik" not in pred:
        sys.exit(f"{bundle.path} predates stored marker evidence: use a new --work-dir.")
    rows = evaluate(pred)
    print_table(rows)
    quoted = {d: r for d, r in rows.items() if r["n_cells"] >= 50}
    summary = {
        rule: {
            "coverage_worst_donor": min(r[rule]["coverage_worst"] for r in quoted.values()),
            "set_size_mean": float(np.mean([r[rule]["set_size_mean"] for r in quoted.values()])),
        }
        for rule in RULES
    }
    summary["ece_worst_donor"] = max(r["ece_worst"] for r in quoted.values())
    summary["ece_mean_donor"] = float(np.mean([r["ece_mean"] for r in quoted.values()]))
    summary["coverage_without_markers_worst_donor"] = min(
        r["coverage_without_markers_worst"] for r in quoted.values()
    )
    for k in ("ece_without_markers", "ece_uncalibrated"):
        summary[f"{k}_worst_donor"] = max(r[f"{k}_worst"] for r in quoted.values())
        summary[f"{k}_mean_donor"] = float(np.mean([r[f"{k}_mean"] for r in quoted.values()]))
    print("donors with >= 50 cells:", summary)
    write_json(
        "label_sets",
        {
            "what": __doc__.splitlines()[0],
            "alpha": ALPHA,
            "seed": SEED,
            # build_seconds is None when the work dir's bundle was reused
            "bundle": {
                "path": str(bundle.path),
                "sha256": bundle.sha256,
                "n_members": 1,
                "max_epochs": args.max_epochs,
                "build_seconds": built,
            },
            "per_donor": rows,
            "summary_donors_with_50_cells": summary,
            "machine": machine(),
            "code": code_digest(),
        },
    )


if __name__ == "__main__":
    main()
