#!/usr/bin/env python3
"""Goodput against loss rate, as an SVG, from the JSON of `lab.sh sweep` (scenarios.py sweep);
and the path matrix from the JSON of `lab.sh matrix` (drawn by `matrix_svg.py`).

    bench/wanlab/plot.py bench/wanlab/out/sweep-YYYYMMDDTHHMMSSZ.json -o bench/wanlab/goodput-vs-loss.svg
    bench/wanlab/plot.py bench/wanlab/out/matrix-YYYYMMDDTHHMMSSZ.json -o bench/wanlab/matrix.svg

Top panel: median goodput of one application connection at each loss rate for direct TCP (cubic,
bbr), the better of the two kcptun rows at each point, and every wanmux row of the sweep (TCP
or QUIC links), with the line rate for reference; every single run is drawn as a small dot.
Bottom panel: bytes offered to the WAN in the data direction per application byte delivered
(median). The loss rates are evenly
spaced on the x axis (they are the measured points, not a linear scale).

Python 3 standard library only; the SVG is written by hand.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from html import escape
from pathlib import Path

import matrix_svg  # next to this script
import svgdoc

SERIES = [
    # (key, label, colour); "kcptun-best" is chosen per loss rate from the two kcptun rows.
    ("direct-cubic", "direct TCP, cubic", "#1f77b4"),
    ("direct-bbr", "direct TCP, bbr", "#ff7f0e"),
    ("kcptun-best", "kcptun fast3 (better of default / wnd 2048)", "#2ca02c"),
    ("wanmux-1", "wanmux, 1 link", "#8c564b"),
    ("wanmux-32", "wanmux, 32 links", "#d62728"),
    ("wanmux-elastic", "wanmux, elastic 1-32", "#9467bd"),
    ("wanmux-quic-1", "wanmux, 1 QUIC link", "#e377c2"),
    ("wanmux-quic-4l", "wanmux, 4 QUIC links + 2 lane streams", "#17becf"),
]
KCPTUN = ("kcptun", "kcptun-2048")

W, H = 780, 640
LEFT, RIGHT = 70, 250  # margins; the legend sits in the right one
TOP1, BOTTOM1 = 50, 350  # goodput panel
TOP2, BOTTOM2 = 420, 580  # overhead panel


def medians(runs: list[dict], losses: list[float]) -> dict[str, dict[float, dict]]:
    """{contender: {loss: {"mbit": median, "ratio": median, "runs": [...], "from": contender}}}"""
    out: dict[str, dict[float, dict]] = {}
    names = sorted({r["contender"] for r in runs})
    for name in names:
        for loss in losses:
            ok = [r for r in runs if r["contender"] == name and r["loss"] == loss and r["ok"]
                  and r["test"] == "bulk"]
            if not ok:
                continue
            ratios = [r["wire_data_ratio"] for r in ok if r.get("wire_data_ratio") is not None]
            out.setdefault(name, {})[loss] = {
                "mbit": statistics.median(r["mbit"] for r in ok),
                "ratio": statistics.median(ratios) if ratios else None,
                "runs": [r["mbit"] for r in ok],
                "from": name,
            }
    best: dict[float, dict] = {}
    for loss in losses:
        cands = [out[k][loss] for k in KCPTUN if k in out and loss in out[k]]
        if cands:
            best[loss] = max(cands, key=lambda c: c["mbit"])
    if best:
        out["kcptun-best"] = best
    return out


def nice_ceiling(x: float) -> float:
    for mag in (0.01, 0.1, 1, 10, 100, 1000, 10000):
        for step in (1, 2, 2.5, 5):
            if step * mag >= x:
                return step * mag
    return x


def render(data: dict, title: str | None) -> str:
    losses = data["losses"]
    line = data.get("line_mbit")
    m = medians(data["runs"], losses)
    ymax = max([line or 0] + [v["mbit"] for s in m.values() for v in s.values()]
               + [x for s in m.values() for v in s.values() for x in v["runs"]])
    ymax = nice_ceiling(ymax * 1.05)
    ratios = [v["ratio"] for k, *_ in SERIES if k in m for v in m[k].values() if v["ratio"]]
    rmax = max([1.5] + ratios)
    rmax = 1 + nice_ceiling((rmax - 1) * 1.1)

    pw = W - LEFT - RIGHT

    def x(i: int) -> float:
        return LEFT + (i + 0.5) * pw / len(losses)

    def y1(v: float) -> float:
        return BOTTOM1 - (BOTTOM1 - TOP1) * v / ymax

    def y2(v: float) -> float:
        return BOTTOM2 - (BOTTOM2 - TOP2) * (v - 1) / (rmax - 1)

    t = title or "Goodput of one TCP connection against random loss"
    sub = (f"path {data['base']} + loss; median of {data.get('repeat', '?')} run(s) of "
           f"{data.get('time', '?'):g} s; wanmux links: TCP {data.get('wanmux_cc', '?')}, QUIC pace")
    o = svgdoc.head(W, H, 12, t, sub, LEFT, 22)

    # Goodput panel: grid, axes, line rate.
    for i in range(6):
        v = ymax * i / 5
        o.append(f'<line x1="{LEFT}" y1="{y1(v):.1f}" x2="{LEFT + pw}" y2="{y1(v):.1f}" '
                 'stroke="#e5e5e5"/>')
        o.append(f'<text x="{LEFT - 6}" y="{y1(v) + 4:.1f}" text-anchor="end">{v:g}</text>')
    o.append(f'<text x="18" y="{(TOP1 + BOTTOM1) / 2:.0f}" text-anchor="middle" '
             f'transform="rotate(-90 18 {(TOP1 + BOTTOM1) / 2:.0f})">goodput, Mbit/s</text>')
    if line:
        o.append(f'<line x1="{LEFT}" y1="{y1(line):.1f}" x2="{LEFT + pw}" y2="{y1(line):.1f}" '
                 'stroke="#444" stroke-dasharray="6 4"/>')
        o.append(f'<text x="{LEFT + pw - 4}" y="{y1(line) - 5:.1f}" text-anchor="end" fill="#444">'
                 f'line rate {line:g} Mbit/s</text>')
    # Overhead panel: grid, axes.
    steps = 4
    for i in range(steps + 1):
        v = 1 + (rmax - 1) * i / steps
        o.append(f'<line x1="{LEFT}" y1="{y2(v):.1f}" x2="{LEFT + pw}" y2="{y2(v):.1f}" '
                 'stroke="#e5e5e5"/>')
        o.append(f'<text x="{LEFT - 6}" y="{y2(v) + 4:.1f}" text-anchor="end">{v:.2f}</text>')
    o.append(f'<text x="{LEFT}" y="{TOP2 - 12}" fill="#333">WAN bytes sent in the data direction '
             'per application byte delivered (median)</text>')
    for top, bottom in ((TOP1, BOTTOM1), (TOP2, BOTTOM2)):
        o.append(f'<rect x="{LEFT}" y="{top}" width="{pw}" height="{bottom - top}" fill="none" '
                 'stroke="#888"/>')
    for i, loss in enumerate(losses):
        for bottom in (BOTTOM1, BOTTOM2):
            o.append(f'<text x="{x(i):.1f}" y="{bottom + 16}" text-anchor="middle">{loss:g}%</text>')
    o.append(f'<text x="{LEFT + pw / 2:.0f}" y="{BOTTOM2 + 36}" text-anchor="middle">'
             'random loss in each direction (measured points, evenly spaced)</text>')

    # Series.
    ly = TOP1 + 4
    for key, label, colour in SERIES:
        if key not in m:
            continue
        pts = [(i, m[key][loss]) for i, loss in enumerate(losses) if loss in m[key]]
        path = " ".join(f"{'M' if j == 0 else 'L'}{x(i):.1f},{y1(v['mbit']):.1f}"
                        for j, (i, v) in enumerate(pts))
        o.append(f'<path d="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for i, v in pts:
            for run in v["runs"]:
                o.append(f'<circle cx="{x(i):.1f}" cy="{y1(run):.1f}" r="2" fill="{colour}" '
                         'fill-opacity="0.45"/>')
            tip = f"{label}, {losses[i]:g}% loss: {v['mbit']:.1f} Mbit/s"
            if key == "kcptun-best":
                tip += f" ({v['from']})"
            o.append(f'<circle cx="{x(i):.1f}" cy="{y1(v["mbit"]):.1f}" r="4" fill="{colour}">'
                     f'<title>{escape(tip)}</title></circle>')
            if key == "kcptun-best" and v["from"] == "kcptun-2048":
                o.append(f'<text x="{x(i) + 6:.1f}" y="{y1(v["mbit"]) + 12:.1f}" font-size="9" '
                         f'fill="{colour}">2048</text>')
        rpts = [(i, v["ratio"]) for i, v in pts if v["ratio"] is not None]
        if rpts:
            path = " ".join(f"{'M' if j == 0 else 'L'}{x(i):.1f},{y2(r):.1f}"
                            for j, (i, r) in enumerate(rpts))
            o.append(f'<path d="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
            for i, r in rpts:
                o.append(f'<circle cx="{x(i):.1f}" cy="{y2(r):.1f}" r="3.5" fill="{colour}">'
                         f'<title>{escape(label)}, {losses[i]:g}% loss: {r:.3f}</title></circle>')
        # Legend.
        lx = LEFT + pw + 18
        o.append(f'<line x1="{lx}" y1="{ly}" x2="{lx + 22}" y2="{ly}" stroke="{colour}" '
                 'stroke-width="2"/>')
        o.append(f'<circle cx="{lx + 11}" cy="{ly}" r="4" fill="{colour}"/>')
        words, lines, cur = label.split(), [], ""
        for w in words:
            if len(cur) + len(w) + 1 > 26 and cur:
                lines.append(cur)
                cur = w
            else:
                cur = f"{cur} {w}".strip()
        lines.append(cur)
        for j, text in enumerate(lines):
            o.append(f'<text x="{lx + 30}" y="{ly + 4 + 14 * j}">{escape(text)}</text>')
        ly += 14 * len(lines) + 12
    if "kcptun-best" in m:
        o.append(f'<text x="{LEFT + pw + 18}" y="{ly + 4}" font-size="10" fill="#555">'
                 '"2048": kcptun point from the</text>')
        o.append(f'<text x="{LEFT + pw + 18}" y="{ly + 17}" font-size="10" fill="#555">'
                 '--sndwnd/--rcvwnd 2048 row</text>')
    foot = data.get("command", "")
    o.append(f'<text x="{LEFT}" y="{H - 12}" font-size="10" fill="#555">{escape(foot)}</text>')
    o.append("</svg>")
    return "\n".join(o) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(
        description="Goodput against loss rate, or the path matrix (SVG), from a sweep's or a "
                    "matrix's JSON.")
    ap.add_argument("json", type=Path, help="the .json written by `lab.sh sweep` or `lab.sh matrix`")
    ap.add_argument("-o", "--out", type=Path, default=None,
                    help="SVG to write (default: next to the JSON, .svg)")
    ap.add_argument("--title", default=None)
    args = ap.parse_args()
    data = json.loads(args.json.read_text())
    out = args.out or args.json.with_suffix(".svg")
    if data.get("mode") == "matrix":
        missing = [p for p, spec in data["paths"].items() if matrix_svg.line_rate(spec) is None]
        if missing:
            ap.error(f"no line rate in the spec of {', '.join(missing)}")
        out.write_text(matrix_svg.render(data, args.title))
        print(f"wrote {out}", file=sys.stderr)
        return 0
    if data.get("mode") != "sweep":
        ap.error(f"{args.json} is neither a sweep nor a matrix (mode {data.get('mode')!r})")
    # A contender without a series would silently be left out of the plot (a sweep whose only
    # wanmux row had no series once gave a plot with no wanmux line at all).
    drawn = {key for key, _, _ in SERIES} | set(KCPTUN)
    missing = sorted({r["contender"] for r in data["runs"]} - drawn)
    if missing:
        ap.error(f"no series for {', '.join(missing)}: add them to SERIES in {Path(__file__).name}")
    out.write_text(render(data, args.title))
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
