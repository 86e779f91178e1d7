"""The Snakemake workflow on its test configuration, and the overhead Snakemake adds per lot.

1. The whole test configuration (``workflows/config/test.yaml``: 7 lots from real data, one of
   them broken, 4 comparisons, stepwise rules for the product), timed end to end.
2. The peer: each good lot's ``sc-celltherapy release`` called directly, one after another (what
   a shell loop does), on the same inputs.
3. The same releases through Snakemake (``--forcerun release``, ``--cores 2``: one at a time,
   as the rule asks for 2 threads).

Overhead per lot = (3 - 2) / lots; target under 10% of the direct time per lot. Prints a table
and writes ``benchmarks/results/workflow.json``.

Run: ``python benchmarks/workflow.py`` (from anywhere; it runs in a temporary folder).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, machine, shared_data, write_json  # noqa: E402

GOOD = ["Q1", "Q2", "Q3", "N1-CLEAN", "N2-MONOCYTES", "PRODUCT"]


def _timed(cmd: list[str], env: dict, *, check: bool = True) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if check and proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return seconds


def main() -> None:
    bin_dir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
        env["SCT_CACHE_DIR"] = str(tmp / "cache")
        # the reference bundle is built once beforehand, as a core would have it
        _timed([str(bin_dir / "sc-celltherapy"), "atlas", "verify", "pbmc_demo"], env)
        sheet = (REPO / "workflows/config/test_samples.tsv").read_text()
        (tmp / "samples.tsv").write_text(sheet.replace("../shared/data", str(shared_data())))
        config = yaml.safe_load((REPO / "workflows/config/test.yaml").read_text())
        out = tmp / "results"
        config |= {"samples": str(tmp / "samples.tsv"), "outdir": str(out)}
        (tmp / "config.yaml").write_text(yaml.safe_dump(config))
        snakemake = [str(bin_dir / "snakemake"), "-s", "workflows/Snakefile"]
        snakemake += ["--configfile", str(tmp / "config.yaml"), "--cores", "2"]

        full = _timed([*snakemake, "--keep-going"], env, check=False)
        print(f"whole test configuration: {full:.1f} s", flush=True)

        inputs = {}
        for line in (tmp / "samples.tsv").read_text().splitlines()[1:]:
            lot, path = line.split("\t")[:2]
            inputs[lot] = path or str(out / lot / "input.h5ad")
        direct = {}
        for lot in GOOD:
            cmd = [str(bin_dir / "sc-celltherapy"), "release", inputs[lot]]
            cmd += ["--product", "car_t_demo", "--reference", "pbmc_demo", "--lot-id", lot]
            cmd += ["--operator", "bench", "--out", str(tmp / "direct" / lot)]
            (tmp / "direct").mkdir(exist_ok=True)
            direct[lot] = _timed(cmd, env)
            print(f"  direct release {lot}: {direct[lot]:.1f} s", flush=True)

        targets = [str(out / lot / "release") for lot in GOOD]
        through = _timed([*snakemake, "--forcerun", "release", "--", *targets], env)
        print(f"the same releases through Snakemake: {through:.1f} s", flush=True)

    n = len(GOOD)
    direct_total = sum(direct.values())
    per_lot = (through - direct_total) / n
    relative = per_lot / (direct_total / n)
    print()
    print(f"{'measure':<52} {'value':>10}")
    print(f"{'whole test configuration (7 lots, 4 comparisons) s':<52} {full:>10.1f}")
    print(f"{'direct CLI releases of 6 lots, s (peer)':<52} {direct_total:>10.1f}")
    print(f"{'the same 6 releases through Snakemake, s':<52} {through:>10.1f}")
    print(f"{'Snakemake overhead per lot, s':<52} {per_lot:>10.2f}")
    print(f"{'overhead per lot / direct time per lot':<52} {relative:>10.1%}")
    print(f"target: overhead under 10% per lot: met {relative < 0.10}")
    path = write_json(
        "workflow",
        {
            "machine": machine(),
            "whole_test_config_s": full,
            "direct_s": direct,
            "snakemake_releases_s": through,
            "overhead_per_lot_s": per_lot,
            "overhead_relative": relative,
            "target_met": relative < 0.10,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
