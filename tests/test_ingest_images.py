"""Image identification and normalisation on small images made here, one pixel format each."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from PIL import Image, TiffImagePlugin

from pipeline.errors import BadArguments, DocumentError
from pipeline.ingest.documents import IngestSettings, load_page, probe_document, sniff_format

SETTINGS = IngestSettings()


def _save(image: Image.Image, path: Path, **params) -> Path:
    image.save(path, **params)
    return path


def _page(path: Path, **kwargs) -> Image.Image:
    page = load_page(path, 0, SETTINGS, **kwargs)
    assert page.mode == "RGB"
    return page


@pytest.mark.parametrize(
    ("name", "fmt", "params"),
    [
        ("page.webp", "WEBP", {"lossless": True}),
        ("page.bmp", "BMP", {}),
        ("page.gif", "GIF", {}),
        ("page.j2k", "JPEG2000", {}),  # a bare codestream, not a .jp2 container
        ("page.tif", "TIFF", {"compression": "tiff_lzw"}),
        ("page.jpg", "JPEG", {"quality": 95}),
    ],
)
def test_each_supported_format_is_identified_and_loaded(
    tmp_path: Path, name: str, fmt: str, params: dict
) -> None:
    original = Image.new("RGB", (30, 20), (200, 30, 30))
    path = _save(original, tmp_path / name, **params)
    info = probe_document(path, SETTINGS)
    assert (info.kind, info.format, info.page_count) == ("image", fmt, 1)
    page = _page(path)
    assert page.size == (30, 20)
    assert all(abs(a - b) < 12 for a, b in zip(page.getpixel((15, 10)), (200, 30, 30), strict=True))


def test_files_are_identified_by_content_not_by_extension(tmp_path: Path) -> None:
    path = _save(Image.new("L", (8, 8), 0), tmp_path / "scan.pdf", format="TIFF")
    assert probe_document(path, SETTINGS).format == "TIFF"
    assert sniff_format(b"junk before the header %PDF-1.7") == "PDF"
    assert sniff_format(b"\x00" * 2048 + b"%PDF-1.7") is None


def test_text_file_is_an_unsupported_format(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("not a scan")
    with pytest.raises(DocumentError) as caught:
        probe_document(path, SETTINGS)
    assert caught.value.reason == "unsupported format"
    assert "named .txt" in caught.value.detail


def test_missing_file_is_a_document_error(tmp_path: Path) -> None:
    with pytest.raises(DocumentError) as caught:
        probe_document(tmp_path / "gone.jpg", SETTINGS)
    assert caught.value.reason == "file not found"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_unreadable_file_is_a_document_error(tmp_path: Path) -> None:
    path = _save(Image.new("L", (8, 8)), tmp_path / "locked.png")
    path.chmod(0)
    with pytest.raises(DocumentError) as caught:
        probe_document(path, SETTINGS)
    assert caught.value.reason == "unreadable file"


def test_animated_gif_gives_its_first_frame_as_its_only_page(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (10, 10), c) for c in ((255, 0, 0), (0, 0, 255))]
    path = _save(frames[0], tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    assert probe_document(path, SETTINGS).page_count == 1
    assert _page(path).getpixel((5, 5))[0] > 200


def test_cmyk_tiff_converts_ink_to_screen_colours(tmp_path: Path) -> None:
    image = Image.new("CMYK", (2, 1), (0, 0, 0, 0))
    image.putpixel((1, 0), (0, 255, 255, 0))
    page = _page(_save(image, tmp_path / "cmyk.tif"))
    assert page.getpixel((0, 0)) == (255, 255, 255)
    assert page.getpixel((1, 0)) == (255, 0, 0)


@pytest.mark.parametrize("mode", ["LA", "RGBA"])
def test_transparent_pixels_become_white_paper(tmp_path: Path, mode: str) -> None:
    image = Image.new("RGBA", (2, 1), (0, 0, 0, 255))
    image.putpixel((1, 0), (0, 0, 0, 0))
    page = _page(_save(image.convert(mode), tmp_path / "alpha.png"))
    assert page.getpixel((0, 0)) == (0, 0, 0)
    assert page.getpixel((1, 0)) == (255, 255, 255)


def test_lab_tiff_white_stays_white(tmp_path: Path) -> None:
    page = _page(_save(Image.new("LAB", (2, 2), (255, 128, 128)), tmp_path / "lab.tif"))
    assert min(page.getpixel((0, 0))) > 245


def _gray16(values: list[int]) -> Image.Image:
    return Image.frombytes("I;16", (len(values), 1), struct.pack(f"<{len(values)}H", *values))


def test_full_range_16_bit_grey_is_divided_not_clipped(tmp_path: Path) -> None:
    page = _page(_save(_gray16([0, 32896, 65535]), tmp_path / "g16.png"))
    assert [page.getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]


def test_12_bit_data_in_a_16_bit_tiff_uses_the_12_bit_range(tmp_path: Path) -> None:
    page = _page(_save(_gray16([0, 2048, 4095]), tmp_path / "g12.tif"))
    assert [page.getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]


def test_float_grey_in_0_to_1_is_scaled_to_8_bits(tmp_path: Path) -> None:
    image = Image.new("F", (2, 1), 0.0)
    image.putpixel((1, 0), 1.0)
    page = _page(_save(image, tmp_path / "float.tif"))
    assert [page.getpixel((x, 0))[0] for x in range(2)] == [0, 255]


@pytest.mark.parametrize("compression", ["raw", "tiff_lzw"])
def test_tiff_orientation_tag_is_applied(tmp_path: Path, compression: str) -> None:
    image = Image.new("L", (20, 10), 255)
    image.putpixel((0, 0), 0)  # top-left as stored
    path = _save(image, tmp_path / "rot.tif", tiffinfo={274: 6}, compression=compression)
    page = _page(path)
    assert page.size == (10, 20)
    assert page.getpixel((9, 0))[0] == 0  # orientation 6: stored top-left shows top-right


def test_tiff_thumbnails_and_masks_are_not_pages(tmp_path: Path) -> None:
    path = tmp_path / "with_thumbs.tif"
    frames = [
        (Image.new("L", (40, 40), 0), 0),
        (Image.new("L", (4, 4), 0), 1),  # reduced-resolution copy
        (Image.new("L", (30, 30), 255), 2),  # a page of a multi-page document
        (Image.new("1", (30, 30), 1), 4),  # transparency mask
    ]
    with TiffImagePlugin.AppendingTiffWriter(str(path), new=True) as tiff:
        for image, subfile in frames:
            image.save(tiff, format="TIFF", tiffinfo={254: subfile})
            tiff.newFrame()
    assert probe_document(path, SETTINGS).page_count == 2
    assert load_page(path, 1, SETTINGS).getpixel((0, 0)) == (255, 255, 255)


def test_large_jpeg_is_decoded_small_to_fit_max_pixels(tmp_path: Path) -> None:
    path = _save(Image.new("RGB", (4000, 3000), (10, 120, 200)), tmp_path / "big.jpg")
    page = _page(path, max_pixels=120_000)
    assert 0.98 * 120_000 <= page.width * page.height <= 120_000
    assert abs(page.width / page.height - 4 / 3) < 0.01


def test_single_image_over_the_pixel_limit_is_refused(tmp_path: Path) -> None:
    path = _save(Image.new("L", (100, 100)), tmp_path / "scan.png")
    with pytest.raises(DocumentError) as caught:
        probe_document(path, IngestSettings(max_image_pixels=9_999))
    assert caught.value.reason == "too large (10000 pixels > 9999)"


@pytest.mark.parametrize(
    "kwargs", [{"dpi": 0}, {"rasterizer": "ghostscript"}, {"max_image_pixels": 0}]
)
def test_bad_settings_are_bad_arguments(kwargs: dict) -> None:
    with pytest.raises(BadArguments):
        IngestSettings(**kwargs)


@pytest.mark.parametrize("resolutions", [1, 2, 6])
def test_a_jpeg2000_with_few_resolution_levels_still_loads_under_the_pixel_budget(
    tmp_path: Path, resolutions: int
) -> None:
    # A budget 64x below the page asks for three halvings; a codestream with fewer resolution
    # levels must give what it has, not fail the page as corrupt.
    path = tmp_path / "scan.jp2"
    Image.new("RGB", (1600, 1200), (230, 220, 200)).save(
        path, "JPEG2000", num_resolutions=resolutions
    )
    image = load_page(path, 0, IngestSettings(), max_pixels=1600 * 1200 // 64)
    assert image.width * image.height <= 1600 * 1200 // 64
    assert image.getpixel((10, 10)) == (230, 220, 200)
