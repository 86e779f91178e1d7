"""Download an atlas's source files, hash-verified (building from them: :mod:`._recipe`).

``fetch`` downloads each file (pooch's HTTP downloader; a ``file://`` mirror is copied) to a
temporary name in the download folder and renames it into place only once its sha256 matches:
the manifest's pinned hash, or, for files whose hash cannot be known in advance
(``sha256: null``, trust on first use), the hash recorded in the folder's lock file
``hashes.json`` by the first download. A mismatch never overwrites anything.

Nothing here touches the network unless a file is missing (or ``force=True``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

from .._checks import (
    InputError,
)
from .._logging import logger, timed
from .._settings import settings
from ..io import file_sha256
from ._manifests import load_manifest, validate_manifest

LOCK_FILE = "hashes.json"
LOCK_FORMAT = 1
_TIMEOUT_S = 60
_CHUNK = 1 << 20


class FetchError(InputError):
    """An atlas file could not be obtained (network, portal, manual download missing)."""


class HashMismatchError(FetchError):
    """A file's sha256 differs from the pinned or locked hash; nothing was overwritten."""


# --------------------------------------------------------------------------------------------
# fetch
# --------------------------------------------------------------------------------------------


def as_manifest(name: str | os.PathLike | Mapping) -> dict:
    if isinstance(name, Mapping):
        return validate_manifest(name, "atlas")
    return load_manifest(name)


def default_dest(manifest: Mapping) -> Path:
    """Download folder of an atlas: ``<settings.cache_dir>/atlases/<name>-<version>``."""
    return Path(settings.cache_dir) / "atlases" / f"{manifest['name']}-{manifest['version']}"


def read_lock(dest: Path) -> dict:
    path = dest / LOCK_FILE
    if not path.is_file():
        return {"format": LOCK_FORMAT, "files": {}}
    try:
        lock = json.loads(path.read_text())
        if not isinstance(lock.get("files"), dict):
            raise KeyError("files")
    except (json.JSONDecodeError, KeyError, AttributeError) as err:
        msg = (
            f"The lock file {path} is corrupt ({err}). It records the hashes of first "
            "downloads; restore it from a backup, or delete it to trust the files anew."
        )
        raise FetchError(msg) from err
    return lock


def _write_lock(dest: Path, lock: dict) -> None:
    """Write through a temporary file and rename, so a crash never leaves half a lock."""
    fd, tmp = tempfile.mkstemp(prefix=f".{LOCK_FILE}.", dir=dest)
    with os.fdopen(fd, "w") as fh:
        json.dump(lock, fh, indent=2, sort_keys=True)
    os.replace(tmp, dest / LOCK_FILE)


def _urlopen(url: str):
    import urllib.request

    from .._version import __version__

    request = urllib.request.Request(url, headers={"User-Agent": f"sc-celltherapy/{__version__}"})
    return urllib.request.urlopen(
        request, timeout=_TIMEOUT_S
    )  # URL schemes are limited by the schema


def _resolve_url(src: Mapping) -> tuple[str, dict]:
    """The address to download, and what a resolver learnt on the way (recorded in the lock)."""
    resolver = src.get("resolver")
    if not resolver:
        return src["url"], {}
    try:
        with _urlopen(src["url"]) as resp:
            collection = json.load(resp)
    except (OSError, ValueError) as err:
        msg = f"Could not read the CELLxGENE collection {src['url']} for {src['filename']}: {err}."
        raise FetchError(msg) from err
    datasets = collection.get("datasets", [])
    if "dataset_id" in resolver:
        found = [d for d in datasets if d.get("dataset_id") == resolver["dataset_id"]]
        wanted = f"dataset_id {resolver['dataset_id']!r}"
    else:
        found = [d for d in datasets if d.get("title") == resolver["dataset_title"]]
        wanted = f"title {resolver['dataset_title']!r}"
    if len(found) != 1:
        titles = sorted(str(d.get("title")) for d in datasets)
        msg = (
            f"{src['filename']}: the collection {src['url']} has {len(found)} datasets with "
            f"{wanted}; its titles are {titles}. Update the manifest's resolver."
        )
        raise FetchError(msg)
    dataset = found[0]
    assets = [a for a in dataset.get("assets", []) if str(a.get("filetype", "")).upper() == "H5AD"]
    if not assets:
        msg = f"{src['filename']}: dataset {wanted} offers no H5AD asset in {src['url']}."
        raise FetchError(msg)
    info = {
        "dataset_id": dataset.get("dataset_id"),
        "dataset_version_id": dataset.get("dataset_version_id"),
        "title": dataset.get("title"),
    }
    return assets[0]["url"], info


def _download_to_temp(url: str, dest: Path, filename: str) -> tuple[Path, str, int]:
    """Download ``url`` into a temporary file in ``dest`` (pooch's HTTP downloader, with a
    progress bar when someone watches; a ``file://`` URL, a lab's local mirror, is copied) and
    return it with its sha256 and size. Nothing is renamed into place here: the caller does
    that only once the hash matches."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{filename}.", suffix=".part", dir=dest)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        if url.startswith("file://"):
            from urllib.parse import unquote, urlparse

            shutil.copyfile(unquote(urlparse(url).path), tmp)
        else:
            _pooch_download(url, tmp)
    except (OSError, ValueError) as err:  # requests' errors are OSErrors
        tmp.unlink(missing_ok=True)
        msg = (
            f"Could not download {filename} from {url}: {err}. Check the network (or proxy "
            "settings) and try again; nothing was written."
        )
        raise FetchError(msg) from err
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp, file_sha256(tmp), tmp.stat().st_size


def _pooch_download(url: str, target: Path) -> None:
    import pooch

    from .._version import __version__

    if url.startswith("ftp://"):
        downloader = pooch.FTPDownloader(
            timeout=_TIMEOUT_S, progressbar=settings.progress_bar, chunk_size=_CHUNK
        )
    else:
        downloader = pooch.HTTPDownloader(
            progressbar=settings.progress_bar,
            chunk_size=_CHUNK,
            timeout=_TIMEOUT_S,
            headers={"User-Agent": f"sc-celltherapy/{__version__}"},
        )
    downloader(url, str(target), None)


def _expected(src: Mapping, lock: dict, lock_path: Path) -> tuple[str | None, str]:
    if src["sha256"]:
        return src["sha256"], "the manifest's pinned sha256"
    entry = lock["files"].get(src["filename"])
    if entry and entry.get("sha256"):
        return entry["sha256"], f"the lock file {lock_path} (recorded {entry.get('recorded')})"
    return None, "nothing yet (trust on first use)"


def _mismatch_advice(src: Mapping, lock_path: Path) -> str:
    if src["sha256"]:
        return (
            "If the publisher replaced the file, the manifest must be updated (new sha256 and "
            "version) before it can be used."
        )
    return (
        "The file changed since its hash was first recorded. If the change is expected (a new "
        f"version of the dataset), remove the entry for {src['filename']} from {lock_path} "
        "and fetch again to record the new hash; otherwise keep the file you have."
    )


def fetch_files(
    manifest: dict, dest: Path, *, force: bool, allow_download: bool
) -> dict[str, Path]:
    if manifest["source"] == "embedded":
        return {}
    dest.mkdir(parents=True, exist_ok=True)
    lock_path = dest / LOCK_FILE
    lock = read_lock(dest)
    lock.update({"format": LOCK_FORMAT, "atlas": manifest["name"], "version": manifest["version"]})
    changed = False
    paths: dict[str, Path] = {}
    for src in manifest["source"]:
        name = src["filename"]
        target = dest / name
        expected, origin = _expected(src, lock, lock_path)
        policy = "pinned" if src["sha256"] else "trust_on_first_use"
        if target.is_file() and not force:
            with timed(f"verifying sha256 of {name}"):
                got = file_sha256(target)
            if expected is None:
                logger.warning(
                    "%s: no hash known; trusting the file found in %s on first use", name, dest
                )
            elif got != expected:
                msg = (
                    f"{target} does not match its expected sha256: expected {expected} (from "
                    f"{origin}), got {got}. The file was not changed. "
                    + _mismatch_advice(src, lock_path)
                    + " To download it again, delete it or pass force=True (it is only "
                    "replaced by a download that matches)."
                )
                raise HashMismatchError(msg)
            if name not in lock["files"]:
                lock["files"][name] = {"sha256": got, "policy": policy, "recorded": _now()}
                lock["files"][name]["note"] = "file found in the folder, not downloaded"
                changed = True
            paths[name] = target
            continue
        if src.get("manual_download") or src.get("url") is None:
            msg = (
                f"{name} must be downloaded by hand from {src.get('landing_page')} and placed "
                f"in {dest}; fetch then checks its hash."
            )
            raise FetchError(msg)
        if not allow_download:
            msg = (
                f"{name} is not in {dest} and downloading was not allowed. Run "
                f"sct.atlas.fetch({manifest['name']!r}) on a machine with internet access, "
                "or copy the download folder here."
            )
            raise FetchError(msg)
        url, resolved = _resolve_url(src)
        with timed(f"downloading {name} from {url}"):
            tmp, got, size = _download_to_temp(url, dest, name)
        if expected is not None and got != expected:
            tmp.unlink(missing_ok=True)
            kept = f"The existing {target} was kept." if target.exists() else ""
            msg = (
                f"Downloaded {name} from {url} does not match its expected sha256: expected "
                f"{expected} (from {origin}), got {got}. Nothing was overwritten; the download "
                f"was discarded. {kept} " + _mismatch_advice(src, lock_path)
            )
            raise HashMismatchError(msg)
        os.replace(tmp, target)
        entry = {"sha256": got, "policy": policy, "recorded": _now(), "url": url, "size": size}
        if resolved:
            entry["resolved"] = resolved
        if expected is None:
            logger.warning(
                "%s: recorded sha256 %s on first download (trust on first use)", name, got
            )
        lock["files"][name] = entry
        changed = True
        paths[name] = target
    if changed:
        _write_lock(dest, lock)
    return paths


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def fetch(
    name: str | os.PathLike | Mapping,
    *,
    dest: str | os.PathLike | None = None,
    force: bool = False,
) -> dict[str, Path]:
    """Download an atlas's source files and verify their sha256.

    Files already in ``dest`` are verified, not downloaded again. A file whose manifest hash is
    ``null`` (trust on first use) has the hash of its first download recorded in
    ``<dest>/hashes.json``; every later fetch must match it. A mismatch raises
    :class:`HashMismatchError` naming the file, the expected and the actual hash, and leaves
    every existing file untouched.

    Parameters
    ----------
    name
        Name of a shipped atlas manifest, the path of a YAML manifest, or a manifest dict.
    dest
        Download folder; default ``<settings.cache_dir>/atlases/<name>-<version>``.
    force
        Download again even when the file is present (it is replaced only by a download that
        matches the expected hash).

    Returns
    -------
    ``{filename: path}`` of the verified files; empty for an embedded atlas.
    """
    manifest = as_manifest(name)
    dest = Path(dest) if dest is not None else default_dest(manifest)
    return fetch_files(manifest, dest, force=force, allow_download=True)


# --------------------------------------------------------------------------------------------
# reading the files
# --------------------------------------------------------------------------------------------
