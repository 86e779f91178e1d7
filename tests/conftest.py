"""Shared fixtures. Real data comes from ../shared/data (or $SCT_SHARED_DATA).

Real-data tests skip on a machine without that folder, except in CI (CI=true), where a missing
folder is an error: the tests that prove the method works must run there.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")

REPO_ROOT = Path(__file__).resolve().parents[1]
CART_PRODUCT = "cart_product_P02_M0_filtered_feature_bc_matrix.h5"


def shared_data_dir() -> Path:
    return Path(os.environ.get("SCT_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if not (path / CART_PRODUCT).exists():
        msg = f"real data not found in {path} (set SCT_SHARED_DATA)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def cart_product_path(shared_data: Path) -> Path:
    return shared_data / CART_PRODUCT


@pytest.fixture(scope="session")
def cart_product_qc(cart_product_path):
    """The real CAR-T product after default QC (flags only, nothing removed). Read-only."""
    import sc_celltherapy as sct

    adata = sct.io.read(cart_product_path)
    sct.pp.qc_metrics(adata)
    sct.pp.flag_low_quality(adata)
    sct.pp.doublets(adata)
    return adata


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Keep the test session's cache out of the user's home. Session-scoped so that
    session fixtures (the demo bundle) are built there too."""
    import sc_celltherapy as sct

    before = sct.settings.cache_dir
    sct.settings.cache_dir = tmp_path_factory.getbasetemp() / "cache"
    yield
    sct.settings.cache_dir = before


@pytest.fixture(scope="session")
def demo_bundle(_isolated_cache):
    """The embedded PBMC bundle, built once per test session in the test cache."""
    import sc_celltherapy as sct

    return sct.atlas.load("pbmc_demo")


@pytest.fixture(scope="session")
def mapped_product(cart_product_qc, demo_bundle):
    """The real CAR-T product, QC'd (flagged cells removed) and mapped onto pbmc_demo. Read-only."""
    import sc_celltherapy as sct

    adata = sct.pp.remove_flagged(cart_product_qc, copy=True)
    sct.tl.map_to_reference(adata, demo_bundle)
    return adata


# Fixtures that train or load scVI models (the embedded bundle takes about two minutes to build
# on two cores) or run whole releases: a test that uses one is slow, whatever its marker says.
SLOW_FIXTURES = {"demo_bundle", "mapped_product", "cart_releases", "t_cell_bundle"}


def pytest_collection_modifyitems(config, items):
    """Skip GPU tests without a CUDA device. Mark every test that needs a trained model or
    runs Snakemake as ``slow``, so that ``pytest -m "not slow"`` is the inner loop (unit tests,
    marker panels, statistics, I/O)."""
    import importlib.util

    has_cuda = False
    if importlib.util.find_spec("torch") is not None:
        import torch

        has_cuda = torch.cuda.is_available()
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)
        uses = set(getattr(item, "fixturenames", ()))
        if uses & SLOW_FIXTURES or "workflows" in item.path.parts:
            item.add_marker(pytest.mark.slow)


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="session")
def browser():
    """Headless Debian Chromium (no browser download), for the HTML reports."""
    if not os.path.exists(CHROMIUM):
        msg = "Debian's chromium is not installed (apt-get install chromium; .ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        # the flags keep Chromium's own background traffic off this closed network
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        yield b
        b.close()
