"""The release of one lot: the one place that chains read, QC, mapping, identity, purity and report.

Everything a bad input can break is checked first (:func:`_preflight`), before any heavy work
and before anything is written. The outputs are then built in a hidden temporary directory
beside the destination and renamed into place at the end, so an interrupted or failed run
leaves no release directory, and an existing one is never overwritten.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._logging import logger
from .._utils import plain
from .._validate import InputError
from ..io import file_sha256
from ..pp._qc import QCWarning
from ..tl._map import MappingWarning
from ._audit import AUDIT_FILE, AuditLog
from ._spec import Spec, SpecError

RESULTS_SCHEMA = "sc_celltherapy.release.results/1"
RESULTS_FILE, LOT_FILE, REPORT_FILE = "results.json", "lot.h5ad", "report.html"
# fields that differ between two runs of the same inputs by nature; all under this key
PER_RUN_KEY = "run"
STEPS = ("read", "qc", "map", "identity", "purity", "cluster", "report", "write")
# --reference none: identity from the profile's marker panels alone
NO_REFERENCE = "none"


class ReleaseExistsError(InputError, FileExistsError):
    """The release directory exists; a release is never overwritten."""


@dataclass(frozen=True)
class Release:
    """A finished release: where it is and what it found (``results`` is results.json)."""

    out_dir: Path
    results: dict[str, Any] = field(repr=False)
    audit_last_hash: str = ""

    @property
    def verdict(self) -> str:
        return self.results["verdict"]


@dataclass
class _Inputs:
    """What the pre-flight checks resolved, so the chain itself cannot fail on bad input."""

    input_path: Path
    adata: Any
    bundle: Any  # None: identity from marker panels, no reference
    spec: Spec
    spec_source: str
    profile: dict | None
    out_dir: Path
    read_hashes: dict[str, str]
    read_seconds: float


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
    seed: int = 0,
    min_gene_overlap: float = 0.5,
    verify_rerun: bool = False,
    audit_log: str | os.PathLike | None = None,
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
    progress
        Called with one line per step (the command prints them).

    Returns
    -------
    The :class:`Release`. ``out_dir`` then holds ``results.json``, ``lot.h5ad``, ``report.html``
    and ``audit.jsonl``.
    """
    say = progress or (lambda line: logger.info(line))
    inputs = _preflight(
        input,
        out_dir=out_dir,
        lot_id=lot_id,
        operator=operator,
        spec=spec,
        product=product,
        reference=reference,
        batch_key=batch_key,
        min_gene_overlap=min_gene_overlap,
    )
    run_id = uuid.uuid4().hex
    started = _now()
    tmp = Path(
        tempfile.mkdtemp(prefix=f".{inputs.out_dir.name}.partial-", dir=inputs.out_dir.parent)
    )
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 would hide the release from the lab
    logs = [AuditLog(tmp / AUDIT_FILE, operator=operator, run_id=run_id)]
    if audit_log is not None:
        logs.append(AuditLog(audit_log, operator=operator, run_id=run_id))

    def audit(action: str, **kwargs) -> str:
        """Append to every log; the release's own log's line hash is returned."""
        return [log.append(action, **kwargs) for log in logs][0]

    settings_used = {
        "batch_key": batch_key,
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
        )
        results, adata, figures, timings = _chain(
            inputs, lot_id, batch_key, seed, min_gene_overlap, say, audit
        )
        rerun = None
        if verify_rerun:
            say("verify-rerun: running the whole chain a second time")
            again = _preflight_again(inputs)
            audit("rerun started")
            second, *_ = _chain(again, lot_id, batch_key, seed, min_gene_overlap, say, audit)
            rerun = compare_results(results, second)
            audit("rerun compared", agrees=rerun["agrees"], differences=rerun["differences"])
        results[PER_RUN_KEY] = _run_record(run_id, operator, started, inputs, timings, rerun)
        say(f"[{len(STEPS)}/{len(STEPS)}] write results.json, lot.h5ad, report.html")
        written = _write_outputs(tmp, results, adata, figures)
        audit("outputs written", wrote=written)
        last_hash = audit(
            "run finished", verdict=results["verdict"], results_sha256=written[RESULTS_FILE]
        )
        _rename_into_place(tmp, inputs.out_dir)
    except BaseException as err:
        # the lab log (if any) keeps the failure; the partial directory goes
        if len(logs) > 1:
            logs[1].append("run failed", error=f"{type(err).__name__}: {err}")
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    say(f"release written to {inputs.out_dir} (verdict {results['verdict']})")
    return Release(inputs.out_dir, results, last_hash)


# ---------------------------------------------------------------------------------------------
# pre-flight: every refusal happens here, before heavy work and before anything is written


def _preflight(
    input, *, out_dir, lot_id, operator, spec, product, reference, batch_key, min_gene_overlap
) -> _Inputs:
    from .. import atlas, io
    from .._validate import check_obs_key
    from ..tl._identity import RESIDUAL_PLURIPOTENT, UNASSIGNED, resolve_identities
    from ..tl._map import check_genes
    from ..tl._purity import check_marker_gates, check_transgene_features

    out_dir = Path(out_dir).absolute()
    check_out_dir(out_dir)
    for name, value in (("lot_id", lot_id), ("operator", operator)):
        if not isinstance(value, str) or not value.strip():
            raise InputError(
                f"{name} must be a non-empty string (it is recorded in the audit trail)."
            )
    spec_obj, spec_source, read_hashes = _resolve_spec(spec, product)
    profile = _resolve_profile(product, spec_obj)
    input_path = Path(input)
    start = time.perf_counter()
    adata = io.read(input_path)  # missing, corrupt, empty, non-count, duplicate input stop here
    check_obs_key(adata, batch_key, what="batch column")
    read_hashes[f"input:{input_path.name}"] = adata.uns["sct_input"]["sha256"]
    read_seconds = round(time.perf_counter() - start, 3)
    if reference is None and profile is not None and profile.get("atlas") is None:
        reference = NO_REFERENCE
    if reference is None:
        if profile is None:
            msg = (
                "No reference: pass --reference (a bundle, or 'none' for marker panels alone), "
                "or a product whose profile names an atlas."
            )
            raise InputError(msg)
        reference = profile["atlas"]
    if str(reference).lower() == NO_REFERENCE:
        bundle = None
        _check_marker_only(adata, profile, spec_obj)
    else:
        bundle = atlas.load(reference)  # refuses a changed, missing or extra file
        read_hashes[f"reference:{bundle.name}"] = bundle.sha256
        # refusal only here; the low-overlap warning comes from the mapping step, into the results
        check_genes(adata, bundle, min_gene_overlap=min_gene_overlap, warn_gene_overlap=0.0)
        identities = resolve_identities(profile, list(spec_obj.target), list(bundle.labels))
        known = {i["name"] for i in identities} | set(bundle.labels)
        known |= {UNASSIGNED, RESIDUAL_PLURIPOTENT}
        where = f"the reference {bundle.name!r}" + (
            f" and profile {profile['name']!r}" if profile else ""
        )
        spec_obj.check_identities(known, where=where)
    check_transgene_features(adata, spec_obj)
    check_marker_gates(adata, spec_obj)
    return _Inputs(
        input_path,
        adata,
        bundle,
        spec_obj,
        spec_source,
        profile,
        out_dir,
        read_hashes,
        read_seconds,
    )


def _check_marker_only(adata, profile: dict | None, spec: Spec) -> None:
    """Without a reference the profile's marker panels decide: they must exist and the target's
    must be in the lot."""
    from ..tl._identity import (
        RESIDUAL_PLURIPOTENT,
        UNASSIGNED,
        check_target_coverage,
        panel_coverage,
        resolve_identities,
    )
    from ..tl._panels import MIN_FRACTION_FOUND, MIN_GENES_FOUND

    if profile is None:
        msg = (
            "Without a reference, identities come from a product profile's marker panels: pass "
            "--product (a shipped name or the path of your profile YAML)."
        )
        raise InputError(msg)
    identities = resolve_identities(profile, list(spec.target), [])
    known = {i["name"] for i in identities} | {UNASSIGNED, RESIDUAL_PLURIPOTENT}
    spec.check_identities(known, where=f"profile {profile['name']!r} (marker panels, no reference)")
    coverage = panel_coverage(
        adata, identities, min_genes=MIN_GENES_FOUND, min_fraction=MIN_FRACTION_FOUND
    )
    check_target_coverage(coverage.get(identities[0]["name"]), identities[0]["name"])


def _preflight_again(inputs: _Inputs) -> _Inputs:
    """The inputs of a rerun: the lot read again from disk, everything else as resolved."""
    from .. import io

    return _Inputs(**{**inputs.__dict__, "adata": io.read(inputs.input_path)})


def check_out_dir(out_dir: Path) -> None:
    """Refuse an existing release directory or a location that cannot be written."""
    if out_dir.exists():
        msg = (
            f"Release directory {out_dir} exists; a release is never overwritten. Choose a new "
            "--out (one directory per lot and run)."
        )
        raise ReleaseExistsError(msg)
    parent = out_dir.parent
    if not parent.is_dir():
        msg = f"Cannot write the release: {parent} is not an existing directory. Create it first."
        raise InputError(msg)
    try:  # the only honest test of writability (root ignores permission bits)
        probe = tempfile.mkdtemp(prefix=f".{out_dir.name}.probe-", dir=parent)
        os.rmdir(probe)
    except OSError as err:
        msg = f"Cannot write in {parent} ({err.strerror or err}). Choose a writable --out location."
        raise InputError(msg) from err


def _resolve_spec(spec, product) -> tuple[Spec, str, dict[str, str]]:
    if spec is None:
        if product is None:
            raise InputError("No spec: pass a spec YAML (--spec) or a product (--product).")
        profile = _load_profile(product)
        return Spec.from_profile(profile), f"example spec of product profile {product!r}", {}
    if isinstance(spec, Spec):
        kind = "example spec" if spec.example else "spec"
        return spec, f"{kind} of {spec.product!r} given in Python", {}
    path = Path(spec)
    if not path.is_file():
        raise SpecError(f"Spec file {path} does not exist. Give the path of a spec YAML file.")
    return Spec.from_yaml(path), str(path), {f"spec:{path.name}": file_sha256(path)}


def _load_profile(name: str) -> dict:
    from ..atlas import load_profile
    from ..atlas._manifests import _resolve

    try:
        path = _resolve(name, "profile")
    except InputError as err:
        raise InputError(f"Unknown product {name!r}: {err}") from err
    return load_profile(path)


def _resolve_profile(product: str | None, spec: Spec) -> dict | None:
    from ..atlas import list_manifests

    if product is not None:
        return _load_profile(product)
    shipped = list_manifests().query("kind == 'profile'")["name"].tolist()
    return _load_profile(spec.product) if spec.product in shipped else None


# ---------------------------------------------------------------------------------------------
# the chain


def _chain(inputs: _Inputs, lot_id, batch_key, seed, min_gene_overlap, say, audit):
    own = (QCWarning, MappingWarning)
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


def _steps(inputs: _Inputs, lot_id, batch_key, seed, min_gene_overlap, say, audit):
    from .. import pl, pp, tl

    adata = inputs.adata
    timings: dict[str, float] = {}
    n_steps = len(STEPS)

    def step(name: str, what: str):
        say(f"[{STEPS.index(name) + 1}/{n_steps}] {what}")
        return _Timer(timings, name)

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
        pp.qc_metrics(adata, species=species, batch_key=batch_key)
        pp.flag_low_quality(adata, batch_key=batch_key)
        pp.doublets(adata, batch_key=batch_key, random_state=seed)
        qc_png = _png(pl.qc(adata))  # drawn before the flagged cells are removed
        pp.filter_cells(adata)  # refuses when no cell would be left
    qc = adata.uns["sct_qc"]
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
        ref = adata.uns["sct_ref"]
        audit(
            "map",
            read={f"reference:{ref['bundle']}": ref["sha256"]},
            gene_overlap=ref["gene_overlap"],
            n_unassigned=ref["n_unassigned"],
        )
    with step("identity", "identity score and class of each cell"):
        tl.identity_score(adata, target=list(inputs.spec.target), profile=inputs.profile)
    audit("identity", classes=_counts(adata.obs["sct_identity_class"]))
    with step("purity", "purity against the spec"):
        report = tl.assess_purity(adata, inputs.spec)
    audit("purity", verdict=report.verdict, spec_sha256=spec_digest(inputs.spec))
    with step("cluster", "clusters and UMAP"):
        # the report needs the UMAP; marker genes (the slow part) are left to `cluster`. With a
        # reference the UMAP is of its latent space, without one of the lot's own PCA.
        rep = None if marker_only else "X_sct_ref"
        tl.cluster(adata, use_rep=rep, random_state=seed, markers=False)
    results = _results(inputs, adata, report, lot_id, seed, batch_key, min_gene_overlap)
    with step("report", "figures and report"):
        figures = {
            "qc": qc_png,
            "identity": _png(
                pl.identity(adata, groupby="sct_identity_class" if marker_only else "sct_ref_label")
            ),
            "composition": _png(pl.composition(adata)),
        }
    return results, adata, figures, timings


class _Timer:
    def __init__(self, timings: dict, name: str) -> None:
        self.timings, self.name = timings, name

    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.timings[self.name] = round(time.perf_counter() - self.start, 3)


def _counts(values) -> dict[str, int]:
    return {str(k): int(v) for k, v in values.value_counts(sort=False).items()}


def spec_digest(spec: Spec) -> str:
    """sha256 of the spec's canonical YAML: the same spec has the same hash wherever it came from."""
    import hashlib

    return hashlib.sha256(spec.to_yaml().encode()).hexdigest()


def _results(inputs: _Inputs, adata, report, lot_id, seed, batch_key, min_gene_overlap) -> dict:
    from .. import __version__

    qc = adata.uns["sct_qc"]
    purity = report.to_dict()
    target = {**purity["target"], "denominator": "assessed", "kind": "min"}
    judged = {"target": target, **purity["impurities"]}
    criteria = [
        {"criterion": k, "kind": "max", **row}
        for k, row in judged.items()
        if row["limit"] is not None
    ]
    criteria += [
        {"criterion": f"marker:{k}", "denominator": "assessed", **row}
        for k, row in purity["marker_gates"].items()
    ]
    src = adata.uns["sct_input"]
    n = report.n_cells
    results = {
        "schema": RESULTS_SCHEMA,
        "lot_id": lot_id,
        "product": inputs.spec.product,
        "verdict": report.verdict,
        "identity": identity_record(adata.uns["sct_identity"], inputs.bundle),
        "criteria": criteria,
        "purity": purity,
        "detection": {
            "n_cells_assessed": n,
            "lod95": report.lod95,
            "upper_bound_when_zero": report.lod95,
            "statement": (
                f"With {n} cells assessed, an impurity present at {report.lod95:.2%} or more of "
                "the lot is seen at least once with 95% probability (1 - 0.05^(1/n)); a class "
                f"with no cell seen is below {report.lod95:.2%} with 95% confidence. Rarer "
                "impurities (e.g. residual pluripotent cells at 1 in 100,000) cannot be excluded "
                "by this run and need an orthogonal assay (ddPCR, flow)."
            ),
        },
        "qc": {
            "n_barcodes": qc["n_cells_before"],
            "n_assessed": qc["n_cells_after"],
            "excluded": qc["n_removed"],
            "thresholds": adata.uns.get("sct_low_quality", {}),
            "doublets": adata.uns.get("sct_doublet", {}),
        },
        "mapping": _mapping_record(adata),
        "reference": None
        if inputs.bundle is None
        else {
            "name": inputs.bundle.name,
            "version": inputs.bundle.version,
            "sha256": inputs.bundle.sha256,
            "calibration_ece": inputs.bundle.manifest["calibration"].get("ece_calibrated"),
        },
        "spec": {
            # a file is named without its folder (paths differ between runs, contents do not)
            "source": Path(inputs.spec_source).name
            if Path(inputs.spec_source).is_file()
            else inputs.spec_source,
            "sha256": spec_digest(inputs.spec),
            "example": inputs.spec.example,
            "content": inputs.spec.to_dict(),
        },
        "profile": inputs.profile["name"] if inputs.profile else None,
        "identity_method": adata.uns["sct_identity"]["method"],
        "inputs": {
            "file": inputs.input_path.name,
            "format": src["format"],
            "sha256": src["sha256"],
            "n_barcodes": int(qc["n_cells_before"]),
            "n_features": int(adata.n_vars),
        },
        "seed": seed,
        "settings": {"batch_key": batch_key, "min_gene_overlap": min_gene_overlap},
        "versions": versions(__version__),
    }
    return plain(results)


def identity_record(info: Mapping, bundle) -> dict[str, Any]:
    """How identities were called, stated first in results.json and the report: the method,
    the rules and thresholds, and per identity the panel genes used, missing and whether it was
    assessed."""
    from ..tl._identity import identity_records

    if bundle is None:
        statement = (
            "Identity comes from the product profile's marker panels alone, with no reference "
            "atlas: each cell is the identity whose panel is enriched against random genes of "
            "the same cell and beats every other panel; residual pluripotent cells come from the "
            "pluripotency detector."
        )
    else:
        statement = (
            f"Identity comes from mapping onto the reference {bundle.name} v{bundle.version} "
            "(calibrated label probabilities, out-of-reference call); marker panels give an "
            "orthogonal score; residual pluripotent cells come from the pluripotency detector."
        )
    return {
        "method": info["method"],
        "reference": None if bundle is None else bundle.name,
        "statement": statement,
        "rules": dict(info.get("rules", {})),
        "thresholds": dict(info.get("thresholds", {})),
        "pluripotency_genes_used": list(info.get("pluripotency_genes_used", [])),
        "identities": {
            name: {
                "class": rec["class"],
                "assessed": bool(rec.get("assessed", False)),
                "called_by": rec.get("called_by"),
                "reason": rec.get("reason", ""),
                "genes_found": list(rec.get("genes_found", [])),
                "genes_missing": list(rec.get("genes_missing", [])),
            }
            for name, rec in identity_records(info).items()
        },
        "not_assessed": list(info.get("not_assessed", [])),
    }


def _mapping_record(adata) -> dict[str, Any] | None:
    ref = adata.uns.get("sct_ref")
    if ref is None:
        return None
    return {
        "gene_overlap": ref["gene_overlap"],
        "n_reference_genes": ref["n_reference_genes"],
        "n_missing_genes": ref["n_missing_genes"],
        "n_unassigned": ref["n_unassigned"],
        "surgery_trained": ref["surgery_trained"],
        "surgery_epochs": ref["max_epochs"],
    }


def versions(own: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"sc_celltherapy": own, "python": platform.python_version()}
    for dist in ("scanpy", "anndata", "scvi-tools", "torch", "numpy", "scipy", "scikit-learn"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "not installed"
    return out


def hardware() -> dict[str, Any]:
    info: dict[str, Any] = {
        "machine": platform.machine(),
        "system": f"{platform.system()} {platform.release()}",
        "cpu_count": os.cpu_count(),
    }
    try:
        import torch

        info["cuda"] = torch.cuda.is_available()
        if info["cuda"]:
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        info["cuda"] = False
    return info


def _run_record(run_id, operator, started, inputs: _Inputs, timings, rerun) -> dict:
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
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
            "peak_memory_mb": round(peak_kb / 1024, 1),
            "hardware": hardware(),
            "rerun": rerun,
        }
    )


def compare_results(first: Mapping, second: Mapping) -> dict[str, Any]:
    """Whether two results agree outside the per-run key; the top-level keys that differ."""
    keys = (set(first) | set(second)) - {PER_RUN_KEY}
    differences = sorted(
        k
        for k in keys
        if json.dumps(first.get(k), sort_keys=True) != json.dumps(second.get(k), sort_keys=True)
    )
    return {"agrees": not differences, "differences": differences}


def _png(fig) -> bytes:
    import io as _io

    import matplotlib.pyplot as plt

    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def _write_outputs(tmp: Path, results: dict, adata, figures: dict[str, bytes]) -> dict[str, str]:
    """lot.h5ad and report.html, then results.json (with the time the other two took)."""
    from ._report import render_report

    start = time.perf_counter()
    adata.uns["sct_release"] = {
        "lot_id": results["lot_id"],
        "verdict": results["verdict"],
        "run_id": results[PER_RUN_KEY]["run_id"],
    }
    adata.write_h5ad(tmp / LOT_FILE)
    (tmp / REPORT_FILE).write_text(render_report(results, figures), encoding="utf-8")
    results[PER_RUN_KEY]["timings_s"]["write"] = round(time.perf_counter() - start, 3)
    (tmp / RESULTS_FILE).write_text(json.dumps(results, indent=2) + "\n")
    return {name: file_sha256(tmp / name) for name in (RESULTS_FILE, LOT_FILE, REPORT_FILE)}


def _rename_into_place(tmp: Path, out_dir: Path) -> None:
    if out_dir.exists():  # created by someone else while this run worked
        msg = f"Release directory {out_dir} appeared during the run; this run's outputs are discarded."
        raise ReleaseExistsError(msg)
    os.rename(tmp, out_dir)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
