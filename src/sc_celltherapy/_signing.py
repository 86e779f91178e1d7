"""A lab's Ed25519 key: who may seal audit records and reference bundles, and how anyone checks
the seal.

A hash shows a file was not edited in place; it cannot show that someone who rewrote a record
(or a bundle's manifest) did not also recompute its hash. A signature can: the hash is signed
with the lab's private key, which the release host holds and a forger does not, and anyone
checks it with the public key, which can be shared freely (``audit verify --public-key``,
``release --reference-public-key``).
"""

from __future__ import annotations

import os
from pathlib import Path

from ._checks import InputError


class SigningError(InputError):
    """A key cannot be read, or is not an Ed25519 key of the kind expected."""


def generate_key(path: str | os.PathLike) -> tuple[Path, Path]:
    """Write a new Ed25519 private key (PEM, readable by its owner only) and its public key.

    Parameters
    ----------
    path
        Where the private key goes; the public key goes to ``path`` + ``.pub``. Neither may
        exist.

    Returns
    -------
    The private and public key paths.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private, public = Path(path), Path(f"{path}.pub")
    for p in (private, public):
        if p.exists():
            raise SigningError(f"{p} exists; a key is never overwritten. Choose another path.")
    if not private.parent.is_dir():
        raise SigningError(f"{private.parent} is not an existing directory. Create it first.")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


def load_private_key(path: str | os.PathLike):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = _load(path, serialization.load_pem_private_key, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningError(f"{path} is not an Ed25519 private key (sc-celltherapy audit keygen).")
    return key


def load_public_key(path: str | os.PathLike):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    key = _load(path, serialization.load_pem_public_key)
    if not isinstance(key, Ed25519PublicKey):
        raise SigningError(f"{path} is not an Ed25519 public key (the .pub of audit keygen).")
    return key


def _load(path, loader, **kwargs):
    path = Path(path)
    if not path.is_file():
        raise SigningError(
            f"Key file {path} not found. Create one with `sc-celltherapy audit keygen`."
        )
    try:
        return loader(path.read_bytes(), **kwargs)
    except (ValueError, TypeError) as err:
        raise SigningError(f"{path} is not a PEM key this package can read ({err}).") from err


def fingerprint(public_key) -> str:
    """sha256 of the public key's DER bytes: which key signed, recorded with the result."""
    import hashlib

    from cryptography.hazmat.primitives import serialization

    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def sign(key, digest: str) -> str:
    """The signature (hex) of a record's hash."""
    return key.sign(bytes.fromhex(digest)).hex()


def signature_holds(public_key, digest: str, signature: str) -> bool:
    from cryptography.exceptions import InvalidSignature

    try:
        public_key.verify(bytes.fromhex(signature), bytes.fromhex(digest))
    except (InvalidSignature, ValueError):
        return False
    return True
