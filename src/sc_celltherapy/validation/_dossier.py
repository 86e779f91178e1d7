"""The validation dossier: ``validation.json`` (checked against its JSON Schema),
``validation.html`` (the plan, each parameter against its criterion, the figures) and an audit
trail, written into a new directory in one rename so a failed run leaves nothing."""

from __future__ import annotations

import functools
import json
import os
import shutil
import uuid
from html import escape
from pathlib import Path

import pandas as pd
import yaml

from .._checks import InputError, check_json_schema
from .._display import REPORT_CSS, img_tag, pct
from .._signing import load_private_key
from ..io import file_sha256
from ..release import AuditLog, check_out_dir

RESULT_SCHEMA_FILE = Path(__file__).with_name("validation.schema.json")
JSON_FILE, HTML_FILE, AUDIT_FILE = "validation.json", "validation.html", "audit.jsonl"
_FRACTIONS = {"limit", "limit_of_blank", "lod", "lod_probit", "loq", "sampling_lod"}


@functools.cache
def result_schema() -> dict:
    """The JSON Schema of ``validation.json``, read once."""
    return json.loads(RESULT_SCHEMA_FILE.read_text())


def check_dossier_dir(out_dir: str | os.PathLike) -> Path:
    """Refuse an existing dossier directory (a dangling link included) or a location that
    cannot be written, before any work: the release's own check of its output directory.

    Parameters
    ----------
    out_dir
        The dossier directory to create.

    Returns
    -------
    Its absolute path.
    """
    out = Path(out_dir).absolute()
    check_out_dir(out)
    return out


def write_dossier(
    result,
    out_dir: str | os.PathLike,
    *,
    operator: str = "unknown",
    sign_key: str | os.PathLike | None = None,
) -> Path:
    """Write the dossier of a :class:`ValidationResult` into ``out_dir`` (created; it must not
    exist).

    Parameters
    ----------
    result
        What :func:`run` returned.
    out_dir
        The dossier's directory.
    operator
        Recorded in the audit trail.
    sign_key
        The lab's Ed25519 private key: every audit record is signed, as a release's.

    Returns
    -------
    The directory written.
    """
    from ._figures import figures

    out = check_dossier_dir(out_dir)
    data = result.to_dict()
    check_json_schema(
        data,
        result_schema(),
        source=JSON_FILE,
        schema_file=RESULT_SCHEMA_FILE.name,
        error=InputError,
    )
    tmp = out.with_name(f".{out.name}.partial-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        (tmp / JSON_FILE).write_text(json.dumps(data, indent=2) + "\n")
        (tmp / HTML_FILE).write_text(render(result, figures(result)), encoding="utf-8")
        key = None if sign_key is None else load_private_key(sign_key)
        log = AuditLog(
            tmp / AUDIT_FILE, operator=operator, run_id=uuid.uuid4().hex, signing_key=key
        )
        log.append(
            "run started",
            read={"plan": result.plan.sha256, **_reference(result)},
            kind="validation",
            plan=result.plan.name,
            seeds=result.provenance["seeds"],
        )
        wrote = {name: file_sha256(tmp / name) for name in (JSON_FILE, HTML_FILE)}
        log.append("outputs written", wrote=wrote)
        log.append("run finished", verdict=result.verdict, results_sha256=wrote[JSON_FILE])
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _reference(result) -> dict:
    ref = result.provenance["reference"]
    return {} if ref is None else {f"reference:{ref['name']}": ref["sha256"]}


def _fmt(parameter: str, value) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "–"
    if parameter in _FRACTIONS:
        return pct(value)
    if isinstance(value, list):
        return " – ".join(pct(v) for v in value)
    if isinstance(value, float):
        return f"{value:.3g}"
    return escape(str(value))


def _criterion(c) -> str:
    if not isinstance(c, dict):
        return "reported"
    parts = [f">= {c['min']:g}" if "min" in c else "", f"<= {c['max']:g}" if "max" in c else ""]
    return ", ".join(p for p in parts if p)


def _parameter_table(result) -> str:
    """One row per parameter, one column per impurity: the value, coloured by its verdict
    where the plan sets a criterion."""
    params = result.parameters[result.parameters["parameter"] != "lod_probit_note"]
    impurities = list(dict.fromkeys(params["impurity"]))
    head = "<tr><th class='name'>parameter</th><th>criterion</th>" + "".join(
        f"<th>{escape(i)}</th>" for i in impurities
    )
    rows = []
    for name, group in params.groupby("parameter", sort=False):
        by_imp = {r["impurity"]: r for r in group.to_dict(orient="records")}
        first = next(iter(by_imp.values()))
        at = first.get("at_level")
        at = "" if at is None or pd.isna(at) else " (at the level nearest the limit)"
        cells = []
        for imp in impurities:
            r = by_imp.get(imp)
            if r is None:
                cells.append("<td></td>")
                continue
            verdict = r.get("verdict")
            cls = verdict if isinstance(verdict, str) else ""
            mark = f" {verdict}" if isinstance(verdict, str) else ""
            cells.append(f"<td class='{cls}'>{_fmt(name, r['value'])}{mark}</td>")
        rows.append(
            f"<tr><td class='name'>{escape(name)}{at}</td>"
            f"<td>{_criterion(first.get('criterion'))}</td>{''.join(cells)}</tr>"
        )
    return f"<div class='wide'><table>{head}</tr>{''.join(rows)}</table></div>"


def _notes(result) -> str:
    p = result.parameters
    notes = p[(p["parameter"] == "lod_probit_note") & p["value"].notna()]
    items = "".join(
        f"<li>{escape(r.impurity)}: probit LOD: {escape(str(r.value))}</li>"
        for r in notes.itertuples()
    )
    return f"<ul>{items}</ul>" if items else ""


def _frame(df: pd.DataFrame, pct_columns=(), *, index=False) -> str:
    df = df.copy()
    for col in df.columns:
        if col in pct_columns:
            df[col] = df[col].map(pct)
    html = df.to_html(index=index, float_format=lambda v: f"{v:.3g}", na_rep="–", border=0)
    return f"<div class='wide'>{html}</div>"  # wide tables scroll instead of overflowing


def _precision_factors(result) -> str:
    """What varied between the estimates: seeds, base batches, devices, and why ensemble
    members are not a factor of their own."""
    f = result.provenance["precision_factors"]
    dev = f["devices"]
    items = [
        f"seeds: {', '.join(map(str, f['seeds']))} (mapping training, doublet simulation)",
        "base batches: " + (", ".join(map(str, f["base_batches"])) or "none named by the plan"),
        "CPU against GPU: "
        + (
            "compared, see the table below"
            if dev["compared"]
            else escape(dev["note"] or "not compared")
        ),
    ]
    if dev["ensemble_members"]:
        items.append(f"ensemble members: {escape(dev['ensemble_members'])}")
    text = "<p>Factors varied:</p><ul>" + "".join(f"<li>{i}</li>" for i in items) + "</ul>"
    if len(result.devices):
        pcts = [c for c in result.devices.columns if c.startswith("mean_estimate")]
        pcts += ["true_fraction", "max_difference"]
        text += _frame(result.devices, pct_columns=pcts)
    return text


def render(result, figs: dict[str, bytes]) -> str:
    """The HTML text of the dossier."""
    c = result.plan.content
    prov = result.provenance
    example = (
        "<p class='example'><b>Example plan.</b> Its criteria are illustrations for the "
        "package's tests and docs, never a laboratory's; a validation plan is always the lab's "
        "own.</p>"
        if c.get("example")
        else ""
    )
    warnings = "".join(f"<li>{escape(w)}</li>" for w in result.plan.warnings)
    ref = prov["reference"]
    ref_text = "none (marker panels)" if ref is None else f"{ref['name']} v{ref['version']}"
    rob = result.robustness.drop(columns=["shift", "numbers", "verdicts"], errors="ignore")
    chain = result.chain_check
    sections = [
        f"<h1>Validation dossier: {escape(result.plan.name)}</h1>",
        f"<p><span class='verdict {result.verdict}'>{result.verdict}</span> "
        f"product <b>{escape(c['product'])}</b>, reference <b>{escape(ref_text)}</b>, "
        f"{len(result.mixtures)} mixture estimates of {c['n_cells']:,} cells</p>",
        example,
        f"<ul>{warnings}</ul>" if warnings else "",
        "<h2>Parameters and acceptance criteria</h2>",
        "<p>Estimates are cells called as the impurity over cells assessed (after QC), the "
        "rule of the release's purity table. A level is <i>detected</i> in a mixture when its "
        "estimate exceeds the limit of blank (95th percentile of the base-alone mixtures). "
        "Repeatability: replicate draws within a seed; intermediate precision adds the seed "
        "(mapping training, doublet simulation).</p>",
        _parameter_table(result),
        "<h2>Accuracy and linearity</h2>",
        img_tag(figs["recovery"], "recovery per level with the criterion"),
        img_tag(figs["linearity"], "estimate against truth with the fit, and residuals"),
        "<h2>Precision</h2>",
        img_tag(figs["precision"], "CV by level"),
        _precision_factors(result),
        _frame(
            result.levels[["impurity", *result.levels.columns.drop("impurity")]],
            pct_columns=("true_fraction", "mean_estimate"),
        ),
        "<h2>Detection</h2>",
        img_tag(figs["detection"], "share of mixtures detected by level, with the LODs"),
        _notes(result),
        "<h2>Specificity</h2>",
        "<p>Each material's assessed cells in the pooled run: the share called as each "
        "impurity of the plan and as the target (the base row is the blank).</p>",
        _frame(result.specificity, index=True),
        "<h2>Pooled calls against the whole chain</h2>",
        "<p>Mixtures reuse each cell's call from the pooled run. One mixture per impurity was "
        "also run through the whole chain on its own; the pooled estimate should lie inside "
        "the chain's 95% interval.</p>",
        _frame(
            chain,
            pct_columns=("true_fraction", "chain_estimate", "ci_low", "ci_high", "pooled_estimate"),
        ),
        "<h2>Robustness</h2>",
        img_tag(figs["robustness"], "largest shift per factor level")
        if "robustness" in figs
        else "",
        _frame(rob),
        "<h2>Plan</h2>",
        f"<pre>{escape(yaml.safe_dump(c, sort_keys=False))}</pre>",
        "<h2>Provenance</h2>",
        f"<pre>{escape(json.dumps({**prov, 'plan_sha256': result.plan.sha256}, indent=2))}</pre>",
    ]
    body = "\n".join(s for s in sections if s)
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>Validation {escape(result.plan.name)}</title>"
        f"<style>{REPORT_CSS}</style></head><body>\n{body}\n</body></html>\n"
    )
