"""Read one ground-truth or prediction file, whatever its format, into pages of lines.

The format is recognised from the content, not the name: an XML root `alto` is ALTO, `PcGts`
is PAGE, an HTML document with `ocr_page` elements is hOCR, anything else must be UTF-8 text
(a form feed separates pages, as `export` writes a document's text). A byte-order mark is
honoured in both: Windows tools save UTF-8 with one, or UTF-16 ("Unicode"). A file that cannot
be read raises `UnreadableFile`, which the evaluation lists against the file.
"""

from __future__ import annotations

import codecs
from pathlib import Path

from lxml import etree, html

from .read_alto import read_alto
from .read_hocr import read_hocr
from .read_page import read_page
from .records import PageText, TextLine

FORMATS = ("alto", "page", "hocr", "text")
# Names a reader accepts in a folder; other files (images, JSON, ...) are not transcriptions.
SUFFIXES = (".xml", ".alto", ".page", ".hocr", ".html", ".htm", ".xhtml", ".txt")


class UnreadableFile(Exception):
    """A file that is not ALTO, PAGE, hOCR or UTF-8 text, or is damaged; str() says why."""


def _xml_root(data: bytes):
    parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=True)
    return etree.fromstring(data, parser)


# UTF-32 first: its little-endian mark begins with UTF-16's.
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
    (codecs.BOM_UTF8, "utf-8-sig"),
)


def _bom_encoding(data: bytes) -> str | None:
    return next((enc for bom, enc in _BOMS if data.startswith(bom)), None)


def _text_pages(data: bytes, encoding: str | None) -> list[PageText]:
    try:
        text = data.decode(encoding or "utf-8")
    except UnicodeDecodeError as exc:
        raise UnreadableFile(
            f"not {'UTF-8' if encoding is None else encoding.upper()} text ({exc.reason} at byte "
            f"{exc.start}); save it as UTF-8 (e.g. `iconv -f latin1 -t utf-8` for Latin-1)"
        ) from None
    pages = text.removesuffix("\n").split("\f") if text.strip() else [""]
    return [
        PageText(tuple(TextLine(s.strip()) for s in page.split("\n") if s.strip()), "text")
        for page in pages
    ]


def read_pages(path: Path) -> list[tuple[int | None, PageText]]:
    """[(page number the file states or None, page)] in file order."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UnreadableFile(f"cannot be read ({exc.strerror or exc})") from None
    encoding = _bom_encoding(data)
    start = data[:2048].decode(encoding, "ignore").encode() if encoding else data[:2048]
    head = start.lstrip()[:512].lower()
    if head.startswith(b"<"):  # lxml reads the mark (and an encoding declaration) itself
        return _markup_pages(data, head)
    return [(None, p) for p in _text_pages(data, encoding)]


def _markup_pages(data: bytes, head: bytes) -> list[tuple[int | None, PageText]]:
    looks_html = b"<html" in head or b"<!doctype html" in head
    try:
        root = _xml_root(data)
    except etree.XMLSyntaxError as exc:
        if not looks_html:
            raise UnreadableFile(f"not well-formed XML ({exc})") from None
        try:
            root = html.document_fromstring(data)
        except (etree.ParserError, ValueError) as exc2:
            raise UnreadableFile(f"not readable HTML ({exc2})") from None
    name = etree.QName(root).localname.lower() if isinstance(root.tag, str) else ""
    if name == "alto":
        return [(None, p) for p in read_alto(root)]
    if name == "pcgts":
        return [(None, p) for p in read_page(root)]
    if name == "html":
        pages = read_hocr(root)
        if pages:
            return pages
        raise UnreadableFile("HTML without hOCR `ocr_page` elements")
    raise UnreadableFile(f"XML root <{name}> is neither ALTO, PAGE nor hOCR")


def page_format(path: Path) -> str | None:
    """alto | page | hocr | text from the file name alone, for choosing between siblings."""
    name = path.name.lower()
    if name.endswith((".alto.xml", ".alto")):
        return "alto"
    if name.endswith((".page.xml", ".page")):
        return "page"
    if name.endswith((".hocr", ".html", ".htm", ".xhtml")):
        return "hocr"
    if name.endswith(".txt"):
        return "text"
    return "alto" if name.endswith(".xml") else None
