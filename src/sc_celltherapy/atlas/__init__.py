"""Reference atlases: locked, hash-verified scANVI bundles, and the manifests that describe them."""

from ._bundle import UNLABELED, build
from ._calibration import calibrate, coarse_probs, prediction_sets, reads_markers
from ._download import FetchError, HashMismatchError, fetch
from ._manifests import (
    ManifestError,
    list_manifests,
    load_manifest,
    load_profile,
    manifest_path,
    validate_manifest,
)
from ._marker_evidence import lot_marker_loglik
from ._model import accelerator
from ._neighbourhood import lot_neighbours, neighbourhood_median
from ._novelty import AMBIENT_LOAD_LIMIT, ambient_load, expression_excess, local_outlier_ratio
from ._novelty import combine as combine_oor
from ._query import QueryResult, query_bundle
from ._recipe import build_from_manifest
from ._registry import list_bundles as list  # noqa: A001  (sct.atlas.list(), as the issue names it)
from ._registry import load
from ._signature import check_signature, sign_bundle
from ._store import BundleError, ReferenceBundle, verify

__all__ = [
    "build",
    "load",
    "verify",
    "sign_bundle",
    "check_signature",
    "list",
    "ReferenceBundle",
    "BundleError",
    "list_manifests",
    "load_manifest",
    "load_profile",
    "manifest_path",
    "validate_manifest",
    "fetch",
    "build_from_manifest",
    "ManifestError",
    "FetchError",
    "HashMismatchError",
    "calibrate",
    "coarse_probs",
    "prediction_sets",
    "reads_markers",
    "combine_oor",
    "expression_excess",
    "ambient_load",
    "AMBIENT_LOAD_LIMIT",
    "local_outlier_ratio",
    "lot_neighbours",
    "neighbourhood_median",
    "lot_marker_loglik",
    "query_bundle",
    "QueryResult",
    "UNLABELED",
    "accelerator",
]
