"""Tools: clustering, mapping, identity and purity of a lot."""

from . import checks
from ._cluster import cluster
from ._compare import LotComparison, compare_lots
from ._donor_sex import donor_sex
from ._identities import identity_classes, identity_records
from ._identity import IdentityWarning, identity_score
from ._map import MappingWarning, map_to_reference
from ._purity import PurityReport, assess_purity

__all__ = [
    "cluster",
    "map_to_reference",
    "MappingWarning",
    "identity_score",
    "identity_records",
    "identity_classes",
    "IdentityWarning",
    "assess_purity",
    "PurityReport",
    "compare_lots",
    "donor_sex",
    "LotComparison",
    "checks",
]
