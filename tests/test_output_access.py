"""The output folder and its environment: every failure one line, its own exit code, nothing lost.

Read-only media and a full disk are real file systems here: a small tmpfs mounted for the test,
which needs root (CI runs as root; elsewhere those tests skip and say why).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import mounted_tmpfs, needs_root
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
PAGES = {"scan.pdf": 6, "a.jpg": 1, "b.jpg": 1}


@pytest.fixture
def inputs(tmp_path, testdata) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(testdata / "pages/pdf/vicksburg_sample_ocr_6p.pdf", folder / "scan.pdf")
    shutil.copy(testdata / "pages/vertical/jp_vert.jpg", folder / "a.jpg")
    shutil.copy(testdata / "pages/handwriting/170025120000003,0074.jpg", folder / "b.jpg")
    return folder


@pytest.fixture
def small_disk(tmp_path):
    """A real 8 MiB file system, unmounted afterwards."""
    with mounted_tmpfs(tmp_path / "disk", "8m") as mount:
        yield mount


def fill(folder: Path) -> Path:
    """Write zeros until the file system says it is full."""
    filler = folder / "filler"
    with open(filler, "wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError:
            pass
    return filler


def one_error_line(result: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("anandasky-batch:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_out_that_is_a_file_is_refused_naming_it(tmp_path, inputs, tiny_model_dir):
    out = tmp_path / "out.txt"
    out.write_text("not a folder")
    result = cli(*run_args(inputs, out, tiny_model_dir))
    assert result.returncode == ExitCode.OUTPUT_ACCESS == 5
    assert f"{out} exists and is not a folder" in one_error_line(result)


def test_out_under_a_file_is_refused_naming_it(tmp_path, inputs, tiny_model_dir):
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "out"
    result = cli(*run_args(inputs, out, tiny_model_dir))
    assert result.returncode == ExitCode.OUTPUT_ACCESS
    assert "is not a folder (a file is in the way)" in one_error_line(result)


def test_out_without_permission_is_refused_naming_it(tmp_path, inputs, tiny_model_dir):
    parent = tmp_path / "locked"
    parent.mkdir()
    parent.chmod(0o500)
    args = [sys.executable, "-m", "cli", *run_args(inputs, parent / "out", tiny_model_dir)]
    if os.geteuid() == 0:  # root ignores permission bits unless it gives up that capability
        caps = "-dac_override,-dac_read_search"
        args = ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}", *args]
    result = subprocess.run(
        args, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1]
    )
    parent.chmod(0o700)
    assert result.returncode == ExitCode.OUTPUT_ACCESS, result.stderr
    assert "permission denied" in one_error_line(result)


@needs_root
def test_read_only_out_refuses_runs_but_status_and_export_read_it(
    tmp_path, inputs, tiny_model_dir, small_disk
):
    out = small_disk / "out"
    assert cli(*run_args(inputs, out, tiny_model_dir, "--quiet")).returncode == ExitCode.OK
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)

    result = cli(*run_args(inputs, out, tiny_model_dir))
    assert result.returncode == ExitCode.OUTPUT_ACCESS
    line = one_error_line(result)
    assert "read-only file system" in line and "move" not in line.lower()

    status = cli("status", str(out))
    assert status.returncode == ExitCode.OK, status.stderr
    assert "0 pending, 0 running, 8 done, 0 failed" in status.stdout
    export = cli("export", str(out), "--to", str(tmp_path / "delivery"), "--format", "txt,alto")
    assert export.returncode == ExitCode.OK, export.stderr
    assert len(list((tmp_path / "delivery").rglob("*.txt"))) == 3


@needs_root
def test_disk_full_mid_run_stops_cleanly_and_the_same_command_finishes_identically(
    tmp_path, inputs, tiny_model_dir, small_disk
):
    reference = tmp_path / "reference"
    options = ("--batch-size", "1", "--workers", "1")
    assert cli(*run_args(inputs, reference, tiny_model_dir, *options, "-q")).returncode == 0

    out = small_disk / "out"
    run = start_cli(*run_args(inputs, out, tiny_model_dir, *options))
    wait_for_done(out, run, at_least=2)
    os.kill(run.pid, signal.SIGSTOP)  # hold the coordinator while the disk fills up
    filler = fill(small_disk)
    os.kill(run.pid, signal.SIGCONT)
    _, stderr = run.communicate(timeout=300)
    result = subprocess.CompletedProcess(run.args, run.returncode, "", stderr)
    assert run.returncode == ExitCode.OUTPUT_ACCESS, stderr
    line = one_error_line(result)
    assert "the disk is full" in line and str(out) in line
    written = output_files(out)
    assert 2 <= len(written) // 2 < 8

    filler.unlink()
    again = cli(*run_args(inputs, out, tiny_model_dir, *options, "-q"))
    assert again.returncode == ExitCode.OK, again.stderr
    assert comparable(assert_complete_outputs(out, PAGES)) == comparable(output_files(reference))
    assert not [p for p in (out / "pages").rglob(".tmp-*")]


@needs_root
def test_a_store_the_full_disk_cannot_open_is_reported_as_disk_full(
    tmp_path, inputs, tiny_model_dir, small_disk
):
    out = small_disk / "out"
    assert cli(*run_args(inputs, out, tiny_model_dir, "-q")).returncode == ExitCode.OK
    fill(small_disk)
    result = cli(*run_args(inputs, out, tiny_model_dir))
    assert result.returncode == ExitCode.OUTPUT_ACCESS
    line = one_error_line(result)
    assert "disk is full" in line and "not a" not in line


def test_a_truncated_checkpoint_is_refused_before_any_worker_starts(
    tmp_path, inputs, tiny_model_dir
):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    weights = model / "model.safetensors"
    os.truncate(weights, weights.stat().st_size // 2)
    out = tmp_path / "out"
    result = cli(*run_args(inputs, out, model))
    assert result.returncode == ExitCode.BAD_ARGUMENTS
    assert f"{weights} is truncated" in one_error_line(result)
    assert "loading the model" not in result.stderr  # no worker was started
    assert f"{weights} is truncated" in (out / "run.log").read_text()


def test_npu_without_torch_npu_names_the_missing_package(tmp_path, inputs, tiny_model_dir):
    # Asked in a fresh interpreter: other tests put stand-in torch_npu modules on this one's path.
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch_npu') is None)"
    if subprocess.run([sys.executable, "-c", probe]).returncode == 0:
        pytest.skip("torch_npu is installed here")
    result = cli(*run_args(inputs, tmp_path / "out", tiny_model_dir, "--device", "npu"))
    assert result.returncode == ExitCode.MISSING_DEPENDENCY
    line = one_error_line(result)
    assert "torch-npu" in line and "ASCEND_RT_VISIBLE_DEVICES" not in line


def test_cuda_on_a_cpu_only_torch_names_the_build(tmp_path, inputs, tiny_model_dir):
    import torch

    if torch.version.cuda is not None:
        pytest.skip("this torch is a CUDA build")
    result = cli(*run_args(inputs, tmp_path / "out", tiny_model_dir, "--device", "cuda"))
    assert result.returncode == ExitCode.MISSING_DEPENDENCY
    assert "CPU-only build" in one_error_line(result)


def test_model_loading_is_announced_before_pages_are_done(tmp_path, inputs, tiny_model_dir):
    result = cli(*run_args(inputs, tmp_path / "out", tiny_model_dir))
    assert result.returncode == ExitCode.OK, result.stderr
    assert f"loading the model ({tiny_model_dir.resolve().name}) on cpu:0 ..." in result.stderr
