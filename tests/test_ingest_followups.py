"""Inputs that used to be misreported: special files, PNG text chunks over the limit."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from PIL import Image

from pipeline.errors import DocumentError, ExitCode
from pipeline.ingest.documents import IngestSettings, load_page, probe_document

SETTINGS = IngestSettings(dpi=36)
REPO = Path(__file__).resolve().parents[1]
RUN_OPTIONS = ["--device", "cpu", "--workers", "1", "--max-new-tokens", "8", "--dpi", "72"]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args], capture_output=True, text=True, timeout=600, cwd=REPO
    )


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
    result = _cli(
        "run", str(inputs), "--out", str(out), "--model", str(tiny_model_dir), *RUN_OPTIONS,
        "--detector", "none",
    )  # fmt: skip
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
    status = _cli("status", str(out))
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
