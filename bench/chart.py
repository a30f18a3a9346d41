"""A dependency-free SVG bar chart of ratios."""

from __future__ import annotations

from html import escape

COLORS = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860"]


def ratio_chart(groups: list[tuple[str, dict[str, float]]], title: str) -> str:
    names: list[str] = []
    for _, values in groups:
        for name in values:
            if name not in names:
                names.append(name)
    bar, gap, left, top, height = 18, 30, 230, 50, 0
    rows = sum(len(values) for _, values in groups)
    height = top + rows * bar + len(groups) * gap + 60
    width = 900
    peak = max(v for _, values in groups for v in values.values())
    scale = (width - left - 80) / max(peak, 1.0)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        'font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="10" y="22" font-size="14" font-weight="bold">{escape(title)}</text>',
    ]
    y = top
    for group, values in groups:
        parts.append(f'<text x="10" y="{y + 12}" font-weight="bold">{escape(group)}</text>')
        y += 18
        for name, value in values.items():
            color = COLORS[names.index(name) % len(COLORS)]
            w = value * scale
            parts.append(
                f'<text x="{left - 8}" y="{y + 13}" text-anchor="end">{escape(name)}</text>'
            )
            parts.append(
                f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar - 4}" fill="{color}"/>'
            )
            parts.append(f'<text x="{left + w + 6:.1f}" y="{y + 12}">{value:.2f}×</text>')
            y += bar
        y += gap - 18
    one = left + scale
    parts.append(
        f'<line x1="{one:.1f}" y1="{top}" x2="{one:.1f}" y2="{y}" stroke="#333" stroke-dasharray="4 3"/>'
    )
    parts.append(f'<text x="{one + 4:.1f}" y="{y + 14}">1.0× (baseline)</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
