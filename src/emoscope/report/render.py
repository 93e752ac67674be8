"""HTML fragments for the report. Every piece of text goes through ``html.escape``."""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from emoscope.audit import Control, Finding

__all__ = ["esc", "badge", "data_table", "csv_table", "figure", "findings_table", "slug"]

MAX_ROWS = 50
MAX_COLS = 24


def esc(value: Any) -> str:
    """Escape any value for HTML text or attributes.

    >>> esc('<b a="1">')
    '&lt;b a=&quot;1&quot;&gt;'
    """
    return html.escape("" if value is None else str(value), quote=True)


def slug(text: str) -> str:
    """A safe id for anchors.

    >>> slug("needs controls")
    'needs-controls'
    """
    return "".join(ch if ch.isalnum() else "-" for ch in text.lower()).strip("-") or "x"


def badge(text: str, cls: str) -> str:
    """A coloured pill: ``cls`` is ``v-<verdict>`` or ``s-<status>``."""
    return f'<span class="badge {esc(cls)}">{esc(text)}</span>'


def _cell(v: Any) -> tuple[str, bool]:
    if isinstance(v, bool) or v is None:
        return ("" if v is None else str(v)), False
    if isinstance(v, int):
        return str(v), True
    if isinstance(v, float):
        return ("" if math.isnan(v) else f"{v:.4g}"), True
    try:  # numpy scalars
        import numpy as np

        if isinstance(v, np.integer):
            return str(int(v)), True
        if isinstance(v, np.floating):
            return _cell(float(v))
    except ImportError:  # pragma: no cover
        pass
    return str(v), False


def data_table(columns: Sequence[str], rows: Iterable[Sequence[Any]], *, total_rows: int | None = None,
               total_cols: int | None = None, cls: str = "data") -> str:
    """An HTML table of rows (numbers right-aligned), with a caption when it was capped."""
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    body = []
    n = 0
    for row in rows:
        n += 1
        cells = []
        for v in row:
            text, num = _cell(v)
            cells.append(f'<td class="num">{esc(text)}</td>' if num else f"<td>{esc(text)}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    cap = []
    if total_rows is not None and total_rows > n:
        cap.append(f"showing {n} of {total_rows} rows")
    if total_cols is not None and total_cols > len(columns):
        cap.append(f"{len(columns)} of {total_cols} columns")
    caption = f'<p class="caption">{esc("; ".join(cap))} — the full table is in the run directory</p>' if cap else ""
    return (f'<div class="scroll capped"><table class="{esc(cls)}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>{caption}")


def csv_table(path: Path, max_rows: int = MAX_ROWS, max_cols: int = MAX_COLS) -> str:
    """Render ``tables/NAME.csv`` (capped to ``max_rows`` x ``max_cols``)."""
    import pandas as pd

    try:
        df = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return '<p class="muted">(empty table)</p>'
    except (OSError, ValueError, pd.errors.ParserError) as e:
        return f'<p class="error">could not read {esc(path.name)}: {esc(e)}</p>'
    shown = df.iloc[:max_rows, :max_cols]
    rows = (list(r) for r in shown.itertuples(index=False, name=None))
    return data_table([str(c) for c in shown.columns], rows, total_rows=len(df), total_cols=df.shape[1])


def figure(name: str, folder: Path) -> str:
    """A figure inlined as a base64 PNG (or SVG when there is no PNG), with its name as caption."""
    png, svg = folder / f"{name}.png", folder / f"{name}.svg"
    if png.is_file():
        src = "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")
    elif svg.is_file():
        src = "data:image/svg+xml;base64," + base64.b64encode(svg.read_bytes()).decode("ascii")
    else:
        return f'<p class="error">figure {esc(name)} is missing from {esc(folder.name)}/</p>'
    return (f'<figure class="fig" id="fig-{esc(slug(name))}"><img src="{src}" alt="{esc(name)}">'
            f"<figcaption>{esc(name)} (figures/{esc(name)}.png, .svg)</figcaption></figure>")


def _control(c: Control) -> str:
    mark, cls = {True: ("pass", "c-pass"), False: ("FAIL", "c-fail"), None: ("ran, not judged", "c-ran")}[c.passed]
    value, _ = _cell(c.value)
    thr, _ = _cell(c.threshold)
    text = esc(c.name) + (f" = {esc(value)}" if value else "") + (f" (threshold {esc(thr)})" if thr else "")
    note = f' <span class="muted">{esc(c.note)}</span>' if c.note else ""
    return f'<li><span class="{cls}">{esc(mark)}</span> {text}{note}</li>'


def findings_table(findings: Sequence[Finding]) -> str:
    """The findings table: observation, claim, controls with pass/fail, verdict, reasons."""
    if not findings:
        return '<p class="muted" id="findings-table">No findings were recorded.</p>'
    rows = []
    for f in findings:
        v = slug(f.verdict or "")
        claim = esc(f.claim) if f.claim else '<span class="muted">— observation only (never blocks)</span>'
        controls = ("<ul class=controls>" + "".join(_control(c) for c in f.controls) + "</ul>") if f.controls \
            else '<span class="muted">none</span>'
        reasons = ("<ul class=reasons>" + "".join(f"<li>{esc(r)}</li>" for r in f.reasons) + "</ul>") if f.reasons \
            else '<span class="muted">all required controls passed</span>'
        cls = f"row-{v}" + ("" if f.is_claim else " observation")
        rows.append(
            f'<tr class="{cls}" id="finding-{esc(slug(f.id))}">'
            f"<td>{badge(f.verdict or '', 'v-' + v)}</td>"
            f"<td><code>{esc(f.id)}</code><br><span class=muted>{esc(f.kind)} · {esc(f.provenance.stage or '-')}</span></td>"
            f"<td>{esc(f.observation.describe())}</td><td>{claim}</td><td>{controls}</td><td>{reasons}</td></tr>"
        )
    head = "".join(f"<th>{h}</th>" for h in ("Verdict", "Finding", "Observation", "Claim", "Controls", "Reasons"))
    return (f'<div class="scroll"><table class="findings" id="findings-table"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table></div>")
