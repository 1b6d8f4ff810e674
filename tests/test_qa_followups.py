"""Follow-ups of an exploratory QA pass: each failure a user hit is one line naming what is wrong
and what to do, with its documented exit code, and nothing is left behind by a refused command.

All through the real CLI in a subprocess; damage to the job store is labelled fault injection.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from export_fixture import build_out
from test_qa_cli_commands import one_error_line
from test_run_end_to_end import cli

from pipeline.errors import ExitCode

TESTDATA = Path(__file__).resolve().parent / "data"


@pytest.fixture
def emptied_out(tmp_path) -> Path:
    """An OUT folder with real page outputs whose job store was truncated to 0 bytes."""
    out = tmp_path / "out"
    build_out(out).close()
    for suffix in ("-wal", "-shm"):
        Path(f"{out}/.anandasky/jobs.sqlite{suffix}").unlink(missing_ok=True)
    os.truncate(out / ".anandasky" / "jobs.sqlite", 0)  # FAULT INJECTION: the store lost all
    assert any((out / "pages").iterdir())
    return out


def _readers(out: Path, tmp_path: Path) -> list[tuple[str, ...]]:
    return [
        ("status", str(out)),
        ("export", str(out), "--to", str(tmp_path / "delivery")),
        ("evaluate", str(out), "--gt", str(TESTDATA / "gt")),
        ("resume", str(out)),
    ]


def test_an_emptied_store_beside_outputs_is_damaged_for_every_reading_command(
    emptied_out, tmp_path
):
    for args in _readers(emptied_out, tmp_path):
        result = cli(*args)
        line = one_error_line(result)
        assert result.returncode == ExitCode.STORE_DAMAGED == 8, (args, line)
        assert "is empty (0 bytes)" in line and "not finished being created" not in line


def test_a_store_still_being_created_keeps_its_message(tmp_path):
    out = tmp_path / "out"
    (out / ".anandasky").mkdir(parents=True)
    (out / ".anandasky" / "jobs.sqlite").write_bytes(b"")  # created, header not yet written
    result = cli("status", str(out))
    assert result.returncode == ExitCode.BAD_ARGUMENTS
    assert "not finished being created" in one_error_line(result)


def test_the_damaged_store_advice_names_the_run_command_from_every_command(emptied_out, tmp_path):
    for args in _readers(emptied_out, tmp_path):
        line = one_error_line(cli(*args))
        assert f"anandasky-batch run INPUTS --out {emptied_out} --recover-store" in line, line
        assert "Run again with --recover-store" not in line


def test_a_garbled_store_advice_names_the_run_command_for_status(tmp_path):
    out = tmp_path / "out"
    build_out(out).close()
    db = out / ".anandasky" / "jobs.sqlite"
    db.write_bytes(b"\xa5" * db.stat().st_size)  # FAULT INJECTION: not a database any more
    result = cli("status", str(out))
    line = one_error_line(result)
    assert result.returncode == ExitCode.STORE_DAMAGED, line
    assert f"anandasky-batch run INPUTS --out {out} --recover-store" in line, line


# ---- infer ------------------------------------------------------------------------------------


@pytest.fixture
def broken_model(tmp_path, tiny_model_dir) -> Path:
    """A checkpoint whose config is fine but whose weights fail only when the model loads."""
    model = tmp_path / "broken-model"
    shutil.copytree(tiny_model_dir, model)
    os.truncate(model / "model.safetensors", 100)  # FAULT INJECTION: weights cut short
    return model


def test_infer_reports_an_unreadable_image_before_loading_the_model(broken_model):
    image = TESTDATA / "malformed" / "zero_bytes.jpg"
    result = cli("infer", "--model", str(broken_model), "--image", str(image))
    line = one_error_line(result)
    assert result.returncode == ExitCode.BAD_ARGUMENTS
    assert f"cannot read {image}" in line and "safetensors" not in line, line


def test_infer_opens_an_encrypted_pdf_with_the_pdf_password_its_advice_names(tiny_model_dir):
    pdf = TESTDATA / "malformed" / "encrypted_user_pw_623_rc4_40bit.pdf"
    base = ("infer", "--model", str(tiny_model_dir), "--image", str(pdf), "--device", "cpu")
    refused = cli(*base, "--max-new-tokens", "4")
    assert refused.returncode == ExitCode.BAD_ARGUMENTS
    assert "--pdf-password" in one_error_line(refused)
    opened = cli(*base, "--max-new-tokens", "4", "--pdf-password", "623")
    assert opened.returncode == ExitCode.OK, opened.stderr


def test_infer_with_a_file_as_model_says_a_model_folder_is_expected(tmp_path):
    model = tmp_path / "weights.txt"
    model.write_text("not a model")
    image = TESTDATA / "pages" / "vertical" / "jp_vert.jpg"
    result = cli("infer", "--model", str(model), "--image", str(image))
    line = one_error_line(result)
    assert result.returncode == ExitCode.BAD_ARGUMENTS, line
    assert f"{model} is a file, not a folder" in line and "does not exist" not in line, line


# ---- run: refused options leave nothing behind ------------------------------------------------


@pytest.mark.parametrize(
    ("option", "code", "named"),
    [
        (("--workers", "0"), ExitCode.BAD_ARGUMENTS, "--workers"),
        (("--max-image-pixels", "0"), ExitCode.BAD_ARGUMENTS, "--max-image-pixels"),
        (("--device", "npu:9"), ExitCode.MISSING_DEPENDENCY, "--device npu:9"),
        (("--dtype", "float64"), ExitCode.BAD_ARGUMENTS, "--dtype float64"),
    ],
)
def test_a_refused_run_option_creates_no_output_folder(
    tmp_path, tiny_model_dir, option, code, named
):
    if option[0] == "--device" and importlib.util.find_spec("torch_npu") is not None:
        pytest.skip("torch-npu is installed here: npu:9 may pass the runtime check")
    out = tmp_path / "out"
    page = TESTDATA / "pages" / "vertical" / "jp_vert.jpg"
    result = cli("run", str(page), "--out", str(out), "--model", str(tiny_model_dir), *option)
    line = one_error_line(result)
    assert result.returncode == code, line
    assert named in line and "BadArguments" not in line, line
    assert not out.exists(), f"{out} was created by a refused command"


# ---- run: a file name that is not UTF-8 ------------------------------------------------------


def test_a_page_that_fails_to_load_names_a_non_utf8_file_with_xnn_escapes(tmp_path, tiny_model_dir):
    inputs = tmp_path / "in"
    inputs.mkdir()
    name = os.fsdecode(b"tr\xfcnc.jpg")  # Latin-1 bytes, as old archive disks hold them
    shutil.copy(TESTDATA / "malformed" / "truncated_jpeg.jpg", inputs / name)
    out = tmp_path / "out"
    args = ("--device", "cpu", "--detector", "none", "--max-attempts", "1", "--max-new-tokens", "4")
    result = cli("run", str(inputs), "--out", str(out), "--model", str(tiny_model_dir), *args)
    assert "Traceback" not in result.stderr
    log = (out / "run.log").read_text(encoding="utf-8", errors="backslashreplace")
    for where in (result.stderr, log):
        assert "tr\\xfcnc.jpg page 1: truncated image" in where, where
        assert "\\udc" not in where and "\udcfc" not in where, where


# ---- Ctrl-C at start-up ------------------------------------------------------------------------


def _console_entry_point() -> tuple[str, str]:
    """`module:function` that the installed `anandasky-batch` script calls (pyproject.toml)."""
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text(encoding="utf-8")
    found = re.search(r'^anandasky-batch = "([\w.]+):(\w+)"$', text, re.MULTILINE)
    assert found, "no anandasky-batch console script in pyproject.toml"
    return found.group(1), found.group(2)


def test_ctrl_c_while_the_command_line_starts_exits_130_without_a_traceback(
    tiny_model_dir,
):
    """SIGINT 0-42 ms after the entry point is called: during the imports of the command line,
    or just after them, as the command line sets up; both end with 130 and no traceback.
    The child says when it is about to call the entry point, so no signal lands in Python's
    own start-up (which prints its own traceback, out of our reach)."""
    module, function = _console_entry_point()
    # The signal is sent once the interpreter is up and the entry module (a few lines, no
    # imports of its own) is loaded: from there on every moment must be covered.
    code = f"import os; from {module} import {function}; os.write(1, b'+'); {function}()"
    image = TESTDATA / "pages" / "vertical" / "jp_vert.jpg"
    args = ("infer", "--model", str(tiny_model_dir), "--image", str(image), "--device", "cpu")
    for step in range(15):
        child = subprocess.Popen(
            [sys.executable, "-c", code, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=Path(__file__).resolve().parents[1],
        )
        assert child.stdout.read(1) == b"+"
        time.sleep(step * 0.003)
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=600)
        stderr = err.decode("utf-8", "replace")
        assert "Traceback" not in stderr, f"SIGINT after {step * 3} ms:\n{stderr}"
        assert child.returncode == ExitCode.INTERRUPTED == 130, (step, stderr)
