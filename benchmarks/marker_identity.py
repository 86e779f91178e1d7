"""Marker-panel identity without a reference: our calls beside scanpy's ``score_genes`` and a
"POU5F1 and NANOG detected" rule, on real cells of ../shared/data.

Populations (truth independent of the panels where the data allows):

- ``CAR-T cells``: the 3,138 sorted CD3+ CAR-T cells of five patients (T cells);
- ``hESC``, ``EC``: 50 H1 hESC and 50 hESC-derived endothelial progenitors (full-length; RSEM
  expected counts rounded);
- ``PBMC <label>``: the 700 labelled PBMCs of scanpy's pbmc68k_reduced (a reduced 765-gene panel);
- ``blood/marrow <type>``: cells of the unsorted P02 blood and P01 marrow samples chosen by marker
  rules that use no panel's decision: monocytes (LYZ and CD14, no CD3D/CD3E), B cells (CD79A or
  MS4A1, not T, not monocyte), erythroid (HBB >= 5 counts, none of those), NK cells (NKG7,
  GNLY and one of KLRF1 / NCAM1 / FCGR3A / NCR1; none of CD3D, CD3E, CD3G, TRAC, LYZ, CD14, CD79A,
  MS4A1, HBB).

Every population is scored on its own, as a lot would be. For each profile, on populations that
are none of its target: the fraction called target and the fraction called residual pluripotent
(with the 95% upper bound). Sensitivity: hESC called pluripotent, CAR-T cells under car_t_demo
and NK cells under ipsc_nk_t_car called target. ``score_genes`` calls a cell when the target
panel's score (positive genes, log-normalised, 50 controls per gene from 25 expression bins of
the same lot) is above 0; for pluripotency, the pluripotency panel's. A spike-in series of hESC
into CAR-T cells (0, 0.1, 0.5, 1, 2, 5%; 2,000 cells; replicates) measures linearity and the
limit of blank of each pluripotency call, and the thresholds are swept over real data. Wall time
per 10,000 cells is measured on CAR-T cells resampled with thinning.

Run: ``python benchmarks/marker_identity.py [--replicates 5]``; prints the tables and writes
``benchmarks/results/marker_identity.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, resample_thinned, shared_data, write_json  # noqa: E402

SEED = 0
PROFILES = ("car_t_demo", "ipsc_nk_t_car", "da_progenitor", "msc", "hepatocyte_like")
SPIKE_FRACTIONS = (0.001, 0.005, 0.01, 0.02, 0.05)
TARGET_OF = {  # which populations are each profile's target (truth)
    "car_t_demo": lambda pop: pop == "CAR-T cells" or pop.startswith("PBMC T"),
    "ipsc_nk_t_car": lambda pop: pop.endswith("NK"),
}


def _detected(cells, gene, k=1):
    if gene not in cells.var_names:
        return np.zeros(cells.n_obs, bool)
    col = cells[:, gene].X
    col = col.toarray().ravel() if hasattr(col, "toarray") else np.asarray(col).ravel()
    return col >= k


def populations() -> dict:
    import anndata as ad
    import scipy.sparse as sp

    import sc_celltherapy as sct

    data = shared_data()
    pops = {}
    cart = ad.read_h5ad(data / "cart_labelled_dev.h5ad")
    cart.var_names_make_unique()
    cart.obs = cart.obs[[]]
    pops["CAR-T cells"] = cart
    chu = ad.read_h5ad(data / "hesc_h1_and_endothelial_chu2016_100cells.h5ad")
    chu.X = sp.csr_matrix(np.round(chu.X.toarray() if sp.issparse(chu.X) else chu.X))
    for label, name in (("hESC", "hESC"), ("EC", "EC")):
        pops[name] = chu[chu.obs["cell_type"] == label].copy()
    pbmc = sct.datasets.pbmc_reference()
    labels = pbmc.obs["cell_type"].astype(str)
    groups = {
        "PBMC T": labels.str.contains(r"\bT\b| T Reg|Cytotoxic|Memory"),
        "PBMC B": labels == "CD19+ B",
        "PBMC monocytes": labels == "CD14+ Monocyte",
        "PBMC dendritic": labels == "Dendritic",
        "PBMC NK": labels == "CD56+ NK",
        "PBMC CD34+": labels == "CD34+",
    }
    for name, mask in groups.items():
        pops[name] = pbmc[mask.to_numpy()].copy()
    for file, tag in (
        ("cart_unsorted_blood_P02_CAR-T10310324.h5ad", "blood"),
        ("cart_unsorted_marrow_P01_CAR-T10593344.h5ad", "marrow"),
    ):
        cells = ad.read_h5ad(data / file)
        cells.var_names_make_unique()
        cells.obs = cells.obs[[]]
        d = {g: _detected(cells, g) for g in ("CD3D", "CD3E", "CD3G", "TRAC", "LYZ", "CD14")}
        d |= {g: _detected(cells, g) for g in ("CD79A", "MS4A1", "NKG7", "GNLY")}
        t = d["CD3D"] | d["CD3E"]
        hbb = _detected(cells, "HBB", 5)
        mono = d["LYZ"] & d["CD14"] & ~t
        b = (d["CD79A"] | d["MS4A1"]) & ~t & ~mono
        ery = hbb & ~t & ~mono & ~b
        nk_marker = np.zeros(cells.n_obs, bool)
        for g in ("KLRF1", "NCAM1", "FCGR3A", "NCR1"):
            nk_marker |= _detected(cells, g)
        nk = d["NKG7"] & d["GNLY"] & nk_marker & ~t & ~d["CD3G"] & ~d["TRAC"]
        nk &= ~(d["LYZ"] | d["CD14"] | d["CD79A"] | d["MS4A1"] | hbb)
        for name, mask in (("monocytes", mono), ("B", b), ("erythroid", ery), ("NK", nk)):
            if mask.sum() >= 10:
                pops[f"{tag} {name}"] = cells[mask].copy()
    return pops


def score_genes_call(cells, genes) -> np.ndarray:
    """scanpy's score_genes on the lot alone, score > 0 as the call."""
    import scanpy as sc

    from sc_celltherapy.tl._panels import present_genes

    genes = present_genes(cells, genes)
    if len(genes) == 0:
        return np.zeros(cells.n_obs, bool)
    tmp = cells.copy()
    sc.pp.normalize_total(tmp, target_sum=1e4)
    sc.pp.log1p(tmp)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc.tl.score_genes(tmp, genes, random_state=SEED)
    return tmp.obs["score"].to_numpy() > 0


def pou5f1_nanog(cells) -> np.ndarray:
    return _detected(cells, "POU5F1") & _detected(cells, "NANOG")


def upper95(k: int, n: int) -> float:
    from sc_celltherapy import _stats

    return _stats.fraction_interval(k, n, 0.95)[1]


def ours(cells, profile):
    import sc_celltherapy as sct

    lot = cells.copy()
    sct.tl.identity_score(lot, profile=profile)
    return lot


def calls_table(pops) -> tuple[list[dict], dict]:
    import sc_celltherapy as sct
    from sc_celltherapy.tl._panels import PLURIPOTENCY_PANEL

    rows, scored = [], {}
    for profile in PROFILES:
        prof = sct.atlas.load_profile(profile)
        for pop, cells in pops.items():
            try:
                lot = ours(cells, profile)
            except sct.InputError as err:  # the target panel is not in a reduced gene panel
                rows.append({"profile": profile, "population": pop, "refused": str(err)[:90]})
                continue
            scored[(profile, pop)] = lot
            n = lot.n_obs
            target = (lot.obs["sct_identity_class"] == "target").to_numpy()
            pluri = lot.obs["sct_identity_pluripotent"].to_numpy()
            sg_target = score_genes_call(cells, prof["target"]["markers"]["positive"])
            sg_pluri = score_genes_call(cells, PLURIPOTENCY_PANEL)
            is_target = TARGET_OF.get(profile, lambda p: False)(pop)
            rows.append(
                {
                    "profile": profile,
                    "population": pop,
                    "n": n,
                    "is_target": is_target,
                    "target": float(target.mean()),
                    "target_upper95": upper95(int(target.sum()), n),
                    "score_genes_target": float(sg_target.mean()),
                    "pluripotent": float(pluri.mean()),
                    "pluripotent_upper95": upper95(int(pluri.sum()), n),
                    "score_genes_pluripotent": float(sg_pluri.mean()),
                    "pou5f1_nanog": float(pou5f1_nanog(cells).mean()),
                    "unassigned": float((lot.obs["sct_identity_class"] == "unassigned").mean()),
                    "not_assessed": list(lot.uns["sct_identity"]["not_assessed"]),
                }
            )
    return rows, scored


def sweep(scored) -> list[dict]:
    """Re-decide every scored population at other thresholds from its stored panel scores."""
    from sc_celltherapy.tl._identities import records_by_name
    from sc_celltherapy.tl._identity import _from_markers
    from sc_celltherapy.tl._panels import PanelScore, detected_fraction

    out = []
    for min_z in (3.0, 4.0, 5.0):
        for margin in (1.0, 2.0, 3.0):
            sens, spec = {}, {}
            for (profile, pop), lot in scored.items():
                info = lot.uns["sct_identity"]
                cols = list(info["panel_columns"])
                scores = lot.obsm["sct_identity_panel_scores"]
                z = lot.obsm["sct_identity_panel_z"]
                recs = records_by_name(info)
                panels = {
                    c: PanelScore(scores[:, j], z[:, j], list(recs[c]["genes_found"]), [])
                    for j, c in enumerate(cols)
                }
                contest = [{"name": c, "name_in_class": c} for c in cols]
                contest[0]["name_in_class"] = "target"
                _, classes = _from_markers(
                    panels, contest, detected_fraction(lot), min_z=min_z, margin=margin
                )
                rate = float(np.mean(classes == "target"))
                if TARGET_OF.get(profile, lambda p: False)(pop):
                    sens[f"{profile} on {pop}"] = rate
                else:
                    spec[f"{profile} on {pop}"] = rate
            worst = max(spec, key=spec.get)
            out.append(
                {
                    "min_z": min_z,
                    "margin": margin,
                    "car_t_on_cart": sens.get("car_t_demo on CAR-T cells"),
                    "nk_on_blood_nk": sens.get("ipsc_nk_t_car on blood NK"),
                    "nk_on_pbmc_nk": sens.get("ipsc_nk_t_car on PBMC NK"),
                    "worst_false_target": spec[worst],
                    "worst_false_target_case": worst,
                }
            )
    return out


def spike_series(pops, replicates: int) -> dict:
    import sc_celltherapy as sct

    base, spike = pops["CAR-T cells"], pops["hESC"]
    genes = base.var_names.intersection(spike.var_names)
    base, spike = base[:, genes].copy(), spike[:, genes].copy()
    results, seconds = {}, {}
    assays = {
        "sc_celltherapy": lambda lot: _ours_pluri(lot),
        "POU5F1 and NANOG detected": lambda lot: int(pou5f1_nanog(lot).sum()),
        "score_genes > 0": lambda lot: int(
            score_genes_call(lot, sct.tl._panels.PLURIPOTENCY_PANEL).sum()
        ),
    }
    for name, call in assays.items():
        start = time.perf_counter()
        res = sct.validation.spike_in(
            base,
            spike,
            lambda lot, call=call: (call(lot), lot.n_obs),
            fractions=SPIKE_FRACTIONS,
            n_replicates=replicates,
            n_cells=2000,
            seed=SEED,
            replace=True,
        )
        seconds[name] = time.perf_counter() - start
        results[name] = res.to_dict() | {"seconds": seconds[name]}
    return results


def _ours_pluri(lot) -> int:
    import sc_celltherapy as sct

    sct.tl.identity_score(lot, profile="car_t_demo")
    return int(lot.obs["sct_identity_pluripotent"].sum())


def timing(pops, repeats: int = 3) -> dict:
    import anndata as ad

    import sc_celltherapy as sct

    cart = pops["CAR-T cells"]
    lot = ad.AnnData(resample_thinned(cart.X, 10_000, SEED))
    lot.var_names = cart.var_names
    lot.obs_names = [f"c{i}" for i in range(lot.n_obs)]
    prof = sct.atlas.load_profile("car_t_demo")
    ours_s, peer_s = [], []
    for _ in range(repeats):
        x = lot.copy()
        start = time.perf_counter()
        sct.tl.identity_score(x, profile="car_t_demo")
        ours_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        score_genes_call(lot, prof["target"]["markers"]["positive"])
        peer_s.append(time.perf_counter() - start)
    return {
        "n_cells": lot.n_obs,
        "ours_s_median": float(np.median(ours_s)),
        "score_genes_s_median": float(np.median(peer_s)),
        "ratio": float(np.median(ours_s) / np.median(peer_s)),
        "note": "ours: every panel of car_t_demo and the pluripotency detector; score_genes: "
        "the target panel alone",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicates", type=int, default=5)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning)
    pops = populations()
    rows, scored = calls_table(pops)
    import pandas as pd

    pd.set_option("display.width", 200)
    pd.set_option("display.max_rows", 200)
    table = pd.DataFrame([r for r in rows if "refused" not in r])
    show = ["profile", "population", "n", "target", "target_upper95", "score_genes_target"]
    show += ["pluripotent", "pluripotent_upper95", "score_genes_pluripotent", "pou5f1_nanog"]
    print("Calls per profile and population (fractions of cells)")
    print(table[show].round(4).to_string(index=False))
    refused = [r for r in rows if "refused" in r]
    print(f"\n{len(refused)} profile/population pairs refused (target panel not in the matrix):")
    for r in refused:
        print(f"  {r['profile']} on {r['population']}")

    non_target = table[~table["is_target"]]
    non_psc = non_target[~non_target["population"].isin(["hESC"])]
    checks = {
        "max target upper95 on non-target (>= 200 cells)": float(
            non_target.loc[non_target["n"] >= 200, "target_upper95"].max()
        ),
        "max target fraction on non-target (all)": float(non_target["target"].max()),
        "max pluripotent fraction on non-PSC": float(non_psc["pluripotent"].max()),
        "hESC pluripotent (min over profiles)": float(
            table.loc[table["population"] == "hESC", "pluripotent"].min()
        ),
        "CAR-T cells target under car_t_demo": float(
            table.query("profile == 'car_t_demo' and population == 'CAR-T cells'")["target"].iloc[0]
        ),
    }
    for profile, group in non_target.groupby("profile"):
        k = int(round((group["target"] * group["n"]).sum()))
        n = int(group["n"].sum())
        checks[f"{profile}: non-target cells pooled called target (of {n})"] = k / n
        checks[f"{profile}: pooled upper95"] = upper95(k, n)
    for pop in ("blood NK", "marrow NK", "PBMC NK"):
        hit = table.query("profile == 'ipsc_nk_t_car' and population == @pop")
        if len(hit):
            checks[f"{pop} target under ipsc_nk_t_car"] = float(hit["target"].iloc[0])
    print("\nTargets")
    for k, v in checks.items():
        print(f"  {k:<52} {v:.4f}")

    sweep_rows = sweep(scored)
    print("\nThreshold sweep (our decision re-made from the stored panel scores)")
    print(pd.DataFrame(sweep_rows).round(4).to_string(index=False))

    spikes = spike_series(pops, args.replicates)
    print("\nhESC spiked into CAR-T cells (2,000 cells; cells drawn with replacement)")
    spike_rows = [
        {
            "method": name,
            "slope": r["slope"],
            "r2": r["r2"],
            "blank_fpr": r["false_positive_rate"],
            "limit_of_blank": r["limit_of_blank"],
            "lod": r["lod"],
            "seconds": r["seconds"],
        }
        for name, r in spikes.items()
    ]
    print(pd.DataFrame(spike_rows).round(4).to_string(index=False))

    times = timing(pops)
    print(
        f"\nWall time per {times['n_cells']:,} cells: ours {times['ours_s_median']:.2f} s, "
        f"score_genes {times['score_genes_s_median']:.2f} s (ratio {times['ratio']:.2f})"
    )
    path = write_json(
        "marker_identity",
        {
            "machine": machine(),
            "seed": SEED,
            "calls": rows,
            "targets": checks,
            "sweep": sweep_rows,
            "spike_in": spikes,
            "timing": times,
        },
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
