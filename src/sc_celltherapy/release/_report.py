"""The release report: one self-contained HTML file (figures inlined, no script, no network).

Order, as a reviewer reads it: the verdict table first, then QC with its thresholds, the lot on
the UMAP by identity class, the composition against the spec's limits, the limit-of-detection
statement, warnings and notes, and the provenance of every input.
"""

from __future__ import annotations

import json
from html import escape
from typing import Any

from .._display import REPORT_CSS, img_tag


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.2f}%"


def _kv_table(rows: list[tuple[str, Any]]) -> str:
    body = "".join(
        f'<tr><th class="name">{escape(str(k))}</th><td class="name mono">{escape(str(v))}</td></tr>'
        for k, v in rows
    )
    return f"<table>{body}</table>"


def verdict_table(results: dict) -> str:
    """The criteria with their fractions, intervals, limits and verdicts (id ``verdict-table``)."""
    head = (
        "<tr><th class='name'>criterion</th><th>cells</th><th>fraction</th><th>95% interval</th>"
        "<th>spec limit</th><th>verdict</th><th>cells needed (if inconclusive)</th></tr>"
    )
    rows = []
    for c in results["criteria"]:
        is_min = c.get("kind", "min" if c["criterion"] == "target" else "max") == "min"
        limit = ("≥ " if is_min else "≤ ") + _pct(c["limit"])
        if c.get("limit_max") is not None:  # a target range
            limit += " and ≤ " + _pct(c["limit_max"])
        # decided criteria need no more cells; an undecided one says how many would decide it
        needed = (
            f"{c['cells_needed']:,}"
            if c["verdict"] == "INCONCLUSIVE" and c["cells_needed"] is not None
            else "–"
        )
        denom = " (of all barcodes)" if c.get("denominator") == "barcodes" else ""
        if c["criterion"].startswith("marker:"):
            rule = " and " if c.get("rule") == "all" else " or "
            denom = f" ({rule.join(c.get('genes', []))} detected; transcripts, not flow)"
        rows.append(
            f"<tr><td class='name'>{escape(c['criterion'])}{denom}</td><td>{c['n']:,}</td>"
            f"<td>{_pct(c['fraction'])}</td><td>{_pct(c['ci_low'])} – {_pct(c['ci_high'])}</td>"
            f"<td>{limit}</td><td class='{c['verdict']}'>{c['verdict']}</td><td>{needed}</td></tr>"
        )
    return f"<table id='verdict-table'>{head}{''.join(rows)}</table>"


def _unlimited_table(results: dict) -> str:
    """Impurity classes the spec does not limit: reported, not judged."""
    rows = []
    for name, row in results["purity"]["impurities"].items():
        if row["limit"] is None:
            rows.append(
                f"<tr><td class='name'>{escape(name)}</td><td>{row['n']:,}</td>"
                f"<td>{_pct(row['fraction'])}</td>"
                f"<td>{_pct(row['ci_low'])} – {_pct(row['ci_high'])}</td></tr>"
            )
    if not rows:
        return ""
    head = (
        "<tr><th class='name'>class</th><th>cells</th><th>fraction</th><th>95% interval</th></tr>"
    )
    return f"<p>Reported without a spec limit:</p><table>{head}{''.join(rows)}</table>"


def identity_section(results: dict) -> str:
    """How identities were called (id ``identity-method``), and per identity the panel genes
    found, missing and whether it was assessed."""
    ident = results.get("identity")
    if not ident:
        return ""
    rows = []
    for name, rec in ident["identities"].items():
        found = ", ".join(rec["genes_found"]) or "–"
        missing = ", ".join(rec["genes_missing"]) or "–"
        status = "assessed" if rec["assessed"] else (rec["reason"] or "not assessed")
        rows.append(
            f"<tr><td class='name'>{escape(name)}</td><td class='name'>{escape(rec['class'])}</td>"
            f"<td class='name'>{escape(status)}</td><td class='name mono'>{escape(found)}</td>"
            f"<td class='name mono'>{escape(missing)}</td></tr>"
        )
    head = (
        "<tr><th class='name'>identity</th><th class='name'>class</th><th class='name'>status"
        "</th><th class='name'>panel genes used</th><th class='name'>panel genes missing</th></tr>"
    )
    box = "example" if ident.get("reference") is None else ""
    return (
        f"<p id='identity-method' class='{box}'><b>Identity method: "
        f"{escape(ident['method'])}.</b> {escape(ident['statement'])}</p>"
        f"{_gate_text(ident.get('rules', {}).get('lineage_gate'))}"
        f"<table id='identity-panels'>{head}{''.join(rows)}</table>"
    )


def _gate_text(gate: dict | None) -> str:
    """The profile's lineage gate (id ``lineage-gate``): its rule and what it changed."""
    if not gate:
        return ""
    moved = ", ".join(f"{n} from {escape(c)}" for c, n in gate.get("rescued_from", {}).items())
    missing = (
        f" Gate genes missing from the lot: {escape(', '.join(gate['genes_missing']))}."
        if gate.get("genes_missing")
        else ""
    )
    return (
        f"<p id='lineage-gate'><b>Lineage gate.</b> {escape(gate['rule'])}. "
        f"{gate['n_passing']} cells pass the gate; {gate['n_rescued']} were classed target by "
        f"it{' (' + moved + ')' if moved else ''}.{missing}</p>"
    )


def _chain_of_identity(donor: dict | None) -> str:
    """The donor's sex from the cells (id ``chain-of-identity``): the call, its evidence, the
    verdict against the spec when it states one, and what the check cannot see."""
    if not donor:
        return ""
    n = donor["n"]
    evidence = (
        f"{n['female']:,} cells female (XIST, no chrY gene), {n['male']:,} male (chrY gene, no "
        f"XIST), {n['both']:,} both, {n['none']:,} neither"
    )
    if "male_fraction" in donor:
        evidence += (
            f"; male share {_pct(donor['male_fraction'])} "
            f"[{_pct(donor['ci_low'])} – {_pct(donor['ci_high'])}]"
        )
    verdict = donor.get("verdict")
    judged = (
        f" Verdict: <span class='verdict {verdict}'>{verdict}</span>, "
        f"{escape(str(donor.get('reason', '')))}."
        if verdict
        else " Not judged: the spec states neither expected_sex nor single_donor."
    )
    reason = f" ({escape(donor['reason'])})" if donor["call"] == "not assessable" else ""
    return (
        f"<h2>Chain of identity</h2><p id='chain-of-identity'>Donor sex from the cells: "
        f"<b>{escape(donor['call'])}</b>{reason}; {evidence}.{judged}</p>"
        "<p>What this cannot see: a lot swapped with a donor of the same sex, or a second donor "
        f"below about {_pct(donor['mix_limit'])} of the informative cells; genotype-based "
        "demultiplexing of the reads does.</p>"
    )


def _validation_section(cited: dict | None) -> str:
    """The validation dossier the release cites, and whether it covers this lot."""
    if cited is None:  # results.json of a version before dossiers were cited
        return ""
    if cited["dossier"] is None:
        return "<h2>Method validation</h2><p class='example'>No validation dossier was cited.</p>"
    rows = [
        ("dossier", cited["dossier"]),
        ("validation.json sha256", cited["sha256"]),
        ("plan", f"{cited['plan']} (sha256 {cited['plan_sha256']})"),
        ("dossier verdict", cited["verdict"]),
        ("validated range", json.dumps(cited["validated_range"])),
        ("covers this lot", "yes" if cited["covers"] else "no: " + "; ".join(cited["outside"])),
    ]
    return "<h2>Method validation</h2>" + _kv_table(rows)


def render_report(results: dict, figures: dict[str, bytes]) -> str:
    """The HTML text of the report for ``results`` (results.json) and PNG ``figures``."""
    run = results.get("run", {})
    purity = results["purity"]
    spec = results["spec"]
    verdict = results["verdict"]
    example = (
        "<p class='example'><b>Example specification.</b> The limits below come from the "
        "example spec shipped with the product profile; they are not a regulatory limit. A "
        "release specification is always the user's.</p>"
        if spec["example"]
        else ""
    )
    transgene = purity.get("transgene")
    transgene_html = ""
    if transgene:
        transgene_html = (
            f"<p>Transgene ({escape(', '.join(transgene.get('features', [])))}): "
            f"{transgene.get('n', 0):,} cells, {_pct(transgene.get('fraction'))} "
            f"[{_pct(transgene.get('ci_low'))} – {_pct(transgene.get('ci_high'))}], a "
            f"<b>lower bound</b>: {escape(str(transgene.get('reason', '')))}</p>"
        )
    chain_html = _chain_of_identity(purity.get("chain_of_identity"))
    qc = results["qc"]
    qc_rows = [("barcodes called cells", f"{qc['n_barcodes']:,}")]
    qc_rows += [(f"excluded: {k}", f"{v:,}") for k, v in qc["excluded"].items()]
    qc_rows += [("cells assessed", f"{qc['n_assessed']:,}")]
    notes = results.get("warnings", []) + purity.get("notes", [])
    notes_html = "".join(f"<li>{escape(n)}</li>" for n in notes) or "<li>none</li>"
    mapping = results["mapping"]
    ref = results["reference"]
    inputs = results["inputs"]
    if ref is None:
        reference_rows = [("reference", "none: identity from the profile's marker panels")]
    else:
        reference_rows = [
            ("reference", f"{ref['name']} v{ref['version']}"),
            ("reference sha256", ref["sha256"]),
            *_reliability_rows(ref["calibration"]),
            ("lot composition vs the reference's donors", _composition_text(mapping)),
            ("gene overlap with the reference", _pct(mapping["gene_overlap"])),
            ("cells out of the reference (unassigned)", mapping["n_unassigned"]),
        ]
    reliability_html = "" if ref is None else _reliability_table(ref["calibration"])
    if "reliability" in figures:
        reliability_html += img_tag(
            figures["reliability"], "reliability diagram and label-set coverage per held-out donor"
        )
    provenance = [
        ("lot id", results["lot_id"]),
        ("product", results["product"]),
        ("input file", inputs["file"]),
        ("input sha256", inputs["sha256"]),
        *reference_rows,
        ("spec", spec["source"]),
        ("spec sha256", spec["sha256"]),
        ("identity method", results.get("identity_method", "")),
        ("seed", results["seed"]),
        *[(f"version: {k}", v) for k, v in results["versions"].items()],
        ("run id", run.get("run_id", "")),
        ("operator", run.get("operator", "")),
        ("started (UTC)", run.get("started_utc", "")),
        ("finished (UTC)", run.get("finished_utc", "")),
        ("hardware", json.dumps(run.get("hardware", {}))),
        ("step timings (s)", json.dumps(run.get("timings_s", {}))),
    ]
    sections = [
        f"<h1>Lot release report: {escape(results['lot_id'])}</h1>",
        f"<p>Product <b>{escape(results['product'])}</b>. Overall verdict: "
        f"<span id='overall-verdict' class='verdict {verdict}'>{verdict}</span></p>",
        example,
        identity_section(results),
        "<h2>Verdicts</h2>",
        verdict_table(results),
        "<p>PASS: the whole 95% interval meets the limit; FAIL: the whole interval violates it; "
        "INCONCLUSIVE: the interval straddles the limit (more cells needed, as shown).</p>",
        _unlimited_table(results),
        transgene_html,
        chain_html,
        reliability_html,
        "<h2>Quality control</h2>",
        _kv_table(qc_rows),
        img_tag(figures["qc"], "QC metric distributions with thresholds")
        if "qc" in figures
        else "",
        "<h2>Identity</h2>",
        img_tag(figures["identity"], "identity score and class on the UMAP")
        if "identity" in figures
        else "",
        "<h2>Composition against the spec</h2>",
        img_tag(figures["composition"], "fractions with 95% intervals and spec limits")
        if "composition" in figures
        else "",
        "<h2>Limit of detection</h2>",
        f"<p id='lod-statement'>{escape(results['detection']['statement'])}</p>",
        _validation_section(results.get("validation")),
        "<h2>Warnings and notes</h2>",
        f"<ul>{notes_html}</ul>",
        "<h2>Provenance</h2>",
        _kv_table(provenance),
    ]
    body = "\n".join(s for s in sections if s)
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        # no external resource of any kind may load, whatever the HTML contains
        "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; "
        "img-src data:; style-src 'unsafe-inline'\">"
        f"<title>Release {escape(results['lot_id'])}: {verdict}</title>"
        f"<style>{REPORT_CSS}</style></head><body>\n{body}\n</body></html>\n"
    )


def _reliability_rows(cal: dict) -> list[tuple[str, str]]:
    where = (
        "per donor held out of model and calibration"
        if cal["across_donors"]
        else ("within donor only (the reference has one batch)")
    )
    sets = cal["label_sets"]
    oor = cal["out_of_reference"]
    markers = cal.get("marker_evidence", {})
    weights = markers.get("weights") or {}
    slope = weights.get("distance_slope", 0.0)  # the distance-aware stacking's only
    read = (
        f" (model log-probabilities x {weights['model_weight']:.2f}"
        + (f" / latent outlier ratio ^ {slope:.2f}" if slope else "")
        + f" + detection of {', '.join(markers['genes'])} x {weights['marker_weight']:.2f})"
        if weights
        else ""
    )
    worst = cal["per_donor"].get(cal["worst_donor"], {})
    chance = (
        f"; perfect calibration reaches up to {worst['ece_chance_95']:.3f} by chance on its "
        f"{worst['n_cells']:,} cells"
        if "ece_chance_95" in worst
        else ""
    )
    return [
        (
            f"reference calibration error ({where})",
            f"worst donor {cal['ece_worst_donor']:.3f} ({cal['worst_donor']}{chance}), "
            f"mean {cal['ece_mean_donor']:.3f}; {cal['method']}{read}",
        ),
        (
            f"label sets ({sets['method']}, alpha {sets['alpha']})",
            f"worst-donor coverage {sets['coverage_worst_donor']:.3f}, "
            f"mean set size {sets['mean_set_size']:.2f}",
        ),
        (
            "out-of-reference call",
            f"threshold {oor['threshold']:.3f}, false-positive bound {oor['fpr_bound']:.3f} "
            f"({oor['n_held_out_cells']:,} held-out reference cells)",
        ),
    ]


def _reliability_table(cal: dict) -> str:
    """The bundle's reliability per donor it held out, as measured when it was built."""

    def chance(r: dict) -> str:  # bundles built before the chance level have none
        return f"{r['ece_chance_95']:.3f}" if "ece_chance_95" in r else "–"

    rows = "".join(
        f"<tr><td>{escape(str(d))}</td><td>{r['n_cells']:,}</td><td>{r['accuracy']:.3f}</td>"
        f"<td>{r['ece']:.3f}</td><td>{chance(r)}</td><td>{r['coverage']:.3f}</td>"
        f"<td>{r['mean_set_size']:.2f}</td></tr>"
        for d, r in cal["per_donor"].items()
    )
    note = f"<p>{escape(cal['note'])}</p>" if "note" in cal else ""
    return (
        "<h2>Reference reliability per held-out donor</h2>"
        "<table><tr><th>donor</th><th>cells</th><th>accuracy</th><th>ECE</th>"
        "<th>ECE by chance (95%)</th><th>label-set coverage</th><th>mean set size</th></tr>"
        f"{rows}</table>"
        "<p>ECE by chance: the calibration error that perfectly calibrated probabilities reach "
        "on the donor's cells in 95% of label draws; an ECE at or under it is sampling noise, "
        f"not miscalibration.</p>{note}"
    )


def _composition_text(mapping: dict) -> str:
    comp = mapping.get("composition") or {}
    if not comp.get("checked"):
        return "not checked (the reference has one batch)"
    text = (
        f"total variation {comp['distance']:.2f} from the nearest donor ({comp['nearest_donor']}); "
        f"the reference's donors lie up to {comp['reference_max_nearest_distance']:.2f} apart"
    )
    if comp["far"]:
        text += (
            ". FLAG: the lot's composition is unlike every donor the reference holds; its "
            "calibration and label sets were never measured on such a mixture"
        )
    return text
