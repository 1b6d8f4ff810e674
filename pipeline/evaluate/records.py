"""What a reader hands to the evaluation: a page's lines in reading order, with boxes if known.

Every format (ALTO, PAGE, hOCR, plain text) is reduced to this one shape so that counting,
matching and line detection never look at a file format again.
"""

from __future__ import annotations

from dataclasses import dataclass

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, x1 > x0 and y1 > y0


@dataclass(frozen=True)
class TextLine:
    text: str
    box: Box | None = None


@dataclass(frozen=True)
class PageText:
    """One page's transcription: lines in reading order (region boundaries are line breaks)."""

    lines: tuple[TextLine, ...]
    fmt: str  # alto | page | hocr | text

    @property
    def text(self) -> str:
        return "\n".join(line.text for line in self.lines)

    @property
    def has_coords(self) -> bool:
        """Line detection is measured only when every line of the page has a box."""
        return bool(self.lines) and all(line.box is not None for line in self.lines)


def box_from_points(points: list[tuple[float, float]]) -> Box | None:
    """The bounding box of a polygon; None when it has no area (a point or a line)."""
    if not points:
        return None
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    box = (round(min(xs)), round(min(ys)), round(max(xs)), round(max(ys)))
    return box if box[2] > box[0] and box[3] > box[1] else None
