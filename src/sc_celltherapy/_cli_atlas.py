"""``sc-celltherapy atlas``: list, verify, sign, build and fetch reference bundles."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_atlas_commands(sub) -> None:
    atlas = sub.add_parser("atlas", help="reference bundles: list, verify, sign, build, fetch")
    cmds = atlas.add_subparsers(dest="atlas_command", required=True)
    ls = cmds.add_parser("list", help="cached bundles and shipped atlas / profile manifests")
    ls.set_defaults(func=_cmd_atlas_list)
    ver = cmds.add_parser("verify", help="check every hash and the scvi-tools version of a bundle")
    ver.add_argument("bundle", help="bundle directory or name")
    ver.add_argument(
        "--public-key",
        type=Path,
        default=None,
        help="the lab's Ed25519 public key: the bundle's signature must hold for it",
    )
    ver.set_defaults(func=_cmd_atlas_verify)
    sig = cmds.add_parser("sign", help="sign a verified bundle's hash with the lab's private key")
    sig.add_argument("bundle", help="bundle directory or name")
    sig.add_argument(
        "--key", type=Path, required=True, help="the lab's Ed25519 private key (audit keygen)"
    )
    sig.set_defaults(func=_cmd_atlas_sign)
    b = cmds.add_parser("build", help="train scVI + scANVI on a labelled reference, write a bundle")
    b.add_argument("input", type=Path, help="reference with raw counts (.h5ad, 10x .h5 / folder)")
    b.add_argument("--labels-key", required=True, help=".obs column of cell-type labels")
    b.add_argument("--name", required=True)
    b.add_argument("--version", required=True)
    b.add_argument("--out", type=Path, required=True, help="bundle directory (must not exist)")
    b.add_argument("--batch-key", default=None, help=".obs column of donors / runs")
    b.add_argument("--max-epochs", type=int, default=None, help="scVI epochs (default: heuristic)")
    b.add_argument(
        "--n-members", type=int, default=None, help="models in the seed ensemble (default 3)"
    )
    b.add_argument("--seed", type=int, default=0)
    b.set_defaults(func=_cmd_atlas_build)
    f = cmds.add_parser(
        "fetch", help="download a shipped atlas (hash-checked) and build its bundle (internet)"
    )
    f.add_argument("name", help="atlas manifest name (see `atlas list`)")
    f.add_argument("--dest", type=Path, default=None, help="download folder (default: cache)")
    f.add_argument("--no-build", action="store_true", help="download and verify only")
    f.set_defaults(func=_cmd_atlas_fetch)


def _cmd_atlas_list(args: argparse.Namespace) -> None:
    from . import atlas

    table = atlas.list()
    print(table.to_string(index=False) if len(table) else "no bundles or manifests found")


def _cmd_atlas_verify(args: argparse.Namespace) -> None:
    from . import atlas

    bundle = atlas.load(args.bundle)
    print(f"OK {bundle!r}\n  sha256 {bundle.sha256}")
    if args.public_key is not None:
        checked = atlas.check_signature(bundle, args.public_key)
        print(f"  signed by the key with sha256 {checked['public_key_sha256']}")


def _cmd_atlas_sign(args: argparse.Namespace) -> None:
    from . import atlas

    path = atlas.sign_bundle(atlas.load(args.bundle), args.key)
    print(f"signed: {path}")


def _cmd_atlas_build(args: argparse.Namespace) -> None:
    from . import atlas, io

    if args.out.exists():
        msg = f"Bundle directory {args.out} exists; a bundle is never overwritten. Choose another."
        raise FileExistsError(msg)
    adata = io.read(args.input)
    bundle = atlas.build(
        adata,
        labels_key=args.labels_key,
        batch_key=args.batch_key,
        name=args.name,
        version=args.version,
        out_dir=args.out,
        max_epochs=args.max_epochs,
        seed=args.seed,
        **({} if args.n_members is None else {"n_members": args.n_members}),
    )
    cal = bundle.manifest["calibration"]
    where = "per held-out donor" if cal["across_donors"] else "within donor (one batch)"
    worst = cal["per_donor"][cal["worst_donor"]]
    print(
        f"Built {bundle!r}\n  sha256 {bundle.sha256}\n  ECE {where}: worst "
        f"{cal['ece_worst_donor']:.3f} ({cal['worst_donor']}; by chance up to "
        f"{worst['ece_chance_95']:.3f} on its {worst['n_cells']:,} cells), "
        f"mean {cal['ece_mean_donor']:.3f}"
        f" after {cal['method']}; label sets at alpha={cal['conformal']['alpha']}: worst "
        f"coverage {cal['conformal']['coverage_worst_donor']:.3f}"
    )


def _cmd_atlas_fetch(args: argparse.Namespace) -> None:
    from . import atlas

    files = atlas.fetch(args.name, dest=args.dest)
    for name, path in files.items():
        print(f"verified {name}: {path}")
    if not args.no_build:
        bundle = atlas.build_from_manifest(args.name, dest=args.dest)
        print(f"Built {bundle!r}\n  sha256 {bundle.sha256}")
