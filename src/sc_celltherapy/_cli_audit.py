"""``sc-celltherapy audit``: verify an audit trail, create the lab's signing key."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_audit_commands(sub) -> None:
    audit = sub.add_parser("audit", help="audit trails")
    acmds = audit.add_subparsers(dest="audit_command", required=True)
    av = acmds.add_parser(
        "verify", help="check the hash chain of an audit.jsonl (exit 2 if broken)"
    )
    av.add_argument("log", type=Path)
    av.add_argument(
        "--expect",
        default=None,
        metavar="HASH",
        help="the last hash the lab recorded (printed by every release): refuses a log re-sealed, "
        "extended or cut since",
    )
    av.add_argument(
        "--public-key",
        type=Path,
        default=None,
        help="the lab's Ed25519 public key: every record must be signed by its private key",
    )
    av.set_defaults(func=_cmd_audit_verify)
    ak = acmds.add_parser("keygen", help="create the lab's Ed25519 signing key pair")
    ak.add_argument("key", type=Path, help="private key file to create (KEY.pub: public key)")
    ak.set_defaults(func=_cmd_audit_keygen)


def _cmd_audit_verify(args: argparse.Namespace) -> None:
    from .release import verify_audit

    summary = verify_audit(args.log, expect_last=args.expect, public_key=args.public_key)
    signed = (
        f"every record signed by {args.public_key}"
        if summary.signatures_checked
        else f"{summary.n_signed} of {summary.n_records} records signed (not checked: no "
        "--public-key)"
    )
    print(
        f"OK {summary.path}: {summary.n_records} records, {len(summary.runs)} run(s), chain intact; "
        f"{signed}; last hash {summary.last_hash}"
    )


def _cmd_audit_keygen(args: argparse.Namespace) -> None:
    from .release import generate_key

    private, public = generate_key(args.key)
    print(
        f"private key {private} (keep it on the release host, readable by the release account "
        f"only); public key {public} (give it to whoever verifies releases)"
    )
