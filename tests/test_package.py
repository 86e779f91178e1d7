"""Package-level conventions: light import, scanpy-style signatures, settings."""

from __future__ import annotations

import inspect
import subprocess
import sys
import typing

import pytest
from anndata import AnnData

import sc_celltherapy as sct

NAMESPACES = {"pp": sct.pp, "tl": sct.tl, "pl": sct.pl}
# The issues give these functions a second positional argument (what the lot is compared with).
SECOND_POSITIONAL = {
    "tl.map_to_reference": "reference",
    "tl.assess_purity": "spec",
    "tl.compare_lots": "history",
}
# ... and name the first one after its role where two lots meet.
FIRST_NAME = {"tl.compare_lots": "new"}


def test_import_is_light():
    code = (
        "import sys, sc_celltherapy as sct; "
        "heavy = [m for m in ('torch', 'scvi', 'lightning') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"heavy modules imported at import time: {out.stdout}"


def test_exposes_namespaces():
    for name in ("pp", "tl", "pl", "io", "datasets", "settings"):
        assert hasattr(sct, name)


def _public_functions():
    for ns_name, ns in NAMESPACES.items():
        for name in ns.__all__:
            obj = getattr(ns, name)
            if inspect.isfunction(obj):
                yield f"{ns_name}.{name}", obj


@pytest.mark.parametrize(("name", "func"), list(_public_functions()))
def test_signature_conventions(name, func):
    """scanpy's grammar: ``adata`` first, everything else keyword-only, ``copy`` -> AnnData | None."""
    params = list(inspect.signature(func).parameters.values())
    first = FIRST_NAME.get(name, "adata")
    assert params[0].name == first, f"{name}: first parameter must be {first}"
    assert params[0].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    rest = params[1:]
    if name in SECOND_POSITIONAL:
        assert rest[0].name == SECOND_POSITIONAL[name]
        assert rest[0].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
        rest = rest[1:]
    for p in rest:
        assert p.kind is inspect.Parameter.KEYWORD_ONLY, f"{name}: {p.name} must be keyword-only"
    hints = typing.get_type_hints(func)
    if "copy" in inspect.signature(func).parameters:
        assert set(typing.get_args(hints["return"])) == {AnnData, type(None)}, name
    assert func.__doc__ and "Returns" in func.__doc__, f"{name}: docstring needs a Returns section"


def test_datasets_are_keyword_only():
    for func in (sct.datasets.toy_product,):
        for p in inspect.signature(func).parameters.values():
            assert p.kind is inspect.Parameter.KEYWORD_ONLY


def test_progress_bar_follows_verbosity_and_whether_anyone_watches(monkeypatch):
    """Mapping was silent for minutes at the default verbosity; a log file (Snakemake, SLURM)
    must not fill with bar redraws."""
    import io
    import sys

    settings = sct.settings
    old = settings.verbosity
    monkeypatch.delitem(sys.modules, "ipykernel", raising=False)
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a log file
    try:
        settings.verbosity = "warning"
        assert settings.progress_bar is False
        monkeypatch.setitem(sys.modules, "ipykernel", object())  # a notebook kernel
        assert settings.progress_bar is True
        settings.verbosity = "error"
        assert settings.progress_bar is False
        monkeypatch.delitem(sys.modules, "ipykernel")
        settings.verbosity = "info"
        assert settings.progress_bar is True
    finally:
        settings.verbosity = old


def test_settings_validate():
    with pytest.raises(ValueError, match="accelerator"):
        sct.settings.accelerator = "tpu"
    with pytest.raises(ValueError, match="verbosity"):
        sct.settings.verbosity = "loud"


def _lint_imports(src_root, cwd):
    """Run import-linter's layers contract (pyproject.toml) on the package under ``src_root``."""
    import os
    import shutil
    from pathlib import Path

    exe = Path(sys.executable).parent / "lint-imports"
    exe = str(exe) if exe.exists() else shutil.which("lint-imports")
    env = {**os.environ, "PYTHONPATH": str(src_root)}
    return subprocess.run(
        [exe, "--config", str(cwd / "pyproject.toml"), "--no-cache"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def test_layers_hold_and_a_violation_breaks_them(tmp_path):
    """io -> pp/atlas/datasets -> tl -> pl -> release -> cli: the contract holds on the package,
    and the same contract fails on a copy where tl imports the release layer."""
    import shutil
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    kept = _lint_imports(repo / "src", repo)
    assert kept.returncode == 0, kept.stdout + kept.stderr
    assert "1 kept, 0 broken" in kept.stdout

    shutil.copytree(repo / "src" / "sc_celltherapy", tmp_path / "src" / "sc_celltherapy")
    shutil.copy(repo / "pyproject.toml", tmp_path / "pyproject.toml")
    purity = tmp_path / "src" / "sc_celltherapy" / "tl" / "_purity.py"
    purity.write_text(purity.read_text() + "\nfrom ..release import Release  # noqa\n")
    broken = _lint_imports(tmp_path / "src", tmp_path)
    assert broken.returncode != 0
    assert "sc_celltherapy.tl._purity -> sc_celltherapy.release" in broken.stdout


# No subpackage imports another's private module: tl's pre-flight checks are public
# (sct.tl.checks). A new private import fails the test.
KNOWN_PRIVATE_IMPORTS: set[tuple[str, str]] = set()


def private_imports(src) -> set[tuple[str, str]]:
    """(importer, imported) for every import of another subpackage's private module."""
    import ast

    found = set()
    for path in src.rglob("*.py"):
        parts = path.relative_to(src).with_suffix("").parts
        package = parts[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom) or node.level == 0 or not node.module:
                continue
            base = package[: len(package) - (node.level - 1)]
            target = (*base, *node.module.split("."))
            if len(target) >= 2 and target[0] != parts[0] and target[-1].startswith("_"):
                found.add((".".join(parts), ".".join(target)))
    return found


def test_no_new_private_imports_across_subpackages():
    from pathlib import Path

    src = Path(sct.__file__).resolve().parent
    found = private_imports(src)
    assert found - KNOWN_PRIVATE_IMPORTS == set(), "import the subpackage's public name instead"
    assert KNOWN_PRIVATE_IMPORTS - found == set(), "remove the fixed pair from the list"
