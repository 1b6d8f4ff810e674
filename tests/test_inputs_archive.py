"""Inputs as archives really hold them, through the real CLI: OUT inside the input folder, files
that are not pages, same-named inputs, removed sources, empty inputs, names that are not UTF-8.

Each run uses the tiny checkpoint on one real page (real worker processes, real SQLite).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TESTDATA, assert_valid_alto
from test_run_end_to_end import cli

from pipeline.errors import ExitCode
from pipeline.jobs.sqlite_store import JobStore

pytestmark = pytest.mark.slow

PAGE = TESTDATA / "pages/vertical/jp_vert.jpg"
OPTIONS = ["--device", "cpu", "--workers", "1", "--max-new-tokens", "4", "--batch-size", "2"]
NOT_PAGES = {  # name -> content: what archive folders hold beside their scans
    "notes.txt": b"box 3, letters 1921-1923\n",
    "page.xml": b"<?xml version='1.0'?><alto/>",
    "scans.md5": b"d41d8cd98f00b204e9800998ecf8427e  page.jpg\n",
    "Thumbs.db": b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(200),
    "finding-aid.docx": b"PK\x03\x04" + bytes(100),
}


def run(inputs: list[Path], out: Path, model: Path, *extra: str) -> subprocess.CompletedProcess:
    args = ["run", *map(str, inputs), "--out", str(out), "--model", str(model), *OPTIONS]
    return cli(*args, "--quiet", *extra)


def status(out: Path) -> dict:
    result = cli("status", str(out), "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def outputs(out: Path) -> dict[str, int]:
    """Output files under OUT/pages with their modification times."""
    pages = out / "pages"
    return {
        str(p.relative_to(pages)): p.stat().st_mtime_ns for p in pages.rglob("*") if p.is_file()
    }


def page_at(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(PAGE, path)
    return path


def test_out_inside_the_input_folder_is_never_read_as_input(tmp_path, tiny_model_dir):
    scans = tmp_path / "scans"
    page_at(scans / "box1/page.jpg")
    out = scans / "out"
    for _ in range(2):  # the rerun sees run.log, run-summary.json and pages/ inside the input
        result = run([scans], out, tiny_model_dir)
        assert result.returncode == ExitCode.OK, result.stderr
    report = status(out)
    assert report["documents"]["failed"] == 0 and report["pages"]["done"] == 1
    assert set(outputs(out)) == {"box1/page.jpg/0001.alto.xml", "box1/page.jpg/0001.txt"}
    # Another run's output folder inside the input is left alone too.
    other = scans / "older-run"
    assert run([page_at(tmp_path / "x.jpg")], other, tiny_model_dir).returncode == ExitCode.OK
    assert run([scans], out, tiny_model_dir).returncode == ExitCode.OK
    assert status(out)["pages"]["done"] == 1


def test_files_that_are_not_pages_are_skipped_and_a_misnamed_page_is_not(tmp_path, tiny_model_dir):
    scans = tmp_path / "scans"
    page_at(scans / "page.jpg")
    for name, content in NOT_PAGES.items():
        (scans / name).write_bytes(content)
    shutil.copyfile(PAGE, scans / "scan-0002")  # no extension, but JPEG content: a page
    out = tmp_path / "out"
    result = cli(*["run", str(scans), "--out", str(out), "--model", str(tiny_model_dir)], *OPTIONS)
    assert result.returncode == ExitCode.OK, result.stderr
    assert "5 files skipped (not pages)" in result.stdout
    report = status(out)
    assert report["documents"]["failed"] == 0 and report["pages"]["done"] == 2
    assert report["skipped_files"]["count"] == len(NOT_PAGES)
    assert sorted(f["relpath"] for f in report["skipped_files"]["files"]) == sorted(NOT_PAGES)
    assert "skipped files, not pages (5):" in cli("status", str(out)).stdout
    log = (out / "run.log").read_text()
    assert "skipped Thumbs.db: not a page file" in log
    # A file named like a page format that does not decode stays a failure.
    (scans / "broken.tif").write_bytes(b"this is not a TIFF")
    assert run([scans], out, tiny_model_dir).returncode == ExitCode.SOME_PAGES_FAILED
    failed = status(out)["failed_documents"]
    assert [doc["relpath"] for doc in failed] == ["broken.tif"]


def test_include_and_exclude_choose_files_and_are_stored_for_resume(tmp_path, tiny_model_dir):
    scans = tmp_path / "scans"
    for name in ("box1/a.jpg", "box1/b.jpg", "box2/c.jpg"):
        page_at(scans / name)
    out = tmp_path / "out"
    picked = ("--include", "box1/*", "--exclude", "b.jpg")
    assert run([scans], out, tiny_model_dir, *picked).returncode == ExitCode.OK
    assert set(outputs(out)) == {"box1/a.jpg/0001.alto.xml", "box1/a.jpg/0001.txt"}
    with JobStore.open(out, exclusive=False) as store:
        stored = store.stored_settings()
    assert (stored["include"], stored["exclude"]) == (["box1/*"], ["b.jpg"])
    assert cli("resume", str(out), "--quiet").returncode == ExitCode.OK
    assert status(out)["pages"]["done"] == 1


def test_same_named_inputs_keep_their_paths_whatever_the_argument_order(tmp_path, tiny_model_dir):
    first, second = page_at(tmp_path / "a/scan.jpg"), page_at(tmp_path / "b/scan.jpg")
    out = tmp_path / "out"
    assert run([first, second], out, tiny_model_dir).returncode == ExitCode.OK
    before = outputs(out)
    assert set(before) == {
        "scan.jpg~a/0001.alto.xml",
        "scan.jpg~a/0001.txt",
        "scan.jpg~b/0001.alto.xml",
        "scan.jpg~b/0001.txt",
    }
    assert run([second, first], out, tiny_model_dir).returncode == ExitCode.OK
    assert outputs(out) == before  # same names, nothing recomputed
    assert status(out)["documents"]["source_removed"] == 0


def test_a_removed_source_is_reported_keeps_its_outputs_and_prune_removes_them(
    tmp_path, tiny_model_dir
):
    scans = tmp_path / "scans"
    page_at(scans / "keep.jpg")
    gone = page_at(scans / "gone.jpg")
    broken = scans / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    out = tmp_path / "out"
    assert run([scans], out, tiny_model_dir).returncode == ExitCode.SOME_PAGES_FAILED
    gone.unlink()
    broken.unlink()
    for _ in range(2):  # neither this run nor any later one fails because of them
        result = run([scans], out, tiny_model_dir)
        assert result.returncode == ExitCode.OK, result.stderr
    report = status(out)
    assert report["sources_removed"] == ["broken.jpg", "gone.jpg"]
    assert report["documents"]["failed"] == 0 and report["documents"]["source_removed"] == 2
    assert "gone.jpg/0001.alto.xml" in outputs(out)
    assert "gone.jpg: source removed" in (out / "run.log").read_text()
    assert "source removed (2; outputs kept" in cli("status", str(out)).stdout
    assert run([scans], out, tiny_model_dir, "--prune").returncode == ExitCode.OK
    assert set(outputs(out)) == {"keep.jpg/0001.alto.xml", "keep.jpg/0001.txt"}
    report = status(out)
    assert report["sources_removed"] == [] and sum(report["documents"].values()) == 1
    # A source that comes back is done again from its content.
    page_at(scans / "gone.jpg")
    assert run([scans], out, tiny_model_dir).returncode == ExitCode.OK
    assert "gone.jpg/0001.txt" in outputs(out)


@pytest.mark.parametrize("content", [{}, {"readme.txt": b"nothing scanned yet\n"}])
def test_an_input_without_page_files_says_so_and_exits_nothing_to_do(
    tmp_path, tiny_model_dir, content
):
    scans = tmp_path / "scans"
    scans.mkdir()
    for name, data in content.items():
        (scans / name).write_bytes(data)
    result = run([scans], tmp_path / "out", tiny_model_dir)
    assert result.returncode == ExitCode.NOTHING_TO_DO == 6
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "nothing to do" in lines[0] and str(scans) in lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.skipif(sys.platform == "darwin", reason="macOS file systems refuse non-UTF-8 names")
def test_names_that_are_not_utf8_are_logged_and_kept_escaped_in_alto(tmp_path, tiny_model_dir):
    scans = tmp_path / "scans"
    scans.mkdir()
    shutil.copyfile(PAGE, os.path.join(os.fsencode(scans), b"caf\xe9.jpg"))
    with open(os.path.join(os.fsencode(scans), b"bad\xff.jpg"), "wb") as f:
        f.write(b"not a jpeg")  # its failure is logged with its name
    out = tmp_path / "out"
    result = run([scans], out, tiny_model_dir)
    assert result.returncode == ExitCode.SOME_PAGES_FAILED, result.stderr
    assert "Logging error" not in result.stderr and "Traceback" not in result.stderr
    log = (out / "run.log").read_bytes()
    assert b"bad\\xff.jpg" in log
    alto = (out / "pages" / "caf%E9.jpg" / "0001.alto.xml").read_bytes()
    assert_valid_alto(alto)
    assert b"<fileName>caf%E9.jpg</fileName>" in alto
