"""hOCR (HTML or XHTML): one page per `ocr_page`, its lines in document order with bboxes.

A line is any element whose class is one of hOCR's line classes; its text is all the text
inside it with whitespace runs made single spaces. A page with words but no line elements
gives one line per `ocr_par` (or the whole page text), without boxes.
"""

from __future__ import annotations

import re

from .records import Box, PageText, TextLine

LINE_CLASSES = frozenset(("ocr_line", "ocrx_line", "ocr_textfloat", "ocr_header", "ocr_caption"))
_BBOX = re.compile(r"bbox\s+(-?\d+)\s+(-?\d+)\s+(-?\d+)\s+(-?\d+)")
_PPAGENO = re.compile(r"ppageno\s+(\d+)")


def _classes(el) -> set[str]:
    return set((el.get("class") or "").split())


def _bbox(el) -> Box | None:
    m = _BBOX.search(el.get("title") or "")
    if not m:
        return None
    x0, y0, x1, y1 = map(int, m.groups())
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def _text(el) -> str:
    return " ".join("".join(el.itertext()).split())


def _page_lines(page) -> tuple[TextLine, ...]:
    lines = []
    for el in page.iter():
        if not isinstance(el.tag, str) or not (_classes(el) & LINE_CLASSES):
            continue
        if any(_classes(a) & LINE_CLASSES for a in el.iterancestors()):
            continue  # a line nested in a line is part of the outer one
        text = _text(el)
        if text:
            lines.append(TextLine(text, _bbox(el)))
    if lines:
        return tuple(lines)
    pars = [
        _text(el) for el in page.iter() if isinstance(el.tag, str) and "ocr_par" in _classes(el)
    ]
    if not pars:
        pars = [_text(page)]
    return tuple(TextLine(t) for t in pars if t)


def read_hocr(root) -> list[tuple[int | None, PageText]]:
    """[(ppageno + 1 or None, page)] in document order."""
    pages = []
    for el in root.iter():
        if isinstance(el.tag, str) and "ocr_page" in _classes(el):
            m = _PPAGENO.search(el.get("title") or "")
            number = int(m.group(1)) + 1 if m else None
            pages.append((number, PageText(_page_lines(el), "hocr")))
    return pages
