"""The run fingerprint holds the dtype, the implementation and the model folder's own code.

Resuming a bf16 run in fp32, or after editing a remote-code `.py` file, must be refused instead
of mixing transcriptions; a store written before these keys existed keeps its pages, with a line
saying what was recorded. The run-level tests drive the real CLI on the tiny checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.errors import ExitCode
from pipeline.runner.settings import RunSettings, model_code_checksum

REPO = Path(__file__).resolve().parents[1]
NEW_KEYS = ("code_checksum", "dtype", "impl", "layout", "reading_order", "detector")


def settings(model_dir: str = "weights/m", **overrides) -> RunSettings:
    return RunSettings(inputs=("scans",), out_dir="out", model_dir=model_dir, **overrides)


def fingerprint(s: RunSettings, device_type: str = "cpu", code: str = "c0de") -> dict:
    return s.fingerprint("abc", "prompt", device_type=device_type, code_checksum=code)


def test_the_resolved_dtype_is_in_the_fingerprint():
    assert fingerprint(settings())["dtype"] == "float32"  # the CPU default
    assert fingerprint(settings(), device_type="npu")["dtype"] == "bfloat16"
    assert fingerprint(settings(dtype="bf16")) == fingerprint(settings(dtype="bfloat16"))
    assert fingerprint(settings(dtype="bfloat16"), device_type="npu") == fingerprint(
        settings(), device_type="npu"
    )
    assert fingerprint(settings(), device_type="npu") != fingerprint(settings())


def test_the_resolved_impl_and_the_code_checksum_are_in_the_fingerprint(tiny_model_dir, tmp_path):
    assert fingerprint(settings(impl="remote"))["impl"] == "remote"
    assert fingerprint(settings(str(tiny_model_dir)))["impl"] == "native"  # auto, resolved
    assert fingerprint(settings(str(tiny_model_dir), impl="native")) == fingerprint(
        settings(str(tiny_model_dir))
    )
    assert fingerprint(settings(), code="c0de") != fingerprint(settings(), code="c0df")
    remote_like = tmp_path / "remote"
    shutil.copytree(tiny_model_dir, remote_like)
    (remote_like / "config.json").write_text('{"auto_map": {}}')
    assert fingerprint(settings(str(remote_like)))["impl"] == "remote"


def test_editing_a_code_file_of_the_model_folder_changes_its_checksum(tiny_model_dir, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    before = model_code_checksum(folder)
    (folder / "modeling_anandasky.py").write_text("def generate():\n    return 1\n")
    with_code = model_code_checksum(folder)
    (folder / "modeling_anandasky.py").write_text("def generate():\n    return 2\n")
    edited = model_code_checksum(folder)
    (folder / "preprocessor_config.json").write_text('{"max_tokens": 10}')
    assert len({before, with_code, edited, model_code_checksum(folder)}) == 4


# ---- through the CLI ------------------------------------------------------------------------


@pytest.fixture
def scans(tmp_path, testdata) -> Path:
    root = tmp_path / "scans"
    root.mkdir()
    os.symlink(testdata / "pages" / "vertical" / "jp_vert.jpg", root / "jp_vert.jpg")
    return root


@pytest.fixture
def model(tmp_path, tiny_model_dir) -> Path:
    """A copy of the tiny checkpoint with a code file of its own, free to edit."""
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "processing_extra.py").write_text("SCALE = 1\n")
    return folder


def cli_run(scans: Path, out: Path, model: Path, *extra: str) -> subprocess.CompletedProcess:
    args = ["run", str(scans), "--out", str(out), "--model", str(model), "--device", "cpu"]
    return subprocess.run(
        [sys.executable, "-m", "cli", *args, "--max-new-tokens", "4", "--quiet", *extra],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )


def stored_fingerprint(out: Path) -> dict:
    with contextlib.closing(sqlite3.connect(out / ".anandasky" / "jobs.sqlite")) as db:
        return json.loads(db.execute("SELECT fingerprint FROM run_config").fetchone()[0])


@pytest.mark.slow
def test_a_run_in_another_dtype_is_refused_naming_it(tmp_path, scans, model):
    out = tmp_path / "out"
    assert cli_run(scans, out, model).returncode == ExitCode.OK
    assert stored_fingerprint(out)["dtype"] == "float32"
    result = cli_run(scans, out, model, "--dtype", "bfloat16")
    assert result.returncode == ExitCode.BAD_ARGUMENTS, result.stderr
    assert 'dtype: "float32" -> "bfloat16"' in result.stderr
    assert "--new-config" in result.stderr and "Traceback" not in result.stderr
    assert cli_run(scans, out, model, "--dtype", "fp32").returncode == ExitCode.OK


@pytest.mark.slow
def test_a_run_after_editing_the_model_code_is_refused(tmp_path, scans, model):
    out = tmp_path / "out"
    assert cli_run(scans, out, model).returncode == ExitCode.OK
    (model / "processing_extra.py").write_text("SCALE = 2\n")
    result = cli_run(scans, out, model)
    assert result.returncode == ExitCode.BAD_ARGUMENTS, result.stderr
    assert "code_checksum:" in result.stderr


@pytest.mark.slow
def test_a_store_from_before_these_keys_keeps_its_pages_and_says_what_it_recorded(
    tmp_path, scans, model
):
    out = tmp_path / "out"
    assert cli_run(scans, out, model).returncode == ExitCode.OK
    # What an older version stored: the same fingerprint without the keys added since.
    old = {k: v for k, v in stored_fingerprint(out).items() if k not in NEW_KEYS}
    with contextlib.closing(sqlite3.connect(out / ".anandasky" / "jobs.sqlite")) as db, db:
        db.execute("UPDATE run_config SET fingerprint = ?", (json.dumps(old, sort_keys=True),))
    pages = sorted(p for p in (out / "pages").rglob("*") if p.is_file())
    before = {p: p.stat().st_mtime_ns for p in pages}
    result = cli_run(scans, out, model)
    assert result.returncode == ExitCode.OK, result.stderr
    assert {p: p.stat().st_mtime_ns for p in pages} == before  # nothing recomputed
    assert set(NEW_KEYS) <= set(stored_fingerprint(out))
    log = (out / "run.log").read_text()
    assert "did not record dtype; recorded now as float32" in log
    # An old store whose recorded keys differ is still refused.
    with contextlib.closing(sqlite3.connect(out / ".anandasky" / "jobs.sqlite")) as db, db:
        db.execute("UPDATE run_config SET fingerprint = ?", (json.dumps(old, sort_keys=True),))
    assert cli_run(scans, out, model, "--dpi", "150").returncode == ExitCode.BAD_ARGUMENTS


@pytest.mark.slow
def test_a_store_from_before_line_layout_is_not_continued_in_lines_mode(tmp_path, scans, model):
    out = tmp_path / "out"
    assert cli_run(scans, out, model).returncode == ExitCode.OK
    # What a version before line layout stored: whole-page results, no layout keys.
    old = {k: v for k, v in stored_fingerprint(out).items() if k not in NEW_KEYS}
    with contextlib.closing(sqlite3.connect(out / ".anandasky" / "jobs.sqlite")) as db, db:
        db.execute("UPDATE run_config SET fingerprint = ?", (json.dumps(old, sort_keys=True),))
    result = cli_run(scans, out, model, "--layout", "lines")
    assert result.returncode == ExitCode.BAD_ARGUMENTS, result.stderr
    assert 'layout: (not set) -> "lines"' in result.stderr and "--new-config" in result.stderr
