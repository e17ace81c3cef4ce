"""Plots as inline SVG text (no plotting library, no fonts, nothing loaded): a histogram with reference lines,
for the run report's distributions. The page's CSS styles the classes used here (bar, axis, ref, label)."""

from __future__ import annotations

from html import escape

import numpy as np

WIDTH, HEIGHT = 420, 190
LEFT, RIGHT, TOP, BOTTOM = 44, 12, 14, 34


def _fmt(x: float) -> str:
    if x == 0:
        return "0"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}".rstrip("0").rstrip(".") if abs(x) >= 0.01 else f"{x:.3g}"


def value_range(values: np.ndarray, low: float | None = None, high: float | None = None,
                include: tuple[float, ...] = (), step: float | None = None,
                floor: float | None = None) -> tuple[float, float]:
    """An axis range: the given ends, else the 0.5 and 99.5 percentiles of the values (outliers go to the end
    bars) rounded outwards to a multiple of `step`, not below `floor`; widened to show `include` (reference
    lines)."""
    lo = low if low is not None else (float(np.percentile(values, 0.5)) if values.size else 0.0)
    hi = high if high is not None else (float(np.percentile(values, 99.5)) if values.size else 1.0)
    if step:
        lo = lo if low is not None else np.floor(lo / step) * step
        hi = hi if high is not None else np.ceil(hi / step) * step
        if hi - lo < 2 * step:
            lo = hi - 2 * step if low is None else lo
            hi = lo + 2 * step if hi - lo < 2 * step else hi
    if floor is not None:
        lo = max(lo, floor)
    for x in include:
        lo, hi = min(lo, x), max(hi, x)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    return float(lo), float(hi)


def histogram_svg(values: np.ndarray, lo: float, hi: float, label: str, measure: str, bins: int = 40,
                  refs: tuple[tuple[float, str], ...] = ()) -> str:
    """An SVG histogram of `values` over [lo, hi] (values outside counted in the end bars), bar heights as
    the share of the values in %, one dashed line per (x, text) of `refs`. Each bar's <title> gives its
    range and share; the root has class "plot-svg" and data-measure."""
    values = np.clip(np.asarray(values, np.float64), lo, hi)
    counts, edges = np.histogram(values, bins=bins, range=(lo, hi))
    total = max(1, int(counts.sum()))
    share = counts / total * 100.0
    top = max(float(share.max()) if share.size else 0.0, 1e-9)
    pw, ph = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x_of(v: float) -> float:
        return LEFT + (v - lo) / (hi - lo) * pw

    parts = [(f'<svg class="plot-svg" data-measure="{escape(measure)}" viewBox="0 0 {WIDTH} {HEIGHT}" '
              f'width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="{escape(label)} histogram">'),
             f"<title>{escape(label)}: distribution</title>"]
    bar_w = pw / bins
    for i, s in enumerate(share):
        if counts[i] == 0:
            continue
        h = s / top * ph
        parts.append(f'<rect class="bar" x="{LEFT + i * bar_w + 0.5:.1f}" y="{TOP + ph - h:.1f}" '
                     f'width="{max(bar_w - 1, 0.5):.1f}" height="{h:.1f}"><title>{_fmt(edges[i])} to '
                     f"{_fmt(edges[i + 1])}: {s:.1f} %</title></rect>")
    base = TOP + ph
    parts.append(f'<line class="axis" x1="{LEFT}" y1="{base}" x2="{LEFT + pw}" y2="{base}"/>')
    parts.append(f'<line class="axis" x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{base}"/>')
    for v in np.linspace(lo, hi, 5):
        x = x_of(float(v))
        parts.append(f'<line class="axis" x1="{x:.1f}" y1="{base}" x2="{x:.1f}" y2="{base + 4}"/>')
        parts.append(f'<text class="label" x="{x:.1f}" y="{base + 16}" text-anchor="middle">'
                     f"{_fmt(float(v))}</text>")
    parts.append(f'<text class="label" x="{LEFT - 4}" y="{TOP + 4}" text-anchor="end">{top:.0f}%</text>')
    parts.append(f'<text class="label" x="{LEFT - 4}" y="{base}" text-anchor="end">0</text>')
    parts.append(f'<text class="label" x="{LEFT + pw / 2:.1f}" y="{HEIGHT - 3}" text-anchor="middle">'
                 f"{escape(label)}</text>")
    for x_value, text in refs:
        if lo <= x_value <= hi:
            x = x_of(x_value)
            parts.append(f'<line class="ref" x1="{x:.1f}" y1="{TOP - 4}" x2="{x:.1f}" y2="{base}"/>')
            parts.append(f'<text class="ref-label" x="{x + 3:.1f}" y="{TOP + 6}">{escape(text)}</text>')
    parts.append("</svg>")
    return "".join(parts)
