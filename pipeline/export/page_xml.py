"""PAGE XML 2019-07-15 per page: TextRegion (paragraph) / TextLine / Word with TextEquiv.

PAGE requires a Coords polygon on every region, line and word. Where the run's ALTO gives
positions (line detection) they are used: region boxes, line polygons, Baselines, and word boxes
(estimates interpolated along the line; vertical columns get readingDirection top-to-bottom and
textLineOrder right-to-left). Anything without a known position gets the full page extent,
`0,0 W-1,0 W-1,H-1 0,H-1`: true (the element lies within it) and recognisably "no geometry",
never a made-up box. `Metadata/Comments` says which case the file is.

`imageFilename` is the source file as the run read it; for a PDF or multi-page TIFF the page's
position in it (1-based) is a `MetadataItem type="imageProperties" name="page"`. Words carry
`conf` (the ALTO WC) where the ALTO has one. A page with no ALTO (failed, pending, or a run
that wrote TXT only) gets no PAGE file, even with `--include-failed`: PAGE cannot state an
unknown image size and we will not invent one; the export report lists those pages.
"""

from __future__ import annotations

from lxml import etree

from pipeline import SOFTWARE_NAME, __version__
from pipeline.names import escape_relpath
from pipeline.outputs.alto import XSI_NS

from .geometry import LineGeometry, box_points, points_text
from .options import ExportOptions
from .pages import ExportDocument, ExportPage, PageContent, line_text

PAGE_NS = "http://schema.primaresearch.org/PAGE/gts/pagecontent/2019-07-15"
SCHEMA_LOCATION = f"{PAGE_NS} {PAGE_NS}/pagecontent.xsd"
FOLDER = "page"
MIMETYPE = "application/vnd.prima.page+xml"
WITH_GEOMETRY = (
    "Region and line Coords and Baselines are the detected positions of the lines; word Coords "
    "are estimates spread along the line by character counts; an element whose Coords is the "
    "full page extent has no known position."
)
NO_GEOMETRY = (
    "Transcribed by a model that reads whole pages and gives no positions: every Coords is "
    "the full page extent, not the location of a region, line or word."
)
_P = f"{{{PAGE_NS}}}"
_EPOCH = "1970-01-01T00:00:00+00:00"  # only if neither the ALTO nor the store has a time


def file_name(number: int) -> str:
    return f"{FOLDER}/{number:04d}.xml"


def _sub(parent, tag: str, text: str | None = None, **attrs: str):
    el = etree.SubElement(parent, _P + tag, attrs)
    el.text = text
    return el


def _text_equiv(parent, text: str, conf: float | None = None) -> None:
    attrs = {} if conf is None else {"conf": str(conf)}
    _sub(_sub(parent, "TextEquiv", **attrs), "Unicode", text)


def _line_coords(line_el, where: LineGeometry | None, page_points: str) -> None:
    """Coords (the detected polygon, else the line's box, else the page) and Baseline."""
    if where is not None and where.polygon:
        _sub(line_el, "Coords", points=points_text(where.polygon))
    elif where is not None and where.box:
        _sub(line_el, "Coords", points=box_points(where.box))
    else:
        _sub(line_el, "Coords", points=page_points)
    if where is not None and where.baseline:
        _sub(line_el, "Baseline", points=points_text(where.baseline))


def build_page(doc: ExportDocument, page: ExportPage, content: PageContent) -> bytes:
    """Serialise one page; `content` must come from an ALTO (it has the image size)."""
    width, height = content.width or 0, content.height or 0
    right, bottom = max(width - 1, 0), max(height - 1, 0)
    points = f"0,0 {right},0 {right},{bottom} 0,{bottom}"
    n = page.number
    root = etree.Element(_P + "PcGts", nsmap={None: PAGE_NS, "xsi": XSI_NS}, pcGtsId=f"p{n}")
    root.set(f"{{{XSI_NS}}}schemaLocation", SCHEMA_LOCATION)
    meta = _sub(root, "Metadata")
    _sub(meta, "Creator", f"{SOFTWARE_NAME} {__version__}")
    _sub(meta, "Created", content.processed_at or _EPOCH)
    _sub(meta, "LastChange", content.processed_at or _EPOCH)
    geometry = content.geometry
    _sub(meta, "Comments", WITH_GEOMETRY if geometry is not None else NO_GEOMETRY)
    _sub(meta, "MetadataItem", type="imageProperties", name="page", value=str(n))
    attrs = {"imageFilename": escape_relpath(doc.path), "imageWidth": str(width)}
    attrs["imageHeight"] = str(height)
    if content.confidence is not None:
        attrs["conf"] = str(content.confidence)
    page_el = _sub(root, "Page", **attrs)
    if content.blocks:
        group = _sub(_sub(page_el, "ReadingOrder"), "OrderedGroup", id=f"p{n}_ro")
        for b in range(1, len(content.blocks) + 1):
            _sub(group, "RegionRefIndexed", index=str(b - 1), regionRef=f"p{n}_r{b}")
    for b, block in enumerate(content.blocks, start=1):
        lines = geometry.lines[b - 1] if geometry else ()
        attrs = {"id": f"p{n}_r{b}", "type": "paragraph"}
        if lines and all(line.vertical for line in lines):
            attrs.update(readingDirection="top-to-bottom", textLineOrder="right-to-left")
        region = _sub(page_el, "TextRegion", **attrs)
        block_box = geometry.blocks[b - 1] if geometry else None
        _sub(region, "Coords", points=box_points(block_box) if block_box else points)
        line_texts = []
        for i, line in enumerate(block, start=1):
            line_el = _sub(region, "TextLine", id=f"p{n}_r{b}_l{i}")
            where = lines[i - 1] if lines else None
            _line_coords(line_el, where, points)
            for w, word in enumerate(line, start=1):
                word_el = _sub(line_el, "Word", id=f"p{n}_r{b}_l{i}_w{w}")
                word_box = geometry.words[b - 1][i - 1][w - 1] if geometry else None
                _sub(word_el, "Coords", points=box_points(word_box) if word_box else points)
                _text_equiv(word_el, word.content, word.confidence)
            text = line_text(line)
            _text_equiv(line_el, text)
            line_texts.append(text)
        _text_equiv(region, "\n".join(line_texts))
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + etree.tostring(
        root, encoding="UTF-8", pretty_print=True
    )


def render(doc: ExportDocument, options: ExportOptions) -> dict[str, bytes]:
    """{page/NNNN.xml: bytes} for every page that has an ALTO."""
    return {
        file_name(page.number): build_page(doc, page, page.content)
        for page in doc.pages
        if page.content is not None and page.content.alto is not None
    }
