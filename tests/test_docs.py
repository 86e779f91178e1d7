"""The documentation site builds with every tutorial executed, warnings as errors (issue 25).

The build runs in a subprocess exactly as the README's one command does; the tutorials' outputs
are then read from the rendered HTML: each page carries its figures and the numbers it exists to
show (a tutorial whose cells silently stopped executing would carry neither)."""

from __future__ import annotations

import html as html_lib
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import sc_celltherapy as sct

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
NAMESPACES = ["io", "pp", "tl", "pl", "atlas", "release", "validation", "datasets"]


def _public_names():
    for ns in NAMESPACES:
        module = getattr(sct, ns)
        for name in module.__all__:
            if not inspect.ismodule(getattr(module, name)):
                yield ns, name


def test_api_page_lists_every_public_name():
    """A name added to a namespace's ``__all__`` without an API entry fails here."""
    api = (DOCS / "api.md").read_text()
    sections = re.split(r"^## ", api, flags=re.M)
    by_ns = {s.split("`")[1].removeprefix("sct."): s for s in sections[1:] if s.startswith("`")}
    missing = [
        f"sct.{ns}.{name}"
        for ns, name in _public_names()
        if not re.search(rf"(^   {name}$|py:data\}} {name}$)", by_ns.get(ns, ""), flags=re.M)
    ]
    assert missing == []


@pytest.fixture(scope="module")
def built_site(tmp_path_factory, demo_bundle):
    """The site built as the README says (warnings are errors, every tutorial executed), in a
    subprocess that shares the test session's cache (the embedded bundle is built once)."""
    out = tmp_path_factory.mktemp("site")
    env = {
        **os.environ,
        "SCT_CACHE_DIR": str(sct.settings.cache_dir),
        "SCT_DOCS_EXECUTE": "force",
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sphinx",
            "-W",
            "--keep-going",
            "-b",
            "html",
            "-d",
            str(out / ".doctrees"),
            str(DOCS),
            str(out / "html"),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
    )
    assert proc.returncode == 0, (proc.stdout[-4000:], proc.stderr[-4000:])
    return out / "html"


def _page(site: Path, name: str) -> str:
    return (site / "tutorials" / f"{name}.html").read_text()


def _images(html: str) -> int:
    """Figures drawn by executed cells (myst-nb embeds them as image outputs)."""
    return len(re.findall(r'<img[^>]+src="[^"]*(?:\.png|data:image/png)', html))


def _outputs(html: str) -> str:
    """The text of every executed cell's outputs, tags stripped."""
    blocks = re.findall(
        r'<div class="cell_output docutils container">(.*?)</div>\s*</div>', html, re.S
    )
    return html_lib.unescape(re.sub(r"<[^>]+>", " ", "\n".join(blocks)))


def test_release_tutorial_runs_the_chain_with_every_plot(built_site):
    """QC, clusters, reliability, identity, composition: five figures. The planted B cells
    (2.5%) fail the 1% limit; the numbers are the README demo's (deterministic on CPU)."""
    html = _page(built_site, "release_a_lot")
    assert _images(html) == 5
    out = _outputs(html)
    assert "Purity of 924 cells" in out and "FAIL" in out
    assert "89.07%" in out  # target, as in the README demo
    assert "'verdict': 'FAIL'" in out
    assert "AuditSummary" in out and "n_records=7" in out
    assert "Traceback" not in out and "it/s" not in out  # no error, no progress bar


def test_marker_only_tutorial_catches_the_planted_stem_cells(built_site):
    html = _page(built_site, "marker_only_product")
    assert _images(html) == 3  # clusters, identity, composition
    out = _outputs(html)
    assert "'off-target' is not one of ['off_target', 'residual_pluripotent']" in out
    assert "marker panels (within-cell rank enrichment, no reference)" in out
    assert re.search(r"Purity of 2670 cells \(limit of detection 0\.11%\)\s*:\s*FAIL", out)
    assert re.search(r"residual_pluripotent\s+27\s+1\.01%", out)
    assert re.search(r"Release LOT-EC-7 \([^)]*\)\s*:\s*FAIL", out)


def test_reference_tutorial_builds_reads_and_locks_a_bundle(built_site):
    html = _page(built_site, "build_a_reference")
    assert _images(html) == 1  # the reliability diagram
    out = _outputs(html)
    assert "Reference bundle 'tutorial_pbmc' v1.0" in out and "within-donor only" in out
    assert "'fpr_bound': 0.006993006993006993" in out  # 142 held-out cells: 1/143
    assert "file 'models/0/model.pt' has changed" in out
    assert "it/s" not in out


def test_workflow_tutorial_releases_every_lot_but_the_broken_one(built_site):
    html = _page(built_site, "workflow")
    assert _images(html) == 1  # the comparison with the qualified lots
    out = _outputs(html)
    assert "snakemake exit status: 1" in out
    summary = re.findall(r"\b(Q1|Q2|Q3|N1-STEM|BROKEN)\s+(released|failed)\s+(\w+)", out)
    assert summary == [
        ("Q1", "released", "INCONCLUSIVE"),
        ("Q2", "released", "INCONCLUSIVE"),
        ("Q3", "released", "INCONCLUSIVE"),
        ("N1-STEM", "released", "FAIL"),
        ("BROKEN", "failed", "NaN"),
    ]
    assert "could not be" in out


def test_validation_tutorial_runs_a_plan_and_a_release_cites_its_dossier(built_site):
    """Generated monocytes in generated T cells: every criterion passes (recovery 1.003, LOD
    0.5% = a quarter of the 2% limit); the 1,000-barcode lot is covered, the 1,500-barcode one
    is outside the validated range, a changed dossier is refused before anything is written."""
    out = _outputs(_page(built_site, "validate_the_assay"))
    assert "'maxi' was unexpected" in out
    assert "ValidationResult 'tutorial_car_t': PASS ({'PASS': 7})" in out
    assert re.search(r"recovery\s+1\.0026\d*\s", out)
    assert re.search(r"lod_vs_limit\s+0\.25\s", out)
    assert "'note': 'marker panels: no model runs'" in out
    assert "['audit.jsonl', 'validation.html', 'validation.json']" in out
    assert "1000 barcodes: covered True, outside: []" in out
    assert "1500 barcodes: covered False" in out
    assert "changed after the validation" in out
    assert "release directory written: False" in out
    assert "Traceback" not in out and "it/s" not in out
