"""ALTO 4.4 per page: the run's own files, byte for byte, under the document's folder.

They are the source of truth (words and WC), so the export copies rather than regenerates them.
A placeholder for a page without a transcription (`--include-failed`) is a valid ALTO whose Page
has no PrintSpace at all (an empty page would have one), `QUALITY_DETAIL` saying why, and a
Processing step that describes the failure; no WIDTH/HEIGHT, because the page was never measured.
"""

from __future__ import annotations

from lxml import etree

from pipeline import SOFTWARE_NAME, __version__
from pipeline.names import escape_relpath
from pipeline.outputs.alto import ALTO_NS, SCHEMA_LOCATION, XSI_NS
from pipeline.outputs.alto import xml_safe_text as xml_text

from .options import ExportOptions
from .pages import ExportDocument, ExportPage

FOLDER = "alto"
_A = f"{{{ALTO_NS}}}"


def file_name(number: int) -> str:
    return f"{FOLDER}/{number:04d}.xml"


def placeholder_note(page: ExportPage) -> str:
    note = f"not transcribed: {page.state}"
    return f"{note}: {page.error}" if page.error else note


def _sub(parent, tag: str, text: str | None = None, **attrs: str):
    el = etree.SubElement(parent, _A + tag, attrs)
    el.text = text
    return el


def placeholder(doc: ExportDocument, page: ExportPage) -> bytes:
    """A marked stand-in for a page that has no ALTO of its own."""
    root = etree.Element(_A + "alto", nsmap={None: ALTO_NS, "xsi": XSI_NS}, SCHEMAVERSION="4.4")
    root.set(f"{{{XSI_NS}}}schemaLocation", SCHEMA_LOCATION)
    root.append(etree.Comment(f" {SOFTWARE_NAME}: placeholder, page {page.number} {page.state} "))
    desc = _sub(root, "Description")
    _sub(desc, "MeasurementUnit", "pixel")
    _sub(_sub(desc, "sourceImageInformation"), "fileName", escape_relpath(doc.relpath))
    step = _sub(desc, "Processing", ID="proc1")
    _sub(step, "processingCategory", "other")
    _sub(step, "processingStepDescription", xml_text(placeholder_note(page)))
    software = _sub(step, "processingSoftware")
    _sub(software, "softwareName", SOFTWARE_NAME)
    _sub(software, "softwareVersion", __version__)
    n = page.number
    detail = xml_text(placeholder_note(page))
    _sub(
        _sub(root, "Layout"),
        "Page",
        ID=f"p{n}",
        PHYSICAL_IMG_NR=str(n),
        PROCESSINGREFS="proc1",
        QUALITY_DETAIL=detail,
    )
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + etree.tostring(
        root, encoding="UTF-8", pretty_print=True
    )


def render(doc: ExportDocument, options: ExportOptions) -> dict[str, bytes]:
    """{alto/NNNN.xml: bytes}; a TXT-only page has no ALTO and is reported, not faked."""
    files = {}
    for page in doc.pages:
        if page.content is not None:
            if page.content.alto is not None:
                files[file_name(page.number)] = page.content.alto
        elif options.include_failed:
            files[file_name(page.number)] = placeholder(doc, page)
    return files
