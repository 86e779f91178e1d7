"""Finding bundles: by path, by name in the cache, or the embedded demo built on first use."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from .._logging import timed
from .._settings import settings
from ._manifests import list_manifests
from ._store import BundleError, ReferenceBundle, verify

DEMO_NAME = "pbmc_demo"
DEMO_VERSION = "1.11"  # with the manifest; a new bundle format needs a new cache entry


def bundles_dir() -> Path:
    return Path(settings.cache_dir) / "bundles"


def load(name_or_path: str | os.PathLike | ReferenceBundle) -> ReferenceBundle:
    """Load a reference bundle after verifying every file's hash and the scvi-tools version.

    Parameters
    ----------
    name_or_path
        A bundle directory, the name of a bundle in ``settings.cache_dir``, or ``"pbmc_demo"``:
        the embedded PBMC reference, built from :func:`sct.datasets.pbmc_reference` on first use
        (about two minutes on two CPU cores) and cached.

    Returns
    -------
    The verified :class:`ReferenceBundle`. A changed, missing or extra file, or an incompatible
    scvi-tools, raises :class:`BundleError` naming it.
    """
    if isinstance(name_or_path, ReferenceBundle):
        return verify(name_or_path.path)
    path = Path(name_or_path)
    if path.exists():
        return verify(path)
    name = str(name_or_path)
    if name == DEMO_NAME:
        return _demo_bundle()
    cached = newest_first(bundles_dir().glob(f"{name}-*"), name) if bundles_dir().exists() else []
    if cached:
        return verify(cached[0])
    table = list_bundles()
    built = table.query("kind == 'bundle'")["name"].tolist()
    atlases = sorted(set(table.query("kind == 'atlas'")["name"]) - {DEMO_NAME})
    msg = (
        f"No reference bundle {name!r} (not a directory, not in {bundles_dir()}). Bundles: "
        f"{sorted(set(built) | {DEMO_NAME})} ({DEMO_NAME} is embedded and built on first use). "
        f"Atlases that can be fetched and built with network: {atlases} (`sc-celltherapy atlas "
        "fetch NAME`). Without a reference, pass 'none' to call identities from the product "
        "profile's marker panels."
    )
    raise BundleError(msg)


def _demo_bundle() -> ReferenceBundle:
    """The embedded reference, built exactly as its shipped manifest says (one definition)."""
    from ._recipe import build_from_manifest

    path = bundles_dir() / f"{DEMO_NAME}-{DEMO_VERSION}"
    if path.exists():
        return verify(path)
    with timed("building the embedded pbmc_demo reference (first use)"):
        return build_from_manifest(DEMO_NAME, out_dir=path)


def list_bundles() -> pd.DataFrame:
    """Bundles in the cache and the atlas / profile manifests that ship with the package.

    Returns
    -------
    DataFrame with ``name``, ``kind`` (``bundle``, ``atlas`` or ``profile``), ``version``,
    ``species`` and ``path``.
    """
    rows = []
    if bundles_dir().exists():
        for path in sorted(bundles_dir().iterdir()):
            if (path / "bundle.json").is_file():
                m = json.loads((path / "bundle.json").read_text())
                rows.append(
                    {
                        "name": m.get("name"),
                        "kind": "bundle",
                        "version": m.get("version"),
                        "species": m.get("species"),
                        "path": str(path),
                    }
                )
    columns = ["name", "kind", "version", "species", "path"]
    # one frame from records: pandas warns when concatenating empty or all-NA frames
    rows += list_manifests()[columns].to_dict("records")
    return pd.DataFrame(rows, columns=columns)


def newest_first(paths, name: str) -> list[Path]:
    """Cached bundle directories ``<name>-<version>``, highest version first (by PEP 440, so
    1.10 comes after 1.9); directories whose suffix is no version are left out."""
    from packaging.version import InvalidVersion, Version

    found = []
    for path in paths:
        try:
            found.append((Version(path.name[len(name) + 1 :]), path))
        except InvalidVersion:
            continue
    return [path for _, path in sorted(found, reverse=True)]
