"""The public API reads the same everywhere: every namespace says what it exports, every
public function documents every parameter, and AnnData functions follow scanpy's grammar."""

from __future__ import annotations

import inspect
import re

import pytest

import sc_celltherapy as sct

NAMESPACES = ["io", "pp", "tl", "pl", "release", "atlas", "datasets", "validation"]
# the AnnData-first namespaces: the lot first, at most one thing it is judged against, the rest
# by keyword (scanpy's grammar)
ANNDATA_FIRST = ["pp", "tl", "pl"]
SECOND_POSITIONAL = {"reference", "spec", "history"}


def public_functions(namespace: str):
    module = getattr(sct, namespace)
    for name in module.__all__:
        obj = getattr(module, name)
        if inspect.isfunction(obj):
            yield f"{namespace}.{name}", obj


def documented_parameters(doc: str) -> set[str]:
    """Names in the numpydoc Parameters section ("a, b" lines count for both)."""
    found = re.search(r"Parameters\n-+\n(.*?)(?:\n\n\w[\w ]*\n-+\n|\Z)", doc, re.S)
    if not found:
        return set()
    names = set()
    for line in found.group(1).splitlines():
        if re.match(r"^\w", line):
            names |= {n.strip() for n in line.split(":")[0].split(",")}
    return names


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_namespace_declares_its_exports(namespace):
    module = getattr(sct, namespace)
    assert hasattr(module, "__all__"), f"sct.{namespace} has no __all__"
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert not missing


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_every_parameter_is_documented(namespace):
    undocumented = {}
    for name, func in public_functions(namespace):
        params = set(inspect.signature(func).parameters)
        missing = params - documented_parameters(inspect.getdoc(func) or "")
        if missing:
            undocumented[name] = sorted(missing)
    assert not undocumented


@pytest.mark.parametrize("namespace", ANNDATA_FIRST)
def test_anndata_first_and_the_rest_by_keyword(namespace):
    for name, func in public_functions(namespace):
        params = list(inspect.signature(func).parameters.values())
        positional = [p.name for p in params if p.kind is p.POSITIONAL_OR_KEYWORD]
        assert positional[0] in ("adata", "new"), name
        assert set(positional[1:]) <= SECOND_POSITIONAL and len(positional) <= 2, name


def test_the_documentation_check_sees_a_missing_parameter():
    def documented(adata, *, key=None):
        """Doc.

        Parameters
        ----------
        adata
            The lot.
        """

    assert documented_parameters(inspect.getdoc(documented)) == {"adata"}
