"""The summary of a run over many lots: which were released, with which verdict, which failed
and why (read back from each lot's outputs and logs)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

RELEASED, FAILED, NOT_RUN = "released", "failed", "not run"


def summarize(outdir: str | os.PathLike, lots: Sequence[str]) -> pd.DataFrame:
    """One row per lot: status, release verdict, comparison verdict, and for a failed lot the
    error its log ends with.

    Parameters
    ----------
    outdir
        The workflow's output folder (``results/``), with ``{lot}/release`` and ``{lot}/logs``.
    lots
        Lot ids in sample-sheet order.
    """
    rows = []
    for lot in lots:
        folder = Path(outdir) / lot
        results = folder / "release" / "results.json"
        compare = folder / "compare.json"
        row = {"lot": lot, "status": NOT_RUN, "verdict": "", "comparison": "", "reason": ""}
        if results.is_file():
            row["status"], row["verdict"] = RELEASED, json.loads(results.read_text())["verdict"]
        if compare.is_file():
            row["comparison"] = json.loads(compare.read_text())["verdict"]
        reason = _error_in_logs(folder / "logs")
        if reason:
            row["status"], row["reason"] = FAILED, reason
        rows.append(row)
    return pd.DataFrame(rows)


def _error_in_logs(logs: Path) -> str:
    """The first error line of the lot's logs (the commands print ``error: ...`` on exit 2 and
    ``internal error: ...`` on exit 1)."""
    if not logs.is_dir():
        return ""
    for log in sorted(logs.glob("*.log")):
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith(("error:", "internal error:")):
                return f"{log.stem}: {line}"
    return ""
