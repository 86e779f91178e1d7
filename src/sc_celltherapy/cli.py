"""The ``sc-celltherapy`` command.

Exit codes: 0 completed, 2 bad input or usage, 1 internal error.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from . import _interrupt as interrupt
from ._checks import InputError
from ._cli_atlas import add_atlas_commands
from ._cli_audit import add_audit_commands
from ._cli_summaries import cluster_summary, map_summary, qc_summary, release_summary
from ._cli_validate import add_validate_command
from ._keys import KEYS
from ._logging import logger
from ._settings import settings

EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT = 0, 1, 2
EXIT_INTERRUPTED = 130  # the shell's code for a run stopped by a signal (128 + SIGINT)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sc-celltherapy",
        description="Identity and purity of cell-therapy product lots from scRNA-seq.",
        epilog="Exit codes: 0 completed, 2 bad input or usage, 1 internal error.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log each step")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser(
        "demo",
        help="a full release of a demo lot (generated from scanpy's real PBMCs, planted "
        "contaminants) against the embedded reference",
    )
    demo.add_argument(
        "--out",
        type=Path,
        default=Path("demo_output"),
        help="release directory (default: demo_output)",
    )
    demo.add_argument("--seed", type=int, default=0)
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

    mp = sub.add_parser("map", help="map a QC'd lot onto a reference bundle (.h5ad in and out)")
    mp.add_argument("input", type=Path)
    mp.add_argument("--reference", required=True, help="bundle directory or name (pbmc_demo)")
    mp.add_argument("--out", type=Path, required=True)
    mp.add_argument("--batch-key", default=None, help=".obs column with the sample of each cell")
    mp.add_argument("--seed", type=int, default=0)
    mp.set_defaults(func=_cmd_map)

    sc = sub.add_parser(
        "score",
        help="identity and purity of a lot (.h5ad in and out): from its mapping when it was "
        "mapped, else from the profile's marker panels",
    )
    sc.add_argument("input", type=Path, help="lot after `map`, or after `qc` for marker panels")
    sc.add_argument("--out", type=Path, required=True, help="output .h5ad")
    _add_spec_args(sc)
    sc.add_argument("--report-json", type=Path, default=None, help="also write the report here")
    sc.set_defaults(func=_cmd_score)

    rel = sub.add_parser(
        "release",
        help="the whole chain for one lot: read, QC, map, identity, purity, report, audit",
        description="Release one lot. Writes DIR/results.json, lot.h5ad, report.html, "
        "composition.png and "
        "audit.jsonl through a temporary directory renamed into place; DIR must not exist. "
        "Exit 0 when the release completed (whatever its verdict), 2 on bad input (nothing "
        "written), 1 on an internal error (nothing written).",
    )
    rel.add_argument("input", type=Path, help="10x .h5, 10x matrix folder or .h5ad")
    _add_spec_args(rel)
    rel.add_argument(
        "--reference",
        default=None,
        help="bundle directory or name (default: the profile's atlas); 'none': identity from "
        "the profile's marker panels alone, no reference",
    )
    rel.add_argument("--lot-id", required=True)
    rel.add_argument("--operator", required=True, help="who runs the release (audit trail)")
    rel.add_argument("--out", type=Path, required=True, help="release directory (must not exist)")
    rel.add_argument("--seed", type=int, default=0)
    rel.add_argument("--batch-key", default=None, help=".obs column with the lot's channels")
    rel.add_argument(
        "--layer",
        default=None,
        help="layer of an .h5ad lot holding the raw counts when .X is normalised (e.g. counts)",
    )
    rel.add_argument("--min-gene-overlap", type=float, default=0.5)
    rel.add_argument(
        "--verify-rerun",
        action="store_true",
        help="run the chain twice and state whether the results agree",
    )
    rel.add_argument(
        "--audit-log", type=Path, default=None, help="lab-wide audit log to append to as well"
    )
    rel.add_argument(
        "--sign-key",
        type=Path,
        default=None,
        help="the lab's Ed25519 private key (audit keygen): every audit record is signed",
    )
    rel.add_argument(
        "--reference-sha256",
        default=None,
        metavar="SHA256",
        help="the qualified bundle's sha256 (results.json: reference.sha256); any other is refused",
    )
    rel.add_argument(
        "--reference-public-key",
        type=Path,
        default=None,
        help="the lab's Ed25519 public key: a bundle without the lab's signature is refused",
    )
    rel.add_argument(
        "--validation",
        type=Path,
        default=None,
        metavar="DOSSIER",
        help="the validation dossier (`validate --out`) covering this product, reference and "
        "spec: cited in the results, with a warning when the lot lies outside its range",
    )
    rel.set_defaults(func=_cmd_release)

    cmp_ = sub.add_parser(
        "compare",
        help="a new lot against qualified lots: equivalence per identity class, latent shift",
    )
    cmp_.add_argument(
        "new", type=Path, help="the new lot: a release's lot.h5ad (or a scored .h5ad)"
    )
    cmp_.add_argument(
        "--history", type=Path, nargs="+", required=True, help="qualified lots (.h5ad)"
    )
    _add_spec_args(cmp_)
    cmp_.add_argument("--out", type=Path, required=True, help="comparison JSON")
    cmp_.add_argument("--plot", type=Path, default=None, help="also draw the comparison here")
    cmp_.add_argument("--seed", type=int, default=0)
    cmp_.set_defaults(func=_cmd_compare)

    mx = sub.add_parser(
        "mix",
        help="a validation lot: cells drawn from a base population, optionally with a known "
        "fraction of spike-in cells chosen by a marker rule",
    )
    mx.add_argument("base", type=Path, help="base population (.h5ad / 10x)")
    mx.add_argument("--n-cells", type=int, required=True)
    mx.add_argument("--spike", type=Path, default=None, help="spike-in population")
    mx.add_argument("--fraction", type=float, default=0.0, help="spike-in fraction")
    mx.add_argument(
        "--spike-markers", default="", help="genes every spike cell has, comma-separated"
    )
    mx.add_argument("--spike-exclude", default="", help="genes no spike cell has, comma-separated")
    mx.add_argument("--seed", type=int, default=0)
    mx.add_argument("--out", type=Path, required=True, help="output .h5ad")
    mx.set_defaults(func=_cmd_mix)

    sm = sub.add_parser("summary", help="status of many lots under a workflow's output folder")
    sm.add_argument("--outdir", type=Path, required=True)
    sm.add_argument("--lots", nargs="+", required=True)
    sm.add_argument("--out", type=Path, default=None, help="also write the table (TSV) here")
    sm.set_defaults(func=_cmd_summary)

    mq = sub.add_parser(
        "multiqc-content",
        help="a released lot's results.json as MultiQC custom content (one table row per lot)",
    )
    mq.add_argument("results", type=Path, help="the lot's results.json")
    mq.add_argument("--out", type=Path, required=True, help="output file ending in _mqc.yaml")
    mq.set_defaults(func=_cmd_multiqc_content)

    add_audit_commands(sub)
    add_atlas_commands(sub)
    add_validate_command(sub)
    return parser


def _add_spec_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--product",
        default=None,
        help="product profile: a shipped name (see `atlas list`) or the path of your YAML",
    )
    p.add_argument(
        "--spec",
        type=Path,
        default=None,
        help="release spec YAML (default: the product's example spec)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    if args.verbose:
        settings.verbosity = "info"  # the one switch, so scvi-tools' progress follows it too
    # Warnings from the library are for a person reading a terminal: one line each.
    warnings.formatwarning = lambda message, category, *_, **__: f"warning: {message}\n"
    previous = interrupt.install()
    try:
        args.func(args)
    except KeyboardInterrupt as err:  # SIGINT, or SIGTERM from a scheduler (_interrupt.py)
        # the release has already recorded "run failed" in the lab log and removed its partial
        print(f"interrupted: {err or 'SIGINT'}; nothing was released", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (InputError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as err:  # noqa: BLE001 - the one place that turns crashes into exit 1
        logger.exception("internal error")
        print(f"internal error: {type(err).__name__}: {err}", file=sys.stderr)
        return EXIT_INTERNAL
    finally:
        interrupt.restore(previous)
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
        pp.remove_flagged(adata)
    adata.write_h5ad(args.out)
    print(qc_summary(adata))


def _cmd_cluster(args: argparse.Namespace) -> None:
    from . import io, tl

    _check_out_file(args.out)
    adata = io.read(args.input)
    tl.cluster(
        adata, resolution=args.resolution, n_top_genes=args.n_top_genes, random_state=args.seed
    )
    adata.write_h5ad(args.out)
    print(cluster_summary(adata))


def _cmd_map(args: argparse.Namespace) -> None:
    from . import atlas, io, tl

    _check_out_file(args.out)
    bundle = atlas.load(args.reference)  # verified before the lot is read
    adata = io.read(args.input)
    tl.map_to_reference(adata, bundle, batch_key=args.batch_key, seed=args.seed)
    adata.write_h5ad(args.out)
    print(map_summary(adata))


def _cmd_demo(args: argparse.Namespace) -> None:
    import dataclasses
    import tempfile

    from . import datasets, release

    release.check_out_dir(args.out.absolute())
    lot = datasets.pbmc_demo_lot(seed=args.seed)
    print(
        f"Demo lot: {lot.n_obs} cells generated from real PBMCs ({lot.uns['sct_dataset']['source']})"
    )
    print(
        "  planted: " + ", ".join(f"{k} {v:.1%}" for k, v in datasets.DEMO_LOT_COMPOSITION.items())
    )
    print(
        "  (the embedded reference is built from the same cells: this shows the chain, not accuracy)\n"
    )
    print("Reference pbmc_demo: verified, or built on first use (about 2 minutes) and cached\n")
    # the demo lot has no CAR transgene feature; the example spec is otherwise the profile's
    spec = dataclasses.replace(release.Spec.from_profile("car_t_demo"), transgene_features=())
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pbmc_demo_lot.h5ad"
        lot.write_h5ad(path)
        result = release.run(
            path,
            out_dir=args.out,
            lot_id="DEMO-PBMC-001",
            operator="demo",
            spec=spec,
            product="car_t_demo",
            reference="pbmc_demo",
            seed=args.seed,
            progress=_progress,
        )
    print(release_summary(result))


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _spec_and_product(args: argparse.Namespace):
    if args.spec is None and args.product is None:
        raise InputError("Give --product NAME (its example spec) or --spec SPEC.yaml.")
    return (args.spec, args.product)


def _cmd_release(args: argparse.Namespace) -> None:
    from . import release

    spec, product = _spec_and_product(args)
    result = release.run(
        args.input,
        out_dir=args.out,
        lot_id=args.lot_id,
        operator=args.operator,
        spec=spec,
        product=product,
        reference=args.reference,
        batch_key=args.batch_key,
        layer=args.layer,
        seed=args.seed,
        min_gene_overlap=args.min_gene_overlap,
        verify_rerun=args.verify_rerun,
        audit_log=args.audit_log,
        sign_key=args.sign_key,
        reference_sha256=args.reference_sha256,
        reference_public_key=args.reference_public_key,
        validation=args.validation,
        progress=_progress,
    )
    print(release_summary(result))


def _cmd_score(args: argparse.Namespace) -> None:
    from . import io, release

    _check_out_file(args.out)
    spec_arg, product = _spec_and_product(args)
    spec = (
        release.Spec.from_yaml(spec_arg)
        if spec_arg is not None
        else release.Spec.from_profile(product)
    )
    adata = io.read(args.input)
    report = release.score(adata, spec, product=product)
    adata.write_h5ad(args.out)
    if args.report_json is not None:
        args.report_json.write_text(report.to_json() + "\n")
    print(f"Identity: {adata.uns['sct_identity']['method']}")
    print(f"Verdict {report.verdict} ({report.n_cells} cells; LOD95 {report.lod95:.2%})")
    print(report.to_frame().drop(columns=["denominator"]).to_string())


def _cmd_compare(args: argparse.Namespace) -> None:
    import json

    import anndata as ad

    from . import pl, release, tl

    _check_out_file(args.out)
    spec = None
    if args.spec is not None:
        spec = release.Spec.from_yaml(args.spec)
    elif args.product is not None:
        spec = release.Spec.from_profile(args.product)
    for path in [args.new, *args.history]:
        if not path.is_file():
            raise InputError(f"Lot not found: {path}. Give the lot.h5ad of each release.")
    new = ad.read_h5ad(args.new)
    history = {}
    for path in args.history:
        lot = ad.read_h5ad(path)
        # a release's lot.h5ad knows its lot id; other files go by their name
        history[lot.uns.get(KEYS.RELEASE, {}).get("lot_id", path.stem)] = lot
    result = tl.compare_lots(new, history, spec=spec, seed=args.seed)
    args.out.write_text(json.dumps({"new": str(args.new), **result.to_dict()}, indent=2) + "\n")
    if args.plot is not None:
        import matplotlib.pyplot as plt

        plt.close(pl.compare_lots(new, save=args.plot, return_fig=True))
    print(f"Comparison with {len(history)} qualified lots: {result.verdict}")
    print(
        result.classes[["fraction", "history_mean", "difference", "margin", "verdict"]].to_string()
    )
    shift = result.shift
    if "p_value" in shift:
        print(
            f"latent shift: energy distance {shift['energy_distance']:.3f}, p = {shift['p_value']:.3g}"
        )


def _cmd_mix(args: argparse.Namespace) -> None:
    import numpy as np

    from . import io, validation

    _check_out_file(args.out)
    base = io.read(args.base)
    spike = None
    if args.spike is not None:
        spike = io.read(args.spike)
        positive = [g for g in args.spike_markers.split(",") if g]
        negative = [g for g in args.spike_exclude.split(",") if g]
        if positive or negative:
            spike = spike[validation.select_by_markers(spike, positive=positive, negative=negative)]
    elif args.fraction:
        raise InputError("--fraction needs --spike (the population to spike in).")
    rng = np.random.default_rng(args.seed)
    lot = validation.mix(
        base, spike if spike is not None else base[:0], args.fraction, args.n_cells, rng
    )
    lot.obs = lot.obs[[validation.SPIKE_KEY]]
    lot.uns["sct_mix"] = {
        "base": str(args.base),
        "spike": str(args.spike),
        "fraction": args.fraction,
        "n_cells": args.n_cells,
        "seed": args.seed,
        "spike_markers": args.spike_markers,
        "spike_exclude": args.spike_exclude,
    }
    lot.write_h5ad(args.out)
    print(f"Wrote {args.out}: {lot.n_obs} cells, {int(lot.obs[validation.SPIKE_KEY].sum())} spiked")


def _cmd_summary(args: argparse.Namespace) -> None:
    from .release import summarize

    table = summarize(args.outdir, args.lots)
    if args.out is not None:  # rewritten on every run: it describes the latest one
        table.to_csv(args.out, sep="\t", index=False)
    print(table.to_string(index=False))


def _cmd_multiqc_content(args: argparse.Namespace) -> None:
    from .release import write_multiqc_content

    if not args.results.is_file():
        raise InputError(f"{args.results} not found: give the lot's release/results.json.")
    print(f"Wrote {write_multiqc_content(args.results, args.out)}")


if __name__ == "__main__":
    raise SystemExit(main())
