"""METS per document: the source file, the delivered ALTO (and PAGE) files, and page order.

Layout, chosen to validate against METS 1.12 and to read the way METS/ALTO consumers expect:

- `metsHdr` names the producing software: agent ROLE=CREATOR TYPE=OTHER OTHERTYPE=SOFTWARE,
  name `anandasky-batch <version>`; CREATEDATE is the latest recognition time of the document's
  pages (not the export time, so re-exporting unchanged results gives identical bytes).
- fileGrp USE=IMAGE holds one file, the source document as the run read it: FLocat LOCTYPE=URL
  with its `file://` URI, plus SIZE and SHA-256 CHECKSUM so the transcription stays tied to that
  exact file. METS has no begin/end type for "page n of a PDF", so a page of a PDF or of a
  multi-page TIFF points into it with `fptr/area FILEID=IMG ORDER=n` (n = 1-based page in the
  source), the validating form METS offers; a single-image source is a plain `fptr FILEID=IMG`.
- fileGrp USE=FULLTEXT holds the per-page ALTO files (and USE=PAGE the PAGE XML files, when
  exported), with relative hrefs inside the document folder, SIZE and SHA-256 CHECKSUM.
  The document-wide text, hOCR and searchable PDF files, when exported, are in USE=TEXT /
  USE=HOCR / USE=PDF and hang off the physSequence div.
- structMap TYPE=PHYSICAL: div TYPE=physSequence, then one div TYPE=page per delivered page
  with ORDER = its page number in the source (a gap means a page without a transcription) and
  fptrs to image and ALTO. A placeholder page (`--include-failed`) has the image fptr only and
  LABEL "not transcribed: failed" (or pending/missing).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from lxml import etree

from pipeline import SOFTWARE_NAME, __version__
from pipeline.names import escape_relpath
from pipeline.outputs.alto import XSI_NS

from . import alto_pages, hocr, page_xml, txt
from .options import PDF_FILE_NAME, ExportOptions
from .pages import ExportDocument, ExportPage

METS_NS = "http://www.loc.gov/METS/"
XLINK_NS = "http://www.w3.org/1999/xlink"
SCHEMA_LOCATION = f"{METS_NS} http://www.loc.gov/standards/mets/mets.xsd"
FILE_NAME = "mets.xml"
IMAGE_ID = "IMG"
# By extension, not the `mimetypes` module: its answers depend on the machine's mime.types.
_MIMETYPES = {
    ".pdf": "application/pdf",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".jp2": "image/jp2",
    ".j2k": "image/jp2",
    ".jpx": "image/jpx",
    ".webp": "image/webp",
    ".bmp": "image/bmp",
    ".gif": "image/gif",
}
_M = f"{{{METS_NS}}}"


def _sub(parent, tag: str, text: str | None = None, **attrs: str):
    el = etree.SubElement(parent, _M + tag, attrs)
    el.text = text
    return el


def source_mimetype(relpath: str) -> str:
    return _MIMETYPES.get(PurePosixPath(relpath).suffix.lower(), "application/octet-stream")


def _add_file(group, file_id: str, mimetype: str, href: str, data: bytes | None = None, **extra):
    attrs = {"ID": file_id, "MIMETYPE": mimetype, **extra}
    if data is not None:
        attrs.update(SIZE=str(len(data)), CHECKSUM=hashlib.sha256(data).hexdigest())
        attrs["CHECKSUMTYPE"] = "SHA-256"
    file_el = _sub(group, "file", **attrs)
    _sub(file_el, "FLocat", LOCTYPE="URL", **{f"{{{XLINK_NS}}}href": href})


def _header(root, doc: ExportDocument) -> None:
    times = [p.content.processed_at for p in doc.pages if p.content and p.content.processed_at]
    hdr = _sub(root, "metsHdr", **({"CREATEDATE": max(times)} if times else {}))
    agent = _sub(hdr, "agent", ROLE="CREATOR", TYPE="OTHER", OTHERTYPE="SOFTWARE")
    _sub(agent, "name", f"{SOFTWARE_NAME} {__version__}")


def _image_pointer(div, page: ExportPage, paged: bool) -> None:
    if paged:
        _sub(_sub(div, "fptr"), "area", FILEID=IMAGE_ID, ORDER=str(page.number))
    else:
        _sub(div, "fptr", FILEID=IMAGE_ID)


def build_mets(doc: ExportDocument, options: ExportOptions, files: Mapping[str, bytes]) -> bytes:
    """`files`: everything else exported for this document, by name in its folder."""
    root = etree.Element(_M + "mets", nsmap={"mets": METS_NS, "xlink": XLINK_NS, "xsi": XSI_NS})
    root.set(f"{{{XSI_NS}}}schemaLocation", SCHEMA_LOCATION)
    root.set("LABEL", escape_relpath(doc.relpath))
    _header(root, doc)
    file_sec = _sub(root, "fileSec")
    mimetype = source_mimetype(doc.relpath)
    paged = doc.page_count > 1 or mimetype == "application/pdf"
    image_attrs = {}
    if doc.sha256 and doc.size is not None:
        image_attrs = {"SIZE": str(doc.size), "CHECKSUM": doc.sha256, "CHECKSUMTYPE": "SHA-256"}
    _add_file(
        _sub(file_sec, "fileGrp", USE="IMAGE"),
        IMAGE_ID,
        mimetype,
        Path(doc.path).as_uri(),
        **image_attrs,
    )
    per_page = {"FULLTEXT": ("ALTO", alto_pages.file_name, "text/xml")}
    if "page" in options.formats:
        per_page["PAGE"] = ("PAGE", page_xml.file_name, page_xml.MIMETYPE)
    page_files: dict[int, list[str]] = {}
    for use, (prefix, name_of, page_mimetype) in per_page.items():
        group = _sub(file_sec, "fileGrp", USE=use)
        for page in doc.pages:
            name = name_of(page.number)
            if page.content is not None and name in files:  # never a placeholder
                file_id = f"{prefix}_{page.number:04d}"
                _add_file(group, file_id, page_mimetype, name, files[name])
                page_files.setdefault(page.number, []).append(file_id)
        if not len(group):
            file_sec.remove(group)  # a fileGrp must hold at least one file
    whole = {
        "TEXT": (txt.DOCUMENT_FILE, "text/plain"),
        "HOCR": (hocr.FILE_NAME, "text/html"),
        "PDF": (PDF_FILE_NAME, "application/pdf"),
    }
    whole_ids = []
    for use, (name, whole_mimetype) in whole.items():
        if name in files:
            _add_file(_sub(file_sec, "fileGrp", USE=use), use, whole_mimetype, name, files[name])
            whole_ids.append(use)

    struct = _sub(root, "structMap", TYPE="PHYSICAL")
    sequence = _sub(struct, "div", ID="PHYS_0000", TYPE="physSequence")
    sequence.set("LABEL", escape_relpath(doc.relpath))
    for file_id in whole_ids:
        _sub(sequence, "fptr", FILEID=file_id)
    for page in doc.pages:
        if page.content is None and not options.include_failed:
            continue
        div = _sub(sequence, "div", ID=f"PHYS_{page.number:04d}", TYPE="page")
        div.set("ORDER", str(page.number))
        if page.content is None:
            div.set("LABEL", f"not transcribed: {page.state}")
        _image_pointer(div, page, paged)
        for file_id in page_files.get(page.number, []):
            _sub(div, "fptr", FILEID=file_id)
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + etree.tostring(
        root, encoding="UTF-8", pretty_print=True
    )


def render(
    doc: ExportDocument, options: ExportOptions, files: Mapping[str, bytes]
) -> dict[str, bytes]:
    return {FILE_NAME: build_mets(doc, options, files)}
