"""Inputs that used to be misreported: special files, PNG text chunks, PDF pages kilometres wide."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import zlib
from pathlib import Path

import pytest
from PIL import Image
from test_run_end_to_end import cli

from pipeline.errors import DocumentError, ExitCode, PageError
from pipeline.ingest.documents import IngestSettings, load_page, probe_document
from pipeline.layout.geometry import PAGE_SIZE_KEY

SETTINGS = IngestSettings(dpi=36)
QUICK = ["--device", "cpu", "--workers", "1", "--max-new-tokens", "8", "--dpi", "72"]
QUICK += ["--detector", "none"]


def run_quick(inputs: Path, out: Path, model: Path) -> subprocess.CompletedProcess:
    """`run` with the tiny model, short pages and no line detection."""
    return cli("run", str(inputs), "--out", str(out), "--model", str(model), *QUICK)


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_fifos_and_devices_among_the_inputs_are_reported_as_skipped(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """They were left out without a word; now each is named, with why, and never opened."""
    inputs = tmp_path / "scans"
    inputs.mkdir()
    Image.new("RGB", (60, 40), "white").save(inputs / "ok.png")
    os.mkfifo(inputs / "pipe.png")
    (inputs / "zero.tif").symlink_to("/dev/zero")
    out = tmp_path / "out"
    result = run_quick(inputs, out, tiny_model_dir)
    assert result.returncode == ExitCode.OK, result.stderr
    assert "Traceback" not in result.stderr
    expected = [
        "skipped pipe.png: not a regular file (a FIFO); left out",
        "skipped zero.tif: not a regular file (a character device); left out",
    ]
    lines = result.stderr.splitlines()
    for line in expected:
        assert line in lines, result.stderr
        assert f"WARNING {line}\n" in (out / "run.log").read_text()
    status = cli("status", str(out))
    for name, kind in (("pipe.png", "a FIFO"), ("zero.tif", "a character device")):
        assert any(name in row and kind in row for row in status.stdout.splitlines()), status.stdout


def _png_with_huge_text(size: tuple[int, int], text_after_pixels: bool) -> bytes:
    """A PNG whose zTXt chunk inflates to 2 MiB, over Pillow's 1 MiB MAX_TEXT_CHUNK."""
    buffer = io.BytesIO()
    Image.new("RGB", size, (10, 120, 200)).save(buffer, "PNG")
    png = buffer.getvalue()
    data = b"comment\0\0" + zlib.compress(b"x" * (2 << 20))
    ztxt = (
        struct.pack(">I", len(data))
        + b"zTXt"
        + data
        + struct.pack(">I", zlib.crc32(b"zTXt" + data))
    )
    at = len(png) - 12 if text_after_pixels else 33  # before IEND, or right after IHDR
    return png[:at] + ztxt + png[at:]


@pytest.mark.parametrize("text_after_pixels", [False, True], ids=["before", "after"])
def test_png_with_text_over_pillows_limit_reads_its_pixels(
    tmp_path: Path, text_after_pixels: bool
) -> None:
    """Pillow refuses the text chunk (a text bomb guard); the pixels are fine and are read."""
    path = tmp_path / "annotated.png"
    path.write_bytes(_png_with_huge_text((50, 40), text_after_pixels))
    assert probe_document(path, SETTINGS).page_count == 1
    page = load_page(path, 0, SETTINGS)
    assert page.size == (50, 40)
    assert page.getpixel((25, 20)) == (10, 120, 200)


def test_png_with_huge_text_still_meets_the_pixel_limit(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    path.write_bytes(_png_with_huge_text((100, 100), text_after_pixels=False))
    with pytest.raises(DocumentError) as caught:
        probe_document(path, IngestSettings(dpi=36, max_image_pixels=5000))
    assert caught.value.reason.startswith("too large")


# -- a PDF page of absurd size -------------------------------------------------------------------

HUGE_PT = 10_000_000.0  # 3.5 km: a damaged MediaBox, not a page
SQUARE_80_M = 80 / 0.0254 * 72  # a page that large is legible only within ~1 Gpx


def _pdf(path: Path, *sizes: tuple[float, float]) -> Path:
    """A PDF with one empty page per (width, height) in points, written by PDFium itself."""
    import pypdfium2 as pdfium

    document = pdfium.PdfDocument.new()
    for width, height in sizes:
        document.new_page(width, height)
    document.save(str(path))
    document.close()
    return path


def test_a_pdf_page_kilometres_wide_is_refused_in_one_line_and_the_others_load(
    tmp_path: Path,
) -> None:
    """It was painted at 0.1 DPI and its ALTO declared a page of 41,666,667 x 41,666,667 px."""
    sizes = [(595, 842), (HUGE_PT, HUGE_PT), (3118, 28346), (SQUARE_80_M, SQUARE_80_M)]
    path = _pdf(tmp_path / "huge.pdf", *sizes)
    settings = IngestSettings(dpi=300)
    assert load_page(path, 0, settings, max_pixels=100_000).info[PAGE_SIZE_KEY] == (2479, 3508)
    with pytest.raises(PageError) as caught:
        load_page(path, 1, settings, max_pixels=100_000)
    message = str(caught.value)
    assert message.startswith(
        "page too large: it declares 10,000,000 x 10,000,000 pt (3.53 km x 3.53 km), "
        "longer than any scroll or roll scan (100 m at most): its page size (MediaBox) is damaged"
    ), message
    assert "\n" not in message
    # A 1.1 m x 10 m roll scan is large, not damaged: it loads, its page size at --dpi.
    roll = load_page(path, 2, settings, max_pixels=100_000)
    assert roll.info[PAGE_SIZE_KEY] == (12992, 118108)
    assert roll.width * roll.height <= 100_000
    # 80 m x 80 m fits the default --max-image-pixels only as a blur.
    with pytest.raises(PageError) as caught:
        load_page(path, 3, settings, max_pixels=100_000)
    assert "(80 m x 80 m), which fits --max-image-pixels 250000000 only at 5 DPI" in str(
        caught.value
    )
    assert "if the page is genuine raise --max-image-pixels" in str(caught.value)


def test_raising_max_image_pixels_lets_a_genuinely_huge_pdf_page_through(tmp_path: Path) -> None:
    path = _pdf(tmp_path / "huge.pdf", (SQUARE_80_M, SQUARE_80_M))
    page = load_page(path, 0, IngestSettings(dpi=300, max_image_pixels=2 * 10**9), 10_000)
    assert page.width * page.height <= 10_000
    assert page.info[PAGE_SIZE_KEY] == (944_882, 944_882)


@pytest.mark.slow
def test_run_fails_only_the_absurd_pdf_page_and_says_so(tmp_path: Path, tiny_model_dir: Path):
    from conftest import assert_valid_alto

    inputs = tmp_path / "scans"
    inputs.mkdir()
    _pdf(inputs / "atlas.pdf", (595, 842), (HUGE_PT, 842))
    out = tmp_path / "out"
    result = run_quick(inputs, out, tiny_model_dir)
    assert result.returncode == ExitCode.SOME_PAGES_FAILED, result.stderr
    assert "Traceback" not in result.stderr
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("atlas.pdf page 2: ")]
    assert "page too large: it declares 10,000,000 x 842 pt" in line, line
    assert_valid_alto((out / "pages/atlas.pdf/0001.alto.xml").read_bytes())
    assert not (out / "pages/atlas.pdf/0002.alto.xml").exists()
    status = cli("status", str(out)).stdout
    assert "atlas.pdf page 2: page too large" in status
