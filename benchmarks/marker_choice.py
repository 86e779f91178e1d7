"""Which genes the marker-detection evidence may read: design check for issue 26.

On the new-donor benchmark (``mapping_new_donors.py``) P03's ``CD4 CTL`` cells, a state its
split's reference lacks, are all called ``DN TEM`` at a median calibrated confidence of 0.97
(the model's own: 0.64). They detect CD4 and the reference's 335 ``DN TEM`` cells never do, yet
CD4 is no marker of that bundle: only 14 reference cells (``CD4 TEM``) detect it, so it is
neither one of the model's 2,000 variable genes nor a gene that separates two labels of at
least 30 cells. Two changes a reader would propose, alone and together:

- *all genes*: choose markers among every gene the reference measured (quality genes left out,
  as for the expression excess), not only the model's variable genes;
- *one-sided markers*: also keep a gene that a well-populated label (>= 30 cells) never
  detects when some other label (any size, its rate shrunk towards all cells') detects it often
  enough that a detection is as strong evidence as a two-sided marker's: ``P_j / P_k >= (1 +
  SEPARATION) / (1 - SEPARATION)`` at the median depth, both kept within ``[EPS, 1 - EPS]``.

Each split's kept bundle (``--work-dir`` of ``mapping_new_donors.py``, run first) is
recalibrated with each choice: the evidence is cross-fitted on the bundle's own calibration
folds, the calibration refitted (``fit_across_donors``) on the bundle's stored held-out
predictions, and the split's query (mapped onto the kept models by ``map_to_reference``, the
model's own probabilities kept) calibrated with it. Per test donor (pooled over its two splits,
as ``mapping_new_donors.py`` pools them): ECE, label-set coverage at alpha 0.1, accuracy. The
"model's variable genes, two-sided" row is the package's own evidence: its held-out
log-likelihoods are checked against the ones the bundle stored.

Run: ``python benchmarks/marker_choice.py --work-dir DIR`` (about 3 min on 2 CPU cores).
Prints a table and writes ``benchmarks/results/marker_choice.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from unittest import mock

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write_json  # noqa: E402
from mapping_new_donors import SPLITS, donor_metrics  # noqa: E402

SEED = 0
CHOICES = {
    ("variable", False): "model's variable genes, two-sided (ours)",
    ("variable", True): "model's variable genes, + one-sided",
    ("all", False): "all genes, two-sided",
    ("all", True): "all genes, + one-sided",
}


def fit_one_sided(counts, depth, y, donors, n_labels: int, genes) -> dict:
    """``fit_marker_evidence`` with one-sided markers added (see the module's docstring)."""
    from sc_celltherapy.atlas import _marker_evidence as me

    detected = me._detected(counts)
    _, inv, cnt = np.unique(donors, return_inverse=True, return_counts=True)
    weights = 1.0 / cnt[inv]
    sizes = np.bincount(y, minlength=n_labels)
    populated, present = np.flatnonzero(sizes >= me.MIN_LABEL_CELLS), np.flatnonzero(sizes)
    frac = {k: weights[y == k] @ detected[y == k] / weights[y == k].sum() for k in present}
    low = np.vstack([frac[k] for k in populated]).min(axis=0)
    high = np.vstack([frac[k] for k in present]).max(axis=0)
    spread = high - low
    candidates = np.flatnonzero(spread >= me.SEPARATION / 2)
    candidates = candidates[np.argsort(-spread[candidates], kind="stable")[: me.MAX_CANDIDATES]]
    sub = detected[:, candidates]
    pooled = me._grid_loglik(sub, depth, weights / weights.sum())
    rates = np.vstack(
        [me._label_rates(sub, depth, weights, y == k, pooled) for k in range(n_labels)]
    )
    median = float(np.median(depth))
    at_median = 1 - np.exp(-median * rates)
    gap = at_median[populated].max(axis=0) - at_median[populated].min(axis=0)
    clipped = np.clip(at_median, me.EPS, 1 - me.EPS)
    ratio = clipped[present].max(axis=0) / clipped[populated].min(axis=0)
    lr_min = (1 + me.SEPARATION) / (1 - me.SEPARATION)
    keep = (gap >= me.SEPARATION) | (ratio >= lr_min)
    keep &= ~me._donor_confounded(sub, depth, y, donors, populated, median)
    # one scale for both kinds: a two-sided gap of 0.9 and a detection ratio of lr_min rank alike
    strength = np.maximum(gap, me.SEPARATION * np.log(ratio) / np.log(lr_min))
    chosen = np.flatnonzero(keep)[np.argsort(-strength[keep], kind="stable")[: me.MAX_MARKERS]]
    return {
        "genes": [str(genes[candidates[j]]) for j in chosen],
        "columns": [int(candidates[j]) for j in chosen],
        "rates": rates[:, chosen].tolist(),
        "n_labels": n_labels,
        "eps": me.EPS,
    }


def evidence(counts, depth, y, donors, n_labels, genes, one_sided: bool) -> dict:
    from sc_celltherapy.atlas._marker_evidence import fit_marker_evidence

    fit = fit_one_sided if one_sided else fit_marker_evidence
    return fit(counts, depth, y, donors, n_labels, genes)


def loglik(ev: dict, counts, depth) -> np.ndarray:
    from sc_celltherapy.atlas._marker_evidence import marker_loglik

    return marker_loglik(ev, counts[:, ev["columns"]], depth)


def mapped_model_probs(bundle_dir: Path, query) -> tuple[np.ndarray, np.ndarray]:
    """The query's model probabilities and latent ratios before calibration, as
    ``map_to_reference`` computes them."""
    import sc_celltherapy as sct
    import sc_celltherapy.atlas as atlas

    with mock.patch.object(atlas, "calibrate", wraps=atlas.calibrate) as spy:
        sct.tl.map_to_reference(query, bundle_dir, batch_key="Patient", seed=SEED)
    return np.asarray(spy.call_args.args[0]), np.asarray(spy.call_args.kwargs["latent_ratio"])


def split_rows(work: Path, tag: str) -> dict:
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    import sc_celltherapy as sct
    from sc_celltherapy.atlas._bundle import MIN_CELLS_PER_LABEL
    from sc_celltherapy.atlas._calibration import calibrate, fit_across_donors, prediction_sets
    from sc_celltherapy.atlas._folds import calibration_folds
    from sc_celltherapy.atlas._marker_evidence import reference_depth
    from sc_celltherapy.atlas._novelty import lineage_genes

    bundle_dir = work / f"sct_{tag}" / "bundle"
    bundle = sct.atlas.load(bundle_dir)
    labels, bundle_genes = list(bundle.manifest["labels"]), list(bundle.genes)
    held_out = np.load(bundle_dir / "held_out_predictions.npz", allow_pickle=False)
    ref = ad.read_h5ad(work / f"ref_{tag}.h5ad")
    query = ad.read_h5ad(work / f"query_{tag}.h5ad")
    truth, patient = (query.obs[k].astype(str).to_numpy() for k in ("CellType1", "Patient"))
    model_probs, latent_ratio = mapped_model_probs(bundle_dir, query)

    # the bundle's calibration folds and the cells it calibrated on (as sct.atlas.build)
    ref_truth = ref.obs["CellType1"].astype(str).to_numpy()
    folds, donors = calibration_folds(ref.obs, "CellType1", "Patient", 0.2, SEED)
    known = np.zeros(ref.n_obs, dtype=bool)
    for held in folds:
        sizes = pd.Series(ref_truth[~held]).value_counts()
        known[held] = np.isin(ref_truth[held], sizes.index[sizes >= MIN_CELLS_PER_LABEL])
    cells = np.any(folds, axis=0) & known
    all_labels = sorted(set(ref_truth))
    y = np.array([all_labels.index(t) for t in ref_truth])
    order = [all_labels.index(lab) for lab in labels]

    names = ref.var_names.to_numpy()
    columns = {
        # in the bundle's gene order, as the bundle fitted its evidence
        "variable": np.array([list(names).index(g) for g in bundle_genes]),
        "all": np.flatnonzero(lineage_genes(names)),
    }
    ref_x, query_x = sp.csr_matrix(ref.X), sp.csr_matrix(query.X)
    rows = {}
    for (space, one_sided), name in CHOICES.items():
        cols = columns[space]
        genes, counts, lot = names[cols], ref_x[:, cols], query_x[:, cols]
        depth, lot_depth = reference_depth(counts), reference_depth(lot)
        held_ll = np.zeros((ref.n_obs, len(all_labels)))
        for held in folds:
            ev = evidence(
                counts[~held],
                depth[~held],
                y[~held],
                donors[~held],
                len(all_labels),
                genes,
                one_sided,
            )
            if ev["genes"]:
                held_ll[held] = loglik(ev, counts[held], depth[held])
        held_ll = held_ll[:, order][cells]
        if (space, one_sided) == ("variable", False):
            gap = float(np.abs(held_ll - held_out["marker_loglik"]).max())
            assert gap < 1e-4, f"the package's evidence is not reproduced ({gap})"
        calibration = fit_across_donors(
            held_out["probs"],
            held_out["y"],
            held_out["donors"],
            latent_ratio=held_out["oor_latent"],
            marker_loglik=held_ll,
        )
        ev = evidence(counts, depth, y, donors, len(all_labels), genes, one_sided)
        lot_ll = loglik(ev, lot, lot_depth)[:, order] if ev["genes"] else 0 * model_probs
        probs = calibrate(model_probs, calibration, latent_ratio=latent_ratio, marker_loglik=lot_ll)
        pred = {
            "labels": np.array(labels),
            "probs": probs,
            "pred": np.array(labels)[probs.argmax(axis=1)],
            "sets": prediction_sets(probs, calibration["conformal"]),
        }
        rows[name] = {
            "markers": ev["genes"],
            "method": calibration["method"],
            "donors": {
                d: donor_metrics(
                    {k: v if k == "labels" else v[patient == d] for k, v in pred.items()},
                    truth[patient == d],
                )
                for d in np.unique(patient)
            },
        }
        print(f"{tag} {name}: {len(ev['genes'])} markers, {calibration['method']}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work-dir", type=Path, required=True)
    args = parser.parse_args()
    splits = {f"{a}_{b}": split_rows(args.work_dir, f"{a}_{b}") for a, b in SPLITS}
    summary = {}
    for name in CHOICES.values():
        per_donor: dict[str, list] = {}
        for rows in splits.values():
            for d, r in rows[name]["donors"].items():
                per_donor.setdefault(d, []).append(r)
        table = {
            d: {k: float(np.mean([r[k] for r in rs])) for k in ("ece", "coverage", "accuracy")}
            for d, rs in sorted(per_donor.items())
        }
        eces = [r["ece"] for r in table.values()]
        summary[name] = {
            "per_donor": table,
            "ece_worst_donor": max(eces),
            "ece_mean_donor": float(np.mean(eces)),
            "coverage_worst_donor": min(r["coverage"] for r in table.values()),
        }
    donors = list(next(iter(summary.values()))["per_donor"])
    print(
        f"\n{'markers chosen from':<42}"
        + "".join(f"{d:>20}" for d in donors)
        + "  ECE worst / mean"
    )
    print(f"{'':<42}" + "".join(f"{'ECE  cov  acc':>20}" for _ in donors))
    for name, s in summary.items():
        cells = "".join(
            f"{r['ece']:>8.3f}{r['coverage']:>6.3f}{r['accuracy']:>6.3f}"
            for r in s["per_donor"].values()
        )
        print(f"{name:<42}{cells}  {s['ece_worst_donor']:.3f} / {s['ece_mean_donor']:.3f}")
    write_json(
        "marker_choice",
        {
            "protocol": __doc__,
            "seed": SEED,
            "summary": summary,
            "splits": splits,
            "machine": machine(),
        },
    )


if __name__ == "__main__":
    main()
