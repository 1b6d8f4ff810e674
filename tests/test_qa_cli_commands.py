"""The commands beside `run` as a user hits them: every failure one line naming what is wrong and
what to do, a documented exit code, never a traceback (found by exploratory testing).

Read-only media and a full disk are real file systems: a small tmpfs mounted for the test, which
needs root (CI runs as root; elsewhere those tests skip and say why).
"""

from __future__ import annotations

import os
import subprocess

import export_fixture
import pytest
from conftest import assert_valid_xml
from test_run_end_to_end import cli

from pipeline.errors import ExitCode

# The OUT folder's fixtures (export_fixture.py): a real job store and real page outputs.
run, out = export_fixture.run, export_fixture.out

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="mounting a small or read-only file system needs root"
)


@pytest.fixture
def small_disk(tmp_path):
    """A real 1 MiB file system, unmounted afterwards."""
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def one_error_line(result: subprocess.CompletedProcess) -> str:
    """The single `anandasky-batch: error:` line; no traceback anywhere."""
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.startswith("anandasky-batch:")]
    assert len(lines) == 1, result.stderr
    assert "internal error" not in lines[0], lines[0]
    return lines[0]


# ---- export: a delivery folder that cannot be written ------------------------------------------


def test_export_to_a_folder_under_a_file_exits_5_naming_it(out, tmp_path):
    (tmp_path / "file").write_text("x")
    to = tmp_path / "file" / "delivery"
    result = cli("export", str(out), "--to", str(to))
    assert result.returncode == ExitCode.OUTPUT_ACCESS == 5, result.stderr
    line = one_error_line(result)
    assert str(to) in line and "--to" in line


@needs_root
def test_export_to_read_only_media_exits_5_naming_the_folder(out, small_disk):
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    for to in (small_disk / "delivery", small_disk):  # to be created there; the mount itself
        result = cli("export", str(out), "--to", str(to))
        assert result.returncode == ExitCode.OUTPUT_ACCESS, result.stderr
        line = one_error_line(result)
        assert str(to) in line and "read-only" in line.lower()


@needs_root
def test_export_onto_a_full_disk_exits_5_and_finishes_once_there_is_space(out, small_disk):
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (1024 * 1024 - 16 * 1024))  # leaves less than the delivery needs
    to = small_disk / "delivery"
    result = cli("export", str(out), "--to", str(to), "--format", "txt,alto,mets,page,hocr")
    assert result.returncode == ExitCode.OUTPUT_ACCESS, result.stderr
    assert "full" in one_error_line(result).lower() or "space" in one_error_line(result).lower()
    filler.unlink()
    again = cli("export", str(out), "--to", str(to), "--format", "txt,alto,mets,page,hocr")
    assert again.returncode == ExitCode.SOME_PAGES_FAILED, again.stderr  # the fixture has some
    for mets in to.rglob("mets.xml"):
        assert_valid_xml(mets, "mets.xsd")
    assert list(to.rglob("alto/*.xml"))
