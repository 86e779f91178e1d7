"""Sphinx configuration: the scverse look (sphinx-book-theme), MyST notebooks executed at build
time (myst-nb), numpy-style docstrings (napoleon) and an autosummary API reference."""

from __future__ import annotations

import os
from datetime import date

import sc_celltherapy

project = "sc_celltherapy"
author = "sc_celltherapy developers"
copyright = f"{date.today().year}, {author}"
release = version = sc_celltherapy.__version__

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "sphinx_autodoc_typehints",
    "sphinx_copybutton",
]

# .rst first: autosummary writes its stubs with the first suffix, and they are reStructuredText
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
master_doc = "index"
exclude_patterns = ["_build", "**.ipynb_checkpoints", "jupyter_execute"]
templates_path = ["_templates"]

# API reference: one page per public object, numpy-style sections, types from annotations
autosummary_generate = True
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "inherited-members": False}
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = True
napoleon_use_param = True
typehints_defaults = "braces"
always_document_param_types = False

intersphinx_mapping = {
    "python": ("https://docs.python.org/3", None),
}
# The build needs no network: intersphinx inventories are only fetched when asked for
if not os.environ.get("SCT_DOCS_INTERSPHINX"):
    intersphinx_mapping = {}

# Tutorials are executed during every build (never shipped with stale outputs); a failing cell
# fails the build
nb_execution_mode = os.environ.get("SCT_DOCS_EXECUTE", "force")
# the kernels draw inline as Jupyter does, whatever backend the calling shell set (CI sets Agg,
# where plots show nothing)
os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
nb_execution_timeout = 1200
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_merge_streams = True
myst_enable_extensions = ["colon_fence", "dollarmath", "deflist"]
myst_heading_anchors = 3

html_theme = "sphinx_book_theme"
html_title = "sc_celltherapy"
html_theme_options = {
    "repository_url": "https://github.com/sc-celltherapy/sc_celltherapy",
    "use_repository_button": False,
    "show_toc_level": 2,
}
html_show_sphinx = False
