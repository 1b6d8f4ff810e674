"""The records a page's layout travels in: detected lines, regions, and the page they belong to.

They cross process boundaries (page loaders -> coordinator -> writers), so they are frozen
dataclasses of plain ints, floats and tuples: no numpy, cheap to pickle, safe to share.
Every coordinate is in the page's full-resolution pixel space (the pixel space ALTO's Page
WIDTH/HEIGHT declare), with the origin at the top-left corner of the upright page.
"""

from __future__ import annotations

from dataclasses import dataclass

Point = tuple[int, int]
# (left, top, right, bottom); right and bottom are exclusive, so width = right - left.
BBox = tuple[int, int, int, int]

HORIZONTAL = "horizontal"
VERTICAL_RL = "vertical-rl"
READING_ORDERS = ("auto", HORIZONTAL, VERTICAL_RL)

# `Image.info` key of a loaded page: its (width, height) at full resolution (the file's pixels,
# or the PDF at the requested DPI) before any shrinking to the model's budget: the space every
# coordinate here is in. It travels with the image between processes, and ALTO's Page
# WIDTH/HEIGHT report it.
PAGE_SIZE_KEY = "anandasky_page_size"


def bbox_of(points: tuple[Point, ...] | list[Point]) -> BBox:
    """The smallest axis-aligned box holding every point (points are pixel centres)."""
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    return min(xs), min(ys), max(xs) + 1, max(ys) + 1


def union_bbox(boxes: list[BBox] | tuple[BBox, ...]) -> BBox:
    return (
        min(b[0] for b in boxes),
        min(b[1] for b in boxes),
        max(b[2] for b in boxes),
        max(b[3] for b in boxes),
    )


def bbox_polygon(box: BBox) -> tuple[Point, ...]:
    """A box as a clockwise polygon of its corner pixels (for writers that want Coords)."""
    left, top, right, bottom = box
    return (left, top), (right - 1, top), (right - 1, bottom - 1), (left, bottom - 1)


@dataclass(frozen=True)
class Line:
    """One detected text line (a column, for vertical text).

    `polygon` is what the detector found (clockwise from the top-left corner); `baseline`, where
    present, is an estimate: the lower edge of the detector's text kernel, from left to right.
    Vertical lines have none (there is no agreed vertical baseline in ALTO or hOCR).
    """

    polygon: tuple[Point, ...]
    bbox: BBox
    vertical: bool
    score: float
    baseline: tuple[Point, ...] | None = None

    @property
    def width(self) -> int:
        return self.bbox[2] - self.bbox[0]

    @property
    def height(self) -> int:
        return self.bbox[3] - self.bbox[1]

    @property
    def center(self) -> tuple[float, float]:
        return (self.bbox[0] + self.bbox[2]) / 2, (self.bbox[1] + self.bbox[3]) / 2


@dataclass(frozen=True)
class Region:
    """Lines that belong together (a column, a paragraph block, a marginal note, a stamp).

    `lines` are indices into `PageLayout.lines`; they are contiguous and in reading order, so a
    region's text never interleaves with another's. `main` is False for small blocks away from
    the text area (page numbers, stamps, ruler and colour-target labels).
    """

    id: str
    bbox: BBox
    lines: tuple[int, ...]
    main: bool = True

    @property
    def polygon(self) -> tuple[Point, ...]:
        return bbox_polygon(self.bbox)


@dataclass(frozen=True)
class PageLayout:
    """Everything the detector learned about one page, in reading order.

    `regions` come in reading order, the main ones first and then the rest (page numbers,
    stamps, labels), and `lines` follow them region by region, so reading `lines` in order
    reads each region whole. `reading_order` is the direction decided for the page
    (`horizontal` or `vertical-rl`, never `auto`). `text_area` covers the main regions (ALTO
    PrintSpace / the page-mode TextBlock); None when no line was found. `detector` is the
    fingerprint of the settings that produced this; `seconds` the detection's wall time.
    """

    width: int
    height: int
    lines: tuple[Line, ...]
    regions: tuple[Region, ...]
    reading_order: str
    text_area: BBox | None
    detector: str
    seconds: float = 0.0

    def region_lines(self, region: Region) -> tuple[Line, ...]:
        return tuple(self.lines[i] for i in region.lines)

    @property
    def is_empty(self) -> bool:
        return not self.lines
