"""What each ``sc-celltherapy`` command prints when it is done: a few lines a person reads."""

from __future__ import annotations

from ._keys import KEYS


def map_summary(adata) -> str:
    rec = adata.uns[KEYS.REF]
    lines = [
        f"Mapped onto {rec['bundle']} v{rec['version']} (sha256 {rec['sha256'][:12]}...), "
        f"gene overlap {rec['gene_overlap']:.1%}",
        f"{'label':<32} {'cells':>6} {'median prob':>11}",
    ]
    obs = adata.obs
    for label, n in obs["sct_ref_label"].value_counts().items():
        if n:
            med = obs.loc[obs["sct_ref_label"] == label, "sct_ref_prob"].median()
            lines.append(f"{label!s:<32} {n:>6} {med:>11.2f}")
    lines.append(f"{'unassigned (out of reference)':<32} {int(obs['sct_ref_unassigned'].sum()):>6}")
    return "\n".join(lines)


def release_summary(result) -> str:
    r = result.results
    lines = [f"Lot {r['lot_id']} ({r['product']}): verdict {r['verdict']}"]
    if r["spec"]["example"]:
        lines.append(
            "  (judged against an EXAMPLE spec shipped with the profile, not a regulatory limit)"
        )
    lines.append(f"  {'criterion':<32} {'fraction':>9} {'95% interval':>19} {'limit':>8}  verdict")
    for c in r["criteria"]:
        interval = f"[{c['ci_low']:.2%}, {c['ci_high']:.2%}]"
        if c.get("limit_max") is not None:
            interval += f" (at most {c['limit_max']:.2%})"
        lines.append(
            f"  {c['criterion']:<32} {c['fraction']:>9.2%} {interval:>19} {c['limit']:>8.2%}  {c['verdict']}"
        )
    lines.append(f"  {r['detection']['statement']}")
    rerun = r["run"].get("rerun")
    if rerun is not None:
        lines.append(
            "  verify-rerun: results agree"
            if rerun["agrees"]
            else f"  verify-rerun: results DIFFER in {rerun['differences']}"
        )
    lines.append(
        f"Wrote {result.out_dir}/: results.json, lot.h5ad, report.html, composition.png, audit.jsonl"
    )
    lines.append(f"  audit: last hash {result.audit_last_hash} (record it)")
    return "\n".join(lines)


def qc_summary(adata) -> str:
    record = adata.uns.get(KEYS.QC, {})
    lines = ["QC summary", f"  cells before QC   {record.get('n_cells_before', adata.n_obs):>7}"]
    for key, n in record.get("n_removed", {}).items():
        lines.append(f"  flagged {key:<30} {n:>7}")
    lines.append(f"  cells after QC    {adata.n_obs:>7}")
    return "\n".join(lines)


def cluster_summary(adata, label_key: str | None = None) -> str:
    key = KEYS.CLUSTER
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
