"""Positions in the ALTO from the detected layout (pipeline/layout), and the text they imply.

What each `--layout` gives:
- `lines`: every detected line that got text is a TextLine with HPOS/VPOS/WIDTH/HEIGHT, its
  detected polygon (Shape/Polygon), BASELINE where one was derived (horizontal lines) and
  BASEDIRECTION="ttb" when vertical; regions are TextBlocks with their box. String positions are
  ESTIMATES: the line's extent shared out by character counts (along x, or along y for vertical
  lines), not measured glyph positions.
- `page`: the model gives one text for the page, so only the detector's text area is known: it
  becomes the PrintSpace's box, and the TextBlock's when the text is one block. Lines and
  Strings carry no position: none is invented for a line that was not detected.

All coordinates are page pixels (the image at full resolution, a PDF page at --dpi), inside the
page that Page WIDTH/HEIGHT declare.
"""

from __future__ import annotations

from typing import Any

from pipeline.records import Recognition


def lines_mode(rec: Recognition, layout: Any) -> bool:
    """Whether this page was recognised line by line against `layout` (a PageLayout)."""
    return layout is not None and rec.lines is not None and len(rec.lines) == len(layout.lines)


def box_attrs(box: tuple[int, int, int, int]) -> dict[str, str]:
    left, top, right, bottom = box
    return {
        "HPOS": str(left),
        "VPOS": str(top),
        "WIDTH": str(right - left),
        "HEIGHT": str(bottom - top),
    }


def points(polygon: tuple[tuple[int, int], ...]) -> str:
    return " ".join(f"{x},{y}" for x, y in polygon)


# A line's Strings, as (content, start, end) spans into the line's own model text.
Segments = list[tuple[str, int, int]]


def words_text(words: list[Segments]) -> str:
    """A line's text from its words: one space between words."""
    return " ".join("".join(content for content, _, _ in word) for word in words)


def string_boxes(
    box: tuple[int, int, int, int], words: list[Segments], vertical: bool
) -> list[list[dict[str, str]]]:
    """Estimated boxes of a line's Strings: the line's length shared by character counts
    (a space between words counts as one character), in whole pixels inside the line."""
    total = max(1, len(words_text(words)))
    left, top, right, bottom = box
    start, end = (top, bottom) if vertical else (left, right)
    out: list[list[dict[str, str]]] = []
    chars = 0
    for w, word in enumerate(words):
        chars += 1 if w else 0
        boxes = []
        for content, _, _ in word:
            a = min(end - 1, start + round((end - start) * chars / total))
            chars += len(content)
            b = min(end, max(a + 1, start + round((end - start) * chars / total)))
            if vertical:
                boxes.append(box_attrs((left, a, right, b)))
            else:
                boxes.append(box_attrs((a, top, b, bottom)))
        out.append(boxes)
    return out
