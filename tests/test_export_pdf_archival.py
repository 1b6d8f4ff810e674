"""`--pdfa`: what the PDF/A-2b declaration adds and what it refuses, read back with pikepdf,
Pillow's ImageCms and poppler. No PDF/A validator (veraPDF) is installable here, so these
tests pin exactly the parts `pdf_archival` claims to check and add, nothing more."""

from __future__ import annotations

import hashlib
import io
import subprocess
from pathlib import Path

import pikepdf
import pytest
from conftest import TESTDATA
from PIL import Image, ImageCms
from test_export_pdf_layer import LATIN, LATIN_JPG, alto_page, document, normalised, pdf_of

from pipeline.errors import BadArguments
from pipeline.export.options import ExportOptions
from pipeline.export.pages import ExportDocument, ExportPage
from pipeline.export.pdf_archival import ICC_DATE, ICC_FIXED_DATE
from pipeline.export.pdf_document import PdfUnavailable, build_pdf

PDFA_ID = "http://www.aiim.org/pdfa/ns/id/"


@pytest.fixture
def archival(tmp_path) -> tuple[bytes, Path]:
    source = pdf_of(LATIN_JPG, tmp_path)
    w, h = Image.open(LATIN_JPG).size
    alto = alto_page(w, h, [{"lines": [(LATIN[0], (300, 400, 2000, 120), None)]}])
    doc = document(source, alto)
    data = build_pdf(doc, pdfa=True)
    assert build_pdf(doc, pdfa=True) == data, "the same pages give the same bytes"
    path = tmp_path / "archival.pdf"
    path.write_bytes(data)
    return data, path


def test_pdfa_declares_part_2_conformance_b_in_xmp_agreeing_with_the_info(archival):
    _, path = archival
    with pikepdf.open(path) as pdf:
        meta = pdf.open_metadata()
        assert (meta[f"{{{PDFA_ID}}}part"], meta[f"{{{PDFA_ID}}}conformance"]) == ("2", "B")
        assert str(pdf.docinfo["/Title"]) == meta["dc:title"] == "doc"
        assert str(pdf.docinfo["/Producer"]) == meta["pdf:Producer"]
        assert pdf.trailer.get("/ID") is not None
        assert pdf.pdf_version <= "1.7"


def test_pdfa_has_an_srgb_output_intent_with_a_real_icc_profile(archival):
    _, path = archival
    with pikepdf.open(path) as pdf:
        (intent,) = pdf.Root.OutputIntents
        assert intent.S == pikepdf.Name.GTS_PDFA1 and intent.DestOutputProfile.N == 3
        icc = intent.DestOutputProfile.read_bytes()
    profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
    assert profile.profile.xcolor_space.strip() == "RGB"
    assert "sRGB" in ImageCms.getProfileDescription(profile)
    # A fixed creation date, not littleCMS's clock: builds a second apart give the same bytes.
    assert icc[ICC_DATE] == ICC_FIXED_DATE and icc[84:100] == bytes(16)  # no profile ID


def test_pdfa_keeps_the_text_and_every_font_is_embedded(archival):
    _, path = archival
    text = subprocess.run(["pdftotext", str(path), "-"], capture_output=True, text=True).stdout
    assert normalised(text) == normalised(LATIN[0])
    rows = subprocess.run(["pdffonts", str(path)], capture_output=True, text=True).stdout
    fonts = rows.splitlines()[2:]
    assert fonts and all(line.split()[-5] == "yes" for line in fonts), rows  # emb column


def test_pdfa_is_refused_for_a_source_whose_fonts_are_not_embedded():
    source = TESTDATA / "pages/pdf/vicksburg_sample_ocr_6p.pdf"  # Times-Roman, not embedded
    pages = tuple(ExportPage(n, "pending", None, None) for n in range(1, 7))
    sha = hashlib.sha256(source.read_bytes()).hexdigest()
    doc = ExportDocument("book.pdf", str(source), 6, sha, None, pages)
    with pytest.raises(PdfUnavailable, match="font /Times-Roman is not embedded.*without --pdfa"):
        build_pdf(doc, pdfa=True)
    assert build_pdf(doc).startswith(b"%PDF")  # without --pdfa it is delivered


def test_pdfa_needs_the_pdf_format():
    with pytest.raises(BadArguments, match="--pdfa needs pdf"):
        ExportOptions.make(["txt"], pdfa=True)


def test_pdfa_title_names_a_non_utf8_source_as_the_other_formats_do(tmp_path):
    """The XMP title of a document whose name is not UTF-8: %XX for the stray byte, as in ALTO,
    PAGE, hOCR and METS (pikepdf silently drops a byte it cannot encode: 'caf.jpg')."""
    from dataclasses import replace

    source = pdf_of(LATIN_JPG, tmp_path)
    w, h = Image.open(LATIN_JPG).size
    alto = alto_page(w, h, [{"lines": [(LATIN[0], (300, 400, 2000, 120), None)]}])
    doc = replace(document(source, alto), relpath="box2/caf\udce9.jpg")
    with pikepdf.open(io.BytesIO(build_pdf(doc, pdfa=True))) as pdf:
        assert pdf.open_metadata()["dc:title"] == "box2/caf%E9.jpg"
        assert str(pdf.docinfo["/Title"]) == "box2/caf%E9.jpg"
