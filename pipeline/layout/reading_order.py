"""Which way a page reads, and the order of the lines inside one region.

Horizontal pages: rows top to bottom, each row left to right. Vertical-rl pages (Chinese ancient
books, Japanese): columns right to left, each read top to bottom. `auto` decides from the shapes
the detector found: a page whose long lines are mostly tall and narrow is vertical.
"""

from __future__ import annotations

import dataclasses

from pipeline.errors import BadArguments
from pipeline.layout.geometry import HORIZONTAL, READING_ORDERS, VERTICAL_RL, Line

# A box counts as elongated (a real line, not a blob) when one side is this much the longer.
_ELONGATED = 1.5


def page_direction(lines: list[Line], requested: str = "auto") -> str:
    """`requested` unless it is `auto`; then vertical-rl when tall lines outweigh wide ones.

    Each elongated line votes with its length, so a few long columns beat many short pieces.
    """
    if requested not in READING_ORDERS:
        raise BadArguments(
            f"unknown reading order {requested!r}; use one of: {', '.join(READING_ORDERS)}"
        )
    if requested != "auto":
        return requested
    return block_direction(lines, HORIZONTAL)


def block_direction(lines: list[Line], default: str) -> str:
    """vertical-rl or horizontal by the lengths of tall vs wide lines; `default` on a tie."""
    tall = sum(ln.height for ln in lines if ln.height > _ELONGATED * ln.width)
    wide = sum(ln.width for ln in lines if ln.width > _ELONGATED * ln.height)
    if tall == wide:
        return default
    return VERTICAL_RL if tall > wide else HORIZONTAL


def orient_lines(lines: list[Line], direction: str, unit: float) -> list[Line]:
    """Mark each line vertical or not: the page's direction, unless a line clearly runs across it.

    Square boxes (a single character, a seal) follow the page; on a horizontal page a line is
    vertical only if it is tall, narrow and longer than two typical line thicknesses (a spine
    label, a vertical marginal note), and the same the other way round. Vertical lines carry no
    baseline.
    """
    out = []
    for ln in lines:
        if direction == VERTICAL_RL:
            vertical = not (ln.width > _ELONGATED * ln.height and ln.width > 2 * unit)
        else:
            vertical = ln.height > _ELONGATED * ln.width and ln.height > 2 * unit
        if vertical != ln.vertical or (vertical and ln.baseline is not None):
            ln = dataclasses.replace(
                ln, vertical=vertical, baseline=None if vertical else ln.baseline
            )
        out.append(ln)
    return out


def order_lines(lines: list[Line], idxs: list[int], direction: str) -> list[int]:
    """The reading order of one region's lines.

    Lines are grouped into rows (columns, for vertical-rl) by overlap of their extents across
    the reading direction; rows read top to bottom (columns right to left), the pieces inside a
    row left to right (inside a column top to bottom).
    """
    vertical = direction == VERTICAL_RL
    lo, hi = (0, 2) if vertical else (1, 3)  # the axis rows/columns are stacked along

    def extent(i: int) -> tuple[int, int]:
        box = lines[i].bbox
        return box[lo], box[hi]

    groups: list[list[int]] = []
    spans: list[tuple[int, int]] = []
    for i in sorted(idxs, key=lambda i: sum(extent(i))):
        start, end = extent(i)
        if groups:
            g_start, g_end = spans[-1]
            overlap = min(end, g_end) - max(start, g_start)
            if overlap > 0.5 * min(end - start, g_end - g_start):
                groups[-1].append(i)
                spans[-1] = (min(start, g_start), max(end, g_end))
                continue
        groups.append([i])
        spans.append((start, end))
    if vertical:
        groups.reverse()  # columns right to left
    along = 1 if vertical else 0
    return [i for group in groups for i in sorted(group, key=lambda i: lines[i].bbox[along])]
