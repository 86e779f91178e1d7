"""Release fixtures: the demo release (through the installed command) and a small valid lot."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


@pytest.fixture(scope="session")
def demo_release(demo_bundle, tmp_path_factory):
    """`python -m sc_celltherapy demo` run once, reusing the session's demo bundle cache."""
    import sc_celltherapy as sct

    out = tmp_path_factory.mktemp("demo") / "release"
    env = {**os.environ, "SCT_CACHE_DIR": str(sct.settings.cache_dir)}
    proc = subprocess.run(
        [sys.executable, "-m", "sc_celltherapy", "demo", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc, json.loads((out / "results.json").read_text())


@pytest.fixture(scope="session")
def small_lot(tmp_path_factory):
    """A valid 300-cell lot (.h5ad) generated from the embedded PBMCs, and its AnnData."""
    import sc_celltherapy as sct

    lot = sct.datasets.pbmc_demo_lot(n_cells=300, seed=1)
    path = tmp_path_factory.mktemp("lots") / "small_lot.h5ad"
    lot.write_h5ad(path)
    return path, lot


@pytest.fixture(scope="session")
def demo_spec(tmp_path_factory):
    """The car_t_demo example spec without its transgene feature (the PBMC lots have none)."""
    import dataclasses

    from sc_celltherapy.release import Spec

    spec = dataclasses.replace(Spec.from_profile("car_t_demo"), transgene_features=())
    path = tmp_path_factory.mktemp("specs") / "car_t_demo_no_transgene.yaml"
    spec.to_yaml(path)
    return path
