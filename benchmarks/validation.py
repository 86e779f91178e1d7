"""The validation dossier of the shipped CAR-T example plan: its run time, and whether reusing
each cell's pooled call for the mixtures changes the numbers (issue 24).

- sc_celltherapy: ``sct.validation.run`` on ``reference_atlases/validation_plans/car_t_demo.yaml``
  (3 impurities x 6 levels x 5 replicates + 10 blanks, 2,000-cell mixtures, 2 seeds, 7
  robustness levels), the materials read from ../shared/data, and ``write_dossier``.
- the peer: what a lab without the shortcut runs: every mixture through the whole release chain
  on its own (``sct.release.assess``: QC, mapping onto pbmc_demo, identity, purity). Timed on one
  replicate per impurity and level plus two blanks (20 mixtures), drawn from the same pooled
  cells, and extrapolated to the plan's mixture count (said so in the table). For each of those
  mixtures the pooled-call estimate of the same cells is compared with the whole-chain estimate
  and its 95% interval.

Prints a table and writes ``benchmarks/results/validation.json``.
Run: ``python benchmarks/validation.py [--out-dir DIR]``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import code_digest, machine, peak_rss_mb, shared_data, write_json  # noqa: E402

PLAN = Path(__file__).resolve().parents[1] / "reference_atlases/validation_plans/car_t_demo.yaml"


def plan_on_shared_data() -> dict:
    plan = yaml.safe_load(PLAN.read_text())
    for material in [plan["base"], *(i["material"] for i in plan["impurities"])]:
        material["file"] = str(shared_data() / Path(material["file"]).name)
    return plan


def whole_chain_mixtures(plan_dict: dict) -> tuple[list[dict], float]:
    """The peer: one replicate per impurity and level plus two blanks, each through the whole
    chain, beside the pooled-call estimate of the same cells."""
    import sc_celltherapy as sct
    from sc_celltherapy.validation import _materials, _run

    plan = sct.validation.load_plan(plan_dict)
    c = plan.content
    bundle, profile = _run._resolve(plan)
    base = _materials.read_material(c["base"], where="base")
    mats = {}
    rng = np.random.default_rng(c["seed"])
    for imp in c["impurities"]:
        cells = _materials.read_material(imp["material"], where="impurity")
        if imp["material"].get("match_depth"):
            cells = _materials.match_depth(cells, base, rng)
        mats[_run.impurity_key(imp)] = cells
    pooled = _materials.pool(base, mats, base_only=plan.spec.transgene_features)
    calls = _run._pooled_calls(pooled, plan, bundle, profile, c["seed"])
    material = pooled.obs[_materials.MATERIAL_KEY].astype(str).to_numpy()
    base_idx = np.flatnonzero(material == "base")
    draw_rng = np.random.default_rng(c["seed"] + 5000)
    draws = [(imp, 0.0) for imp in c["impurities"][:2]]  # two blanks
    draws += [(imp, f) for imp in c["impurities"] for f in c["levels"]]
    rows, seconds = [], 0.0
    for imp, f in draws:
        key = _run.impurity_key(imp)
        idx, _ = _materials.draw_mixture(
            draw_rng, base_idx, np.flatnonzero(material == key), f, c["n_cells"]
        )
        start = time.perf_counter()
        check = _run.chain_versus_pooled(pooled, calls, idx, imp, plan, bundle, profile)
        seconds += time.perf_counter() - start
        rows.append({"true_fraction": f, **check})
    return rows, seconds / len(draws)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=None)
    args = parser.parse_args()
    import sc_celltherapy as sct

    sct.settings.verbosity = "error"
    out_dir = args.out_dir or Path(tempfile.mkdtemp(prefix="sct_validation_"))
    out_dir.mkdir(parents=True, exist_ok=True)
    plan = plan_on_shared_data()
    start = time.perf_counter()
    result = sct.validation.run(plan, progress=lambda line: print(f"  {line}", flush=True))
    dossier = sct.validation.write_dossier(result, out_dir / "dossier", operator="benchmark")
    ours = time.perf_counter() - start
    peak = peak_rss_mb()
    c = result.plan.content
    # the blanks are shared by every impurity: one whole-chain run per drawn mixture and seed
    mixtures = 2 * c["replicates"] + len(c["impurities"]) * len(c["levels"]) * c["replicates"]
    n_chain_estimates = mixtures * len(result.provenance["seeds"])
    print("peer: each mixture through the whole chain (20 mixtures, timed)")
    rows, per_mixture = whole_chain_mixtures(plan)
    peer = per_mixture * n_chain_estimates
    inside = sum(r["pooled_inside"] for r in rows)
    table = [
        ("sc_celltherapy: whole plan incl. 7 robustness runs and the dossier", f"{ours:.0f} s"),
        ("peer: one mixture through the whole chain", f"{per_mixture:.1f} s"),
        (
            f"peer extrapolated to the plan's {n_chain_estimates} chain runs "
            f"({mixtures} mixtures x 2 seeds), robustness not included",
            f"{peer:.0f} s",
        ),
        ("ratio peer / ours", f"{peer / ours:.1f}x"),
        ("pooled estimate inside the whole-chain 95% interval", f"{inside} / {len(rows)}"),
        (
            "largest |pooled - whole chain|",
            f"{max(abs(r['pooled_estimate'] - r['chain_estimate']) for r in rows):.4f}",
        ),
        ("peak memory (ours and peer, one process)", f"{peak:.0f} MB"),
    ]
    print("| measure | value |\n| --- | --- |")
    for k, v in table:
        print(f"| {k} | {v} |")
    judged = result.parameters.dropna(subset=["verdict"])
    print("\n| impurity | parameter | value | verdict |\n| --- | --- | --- | --- |")
    for r in judged.itertuples():
        print(f"| {r.impurity} | {r.parameter} | {r.value:.4g} | {r.verdict} |")
    print(f"\nvalidation {result.verdict}; dossier in {dossier}")
    write_json(
        "validation",
        {
            "what": __doc__.splitlines()[0],
            "plan": str(PLAN.name),
            "plan_sha256": result.plan.sha256,
            "seconds_ours": ours,
            "seconds_per_mixture_whole_chain": per_mixture,
            "seconds_peer_extrapolated": peer,
            "n_mixture_estimates": n_chain_estimates,
            "ratio_peer_over_ours": peer / ours,
            "pooled_vs_whole_chain": rows,
            "peak_mb": peak,
            "verdict": result.verdict,
            "parameters": judged.to_dict(orient="records"),
            "specificity": result.specificity.reset_index().to_dict(orient="records"),
            "robustness": result.robustness.drop(columns=["shift"]).to_dict(orient="records"),
            "machine": machine(),
            "code": code_digest(),
        },
    )


if __name__ == "__main__":
    main()
