"""Probe for issue 26: would out-of-reference scores read per predicted label separate an
unseen neighbouring state better? Not the package's method; a design check before changing it.

The package's latent component is each cell's local outlier ratio over one held-out 99% quantile
for all labels. Held-out cells of a sparse, heterogeneous label (a rare state, DN gdT) sit at
higher ratios than those of a dense one (CD8 TEM), so one scale lets a cell of an unseen state
that lands beside a dense label pass. Variants scored here, from the same mappings:

- ``package``: ``sct_ref_oor_score`` as mapped (bundle format 7);
- ``by_label``: the latent ratio over the held-out 99% quantile of the cells *predicted* the same
  label (Mondrian conformal by predicted label; labels with fewer than ``MIN_CELLS`` held-out
  predictions keep the pooled scale), then combined and taken over the lot neighbourhood as the
  package does;
- ``conf_weighted``: the package's score times ``2 - confidence`` (last session's lead);
- ``both``: the two together.

Cases (one-member bundles, 200 scVI epochs, seed 0, as ``oor_neighbourhood.py``): each
leave-one-patient-out fold of ``cart_labelled_dev.h5ad`` with CD8 gdT left out of the reference,
and the P01 fold's full reference with the unsorted marrow and blood samples (marker truth of
``mapping.py``). Reported: each variant's AUROC, and the share of each side called out of
reference by the package and by the by-label score at its own split-conformal 99% threshold,
fitted as ``atlas.build`` fits the package's (held-out donors' cells, each donor one lot for
the neighbourhood; the script checks that it reproduces the package's threshold).
``by_label`` is also scored with ``MIN_CELLS`` 10 and 100, to show how much it leans on that
constant.

Run: ``python benchmarks/oor_by_label.py --work-dir DIR`` (about 45 min on 2 CPU cores). The
bundles are kept in DIR and a rerun only maps again (a few minutes); they are not checked
against the code, so empty DIR after changing the package.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write_json  # noqa: E402
from _mapping_child import BATCH_KEY, build_bundle  # noqa: E402
from mapping import MARROW, OOR_LABEL, PATIENTS, SEED, fold, labelled_cells, write_foreign_query  # noqa: E402
from oor_neighbourhood import BLOOD, EPOCHS  # noqa: E402

MIN_CELLS = 30  # held-out cells predicted a label before it gets its own scale
VARIANTS = ("package", "by_label", "conf_weighted", "both")


def kept_bundle(work: Path, name: str, ref):
    """The one-member bundle of ``name`` on ``ref``, built once and kept in ``work``."""
    import sc_celltherapy as sct

    path = work / f"bundle_{name}"
    if not (path / "bundle.json").exists():
        build_bundle(ref, path, SEED, EPOCHS, 1)
    return sct.atlas.load(path)


def mapped_lot(bundle, path: Path):
    """The lot at ``path`` mapped onto ``bundle``, with its own neighbours."""
    import anndata as ad

    import sc_celltherapy as sct
    from sc_celltherapy.atlas import lot_neighbours

    lot = ad.read_h5ad(path)
    sct.tl.map_to_reference(lot, bundle, batch_key=BATCH_KEY, seed=SEED)
    return lot, lot_neighbours(lot.X, seed=SEED)


def held_out_rows(bundle, ref, held: dict) -> np.ndarray:
    """The rows of ``ref`` (the reference the bundle was built on) that the bundle's stored
    held-out predictions ``held`` belong to: each donor's cells whose label its fold's models
    knew (held by at least ``k`` cells of the other donors; ``k`` found by matching labels and
    donors exactly, or an error)."""
    import pandas as pd

    labels = list(bundle.manifest["labels"])
    truth = ref.obs["CellType1"].astype(str).to_numpy()
    donors = ref.obs[BATCH_KEY].astype(str).to_numpy()
    for k in range(1, 40):
        rows = np.zeros(ref.n_obs, dtype=bool)
        for d in np.unique(donors):
            counts = pd.Series(truth[donors != d]).value_counts()
            rows[donors == d] = np.isin(truth[donors == d], counts.index[counts >= k])
        rows &= np.isin(truth, labels)
        if (
            rows.sum() == held["y"].size
            and np.array_equal([labels.index(t) for t in truth[rows]], held["y"])
            and np.array_equal(donors[rows], held["donors"])
        ):
            return np.flatnonzero(rows)
    raise RuntimeError("the held-out predictions do not match the reference's cells")


def by_label_fits(bundle, ref, min_cells: list[int]) -> dict[int, tuple[np.ndarray, float]]:
    """For each ``min_cells``: each label's scale (the held-out 99% quantile of the latent ratio
    among held-out cells predicted that label, calibrated; the pooled scale where fewer than
    ``min_cells`` were) and the by-label score's split-conformal 99% threshold, cell level and
    lot neighbourhood, each donor's held-out cells one lot, as ``atlas.build`` fits the
    package's. The package's threshold, fitted the same way, must reproduce the bundle's."""
    from sc_celltherapy.atlas._calibration import calibrate
    from sc_celltherapy.atlas._neighbourhood import held_out_neighbourhood
    from sc_celltherapy.atlas._novelty import lineage_genes, oor_threshold

    held = bundle.held_out_predictions()
    rows = held_out_rows(bundle, ref, held)
    counts = sp.csr_matrix(ref.X)[:, np.flatnonzero(lineage_genes(ref.var_names))]
    latent, scales = held["oor_latent"], bundle.manifest["oor"]["scales"]
    expression = held["oor_expression"] / scales["expression"]
    pred = calibrate(
        held["probs"],
        bundle.manifest["calibration"],
        latent_ratio=latent,
        marker_loglik=held["marker_loglik"],
    ).argmax(axis=1)

    def threshold(cell: np.ndarray) -> float:
        nb = held_out_neighbourhood(counts, rows, held["donors"], cell, seed=SEED)
        return oor_threshold(np.maximum(cell, nb), 0.99)[0]

    if not np.isclose(
        threshold(np.maximum(latent / scales["latent"], expression)),
        bundle.manifest["oor"]["threshold"],
    ):
        raise RuntimeError("the package's threshold was not reproduced")
    out = {}
    for m in min_cells:
        per_label = np.full(held["probs"].shape[1], scales["latent"])
        for j in range(per_label.size):
            if (pred == j).sum() >= m:
                per_label[j] = oor_threshold(latent[pred == j], 0.99)[0]
        out[m] = per_label, threshold(np.maximum(latent / per_label[pred], expression))
    return out


def variant_scores(bundle, lot, neighbours, per_label, threshold) -> dict[str, np.ndarray]:
    from sc_celltherapy.atlas._neighbourhood import neighbourhood_median

    obs = lot.obs
    scales = bundle.manifest["oor"]["scales"]
    labels = list(bundle.manifest["labels"])
    pred = np.array([labels.index(x) for x in obs["sct_ref_label"].astype(str)])
    conf = obs["sct_ref_prob"].to_numpy()
    expression = obs["sct_ref_oor_expression"].to_numpy() / scales["expression"]
    latent = obs["sct_ref_oor_latent"].to_numpy()

    def with_neighbourhood(cell: np.ndarray) -> np.ndarray:
        return np.maximum(cell, neighbourhood_median(cell, neighbours))

    by_label_cell = np.maximum(latent / per_label[pred], expression)
    by_label = with_neighbourhood(by_label_cell)
    package_cell = np.maximum(latent / scales["latent"], expression)
    return {
        "package": obs["sct_ref_oor_score"].to_numpy(),
        "by_label": by_label,
        "conf_weighted": with_neighbourhood(package_cell * (2 - conf)),
        "both": with_neighbourhood(by_label_cell * (2 - conf)),
        # called out of reference, each score at its own held-out threshold
        "called_package": obs["sct_ref_unassigned"].to_numpy(),
        "called_by_label": by_label > threshold,
    }


def aurocs(truth: np.ndarray, scores: dict) -> dict:
    """AUROC of each variant for truth 1 against 0, and the share of each side called out of
    reference by the package and by the by-label score at its own threshold."""
    from sklearn.metrics import roc_auc_score

    keep = truth >= 0
    if len(np.unique(truth[keep])) < 2:
        return {}
    called = {
        f"{c[7:]} ({side})": float(scores[c][truth == t].mean())
        for c in ("called_package", "called_by_label")
        for side, t in (("positive", 1), ("negative", 0))
    }
    return {v: float(roc_auc_score(truth[keep], scores[v][keep])) for v in VARIANTS} | called


def scored_cases(work: Path, min_cells: list[int]) -> dict[int, dict]:
    """Each case mapped once; its variants' AUROCs for each ``min_cells``."""
    cells = labelled_cells()
    is_gdt = (cells.obs["CellType1"] == OOR_LABEL).to_numpy().astype(int)
    pooled: dict[int, dict] = {m: {} for m in min_cells}
    rows: dict[int, dict] = {m: {} for m in min_cells}
    for p in PATIENTS:
        ref, in_query = fold(cells, p, OOR_LABEL)
        cells[in_query].copy().write_h5ad(work / f"query_{p}.h5ad")
        bundle = kept_bundle(work, f"{p}_no_gdT", ref)
        lot, neighbours = mapped_lot(bundle, work / f"query_{p}.h5ad")
        for m, fit in by_label_fits(bundle, ref, min_cells).items():
            scores = variant_scores(bundle, lot, neighbours, *fit)
            for v, x in scores.items():
                pooled[m].setdefault(v, np.zeros(cells.n_obs, x.dtype))[in_query] = x
            rows[m][f"CD8 gdT left out, {p}"] = aurocs(is_gdt[in_query], scores)
    for m in min_cells:
        rows[m]["CD8 gdT left out (pooled)"] = aurocs(is_gdt, pooled[m])
    ref, _ = fold(cells, "P01")
    bundle = kept_bundle(work, "P01_full", ref)
    fits = by_label_fits(bundle, ref, min_cells)
    for sample, file in (("marrow", MARROW), ("blood", BLOOD)):
        truth = write_foreign_query(work, file, sample, f"P01_{sample}")
        lot, neighbours = mapped_lot(bundle, work / f"query_{sample}.h5ad")
        for m, fit in fits.items():
            scores = variant_scores(bundle, lot, neighbours, *fit)
            rows[m][f"{sample}: marker truth"] = aurocs(truth, scores)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work-dir", type=Path, required=True)
    parser.add_argument(
        "--min-cells",
        type=int,
        nargs="+",
        default=[MIN_CELLS, 10, 100],
        help="held-out predictions a label needs for its own scale (the first is the main "
        "setting; the others show how much the figures lean on it)",
    )
    args = parser.parse_args()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    rows = scored_cases(args.work_dir, args.min_cells)
    for m in args.min_cells:
        print(f"\nmin_cells {m}\n{'case':<30}" + "".join(f"{v:>14}" for v in VARIANTS))
        for case, r in rows[m].items():
            print(f"{case:<30}" + "".join(f"{r.get(v, float('nan')):>14.3f}" for v in VARIANTS))
        print("called out of reference (held-out 99% thresholds, neighbourhood included)")
        for case, r in rows[m].items():
            print(f"  {case:<30} " + ", ".join(f"{k} {v:.1%}" for k, v in r.items() if "(" in k))
    result = {
        "protocol": __doc__,
        "seed": SEED,
        "min_cells": args.min_cells[0],
        "rows": rows[args.min_cells[0]],
        "rows_by_min_cells": {str(m): rows[m] for m in args.min_cells},
        "machine": machine(),
    }
    print(f"wrote {write_json('oor_by_label', result)}")


if __name__ == "__main__":
    main()
