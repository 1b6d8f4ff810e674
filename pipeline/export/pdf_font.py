"""A glyph-less TrueType font for the invisible text layer, made for the characters it carries.

The layer's text must be searchable and copyable in every script without anything showing: the
font maps each character to a glyph of its own that has no outline (so no viewer can paint it,
even one that ignores render mode 3) and an advance width (so a run can be stretched to its line
box and a word's position in the line estimated). No shipped font covers every script, and a
font with a glyph for all of Unicode would exceed TrueType's 65,535 glyphs, so one is built per
document with fontTools, holding exactly the characters the document uses: a few hundred bytes,
a few milliseconds. Wide (CJK) characters advance twice as far as the others, as in print.
"""

from __future__ import annotations

import io
import unicodedata
from collections.abc import Iterable

from fontTools.fontBuilder import FontBuilder
from fontTools.pens.ttGlyphPen import TTGlyphPen

FAMILY = "AnandaskyGlyphless"
UNITS = 1000
ASCENT = 800  # of UNITS; the layer puts a line's baseline this far down its box
DESCENT = 200
NARROW, WIDE = 500, 1000
# The head table's created/modified dates (seconds since 1904): fixed, not fontTools' clock, so a
# document's font, and so its PDF, has the same bytes whenever it is built (2000-01-01).
FONT_DATE = 3029529600


SPACE = 250  # a quarter em, as in print: keeps the gap between words narrower than a column gap


def advance(char: str) -> int:
    """Advance width in font units: East Asian wide/full-width characters take a square."""
    if char == " ":
        return SPACE
    return WIDE if unicodedata.east_asian_width(char) in ("W", "F") else NARROW


def glyph_name(codepoint: int) -> str:
    return f"u{codepoint:04X}"


def usable(char: str) -> bool:
    """Characters a PDF string can carry as text: no controls, no surrogates, no specials."""
    return unicodedata.category(char) not in ("Cc", "Cs") and ord(char) not in (0xFFFE, 0xFFFF)


def glyphless_font(chars: Iterable[str]) -> bytes:
    """TrueType bytes: one outline-less glyph with an advance for each usable character."""
    codepoints = sorted({ord(c) for c in chars if usable(c)} | {ord(" ")})
    names = [".notdef", *(glyph_name(cp) for cp in codepoints)]
    builder = FontBuilder(UNITS, isTTF=True)
    builder.setupGlyphOrder(names)
    builder.setupCharacterMap({cp: glyph_name(cp) for cp in codepoints})
    empty = TTGlyphPen(None).glyph()
    builder.setupGlyf({name: empty for name in names})
    metrics = {".notdef": (NARROW, 0)}
    metrics.update({glyph_name(cp): (advance(chr(cp)), 0) for cp in codepoints})
    builder.setupHorizontalMetrics(metrics)
    builder.setupHorizontalHeader(ascent=ASCENT, descent=-DESCENT)
    builder.setupNameTable({"familyName": FAMILY, "styleName": "Regular"})
    builder.setupOS2(
        sTypoAscender=ASCENT,
        sTypoDescender=-DESCENT,
        usWinAscent=ASCENT,
        usWinDescent=DESCENT,
        fsType=0,  # installable embedding: nothing restricts copying the text
    )
    builder.setupPost()
    builder.font["head"].created = builder.font["head"].modified = FONT_DATE
    builder.font.recalcTimestamp = False  # saving would stamp `modified` with the time
    out = io.BytesIO()
    builder.save(out)
    return out.getvalue()
