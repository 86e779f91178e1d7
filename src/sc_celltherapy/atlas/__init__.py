"""Reference atlases: locked, hash-verified scANVI bundles, and the manifests that describe them."""

from ._bundle import BundleError, ReferenceBundle, build, verify
from ._download import FetchError, HashMismatchError, build_from_manifest, fetch
from ._manifests import ManifestError, list_manifests, load_manifest, load_profile, validate
from ._registry import list_bundles as list  # noqa: A001  (sct.atlas.list(), as the issue names it)
from ._registry import load

__all__ = [
    "build",
    "load",
    "verify",
    "list",
    "ReferenceBundle",
    "BundleError",
    "list_manifests",
    "load_manifest",
    "load_profile",
    "validate",
    "fetch",
    "build_from_manifest",
    "ManifestError",
    "FetchError",
    "HashMismatchError",
]
