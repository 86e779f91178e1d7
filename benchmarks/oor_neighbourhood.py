"""Does the lot's own neighbourhood help the out-of-reference call? Cell-level score against the
score with the neighbourhood component, from the same mappings.

Design check for issue 26 (item 4, the cluster-level test). The cell-level score of bundle
format 6 is the larger of the latent local outlier ratio and the expression excess, each over
its held-out 99% quantile, with a split-conformal threshold. Format 7 adds the neighbourhood
component: the mean cell-level score over the cell and its 14 nearest cells in the lot's own
expression space (see ``sc_celltherapy.atlas._neighbourhood``), its scale and the combined
threshold fitted on held-out donors the same way. Both scores are read from one mapping: the
format-6 scales and threshold are re-fitted from the bundle's stored held-out components
(``held_out_predictions``), exactly as a format-6 build fits them.

Cases, with the mapping benchmark's settings (one-member bundles, 200 scVI epochs, seed 0):

- CD8 gdT left out: each leave-one-patient-out fold of ``cart_labelled_dev.h5ad`` with CD8 gdT
  removed from the reference, its patient mapped; AUROC of CD8 gdT cells against the rest
  (pooled and per fold, 95% bootstrap interval over cells), and the share unassigned of the
  CD8 gdT cells and of the in-reference cells;
- foreign lineages: the unsorted marrow (P01) and blood (P02) samples mapped onto the P01 fold's
  full reference (T cells only); myeloid / erythroid / B cells against T cells by the mapping
  benchmark's marker truth, and by that truth where the cell's own Leiden cluster agrees.

Run: ``python benchmarks/oor_neighbourhood.py [--work-dir DIR]`` (about 45 min on 2 CPU cores;
with ``--work-dir`` finished folds are reused by the same code). Prints a table and writes
``benchmarks/results/oor_neighbourhood.json``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import code_digest, machine, resample_thinned, shared_data, write_json  # noqa: E402
from _mapping_child import BATCH_KEY, build_bundle  # noqa: E402
from mapping import (  # noqa: E402
    MARROW,
    OOR_LABEL,
    PATIENTS,
    SEED,
    auroc_interval,
    cluster_consistent,
    fold,
    labelled_cells,
    write_foreign_query,
)

BLOOD = "cart_unsorted_blood_P02_CAR-T10310324.h5ad"
EPOCHS = 200


def mapped_scores(bundle, path: Path) -> dict:
    """Map the lot at ``path`` onto ``bundle``; both scores and both calls per cell."""
    import anndata as ad

    import sc_celltherapy as sct
    from sc_celltherapy.atlas._novelty import combine, fit_oor

    lot = ad.read_h5ad(path)
    sct.tl.map_to_reference(lot, bundle, batch_key=BATCH_KEY, seed=SEED)
    held = bundle.held_out_predictions()
    # format 6: cell-level components only, fitted on the same held-out cells
    before = fit_oor({c: held[f"oor_{c}"] for c in ("latent", "expression")})
    cell = {c: lot.obs[f"sct_ref_oor_{c}"].to_numpy() for c in ("latent", "expression")}
    cell_score = combine(cell, before["scales"])
    return {
        "score_cell": cell_score,
        "unassigned_cell": cell_score > before["threshold"],
        "score": lot.obs["sct_ref_oor_score"].to_numpy(),
        "unassigned": lot.obs["sct_ref_unassigned"].to_numpy(),
        "neighbourhood": lot.obs["sct_ref_oor_neighbourhood"].to_numpy(),
    }


def run_case(work: Path, name: str, ref, queries: dict[str, Path], code: str) -> dict:
    """Build one bundle on ``ref`` and map each query, or reuse a finished run of this code."""
    import sc_celltherapy as sct

    done = work / f"{name}.npz"
    if done.exists() and (work / f"{name}.code").read_text() == code:
        saved = np.load(done)
        return {
            q: {k.split("/", 1)[1]: saved[k] for k in saved.files if k.startswith(f"{q}/")}
            for q in queries
        } | {"seconds": float(saved["seconds"])}
    t0 = time.perf_counter()
    bundle = build_bundle(ref, work / f"bundle_{name}", SEED, EPOCHS, 1)
    out = {q: mapped_scores(sct.atlas.load(bundle.path), path) for q, path in queries.items()}
    seconds = time.perf_counter() - t0
    np.savez(done, seconds=seconds, **{f"{q}/{k}": v for q, r in out.items() for k, v in r.items()})
    (work / f"{name}.code").write_text(code)
    return out | {"seconds": seconds}


def separation(truth: np.ndarray, r: dict) -> dict:
    """AUROC of both scores for truth 1 against 0, and the share of each unassigned."""
    from sklearn.metrics import roc_auc_score

    scored = truth >= 0
    return {
        "n_positive": int((truth == 1).sum()),
        "n_negative": int((truth == 0).sum()),
        **{
            f"{what}{sfx}": v
            for sfx in ("_cell", "")
            for what, v in (
                ("auroc", roc_auc_score(truth[scored], r[f"score{sfx}"][scored])),
                ("positive_unassigned", float(r[f"unassigned{sfx}"][truth == 1].mean())),
                ("negative_unassigned", float(r[f"unassigned{sfx}"][truth == 0].mean())),
            )
        },
    }


def main() -> None:
    import anndata as ad

    from sc_celltherapy.atlas import lot_neighbours

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work-dir", type=Path, default=None, help="keep and reuse runs here")
    args = parser.parse_args()
    code = code_digest()
    cells = labelled_cells()
    truth, patient = cells.obs["CellType1"].to_numpy(), cells.obs["Patient"].to_numpy()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        gdt = {k: np.zeros(cells.n_obs) for k in ("score_cell", "score", "neighbourhood")}
        gdt |= {k: np.zeros(cells.n_obs, bool) for k in ("unassigned_cell", "unassigned")}
        seconds = {}
        for p in PATIENTS:
            ref, in_query = fold(cells, p, OOR_LABEL)
            cells[in_query].copy().write_h5ad(work / f"query_{p}.h5ad")
            r = run_case(work, f"{p}_no_gdT", ref, {p: work / f"query_{p}.h5ad"}, code)
            for k in gdt:
                gdt[k][in_query] = r[p][k]
            seconds[f"{p}_no_gdT"] = r["seconds"]
            print(f"  {p} without {OOR_LABEL}: {r['seconds']:.0f}s", flush=True)
        marker_truth = {
            "marrow": write_foreign_query(work, MARROW, "marrow", "P01_marrow"),
            "blood": write_foreign_query(work, BLOOD, "blood", "P02_blood"),
        }
        ref, _ = fold(cells, "P01")
        queries = {s: work / f"query_{s}.h5ad" for s in marker_truth}
        foreign = run_case(work, "P01_full", ref, queries, code)
        seconds["P01_full"] = foreign["seconds"]
        clean = {
            s: cluster_consistent(ad.read_h5ad(queries[s]).X, t) for s, t in marker_truth.items()
        }
        lot = resample_thinned(
            ad.read_h5ad(shared_data() / "cart_labelled_dev.h5ad").X, 10_000, SEED
        )
        t0 = time.perf_counter()
        lot_neighbours(lot)
        neighbours_10k = time.perf_counter() - t0

    is_gdt = (truth == OOR_LABEL).astype(int)
    rows = {"CD8 gdT left out (pooled)": separation(is_gdt, gdt)}
    for p in PATIENTS:
        f = patient == p
        rows[f"CD8 gdT left out, {p}"] = separation(is_gdt[f], {k: v[f] for k, v in gdt.items()})
    for k in ("score_cell", "score"):
        rows["CD8 gdT left out (pooled)"][f"auroc_ci95{k[5:]}"] = auroc_interval(
            is_gdt.astype(bool), gdt[k]
        )
    for s in marker_truth:
        rows[f"{s}: marker truth"] = separation(marker_truth[s], foreign[s])
        rows[f"{s}: marker and cluster agree"] = separation(clean[s], foreign[s])

    header = (
        f"{'case':<34} {'pos':>5} {'neg':>5} {'AUROC cell':>10} {'+neighb.':>8} "
        f"{'pos unas. cell':>14} {'+neighb.':>8} {'neg unas. cell':>14} {'+neighb.':>8}"
    )
    print(f"\n{header}\n{'-' * len(header)}")
    for case, r in rows.items():
        print(
            f"{case:<34} {r['n_positive']:>5} {r['n_negative']:>5} {r['auroc_cell']:>10.3f} "
            f"{r['auroc']:>8.3f} {r['positive_unassigned_cell']:>14.1%} "
            f"{r['positive_unassigned']:>8.1%} {r['negative_unassigned_cell']:>14.1%} "
            f"{r['negative_unassigned']:>8.1%}"
        )
    pooled = rows["CD8 gdT left out (pooled)"]
    print(
        f"CD8 gdT pooled AUROC 95% interval: cell-level {pooled['auroc_ci95_cell']}, "
        f"with neighbourhood {pooled['auroc_ci95']}"
    )
    print(f"lot_neighbours on a 10,000-cell lot: {neighbours_10k:.1f}s")
    result = {
        "protocol": __doc__,
        "seed": SEED,
        "max_epochs_scvi": EPOCHS,
        "n_members": 1,
        "rows": rows,
        "seconds_build_and_map": seconds,
        "lot_neighbours_10k_seconds": neighbours_10k,
        "code_digest": code,
        "machine": machine(),
    }
    print(f"wrote {write_json('oor_neighbourhood', result)}")


if __name__ == "__main__":
    main()
