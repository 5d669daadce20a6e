"""The path matrix as an SVG, from the JSON of `lab.sh matrix` (scenarios.py matrix); drawn by
`plot.py`:

    bench/wanlab/plot.py bench/wanlab/out/matrix-YYYYMMDDTHHMMSSZ.json -o bench/wanlab/matrix.svg

One group of bars per path: each contender's median goodput of one application connection, as a
share of the path's line rate in the data direction (client -> server, or server -> client for
a matrix run with `--reverse`), with every run drawn as a small dot and the median in Mbit/s at
the bar's end. Paths in the matrix's order.

Python 3 standard library only; the SVG is written by hand.
"""

from __future__ import annotations

import json
import re
import statistics
from html import escape

import svgdoc

# Known contenders: label and colour (others are drawn in grey under their own name).
STYLE = {
    "direct-bbr": ("direct TCP, bbr", "#ff7f0e"),
    "direct-cubic": ("direct TCP, cubic", "#1f77b4"),
    "kcptun": ("kcptun fast3", "#98df8a"),
    "kcptun-2048": ("kcptun fast3, wnd 2048", "#2ca02c"),
    "wanmux-quic-4": ("wanmux, no [links] section (defaults)", "#17becf"),
    "wanmux-quic-4l": ("wanmux, 4 QUIC links, lanes = 2", "#9467bd"),
}
BAR, GAP = 9, 12  # bar height, space between path groups
LEFT, RIGHT, TOP = 130, 90, 70
W = 820


def line_rate(spec: str, reverse: bool = False) -> float | None:
    """The data direction's rate in Mbit/s from a path spec: client -> server (`up`), or
    server -> client (`down`) when `reverse`."""
    for key in ("down.rate" if reverse else "up.rate", "rate"):
        m = re.search(rf"(?:^|,){re.escape(key)}=([\d.]+)(k|m|g)bit", spec)
        if m:
            return float(m.group(1)) * {"k": 1e-3, "m": 1.0, "g": 1e3}[m.group(2)]
    return None


def render(data: dict, title: str | None) -> str:
    paths = list(data["paths"])
    runs = [r for r in data["runs"] if r.get("test") == "bulk"]
    reverse = any(r.get("reverse") for r in runs)
    order = [c for c in STYLE if any(r["contender"] == c for r in runs)]
    order += sorted({r["contender"] for r in runs} - set(order))
    group = len(order) * BAR + GAP
    height = TOP + len(paths) * group + 80
    pw = W - LEFT - RIGHT

    def x(share: float) -> float:
        return LEFT + pw * min(share, 1.05) / 1.05

    way = "server -> client" if reverse else "client -> server"
    t = title or f"Goodput of one connection ({way}) on each path of the matrix, share of the line rate"
    sub = (f"median of {data.get('repeat', '?')} run(s) of {data.get('time', '?'):g} s per "
           "contender and path (dots: the runs); the number: median Mbit/s")
    o = svgdoc.head(W, height, 11, t, sub, 10, 20)
    # Legend.
    lx = 10
    for c in order:
        label, colour = STYLE.get(c, (c, "#999"))
        o.append(f'<rect x="{lx}" y="48" width="12" height="10" fill="{colour}"/>')
        o.append(f'<text x="{lx + 16}" y="57">{escape(label)}</text>')
        lx += 30 + 6 * len(label)
    bottom = TOP + len(paths) * group
    for pct in range(0, 101, 20):
        gx = x(pct / 100)
        style = 'stroke="#888" stroke-dasharray="5 3"' if pct == 100 else 'stroke="#e5e5e5"'
        o.append(f'<line x1="{gx:.1f}" y1="{TOP - 4}" x2="{gx:.1f}" y2="{bottom}" {style}/>')
        o.append(f'<text x="{gx:.1f}" y="{bottom + 14}" text-anchor="middle">{pct}%</text>')
    o.append(f'<text x="{LEFT + pw / 2:.0f}" y="{bottom + 32}" text-anchor="middle">'
             'goodput / line rate in the data direction (dashed: the line rate)</text>')
    for i, name in enumerate(paths):
        rate = line_rate(data["paths"][name], reverse)
        gy = TOP + i * group
        o.append(f'<text x="{LEFT - 6}" y="{gy + len(order) * BAR / 2 + 4:.1f}" '
                 f'text-anchor="end">{escape(name)}</text>')
        for j, c in enumerate(order):
            mine = [r for r in runs if r["scenario"] == name and r["contender"] == c]
            ok = [r["mbit"] for r in mine if r.get("ok")]
            if not rate or not mine:
                continue
            label, colour = STYLE.get(c, (c, "#999"))
            by = gy + j * BAR
            if not ok:
                o.append(f'<text x="{LEFT + 4}" y="{by + BAR - 1}" font-size="9" fill="#c00">'
                         'no run finished</text>')
                continue
            med = statistics.median(ok)
            tip = f"{name}, {label}: {med:.1f} Mbit/s ({med / rate:.0%} of {rate:g})"
            o.append(f'<rect x="{LEFT}" y="{by}" width="{x(med / rate) - LEFT:.1f}" '
                     f'height="{BAR - 1}" fill="{colour}"><title>{escape(tip)}</title></rect>')
            for v in ok:
                o.append(f'<circle cx="{x(v / rate):.1f}" cy="{by + (BAR - 1) / 2:.1f}" r="1.8" '
                         'fill="#222" fill-opacity="0.6"/>')
            right = x(max(ok + [med]) / rate)
            o.append(f'<text x="{right + 5:.1f}" y="{by + BAR - 1}" font-size="9">'
                     f'{med:.1f}</text>')
    foot = data.get("command", "")
    o.append(f'<text x="10" y="{height - 10}" font-size="10" fill="#555">{escape(foot)}</text>')
    o.append("</svg>")
    return "\n".join(o) + "\n"
