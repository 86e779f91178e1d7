"""One method of the mapping benchmark on one fold, in its own process.

``python -m _mapping_child {sct|scanvi|sct_map|scanvi_map|speed} REF.h5ad QUERY.h5ad OUT.npz WORKDIR
SEED EPOCHS [N_MEMBERS]``: ``sct`` and ``scanvi`` train on REF and map QUERY, leaving their model in WORKDIR;
``sct_map`` and ``scanvi_map`` map QUERY onto the model such a run left there (``speed`` too, but
writes no predictions).

Writes the predictions of the query cells to OUT.npz (``labels``: the label set, ``probs``:
confidence of each label, ``pred``, ``score``: higher is further from the reference) and prints a
JSON line: seconds (reference training + mapping, imports and file reading excluded) and peak
resident memory of this process. CellTypist runs from ``_mapping_celltypist`` in its own venv.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np

from _common import peak_rss_mb

LABELS_KEY, BATCH_KEY = "CellType1", "Patient"
N_HVG, N_LATENT, N_LAYERS, SCANVI_EPOCHS = 2000, 10, 1, 20
# the scArches architecture of scvi-tools' reference-mapping tutorial, on both sides
ARCHES = {
    "use_layer_norm": "both",
    "use_batch_norm": "none",
    "encode_covariates": True,
    "dropout_rate": 0.2,
}


def build_bundle(ref, out_dir: Path, seed: int, epochs: int, n_members: int | None = None):
    """Our bundle with the benchmark's model settings (also used by oor_space.py, with one
    member); ``n_members=None`` is sct.atlas.build's default ensemble."""
    import sc_celltherapy as sct

    return sct.atlas.build(
        ref,
        labels_key=LABELS_KEY,
        batch_key=BATCH_KEY,
        name="bench",
        version="0",
        out_dir=out_dir,
        n_hvg=N_HVG,
        n_latent=N_LATENT,
        n_layers=N_LAYERS,
        max_epochs=epochs,
        scanvi_max_epochs=SCANVI_EPOCHS,
        seed=seed,
        **({} if n_members is None else {"n_members": n_members}),
    )


def ours(
    ref, query, workdir: Path, seed: int, epochs: int, train: bool = True, n_members=None
) -> dict:
    import sc_celltherapy as sct

    if train:
        bundle = build_bundle(ref, workdir / "bundle", seed, epochs, n_members)
    else:
        bundle = sct.atlas.load(workdir / "bundle")
    sct.tl.map_to_reference(query, bundle, batch_key=BATCH_KEY, seed=seed)
    return {
        "labels": np.asarray(query.uns["sct_ref"]["labels"], dtype=str),
        "probs": query.obsm["sct_ref_probs"],
        "pred": np.asarray(query.obs["sct_ref_label"], dtype=str),
        "score": query.obs["sct_ref_oor_score"].to_numpy(),
        "unassigned": query.obs["sct_ref_unassigned"].to_numpy(),
        "sets": query.obsm["sct_ref_set"],
        "score_latent": query.obs["sct_ref_oor_latent"].to_numpy(),
        "score_expression": query.obs["sct_ref_oor_expression"].to_numpy(),
        "calibration": bundle.manifest["calibration"],
        "oor": bundle.manifest["oor"],
    }


def plain_scanvi(
    ref, query, workdir: Path, seed: int, epochs: int, train: bool = True, n_members=None
) -> dict:
    """scvi-tools' reference-mapping tutorial, as a user writes it: no calibration, no OOR."""
    import scanpy as sc
    import scvi

    scvi.settings.seed = seed
    trainer = {"accelerator": "cpu", "enable_progress_bar": False, "logger": False}
    if train:
        sc.pp.highly_variable_genes(ref, n_top_genes=N_HVG, flavor="seurat_v3", subset=True)
        scvi.model.SCVI.setup_anndata(ref, batch_key=BATCH_KEY, labels_key=LABELS_KEY)
        vae = scvi.model.SCVI(ref, n_latent=N_LATENT, n_layers=N_LAYERS, **ARCHES)
        vae.train(max_epochs=epochs, train_size=1.0, **trainer)
        lvae = scvi.model.SCANVI.from_scvi_model(
            vae, unlabeled_category="Unknown", labels_key=LABELS_KEY
        )
        lvae.train(max_epochs=SCANVI_EPOCHS, train_size=1.0, n_samples_per_label=100, **trainer)
        lvae.save(workdir / "scanvi_ref", overwrite=True)
        (workdir / "genes.txt").write_text("\n".join(ref.var_names))
    ref_genes = (workdir / "genes.txt").read_text().split("\n")
    query = query[:, query.var_names.isin(ref_genes)].copy()
    query.obs[LABELS_KEY] = "Unknown"
    scvi.model.SCANVI.prepare_query_anndata(query, str(workdir / "scanvi_ref"))
    qmodel = scvi.model.SCANVI.load_query_data(query, str(workdir / "scanvi_ref"))
    from sc_celltherapy.atlas._model import surgery_batch_size, surgery_epochs

    qmodel.train(  # the same surgery schedule as map_to_reference
        max_epochs=surgery_epochs(query.n_obs),
        batch_size=surgery_batch_size(query.n_obs),
        train_size=1.0,
        plan_kwargs={"weight_decay": 0.0},
        **trainer,
    )
    soft = qmodel.predict(query, soft=True)
    probs = soft.to_numpy()
    return {
        "labels": np.asarray(soft.columns, dtype=str),
        "probs": probs,
        "pred": np.asarray(soft.columns, dtype=str)[probs.argmax(axis=1)],
        "score": 1 - probs.max(axis=1),
    }


def main() -> None:
    import warnings

    warnings.simplefilter("ignore")
    method, ref_path, query_path, out, workdir = sys.argv[1:6]
    seed, epochs = int(sys.argv[6]), int(sys.argv[7])
    n_members = int(sys.argv[8]) if len(sys.argv) > 8 else None  # None: the bundle default
    workdir = Path(workdir)
    import scvi  # noqa: F401  (imports are not timed)

    import sc_celltherapy  # noqa: F401

    ref, query = ad.read_h5ad(ref_path), ad.read_h5ad(query_path)
    if method == "speed":  # mapping only, onto the bundle an 'sct' run left in workdir
        import sc_celltherapy as sct

        bundle = sct.atlas.load(workdir / "bundle")
        start = time.perf_counter()
        sct.tl.map_to_reference(query, bundle, batch_key=BATCH_KEY, seed=seed)
        result = {"n_unassigned": int(query.obs["sct_ref_unassigned"].sum())}
    else:
        start = time.perf_counter()
        run = ours if method.startswith("sct") else plain_scanvi
        result = run(
            ref,
            query,
            workdir,
            seed,
            epochs,
            train=not method.endswith("_map"),
            n_members=n_members,
        )
    seconds = time.perf_counter() - start
    calibration, oor = result.pop("calibration", None), result.pop("oor", None)
    if method != "speed":
        np.savez(out, **result)
    peak_mb = peak_rss_mb()
    record = {"seconds": seconds, "peak_mb": peak_mb, "calibration": calibration, "oor": oor}
    print(json.dumps(record))


if __name__ == "__main__":
    main()
