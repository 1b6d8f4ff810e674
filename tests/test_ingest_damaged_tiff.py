"""A multi-page TIFF cut or damaged after its first pages loses only the pages it lost.

The damaged TIFFs are made here: an intact multi-page TIFF written with Pillow, cut short or
with a page header overwritten (fault injection on the file's bytes, never binary test data).
"""

from __future__ import annotations

import contextlib
import io
import json
import sqlite3
import struct
import sys
from pathlib import Path

import pytest
from conftest import assert_valid_alto
from PIL import Image, ImageDraw
from test_run_end_to_end import assert_complete_outputs, cli, output_files, run_args

from pipeline.errors import DocumentError, ExitCode, PageError
from pipeline.ingest.documents import IngestSettings, load_page, probe_document

SETTINGS = IngestSettings(dpi=36)


def _pages(count: int, size: tuple[int, int] = (120, 60)) -> list[Image.Image]:
    """Grey pages that differ from each other, so a page read from the wrong bytes shows."""
    pages = []
    for number in range(count):
        page = Image.new("L", size, 60 + 40 * number)
        ImageDraw.Draw(page).rectangle((8 * number, 5, 8 * number + 40, 40), fill=255)
        pages.append(page)
    return pages


def _tiff(pages: list[Image.Image], compression: str | None = None) -> bytes:
    buffer = io.BytesIO()
    options = {"compression": compression} if compression else {}
    pages[0].save(buffer, "TIFF", save_all=True, append_images=pages[1:], **options)
    return buffer.getvalue()


def _page_offsets(data: bytes) -> list[int]:
    """Where each page's header (IFD) starts, read from the intact file (little-endian TIFF)."""
    assert data[:2] == b"II"
    offsets, offset = [], struct.unpack("<I", data[4:8])[0]
    while offset:
        offsets.append(offset)
        entries = struct.unpack("<H", data[offset : offset + 2])[0]
        offset = struct.unpack("<I", data[offset + 2 + 12 * entries : offset + 6 + 12 * entries])[0]
    return offsets


def _header_end(data: bytes, offset: int) -> int:
    return offset + 2 + 12 * struct.unpack("<H", data[offset : offset + 2])[0] + 4


def _outcome(path: Path, pages: list[Image.Image]) -> list[str]:
    """Per registered page: 'ok' (the original pixels), 'WRONG' (other pixels), or the reason."""
    outcome = []
    for index in range(probe_document(path, SETTINGS).page_count):
        try:
            image = load_page(path, index, SETTINGS)
        except PageError as err:
            outcome.append(err.reason)
            continue
        same = image.convert("L").tobytes() == pages[index].tobytes()
        outcome.append("ok" if same else "WRONG")
    return outcome


@pytest.mark.parametrize("compression", [None, "tiff_lzw", "tiff_adobe_deflate"])
def test_wherever_a_tiff_is_cut_its_whole_pages_load_and_the_cut_ones_fail_as_truncated(
    tmp_path: Path, compression: str | None
) -> None:
    """Every cut point: the pages before the cut read exactly, the rest fail, none is garbage.

    Pillow's frame count fails on such files (all pages were lost), and libtiff decodes a
    compressed page whose data is cut without an error, as a half-blank page.
    """
    pages = _pages(3)
    data = _tiff(pages, compression)
    first_header, last_header = _page_offsets(data)[0], _page_offsets(data)[-1]
    path = tmp_path / "cut.tif"
    seen = set()
    for cut in range(first_header + 1, len(data), max(1, len(data) // 150)):
        path.write_bytes(data[:cut])
        try:
            outcome = _outcome(path, pages)
        except DocumentError as err:  # nothing of page 1 is left to read
            # Cut within the first header itself, the file is not told from a hostile one.
            within_first = first_header < cut < _header_end(data, first_header)
            assert err.reason == "truncated image" or within_first, (cut, str(err))
            seen.add("document")
            continue
        if "truncated image" not in outcome:  # only bytes after the last page's header are gone
            assert outcome == ["ok"] * 3 and cut > last_header, (cut, outcome)
            continue
        readable = outcome.index("truncated image")
        assert outcome == ["ok"] * readable + ["truncated image"] * (len(outcome) - readable), (
            cut,
            outcome,
        )
        seen.add(readable)
    assert {"document", 1, 2} <= seen  # the cut fell in every page


def test_a_cut_page_says_which_file_to_copy_again(tmp_path: Path) -> None:
    pages = _pages(3)
    data = _tiff(pages)
    path = tmp_path / "cut.tif"
    path.write_bytes(data[: _page_offsets(data)[2] + 4])  # page 3's header cut short
    assert probe_document(path, SETTINGS).page_count == 3
    with pytest.raises(PageError) as caught:
        load_page(path, 2, SETTINGS)
    assert str(caught.value).startswith("truncated image: the TIFF ends or is damaged before")
    assert str(caught.value).endswith("copy the file again from the source")
    assert "\n" not in str(caught.value)


def test_a_tiff_with_a_garbled_page_header_keeps_the_pages_before_it(tmp_path: Path) -> None:
    """Not cut, damaged: page 3's header claims 65535 entries (past the end of the file)."""
    pages = _pages(4)
    data = bytearray(_tiff(pages))
    third = _page_offsets(bytes(data))[2]
    data[third : third + 2] = b"\xff\xff"
    path = tmp_path / "garbled.tif"
    path.write_bytes(bytes(data))
    # Pages after a broken header cannot even be counted: the damaged one stands for them.
    assert _outcome(path, pages) == ["ok", "ok", "truncated image"]


def test_a_tiff_cut_before_its_first_page_header_fails_whole_as_truncated(tmp_path: Path) -> None:
    """libtiff writes each page's header after its pixels: cut in page 1, no header is left."""
    data = _tiff(_pages(2), "tiff_lzw")
    first = _page_offsets(data)[0]
    assert first > 100  # the layout this test is about
    path = tmp_path / "cut.tif"
    path.write_bytes(data[: first // 2])
    with pytest.raises(DocumentError) as caught:
        probe_document(path, SETTINGS)
    assert caught.value.reason == "truncated image"
    assert "copy the file again" in caught.value.detail


def test_a_cut_compressed_tiff_loads_without_libtiff_noise_on_stderr(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """libtiff printed 'TIFFAdvanceDirectory: ... Error fetching directory count.' to fd 2."""
    pages = _pages(3)
    data = _tiff(pages, "tiff_lzw")
    path = tmp_path / "cut.tif"
    path.write_bytes(data[: _page_offsets(data)[2] - 10])  # page 3's pixels and header cut
    assert _outcome(path, pages) == ["ok", "ok", "truncated image"]
    assert capfd.readouterr().err == ""
    print("stderr works again", file=sys.stderr)
    assert capfd.readouterr().err == "stderr works again\n"


def test_an_intact_multi_page_tiff_still_reads_every_page(tmp_path: Path) -> None:
    pages = _pages(4)
    path = tmp_path / "whole.tif"
    path.write_bytes(_tiff(pages, "tiff_lzw"))
    assert _outcome(path, pages) == ["ok"] * 4


# -- whole runs ----------------------------------------------------------------------------------


def _page_rows(out: Path) -> dict[tuple[str, int], tuple[int, str, int]]:
    """(relpath, page number) -> (page id, state, attempts), from the job store itself."""
    with contextlib.closing(sqlite3.connect(out / ".anandasky" / "jobs.sqlite")) as db:
        rows = db.execute(
            "SELECT d.relpath, p.page_index, p.id, p.state, p.attempts "
            "FROM pages p JOIN documents d ON d.id = p.doc_id"
        ).fetchall()
    return {
        (relpath, index + 1): (page_id, state, tries)
        for relpath, index, page_id, state, tries in rows
    }


@pytest.mark.slow
def test_run_over_a_cut_tiff_does_its_whole_pages_fails_the_cut_ones_and_redoes_it_once_copied(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    pages = _pages(4, size=(300, 200))
    whole = _tiff(pages)
    headers = _page_offsets(whole)
    inputs = tmp_path / "scans"
    inputs.mkdir()
    # Page 3's header is intact but its pixels are cut; page 4's header is gone.
    (inputs / "box.tif").write_bytes(whole[: headers[2] + 300])
    Image.new("RGB", (200, 120), "white").save(inputs / "other.png")
    out = tmp_path / "out"
    args = run_args(inputs, out, tiny_model_dir, "--workers", "1", "--detector", "none")

    first = cli(*args)
    assert first.returncode == ExitCode.SOME_PAGES_FAILED, first.stderr
    assert "Traceback" not in first.stderr
    for number in (3, 4):
        line = next(x for x in first.stderr.splitlines() if f"box.tif page {number}: " in x)
        assert f"box.tif page {number}: truncated image: the TIFF ends" in line, line
        assert line.endswith("copy the file again from the source"), line
    files = output_files(out)
    done = {("box.tif", 1), ("box.tif", 2), ("other.png", 1)}
    assert set(files) == {f"{doc}/{n:04d}.{ext}" for doc, n in done for ext in ("alto.xml", "txt")}
    for name, data in files.items():
        if name.endswith(".alto.xml"):
            assert_valid_alto(data)
    status = json.loads(cli("status", str(out), "--json").stdout)
    failed = {(page["relpath"], page["page"]): page["error"] for page in status["failed_pages"]}
    assert set(failed) == {("box.tif", 3), ("box.tif", 4)}
    assert all(error.startswith("truncated image: the TIFF ends") for error in failed.values())
    assert status["failed_documents"] == []
    text = cli("status", str(out)).stdout
    assert "box.tif page 3: truncated image" in text and "box.tif page 4: truncated image" in text
    rows = _page_rows(out)
    assert {key for key, (_, state, _) in rows.items() if state == "done"} == done
    assert all(rows[key][2] == 1 for key in failed)  # failed for good at once: no retries

    # The file is copied again, intact: registered anew (new content), its pages all done from
    # it; the other document is neither read nor written again.
    other_written = (out / "pages/other.png/0001.txt").stat().st_mtime_ns
    (inputs / "box.tif").write_bytes(whole)
    final = cli(*args)
    assert final.returncode == ExitCode.OK, final.stderr
    assert_complete_outputs(out, {"box.tif": 4, "other.png": 1})
    assert (out / "pages/other.png/0001.txt").stat().st_mtime_ns == other_written
    after = _page_rows(out)
    assert after[("other.png", 1)] == rows[("other.png", 1)]
    assert {after[("box.tif", n)][0] for n in (1, 2)}.isdisjoint(
        rows[("box.tif", n)][0] for n in (1, 2)
    )
    status = json.loads(cli("status", str(out), "--json").stdout)
    assert status["failed_pages"] == [] and status["failed_documents"] == []
