"""Reference mapping: sc_celltherapy against plain scANVI and CellTypist, leave-one-patient-out.

Protocol (issue 3): ``cart_labelled_dev.h5ad`` holds CAR-T cells of five patients with the study
authors' labels (``CellType1``). For each patient, the reference is the other four patients and the
query is that patient. Each method is trained on the same reference cells and predicts the query;
predictions of the five folds are pooled for accuracy, macro-F1 and the expected calibration error
(ECE, 15 bins, of the confidence each method reports for its call), and the ECE per query patient
(10 bins, as the package bins it) beside the level perfect calibration reaches by chance on that
patient's cells. For the out-of-reference (OOR) call each fold is run again with ``CD8 gdT``
removed from the reference; the AUROC of each method's OOR score for the query's CD8 gdT cells
against the rest is measured (sc_celltherapy: ``sct_ref_oor_score``; the others, and our own
max-probability baseline: one minus the top probability). The AUROC is reported pooled over the
five folds (each fold's scores come from its own bundle, so the pooled figure also asks that a
score mean the same in every bundle; most CD8 gdT cells are patient P02's) and per fold with CD8
gdT cells on both sides of the query. CD8 gdT cells are close to the CD8 TEM cells in expression
(TRDC is detected in 3% of them), so a second out-of-reference test uses cells of another lineage:
the unsorted marrow sample of patient P01 is mapped onto the P01 fold's reference (T cells only),
and the AUROC is of its myeloid / erythroid / B cells (CD3D, CD3E and NKG7 not detected; LYZ and
CD14, HBB >= 5 counts, or CD79A / MS4A1 detected) against its T cells (CD3D or CD3E detected, none
of those markers). Speed: a 10,000-cell lot resampled from the real cells is mapped onto a built
bundle.

Run: ``python benchmarks/mapping.py`` with ``--celltypist-python /path/to/venv/bin/python``,
``--work-dir DIR`` and ``--n-members N`` as needed;
``--per-donor-only`` adds the per-patient ECE to a finished run's JSON from its cells. Every method
runs in its own process (peak memory is its own); with ``--work-dir`` each run is kept and a rerun
of the same code resumes where it stopped (about 2.5 hours on a 2-core CPU with 3-member bundles,
the default; 1 h 40 min with one). The foreign query is mapped onto the models the P01 fold trained
(CellTypist, fast, retrains). Prints one table, writes ``benchmarks/results/mapping.json`` and
every query cell's truth, patient, predictions and scores to
``benchmarks/results/mapping_cells.npz`` (other metrics need no rerun).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    RESULTS,
    code_digest,
    machine,
    resample_thinned,
    run_child,
    shared_data,
    write_json,
)

SEED = 0
PATIENTS = ["P01", "P02", "P03", "P06", "P13"]
OOR_LABEL = "CD8 gdT"
MIN_LABEL_CELLS = 5
NAMES = {"sct": "sc_celltherapy", "scanvi": "plain scANVI", "celltypist": "CellTypist 1.7.1"}
METHODS = ["sct", "scanvi", "celltypist"]


def ece_per_donor(truth, patient, pred, conf) -> dict:
    """Each query patient's ECE (the package's 10 bins) beside the level perfect calibration
    reaches by chance on its cells (95% quantile over label draws from the confidences): a
    pooled ECE lets the well-called patients hide the others."""
    from sc_celltherapy.atlas._calibration_error import calibration_error, sampling_ece

    return {
        str(d): {
            "n_cells": int(f.sum()),
            "ece": calibration_error(conf[f], pred[f] == truth[f]),
            # sampling_ece reads only each row's top probability: the confidence
            "ece_chance_95": sampling_ece(conf[f][:, None]),
        }
        for d in np.unique(patient)
        for f in [patient == d]
    }


def add_per_donor_ece(rows: dict, cells) -> None:
    """``ece_per_donor`` and ``ece_worst_donor`` for every method's row, from the pooled cells."""
    for m, r in rows.items():
        r["ece_per_donor"] = ece_per_donor(
            cells["truth"], cells["patient"], cells[f"{m}_pred"], cells[f"{m}_conf"]
        )
        r["ece_worst_donor"] = max(d["ece"] for d in r["ece_per_donor"].values())


def print_per_donor_ece(rows: dict) -> None:
    print("ECE per query patient (chance level, 95%):")
    for d in next(iter(rows.values()))["ece_per_donor"]:
        print(
            f"  {d}: "
            + "  ".join(
                f"{NAMES[m]} {r['ece_per_donor'][d]['ece']:.3f} "
                f"({r['ece_per_donor'][d]['ece_chance_95']:.3f})"
                for m, r in rows.items()
            )
        )


def labelled_cells():
    """The labelled CAR-T cells, obs reduced to patient and label (as strings)."""
    import anndata as ad

    cells = ad.read_h5ad(shared_data() / "cart_labelled_dev.h5ad")
    cells.var_names_make_unique()
    cells.obs = cells.obs[["Patient", "CellType1"]].astype(str)
    return cells


def fold(cells, patient: str, left_out: str | None = None):
    """Patient ``patient``'s fold: the reference (the other patients' cells, without
    ``left_out``) and which cells are the query."""
    in_query = (cells.obs["Patient"] == patient).to_numpy()
    ref = cells[~in_query]
    # every method gets the same reference; labels too rare to learn (< 5 cells in this
    # fold's reference, e.g. CD4 Naive/TCM) are dropped for all of them, and their query
    # cells count as errors for every method
    counts = ref.obs["CellType1"].value_counts()
    keep = ref.obs["CellType1"].isin(counts.index[counts >= MIN_LABEL_CELLS])
    if left_out is not None:
        keep &= ref.obs["CellType1"] != left_out
    return ref[keep.to_numpy()].copy(), in_query


def write_folds(work: Path, patients: list[str]) -> tuple[dict, np.ndarray, np.ndarray]:
    """Reference and query files of every fold; returns paths, truth and patient per cell."""
    cells = labelled_cells()
    folds = {}
    for p in patients:
        for cond, left_out in (("full", None), ("no_gdT", OOR_LABEL)):
            ref, in_query = fold(cells, p, left_out)
            ref.write_h5ad(work / f"ref_{p}_{cond}.h5ad")
        cells[in_query].copy().write_h5ad(work / f"query_{p}.h5ad")
        folds[p] = in_query
    return folds, cells.obs["CellType1"].to_numpy(), cells.obs["Patient"].to_numpy()


MARROW = "cart_unsorted_marrow_P01_CAR-T10593344.h5ad"


def marker_truth(sample) -> np.ndarray:
    """1: myeloid / erythroid / B cell (LYZ and CD14, HBB >= 5 counts, CD79A or MS4A1 detected;
    CD3D, CD3E and NKG7 not); 0: T cell (CD3D or CD3E detected, none of those markers); -1:
    neither. ``sample``: an AnnData of counts with unique gene symbols."""

    def detected(gene: str, at_least: int = 1) -> np.ndarray:
        return np.asarray(sample[:, gene].X.todense()).ravel() >= at_least

    other = (detected("LYZ") & detected("CD14")) | detected("HBB", 5)
    other |= detected("CD79A") | detected("MS4A1")
    t_cell = detected("CD3D") | detected("CD3E")
    truth = np.full(sample.n_obs, -1)
    truth[t_cell & ~other] = 0
    truth[other & ~t_cell & ~detected("NKG7")] = 1
    return truth


def write_foreign_query(
    work: Path, file: str = MARROW, query_name: str = "foreign", patient: str = "P01_marrow"
) -> np.ndarray:
    """An unsorted sample (default: the P01 marrow) as ``query_<query_name>.h5ad``; returns its
    ``marker_truth``."""
    import anndata as ad

    marrow = ad.read_h5ad(shared_data() / file)
    marrow.var_names_make_unique()
    query = ad.AnnData(X=marrow.X.copy(), var=marrow.var.copy())
    query.obs_names = marrow.obs_names
    query.obs["Patient"] = patient
    query.write_h5ad(work / f"query_{query_name}.h5ad")
    return marker_truth(marrow)


def cluster_consistent(counts, truth: np.ndarray) -> np.ndarray:
    """The marker truth kept only where it agrees with the majority call of the cell's own
    Leiden cluster in its sample (scanpy defaults, seed 0); -1 elsewhere. One or two UMIs of
    CD3E, or of LYZ and CD14, decide the marker truth, and a marrow's ambient RNA and its
    doublets supply them."""
    import anndata as ad
    import scanpy as sc

    x = ad.AnnData(counts.astype(np.float32))
    sc.pp.normalize_total(x, target_sum=1e4)
    sc.pp.log1p(x)
    sc.pp.highly_variable_genes(x, n_top_genes=2000)
    sc.pp.pca(x, n_comps=30, mask_var="highly_variable", random_state=0)
    sc.pp.neighbors(x, random_state=0)
    sc.tl.leiden(x, flavor="igraph", n_iterations=2, random_state=0)
    clusters = x.obs["leiden"].to_numpy()
    clean = np.full(truth.size, -1)
    for c in np.unique(clusters):
        called = (clusters == c) & (truth >= 0)
        if called.any():
            majority = int(truth[called].mean() > 0.5)
            clean[called & (truth == majority)] = majority
    return clean


def resampled_lot(work: Path, n_cells: int) -> Path:
    """``n_cells`` drawn with replacement from the real CAR-T cells, each binomially thinned to
    80% of its counts (no two identical), as one new lot (a batch the reference never saw)."""
    import anndata as ad

    cells = ad.read_h5ad(shared_data() / "cart_labelled_dev.h5ad")
    cells.var_names_make_unique()
    lot = ad.AnnData(X=resample_thinned(cells.X, n_cells, SEED), var=cells.var.copy())
    lot.obs_names = [f"cell{i:06d}" for i in range(n_cells)]
    lot.obs["Patient"] = "lot_10k"
    path = work / "lot_10k.h5ad"
    lot.write_h5ad(path)
    return path


def run_method(method, p, cond, work, args, query_name=None) -> dict:
    """One method trained on fold ``p``'s reference (``cond``) and mapping its query (or
    ``query_<query_name>.h5ad`` onto the models the fold's own run trained and left)."""
    query_name = query_name or p
    return run_kept(
        method,
        work / f"ref_{p}_{cond}.h5ad",
        work / f"query_{query_name}.h5ad",
        name=f"{method}_{p}_{cond}" + ("" if query_name == p else f"_{query_name}"),
        fold_dir=work / f"{method}_{p}_{cond}",
        train=query_name == p,
        args=args,
        extra=(args.n_members,) if method == "sct" else (),
    )


def run_kept(method, ref, query, *, name, fold_dir, train, args, extra=()) -> dict:
    """Run one method in its own process, writing ``<name>.npz`` and ``<name>.json`` beside
    ``fold_dir``. With ``--work-dir``, a run already there from the same code (``code_digest``)
    is reused, so a long benchmark can be resumed after an interruption. ``train=False`` maps
    ``query`` onto the models a training run left in ``fold_dir``."""
    out, record_path = fold_dir.parent / f"{name}.npz", fold_dir.parent / f"{name}.json"
    if record_path.exists() and out.exists():
        record = json.loads(record_path.read_text())
        if record.pop("code") == args.code:
            return record | {"predictions": dict(np.load(out, allow_pickle=False)), "reused": True}
    if method == "celltypist":
        r = run_child(
            "_mapping_celltypist",
            str(ref),
            str(query),
            str(out),
            str(SEED),
            python=args.celltypist_python,
        )
    else:
        if train:
            shutil.rmtree(fold_dir, ignore_errors=True)  # a run interrupted before its record
            fold_dir.mkdir()
        r = run_child(
            "_mapping_child",
            method if train else f"{method}_map",
            str(ref),
            str(query),
            str(out),
            str(fold_dir),
            str(SEED),
            str(args.max_epochs),
            *map(str, extra),
        )
    record_path.write_text(json.dumps(r | {"code": args.code}))
    r["predictions"] = dict(np.load(out, allow_pickle=False))
    return r


def pooled(runs: dict, folds: dict, n: int) -> dict:
    """Predictions of the five folds put back in cell order."""
    pred = np.empty(n, dtype=object)
    conf, score = np.empty(n), np.empty(n)
    unassigned = np.zeros(n, bool)
    for p, in_query in folds.items():
        pr = runs[p]["predictions"]
        pred[in_query] = pr["pred"]
        labels = list(pr["labels"])
        idx = np.array([labels.index(x) for x in pr["pred"]])
        conf[in_query] = pr["probs"][np.arange(idx.size), idx]
        score[in_query] = pr["score"]
        if "unassigned" in pr:
            unassigned[in_query] = pr["unassigned"]
    return {"pred": pred.astype(str), "conf": conf, "score": score, "unassigned": unassigned}


def foreign_metrics(truth: np.ndarray, predictions: dict, method: str) -> dict:
    """AUROC of a method's score and of its max-probability for the foreign cells (truth 1)
    against the T cells (0); for ours also the share of each called unassigned."""
    from sklearn.metrics import roc_auc_score

    scored = truth >= 0
    out = {
        "foreign_auroc": roc_auc_score(truth[scored], predictions["score"][scored]),
        "foreign_auroc_max_prob": roc_auc_score(
            truth[scored], 1 - predictions["probs"].max(axis=1)[scored]
        ),
    }
    if method == "sct":
        out["foreign_unassigned"] = float(predictions["unassigned"][truth == 1].mean())
        out["foreign_t_cells_unassigned"] = float(predictions["unassigned"][truth == 0].mean())
    return out


def auroc_interval(is_pos: np.ndarray, score: np.ndarray, n_boot: int = 2000) -> list[float]:
    """95% bootstrap interval of an AUROC, cells resampled within each class. Cells of one
    patient are not independent, so the true uncertainty is wider than this."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(SEED)
    pos, neg = np.flatnonzero(is_pos), np.flatnonzero(~is_pos)
    boot = [
        roc_auc_score(is_pos[i], score[i])
        for i in (
            np.concatenate([rng.choice(pos, pos.size), rng.choice(neg, neg.size)])
            for _ in range(n_boot)
        )
    ]
    return [float(x) for x in np.percentile(boot, [2.5, 97.5])]


def main() -> None:
    from anndata import read_h5ad
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    from sc_celltherapy.atlas._calibration_error import calibration_error as ece

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--celltypist-python", default=shutil.which("python3"))
    parser.add_argument("--max-epochs", type=int, default=200, help="scVI epochs, both sides")
    parser.add_argument("--n-speed", type=int, default=10_000)
    parser.add_argument("--n-members", type=int, default=3, help="our bundle's ensemble")
    parser.add_argument("--patients", nargs="+", default=PATIENTS, help="folds (quick checks)")
    parser.add_argument(
        "--result-name",
        default="mapping",
        help="results/<name>.json and <name>_cells.npz (a quick check keeps the full run's files)",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="keep each run here and reuse runs of the same code (resume); default: a temp dir",
    )
    parser.add_argument(
        "--per-donor-only",
        action="store_true",
        help="add the per-patient ECE to a finished run's JSON from its _cells.npz (no mapping)",
    )
    args = parser.parse_args()
    if args.per_donor_only:
        path = RESULTS / f"{args.result_name}.json"
        result = json.loads(path.read_text())
        add_per_donor_ece(result["rows"], np.load(path.with_name(f"{args.result_name}_cells.npz")))
        print_per_donor_ece(result["rows"])
        print(f"wrote {write_json(args.result_name, result)}")
        return
    args.code = code_digest()

    rows, per_fold = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        folds, truth, patient = write_folds(work, args.patients)
        runs = {m: {c: {} for c in ("full", "no_gdT")} for m in METHODS}
        for p in args.patients:
            for cond in ("full", "no_gdT"):
                for m in METHODS:
                    t0 = time.perf_counter()
                    runs[m][cond][p] = run_method(m, p, cond, work, args)
                    r = runs[m][cond][p]
                    print(
                        f"  {p} {cond:<6} {m:<10} {r['seconds']:6.1f}s "
                        f"{r['peak_mb']:6.0f} MB (wall {time.perf_counter() - t0:.0f}s)"
                        + (" reused" if r.get("reused") else ""),
                        flush=True,
                    )
        foreign_truth = write_foreign_query(work)
        foreign_clean = cluster_consistent(read_h5ad(work / "query_foreign.h5ad").X, foreign_truth)
        foreign_fold = "P01" if "P01" in args.patients else args.patients[0]
        foreign = {}
        for m in METHODS:
            foreign[m] = run_method(m, foreign_fold, "full", work, args, query_name="foreign")
            print(f"  foreign  {m:<10} {foreign[m]['seconds']:6.1f}s", flush=True)
        lot = resampled_lot(work, args.n_speed)
        speed = run_child(
            "_mapping_child",
            "speed",
            str(work / f"ref_{args.patients[0]}_full.h5ad"),
            str(lot),
            str(work / "unused.npz"),
            str(work / f"sct_{args.patients[0]}_full"),
            str(SEED),
            str(args.max_epochs),
        )
        print(f"  mapping {args.n_speed} cells: {speed['seconds']:.1f}s", flush=True)

    queried = np.any(list(folds.values()), axis=0)  # every cell when all five folds ran
    truth, patient = truth[queried], patient[queried]
    folds = {p: f[queried] for p, f in folds.items()}
    labels = sorted(set(truth))
    is_oor = truth == OOR_LABEL
    cells = {"truth": truth.astype(str), "patient": patient.astype(str)}
    for m in METHODS:
        full = pooled(runs[m]["full"], folds, truth.size)
        excl = pooled(runs[m]["no_gdT"], folds, truth.size)
        correct = full["pred"] == truth
        rows[m] = {
            "accuracy": accuracy_score(truth, full["pred"]),
            "macro_f1": f1_score(truth, full["pred"], labels=labels, average="macro"),
            "ece": ece(full["conf"], correct),
            "oor_auroc": roc_auc_score(is_oor, excl["score"]),
            "oor_auroc_ci95": auroc_interval(is_oor, excl["score"]),
            "oor_auroc_max_prob": roc_auc_score(is_oor, 1 - excl["conf"]),
            "oor_auroc_per_fold": {
                p: roc_auc_score(is_oor[f], excl["score"][f])
                for p, f in folds.items()
                if 0 < is_oor[f].sum() < f.sum()
            },
            "seconds": sum(r["seconds"] for r in runs[m]["full"].values()),
            "peak_mb": max(r["peak_mb"] for r in runs[m]["full"].values()),
        }
        cells |= {
            f"{m}_pred": full["pred"],
            f"{m}_conf": full["conf"],
            f"{m}_oor_score_no_gdT": excl["score"],
            f"{m}_conf_no_gdT": excl["conf"],
        }
        fp = foreign[m]["predictions"]
        for suffix, ftruth in (("", foreign_truth), ("_cluster_consistent", foreign_clean)):
            rows[m] |= {f"{k}{suffix}": v for k, v in foreign_metrics(ftruth, fp, m).items()}
        if m == "sct":
            rows[m]["unassigned_in_reference_cells"] = float(full["unassigned"].mean())
            rows[m]["unassigned_oor_cells"] = float(excl["unassigned"][is_oor].mean())
            # each fold's bundle: ECE of its worst held-out donor (cross-donor calibration)
            rows[m]["bundle_ece_worst_donor"] = [
                r["calibration"]["ece_worst_donor"] for r in runs[m]["full"].values()
            ]
        per_fold[m] = {
            p: {
                "n_query": int(folds[p].sum()),
                "accuracy": float(np.mean(full["pred"][folds[p]] == truth[folds[p]])),
                "seconds_full": runs[m]["full"][p]["seconds"],
                "seconds_no_gdT": runs[m]["no_gdT"][p]["seconds"],
            }
            for p in args.patients
        }
        if m == "sct":  # where the unassigned calls fall, and the threshold each fold fitted
            for p in args.patients:
                oor = runs[m]["full"][p]["oor"]
                per_fold[m][p] |= {
                    "unassigned_in_reference_cells": float(full["unassigned"][folds[p]].mean()),
                    "unassigned_oor_cells": float(excl["unassigned"][folds[p] & is_oor].mean())
                    if (folds[p] & is_oor).any()
                    else None,
                    "oor_threshold": oor["threshold"],
                    "oor_threshold_no_gdT": runs[m]["no_gdT"][p]["oor"]["threshold"],
                    "oor_fpr_bound": oor["fpr_bound"],
                    "n_held_out_cells": oor["n_held_out_cells"],
                    "held_out_batches": sorted(runs[m]["full"][p]["calibration"]["per_donor"]),
                }

    add_per_donor_ece(rows, cells)
    header = (
        f"{'method':<17} {'macro-F1':>8} {'accuracy':>8} {'ECE':>6} {'OOR AUROC':>9} "
        f"{'(max-prob)':>10} {'foreign':>7} {'(max-prob)':>10} {'time s':>7} {'peak MB':>8}"
    )
    print(f"\nleave-one-patient-out, {truth.size} cells, seed {SEED}\n{header}")
    print("-" * len(header))
    for m, r in rows.items():
        print(
            f"{NAMES[m]:<17} {r['macro_f1']:>8.3f} {r['accuracy']:>8.3f} {r['ece']:>6.3f} "
            f"{r['oor_auroc']:>9.3f} {r['oor_auroc_max_prob']:>10.3f} "
            f"{r['foreign_auroc']:>7.3f} {r['foreign_auroc_max_prob']:>10.3f} {r['seconds']:>7.0f} "
            f"{r['peak_mb']:>8.0f}"
        )
    print(
        f"\nratios sct/CellTypist: macro-F1 {rows['sct']['macro_f1'] / rows['celltypist']['macro_f1']:.2f}, "
        f"time {rows['sct']['seconds'] / rows['celltypist']['seconds']:.2f}; "
        f"ECE sct/scANVI {rows['sct']['ece'] / rows['scanvi']['ece']:.2f}"
    )
    print(f"mapping a {args.n_speed}-cell lot onto a built bundle: {speed['seconds']:.1f}s")
    sct_row, cc = rows["sct"], "_cluster_consistent"
    print(
        f"foreign cells, marker truth where the cell's own cluster agrees "
        f"({int((foreign_clean == 1).sum())} foreign, {int((foreign_clean == 0).sum())} T): "
        + ", ".join(f"{NAMES[m]} AUROC {r['foreign_auroc' + cc]:.3f}" for m, r in rows.items())
        + f"; ours unassigns {sct_row['foreign_unassigned' + cc]:.1%} of the foreign cells and "
        f"{sct_row['foreign_t_cells_unassigned' + cc]:.1%} of the T cells"
    )
    print(
        "OOR AUROC, 95% bootstrap interval over cells: "
        + ", ".join(
            f"{NAMES[m]} [{r['oor_auroc_ci95'][0]:.3f}, {r['oor_auroc_ci95'][1]:.3f}]"
            for m, r in rows.items()
        )
    )
    print_per_donor_ece(rows)
    print(f"OOR AUROC per fold ({OOR_LABEL} cells in the query):")
    for p in rows["sct"]["oor_auroc_per_fold"]:
        aucs = "  ".join(f"{NAMES[m]} {rows[m]['oor_auroc_per_fold'][p]:.3f}" for m in METHODS)
        print(f"  {p} ({int(is_oor[folds[p]].sum())}): {aucs}")
    print("sc_celltherapy per fold: unassigned in-reference cells / threshold / held-out cells")
    for p, f in per_fold["sct"].items():
        print(
            f"  {p}: {f['unassigned_in_reference_cells']:.3f} / {f['oor_threshold']:.3f} / "
            f"{f['n_held_out_cells']} ({', '.join(f['held_out_batches'] or [])})"
        )
    path = write_json(
        args.result_name,
        {
            "protocol": "leave-one-patient-out on cart_labelled_dev.h5ad, truth CellType1",
            "seed": SEED,
            "max_epochs_scvi": args.max_epochs,
            "n_members": args.n_members,
            "oor_label": OOR_LABEL,
            "foreign_query": {
                "file": MARROW,
                "reference_fold": foreign_fold,
                "n_foreign": int((foreign_truth == 1).sum()),
                "n_t_cells": int((foreign_truth == 0).sum()),
                "n_foreign_cluster_consistent": int((foreign_clean == 1).sum()),
                "n_t_cells_cluster_consistent": int((foreign_clean == 0).sum()),
            },
            "targets": {
                "macro_f1": ">= CellTypist",
                "ece": "<= 0.05 and < plain scANVI",
                "oor_auroc": ">= 0.85 and > max-probability baseline",
                "speed_10k_s": "<= 60",
            },
            "rows": rows,
            "per_fold": per_fold,
            "speed": {"n_cells": args.n_speed, **speed},
            "code_digest": args.code,
            "runs_reused": sorted(
                f"{m}_{p}_{c}"
                for m in METHODS
                for c in runs[m]
                for p, r in runs[m][c].items()
                if r.get("reused")
            ),
            "machine": machine(),
        },
    )
    np.savez_compressed(path.with_name(f"{args.result_name}_cells.npz"), **cells)
    print(f"wrote {path} and {args.result_name}_cells.npz")


if __name__ == "__main__":
    main()
