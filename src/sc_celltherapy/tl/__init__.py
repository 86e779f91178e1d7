"""Tools: clustering, mapping, identity and purity of a lot."""

from ._cluster import cluster

__all__ = ["cluster"]
