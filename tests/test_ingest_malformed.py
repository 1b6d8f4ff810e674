"""Every file of tests/data/malformed ends as correct pages or as a specific, named failure."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from PIL import Image, ImageChops, ImageFile, ImageStat

from pipeline.errors import DocumentError, InputError, PageError
from pipeline.ingest.documents import IngestSettings, load_page, probe_document

LOW_DPI = IngestSettings(dpi=36)

# file -> the reason it fails with (and where), or None when it must ingest as pages.
# test_every_malformed_file_has_an_expectation keeps this table complete.
FAILS: dict[str, tuple[str, str, type[InputError]] | None] = {
    "cmyk_adobe.jpg": None,
    "decompression_bomb_65535x66601.gif": (
        "probe",
        "too large (4364696535 pixels > 250000000)",
        DocumentError,
    ),
    "encrypted_owner_only_images_2p.pdf": None,
    "encrypted_user_pw_623_rc4_40bit.pdf": ("probe", "encrypted", DocumentError),
    "exif_orientation_6.jpg": None,
    "fuzz_23_bytes_startxref.pdf": ("probe", "unsupported format", DocumentError),
    "gray16.tif": None,
    "multipage_3frames.tiff": None,
    "not_a_pdf_oops.pdf": ("probe", "unsupported format", DocumentError),
    "oom_header.tif": ("probe", "corrupt image", DocumentError),
    "page_tree_loop.pdf": None,
    "palette_trns.png": None,
    "png_bytes_named.jpg": None,
    "tiled_lossy.jp2": None,
    "truncated_half_vicksburg.pdf": ("probe", "truncated PDF", DocumentError),
    "truncated_image.png": ("load", "truncated image", DocumentError),
    "truncated_jpeg.jpg": ("load", "truncated image", DocumentError),
    "zero_bytes.jpg": ("probe", "empty file", DocumentError),
    "zero_bytes.pdf": ("probe", "empty file", DocumentError),
    "zero_pages.pdf": ("probe", "no pages", DocumentError),
}
PAGES = {
    "cmyk_adobe.jpg": ("JPEG", [(100, 100)]),
    "encrypted_owner_only_images_2p.pdf": ("PDF", [(306, 396), (306, 396)]),
    "exif_orientation_6.jpg": ("JPEG", [(128, 128)]),
    "gray16.tif": ("TIFF", [(64, 64)]),
    "multipage_3frames.tiff": ("TIFF", [(10, 10), (10, 10), (20, 20)]),
    "page_tree_loop.pdf": ("PDF", [(306, 396)]),
    "palette_trns.png": ("PNG", [(64, 64)]),
    "png_bytes_named.jpg": ("PNG", [(924, 1624)]),
    "tiled_lossy.jp2": ("JPEG2000", [(640, 480)]),
}


@pytest.fixture(scope="module")
def malformed(testdata: Path) -> Path:
    return testdata / "malformed"


def _load_all(path: Path, settings: IngestSettings) -> list[Image.Image]:
    info = probe_document(path, settings)
    return [load_page(path, i, settings) for i in range(info.page_count)]


def test_every_malformed_file_has_an_expectation(malformed: Path) -> None:
    assert sorted(p.name for p in malformed.iterdir()) == sorted(FAILS)
    assert {name for name, fails in FAILS.items() if fails is None} == set(PAGES)


@pytest.mark.parametrize("name", sorted(n for n, f in FAILS.items() if f is not None))
def test_malformed_file_fails_with_its_specific_reason(malformed: Path, name: str) -> None:
    stage, reason, kind = FAILS[name]
    path = malformed / name
    if stage == "probe":
        with pytest.raises(kind) as caught:
            probe_document(path, LOW_DPI)
    else:
        info = probe_document(path, LOW_DPI)  # the header is fine; the pixels are not
        assert info.page_count == 1
        with pytest.raises(kind) as caught:
            load_page(path, 0, LOW_DPI)
    assert caught.value.reason == reason
    assert caught.value.detail, "a failure must say what to do next"
    assert name not in str(caught.value)  # the caller adds the file; no doubled names


@pytest.mark.parametrize(
    ("name", "rasterizer"),
    [(name, "pdfium") for name in sorted(PAGES)]
    + [(name, "poppler") for name in sorted(PAGES) if PAGES[name][0] == "PDF"],
)
def test_malformed_file_that_is_readable_ingests_as_rgb_pages(
    malformed: Path, name: str, rasterizer: str
) -> None:
    fmt, sizes = PAGES[name]
    settings = IngestSettings(dpi=36, rasterizer=rasterizer)
    path = malformed / name
    info = probe_document(path, settings)
    assert (info.format, info.page_count) == (fmt, len(sizes))
    assert info.kind == ("pdf" if fmt == "PDF" else "image")
    assert info.size == path.stat().st_size
    assert info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    pages = _load_all(path, settings)
    assert [p.size for p in pages] == sizes
    assert all(p.mode == "RGB" for p in pages)


def test_exif_orientation_6_comes_out_rotated_upright(malformed: Path) -> None:
    path = malformed / "exif_orientation_6.jpg"
    with Image.open(path) as raw:
        stored = raw.convert("RGB")
    page = load_page(path, 0, LOW_DPI)
    upright = stored.transpose(Image.Transpose.ROTATE_270)
    assert _mean_difference(page, upright) < 1
    assert _mean_difference(page, stored) > 20


def test_gray16_is_scaled_to_8_bits_not_clipped(malformed: Path) -> None:
    page = load_page(malformed / "gray16.tif", 0, LOW_DPI)
    low, high = page.convert("L").getextrema()
    assert 0 < low < high < 255  # clipping gives all-white, dividing by 257 all-black
    assert high - low > 64  # 10-bit data keeps its contrast


def test_palette_transparency_is_composited_on_white(malformed: Path) -> None:
    path = malformed / "palette_trns.png"
    page = load_page(path, 0, LOW_DPI)
    with Image.open(path) as raw:
        rgba = raw.convert("RGBA")
    assert rgba.getpixel((52, 0)) == (0, 255, 52, 0)  # a transparent pixel over green
    assert page.getpixel((52, 0)) == (255, 255, 255)
    assert page.getpixel((0, 0)) == rgba.getpixel((0, 0))[:3]  # opaque pixels untouched


def test_adobe_inverted_cmyk_jpeg_keeps_its_colours(malformed: Path) -> None:
    page = load_page(malformed / "cmyk_adobe.jpg", 0, LOW_DPI)
    red, green, blue = page.getpixel((2, 2))
    assert red > 200 and green < 60 and blue < 60  # red ink, not cyan
    assert max(page.getpixel((50, 95))) < 40  # rich black background, not paper white


def test_jpeg2000_decodes_to_a_picture(malformed: Path) -> None:
    page = load_page(malformed / "tiled_lossy.jp2", 0, LOW_DPI)
    assert max(ImageStat.Stat(page).stddev) > 10


def test_decompression_bomb_is_refused_without_decoding(
    malformed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_decoding(self):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    path = malformed / "decompression_bomb_65535x66601.gif"
    for call in (lambda: probe_document(path, LOW_DPI), lambda: load_page(path, 0, LOW_DPI)):
        with pytest.raises(DocumentError) as caught:
            call()
        assert caught.value.reason.startswith("too large (4364696535 pixels")
        assert "--max-image-pixels" in caught.value.detail


def test_decompression_bomb_leaves_pillows_own_limit_as_it_was(malformed: Path) -> None:
    before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(DocumentError):
        probe_document(malformed / "decompression_bomb_65535x66601.gif", LOW_DPI)
    assert before == Image.MAX_IMAGE_PIXELS


def test_one_oversized_frame_fails_only_its_page(malformed: Path) -> None:
    path = malformed / "multipage_3frames.tiff"
    settings = IngestSettings(max_image_pixels=150)  # frames are 10x10, 10x10, 20x20
    assert probe_document(path, settings).page_count == 3
    assert load_page(path, 1, settings).size == (10, 10)
    with pytest.raises(PageError) as caught:
        load_page(path, 2, settings)
    assert caught.value.reason == "too large (400 pixels > 150)"


@pytest.mark.parametrize("rasterizer", ["pdfium", "poppler"])
def test_encrypted_pdf_opens_with_its_password(malformed: Path, rasterizer: str) -> None:
    path = malformed / "encrypted_user_pw_623_rc4_40bit.pdf"
    settings = IngestSettings(dpi=36, rasterizer=rasterizer, pdf_password="623")
    assert probe_document(path, settings).page_count == 1
    page = load_page(path, 0, settings)
    assert page.size == (306, 396)
    assert page.convert("L").getextrema()[0] < 128  # something is printed on it


def test_encrypted_pdf_without_password_asks_for_pdf_password(malformed: Path) -> None:
    path = malformed / "encrypted_user_pw_623_rc4_40bit.pdf"
    for call in (lambda: probe_document(path, LOW_DPI), lambda: load_page(path, 0, LOW_DPI)):
        with pytest.raises(DocumentError) as caught:
            call()
        assert caught.value.reason == "encrypted"
        assert "--pdf-password" in caught.value.detail


def test_encrypted_pdf_with_wrong_password_says_the_password_is_wrong(malformed: Path) -> None:
    settings = IngestSettings(pdf_password="wrong")
    with pytest.raises(DocumentError) as caught:
        probe_document(malformed / "encrypted_user_pw_623_rc4_40bit.pdf", settings)
    assert caught.value.reason == "encrypted"
    assert "does not open it" in caught.value.detail


@pytest.mark.parametrize("rasterizer", ["pdfium", "poppler"])
def test_owner_password_only_pdf_opens_even_when_a_password_is_given(
    malformed: Path, rasterizer: str
) -> None:
    settings = IngestSettings(dpi=36, rasterizer=rasterizer, pdf_password="623")
    path = malformed / "encrypted_owner_only_images_2p.pdf"
    assert probe_document(path, settings).page_count == 2
    assert load_page(path, 1, settings).size == (306, 396)


def test_wrong_extension_is_named_in_the_unsupported_format_detail(malformed: Path) -> None:
    with pytest.raises(DocumentError) as caught:
        probe_document(malformed / "not_a_pdf_oops.pdf", LOW_DPI)
    assert "named .pdf" in caught.value.detail


def _mean_difference(a: Image.Image, b: Image.Image) -> float:
    return sum(ImageStat.Stat(ImageChops.difference(a, b)).mean) / 3
