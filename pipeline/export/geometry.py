"""Positions an ALTO file gives (a run with line detection writes them), for PAGE and hOCR.

Kept beside `PageContent.blocks`, index for index: `lines[b][i]` and `words[b][i][w]` belong to
`blocks[b][i][w]`. Anything the ALTO does not state is None, and the exporters then say "no
position" in their own way instead of inventing one.
"""

from __future__ import annotations

from dataclasses import dataclass

from lxml import etree

Box = tuple[int, int, int, int]  # left, top, right, bottom (right/bottom exclusive)
Points = tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class LineGeometry:
    box: Box | None
    polygon: Points | None
    baseline: Points | None
    vertical: bool  # BASEDIRECTION ttb/btt


@dataclass(frozen=True)
class PageGeometry:
    print_space: Box | None
    blocks: tuple[Box | None, ...]
    lines: tuple[tuple[LineGeometry, ...], ...]
    words: tuple[tuple[tuple[Box | None, ...], ...], ...]

    @property
    def has_lines(self) -> bool:
        return any(line.box for block in self.lines for line in block)


def element_box(el: etree._Element) -> Box | None:
    try:
        x, y = float(el.get("HPOS")), float(el.get("VPOS"))
        w, h = float(el.get("WIDTH")), float(el.get("HEIGHT"))
    except (TypeError, ValueError):
        return None
    if w <= 0 or h <= 0:
        return None
    return (round(x), round(y), round(x + w), round(y + h))


def parse_points(text: str | None) -> Points | None:
    """ALTO points: "x1,y1 x2,y2 ..." (recommended) or "x1 y1 x2 y2 ..." (older tools)."""
    if not text:
        return None
    try:
        numbers = [round(float(v)) for v in text.replace(",", " ").split()]
    except ValueError:
        return None
    if len(numbers) < 4 or len(numbers) % 2:
        return None
    return tuple(zip(numbers[::2], numbers[1::2], strict=True))


def read_geometry(root: etree._Element, ns: str) -> PageGeometry | None:
    """The page's positions, following `pages.parse_alto`'s structure; None if it has none."""
    q = f"{{{ns}}}"
    space = root.find(f".//{q}PrintSpace")
    blocks, lines, words = [], [], []
    for block in root.iter(f"{q}TextBlock"):
        block_lines, block_words = [], []
        for line in block.iter(f"{q}TextLine"):
            polygon = line.find(f"{q}Shape/{q}Polygon")
            block_lines.append(
                LineGeometry(
                    element_box(line),
                    parse_points(polygon.get("POINTS")) if polygon is not None else None,
                    parse_points(line.get("BASELINE")),
                    line.get("BASEDIRECTION") in ("ttb", "btt"),
                )
            )
            block_words.append(
                tuple(
                    element_box(el) for el in line if etree.QName(el).localname in ("String", "HYP")
                )
            )
        if block_lines:
            blocks.append(element_box(block))
            lines.append(tuple(block_lines))
            words.append(tuple(block_words))
    geometry = PageGeometry(
        element_box(space) if space is not None else None,
        tuple(blocks),
        tuple(lines),
        tuple(words),
    )
    if geometry.print_space is None and not any(blocks) and not geometry.has_lines:
        return None
    return geometry


def box_points(box: Box) -> str:
    """PAGE Coords of a box: its four corner pixels, clockwise from the top left."""
    left, top, right, bottom = box
    right, bottom = max(left, right - 1), max(top, bottom - 1)
    return f"{left},{top} {right},{top} {right},{bottom} {left},{bottom}"


def points_text(points: Points) -> str:
    return " ".join(f"{x},{y}" for x, y in points)
