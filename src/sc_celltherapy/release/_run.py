"""The release of one lot: the one place that chains read, QC, mapping, identity, purity and report.

Everything a bad input can break is checked first (:func:`preflight`), before any heavy work
and before anything is written. The outputs are then built in a hidden temporary directory
beside the destination and renamed into place at the end, so an interrupted or failed run
leaves no release directory, and an existing one is never overwritten.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import sys
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import _interrupt as interrupt
from .._display import html_table, interval, pct, text_table
from .._keys import KEYS
from .._logging import logger, timed
from .._provenance import hardware, peak_memory_mb
from .._signing import load_private_key
from .._spec import Spec
from .._utils import plain
from ..pp import QCWarning
from ..tl import IdentityWarning, MappingWarning
from ._audit import AUDIT_FILE, AuditLog
from ._outputs import (
    RESULTS_FILE,
    open_partial,
    png,
    remove_stale_partials,
    rename_into_place,
    write_outputs,
)
from ._preflight import ResolvedInputs, preflight, preflight_again
from ._results import (
    PER_RUN_KEY,
    build_results,
    compare_results,
    spec_digest,
)
from ._score import flag_cells, identities, remove_flagged_cells
from ._validated import coverage, median_counts, read_dossier

STEPS = ("read", "qc", "map", "identity", "purity", "cluster", "report", "write")


@dataclass(frozen=True)
class Release:
    """A finished release: where it is and what it found (``results`` is results.json)."""

    out_dir: Path
    results: dict[str, Any] = field(repr=False)
    audit_last_hash: str = ""

    @property
    def verdict(self) -> str:
        return self.results["verdict"]

    _HEADER = ("criterion", "n", "fraction", "95% interval", "limit", "verdict")

    def _rows(self) -> list[list[str]]:
        rows = []
        for c in self.results["criteria"]:
            sign = ">=" if c.get("kind") == "min" else "<="
            limit = f"{sign} {pct(c['limit'])}"
            if c.get("limit_max") is not None:
                limit += f", <= {pct(c['limit_max'])}"
            rows.append(
                [
                    c["criterion"],
                    str(c["n"]),
                    pct(c["fraction"]),
                    interval(c["ci_low"], c["ci_high"]),
                    limit,
                    c["verdict"],
                ]
            )
        return rows

    def __repr__(self) -> str:
        r = self.results
        head = f"Release {r['lot_id']}: {self.verdict} ({r['purity']['n_cells']} cells) in {self.out_dir}"
        return head + "\n" + text_table(self._rows(), self._HEADER)

    def _repr_html_(self) -> str:
        title = f"Release {self.results['lot_id']} ({self.out_dir})"
        return html_table(title, self._rows(), self._HEADER, self.verdict)


def run(
    input: str | os.PathLike,
    *,
    out_dir: str | os.PathLike,
    lot_id: str,
    operator: str,
    spec: Spec | str | os.PathLike | None = None,
    product: str | None = None,
    reference: str | os.PathLike | None = None,
    batch_key: str | None = None,
    layer: str | None = None,
    seed: int = 0,
    min_gene_overlap: float = 0.5,
    verify_rerun: bool = False,
    audit_log: str | os.PathLike | None = None,
    sign_key: str | os.PathLike | None = None,
    reference_sha256: str | None = None,
    reference_public_key: str | os.PathLike | None = None,
    validation: str | os.PathLike | None = None,
    progress: Callable[[str], None] | None = None,
) -> Release:
    """Release one lot: read, QC, map, score identity, assess purity, write the report.

    Parameters
    ----------
    input
        The lot's counts: 10x ``.h5``, 10x matrix folder or ``.h5ad``.
    out_dir
        Release directory to create; it must not exist (a release is never overwritten).
    lot_id, operator
        Recorded in the results and in every audit record.
    spec
        A :class:`Spec`, or the path of a spec YAML file. ``None``: the example spec of
        ``product`` (marked as an example in every output).
    product
        Product profile name (``sct.atlas.list()``): identities, marker panels and the default
        reference. ``None``: the profile named by ``spec.product``, if one is shipped.
    reference
        Reference bundle (directory or name); ``None``: the profile's atlas, or no reference
        when the profile names none; ``"none"``: no reference. Without a reference the
        profile's marker panels alone call identities, and every output says so first.
    batch_key
        Column of ``.obs`` with the lot's channels (pooled for the fractions).
    layer
        Layer of an ``.h5ad`` lot that holds the raw counts when ``.X`` does not (e.g.
        ``"counts"`` beside a normalised ``.X``); the release then works on that layer and
        results.json records it (``inputs.counts``). ``None``: ``.X``.
    seed
        Seed of every random step (mapping, doublets, clustering). On CPU the same inputs and
        seed give the same results.json outside its ``"run"`` key.
    min_gene_overlap
        Smallest share of the reference's genes the lot must have.
    verify_rerun
        Run the whole chain twice and record in ``results["run"]["rerun"]`` whether the
        results agree.
    audit_log
        Optional lab-wide audit log that every record is also appended to (it keeps the
        records of failed runs, whose release directory is removed).
    sign_key
        The lab's Ed25519 private key (``sc-celltherapy audit keygen``): every audit record,
        in the release and in the lab log, is signed; ``audit verify --public-key`` checks them.
    reference_sha256
        The qualified bundle's sha256 (its bundle.json, as results.json records it): any other
        bundle, a re-sealed one included, is refused before work.
    reference_public_key
        The lab's Ed25519 public key: the bundle must carry the lab's signature of its hash
        (``sc-celltherapy atlas sign``), or it is refused before work. results.json records
        whether and with which key the signature was checked (``reference.signature``).
    validation
        The validation dossier (``sc-celltherapy validate --out``) that covers this product,
        reference and spec: verified before work, cited in results.json (``validation``) and
        the report, with a warning when it does not cover the lot (another product, reference
        or spec; cells, depth or gene overlap outside the validated range). ``None``: the
        release says that no dossier was cited.
    progress
        Called with one line per step (the command prints them).

    Returns
    -------
    The :class:`Release`. ``out_dir`` then holds ``results.json``, ``lot.h5ad``, ``report.html``
    and ``audit.jsonl``.
    """
    say = progress or (lambda line: logger.info(line))
    key = load_private_key(sign_key) if sign_key is not None else None  # refused before work
    inputs = preflight(
        input,
        out_dir=out_dir,
        lot_id=lot_id,
        operator=operator,
        spec=spec,
        product=product,
        reference=reference,
        batch_key=batch_key,
        min_gene_overlap=min_gene_overlap,
        seed=seed,
        audit_log=audit_log,
        reference_sha256=reference_sha256,
        reference_public_key=reference_public_key,
        layer=layer,
    )
    dossier = read_dossier(validation) if validation is not None else None  # before work
    if dossier is not None:
        inputs.read_hashes["validation:validation.json"] = dossier["sha256"]
    run_id = uuid.uuid4().hex
    started = _now()
    stale = remove_stale_partials(inputs.out_dir.parent)
    for path in stale:
        say(f"removed {path}: the partial directory of a run killed before it could clean up")
    tmp = open_partial(inputs.out_dir)
    logs = [AuditLog(tmp / AUDIT_FILE, operator=operator, run_id=run_id, signing_key=key)]
    if audit_log is not None:
        logs.append(AuditLog(audit_log, operator=operator, run_id=run_id, signing_key=key))

    def audit(action: str, **kwargs) -> str:
        """Append to every log; the release's own log's line hash is returned."""
        return [log.append(action, **kwargs) for log in logs][0]

    settings_used = {
        "batch_key": batch_key,
        "layer": layer,
        "min_gene_overlap": min_gene_overlap,
        "seed": seed,
    }
    try:
        audit(
            "run started",
            read=inputs.read_hashes,
            lot_id=lot_id,
            out_dir=str(inputs.out_dir),
            command=" ".join(sys.argv),
            settings=settings_used,
            stale_partials_removed=[str(p) for p in stale],
        )
        results, adata, figures, timings = _chain(
            inputs, lot_id, batch_key, seed, min_gene_overlap, say, audit
        )
        rerun = None
        if verify_rerun:
            say("verify-rerun: running the whole chain a second time")
            again = preflight_again(inputs)
            audit("rerun started")
            second, *_ = _chain(again, lot_id, batch_key, seed, min_gene_overlap, say, audit)
            rerun = compare_results(results, second)
            audit("rerun compared", agrees=rerun["agrees"], differences=rerun["differences"])
        cite_validation(results, dossier, adata, say)  # after the rerun's comparison
        results[PER_RUN_KEY] = _run_record(run_id, operator, started, inputs, timings, rerun)
        say(
            f"[{len(STEPS)}/{len(STEPS)}] write results.json, lot.h5ad, report.html, composition.png"
        )
        interrupt.check()
        written = write_outputs(tmp, results, adata, figures)
        audit("outputs written", wrote=written)
        last_hash = audit(
            "run finished", verdict=results["verdict"], results_sha256=written[RESULTS_FILE]
        )
        rename_into_place(tmp, inputs.out_dir)
    except BaseException as err:
        # the lab log (if any) keeps the failure; the partial directory goes
        if len(logs) > 1:
            logs[1].append("run failed", error=f"{type(err).__name__}: {err}")
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    say(f"release written to {inputs.out_dir} (verdict {results['verdict']})")
    return Release(inputs.out_dir, results, last_hash)


# ---------------------------------------------------------------------------------------------
# the chain


def _chain(inputs: ResolvedInputs, lot_id, batch_key, seed, min_gene_overlap, say, audit):
    own = (QCWarning, MappingWarning, IdentityWarning)
    with warnings.catch_warnings(record=True) as caught:
        for category in own:  # always recorded, whatever the caller's filters
            warnings.simplefilter("always", category)
        results, adata, figures, timings = _steps(
            inputs, lot_id, batch_key, seed, min_gene_overlap, say, audit
        )
    # our own warnings (QC criteria skipped, low gene overlap) belong to the record: results,
    # report and the progress display; other libraries' warnings reach the user as usual
    results["warnings"] = []
    registry: dict = {}
    for w in caught:
        if issubclass(w.category, own):
            if str(w.message) not in results["warnings"]:
                results["warnings"].append(str(w.message))
                say(f"warning: {w.message}")
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, registry=registry)
    return results, adata, figures, timings


def _steps(inputs: ResolvedInputs, lot_id, batch_key, seed, min_gene_overlap, say, audit):
    from .. import pl, tl

    adata = inputs.adata
    timings: dict[str, float] = {}
    n_steps = len(STEPS)

    def step(name: str, what: str):
        interrupt.check()  # an interrupt Python dropped inside a finaliser still stops here
        say(f"[{STEPS.index(name) + 1}/{n_steps}] {what}")
        return timed(what, record=timings, key=name)

    step(
        "read",
        f"read {inputs.input_path.name}: {adata.n_obs} barcodes x {adata.n_vars} features",
    )
    timings["read"] = inputs.read_seconds
    from ..io import guess_species

    marker_only = inputs.bundle is None
    if marker_only:
        guessed = guess_species(adata)
        species = guessed if guessed in ("human", "mouse") else "human"
    else:
        species = inputs.bundle.manifest.get("species", "human")
    with step("qc", "QC: metrics, low-quality and doublet flags, filter"):
        flag_cells(adata, species=species, batch_key=batch_key, seed=seed)
        qc_png = png(pl.qc(adata, return_fig=True))  # drawn before the flagged cells are removed
        remove_flagged_cells(adata)  # refuses too few cells left, before mapping
    qc = adata.uns[KEYS.QC]
    audit(
        "qc", n_barcodes=qc["n_cells_before"], n_after=qc["n_cells_after"], removed=qc["n_removed"]
    )
    if marker_only:
        with step("map", "no reference: identity from the profile's marker panels"):
            pass
        audit("map", skipped="no reference: identity from marker panels")
    else:
        with step(
            "map", f"map {adata.n_obs} cells onto {inputs.bundle.name} v{inputs.bundle.version}"
        ):
            tl.map_to_reference(
                adata,
                inputs.bundle,
                batch_key=batch_key,
                seed=seed,
                min_gene_overlap=min_gene_overlap,
            )
        ref = adata.uns[KEYS.REF]
        audit(
            "map",
            read={f"reference:{ref['bundle']}": ref["sha256"]},
            gene_overlap=ref["gene_overlap"],
            n_unassigned=ref["n_unassigned"],
        )
    with step("identity", "identity score and class of each cell"):
        identities(adata, inputs.spec, inputs.profile)
    audit("identity", classes=_counts(adata.obs[KEYS.IDENTITY_CLASS]))
    with step("purity", "purity against the spec"):
        report = tl.assess_purity(adata, inputs.spec)
    audit("purity", verdict=report.verdict, spec_sha256=spec_digest(inputs.spec))
    with step("cluster", "clusters and UMAP"):
        # the report needs the UMAP; marker genes (the slow part) are left to `cluster`. With a
        # reference the UMAP is of its latent space, without one of the lot's own PCA.
        rep = None if marker_only else "X_sct_ref"
        tl.cluster(adata, use_rep=rep, random_state=seed, markers=False)
    results = build_results(inputs, adata, report, lot_id, seed, batch_key, min_gene_overlap)
    with step("report", "figures and report"):
        figures = {
            "qc": qc_png,
            "identity": png(
                pl.identity(
                    adata,
                    groupby=KEYS.IDENTITY_CLASS if marker_only else "sct_ref_label",
                    return_fig=True,
                )
            ),
            "composition": png(pl.composition(adata, return_fig=True)),
        }
        if not marker_only:
            figures["reliability"] = png(pl.reliability(adata, return_fig=True))
    return results, adata, figures, timings


def cite_validation(results: dict, dossier: dict | None, adata, say) -> None:
    """results.json's ``validation``: the dossier cited and what it covers of this lot; each
    reason it does not cover the lot is also a warning of the release."""
    mapping = results["mapping"] or {}
    results["validation"] = coverage(
        dossier,
        product=results["product"],
        spec_sha256=results["spec"]["sha256"],
        reference_sha256=(results["reference"] or {}).get("sha256"),
        n_barcodes=results["qc"]["n_barcodes"],
        median_counts=median_counts(adata),
        gene_overlap=mapping.get("gene_overlap"),
    )
    for reason in results["validation"]["outside"]:
        message = (
            f"validation: {reason}"
            if dossier is None
            else (
                f"validation dossier {results['validation']['plan']} does not cover this lot: {reason}"
            )
        )
        results["warnings"].append(message)
        say(f"warning: {message}")


def _counts(values) -> dict[str, int]:
    return {str(k): int(v) for k, v in values.value_counts(sort=False).items()}


def _run_record(run_id, operator, started, inputs: ResolvedInputs, timings, rerun) -> dict:
    return plain(
        {
            "run_id": run_id,
            "operator": operator,
            "started_utc": started,
            "finished_utc": _now(),
            "command": " ".join(sys.argv),
            "input_path": str(inputs.input_path.absolute()),
            "reference_path": None if inputs.bundle is None else str(inputs.bundle.path),
            "out_dir": str(inputs.out_dir),
            "timings_s": timings,
            "peak_memory_mb": round(peak_memory_mb(), 1),
            "hardware": hardware(),
            "rerun": rerun,
        }
    )


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
