"""What every SVG drawn by `plot.py` starts with (standard library only)."""

from __future__ import annotations

from html import escape


def head(w: int, h: int, font_size: int, title: str, sub: str, x: int, y: int) -> list[str]:
    """The document's opening, a white background, a bold title at (x, y) and a grey line under
    it: the elements, one per string, for the caller to append to and join."""
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
        f'viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="{font_size}">',
        f'<rect width="{w}" height="{h}" fill="white"/>',
        f'<text x="{x}" y="{y}" font-size="15" font-weight="bold">{escape(title)}</text>',
        f'<text x="{x}" y="{y + 18}" fill="#555">{escape(sub)}</text>',
    ]
