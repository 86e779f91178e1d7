"""The ``sc-celltherapy`` command.

Exit codes: 0 completed, 2 bad input or usage, 1 internal error.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from ._logging import logger
from ._validate import InputError

EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sc-celltherapy",
        description="Identity and purity of cell-therapy product lots from scRNA-seq.",
        epilog="Exit codes: 0 completed, 2 bad input or usage, 1 internal error.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log each step")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="QC and clustering of the embedded real PBMC data")
    demo.add_argument(
        "--out", type=Path, default=Path("demo_output"), help="output folder (default: demo_output)"
    )
    demo.set_defaults(func=_cmd_demo)

    qc = sub.add_parser("qc", help="QC one lot: metrics, low-quality and doublet flags, filter")
    qc.add_argument("input", type=Path, help="10x .h5, 10x matrix folder or .h5ad")
    qc.add_argument("--out", type=Path, required=True, help="output .h5ad")
    qc.add_argument("--species", default="human", choices=["human", "mouse"])
    qc.add_argument("--batch-key", default=None, help=".obs column with the sample of each cell")
    qc.add_argument("--no-filter", action="store_true", help="flag cells but keep them")
    qc.set_defaults(func=_cmd_qc)

    cl = sub.add_parser("cluster", help="cluster a QC'd lot (.h5ad in, .h5ad out)")
    cl.add_argument("input", type=Path)
    cl.add_argument("--out", type=Path, required=True)
    cl.add_argument("--resolution", type=float, default=1.0)
    cl.add_argument("--n-top-genes", type=int, default=2000)
    cl.add_argument("--seed", type=int, default=0)
    cl.set_defaults(func=_cmd_cluster)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    if args.verbose:
        logger.setLevel("INFO")
    # Warnings from the library are for a person reading a terminal: one line each.
    warnings.formatwarning = lambda message, category, *_, **__: f"warning: {message}\n"
    try:
        args.func(args)
    except (InputError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as err:  # noqa: BLE001 - the one place that turns crashes into exit 1
        logger.exception("internal error")
        print(f"internal error: {type(err).__name__}: {err}", file=sys.stderr)
        return EXIT_INTERNAL
    return EXIT_OK


def _check_out_file(path: Path) -> None:
    if path.exists():
        msg = f"Output {path} exists; refusing to overwrite it. Choose another path or remove it."
        raise FileExistsError(msg)
    if not path.parent.exists():
        msg = f"Output folder {path.parent} does not exist; create it first."
        raise InputError(msg)


def _cmd_qc(args: argparse.Namespace) -> None:
    from . import io, pp

    _check_out_file(args.out)
    adata = io.read(args.input)
    pp.qc_metrics(adata, species=args.species, batch_key=args.batch_key)
    pp.flag_low_quality(adata, batch_key=args.batch_key)
    pp.doublets(adata, batch_key=args.batch_key)
    if not args.no_filter:
        pp.filter_cells(adata)
    adata.write_h5ad(args.out)
    print(_qc_summary(adata))


def _cmd_cluster(args: argparse.Namespace) -> None:
    from . import io, tl

    _check_out_file(args.out)
    adata = io.read(args.input)
    tl.cluster(
        adata, resolution=args.resolution, n_top_genes=args.n_top_genes, random_state=args.seed
    )
    adata.write_h5ad(args.out)
    print(_cluster_summary(adata))


def _cmd_demo(args: argparse.Namespace) -> None:
    from . import datasets, pl, pp, tl

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    adata = datasets.pbmc_reference()
    print(f"Embedded data: {adata.uns['sct_dataset']['source']}")
    print(f"  {adata.n_obs} cells x {adata.n_vars} genes (real counts)\n")
    pp.qc_metrics(adata)
    pp.flag_low_quality(adata)
    pp.doublets(adata)
    pl.qc(adata, save=out / "qc.png")
    pp.filter_cells(adata)
    print(_qc_summary(adata))
    tl.cluster(adata, n_top_genes=500)
    pl.clusters(adata, save=out / "clusters.png")
    print(_cluster_summary(adata, label_key="cell_type"))
    adata.write_h5ad(out / "lot.h5ad")
    print(f"\nWrote {out / 'qc.png'}, {out / 'clusters.png'}, {out / 'lot.h5ad'}")


def _qc_summary(adata) -> str:
    record = adata.uns.get("sct_qc", {})
    lines = ["QC summary", f"  cells before QC   {record.get('n_cells_before', adata.n_obs):>7}"]
    for key, n in record.get("n_removed", {}).items():
        lines.append(f"  flagged {key:<30} {n:>7}")
    lines.append(f"  cells after QC    {adata.n_obs:>7}")
    return "\n".join(lines)


def _cluster_summary(adata, label_key: str | None = None) -> str:
    key = "sct_cluster"
    markers = adata.uns.get(f"{key}_markers")
    header = f"{'cluster':>7} {'cells':>6}  {'top markers':<34}"
    if label_key:
        header += "  majority label"
    lines = ["Clusters", header]
    for name, n in adata.obs[key].value_counts(sort=False).items():
        top = ", ".join(markers["names"][str(name)][:4]) if markers is not None else ""
        line = f"{name!s:>7} {n:>6}  {top:<34}"
        if label_key:
            labels = adata.obs.loc[adata.obs[key] == name, label_key]
            major = labels.value_counts()
            line += f"  {major.index[0]} ({major.iloc[0] / n:.0%})"
        lines.append(line)
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
