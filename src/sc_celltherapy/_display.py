"""How result objects read: a short text view with the verdict first, and an HTML table for
notebooks (``_repr_html_``), verdicts coloured as in the report."""

from __future__ import annotations

import base64
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


# the stylesheet of every HTML document the package writes (release report, validation dossier)
REPORT_CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 2em auto;
       max-width: 1100px; color: #212121; line-height: 1.4; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { font-size: 1.25em; margin-top: 1.8em;
     border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th { background: #f3f3f3; } td.name, th.name { text-align: left; }
.PASS { background: #e8f5e9; color: #1b5e20; font-weight: 600; }
.FAIL { background: #ffebee; color: #b71c1c; font-weight: 600; }
.INCONCLUSIVE { background: #fff8e1; color: #8d6e00; font-weight: 600; }
.verdict { font-size: 1.3em; padding: 0.3em 0.8em; display: inline-block; border-radius: 4px; }
.example { background: #fff3e0; border: 1px solid #ffb74d; padding: 0.5em 0.8em; }
img { max-width: 100%; border: 1px solid #eee; }
.wide { overflow-x: auto; max-width: 100%; } pre { overflow-x: auto; }
code, .mono { font-family: ui-monospace, monospace; font-size: 0.88em; word-break: break-all; }
"""


def img_tag(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{data}">'


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
