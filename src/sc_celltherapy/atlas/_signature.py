"""A bundle signed by the lab that qualified it, and the check before a release uses it.

``bundle.json`` records the sha256 of every file and its own digest, so an edited file is
refused; but whoever edits ``bundle.json`` can recompute that digest too. The signature closes
that gap: ``bundle.sig`` holds an Ed25519 signature of the sha256 of ``bundle.json`` (the
bundle's hash, which pins every file) by the lab's private key, and a release given the lab's public key refuses a bundle whose digest that key did not
sign. The signature file is not part of the manifest, so signing does not change the bundle's
hash (a pinned ``--reference-sha256`` stays valid).

What it does not protect: a bundle re-signed with a stolen private key, or a release run
without ``--reference-public-key`` (the results then say the signature was not checked).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .._signing import fingerprint, load_private_key, load_public_key, sign, signature_holds
from ._store import SIGNATURE, BundleError, ReferenceBundle, verify


def sign_bundle(bundle: str | os.PathLike | ReferenceBundle, key: str | os.PathLike) -> Path:
    """Sign a verified bundle's hash with the lab's private key.

    Parameters
    ----------
    bundle
        The bundle directory (or a loaded bundle). It is verified first: only an intact bundle
        is signed.
    key
        The lab's Ed25519 private key (``sc-celltherapy audit keygen``).

    Returns
    -------
    The path of the written ``bundle.sig``. An existing signature is never overwritten.
    """
    bundle = verify(bundle.path if isinstance(bundle, ReferenceBundle) else bundle)
    private = load_private_key(key)
    target = bundle.path / SIGNATURE
    if target.exists():
        msg = f"{target} exists; a signature is never overwritten. Remove it to re-sign."
        raise BundleError(msg)
    digest = bundle.sha256  # hashes bundle.json: once
    record = {
        "bundle_sha256": digest,
        "signature": sign(private, digest),
        "public_key_sha256": fingerprint(private.public_key()),
    }
    tmp = target.with_name(f".{SIGNATURE}.tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True))
    os.replace(tmp, target)
    return target


def check_signature(bundle: ReferenceBundle, public_key: str | os.PathLike) -> dict:
    """Refuse a bundle that the holder of ``public_key``'s private key did not sign as it is.

    Parameters
    ----------
    bundle
        A verified bundle (:func:`sc_celltherapy.atlas.load`).
    public_key
        The lab's Ed25519 public key (the ``.pub`` of ``sc-celltherapy audit keygen``).

    Returns
    -------
    What was checked, for the results: ``{"checked": True, "public_key_sha256": ...}``.
    """
    key = load_public_key(public_key)
    path = bundle.path / SIGNATURE
    if not path.is_file():
        msg = (
            f"Bundle {bundle.name} v{bundle.version} at {bundle.path} is not signed ({SIGNATURE} "
            "is missing), and a public key was given to check it with. Use the bundle your lab "
            "signed (sc-celltherapy atlas sign), or drop --reference-public-key."
        )
        raise BundleError(msg)
    try:
        record = json.loads(path.read_text())
        signature = record["signature"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise BundleError(f"{path} is corrupt ({err}); sign the bundle again.") from err
    digest = bundle.sha256  # hashes bundle.json: once
    if not signature_holds(key, digest, signature):
        msg = (
            f"Bundle {bundle.name} v{bundle.version} at {bundle.path}: its signature does not "
            f"hold for public key {public_key} (bundle sha256 {digest[:12]}...). The "
            "bundle.json was changed and re-sealed after signing, or another key signed it. "
            "Use the bundle your lab qualified."
        )
        raise BundleError(msg)
    return {"checked": True, "public_key_sha256": fingerprint(key)}
