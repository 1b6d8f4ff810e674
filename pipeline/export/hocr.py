"""hOCR (XHTML) per document: ocr_page > ocr_carea > ocr_par > ocr_line > ocrx_word.

Only what is known goes into `title`: `bbox 0 0 W H` on a page whose image size the ALTO gives
(the hOCR page box is the page size), `x_wconf` (0-100, the ALTO WC as a percentage) on words
that have one, and `bbox` on areas, lines and words where the ALTO gives their position (line
detection; word boxes are estimates spread along the line); vertical lines (ALTO BASEDIRECTION
ttb) carry `textangle 90`. Nothing gets a bbox the ALTO does not give.
`image` names the source file as the run read it and `ppageno` the page's 0-based position in
it, as hOCR counts physical pages. Spaces between words exist only where the ALTO has an SP,
so the text of each ocr_line is exactly the transcribed line (CJK included).

A placeholder page (`--include-failed`) is an empty ocr_page whose title says
`x_status failed` (or pending/missing) next to an XML comment, never a page with no words.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

from lxml import etree

from pipeline import SOFTWARE_NAME, __version__
from pipeline.names import escape_relpath
from pipeline.outputs.alto import xml_safe_text as xml_text

from .geometry import Box
from .options import ExportOptions
from .pages import ExportDocument, ExportPage, Line, PageContent

FILE_NAME = "hocr.html"
XHTML_NS = "http://www.w3.org/1999/xhtml"
DOCTYPE = (
    '<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Transitional//EN" '
    '"http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd">'
)
CAPABILITIES = "ocr_page ocr_carea ocr_par ocr_line ocrx_word ocrp_wconf"
_H = f"{{{XHTML_NS}}}"


def _el(parent, tag: str, tail: str | None = "\n", **attrs: str):
    el = etree.SubElement(parent, _H + tag, attrs)
    el.tail = tail
    return el


def _quoted(value: str) -> str:
    """A title-property string: double-quoted, with backslash and quote escaped."""
    return '"' + xml_text(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _page_title(doc: ExportDocument, page: ExportPage) -> str:
    props = [f"image {_quoted(escape_relpath(doc.path))}"]
    content = page.content
    if content is not None and content.width and content.height:
        props.append(f"bbox 0 0 {content.width} {content.height}")
    props.append(f"ppageno {page.number - 1}")
    if content is None:
        props.append(f"x_status {page.state}")
    return "; ".join(props)


def _bbox(box: Box) -> str:
    return "bbox {} {} {} {}".format(*box)


def _line(par, line_id: str, line: Line, word_ids: Iterator[str], where=None, boxes=()) -> None:
    attrs = {"class": "ocr_line", "id": line_id}
    if where is not None and where.box:
        attrs["title"] = _bbox(where.box) + ("; textangle 90" if where.vertical else "")
    line_el = _el(par, "span", **attrs)
    previous = None
    for w, word in enumerate(line):
        if word.space_before:
            if previous is None:
                line_el.text = (line_el.text or "") + " "
            else:
                previous.tail = (previous.tail or "") + " "
        attrs = {"class": "ocrx_word", "id": next(word_ids)}
        props = [_bbox(boxes[w])] if w < len(boxes) and boxes[w] else []
        if word.confidence is not None:
            props.append(f"x_wconf {round(word.confidence * 100)}")
        if props:
            attrs["title"] = "; ".join(props)
        previous = _el(line_el, "span", tail=None, **attrs)
        previous.text = word.content


def _content(page_el, number: int, content: PageContent) -> None:
    line_ids = (f"line_{number}_{i}" for i in itertools.count(1))
    word_ids = (f"word_{number}_{i}" for i in itertools.count(1))
    geometry = content.geometry
    for b, block in enumerate(content.blocks, start=1):
        box = geometry.blocks[b - 1] if geometry else None
        where = {"title": _bbox(box)} if box else {}
        area = _el(page_el, "div", **{"class": "ocr_carea", "id": f"block_{number}_{b}"}, **where)
        area.text = "\n"
        par = _el(area, "p", **{"class": "ocr_par", "id": f"par_{number}_{b}"}, **where)
        par.text = "\n"
        for i, line in enumerate(block):
            if geometry:
                lg, boxes = geometry.lines[b - 1][i], geometry.words[b - 1][i]
                _line(par, next(line_ids), line, word_ids, lg, boxes)
            else:
                _line(par, next(line_ids), line, word_ids)


def build_hocr(doc: ExportDocument, pages: list[ExportPage]) -> bytes:
    html = etree.Element(_H + "html", nsmap={None: XHTML_NS})
    html.text = "\n"
    head = _el(html, "head")
    head.text = "\n"
    _el(head, "title").text = escape_relpath(doc.relpath)
    meta = {"http-equiv": "Content-Type", "content": "text/html; charset=utf-8"}
    _el(head, "meta", **meta)
    _el(head, "meta", name="ocr-system", content=f"{SOFTWARE_NAME} {__version__}")
    _el(head, "meta", name="ocr-capabilities", content=CAPABILITIES)
    _el(head, "meta", name="ocr-number-of-pages", content=str(len(pages)))
    body = _el(html, "body")
    body.text = "\n"
    for page in pages:
        page_el = _el(
            body,
            "div",
            **{"class": "ocr_page", "id": f"page_{page.number}", "title": _page_title(doc, page)},
        )
        page_el.text = "\n"
        if page.content is None:
            page_el.append(etree.Comment(f" not transcribed: {page.state} "))
            page_el[-1].tail = "\n"
        else:
            _content(page_el, page.number, page.content)
    return (
        b'<?xml version="1.0" encoding="UTF-8"?>\n'
        + DOCTYPE.encode("ascii")
        + b"\n"
        + etree.tostring(html, encoding="UTF-8")
        + b"\n"
    )


def render(doc: ExportDocument, options: ExportOptions) -> dict[str, bytes]:
    """{hocr.html: bytes} with the transcribed pages (and placeholders if asked), in order."""
    pages = [p for p in doc.pages if p.content is not None or options.include_failed]
    return {FILE_NAME: build_hocr(doc, pages)}
