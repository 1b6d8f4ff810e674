"""`--pdfa`: the searchable PDF declared PDF/A-2b, after the checks that can be made here.

What this adds: XMP metadata that says PDF/A-2 conformance B (`pdfaid:part` 2,
`pdfaid:conformance` B) and agrees with the document information dictionary (pikepdf writes
both), and an sRGB OutputIntent (`GTS_PDFA1`) whose ICC profile is littleCMS's built-in sRGB
(from Pillow's ImageCms), which device RGB and gray images need. The text layer's font is
embedded with its ToUnicode map; the file keeps a trailer /ID.

What is checked, and refused with a reason when it fails (the document then gets no PDF, the
report says why): the source is not encrypted; every font that any page or Form XObject uses
has its program embedded (Type 3 fonts are their own programs); no stream uses LZW, which
PDF/A forbids; no image is in DeviceCMYK, which an RGB OutputIntent does not cover; the
file's version is at most 1.7.

What is NOT checked, because no PDF/A validator (veraPDF) is installable here: everything else
in ISO 19005-2 that a source PDF may break (annotation appearances, actions and JavaScript,
transparency groups, optional content, embedded files, XMP extension schemas of existing
metadata, font width consistency of the source's own fonts, JPEG 2000 constraints). A source
made by a scanner (images plus at most our text) has none of these; for any other, validate the
result before archiving it.
"""

from __future__ import annotations

import functools
import struct

import pikepdf
from PIL import ImageCms

from pipeline import SOFTWARE_NAME, __version__

_FONT_FILES = ("/FontFile", "/FontFile2", "/FontFile3")


class NotArchivable(Exception):
    """The PDF cannot honestly be declared PDF/A-2b; the message says what is in the way."""


# The ICC header's creation date (bytes 24-35: year, month, day, hour, minute, second as
# big-endian uint16). littleCMS stamps the current time there, so a PDF built across a second
# boundary differed from one built just before; the profile carries no ID (an MD5 over the
# header) that the fixed date would invalidate.
ICC_DATE = slice(24, 36)
ICC_FIXED_DATE = struct.pack(">6H", 2000, 1, 1, 0, 0, 0)


@functools.cache
def _srgb_profile() -> bytes:
    """littleCMS's sRGB profile with a fixed creation date: the same bytes in every export."""
    icc = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    icc[ICC_DATE] = ICC_FIXED_DATE
    return bytes(icc)


def _font_embedded(font: pikepdf.Dictionary) -> bool:
    if font.get("/Subtype") == "/Type3":
        return True
    if font.get("/Subtype") == "/Type0":
        return all(_font_embedded(f) for f in font.get("/DescendantFonts", []))
    descriptor = font.get("/FontDescriptor")
    return descriptor is not None and any(k in descriptor for k in _FONT_FILES)


def _problems(pdf: pikepdf.Pdf) -> list[str]:
    problems = []
    if pdf.is_encrypted:
        problems.append("it is encrypted")
    if pdf.pdf_version > "1.7":
        problems.append(f"it is PDF {pdf.pdf_version}, newer than PDF/A-2 allows")
    for obj in pdf.objects:
        if not isinstance(obj, pikepdf.Dictionary | pikepdf.Stream):
            continue
        kind = obj.get("/Type")
        if kind == "/Font" and not _font_embedded(obj):
            problems.append(f"font {obj.get('/BaseFont', '?')} is not embedded")
        if isinstance(obj, pikepdf.Stream):
            filters = obj.get("/Filter")
            names = filters if isinstance(filters, pikepdf.Array) else [filters]
            if pikepdf.Name.LZWDecode in [n for n in names if n is not None]:
                problems.append("a stream is LZW-compressed")
            if obj.get("/Subtype") == "/Image" and obj.get("/ColorSpace") == "/DeviceCMYK":
                problems.append("an image is in DeviceCMYK")
    return sorted(set(problems))


def make_pdfa(pdf: pikepdf.Pdf, title: str) -> None:
    """Declare `pdf` PDF/A-2b in place; raises NotArchivable when the checks above fail."""
    problems = _problems(pdf)
    if problems:
        raise NotArchivable(
            "it cannot be PDF/A-2b: "
            + "; ".join(problems[:5])
            + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else "")
            + "; export without --pdfa"
        )
    profile = pdf.make_stream(_srgb_profile(), N=3)
    intent = pikepdf.Dictionary(
        Type=pikepdf.Name.OutputIntent,
        S=pikepdf.Name.GTS_PDFA1,
        OutputConditionIdentifier="sRGB",
        Info="sRGB IEC61966-2.1",
        DestOutputProfile=profile,
    )
    pdf.Root.OutputIntents = pikepdf.Array([pdf.make_indirect(intent)])
    # No dates are set, so the same pages always give the same bytes.
    with pdf.open_metadata(set_pikepdf_as_editor=False) as meta:
        meta.load_from_docinfo(pdf.docinfo)  # the source's own Info entries, kept in both
        meta["pdfaid:part"] = "2"
        meta["pdfaid:conformance"] = "B"
        meta["dc:title"] = title
        meta["pdf:Producer"] = f"{SOFTWARE_NAME} {__version__}"
