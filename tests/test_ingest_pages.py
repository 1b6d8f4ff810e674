"""Real scans from tests/data/pages: both PDF rasterizers, JPEG pages, and max_pixels."""

from __future__ import annotations

import os
from pathlib import Path

import pdf2image
import pypdfium2 as pdfium
import pytest
from PIL import Image, ImageChops, ImageStat

from pipeline.errors import MissingDependency, PageError
from pipeline.ingest import rasterize
from pipeline.ingest.documents import IngestSettings, load_page, probe_document

VICKSBURG = "pdf/vicksburg_sample_ocr_6p.pdf"  # 6 pages of 432 x 648 pt
OLMOCR = "pdf/olmocr_mattsnotes_3p.pdf"  # 3 pages of 612 x 803.25 pt
JPEGS = {
    "handwriting/170025120000003,0074.jpg": None,
    "handwriting/btv1b84473026_f10.jpg": (2574, 3783),
    "vertical/jp_vert.jpg": None,
    "vertical/ndl_3508165_9.jpg": None,
}


@pytest.fixture(scope="module")
def pages(testdata: Path) -> Path:
    return testdata / "pages"


@pytest.mark.parametrize(("name", "count"), [(VICKSBURG, 6), (OLMOCR, 3)])
def test_pdf_pages_agree_between_pdfium_and_poppler(pages: Path, name: str, count: int) -> None:
    path = pages / name
    by_rasterizer = {}
    for rasterizer in ("pdfium", "poppler"):
        settings = IngestSettings(dpi=40, rasterizer=rasterizer)
        info = probe_document(path, settings)
        assert (info.kind, info.format, info.page_count) == ("pdf", "PDF", count)
        by_rasterizer[rasterizer] = [load_page(path, i, settings) for i in range(count)]
    ours, theirs = by_rasterizer["pdfium"], by_rasterizer["poppler"]
    for i in range(count):
        assert ours[i].mode == theirs[i].mode == "RGB"
        assert ours[i].size == theirs[i].size
        assert ours[i].convert("L").getextrema()[0] < 100  # ink on every page
        # The engines smooth scanned images differently, so compare at a coarse scale: the same
        # page painted twice must look far more alike than two neighbouring pages do.
        same = _coarse_difference(ours[i], theirs[i])
        assert same < 12
        if count > 1:
            assert same < _coarse_difference(ours[i], theirs[(i + 1) % count]) / 2


def _coarse_difference(a: Image.Image, b: Image.Image) -> float:
    size = (a.width // 4, a.height // 4)
    a, b = (im.convert("L").resize(size, Image.Resampling.BOX) for im in (a, b))
    return ImageStat.Stat(ImageChops.difference(a, b)).mean[0]


@pytest.mark.parametrize("rasterizer", ["pdfium", "poppler"])
def test_pdf_page_renders_at_the_requested_dpi(pages: Path, rasterizer: str) -> None:
    page = load_page(pages / VICKSBURG, 2, IngestSettings(dpi=300, rasterizer=rasterizer))
    assert page.size == (1800, 2700)  # 6 x 9 in at 300 DPI


@pytest.mark.parametrize("name", sorted(JPEGS))
def test_jpeg_scans_load_as_rgb_pages(pages: Path, name: str) -> None:
    path = pages / name
    info = probe_document(path, IngestSettings())
    assert (info.kind, info.format, info.page_count) == ("image", "JPEG", 1)
    page = load_page(path, 0, IngestSettings())
    assert page.mode == "RGB"
    with Image.open(path) as raw:
        assert page.size == (JPEGS[name] or raw.size)


def test_pdf_renders_at_lower_scale_to_fit_max_pixels(
    pages: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scales = []
    real_render = pdfium.PdfPage.render

    def spy(self, *args, **kwargs):
        scales.append(kwargs["scale"])
        return real_render(self, *args, **kwargs)

    monkeypatch.setattr(pdfium.PdfPage, "render", spy)
    page = load_page(pages / VICKSBURG, 0, IngestSettings(dpi=300), max_pixels=500_000)
    assert 0.97 * 500_000 <= page.width * page.height <= 500_000
    assert abs(page.width / page.height - 432 / 648) < 0.01
    assert scales and scales[0] < 300 / 72  # painted small, not painted big and shrunk


def test_poppler_renders_at_lower_dpi_to_fit_max_pixels(
    pages: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dpis = []
    real_convert = pdf2image.convert_from_path

    def spy(*args, **kwargs):
        dpis.append(kwargs["dpi"])
        return real_convert(*args, **kwargs)

    monkeypatch.setattr(pdf2image, "convert_from_path", spy)
    settings = IngestSettings(dpi=300, rasterizer="poppler")
    page = load_page(pages / VICKSBURG, 0, settings, max_pixels=200_000)
    assert 0.95 * 200_000 <= page.width * page.height <= 200_000
    assert dpis and dpis[0] < 300


def test_max_image_pixels_caps_pdf_pages_instead_of_failing_them(pages: Path) -> None:
    page = load_page(pages / VICKSBURG, 0, IngestSettings(dpi=600, max_image_pixels=1_000_000))
    assert page.width * page.height <= 1_000_000


def test_image_is_shrunk_to_max_pixels_keeping_its_aspect_ratio(pages: Path) -> None:
    path = pages / "handwriting/btv1b84473026_f10.jpg"  # 2574 x 3783
    page = load_page(path, 0, IngestSettings(), max_pixels=1_000_000)
    assert 0.99 * 1_000_000 <= page.width * page.height <= 1_000_000
    assert abs(page.width / page.height - 2574 / 3783) < 0.005


def test_max_pixels_never_enlarges_a_small_page(pages: Path) -> None:
    path = pages / "handwriting/btv1b84473026_f10.jpg"
    assert load_page(path, 0, IngestSettings(), max_pixels=10**9).size == (2574, 3783)


def test_page_beyond_the_last_is_a_page_error(pages: Path) -> None:
    with pytest.raises(PageError) as caught:
        load_page(pages / OLMOCR, 3, IngestSettings(dpi=36))
    assert caught.value.reason == "no such page"


def test_poppler_rasterizer_without_pdftoppm_is_a_missing_dependency(
    pages: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rasterize.shutil, "which", lambda tool: None)
    settings = IngestSettings(dpi=36, rasterizer="poppler")
    with pytest.raises(MissingDependency, match="pdftoppm.*poppler-utils"):
        probe_document(pages / OLMOCR, settings)
    with pytest.raises(MissingDependency):
        load_page(pages / OLMOCR, 0, settings)
    # Images never need poppler.
    assert load_page(pages / "vertical/jp_vert.jpg", 0, settings, max_pixels=10_000)


@pytest.mark.parametrize("rasterizer", ["pdfium", "poppler"])
def test_pdf_with_a_non_utf8_name_renders(pages: Path, tmp_path: Path, rasterizer: str) -> None:
    raw = os.fsencode(tmp_path) + b"/r\xe9sum\xe9.pdf"
    with open(raw, "wb") as f:
        f.write((pages / OLMOCR).read_bytes())
    path = Path(os.fsdecode(raw))
    settings = IngestSettings(dpi=30, rasterizer=rasterizer)
    assert probe_document(path, settings).page_count == 3
    assert load_page(path, 2, settings).size == (255, 335)


def test_loaded_pages_carry_their_full_resolution_size_when_shrunk(testdata: Path) -> None:
    from pipeline.layout.geometry import PAGE_SIZE_KEY

    pdf = testdata / "pages/pdf/vicksburg_sample_ocr_6p.pdf"
    full = load_page(pdf, 0, IngestSettings(dpi=100))
    small = load_page(pdf, 0, IngestSettings(dpi=100), max_pixels=40_000)
    assert small.width * small.height <= 40_000 < full.width * full.height
    assert abs(small.info[PAGE_SIZE_KEY][0] - full.width) <= 1
    assert abs(small.info[PAGE_SIZE_KEY][1] - full.height) <= 1

    turned = testdata / "malformed/exif_orientation_6.jpg"
    upright = load_page(turned, 0, IngestSettings())
    shrunk = load_page(turned, 0, IngestSettings(), max_pixels=upright.width * upright.height // 16)
    assert upright.info[PAGE_SIZE_KEY] == upright.size
    assert shrunk.info[PAGE_SIZE_KEY] == upright.size
    assert (shrunk.width > shrunk.height) == (upright.width > upright.height)
