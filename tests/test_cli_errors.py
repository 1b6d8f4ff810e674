"""Usage errors, --version, and unforeseen failures: one line, a documented exit code, no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from test_run_end_to_end import cli, run_args

from pipeline import __version__
from pipeline.errors import ExitCode

REPO = Path(__file__).resolve().parents[1]


def assert_no_traceback(result: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "Usage: anandasky-batch [OPTIONS] COMMAND"),
        (["run"], "Missing argument"),
        (["run", "scans", "--model", "m"], "Missing option '--out'"),
        (["run", "scans", "--out", "o", "--model", "m", "--workers", "abc"], "--workers"),
        (["run", "scans", "--out", "o", "--model", "m", "--bogus"], "No such option: --bogus"),
        (["run", "scans", "--out", "o", "--model", "m", "--rasterizer", "gs"], "--rasterizer"),
        (["export", "out"], "Missing option '--to'"),
        (["status"], "Missing argument"),
        (["no-such-command"], "No such command"),
    ],
)
def test_usage_errors_exit_2_with_one_usage_message(args, message):
    result = cli(*args)
    assert result.returncode == ExitCode.BAD_ARGUMENTS, result.stderr
    assert message in result.stderr + result.stdout  # the bare command shows the help
    assert_no_traceback(result)


def test_version_prints_the_package_version():
    result = cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"anandasky-batch {__version__}"


def _cli_with_injected_bug(module: str, attribute: str, *args: str) -> subprocess.CompletedProcess:
    """FAULT INJECTION: replace `module.attribute` with a function that raises, as a bug would."""
    owner, _, name = f"m.{attribute}".rpartition(".")
    code = (
        f"import {module} as m\n"
        "def broken(*a, **k):\n    raise KeyError('injected-bug')\n"
        f"setattr({owner}, {name!r}, broken)\n"
        "import cli\n"
        f"cli.main({list(args)!r})\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=600
    )


def test_an_unforeseen_error_is_an_internal_error_with_its_traceback_in_a_file():
    result = _cli_with_injected_bug("pipeline.jobs.status", "print_status", "status", "somewhere")
    assert result.returncode == ExitCode.INTERNAL_ERROR == 15
    assert_no_traceback(result)
    (line,) = result.stderr.strip().splitlines()
    assert "internal error (KeyError: 'injected-bug')" in line
    log_path = Path(line.split("the traceback is in ")[1].split(". Please")[0])
    try:
        assert "Traceback" in log_path.read_text() and "injected-bug" in log_path.read_text()
    finally:
        log_path.unlink()


@pytest.mark.slow
def test_an_internal_error_during_a_run_writes_its_traceback_to_the_run_log(
    tmp_path, tiny_model_dir, testdata
):
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "a.jpg").write_bytes((testdata / "pages/vertical/jp_vert.jpg").read_bytes())
    out = tmp_path / "out"
    args = run_args(inputs, out, tiny_model_dir, "--quiet")
    result = _cli_with_injected_bug("pipeline.runner.scheduler", "Scheduler.run", *args)
    assert result.returncode == ExitCode.INTERNAL_ERROR
    assert_no_traceback(result)
    assert f"the traceback is in {out / 'run.log'}" in result.stderr
    run_log = (out / "run.log").read_text()
    assert "internal error" in run_log and "Traceback" in run_log and "injected-bug" in run_log
