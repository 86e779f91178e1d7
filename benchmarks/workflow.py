"""The Snakemake workflow locally and on a real SLURM cluster: overhead per lot, and the memory
and time each rule uses at 2,000, 10,000 and 50,000 cells against what it asks SLURM for.

Local (``--cores 2``):

1. The whole test configuration (``workflows/config/test.yaml``: 7 lots from real data, one of
   them broken, 4 comparisons, stepwise rules for the product), timed end to end.
2. The peer: each good lot's ``sc-celltherapy release`` called directly, one after another (what
   a shell loop does), on the same inputs.
3. The same releases through Snakemake (``--forcerun release``: one at a time, as the rule asks
   for 2 threads). Overhead per lot = (3 - 2) / lots; target under 10% of the direct time.

Through SLURM (the single-node cluster of ``tests/workflows/slurm_cluster.py``, Debian's
slurm-wlm, with ``workflows/profiles/slurm``; skipped with ``--no-slurm``):

4. The whole test configuration, against 1.
5. The same releases, against 2: the overhead of a SLURM job per lot (submission, scheduling,
   the plugin's status polling, a fresh process); target under 15% of a 10,000-cell lot's
   release time (measured in 6).
6. Three lots of 2,000, 10,000 and 50,000 cells (resampled and thinned from the real CAR-T
   cells, one channel each) through every rule (qc, map, score, release, compare): each job's
   elapsed time and peak memory from ``sacct`` (jobacct_gather/linux, sampled each second)
   against the ``mem_mb`` its rule asked for.

Prints tables and writes ``benchmarks/results/workflow.json``.
Run: ``python benchmarks/workflow.py [--no-slurm]`` (from anywhere; it runs in a temporary folder).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "workflows"))
from _common import REPO, machine, shared_data, write_json, write_resampled_lot  # noqa: E402

GOOD = ["Q1", "Q2", "Q3", "N1-CLEAN", "N2-MONOCYTES", "PRODUCT"]
SIZES = {"L2K": 2_000, "L10K": 10_000, "L50K": 50_000}
SHEET_HEADER = (
    "lot\tinput\trole\tbase\tn_cells\tseed\tspike\tfraction\tspike_markers\tspike_exclude"
)
SLURM_OVERHEAD_TARGET, LOCAL_OVERHEAD_TARGET = 0.15, 0.10


def _timed(cmd: list[str], env: dict, *, check: bool = True) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if check and proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return seconds


def _config(tmp: Path, name: str, sheet: str, **settings) -> Path:
    """The test configuration over ``sheet``, its outputs in ``tmp/name``."""
    (tmp / f"{name}.tsv").write_text(sheet)
    config = yaml.safe_load((REPO / "workflows/config/test.yaml").read_text())
    config |= {"samples": str(tmp / f"{name}.tsv"), "outdir": str(tmp / name), **settings}
    (tmp / f"{name}.yaml").write_text(yaml.safe_dump(config))
    return tmp / f"{name}.yaml"


def _slurm_args() -> list[str]:
    return [
        "--profile",
        str(REPO / "workflows/profiles/slurm"),
        "--slurm-init-seconds-before-status-checks",
        "2",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-slurm", action="store_true", help="only the local measures")
    args = parser.parse_args()
    bin_dir = Path(sys.executable).parent
    result = {"machine": machine()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
        env["SCT_CACHE_DIR"] = str(tmp / "cache")
        # the reference bundle is built once beforehand, as a core would have it
        _timed([str(bin_dir / "sc-celltherapy"), "atlas", "verify", "pbmc_demo"], env)
        sheet = (REPO / "workflows/config/test_samples.tsv").read_text()
        sheet = sheet.replace("../shared/data", str(shared_data()))
        local_config = _config(tmp, "local", sheet)
        snakemake = [str(bin_dir / "snakemake"), "-s", "workflows/Snakefile"]

        local = [*snakemake, "--configfile", str(local_config), "--cores", "2"]
        result["whole_test_config_s"] = _timed([*local, "--keep-going"], env, check=False)
        print(f"whole test configuration, local: {result['whole_test_config_s']:.1f} s")

        inputs = {}
        for line in sheet.splitlines()[1:]:
            lot, path = line.split("\t")[:2]
            inputs[lot] = path or str(tmp / "local" / lot / "input.h5ad")
        direct = {}
        (tmp / "direct").mkdir()
        for lot in GOOD:
            cmd = [str(bin_dir / "sc-celltherapy"), "release", inputs[lot]]
            cmd += ["--product", "car_t_demo", "--reference", "pbmc_demo", "--lot-id", lot]
            cmd += ["--operator", "bench", "--out", str(tmp / "direct" / lot)]
            direct[lot] = _timed(cmd, env)
            print(f"  direct release {lot}: {direct[lot]:.1f} s", flush=True)
        result["direct_s"] = direct
        targets = [str(tmp / "local" / lot / "release") for lot in GOOD]
        result["snakemake_releases_s"] = _timed(
            [*local, "--forcerun", "release", "--", *targets], env
        )
        if not args.no_slurm:
            result |= _slurm(tmp, snakemake, sheet, env)
    _report(result)


def _slurm(tmp: Path, snakemake: list[str], sheet: str, env: dict) -> dict:
    """Measures 4-6 on a fresh single-node SLURM cluster."""
    from slurm_cluster import SlurmCluster

    out = {}
    with SlurmCluster(tmp / "slurm") as cluster:
        env = cluster.env(env)
        config = _config(tmp, "on_slurm", sheet)
        on_slurm = [*snakemake, "--configfile", str(config), *_slurm_args()]
        out["slurm_whole_test_config_s"] = _timed(on_slurm, env, check=False)
        print(f"whole test configuration, SLURM: {out['slurm_whole_test_config_s']:.1f} s")
        targets = [str(tmp / "on_slurm" / lot / "release") for lot in GOOD]
        out["slurm_releases_s"] = _timed([*on_slurm, "--forcerun", "release", "--", *targets], env)
        print(f"the same releases through SLURM: {out['slurm_releases_s']:.1f} s", flush=True)

        rows = [SHEET_HEADER]
        for i, (lot, n) in enumerate(SIZES.items()):
            write_resampled_lot(tmp / f"{lot}.h5ad", n, seed=i)
            rows.append(f"{lot}\t{tmp / f'{lot}.h5ad'}\t{'new' if i else 'qualified'}" + "\t" * 7)
        config = _config(tmp, "sizes", "\n".join(rows) + "\n", stepwise=list(SIZES))
        _timed([*snakemake, "--configfile", str(config), *_slurm_args()], env)
        jobs = cluster.jobs()
        sized = jobs[jobs["lot"].isin(list(SIZES))]
        out["per_rule"] = [
            {
                "rule": j.rule,
                "lot": j.lot,
                "cells": SIZES[j.lot],
                "seconds": int(j.seconds),
                "peak_mb": round(float(j.peak_mb)),
                "requested_mb": round(float(j.req_mb)),
                "requested_minutes": int(j.minutes),
                "cpus": int(j.cpus),
                "state": j.State,
            }
            for j in sized.itertuples()
        ]
    return out


def _report(result: dict) -> None:
    n = len(GOOD)
    direct_total = sum(result["direct_s"].values())
    per_lot = (result["snakemake_releases_s"] - direct_total) / n
    result["overhead_per_lot_s"] = per_lot
    result["overhead_relative"] = per_lot / (direct_total / n)
    print()
    print(f"{'measure':<58} {'value':>10}")
    print(f"{'whole test configuration (7 lots, 4 comparisons), local s':<58} {result['whole_test_config_s']:>10.1f}")  # fmt: skip
    print(f"{'direct CLI releases of 6 lots, s (peer)':<58} {direct_total:>10.1f}")
    print(f"{'the same 6 releases through Snakemake, local s':<58} {result['snakemake_releases_s']:>10.1f}")  # fmt: skip
    print(f"{'Snakemake overhead per lot, s':<58} {per_lot:>10.2f}")
    print(f"{'overhead per lot / direct time per lot':<58} {result['overhead_relative']:>10.1%}")
    result["target_met"] = result["overhead_relative"] < LOCAL_OVERHEAD_TARGET
    if "per_rule" in result:
        release_10k = next(
            r["seconds"] for r in result["per_rule"] if (r["rule"], r["lot"]) == ("release", "L10K")
        )
        slurm_per_lot = (result["slurm_releases_s"] - direct_total) / n
        result["slurm_overhead_per_lot_s"] = slurm_per_lot
        result["release_10k_s"] = release_10k
        result["slurm_overhead_over_10k_release"] = slurm_per_lot / release_10k
        result["slurm_target_met"] = slurm_per_lot / release_10k < SLURM_OVERHEAD_TARGET
        print(f"{'whole test configuration through SLURM, s':<58} {result['slurm_whole_test_config_s']:>10.1f}")  # fmt: skip
        print(f"{'the same 6 releases through SLURM, s':<58} {result['slurm_releases_s']:>10.1f}")  # fmt: skip
        print(f"{'SLURM overhead per lot, s':<58} {slurm_per_lot:>10.2f}")
        print(f"{'  / a 10,000-cell release on SLURM (' + str(release_10k) + ' s)':<58} {slurm_per_lot / release_10k:>10.1%}")  # fmt: skip
        print()
        print(
            f"{'rule':<16} {'cells':>7} {'s':>6} {'peak MB':>8} {'asked MB':>9} {'peak/asked':>11}"
        )
        for r in sorted(result["per_rule"], key=lambda r: (r["rule"], r["cells"])):
            ratio = r["peak_mb"] / r["requested_mb"]
            print(f"{r['rule']:<16} {r['cells']:>7} {r['seconds']:>6} {r['peak_mb']:>8} {r['requested_mb']:>9} {ratio:>11.2f}")  # fmt: skip
        print(
            f"target: SLURM overhead under 15% of a 10k release: met {result['slurm_target_met']}"
        )
    print(f"target: local overhead under 10% per lot: met {result['target_met']}")
    print(f"wrote {write_json('workflow', result)}")


if __name__ == "__main__":
    main()
