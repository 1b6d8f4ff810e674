"""Where each line of a page goes in the text layer: a box, its text and its direction.

Read from the page's ALTO (the same file `pages.load_page` keeps as `PageContent.alto`), in
page pixels as the ALTO gives them (its Page WIDTH/HEIGHT span the whole page):

- a TextLine with HPOS/VPOS/WIDTH/HEIGHT (or only a Shape/Polygon, taken by its bounding box)
  goes on that box;
- a TextLine without coordinates goes in its TextBlock's box if the block has one, else in the
  page area: the lines without a box are laid out as equal rows (columns, for vertical text)
  filling that area in reading order, each at most 1/25 of the area high (wide), so a short
  page is not set in giant type;
- a line is vertical when its ALTO BASEDIRECTION (or its block's) is `ttb`/`btt`, or, without
  one, when its box is taller than wide and it holds more than one character. Vertical rows of
  a block without coordinates run right to left, as vertical text is read.

A page whose run wrote TXT only has no ALTO and no size: its lines fill the page area given
by the caller (the PDF page itself).
"""

from __future__ import annotations

from dataclasses import dataclass

from lxml import etree

from pipeline.outputs.alto import read_alto, textline_text

from .pages import PageContent, line_text

Box = tuple[float, float, float, float]  # x0, y0, x1, y1; origin top-left, y down
MIN_SLOTS = 25  # a line laid out without coordinates is at most 1/25 of its area
_VERTICAL_DIRECTIONS = ("ttb", "btt")


@dataclass(frozen=True)
class PlacedLine:
    """One line of the text layer, in the coordinate space of its `PageLines`."""

    box: Box
    text: str
    vertical: bool


@dataclass(frozen=True)
class PageLines:
    """A page's lines and the size of the space their boxes are in (ALTO page pixels)."""

    width: float
    height: float
    lines: tuple[PlacedLine, ...]


@dataclass
class _Pending:
    """Lines of one area that have no box of their own, waiting to be laid out."""

    area: Box
    vertical: bool
    texts: list[str]


def _num(el: etree._Element, name: str) -> float | None:
    value = el.get(name)
    try:
        return None if value is None else float(value)
    except ValueError:
        return None


def _box(el: etree._Element, ns: str) -> Box | None:
    """The element's HPOS/VPOS/WIDTH/HEIGHT, else the bounding box of its Shape/Polygon."""
    x, y, w, h = (_num(el, a) for a in ("HPOS", "VPOS", "WIDTH", "HEIGHT"))
    if None not in (x, y, w, h) and w > 0 and h > 0:
        return (x, y, x + w, y + h)
    polygon = el.find(f"{{{ns}}}Shape/{{{ns}}}Polygon")
    if polygon is None:
        return None
    values = polygon.get("POINTS", "").replace(",", " ").split()
    try:
        coords = [float(v) for v in values]
    except ValueError:
        return None
    xs, ys = coords[0::2], coords[1::2]
    if len(xs) < 2 or len(xs) != len(ys) or max(xs) <= min(xs) or max(ys) <= min(ys):
        return None
    return (min(xs), min(ys), max(xs), max(ys))


def _direction(el: etree._Element, inherited: str | None) -> str | None:
    return el.get("BASEDIRECTION") or inherited


def _is_vertical(direction: str | None, box: Box | None, text: str) -> bool:
    if direction is not None:
        return direction in _VERTICAL_DIRECTIONS
    if box is None:
        return False
    return (box[3] - box[1]) > (box[2] - box[0]) and len(text) > 1


def layout_rows(area: Box, texts: list[str], vertical: bool) -> list[PlacedLine]:
    """Lines without coordinates as equal rows (columns right to left if vertical) of `area`."""
    x0, y0, x1, y1 = area
    n = len(texts)
    slot = ((x1 - x0) if vertical else (y1 - y0)) / max(n, 1)
    size = min(slot, ((x1 - x0) if vertical else (y1 - y0)) / MIN_SLOTS)
    placed = []
    for i, text in enumerate(texts):
        if vertical:
            right = x1 - i * slot
            box = (right - size, y0, right, y1)
        else:
            top = y0 + i * slot
            box = (x0, top, x1, top + size)
        placed.append(PlacedLine(box, text, vertical))
    return placed


def _from_alto(data: bytes) -> PageLines:
    root, ns = read_alto(data)
    page = root.find(f".//{{{ns}}}Page")
    if page is None:
        raise ValueError("the ALTO file has no Page")
    width, height = _num(page, "WIDTH") or 0.0, _num(page, "HEIGHT") or 0.0
    page_area = (0.0, 0.0, width, height)
    placed: list[PlacedLine] = []
    pending: dict[Box, _Pending] = {}  # one per area, in order of first use
    for block in root.iter(f"{{{ns}}}TextBlock"):
        block_dir = _direction(block, None)
        block_box = _box(block, ns)
        for line in block.iter(f"{{{ns}}}TextLine"):
            text = textline_text(line).strip()
            if not text:
                continue
            box, direction = _box(line, ns), _direction(line, block_dir)
            if box is not None:
                placed.append(PlacedLine(box, text, _is_vertical(direction, box, text)))
                continue
            area = block_box or page_area
            group = pending.setdefault(area, _Pending(area, False, []))
            group.vertical = group.vertical or _is_vertical(direction, None, text)
            group.texts.append(text)
    for group in pending.values():
        placed.extend(layout_rows(group.area, group.texts, group.vertical))
    return PageLines(width, height, tuple(placed))


def page_lines(content: PageContent, fallback_size: tuple[float, float]) -> PageLines:
    """The page's lines; without ALTO (or its size), rows filling `fallback_size`."""
    if content.alto is not None:
        lines = _from_alto(content.alto)
        if lines.width > 0 and lines.height > 0:
            return lines
    width, height = fallback_size
    texts = [t for block in content.blocks for line in block if (t := line_text(line).strip())]
    return PageLines(width, height, tuple(layout_rows((0.0, 0.0, width, height), texts, False)))
