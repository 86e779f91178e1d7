"""The documentation site builds with every tutorial executed, warnings as errors (issue 25).

The build runs in a subprocess exactly as the README's one command does; the tutorials' outputs
are then read from the rendered HTML: each page carries its figures and the numbers it exists to
show (a tutorial whose cells silently stopped executing would carry neither)."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

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
