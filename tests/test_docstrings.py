"""The docstring examples run: what a user copies from the API documentation works as shown."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import sc_celltherapy as sct

MODULES = sorted(
    m.name
    for m in pkgutil.walk_packages(sct.__path__, prefix="sc_celltherapy.")
    if m.name.rsplit(".", 1)[-1] not in ("__main__",)
)
WITH_EXAMPLES = [
    name
    for name in MODULES
    if any(t.examples for t in doctest.DocTestFinder().find(importlib.import_module(name)))
]


def test_the_package_has_examples_to_run():
    # measured: the modules whose docstrings carry examples today
    assert len(WITH_EXAMPLES) >= 9, WITH_EXAMPLES


@pytest.mark.parametrize("name", WITH_EXAMPLES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
