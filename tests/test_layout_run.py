"""Line geometry through the real CLI: `run --layout lines|page` on real pages with the tiny
model, then `export --format page,hocr`: positions in the page's own pixel space (EXIF-turned
JPEG and a PDF page at --dpi included), vertical columns read right to left, TXT equal to the
ALTO's lines in order, a blank page handled, and every XML valid against its schema."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import TESTDATA, assert_valid_alto, assert_valid_xml
from lxml import etree
from PIL import Image
from test_run_end_to_end import cli, run_args

from pipeline.errors import ExitCode
from pipeline.outputs.alto import ALTO_NS, alto_to_text

pytestmark = pytest.mark.slow

A = f"{{{ALTO_NS}}}"
PAGE_NS = "{http://schema.primaresearch.org/PAGE/gts/pagecontent/2019-07-15}"
MEDIEVAL = TESTDATA / "pages" / "handwriting" / "btv1b84473026_f10.jpg"
VERTICAL = TESTDATA / "pages" / "vertical" / "jp_vert.jpg"


def make_inputs(folder: Path) -> Path:
    """The medieval page, a vertical page, the vertical page as an EXIF-rotated JPEG and as a
    one-page PDF at 100 DPI, and a blank page."""
    folder.mkdir()
    shutil.copy(MEDIEVAL, folder / "medieval.jpg")
    shutil.copy(VERTICAL, folder / "vertical.jpg")
    upright = Image.open(VERTICAL).convert("RGB")
    # stored turned a quarter to the left; Orientation 6 tells viewers to turn it back
    exif = Image.Exif()
    exif[0x0112] = 6
    upright.rotate(90, expand=True).save(folder / "exif.jpg", quality=95, exif=exif)
    upright.save(folder / "vertical.pdf", "PDF", resolution=100)
    Image.new("RGB", (800, 1100), "white").save(folder / "blank.png")
    return folder


@pytest.fixture(scope="module")
def lines_run(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("layout-lines")
    inputs = make_inputs(root / "in")
    out = root / "out"
    result = cli(*run_args(inputs, out, tiny_model_dir, "--layout", "lines"))
    assert result.returncode == 0, result.stderr
    return inputs, out, tiny_model_dir


def alto_of(out: Path, name: str) -> etree._Element:
    data = (out / "pages" / name / "0001.alto.xml").read_bytes()
    assert_valid_alto(data)
    return etree.fromstring(data)


def box(el: etree._Element) -> tuple[float, float, float, float]:
    x, y = float(el.get("HPOS")), float(el.get("VPOS"))
    return (x, y, x + float(el.get("WIDTH")), y + float(el.get("HEIGHT")))


def iou(a, b) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(0.0, w) * max(0.0, h)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


def assert_inside_page(root: etree._Element) -> None:
    page = root.find(f".//{A}Page")
    width, height = int(page.get("WIDTH")), int(page.get("HEIGHT"))
    for el in root.iter(f"{A}PrintSpace", f"{A}TextBlock", f"{A}TextLine", f"{A}String"):
        if el.get("HPOS") is not None:
            left, top, right, bottom = box(el)
            assert 0 <= left < right <= width and 0 <= top < bottom <= height, el.get("ID")
    for el in root.iter(f"{A}Polygon"):
        for pair in el.get("POINTS").split():
            x, y = map(float, pair.split(","))
            assert 0 <= x < width and 0 <= y < height


def test_lines_mode_positions_every_line_and_txt_is_the_lines_in_order(lines_run):
    inputs, out, _ = lines_run
    for name in ("medieval.jpg", "vertical.jpg", "exif.jpg", "vertical.pdf", "blank.png"):
        data = (out / "pages" / name / "0001.alto.xml").read_bytes()
        txt = (out / "pages" / name / "0001.txt").read_text(encoding="utf-8")
        assert txt == alto_to_text(data) + "\n", name
        assert_inside_page(alto_of(out, name))
    root = alto_of(out, "medieval.jpg")
    made_with = json.loads(root.findtext(f".//{A}processingStepSettings"))
    assert made_with["line_detector"].startswith("det-")
    assert made_with["reading_order"] == "horizontal"
    page = root.find(f".//{A}Page")
    assert (int(page.get("WIDTH")), int(page.get("HEIGHT"))) == Image.open(MEDIEVAL).size
    lines = list(root.iter(f"{A}TextLine"))
    assert len(lines) >= 30  # the page has 65 lines; the tiny model leaves a few empty
    for line in lines:
        assert line.get("HPOS") is not None and line.find(f"{A}Shape/{A}Polygon") is not None
        assert line.get("BASEDIRECTION") is None and line.get("BASELINE")
        # Strings lie along the line, left to right, inside it
        strings = [box(s) for s in line.iter(f"{A}String")]
        assert [s[0] for s in strings] == sorted(s[0] for s in strings)
        assert strings[-1][2] <= box(line)[2] + 1
    # the page's two columns: each read top to bottom, the left one first
    blocks = [b for b in root.iter(f"{A}TextBlock") if len(b.findall(f"{A}TextLine")) >= 15]
    assert len(blocks) == 2 and box(blocks[0])[2] <= box(blocks[1])[0] + 20
    for block in blocks:
        tops = [box(line)[1] for line in block.iter(f"{A}TextLine")]
        assert tops == sorted(tops)


def test_vertical_page_reads_columns_right_to_left(lines_run):
    _, out, _ = lines_run
    root = alto_of(out, "vertical.jpg")
    lines = list(root.iter(f"{A}TextLine"))
    assert len(lines) >= 5
    assert all(line.get("BASEDIRECTION") == "ttb" and not line.get("BASELINE") for line in lines)
    # a title column at the right, then the text's columns: all in order from right to left
    lefts = [box(line)[0] for line in lines]
    assert lefts == sorted(lefts, reverse=True)
    for line in lines:  # Strings follow the column downwards
        tops = [box(s)[1] for s in line.iter(f"{A}String")]
        assert tops == sorted(tops)


@pytest.mark.parametrize("name", ["exif.jpg", "vertical.pdf"])
def test_coordinates_are_in_the_upright_page_pixels(lines_run, name):
    """The EXIF-turned JPEG and the PDF page at --dpi 100 give the upright page's size, and
    their lines lie where the lines of the original image are."""
    _, out, _ = lines_run
    original = [box(line) for line in alto_of(out, "vertical.jpg").iter(f"{A}TextLine")]
    root = alto_of(out, name)
    page = root.find(f".//{A}Page")
    width, height = int(page.get("WIDTH")), int(page.get("HEIGHT"))
    assert abs(width - 826) <= 1 and abs(height - 1169) <= 1
    found = [box(line) for line in root.iter(f"{A}TextLine")]
    assert len(found) >= 5
    matched = sum(max(iou(b, o) for o in original) >= 0.7 for b in found)
    assert matched >= 0.8 * len(found)


def test_blank_page_has_no_lines_and_an_empty_txt(lines_run):
    _, out, _ = lines_run
    root = alto_of(out, "blank.png")
    assert root.find(f".//{A}TextLine") is None
    assert (out / "pages" / "blank.png" / "0001.txt").read_text().strip() == ""
    summary = json.loads((out / "run-summary.json").read_text())
    assert summary["this_run"]["stages"]["detect_s"] > 0
    assert summary["collection"]["failed"] == 0


def test_changing_the_layout_needs_new_config(lines_run):
    inputs, out, model = lines_run
    result = cli(*run_args(inputs, out, model, "--layout", "page"))
    assert result.returncode == ExitCode.BAD_ARGUMENTS
    assert "layout" in result.stderr and "--new-config" in result.stderr
    result = cli(
        *run_args(inputs, out, model, "--layout", "lines", "--reading-order", "horizontal")
    )
    assert result.returncode == ExitCode.BAD_ARGUMENTS and "reading_order" in result.stderr


def test_page_mode_gives_the_text_area_and_no_line_positions(tmp_path, tiny_model_dir):
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(VERTICAL, inputs / "vertical.jpg")
    out = tmp_path / "out"
    result = cli(*run_args(inputs, out, tiny_model_dir, "--layout", "page"))
    assert result.returncode == 0, result.stderr
    root = alto_of(out, "vertical.jpg")
    assert_inside_page(root)
    space = root.find(f".//{A}PrintSpace")
    left, top, right, bottom = box(space)
    assert right - left > 300 and bottom - top > 600  # the columns' area, not the page
    for el in root.iter(f"{A}TextLine", f"{A}String"):
        assert el.get("HPOS") is None and el.get("VPOS") is None
    assert root.find(f".//{A}Polygon") is None


def test_export_page_and_hocr_carry_the_geometry(lines_run, tmp_path):
    _, out, _ = lines_run
    to = tmp_path / "delivery"
    result = cli("export", str(out), "--to", str(to), "--format", "page,hocr,alto,txt,mets")
    assert result.returncode == 0, result.stderr
    page_files = sorted(to.rglob("page/0001.xml"))
    assert len(page_files) == 5
    for path in page_files:
        assert_valid_xml(path, "page-2019-07-15.xsd")
    for path in to.rglob("*.mets.xml"):
        assert_valid_xml(path, "mets.xsd")
    medieval = etree.parse(next(p for p in page_files if "medieval" in str(p))).getroot()
    page = medieval.find(f".//{PAGE_NS}Page")
    full = f"0,0 {int(page.get('imageWidth')) - 1},0"
    lines = list(medieval.iter(f"{PAGE_NS}TextLine"))
    assert len(lines) >= 30
    for line in lines:
        assert not line.find(f"{PAGE_NS}Coords").get("points").startswith(full)
        assert line.find(f"{PAGE_NS}Baseline") is not None
        assert line.find(f"{PAGE_NS}TextEquiv/{PAGE_NS}Unicode").text
    hocr = next(to.rglob("vertical.jpg/hocr.html")).read_text(encoding="utf-8")
    assert "ocr_line" in hocr and "textangle 90" in hocr
    doc = etree.fromstring(hocr.encode())
    titles = [
        el.get("title", "")
        for el in doc.iter("{http://www.w3.org/1999/xhtml}span")
        if el.get("class") == "ocr_line"
    ]
    assert titles and all(t.startswith("bbox ") for t in titles)


def test_status_reports_time_spent_in_line_detection(lines_run):
    _, out, _ = lines_run
    result = cli("status", str(out))
    assert result.returncode == 0, result.stderr
    assert "line detection:" in result.stdout
    seconds = float(result.stdout.split("line detection:")[1].split()[0])
    summary = json.loads((out / "run-summary.json").read_text())
    assert seconds == pytest.approx(summary["this_run"]["stages"]["detect_s"], abs=0.2)
