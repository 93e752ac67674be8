"""A small inline SVG line chart, for stages whose tables the report draws itself (no plotting
library, no network: the SVG is a data URI, so the page still opens offline)."""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping, Sequence

__all__ = ["line_chart", "interval_chart"]

_COLOURS = ("#2457a6", "#a4262c", "#1f7a3d", "#8a5a00", "#6b3fa0", "#00707a", "#5b6475")
W, H, L, R, T, B = 520, 260, 56, 130, 14, 40  # size and margins (left, right for the legend, top, bottom)


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    step = 10 ** math.floor(math.log10((hi - lo) / n))
    for m in (1, 2, 2.5, 5, 10):
        if (hi - lo) / (step * m) <= n:
            step *= m
            break
    start = math.ceil(lo / step) * step
    return [start + i * step for i in range(int((hi - start) / step + 1e-9) + 1)]


def line_chart(series: Mapping[str, Sequence[tuple[float, float]]], *, x_label: str, y_label: str,
               band: Sequence[tuple[float, float, float]] | None = None, band_label: str = "") -> str:
    """One line per series over shared axes (and an optional shaded band: x, lo, hi), as an SVG
    data URI.

    >>> line_chart({"a": [(0, 0.0), (1, 0.5)]}, x_label="x", y_label="y").startswith("data:image/svg+xml;base64,")
    True
    """
    pts = [(x, y) for s in series.values() for x, y in s if math.isfinite(x) and math.isfinite(y)]
    pts += [(x, v) for x, lo, hi in (band or []) for v in (lo, hi) if math.isfinite(v)]
    if not pts:
        pts = [(0.0, 0.0), (1.0, 1.0)]
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y0, y1 = min(0.0, min(p[1] for p in pts)), max(p[1] for p in pts)
    if x1 == x0:
        x0, x1 = x0 - 0.5, x1 + 0.5
    if y1 == y0:
        y1 = y0 + 1.0

    def px(x: float) -> float:
        return L + (x - x0) / (x1 - x0) * (W - L - R)

    def py(y: float) -> float:
        return H - B - (y - y0) / (y1 - y0) * (H - T - B)

    e = html.escape
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" '
           'font-family="sans-serif" font-size="11">', f'<rect width="{W}" height="{H}" fill="#fff"/>']
    for t in _ticks(y0, y1):
        out.append(f'<line x1="{L}" x2="{W - R}" y1="{py(t):.1f}" y2="{py(t):.1f}" stroke="#e3e6ec"/>'
                   f'<text x="{L - 6}" y="{py(t) + 4:.1f}" text-anchor="end">{t:.3g}</text>')
    for t in sorted({x for x, _ in pts}):
        out.append(f'<text x="{px(t):.1f}" y="{H - B + 16}" text-anchor="middle">{t:g}</text>')
    out.append(f'<text x="{(L + W - R) / 2:.0f}" y="{H - 6}" text-anchor="middle">{e(x_label)}</text>'
               f'<text transform="translate(14 {(T + H - B) / 2:.0f}) rotate(-90)" text-anchor="middle">{e(y_label)}</text>')
    legend = []
    if band:
        b = sorted(band)
        poly = [f"{px(x):.1f},{py(hi):.1f}" for x, _, hi in b] + [f"{px(x):.1f},{py(lo):.1f}" for x, lo, _ in reversed(b)]
        out.append(f'<polygon points="{" ".join(poly)}" fill="#5b6475" fill-opacity="0.18"/>')
        legend.append(("#c8ccd4", band_label or "band", True))
    for i, (name, s) in enumerate(series.items()):
        c = _COLOURS[i % len(_COLOURS)]
        good = sorted((x, y) for x, y in s if math.isfinite(x) and math.isfinite(y))
        if good:
            out.append(f'<polyline fill="none" stroke="{c}" stroke-width="2" points="'
                       + " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in good) + '"/>')
            out += [f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{c}"/>' for x, y in good]
        legend.append((c, name, False))
    for i, (c, name, box) in enumerate(legend):
        y = T + 8 + 16 * i
        mark = (f'<rect x="{W - R + 10}" y="{y - 6}" width="14" height="10" fill="{c}"/>' if box else
                f'<line x1="{W - R + 10}" x2="{W - R + 24}" y1="{y}" y2="{y}" stroke="{c}" stroke-width="2"/>')
        out.append(mark + f'<text x="{W - R + 30}" y="{y + 4}">{e(name)}</text>')
    out.append("</svg>")
    return "data:image/svg+xml;base64," + base64.b64encode("".join(out).encode("utf-8")).decode("ascii")


def interval_chart(rows: Sequence[tuple[str, float, float, float]], *, x_label: str, zero: float = 0.0) -> str:
    """One row per (label, value, lo, hi): a dot with its interval, beside a line at ``zero``, as
    an SVG data URI (a forest plot).

    >>> interval_chart([("a", 0.1, -0.1, 0.3)], x_label="d").startswith("data:image/svg+xml;base64,")
    True
    """
    good = [(lab, v, lo, hi) for lab, v, lo, hi in rows if all(math.isfinite(x) for x in (v, lo, hi))]
    left, right, top, row_h = 230, 24, 14, 24
    height = top + row_h * max(1, len(good)) + 44
    xs = [x for _, v, lo, hi in good for x in (v, lo, hi)] + [zero]
    x0, x1 = min(xs), max(xs)
    pad = (x1 - x0) * 0.08 or 0.5
    x0, x1 = x0 - pad, x1 + pad

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * (W - left - right)

    e = html.escape
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {height}" width="{W}" height="{height}" '
           'font-family="sans-serif" font-size="11">', f'<rect width="{W}" height="{height}" fill="#fff"/>']
    bottom = top + row_h * max(1, len(good))
    for t in _ticks(x0, x1):
        out.append(f'<line x1="{px(t):.1f}" x2="{px(t):.1f}" y1="{top}" y2="{bottom}" stroke="#e3e6ec"/>'
                   f'<text x="{px(t):.1f}" y="{bottom + 14}" text-anchor="middle">{t:.3g}</text>')
    out.append(f'<line x1="{px(zero):.1f}" x2="{px(zero):.1f}" y1="{top}" y2="{bottom}" stroke="#5b6475" '
               'stroke-dasharray="4 3"/>')
    for i, (lab, v, lo, hi) in enumerate(good):
        y = top + row_h * i + row_h / 2
        c = _COLOURS[0] if lo > zero else _COLOURS[1] if hi < zero else _COLOURS[6]
        out.append(f'<text x="{left - 8}" y="{y + 4:.1f}" text-anchor="end">{e(lab)}</text>'
                   f'<line x1="{px(lo):.1f}" x2="{px(hi):.1f}" y1="{y:.1f}" y2="{y:.1f}" stroke="{c}" stroke-width="2"/>'
                   f'<circle cx="{px(v):.1f}" cy="{y:.1f}" r="4" fill="{c}"/>')
    out.append(f'<text x="{(left + W - right) / 2:.0f}" y="{height - 8}" text-anchor="middle">{e(x_label)}</text></svg>')
    return "data:image/svg+xml;base64," + base64.b64encode("".join(out).encode("utf-8")).decode("ascii")
