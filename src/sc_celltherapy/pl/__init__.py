"""Plots. Each function returns a matplotlib figure and saves it when given a path."""

from ._clusters import clusters
from ._compare import compare_lots
from ._identity import composition, identity
from ._qc import qc
from ._reliability import reliability

__all__ = ["qc", "clusters", "identity", "composition", "compare_lots", "reliability"]
