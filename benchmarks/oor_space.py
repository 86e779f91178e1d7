"""Where to measure "not in the reference": the space of the out-of-reference score.

Design check for issue 3. ``sct_ref_oor_score`` is a local outlier ratio (k = 50) in the bundle's
scANVI latent space. Two alternatives a reader would propose, scored by the same ratio so only
the space differs:

- the unsupervised scVI latent (scANVI's classifier might pull unseen cells towards known
  labels; scVI is trained on the same cells, genes and settings, and the lot gets the same
  scArches surgery);
- the expression space itself: the first 30 principal components of log-normalised counts of
  the bundle's genes, fitted on the reference, the lot projected onto them.

Each case is one leave-one-patient-out fold of ``cart_labelled_dev.h5ad`` with one T-cell type
removed from the reference: the bundle is built on the rest (the mapping benchmark's settings),
the patient is mapped, and the AUROC of each score is measured for the left-out type's cells
against the rest of that patient's cells; one minus the calibrated top probability is the
baseline. Cases: CD8 gdT (the mapping benchmark's left-out type) in its two largest folds, and
two other T-cell types in the fold where they are most numerous, so that a space is not chosen
on one label alone.

Run: ``python benchmarks/oor_space.py [--max-epochs 100]`` (about 30 min on 2 CPU cores).
Prints a table and writes ``benchmarks/results/oor_space.json``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write_json  # noqa: E402
from _mapping_child import BATCH_KEY, LABELS_KEY, N_LATENT, N_LAYERS, build_bundle  # noqa: E402
from mapping import fold, labelled_cells  # noqa: E402

SEED = 0
K = 50  # the bundle's OOR_K
N_PCS = 30
CASES = [("P02", "CD8 gdT"), ("P01", "CD8 gdT"), ("P03", "CD4 CTL"), ("P02", "CD4 TEM")]
SCORES = ["scANVI latent (ours)", "scVI latent", f"expression PCA{N_PCS}", "1 - max prob"]


def scvi_latents(ref, query, genes, epochs: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """scVI with the bundle's architecture on the reference, scArches surgery for the query."""
    import scvi

    from sc_celltherapy.atlas import _model

    ref, query = ref[:, genes].copy(), query[:, genes].copy()
    for a in (ref, query):
        a.obs = a.obs[[BATCH_KEY]].astype("category")
    with _model.quiet_training(), warnings.catch_warnings():
        # surgery trains without dropout on purpose (as in _model.map_query)
        warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
        scvi.settings.seed = seed
        scvi.model.SCVI.setup_anndata(ref, batch_key=BATCH_KEY)
        vae = scvi.model.SCVI(ref, n_latent=N_LATENT, n_layers=N_LAYERS, **_model.ARCHES_PARAMS)
        vae.train(max_epochs=epochs, train_size=1.0, **_model._trainer_kwargs())
        scvi.model.SCVI.prepare_query_anndata(query, vae)
        scvi.settings.seed = seed
        surgery = scvi.model.SCVI.load_query_data(query, vae)
        surgery.train(
            max_epochs=_model.surgery_epochs(query.n_obs),
            batch_size=_model.surgery_batch_size(query.n_obs),
            train_size=1.0,
            plan_kwargs={"weight_decay": 0.0},
            **_model._trainer_kwargs(),
        )
    return vae.get_latent_representation(ref), surgery.get_latent_representation(query)


def pca_coordinates(ref, query, genes) -> tuple[np.ndarray, np.ndarray]:
    import scanpy as sc
    from sklearn.decomposition import PCA

    def lognorm(a):
        a = a[:, genes].copy()
        sc.pp.normalize_total(a, target_sum=1e4)
        sc.pp.log1p(a)
        return a.X.toarray() if hasattr(a.X, "toarray") else np.asarray(a.X)

    pca = PCA(n_components=N_PCS, random_state=SEED)
    return pca.fit_transform(lognorm(ref)), pca.transform(lognorm(query))


def run_case(cells, patient, left_out, work: Path, epochs: int) -> dict:
    from sklearn.metrics import roc_auc_score

    import sc_celltherapy as sct
    from sc_celltherapy.atlas._novelty import local_outlier_ratio, reference_spacing

    ref, in_query = fold(cells, patient, left_out)
    query = cells[in_query].copy()
    is_out = (query.obs[LABELS_KEY] == left_out).to_numpy()
    # one model: the question is the space, so each space gets one model (seed ensembles are
    # measured in the mapping benchmark)
    bundle = build_bundle(ref, work / f"{patient}_{left_out.replace(' ', '_')}", SEED, epochs, 1)
    mapped = query.copy()
    sct.tl.map_to_reference(mapped, bundle, batch_key=BATCH_KEY, seed=SEED)

    def ratio(r, q):
        return local_outlier_ratio(r, q, reference_spacing(r, k=K), k=K)

    t0 = time.perf_counter()
    scvi_ref, scvi_query = scvi_latents(ref, query, bundle.genes, epochs, SEED)
    scvi_seconds = time.perf_counter() - t0
    scores = {
        SCORES[0]: mapped.obs["sct_ref_oor_score"].to_numpy(),
        SCORES[1]: ratio(scvi_ref, scvi_query),
        SCORES[2]: ratio(*pca_coordinates(ref, query, bundle.genes)),
        SCORES[3]: 1 - mapped.obs["sct_ref_prob"].to_numpy(),
    }
    return {
        "patient": patient,
        "left_out": left_out,
        "n_left_out": int(is_out.sum()),
        "n_query": int(is_out.size),
        "auroc": {name: float(roc_auc_score(is_out, s)) for name, s in scores.items()},
        "scvi_train_and_surgery_seconds": scvi_seconds,
    }


def main() -> None:

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--max-epochs", type=int, default=100, help="scVI epochs (bundle and scVI)")
    args = parser.parse_args()

    cells = labelled_cells()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for patient, left_out in CASES:
            rows.append(run_case(cells, patient, left_out, Path(tmp), args.max_epochs))
            print(f"  {patient} without {left_out}: {rows[-1]['auroc']}", flush=True)

    header = f"{'case':<22} {'n':>9} " + " ".join(f"{s:>21}" for s in SCORES)
    print(f"\nOOR AUROC of the left-out type against the rest of its patient, seed {SEED}")
    print(header + "\n" + "-" * len(header))
    for r in rows:
        n = f"{r['n_left_out']}/{r['n_query']}"
        aucs = " ".join(f"{r['auroc'][s]:>21.3f}" for s in SCORES)
        print(f"{r['patient'] + ' ' + r['left_out']:<22} {n:>9} {aucs}")
    means = {s: float(np.mean([r["auroc"][s] for r in rows])) for s in SCORES}
    print(f"{'mean over cases':<22} {'':>9} " + " ".join(f"{means[s]:>21.3f}" for s in SCORES))
    path = write_json(
        "oor_space",
        {
            "protocol": __doc__.split("Run:")[0].strip(),
            "seed": SEED,
            "k": K,
            "max_epochs_scvi": args.max_epochs,
            "cases": rows,
            "mean_auroc": means,
            "machine": machine(),
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
