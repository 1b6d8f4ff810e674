"""Group detected lines into regions (TextBlocks) and put the regions in reading order.

A recursive XY-cut over the lines' boxes: wherever a band of empty page at least a threshold
wide crosses the whole group of lines (a column gutter, the fold between facing pages, the space
above a ruler or around a stamp), the group is cut there, and each part is cut again. The parts
that cannot be cut further are the regions. Because a region's lines are read together, a facing
page, a stamp or a colour-target label never interleaves its lines with the main text.

Thresholds scale with the page's typical line thickness, so they hold at any resolution.
"""

from __future__ import annotations

import statistics

from pipeline.layout.geometry import VERTICAL_RL, BBox, Line

# Gaps (in typical line thicknesses) that separate regions. Across the lines (between one line
# and the next) the normal line spacing must not cut; along them, a column gutter must.
_ACROSS_GAP = 1.5
_ALONG_GAP = 1.0
# A region is "main" text when its lines look like text or it has this share of the largest
# region's area.
_MAIN_AREA_SHARE = 0.25
_MAIN_LENGTH = 3.0  # a real line is at least this many line thicknesses long


def line_thickness(lines: list[Line]) -> float:
    """The typical thickness of a line (its short side), the unit of every threshold here."""
    return float(statistics.median(min(line.width, line.height) for line in lines))


def find_regions(lines: list[Line], direction: str) -> list[list[int]]:
    """Indices of `lines` grouped into regions, the regions in reading order.

    Horizontal pages read columns left to right; vertical-rl pages right to left; stacked parts
    top to bottom. The order of lines inside a region is `reading_order.order_lines`' business.
    """
    if not lines:
        return []
    unit = max(line_thickness(lines), 1.0)
    vertical = direction == VERTICAL_RL
    # Horizontal text: lines are stacked in y, so y gaps between them are "across"; vertical
    # text: columns are side by side in x.
    gap_x = unit * (_ACROSS_GAP if vertical else _ALONG_GAP)
    gap_y = unit * (_ALONG_GAP if vertical else _ACROSS_GAP)
    boxes = [line.bbox for line in lines]
    out: list[list[int]] = []
    _cut(list(range(len(lines))), boxes, gap_x, gap_y, vertical, out)
    return out


def _gaps(intervals: list[tuple[int, int, int]], threshold: float) -> tuple[float, list[float]]:
    """Cut positions where empty bands of at least `threshold` cross all intervals.

    Returns the widest band's width relative to the threshold (0 when none) and the cut
    positions (band middles) in increasing order.
    """
    intervals = sorted(intervals)
    cuts: list[float] = []
    best = 0.0
    reach = intervals[0][1]
    for start, end, _ in intervals[1:]:
        if start - reach >= threshold:
            cuts.append((start + reach) / 2)
            best = max(best, (start - reach) / threshold)
        reach = max(reach, end)
    return best, cuts


def _cut(
    idxs: list[int],
    boxes: list[BBox],
    gap_x: float,
    gap_y: float,
    rtl: bool,
    out: list[list[int]],
) -> None:
    if len(idxs) == 1:
        out.append(idxs)
        return
    score_x, cuts_x = _gaps([(boxes[i][0], boxes[i][2], i) for i in idxs], gap_x)
    score_y, cuts_y = _gaps([(boxes[i][1], boxes[i][3], i) for i in idxs], gap_y)
    if not cuts_x and not cuts_y:
        parts = _split_off_bridges(idxs, boxes, gap_x)
        if parts is None:
            out.append(idxs)
        else:
            for part in parts:
                _cut(part, boxes, gap_x, gap_y, rtl, out)
        return
    # The widest band (relative to its threshold) is the most certain separation: cut it first.
    axis, cuts = (0, cuts_x) if score_x >= score_y else (1, cuts_y)
    parts: list[list[int]] = [[] for _ in range(len(cuts) + 1)]
    for i in idxs:
        start = boxes[i][axis]
        parts[sum(start > c for c in cuts)].append(i)
    if axis == 0 and rtl:
        parts.reverse()
    for part in parts:
        _cut(part, boxes, gap_x, gap_y, rtl, out)


def _split_off_bridges(idxs: list[int], boxes: list[BBox], gap_x: float) -> list[list[int]] | None:
    """Columns hidden by a few lines that run across their gutter (a heading over two columns).

    Finds an x band at least `gap_x` wide that only a few lines cross, and cuts the group in y
    between those crossing lines and the rest, where the rows separate cleanly. None if not.
    """
    if len(idxs) < 4:
        return None
    allowed = max(1, len(idxs) // 10)
    left = min(boxes[i][0] for i in idxs)
    right = max(boxes[i][2] for i in idxs)
    events = sorted([(boxes[i][0], 1) for i in idxs] + [(boxes[i][2], -1) for i in idxs])
    depth, band_start, band = 0, None, None
    for x, step in events:
        if band_start is not None and x - band_start >= gap_x and left < band_start and x < right:
            band = (band_start, x)
            break
        depth += step
        if depth > allowed:
            band_start = None
        elif band_start is None:
            band_start = x
    if band is None:
        return None
    middle = (band[0] + band[1]) / 2
    crossing = {i for i in idxs if boxes[i][0] < middle < boxes[i][2]}
    if not crossing or len(crossing) == len(idxs):
        return None
    runs: list[list[int]] = []
    for i in sorted(idxs, key=lambda i: (boxes[i][1] + boxes[i][3]) / 2):
        if runs and (i in crossing) == (runs[-1][0] in crossing):
            runs[-1].append(i)
        else:
            runs.append([i])
    for upper, lower in zip(runs, runs[1:], strict=False):
        if max(boxes[i][3] for i in upper) > min(boxes[i][1] for i in lower):
            return None  # the crossing lines sit between rows of the columns: no clean cut
    return runs


def main_flags(
    groups: list[list[int]], lines: list[Line], vertical: bool, unit: float
) -> list[bool]:
    """Which regions are main text; small blocks (page numbers, stamps, labels) are not."""
    areas = [sum(lines[i].width * lines[i].height for i in group) for group in groups]
    largest = max(areas, default=0)
    return [
        area >= _MAIN_AREA_SHARE * largest or _looks_like_text(group, lines, vertical, unit)
        for group, area in zip(groups, areas, strict=True)
    ]


def _looks_like_text(group: list[int], lines: list[Line], vertical: bool, unit: float) -> bool:
    """Real lines running the page's way (a heading counts), not fragments (ruler digits, a
    page number) nor lines across the page (a horizontal label on a vertical page)."""
    members = [lines[i] for i in group]
    along = [ln.height if ln.vertical else ln.width for ln in members]
    with_page = sum(ln.vertical == vertical for ln in members)
    return statistics.median(along) >= _MAIN_LENGTH * unit and 2 * with_page > len(members)
