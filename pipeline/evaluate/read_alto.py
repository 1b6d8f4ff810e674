"""ALTO v2, v3 and v4 (any namespace, or none): TextLines in document order, with boxes.

ALTO states reading order by element order. Spaces inside a line come from its SP elements;
a file with no SP at all (eScriptorium, some glyph-level writers) gets a space between two
Strings unless both sides are in a script written without spaces (CJK, Thai...), which is how
its writers mean it. Line boxes are HPOS/VPOS/WIDTH/HEIGHT when MeasurementUnit is pixel (or
absent); in mm10 or inch1200 they would need the scan resolution, so such lines have no box.
"""

from __future__ import annotations

import unicodedata

from .records import Box, PageText, TextLine

# Scripts written without spaces between words; a String boundary there is not a space.
_NO_SPACE_PREFIXES = ("CJK", "HIRAGANA", "KATAKANA", "THAI", "LAO", "KHMER", "MYANMAR", "TIBETAN")


def _local(el) -> str:
    tag = el.tag
    return tag.rpartition("}")[2] if isinstance(tag, str) else ""


def _unspaced(ch: str) -> bool:
    name = unicodedata.name(ch, "")
    return name.startswith(_NO_SPACE_PREFIXES) or "IDEOGRAPH" in name


def _line_text(line, spaces_from_sp: bool) -> str:
    parts: list[str] = []
    for el in line:
        tag = _local(el)
        if tag in ("String", "HYP"):
            content = el.get("CONTENT", "")
            if not spaces_from_sp and parts and content:
                previous = parts[-1]
                if previous and not (_unspaced(previous[-1]) and _unspaced(content[0])):
                    parts.append(" ")
            parts.append(content)
        elif tag == "SP" and spaces_from_sp:
            parts.append(" ")
    return "".join(parts).strip()


def _box(line, pixels: bool) -> Box | None:
    if not pixels:
        return None
    try:
        x, y = float(line.get("HPOS")), float(line.get("VPOS"))
        w, h = float(line.get("WIDTH")), float(line.get("HEIGHT"))
    except (TypeError, ValueError):
        return None
    if w <= 0 or h <= 0:
        return None
    return (round(x), round(y), round(x + w), round(y + h))


def read_alto(root) -> list[PageText]:
    """One PageText per ALTO Page (almost always one)."""
    unit = next((el.text for el in root.iter("{*}MeasurementUnit")), None)
    pixels = unit is None or (unit or "").strip() == "pixel"
    spaces_from_sp = next(root.iter("{*}SP"), None) is not None
    pages = []
    for page in root.iter("{*}Page"):
        lines = []
        for line in page.iter("{*}TextLine"):
            text = _line_text(line, spaces_from_sp)
            if text:
                lines.append(TextLine(text, _box(line, pixels)))
        pages.append(PageText(tuple(lines), "alto"))
    return pages
