"""How result objects read: a short text view with the verdict first, and an HTML table for
notebooks (``_repr_html_``), verdicts coloured as in the report."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

import pandas as pd

VERDICT_COLOURS = {
    "PASS": "#2e7d32",
    "FAIL": "#c62828",
    "INCONCLUSIVE": "#ef6c00",
    "equivalent": "#2e7d32",
    "not equivalent": "#c62828",
    "inconclusive": "#ef6c00",
    None: "#607d8b",
}


def pct(value) -> str:
    return "–" if value is None or pd.isna(value) else f"{100 * float(value):.2f}%"


def interval(low, high) -> str:
    return "–" if low is None or pd.isna(low) else f"[{pct(low)}, {pct(high)}]"


def text_table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    """Rows of strings as aligned plain text (first column left, the rest right)."""
    table = [list(header), *[list(r) for r in rows]]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in table
    ]
    return "\n".join(lines)


def html_table(
    title: str, rows: Sequence[Sequence[str]], header: Sequence[str], verdict: str | None
) -> str:
    """A small HTML table; a column named ``verdict`` is coloured by its value."""
    col = list(header).index("verdict") if "verdict" in header else None
    head = "".join(f"<th style='text-align:left'>{escape(h)}</th>" for h in header)
    body = []
    for r in rows:
        cells = []
        for i, c in enumerate(r):
            style = (
                f" style='color:{VERDICT_COLOURS.get(c, '#000')};font-weight:bold'"
                if i == col
                else ""
            )
            cells.append(f"<td{style}>{escape(c)}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    badge = ""
    if verdict is not None:  # objects without a verdict (a bundle, a spike-in) show none
        colour = VERDICT_COLOURS.get(verdict, "#000")
        badge = f": <span style='color:{colour};font-weight:bold'>{escape(str(verdict))}</span>"
    return f"<div><b>{escape(title)}</b>{badge}<table><tr>{head}</tr>{''.join(body)}</table></div>"
