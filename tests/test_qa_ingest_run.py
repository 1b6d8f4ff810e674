"""Odd inputs through the real `run` command, as an archive's user meets them.

Each test runs the CLI in a real process (real loaders, real workers with the tiny checkpoint,
real SQLite) and checks what the user sees: one line per bad file on stderr, the documented exit
code, and the rest of the collection done.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pikepdf
import pytest
from conftest import assert_valid_alto
from lxml import etree
from PIL import Image

from pipeline.errors import ExitCode

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
RUN_OPTIONS = ["--device", "cpu", "--workers", "1", "--max-new-tokens", "8", "--dpi", "72"]


def run(inputs: Path, out: Path, model: Path, *extra: str) -> subprocess.CompletedProcess:
    args = ["run", str(inputs), "--out", str(out), "--model", str(model), *RUN_OPTIONS, *extra]
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )


def stderr_lines(result: subprocess.CompletedProcess) -> list[str]:
    assert "Traceback" not in result.stderr, result.stderr
    return [line for line in result.stderr.splitlines() if line.strip()]


def test_a_tiff_header_pillow_rejects_prints_only_our_one_line_reason(
    tmp_path, testdata, tiny_model_dir
):
    """Pillow logs "More samples per pixel than can be decoded" at ERROR on such a header; with
    no handler of ours on its logger, Python printed it bare on the terminal."""
    inputs = tmp_path / "scans"
    inputs.mkdir()
    shutil.copy(testdata / "malformed" / "oom_header.tif", inputs / "bad.tif")
    shutil.copy(testdata / "malformed" / "palette_trns.png", inputs / "good.png")
    out = tmp_path / "out"
    result = run(inputs, out, tiny_model_dir, "--detector", "none")
    assert result.returncode == ExitCode.SOME_PAGES_FAILED, result.stderr
    lines = stderr_lines(result)
    bad = [line for line in lines if "bad.tif" in line]
    assert bad == [
        "bad.tif: corrupt image: its TIFF header cannot be parsed; export or scan it again"
    ]
    assert not any("samples per pixel" in line for line in lines), lines
    assert_valid_alto(out / "pages" / "good.png" / "0001.alto.xml")


def test_the_input_folder_given_as_out_is_a_usage_error_naming_both(tmp_path, tiny_model_dir):
    """OUT is never read as input, so a run whose OUT is its input folder found "no files" and
    exited 6 (nothing to do) although the folder holds scans; it is a usage error instead."""
    inputs = tmp_path / "scans"
    inputs.mkdir()
    Image.new("RGB", (60, 40), "white").save(inputs / "a.png")
    result = run(inputs, inputs, tiny_model_dir, "--detector", "none")
    assert result.returncode == ExitCode.BAD_ARGUMENTS, result.stderr
    (line,) = stderr_lines(result)
    assert "--out" in line and str(inputs) in line and "input folder" in line, line
    assert not (inputs / "pages").exists()


def test_a_pdf_page_smaller_than_a_pixel_gets_a_one_pixel_page_and_its_lines_detected(
    tmp_path, tiny_model_dir
):
    """A 0.1 x 0.1 pt MediaBox rounded to a 0 x 0 page: ALTO declared WIDTH="0" HEIGHT="0" and
    line detection divided by zero mapping lines into that page."""
    inputs = tmp_path / "scans"
    inputs.mkdir()
    pdf = pikepdf.new()
    pdf.add_blank_page()
    pdf.pages[0].MediaBox = pikepdf.Array([0, 0, 0.1, 0.1])
    pdf.save(inputs / "speck.pdf")
    out = tmp_path / "out"
    result = run(inputs, out, tiny_model_dir, "--detector", "rapidocr", "--layout", "lines")
    assert result.returncode == ExitCode.OK, result.stderr
    assert not any("line detection failed" in line for line in stderr_lines(result))
    alto = out / "pages" / "speck.pdf" / "0001.alto.xml"
    assert_valid_alto(alto)
    page = etree.parse(str(alto)).find(".//{*}Page")
    assert float(page.get("WIDTH")) >= 1 and float(page.get("HEIGHT")) >= 1


def test_broken_and_looping_links_each_fail_with_a_line_saying_what_to_fix(
    tmp_path, tiny_model_dir
):
    """They failed as "unreadable file: No such file or directory" / "Too many levels of
    symbolic links", with nothing on what to do; the rest of the folder is done."""
    inputs = tmp_path / "scans"
    inputs.mkdir()
    Image.new("RGB", (60, 40), "white").save(inputs / "a.png")
    os.symlink("moved_away.png", inputs / "dangling.png")
    os.symlink("loop_b", inputs / "loop_a")
    os.symlink("loop_a", inputs / "loop_b")
    out = tmp_path / "out"
    result = run(inputs, out, tiny_model_dir, "--detector", "none")
    assert result.returncode == ExitCode.SOME_PAGES_FAILED, result.stderr
    lines = stderr_lines(result)
    assert (
        "dangling.png: broken link: it points to moved_away.png, which does not exist; "
        "fix the link or remove it"
    ) in lines, lines
    for name, target in (("loop_a", "loop_b"), ("loop_b", "loop_a")):
        assert (
            f"{name}: link loop: it points to {target}, which leads back to itself; "
            "point it at a file or remove it"
        ) in lines, lines
    assert_valid_alto(out / "pages" / "a.png" / "0001.alto.xml")


def test_an_input_whose_output_path_is_too_long_fails_alone(tmp_path, tiny_model_dir):
    """The input's own path fits the system's limit but OUT/pages/<its path> does not: the run
    stopped with an internal error (exit 15, File name too long) and did no page at all."""
    inputs = tmp_path / "in"
    folder = inputs
    while len(os.fsencode(folder)) < 4060 - 210:
        folder = folder / ("d" * 200)
    folder = folder / ("d" * (4060 - len(os.fsencode(folder)) - 1))
    folder.mkdir(parents=True)
    Image.new("RGB", (60, 40), "white").save(folder / "deep.png")
    Image.new("RGB", (60, 40), "white").save(inputs / "a.png")
    out = tmp_path / "out-with-a-longer-name"
    result = run(inputs, out, tiny_model_dir, "--detector", "none")
    assert result.returncode == ExitCode.SOME_PAGES_FAILED, result.stderr
    (line,) = [line for line in stderr_lines(result) if "deep.png" in line]
    assert ": output path too long: " in line and "--out" in line, line
    assert_valid_alto(out / "pages" / "a.png" / "0001.alto.xml")


def test_a_failed_file_whose_name_holds_a_newline_is_reported_on_one_line(tmp_path, tiny_model_dir):
    """Its name was printed raw, so the reason on stderr, in run.log and in `status` started on
    a line of its own that named no file."""
    inputs = tmp_path / "scans"
    inputs.mkdir()
    (inputs / "two\nlines.jpg").write_bytes(b"")
    Image.new("RGB", (60, 40), "white").save(inputs / "ok.png")
    out = tmp_path / "out"
    result = run(inputs, out, tiny_model_dir, "--detector", "none")
    assert result.returncode == ExitCode.SOME_PAGES_FAILED, result.stderr
    expected = "two\\nlines.jpg: empty file: it has 0 bytes; copy it again from the source"
    assert expected in stderr_lines(result)
    assert f"WARNING {expected}\n" in (out / "run.log").read_text()
    status = subprocess.run(
        [sys.executable, "-m", "cli", "status", str(out)], capture_output=True, text=True, cwd=REPO
    )
    assert f"  {expected}\n" in status.stdout
