"""A job store that lost data is never silent: each kind of damage is named, with a way forward.

The damage is real: files truncated, deleted or overwritten on disk after real runs
(labelled fault injection), then the real CLI runs on them.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
from pathlib import Path

import pytest
from test_run_end_to_end import (
    assert_complete_outputs,
    cli,
    comparable,
    output_files,
    run_args,
    start_cli,
    wait_for_done,
)

from pipeline.errors import ExitCode

pytestmark = pytest.mark.slow
FIRST = {"a.jpg": 1, "b.jpg": 1}
ALL = {**FIRST, "scan.pdf": 6}
OPTIONS = ("--batch-size", "1", "--workers", "1", "--quiet")


@pytest.fixture
def inputs(tmp_path, testdata) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(testdata / "pages/vertical/jp_vert.jpg", folder / "a.jpg")
    shutil.copy(testdata / "pages/handwriting/170025120000003,0074.jpg", folder / "b.jpg")
    return folder


def store_file(out: Path, suffix: str = "") -> Path:
    return out / ".anandasky" / f"jobs.sqlite{suffix}"


def finished_run(inputs: Path, out: Path, model: Path) -> dict[str, bytes]:
    result = cli(*run_args(inputs, out, model, *OPTIONS))
    assert result.returncode == ExitCode.OK, result.stderr
    return output_files(out)


def killed_second_run(inputs: Path, out: Path, model: Path, testdata: Path) -> None:
    """A finished run (its writes checkpointed into the database file), then more input and a
    run killed -9 after more pages: those last pages are recorded only in the -wal file."""
    finished_run(inputs, out, model)
    shutil.copy(testdata / "pages/pdf/vicksburg_sample_ocr_6p.pdf", inputs / "scan.pdf")
    run = start_cli(*run_args(inputs, out, model, "--batch-size", "1", "--workers", "1"))
    wait_for_done(out, run, at_least=len(FIRST) + 3)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    assert store_file(out, "-wal").stat().st_size > 0


def test_an_emptied_store_beside_outputs_is_reported_then_recovered_on_request(
    tmp_path, inputs, tiny_model_dir
):
    out = tmp_path / "out"
    before = finished_run(inputs, out, tiny_model_dir)
    os.truncate(store_file(out), 0)  # FAULT INJECTION: the store lost everything

    result = cli(*run_args(inputs, out, tiny_model_dir))
    assert result.returncode == ExitCode.STORE_DAMAGED == 8
    assert "Traceback" not in result.stderr
    assert "is empty (0 bytes)" in result.stderr and "--recover-store" in result.stderr
    assert output_files(out) == before  # nothing recomputed behind the user's back

    result = cli(*run_args(inputs, out, tiny_model_dir, "--recover-store"))
    assert result.returncode == ExitCode.OK, result.stderr
    assert "damaged job store was kept as" in result.stderr
    assert "2 page(s) already have output files" in result.stderr
    assert list((out / ".anandasky").glob("jobs.sqlite.damaged-*"))
    assert comparable(output_files(out)) == comparable(before)


def test_a_lost_wal_file_is_noticed_and_the_pages_redone_with_a_line_saying_so(
    tmp_path, inputs, tiny_model_dir, testdata
):
    out = tmp_path / "out"
    killed_second_run(inputs, out, tiny_model_dir, testdata)
    store_file(out, "-wal").unlink()  # FAULT INJECTION: the latest writes are gone
    store_file(out, "-shm").unlink(missing_ok=True)

    result = cli(*run_args(inputs, out, tiny_model_dir, "--batch-size", "1"))
    assert result.returncode == ExitCode.OK, result.stderr
    assert "page(s) already have output files" in result.stderr
    assert "page(s) already have output files" in (out / "run.log").read_text()
    assert_complete_outputs(out, ALL)


def test_a_garbled_wal_file_is_never_silent(tmp_path, inputs, tiny_model_dir, testdata):
    out = tmp_path / "out"
    killed_second_run(inputs, out, tiny_model_dir, testdata)
    wal = store_file(out, "-wal")
    data = bytearray(wal.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4096] = os.urandom(4096)  # FAULT INJECTION: damaged frames
    wal.write_bytes(bytes(data))
    store_file(out, "-shm").unlink(missing_ok=True)

    result = cli(*run_args(inputs, out, tiny_model_dir, "--batch-size", "1"))
    assert "Traceback" not in result.stderr
    if result.returncode == ExitCode.STORE_DAMAGED:
        assert "is damaged" in result.stderr and "--recover-store" in result.stderr
    else:  # SQLite stopped reading the log at the damaged frame: the pages after it are redone
        assert result.returncode == ExitCode.OK, result.stderr
        assert "page(s) already have output files" in result.stderr
        assert_complete_outputs(out, ALL)


def test_a_store_corrupt_in_the_middle_is_damaged_for_run_and_status_then_recovered(
    tmp_path, inputs, tiny_model_dir
):
    out = tmp_path / "out"
    before = finished_run(inputs, out, tiny_model_dir)
    db = store_file(out)
    conn = sqlite3.connect(db)
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    with open(db, "r+b") as handle:  # FAULT INJECTION: every page but the header page
        handle.seek(page_size)
        handle.write(b"\xa5" * (db.stat().st_size - page_size))

    for args in (run_args(inputs, out, tiny_model_dir), ("status", str(out))):
        result = cli(*args)
        assert result.returncode == ExitCode.STORE_DAMAGED, result.stderr
        assert "Traceback" not in result.stderr
        assert "is damaged" in result.stderr and "move" not in result.stderr.lower()

    result = cli(*run_args(inputs, out, tiny_model_dir, "--recover-store"))
    assert result.returncode == ExitCode.OK, result.stderr
    assert comparable(output_files(out)) == comparable(before)


def test_recover_store_leaves_a_healthy_store_alone(tmp_path, inputs, tiny_model_dir):
    out = tmp_path / "out"
    finished_run(inputs, out, tiny_model_dir)
    result = cli(*run_args(inputs, out, tiny_model_dir, "--recover-store"))
    assert result.returncode == ExitCode.OK, result.stderr
    assert not list((out / ".anandasky").glob("*.damaged-*"))
    assert "already have output files" not in result.stderr
    assert "nothing to recover" in (out / "run.log").read_text()
