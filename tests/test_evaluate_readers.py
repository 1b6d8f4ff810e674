"""Readers: ALTO v2-v4, PAGE 2013/2019, hOCR and text, each in its reading order; and the same
real page in two formats evaluates to CER 0.

The second format of a real GT page is made here by reading it with our reader and writing it
with the project's own export writers (PAGE 2019, hOCR), the PAGE validated against its XSD.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path

import pytest
import regex
from conftest import TESTDATA, assert_valid_xml
from lxml import etree

from pipeline.evaluate import evaluate
from pipeline.evaluate.readers import UnreadableFile, read_pages
from pipeline.export.hocr import build_hocr
from pipeline.export.page_xml import build_page
from pipeline.export.pages import ExportDocument, ExportPage, PageContent, Word

GT = TESTDATA / "gt"
ALTO = TESTDATA / "alto"
KRAKEN_PAGE = GT / "170025120000003,0074.page.xml"  # PAGE 2013, 44 lines, ReadingOrder
CREMMA_ALTO = GT / "btv1b84473026_f10.alto.xml"  # ALTO v4, 65 lines, no SP


def only_page(path: Path):
    pages = read_pages(path)
    assert len(pages) == 1
    return pages[0][1]


def test_alto_v2_v3_v4_lines_and_spaces():
    abbyy = only_page(ALTO / "abbyy_fre11_mannheim_417576986_0012.alto")  # v2, with SP and HYP
    assert abbyy.lines[1].text == "esprit ont établies dès la nais\xad"
    tess = only_page(ALTO / "tesseract410_testfile.alto.xml")  # v3
    assert tess.lines[0].text == "LEVEL 2 HEADING" and len(tess.lines) == 66
    assert tess.lines[0].box is not None
    cremma = only_page(CREMMA_ALTO)  # v4 from eScriptorium: one String per line
    assert len(cremma.lines) == 65 and cremma.has_coords
    assert unicodedata.normalize("NFC", cremma.lines[0].text) == "puissanz sont dabstin\u1ebdce ⁊"
    # no SP anywhere: Strings of a spaced script get a space, CJK ones do not
    assert only_page(ALTO / "altoxml_glyph_sample_chinese.alto.xml").text == "義禮說選"


def test_page_2013_follows_its_reading_order():
    page = only_page(KRAKEN_PAGE)
    assert len(page.lines) == 44 and page.has_coords
    assert page.lines[0].text == "$pag:39"  # region index 0 of the ReadingOrder
    assert page.lines[1].text.startswith("$-nor su hijo")


PAGE_RO = """<?xml version="1.0" encoding="UTF-8"?>
<PcGts xmlns="http://schema.primaresearch.org/PAGE/gts/pagecontent/2019-07-15">
<Page imageFilename="x.png" imageWidth="100" imageHeight="100">
<ReadingOrder><OrderedGroup id="g"><RegionRefIndexed index="1" regionRef="a"/>
<RegionRefIndexed index="0" regionRef="b"/></OrderedGroup></ReadingOrder>
<TextRegion id="a"><Coords points="0,0 9,0 9,9 0,9"/>
 <TextLine id="a1"><Coords points="0,0 9,0 9,9 0,9"/>
  <Word id="w1"><Coords points="0,0 1,1"/><TextEquiv><Unicode>second</Unicode></TextEquiv></Word>
  <Word id="w2"><Coords points="0,0 1,1"/><TextEquiv><Unicode>region</Unicode></TextEquiv></Word>
 </TextLine></TextRegion>
<TextRegion id="b"><Coords points="0,0 9,0 9,9 0,9"/>
 <TextLine id="b1"><Coords points="0,0 99,0 99,99 0,99"/>
  <TextEquiv index="2"><Unicode>alternative</Unicode></TextEquiv>
  <TextEquiv index="1"><Unicode>first  region</Unicode></TextEquiv></TextLine></TextRegion>
<TextRegion id="c"><Coords points="0,0 9,0 9,9 0,9"/>
 <TextEquiv><Unicode>not in the order
 region text only</Unicode></TextEquiv></TextRegion>
</Page></PcGts>"""


def test_page_reading_order_word_and_region_fallbacks(tmp_path):
    path = tmp_path / "ro.xml"
    path.write_text(PAGE_RO, encoding="utf-8")
    page = only_page(path)
    texts = [line.text for line in page.lines]
    assert texts == ["first region", "second region", "not in the order", "region text only"]
    assert page.lines[0].box is None  # the whole-page extent means "no geometry"
    assert page.lines[1].box == (0, 0, 9, 9)


HOCR = """<html><body>
<div class="ocr_page" title="image x.png; bbox 0 0 100 100; ppageno 1">
 <span class="ocr_line" title="bbox 1 2 50 10"><span class="ocrx_word">Zweite</span>
 <span class="ocrx_word">Seite</span></span></div>
<div class="ocr_page" title="ppageno 0"><p class="ocr_par">nur <b>ein</b> Absatz</p></div>
</body></html>"""


def test_hocr_pages_lines_and_paragraph_fallback(tmp_path):
    path = tmp_path / "doc.hocr"
    path.write_text(HOCR, encoding="utf-8")
    pages = read_pages(path)
    assert [(n, p.text) for n, p in pages] == [(2, "Zweite Seite"), (1, "nur ein Absatz")]
    assert pages[0][1].lines[0].box == (1, 2, 50, 10)


def test_text_pages_split_at_form_feeds(tmp_path):
    path = tmp_path / "doc.txt"
    path.write_bytes("\ufeffeins\n  zwei  \n\n\fdrei\n".encode())
    assert [p.text for _, p in read_pages(path)] == ["eins\nzwei", "drei"]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"<alto><Layout><Page>", "not well-formed XML"),
        (b"caf\xe9 au lait\n", "not UTF-8 text .*; save it as UTF-8"),  # Latin-1
        (b"\xff\xfe" + "\ud800".encode("utf-16-le", "surrogatepass"), "not UTF-16 text"),
        (b"<annotation/>", "neither ALTO, PAGE nor hOCR"),
    ],
)
def test_unreadable_files_say_why(tmp_path, data, reason):
    path = tmp_path / "bad.xml"
    path.write_bytes(data)
    with pytest.raises(UnreadableFile, match=reason):
        read_pages(path)


def _as_export(path: Path) -> tuple[ExportDocument, ExportPage]:
    """A GT page as the export writers take it: one block, its lines, space-separated words."""
    page = only_page(path)
    lines = tuple(
        tuple(Word(w, None, i > 0) for i, w in enumerate(line.text.split(" ")))
        for line in page.lines
    )
    content = PageContent((lines,), 2000, 3000, None, "2026-01-01T00:00:00+00:00", None)
    export_page = ExportPage(1, "done", None, content)
    return ExportDocument(path.name, str(path), 1, None, None, (export_page,)), export_page


@pytest.mark.parametrize("gt", [CREMMA_ALTO, KRAKEN_PAGE], ids=["alto-v4", "page-2013"])
def test_same_real_page_in_two_formats_has_cer_zero(tmp_path, gt):
    doc, export_page = _as_export(gt)
    page_xml = build_page(doc, export_page, export_page.content)
    assert_valid_xml(page_xml, "page-2019-07-15.xsd")
    (tmp_path / "same.page.xml").write_bytes(page_xml)
    (tmp_path / "same.hocr").write_bytes(build_hocr(doc, [export_page]))
    chars = len(regex.findall(r"\X", unicodedata.normalize("NFC", only_page(gt).text)))
    for other in ("same.page.xml", "same.hocr"):
        ev = evaluate(gt, pred=tmp_path / other)
        assert ev.totals.statuses["evaluated"] == 1
        assert ev.totals.chars == chars > 1000
        assert (ev.totals.cer, ev.totals.wer) == (0.0, 0.0), other
        page = ev.documents[0].pages[0]
        assert page.counts.lines is None  # the writers give no line geometry


def test_real_gt_against_a_reader_that_misses_abbreviations():
    """The CREMMA page against itself with its abbreviation marks dropped: each mark one
    substitution, nothing else."""
    gt = unicodedata.normalize("NFC", only_page(CREMMA_ALTO).text)
    marks = sum(gt.count(c) for c in "ẽꝑ⁊ſāõ")
    ev = evaluate(CREMMA_ALTO, pred=TESTDATA / "evaluate/real/btv1b84473026_f10.pred.txt")
    e = ev.totals.char_edits
    assert marks > 10 and (e.substitutions, e.insertions, e.deletions) == (marks, 0, 0)


def _shift_coords(source: Path, target: Path, dy: int) -> None:
    """The same PAGE with every TextLine polygon moved down by `dy` pixels."""
    tree = etree.parse(str(source))
    for coords in tree.iter("{*}Coords"):
        if etree.QName(coords.getparent()).localname == "TextLine":
            points = [p.split(",") for p in coords.get("points").split()]
            coords.set("points", " ".join(f"{x},{int(y) + dy}" for x, y in points))
    tree.write(str(target), xml_declaration=True, encoding="UTF-8")


def test_line_detection_on_real_page_boxes(tmp_path):
    """The 44 real line polygons against themselves, then moved down: moved by 10 px every line
    still overlaps its original at IoU >= 0.5 (not at 0.95); moved by 60 px, fewer do (the
    slanted lines have tall bounding boxes, so not none)."""
    same = evaluate(KRAKEN_PAGE, pred=KRAKEN_PAGE).totals.lines
    assert (same.gt, same.pred, same.matched) == (44, 44, 44)
    _shift_coords(KRAKEN_PAGE, tmp_path / "near.xml", 10)
    _shift_coords(KRAKEN_PAGE, tmp_path / "far.xml", 60)
    near = evaluate(KRAKEN_PAGE, pred=tmp_path / "near.xml")
    far = evaluate(KRAKEN_PAGE, pred=tmp_path / "far.xml")
    assert near.totals.lines.recall == 1.0 and near.totals.cer == 0.0
    assert far.totals.lines.matched < near.totals.lines.matched
    strict = evaluate(KRAKEN_PAGE, pred=tmp_path / "near.xml", iou_threshold=0.95)
    assert strict.totals.lines.matched < near.totals.lines.matched
