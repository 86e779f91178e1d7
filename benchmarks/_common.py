"""Shared helpers of the benchmarks: data location, machine facts, running a step in a child."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def shared_data() -> Path:
    path = Path(os.environ.get("SCT_SHARED_DATA", REPO.parent / "shared" / "data"))
    if not path.exists():
        sys.exit(f"real data not found in {path}: set SCT_SHARED_DATA")
    return path


def machine() -> dict:
    """The machine and versions, as results.json records them (one definition)."""
    from sc_celltherapy._provenance import hardware, versions

    return {**hardware(), "versions": versions()}


def resample_thinned(X, n_cells: int, seed: int, keep: float = 0.8):
    """``n_cells`` rows drawn with replacement from the count matrix ``X``, each count binomially
    thinned to ``keep`` so no two drawn cells are identical (CSR, float32)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    rows = X[rng.integers(0, X.shape[0], n_cells)].tocsr()
    rows.data = rng.binomial(rows.data.astype(np.int64), keep).astype(np.float32)
    rows.eliminate_zeros()
    return rows


def write_resampled_lot(
    path: Path, n_cells: int, seed: int = 0, channel_cells: int = 0, genes=None
) -> None:
    """A lot of ``n_cells`` resampled and thinned (:func:`resample_thinned`) from the labelled
    real CAR-T cells, written as ``.h5ad``. With ``channel_cells``, ``obs["channel"]`` deals the
    cells into channels of at most that many, as a pooled lot of several 10x channels. With
    ``genes``, only those of them (a million cells on every gene would not fit in memory)."""
    import anndata as ad
    import numpy as np

    src = ad.read_h5ad(shared_data() / "cart_labelled_dev.h5ad")
    if genes is not None:
        src = src[:, src.var_names.intersection(genes)].copy()
    lot = ad.AnnData(X=resample_thinned(src.X.tocsr(), n_cells, seed), var=src.var.copy())
    lot.obs_names = [f"cell{i:06d}" for i in range(n_cells)]
    if channel_cells:
        n_channels = -(-n_cells // channel_cells)
        lot.obs["channel"] = [f"ch{i + 1}" for i in np.arange(n_cells) * n_channels // n_cells]
    lot.write_h5ad(path)


def peak_rss_mb() -> float:
    """Peak resident memory of this process's address space (VmHWM, Linux), the definition
    results.json uses (``sc_celltherapy._provenance.peak_memory_mb``). Written out here because
    the CellTypist child runs in a venv without sc_celltherapy."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("VmHWM not in /proc/self/status: peak memory needs Linux")


def run_child(module: str, *args: str, python: str | None = None) -> dict:
    """Run ``python -m module args`` in a fresh process (this interpreter unless ``python`` is
    given); the child prints one JSON line last."""
    proc = subprocess.run(
        [python or sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        cwd=REPO / "benchmarks",
        check=False,
    )
    if proc.returncode != 0:
        sys.exit(f"{module} {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def code_digest() -> str:
    """sha256 over the package, its manifests and the benchmark scripts: which code a saved
    benchmark run came from, so that a resumed run never mixes results of different code."""
    import hashlib

    files = sorted(
        p
        for pattern in ("src/**/*.py", "reference_atlases/**/*.yaml", "benchmarks/*.py")
        for p in REPO.glob(pattern)
    )
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(REPO).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def write_json(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=str))
    return path
