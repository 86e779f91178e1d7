"""``sc-celltherapy validate``: run a validation plan and write its dossier."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_validate_command(sub) -> None:
    va = sub.add_parser(
        "validate",
        help="run a validation plan (ICH Q2(R2)) through the release chain; write its dossier",
    )
    va.add_argument(
        "plan", type=Path, help="validation plan YAML (see reference_atlases/validation_plans)"
    )
    va.add_argument("--out", type=Path, required=True, help="dossier directory to create")
    va.add_argument("--operator", default="unknown", help="recorded in the dossier's audit trail")
    va.add_argument(
        "--sign-key",
        type=Path,
        default=None,
        help="the lab's Ed25519 private key: the dossier's audit records are signed",
    )
    va.set_defaults(func=_cmd_validate)


def _cmd_validate(args: argparse.Namespace) -> None:
    from ._signing import load_private_key
    from .validation import check_dossier_dir, load_plan, run, write_dossier

    plan = load_plan(args.plan)  # a plan that cannot run is refused before any cell is read
    check_dossier_dir(args.out)
    if args.sign_key is not None:
        load_private_key(args.sign_key)  # a wrong key is refused now, not after the run
    for note in plan.warnings:
        print(f"warning: {note}", file=sys.stderr)
    print(repr(plan))
    result = run(plan, progress=lambda line: print(line, flush=True))
    out = write_dossier(result, args.out, operator=args.operator, sign_key=args.sign_key)
    judged = result.parameters.dropna(subset=["verdict"])
    for r in judged.itertuples():
        print(f"  {r.verdict:5s} {r.impurity}: {r.parameter} = {r.value:.4g}")
    print(f"validation {result.verdict}: dossier in {out}")
