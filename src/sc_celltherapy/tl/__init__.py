"""Tools: clustering, mapping, identity and purity of a lot."""

from ._cluster import cluster
from ._map import MappingWarning, map_to_reference

__all__ = ["cluster", "map_to_reference", "MappingWarning"]
