"""The invisible text layer: one PDF page of positioned, unpainted text per document page.

Drawn with fpdf2 (text render mode 3, `TextMode.INVISIBLE`), which writes the font objects,
the ToUnicode map and the text operators; nothing here writes PDF syntax. Each line is one text
run in the document's glyph-less font (`pdf_font`), sized so its ascent and descent fill the
line box's height and horizontally scaled (Tz) so its advance fills the box's width: every word
of a line then lies inside the line's box, at the place its characters' advances give it (an
estimate: the model gives line boxes, not word boxes). A vertical line is the same run turned a
quarter clockwise, reading top to bottom down its box, so a search hit highlights the column.
The scaling is kept within bounds (`_fit`) so poppler still sees words and lines as such.

The layer pages come out in the orientation the page is seen in, with the size the caller asks
for (in points); `pdf_document` places each on its page.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from fpdf import FPDF
from fpdf.enums import TextMode

from . import pdf_font
from .pdf_lines import PageLines, PlacedLine

FONT_KEY = "glyphless"
_FIXED_DATE = datetime(2000, 1, 1, tzinfo=timezone.utc)  # the layer's own date never shows
_MIN_SIZE = 0.1  # points; a degenerate box still gets a (tiny) run
MIN_SCALE, MAX_SCALE = 0.5, 2.5  # horizontal scaling of a run (Tz 50%..250%)


@dataclass(frozen=True)
class LayerPage:
    """A page of the layer: its size in points and its lines in their own pixel space."""

    width: float
    height: float
    lines: PageLines


def _usable_text(text: str) -> str:
    return "".join(c for c in text if pdf_font.usable(c))


def _draw_line(pdf: FPDF, line: PlacedLine, sx: float, sy: float) -> None:
    text = _usable_text(line.text)
    if not text.strip():
        return
    x0, y0, x1, y1 = line.box[0] * sx, line.box[1] * sy, line.box[2] * sx, line.box[3] * sy
    width, height = max(x1 - x0, _MIN_SIZE), max(y1 - y0, _MIN_SIZE)
    # The run's height (ascent + descent) spans the box across the text direction, its
    # advance along it.
    across, along = (width, height) if line.vertical else (height, width)
    size, scale = _fit(pdf, text, across, along)
    offset = (across - size) / 2  # a run set smaller than its box sits in the box's middle
    descent = size * pdf_font.DESCENT / pdf_font.UNITS
    pdf.set_stretching(100.0 * scale)
    if line.vertical:
        # Turned a quarter clockwise around its start: the run goes down the box, its
        # ascent to the right of the baseline and its descent to the left.
        x, y = x0 + offset + descent, y0
        with pdf.rotation(-90, x, y):
            pdf.text(x, y, text)
    else:
        pdf.text(x0, y1 - offset - descent, text)


def _fit(pdf: FPDF, text: str, across: float, along: float) -> tuple[float, float]:
    """(font size, horizontal scale) for a run `across` high that fills `along`.

    The scale stays within MIN_SCALE..MAX_SCALE, so the gap a space leaves stays between
    about 1/8 and 5/8 of the type size: wide enough for poppler to break words there, narrow
    enough that it never takes the gaps of neighbouring lines for a column. A text too long
    for its box is set smaller instead of squeezed further; one too short for it stops short
    of the box's end instead of being pulled further apart. Either way it stays in the box.
    """
    pdf.set_font(FONT_KEY, size=across)
    pdf.set_stretching(100.0)  # fpdf2 measures with the current scaling applied
    natural = pdf.get_string_width(text)
    if natural <= 0:
        return across, 1.0
    scale = along / natural
    if scale < MIN_SCALE:
        size = across * scale / MIN_SCALE
        pdf.set_font(FONT_KEY, size=size)
        return size, MIN_SCALE
    return across, min(scale, MAX_SCALE)


def _draw_page(pdf: FPDF, page: LayerPage) -> None:
    pdf.add_page(format=(page.width, page.height))
    lines = page.lines
    sx = page.width / lines.width if lines.width else 1.0
    sy = page.height / lines.height if lines.height else 1.0
    for line in lines.lines:
        _draw_line(pdf, line, sx, sy)


def text_layer(pages: Sequence[LayerPage]) -> bytes:
    """A PDF with one page per `LayerPage`, in order, holding only invisible text."""
    chars = {c for page in pages for line in page.lines.lines for c in line.text}
    pdf = FPDF(unit="pt", format=(pages[0].width, pages[0].height) if pages else "A4")
    pdf.set_margins(0, 0, 0)
    pdf.set_auto_page_break(False)
    pdf.set_creation_date(_FIXED_DATE)
    pdf.set_compression(True)
    with tempfile.TemporaryDirectory(prefix="anandasky-font-") as tmp:
        font_path = Path(tmp, "glyphless.ttf")  # fpdf2 loads fonts from files only
        font_path.write_bytes(pdf_font.glyphless_font(chars))
        pdf.add_font(FONT_KEY, fname=str(font_path))
        pdf.text_mode = TextMode.INVISIBLE
        for page in pages:
            _draw_page(pdf, page)
        return bytes(pdf.output())
