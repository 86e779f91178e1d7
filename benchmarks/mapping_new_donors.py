"""Reference mapping on donors the bundle never saw: train on three patients, test on two.

The leave-one-patient-out benchmark (``mapping.py``) trains on four of the five dev patients,
who are more alike than new patients are, and its bundles calibrate on some of the same donors
they are measured on. This harder split mimics new donors (issue 26): for each of five splits
the reference is three patients of ``cart_labelled_dev.h5ad``; the bundle's calibration, label
sets and out-of-reference threshold are fitted inside those three only (its own cross-donor
folds); the two other patients are the query, each its own new batch. Every patient is tested
twice: (P01, P02), (P02, P03), (P03, P06), (P06, P13), (P13, P01).

Reported per test donor (pooled over the two times it is tested): accuracy, macro-F1, ECE of
the confidence each method reports for its call (15 bins) beside the ECE perfect calibration of
those confidences reaches by chance on the donor's cells (95% of label draws), and for
sc_celltherapy the label sets' coverage at alpha = 0.1 and their mean size. A split's
reference can lack a donor's label (P03's ``CD4 CTL``, 22% of its cells, has 6 cells in P02, 1
in P06 and none in P01 or P13, so a split whose reference lacks P02 lacks the label): the ECE is
also given over the cells whose label the reference holds, and for sc_celltherapy the share of
the other cells called unassigned (the right call for a state the reference lacks). Foreign
lineages: the unsorted P01 marrow and P02 blood samples are mapped onto each split's bundle;
the AUROC of the out-of-reference score for marker-defined myeloid / erythroid / B cells
against marker-defined T cells (as ``mapping.py`` defines them), the share of foreign cells
unassigned and of T cells unassigned at the bundle's threshold. Plain scANVI (scvi-tools' tutorial, no calibration) and CellTypist
(trained on the same cells) run beside ours on the same splits; their out-of-reference score is
one minus the top probability.

Run: ``python benchmarks/mapping_new_donors.py --celltypist-python VENV/bin/python
[--work-dir DIR] [--n-members N] [--max-epochs E]``; with ``--work-dir`` each run is kept and
a rerun of the same code resumes. Writes ``benchmarks/results/mapping_new_donors.json``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import code_digest, machine, write_json  # noqa: E402
from mapping import MIN_LABEL_CELLS, labelled_cells, run_kept, write_foreign_query  # noqa: E402

SEED = 0
SPLITS = [("P01", "P02"), ("P02", "P03"), ("P03", "P06"), ("P06", "P13"), ("P13", "P01")]
FOREIGN = {
    "marrow": "cart_unsorted_marrow_P01_CAR-T10593344.h5ad",
    "blood": "cart_unsorted_blood_P02_CAR-T10310324.h5ad",
}
METHODS = ["sct", "scanvi", "celltypist"]
ALPHA = 0.1


def foreign_query(work: Path, name: str) -> np.ndarray:
    """An unsorted sample as ``query_<name>.h5ad``: 1 foreign, 0 T cell, -1 neither."""
    return write_foreign_query(work, FOREIGN[name], name, f"{name}_sample")


def write_split(work: Path, cells, test: tuple[str, str]) -> np.ndarray:
    in_query = cells.obs["Patient"].isin(test).to_numpy()
    ref = cells[~in_query]
    counts = ref.obs["CellType1"].value_counts()
    ref = ref[ref.obs["CellType1"].isin(counts.index[counts >= MIN_LABEL_CELLS]).to_numpy()]
    tag = "_".join(test)
    ref.copy().write_h5ad(work / f"ref_{tag}.h5ad")
    cells[in_query].copy().write_h5ad(work / f"query_{tag}.h5ad")
    return in_query


def run(method: str, tag: str, query: str, work: Path, args) -> dict:
    """One method on split ``tag`` mapping ``query_<query>.h5ad`` (the split's own query, or a
    foreign sample onto the models the split's run left). Reuses a kept run of the same code."""
    return run_kept(
        method,
        work / f"ref_{tag}.h5ad",
        work / f"query_{query}.h5ad",
        name=f"{method}_{tag}" + ("" if query == tag else f"_{query}"),
        fold_dir=work / f"{method}_{tag}",
        train=query == tag,
        args=args,
        extra=(args.n_members,),
    )


def bundle_record(calibration: dict) -> dict:
    """A split bundle's calibration as the JSON keeps it: the marker evidence's gene shares
    (one float per bundle gene, used only to scale a lot's depth) are left out."""
    if "marker_evidence" not in calibration:
        return calibration
    evidence = {k: v for k, v in calibration["marker_evidence"].items() if k != "gene_share"}
    return calibration | {"marker_evidence": evidence}


def donor_metrics(pred: dict, truth: np.ndarray) -> dict:
    from sklearn.metrics import f1_score

    from sc_celltherapy.atlas._calibration_error import calibration_error, sampling_ece

    labels = list(pred["labels"])
    idx = np.array([labels.index(x) for x in pred["pred"]])
    conf = pred["probs"][np.arange(idx.size), idx]
    correct = pred["pred"] == truth
    row = {
        "n_cells": int(truth.size),
        "accuracy": float(correct.mean()),
        "macro_f1": float(
            f1_score(truth, pred["pred"], labels=sorted(set(truth)), average="macro")
        ),
        "ece": calibration_error(conf, correct),
        # what perfect calibration of these confidences reaches by chance (95% of draws)
        "ece_chance_95": sampling_ece(conf[:, None]),
    }
    known = np.isin(truth, labels)  # a label the split's reference lacks cannot be called
    row |= {
        "unknown_label_share": float(1 - known.mean()),
        "ece_known_labels": calibration_error(conf[known], correct[known]),
    }
    if "sets" in pred:
        cols = np.array([labels.index(t) if t in labels else 0 for t in truth])
        covered = pred["sets"][np.arange(truth.size), cols] & known
        row |= {
            "coverage": float(covered.mean()),
            "coverage_known_labels": float(covered[known].mean()),
            "mean_set_size": float(pred["sets"].sum(axis=1).mean()),
        }
    if "unassigned" in pred:
        # a cell whose state the reference lacks is rightly unassigned; one it holds is not
        unassigned = pred["unassigned"].astype(bool)
        row["unassigned_known_labels"] = float(unassigned[known].mean())
        if not known.all():
            row["unassigned_unknown_labels"] = float(unassigned[~known].mean())
    return row


def foreign_metrics(pred: dict, truth: np.ndarray) -> dict:
    from sklearn.metrics import roc_auc_score

    scored = truth >= 0
    row = {"auroc": float(roc_auc_score(truth[scored], pred["score"][scored]))}
    if "unassigned" in pred:
        row |= {
            "caught": float(pred["unassigned"][truth == 1].mean()),
            "t_cells_unassigned": float(pred["unassigned"][truth == 0].mean()),
            "auroc_latent": float(roc_auc_score(truth[scored], pred["score_latent"][scored])),
            "auroc_expression": float(
                roc_auc_score(truth[scored], pred["score_expression"][scored])
            ),
        }
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--celltypist-python", default=shutil.which("python3"))
    parser.add_argument("--max-epochs", type=int, default=200, help="scVI epochs, both sides")
    parser.add_argument("--n-members", type=int, default=3, help="our bundle's ensemble")
    parser.add_argument("--splits", type=int, default=len(SPLITS), help="first N splits")
    parser.add_argument("--work-dir", type=Path, default=None)
    args = parser.parse_args()
    args.code = code_digest()
    cells = labelled_cells()
    truth_all = cells.obs["CellType1"].to_numpy()
    patient = cells.obs["Patient"].to_numpy()
    splits = SPLITS[: args.splits]
    per_donor = {m: {} for m in METHODS}
    foreign = {m: {f: [] for f in FOREIGN} for m in METHODS}
    bundles = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        foreign_truth = {f: foreign_query(work, f) for f in FOREIGN}
        for test in splits:
            tag = "_".join(test)
            in_query = write_split(work, cells, test)
            for m in METHODS:
                r = run(m, tag, tag, work, args)
                print(f"  {tag} {m:<10} {r['seconds']:7.1f}s {r['peak_mb']:6.0f} MB", flush=True)
                if m == "sct":
                    bundles[tag] = {"calibration": bundle_record(r["calibration"]), "oor": r["oor"]}
                pred = r["predictions"]
                for p in test:
                    sel = patient[in_query] == p
                    one = {k: v[sel] if k != "labels" else v for k, v in pred.items()}
                    per_donor[m].setdefault(p, []).append(
                        donor_metrics(one, truth_all[in_query][sel])
                    )
                for f, ftruth in foreign_truth.items():
                    fr = run(m, tag, f, work, args)
                    foreign[m][f].append(foreign_metrics(fr["predictions"], ftruth))

    def mean_rows(rows: list[dict]) -> dict:  # a key some rows lack: the mean of those that have it
        keys = dict.fromkeys(k for r in rows for k in r)
        return {k: float(np.mean([r[k] for r in rows if k in r])) for k in keys}

    table = {m: {p: mean_rows(rows) for p, rows in sorted(per_donor[m].items())} for m in METHODS}
    foreign_table = {m: {f: mean_rows(rows) for f, rows in foreign[m].items()} for m in METHODS}
    names = {"sct": "sc_celltherapy", "scanvi": "plain scANVI", "celltypist": "CellTypist"}
    print(f"\nnew donors: train 3 patients, test 2; {len(splits)} splits, seed {SEED}")
    header = (
        f"{'method':<15} {'donor':<6} {'acc':>6} {'F1':>6} {'ECE':>6} {'chance':>6} {'ECE kn':>6} "
        f"{'unkn':>5} {'cover':>6} {'size':>5} {'unas kn':>7} {'unas unkn':>9}"
    )
    print(header + "\n" + "-" * len(header))
    for m in METHODS:
        for p, r in table[m].items():
            cov = f"{r['coverage']:6.3f} {r['mean_set_size']:5.2f}" if "coverage" in r else ""
            unas = (
                f" {r['unassigned_known_labels']:7.3f} {r.get('unassigned_unknown_labels', np.nan):9.3f}"
                if "unassigned_known_labels" in r
                else ""
            )
            print(
                f"{names[m]:<15} {p:<6} {r['accuracy']:6.3f} {r['macro_f1']:6.3f} "
                f"{r['ece']:6.3f} {r['ece_chance_95']:6.3f} {r['ece_known_labels']:6.3f} {r['unknown_label_share']:5.3f} "
                f"{cov}{unas}"
            )
    summary = {
        m: {
            "ece_worst_donor": max(r["ece"] for r in table[m].values()),
            "ece_mean_donor": float(np.mean([r["ece"] for r in table[m].values()])),
            "macro_f1_mean_donor": float(np.mean([r["macro_f1"] for r in table[m].values()])),
            **(
                {
                    "coverage_worst_donor": min(r["coverage"] for r in table[m].values()),
                    "mean_set_size": float(
                        np.mean([r["mean_set_size"] for r in table[m].values()])
                    ),
                }
                if m == "sct"
                else {}
            ),
        }
        for m in METHODS
    }
    print(
        "\nworst donor / mean: "
        + "; ".join(
            f"{names[m]} ECE {s['ece_worst_donor']:.3f} / {s['ece_mean_donor']:.3f}"
            for m, s in summary.items()
        )
    )
    print(
        f"sc_celltherapy label sets (alpha {ALPHA}): worst-donor coverage "
        f"{summary['sct']['coverage_worst_donor']:.3f}, mean size {summary['sct']['mean_set_size']:.2f}"
    )
    print("foreign lineages (mean over splits):")
    for m in METHODS:
        for f, r in foreign_table[m].items():
            extra = (
                f" caught {r['caught']:.3f}, T cells unassigned {r['t_cells_unassigned']:.3f} "
                f"(latent {r['auroc_latent']:.3f}, expression {r['auroc_expression']:.3f})"
                if "caught" in r
                else ""
            )
            print(f"  {names[m]:<15} {f:<7} AUROC {r['auroc']:.3f}{extra}")
    write_json(
        "mapping_new_donors",
        {
            "protocol": "train on 3 dev patients, calibrate inside them, test on the other 2",
            "splits": [list(s) for s in splits],
            "seed": SEED,
            "alpha": ALPHA,
            "max_epochs_scvi": args.max_epochs,
            "n_members": args.n_members,
            "per_donor": table,
            "per_split_donor": per_donor,
            "summary": summary,
            "foreign": foreign_table,
            "foreign_per_split": foreign,
            "bundles": bundles,
            "targets": {
                "ece_worst_donor": "<= 0.05",
                "coverage_worst_donor": ">= 0.88",
                "foreign_auroc": ">= 0.97 (issue: 0.98 on the dev data)",
                "foreign_caught": ">= 0.90 at <= 2% of T cells unassigned",
            },
            "code_digest": args.code,
            "machine": machine(),
        },
    )


if __name__ == "__main__":
    main()
