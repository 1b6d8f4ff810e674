"""The searchable PDF's text layer with known text on known line boxes, read back by poppler.

Each test writes an ALTO 4.4 page with line geometry (validated against the official XSD),
builds the document's PDF over a real scan from tests/data (made into an image-only PDF with
img2pdf, as a scanner would, or taken as the image itself) and reads it back with the real
`pdftotext`, `pdftotext -bbox-layout` and `pdffonts`: the text must come back line for line,
every word inside its line's box, and no font may carry a glyph that paints.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import subprocess
from pathlib import Path

import img2pdf
import pikepdf
import pytest
from conftest import TESTDATA, assert_valid_alto
from fontTools.ttLib import TTFont
from lxml import etree
from PIL import Image

from pipeline.export.pages import ExportDocument, ExportPage, parse_alto, text_content
from pipeline.export.pdf_document import PdfUnavailable, build_pdf, seen_size
from pipeline.export.pdf_font import FAMILY, FONT_DATE
from pipeline.export.pdf_lines import MIN_SLOTS, page_lines

ALTO_NS = "http://www.loc.gov/standards/alto/ns-v4#"
XHTML = "{http://www.w3.org/1999/xhtml}"
LATIN_JPG = TESTDATA / "pages/handwriting/170025120000003,0074.jpg"
CJK_JPG = TESTDATA / "pages/vertical/jp_vert.jpg"
TOLERANCE = 1.0  # points: poppler rounds glyph extents
BOX_KEYS = ("xMin", "yMin", "xMax", "yMax")

LATIN = ["Příliš žluťoučký kůň", "úpěl ďábelské ódy: Łódź, Straße", "naïve café — Ørsted"]
CJK = ["吾輩は猫である。", "名前はまだ無い。", "どこで生れたか𠀋とんと見当がつかぬ。"]


# ---- building pages -------------------------------------------------------------------------


def alto_page(width: int, height: int, blocks: list[dict]) -> bytes:
    """ALTO 4.4 with geometry. blocks: {box?, direction?, lines: [(text, box?, direction?)]};
    a box is (x, y, w, h) in page pixels, or ("polygon", "x,y x,y ...") for a Shape only."""
    a = f"{{{ALTO_NS}}}"
    root = etree.Element(a + "alto", nsmap={None: ALTO_NS})
    etree.SubElement(
        etree.SubElement(root, a + "Description"), a + "MeasurementUnit"
    ).text = "pixel"
    page = etree.SubElement(
        etree.SubElement(root, a + "Layout"),
        a + "Page",
        ID="p1",
        PHYSICAL_IMG_NR="1",
        WIDTH=str(width),
        HEIGHT=str(height),
    )
    space = etree.SubElement(page, a + "PrintSpace")
    n = 0
    for b, block in enumerate(blocks, start=1):
        block_el = etree.SubElement(space, a + "TextBlock", ID=f"b{b}", **_geometry(block))
        for text, box, direction in block["lines"]:
            n += 1
            attrs = {"ID": f"l{n}", **_geometry({"box": box, "direction": direction})}
            line = etree.SubElement(block_el, a + "TextLine", attrs)
            if box is not None and box[0] == "polygon":
                shape = etree.SubElement(line, a + "Shape")
                etree.SubElement(shape, a + "Polygon", POINTS=box[1])
            for w, word in enumerate(text.split(" ")):
                if w:
                    etree.SubElement(line, a + "SP")
                etree.SubElement(line, a + "String", CONTENT=word)
    data = etree.tostring(root, xml_declaration=True, encoding="UTF-8")
    assert_valid_alto(data)
    return data


def _geometry(spec: dict) -> dict[str, str]:
    attrs = {}
    box = spec.get("box")
    if box is not None and box[0] != "polygon":
        attrs = dict(zip(("HPOS", "VPOS", "WIDTH", "HEIGHT"), map(str, box), strict=True))
    if spec.get("direction"):
        attrs["BASEDIRECTION"] = spec["direction"]
    return attrs


def pdf_of(jpg: Path, tmp_path: Path, rotate: int = 0) -> Path:
    """An image-only PDF of a real scan (what a scanner writes), optionally with /Rotate."""
    pdf = pikepdf.open(io.BytesIO(img2pdf.convert(jpg.read_bytes(), nodate=True)))
    pdf.pages[0].Rotate = rotate
    path = tmp_path / f"{jpg.stem}-{rotate}.pdf"
    pdf.save(path)
    return path


def document(source: Path, alto: bytes) -> ExportDocument:
    page = ExportPage(1, "done", None, parse_alto(alto))
    sha = hashlib.sha256(source.read_bytes()).hexdigest()
    return ExportDocument("doc", str(source), 1, sha, source.stat().st_size, (page,))


def exported(source: Path, alto: bytes, tmp_path: Path) -> Path:
    out = tmp_path / "searchable.pdf"
    out.write_bytes(build_pdf(document(source, alto)))
    return out


def shown_size(source: Path) -> tuple[float, float]:
    with pikepdf.open(source) as pdf:
        return seen_size(pdf.pages[0])


# ---- reading back ---------------------------------------------------------------------------


def pdftotext(path: Path, *args: str) -> str:
    return subprocess.run(
        ["pdftotext", "-enc", "UTF-8", *args, str(path), "-"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def words(path: Path) -> list[tuple[str, tuple[float, float, float, float]]]:
    """(word, (x0, y0, x1, y1)) in points on the page as seen, in poppler's reading order."""
    root = etree.fromstring(pdftotext(path, "-bbox-layout").encode("utf-8"))
    return [(w.text, tuple(float(w.get(k)) for k in BOX_KEYS)) for w in root.iter(f"{XHTML}word")]


def normalised(text: str) -> str:
    return " ".join(text.split())


def in_box(inner, outer, tol: float = TOLERANCE) -> bool:
    return (
        inner[0] >= outer[0] - tol
        and inner[1] >= outer[1] - tol
        and inner[2] <= outer[2] + tol
        and inner[3] <= outer[3] + tol
    )


def line_boxes_pt(alto: bytes, size: tuple[float, float]) -> list[tuple[str, tuple]]:
    """Each line's text and box in points, as the ALTO places it on the page as seen."""
    lines = page_lines(parse_alto(alto), size)
    sx, sy = size[0] / lines.width, size[1] / lines.height
    return [
        (ln.text, (ln.box[0] * sx, ln.box[1] * sy, ln.box[2] * sx, ln.box[3] * sy))
        for ln in lines.lines
    ]


def assert_words_in_their_lines(
    pdf: Path, alto: bytes, size: tuple[float, float], offset: tuple[float, float] = (0, 0)
) -> None:
    """Every word lies inside a line box, and each box's words are exactly its line's text.

    `offset`: where the page as seen starts in poppler's coordinates (which start at the
    MediaBox's top left, not the CropBox's)."""
    dx, dy = offset
    found = [(w, (b[0] - dx, b[1] - dy, b[2] - dx, b[3] - dy)) for w, b in words(pdf)]
    lines = line_boxes_pt(alto, size)
    for text, box in lines:
        centre_in = [
            w
            for w, b in found
            if box[0] <= (b[0] + b[2]) / 2 <= box[2] and box[1] <= (b[1] + b[3]) / 2 <= box[3]
        ]
        assert "".join(centre_in) == text.replace(" ", ""), (text, centre_in)
        for w, b in found:
            if w in centre_in:
                assert in_box(b, box), (w, b, box)
    assert sum(len(t.split()) for t, _ in lines) <= len(found)


# ---- tests ----------------------------------------------------------------------------------


def test_latin_lines_come_back_in_order_with_every_word_inside_its_line_box(tmp_path):
    source = pdf_of(LATIN_JPG, tmp_path)
    w, h = Image.open(LATIN_JPG).size
    boxes = [(300, 400, 2000, 120), (300, 620, 1500, 90), (500, 900, 1900, 200)]
    lines = [(t, b, None) for t, b in zip(LATIN, boxes, strict=True)]
    alto = alto_page(w, h, [{"box": (250, 350, 2200, 800), "lines": lines}])
    pdf = exported(source, alto, tmp_path)
    assert normalised(pdftotext(pdf)) == normalised("\n".join(LATIN))
    assert_words_in_their_lines(pdf, alto, shown_size(source))


def test_vertical_cjk_columns_read_right_to_left_inside_their_boxes(tmp_path):
    """Marked ttb (the block) or only taller than wide (the last column): both are vertical."""
    source = pdf_of(CJK_JPG, tmp_path)
    w, h = Image.open(CJK_JPG).size
    columns = [(w - 200, 100, 80, 900), (w - 320, 100, 80, 700)]  # within 826 x 1169
    marked = {
        "direction": "ttb",
        "lines": [(t, b, None) for t, b in zip(CJK[:2], columns, strict=True)],
    }
    unmarked = {"lines": [(CJK[2], (w - 440, 100, 80, 1000), None)]}
    alto = alto_page(w, h, [marked, unmarked])
    assert all(line.vertical for line in page_lines(parse_alto(alto), (1, 1)).lines)
    pdf = exported(source, alto, tmp_path)
    assert normalised(pdftotext(pdf)) == normalised("\n".join(CJK))
    assert_words_in_their_lines(pdf, alto, shown_size(source))


def test_a_rotated_source_page_gets_its_text_upright_where_the_alto_puts_it(tmp_path):
    """/Rotate 90: the run read the page as seen (wider than high), and so does the layer."""
    source = pdf_of(LATIN_JPG, tmp_path, rotate=90)
    h, w = Image.open(LATIN_JPG).size  # the page as seen is the scan turned a quarter
    lines = [(LATIN[0], (200, 300, 1800, 100), None), (LATIN[1], (200, 700, 2400, 140), None)]
    alto = alto_page(w, h, [{"lines": lines}])
    pdf = exported(source, alto, tmp_path)
    size = shown_size(source)
    assert size[0] > size[1]
    assert normalised(pdftotext(pdf)) == normalised("\n".join(LATIN[:2]))
    assert_words_in_their_lines(pdf, alto, size)


def test_lines_without_coordinates_fill_their_block_box_or_the_page(tmp_path):
    source = pdf_of(LATIN_JPG, tmp_path)
    w, h = Image.open(LATIN_JPG).size
    block_box = (400, 1000, 1600, 600)
    in_block = {"box": block_box, "lines": [(t, None, None) for t in LATIN[:2]]}
    alto = alto_page(w, h, [in_block])
    pdf = exported(source, alto, tmp_path)
    size = shown_size(source)
    sx, sy = size[0] / w, size[1] / h
    area = (400 * sx, 1000 * sy, 2000 * sx, 1600 * sy)
    assert all(in_box(b, area) for _, b in words(pdf))
    assert normalised(pdftotext(pdf)) == normalised("\n".join(LATIN[:2]))

    alto = alto_page(w, h, [{"lines": [(t, None, None) for t in LATIN]}])  # no box anywhere
    pdf = exported(source, alto, tmp_path)
    found = words(pdf)
    assert normalised(pdftotext(pdf)) == normalised("\n".join(LATIN))
    assert all(in_box(b, (0, 0, *size)) for _, b in found)
    # Equal slots down the page, each line at the top of its slot and at most 1/25 as high.
    slot, row = size[1] / len(LATIN), size[1] / MIN_SLOTS
    for i, text in enumerate(LATIN):
        band = (0, i * slot, size[0], i * slot + row)
        assert [w for w, b in found if in_box(b, band)] == text.split(" ")


def test_a_polygon_only_line_goes_on_the_polygon_bounding_box(tmp_path):
    source = pdf_of(LATIN_JPG, tmp_path)
    w, h = Image.open(LATIN_JPG).size
    polygon = ("polygon", "300,500 2100,480 2110,620 310,640")
    alto = alto_page(w, h, [{"lines": [(LATIN[2], polygon, None)]}])
    (line,) = page_lines(parse_alto(alto), (1, 1)).lines
    assert line.box == (300, 480, 2110, 640) and not line.vertical
    pdf = exported(source, alto, tmp_path)
    assert_words_in_their_lines(pdf, alto, shown_size(source))


def test_the_only_font_added_is_glyphless_and_carries_unicode(tmp_path):
    source = pdf_of(CJK_JPG, tmp_path)
    w, h = Image.open(CJK_JPG).size
    alto = alto_page(w, h, [{"lines": [(CJK[2], (100, 100, 1200, 90), None)]}])
    pdf = exported(source, alto, tmp_path)
    listing = subprocess.run(["pdffonts", str(pdf)], capture_output=True, text=True, check=True)
    rows = listing.stdout.splitlines()[2:]
    assert len(rows) == 1, listing.stdout
    name, kind, emb, uni = re.match(
        r"(\S+)\s+(CID TrueType)\s+\S+\s+(\S+)\s+\S+\s+(\S+)", rows[0]
    ).group(1, 2, 3, 4)
    assert name.endswith("+" + FAMILY) and (kind, emb, uni) == ("CID TrueType", "yes", "yes")
    with pikepdf.open(pdf) as doc:
        fonts = [
            f
            for page in doc.pages
            for xobj in page.resources.XObject.values()
            if xobj.get("/Resources") is not None and "/Font" in xobj.Resources
            for f in xobj.Resources.Font.values()
        ]
        assert len(fonts) == 1
        layer = [x for x in doc.pages[0].resources.XObject.values() if "/Resources" in x]
        ops = [str(op) for _, op in pikepdf.parse_content_stream(layer[0])]
        modes = [
            int(operands[0])
            for operands, op in pikepdf.parse_content_stream(layer[0])
            if str(op) == "Tr"
        ]
        assert "Tj" in ops or "TJ" in ops
        assert modes and set(modes) == {3}, "text must be invisible (render mode 3)"
        descriptor = fonts[0].DescendantFonts[0].FontDescriptor
        font = TTFont(io.BytesIO(descriptor.FontFile2.read_bytes()))
    glyf, names = font["glyf"], font.getGlyphOrder()
    assert len(names) >= len(set(CJK[2])), "every character has a glyph of its own"
    assert all(glyf[name].numberOfContours == 0 for name in names), "a glyph paints"
    # Fixed dates, not the clock's: the same pages give the same PDF bytes whenever exported.
    assert font["head"].created == font["head"].modified == FONT_DATE


def test_rendering_the_exported_page_shows_exactly_the_scan(tmp_path):
    """Invisible text in a glyph-less font: pdftoppm paints the same pixels with or without it."""
    source = pdf_of(LATIN_JPG, tmp_path)
    w, h = Image.open(LATIN_JPG).size
    alto = alto_page(w, h, [{"lines": [(LATIN[0], (300, 400, 2000, 300), None)]}])
    pdf = exported(source, alto, tmp_path)
    pixels = []
    for path in (source, pdf):
        png = subprocess.run(
            ["pdftoppm", "-r", "20", "-png", str(path)], capture_output=True, check=True
        ).stdout
        pixels.append(Image.open(io.BytesIO(png)).tobytes())
    assert pixels[0] == pixels[1]


def test_a_changed_source_gets_no_pdf(tmp_path):
    source = pdf_of(LATIN_JPG, tmp_path)
    w, h = Image.open(LATIN_JPG).size
    doc = document(source, alto_page(w, h, [{"lines": [("x", None, None)]}]))
    source.write_bytes(source.read_bytes() + b"\n%changed\n")
    with pytest.raises(PdfUnavailable, match="changed since the run"):
        build_pdf(doc)
    source.unlink()
    with pytest.raises(PdfUnavailable, match="cannot be read"):
        build_pdf(doc)


def test_a_real_transcribed_page_comes_back_line_by_line_inside_its_line_boxes(tmp_path):
    """The BnF GT page (65 lines with HPOS/VPOS boxes, some overlapping, medieval French with
    ⁊, ꝑ and tildes) over its own JPEG, embedded as is: poppler finds each line's words as one
    line of its own, inside the ALTO box."""
    source = TESTDATA / "pages/handwriting/btv1b84473026_f10.jpg"
    alto = (TESTDATA / "gt/btv1b84473026_f10.alto.xml").read_bytes()
    pdf = exported(source, alto, tmp_path)
    with pikepdf.open(pdf) as doc:
        size = seen_size(doc.pages[0])
    root = etree.fromstring(pdftotext(pdf, "-bbox-layout").encode("utf-8"))
    found = [
        ([w.text for w in line.iter(f"{XHTML}word")], [float(line.get(k)) for k in BOX_KEYS])
        for line in root.iter(f"{XHTML}line")
    ]
    expected = line_boxes_pt(alto, size)
    assert len(expected) == len(found) == 65
    for text, box in expected:
        assert any(words_ == text.split() and in_box(got, box) for words_, got in found), (
            text,
            box,
        )


def test_vertical_lines_without_coordinates_fill_the_page_as_columns_right_to_left(tmp_path):
    source = pdf_of(CJK_JPG, tmp_path)
    w, h = Image.open(CJK_JPG).size
    alto = alto_page(w, h, [{"direction": "ttb", "lines": [(t, None, None) for t in CJK]}])
    lines = page_lines(parse_alto(alto), (1, 1)).lines
    assert all(ln.vertical for ln in lines)
    assert [ln.box[0] for ln in lines] == sorted((ln.box[0] for ln in lines), reverse=True)
    pdf = exported(source, alto, tmp_path)
    assert normalised(pdftotext(pdf)) == normalised("\n".join(CJK))
    assert_words_in_their_lines(pdf, alto, shown_size(source))


def test_a_page_the_run_wrote_as_txt_only_fills_the_page_area(tmp_path):
    """`run --formats txt` leaves no ALTO (no size, no boxes): the PDF page itself is the area."""
    source = pdf_of(LATIN_JPG, tmp_path)
    content = text_content("\n".join(LATIN[:2]) + "\n\n" + LATIN[2])
    sha = hashlib.sha256(source.read_bytes()).hexdigest()
    page = ExportPage(1, "done", None, content)
    pdf = tmp_path / "txt-only.pdf"
    pdf.write_bytes(build_pdf(ExportDocument("doc", str(source), 1, sha, None, (page,))))
    assert normalised(pdftotext(pdf)) == normalised("\n".join(LATIN))
    size = shown_size(source)
    assert all(in_box(b, (0, 0, *size)) for _, b in words(pdf))


def test_a_cropped_source_page_gets_its_text_on_the_cropbox(tmp_path):
    """The run painted the CropBox (what viewers show), so the ALTO page is the CropBox."""
    source = pdf_of(LATIN_JPG, tmp_path)
    with pikepdf.open(source, allow_overwriting_input=True) as doc:
        x0, y0, x1, y1 = (float(v) for v in doc.pages[0].mediabox)
        doc.pages[0].CropBox = [x0 + 100, y0 + 200, x1 - 50, y1 - 100]
        doc.save(source)
    size = shown_size(source)
    w, h = round(size[0] * 4), round(size[1] * 4)  # the CropBox painted at 288 DPI
    lines = [(LATIN[0], (100, 200, 1500, 80), None), (LATIN[1], (100, 400, 1700, 80), None)]
    alto = alto_page(w, h, [{"lines": lines}])
    pdf = exported(source, alto, tmp_path)
    assert normalised(pdftotext(pdf)) == normalised("\n".join(LATIN[:2]))
    # poppler counts from the MediaBox: the CropBox starts 100 pt right of and below its corner
    assert_words_in_their_lines(pdf, alto, size, offset=(100, 100))


def test_documents_whose_source_is_gone_get_no_pdf_are_reported_and_tried_again(tmp_path):
    """The collection of test_export (sources under /archive/in, which does not exist)."""
    from export_fixture import build_out

    from pipeline.export import export_collection
    from pipeline.export.delivery import MANIFEST_NAME

    store = build_out(tmp_path / "out")
    try:
        to = tmp_path / "delivery"
        report = export_collection(tmp_path / "out", to, formats=("txt", "pdf"))
        entries = report.documents
        assert entries and all("source file cannot be read" in d["pdf_error"] for d in entries)
        assert report.totals()["documents_without_pdf"] == len(entries) and not report.complete
        assert f"{len(entries)} documents without PDF" in report.summary()
        assert not list(to.rglob("searchable.pdf")) and len(list(to.rglob("text.txt"))) == len(
            entries
        )
        manifest = json.loads((to / MANIFEST_NAME).read_text())
        assert all(doc["key"] == "" for doc in manifest["documents"].values())  # never current
        again = export_collection(tmp_path / "out", to, formats=("txt", "pdf"))
        assert again.documents == entries and again.written == 0
    finally:
        store.close()


@pytest.mark.parametrize("mode", ["F", "LAB"])
def test_an_image_img2pdf_cannot_take_as_is_is_embedded_as_the_run_saw_it(tmp_path, mode):
    """32-bit float and LAB TIFFs: img2pdf refuses them, so the page is the run's 8-bit RGB
    view of the file (the same `to_rgb`), stored without loss, at the file's DPI."""
    from pipeline.ingest.images import to_rgb

    source = tmp_path / f"{mode}.tif"
    Image.open(CJK_JPG).resize((413, 584)).convert(mode).save(source, dpi=(50, 50))
    w, h = Image.open(source).size
    alto = alto_page(w, h, [{"lines": [(CJK[0], (40, 40, 300, 40), None)]}])
    pdf = exported(source, alto, tmp_path)
    assert normalised(pdftotext(pdf)) == CJK[0]
    with pikepdf.open(pdf) as doc:
        (page,) = doc.pages
        assert [float(v) for v in page.mediabox][2:] == pytest.approx([w * 72 / 50, h * 72 / 50])
        ((_, image),) = page.get_images().items()
        pixels = pikepdf.PdfImage(image).as_pil_image()
    assert pixels.tobytes() == to_rgb(Image.open(source)).convert(pixels.mode).tobytes()
