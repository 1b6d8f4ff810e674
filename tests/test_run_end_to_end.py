"""Whole runs through the real CLI: real worker processes, real SQLite, real poppler/pdfium.

These are the slowest tests (each run spawns model workers); they use the tiny checkpoint and a
small token budget so a run over the real test pages takes seconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import GOOD_PAGES, assert_valid_alto

from pipeline.errors import ExitCode
from pipeline.jobs.sqlite_store import JobStore
from pipeline.outputs.alto import alto_to_text

pytestmark = pytest.mark.slow

RUN_OPTIONS = ["--device", "cpu", "--max-new-tokens", "12", "--dpi", "100", "--batch-size", "4"]


def run_args(inputs, out, model, *extra: str) -> list[str]:
    """`run INPUTS --out OUT --model MODEL` with the test options; later options win."""
    return ["run", str(inputs), "--out", str(out), "--model", str(model), *RUN_OPTIONS, *extra]


def cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=Path(__file__).resolve().parents[1],
        **kwargs,
    )


def start_cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
        start_new_session=True,  # its own process group, so "kill the whole run" is one killpg
    )


def output_files(out: Path) -> dict[str, bytes]:
    pages = out / "pages"
    return {
        str(path.relative_to(pages)): path.read_bytes()
        for path in sorted(pages.rglob("*"))
        if path.is_file()
    }


def expected_outputs(pages: dict[str, int]) -> set[str]:
    names = set()
    for relpath, count in pages.items():
        for number in range(1, count + 1):
            names |= {f"{relpath}/{number:04d}.alto.xml", f"{relpath}/{number:04d}.txt"}
    return names


def assert_complete_outputs(out: Path, pages: dict[str, int]) -> dict[str, bytes]:
    files = output_files(out)
    assert set(files) == expected_outputs(pages)
    for name, data in files.items():
        if name.endswith(".alto.xml"):
            assert_valid_alto(data)
            txt = files[name.replace(".alto.xml", ".txt")].decode("utf-8")
            assert alto_to_text(data) + "\n" == txt
    return files


def done_pages(out: Path) -> int:
    try:
        with JobStore.open(out, exclusive=False) as store:
            return store.summary().totals().get("done", 0)
    except Exception:
        return 0


def wait_for_done(
    out: Path, process: subprocess.Popen, at_least: int, timeout: float = 300
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if done_pages(out) >= at_least:
            return
        if process.poll() is not None:
            pytest.fail(f"run ended early: {process.communicate()}")
        time.sleep(0.05)
    pytest.fail(f"no {at_least} pages done within {timeout} s")


def attempts(out: Path) -> dict[int, int]:
    """Every page's attempts column, read from the job store itself."""
    with contextlib.closing(sqlite3.connect(out / ".anandasky" / "jobs.sqlite")) as db:
        return dict(db.execute("SELECT id, attempts FROM pages").fetchall())


def killed_after(out: Path, pages: int, args: list[str]) -> None:
    """Start `run` with `args` and kill -9 its whole process group once `pages` are done."""
    process = start_cli(*args)
    wait_for_done(out, process, pages)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(30)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, good_input, tiny_model_dir) -> dict[str, bytes]:
    """One uninterrupted run: what every interrupted-and-resumed run must end up equal to."""
    out = tmp_path_factory.mktemp("reference") / "out"
    result = cli(*run_args(good_input, out, tiny_model_dir, "--workers", "2", "--quiet"))
    assert result.returncode == ExitCode.OK, result.stderr
    return assert_complete_outputs(out, GOOD_PAGES)


def comparable(files: dict[str, bytes]) -> dict[str, bytes]:
    """ALTO carries its processing time; everything else must be byte-identical."""
    stamp = re.compile(rb"<processingDateTime>[^<]*</processingDateTime>")
    return {name: stamp.sub(b"", data) for name, data in files.items()}


def test_two_cpu_workers_share_the_pages_and_each_sees_one_device(
    tmp_path, good_input, tiny_model_dir
):
    out = tmp_path / "out"
    # Pages long enough, one per batch, that the second worker is ready before the first has
    # taken them all; no line detection, whose CPU use would slow the second worker's start.
    slow = ("--workers", "2", "--max-new-tokens", "600", "--no-repetition-guard")
    slow += ("--batch-size", "1", "--detector", "none")
    result = cli(*run_args(good_input, out, tiny_model_dir, *slow))
    assert result.returncode == ExitCode.OK, result.stderr
    assert_complete_outputs(out, GOOD_PAGES)
    status = json.loads(cli("status", str(out), "--json").stdout)
    per_device = {device["device"]: device["pages"] for device in status["devices"]}
    assert set(per_device) == {"cpu:0", "cpu:1"}
    assert all(count > 0 for count in per_device.values())
    assert sum(per_device.values()) == sum(GOOD_PAGES.values())
    ready_lines = re.findall(
        r"worker (cpu:\d) ready on (\S+) \(pid (\d+)", (out / "run.log").read_text()
    )
    assert sorted(label for label, _, _ in ready_lines) == ["cpu:0", "cpu:1"]
    assert len({pid for _, _, pid in ready_lines}) == 2
    assert "pages done" in result.stdout and "stages: model" in result.stdout
    summary = json.loads((out / "run-summary.json").read_text())
    this_run = summary["this_run"]
    assert this_run["pages_done"] == sum(GOOD_PAGES.values())
    assert {label: d["pages"] for label, d in this_run["devices"].items()} == per_device
    assert all(0 < d["busy_fraction"] <= 1 for d in this_run["devices"].values())
    assert summary["collection"]["done"] == sum(GOOD_PAGES.values())
    # ALTO describes the page at full resolution, not the copy shrunk for the model.
    from lxml import etree
    from PIL import Image

    page = etree.parse(str(out / "pages/vertical/jp_vert.jpg/0001.alto.xml")).find(".//{*}Page")
    with Image.open(good_input / "vertical/jp_vert.jpg") as scan:
        assert (int(page.get("WIDTH")), int(page.get("HEIGHT"))) == scan.size


def test_rerun_of_a_finished_run_recomputes_nothing(tmp_path, good_input, tiny_model_dir):
    out = tmp_path / "out"
    args = run_args(good_input, out, tiny_model_dir, "--quiet")
    assert cli(*args).returncode == ExitCode.OK
    before = {p: p.stat().st_mtime_ns for p in (out / "pages").rglob("*") if p.is_file()}
    assert cli(*args).returncode == ExitCode.OK
    after = {p: p.stat().st_mtime_ns for p in (out / "pages").rglob("*") if p.is_file()}
    assert before == after


@pytest.mark.parametrize("kill_after_pages", [0, 3, 10])
def test_resume_after_kill_9_of_the_whole_run_equals_an_uninterrupted_run(
    tmp_path, good_input, tiny_model_dir, reference_run, kill_after_pages
):
    out = tmp_path / "out"
    args = run_args(good_input, out, tiny_model_dir, "--workers", "2", "--quiet")
    process = start_cli(*args)
    if kill_after_pages:
        wait_for_done(out, process, kill_after_pages)
    else:
        deadline = time.monotonic() + 120
        while not (out / ".anandasky").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
    with contextlib.suppress(ProcessLookupError):  # a fast machine may have finished already
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(30)
    result = cli(*args)
    assert result.returncode == ExitCode.OK, result.stderr
    files = assert_complete_outputs(out, GOOD_PAGES)
    assert comparable(files) == comparable(reference_run)
    leftovers = [p for p in out.rglob("*") if p.name.startswith(".tmp")]
    assert leftovers == []


def test_a_worker_killed_mid_run_is_replaced_and_every_page_completes(
    tmp_path, good_input, tiny_model_dir
):
    out = tmp_path / "out"
    # Pages long enough (no stop, no repetition guard) that the run is still going at the kill.
    slow = ("--workers", "2", "--quiet", "--max-new-tokens", "600", "--no-repetition-guard")
    process = start_cli(*run_args(good_input, out, tiny_model_dir, *slow))
    victim = None
    deadline = time.monotonic() + 300
    while victim is None and time.monotonic() < deadline:
        log = (out / "run.log").read_text() if (out / "run.log").exists() else ""
        found = re.findall(r"worker cpu:0 ready on \S+ \(pid (\d+)", log)
        victim = int(found[0]) if found else None
        time.sleep(0.05)
    assert victim is not None, "worker cpu:0 never became ready"
    wait_for_done(out, process, 1)
    os.kill(victim, signal.SIGKILL)
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == ExitCode.OK, stderr
    assert_complete_outputs(out, GOOD_PAGES)
    assert "worker cpu:0 killed by SIGKILL" in (out / "run.log").read_text()


def test_second_run_on_an_output_folder_in_use_is_refused(tmp_path, good_input, tiny_model_dir):
    out = tmp_path / "out"
    # Long pages, so the first run is still working when the second one starts.
    args = run_args(
        good_input,
        out,
        tiny_model_dir,
        "--quiet",
        "--max-new-tokens",
        "1500",
        "--no-repetition-guard",
    )
    first = start_cli(*args)
    wait_for_done(out, first, 1)
    second = cli(*args)
    first.communicate(timeout=600)
    assert second.returncode == ExitCode.OUTPUT_IN_USE
    assert str(out) in second.stderr and len(second.stderr.strip().splitlines()) == 1
    assert first.returncode == ExitCode.OK


def test_changed_settings_are_refused_until_new_config_is_asked_for(
    tmp_path, good_input, tiny_model_dir
):
    out = tmp_path / "out"
    single = tmp_path / "one"
    single.mkdir()
    shutil.copy(good_input / "vertical/jp_vert.jpg", single / "jp_vert.jpg")
    base = run_args(single, out, tiny_model_dir, "--quiet")
    assert cli(*base).returncode == ExitCode.OK
    changed = cli(*base, "--prompt", "Transcribe this page.")
    assert changed.returncode == ExitCode.BAD_ARGUMENTS
    assert "prompt" in changed.stderr and "--new-config" in changed.stderr
    assert cli(*base, "--prompt", "Transcribe this page.", "--new-config").returncode == ExitCode.OK


def test_ctrl_c_stops_gracefully_with_130_and_the_rerun_completes(
    tmp_path, good_input, tiny_model_dir
):
    out = tmp_path / "out"
    args = run_args(good_input, out, tiny_model_dir, "--quiet", "--batch-size", "1")
    process = start_cli(*args)
    wait_for_done(out, process, 1)
    os.killpg(process.pid, signal.SIGINT)
    process.communicate(timeout=300)
    assert process.returncode == ExitCode.INTERRUPTED
    with JobStore.open(out, exclusive=False) as store:
        totals = store.summary().totals()
    assert totals.get("running", 0) == 0
    assert 1 <= totals.get("done", 0) < sum(GOOD_PAGES.values())
    assert cli(*args).returncode == ExitCode.OK
    assert_complete_outputs(out, GOOD_PAGES)


def test_malformed_files_fail_with_reasons_and_every_readable_page_is_done(
    tmp_path, good_input, tiny_model_dir, testdata
):
    inputs = tmp_path / "mixed"
    shutil.copytree(good_input, inputs, symlinks=True)
    os.symlink(testdata / "malformed", inputs / "malformed")
    out = tmp_path / "out"
    result = cli(
        *run_args(inputs, out, tiny_model_dir, "--workers", "2", "--quiet", "--pdf-password", "623")
    )
    assert result.returncode == ExitCode.SOME_PAGES_FAILED, result.stderr
    status = json.loads(cli("status", str(out), "--json").stdout)
    failed = {doc["relpath"]: doc["reason"] for doc in status["failed_documents"]}
    for name in (
        "zero_bytes.pdf",
        "zero_bytes.jpg",
        "not_a_pdf_oops.pdf",
        "zero_pages.pdf",
        "decompression_bomb_65535x66601.gif",
    ):
        assert f"malformed/{name}" in failed, failed
        assert failed[f"malformed/{name}"].strip()
    assert failed["malformed/zero_bytes.pdf"].startswith("empty file")
    assert failed["malformed/decompression_bomb_65535x66601.gif"].startswith("too large")
    text = cli("status", str(out)).stdout
    assert "malformed/zero_bytes.pdf: empty file" in text
    assert "failed documents" in text and "pages:" in text
    files = output_files(out)
    for relpath in GOOD_PAGES:
        assert f"{relpath}/0001.txt" in files
    for name in (
        "cmyk_adobe.jpg",
        "exif_orientation_6.jpg",
        "gray16.tif",
        "palette_trns.png",
        "png_bytes_named.jpg",
        "encrypted_user_pw_623_rc4_40bit.pdf",
    ):
        assert f"malformed/{name}/0001.alto.xml" in files, sorted(files)
    assert {f"malformed/multipage_3frames.tiff/{n:04d}.txt" for n in (1, 2, 3)} <= set(files)
    for name, data in files.items():
        if name.endswith(".alto.xml"):
            assert_valid_alto(data)


def test_a_changed_input_file_is_redone_and_the_others_are_not(tmp_path, testdata, tiny_model_dir):
    inputs = tmp_path / "scans"
    inputs.mkdir()
    shutil.copy(testdata / "pages/vertical/jp_vert.jpg", inputs / "a.jpg")
    shutil.copy(testdata / "pages/handwriting/btv1b84473026_f10.jpg", inputs / "b.jpg")
    out = tmp_path / "out"
    args = run_args(inputs, out, tiny_model_dir, "--quiet")
    assert cli(*args).returncode == ExitCode.OK
    untouched = (out / "pages/b.jpg/0001.txt").stat().st_mtime_ns
    # The same name, new content: a 3-page TIFF replaces a 1-page JPEG.
    (inputs / "a.jpg").unlink()
    shutil.copy(testdata / "malformed/multipage_3frames.tiff", inputs / "a.jpg")
    assert cli(*args).returncode == ExitCode.OK
    assert_complete_outputs(out, {"a.jpg": 3, "b.jpg": 1})
    assert (out / "pages/b.jpg/0001.txt").stat().st_mtime_ns == untouched


def test_resume_reruns_with_the_stored_settings(tmp_path, good_input, tiny_model_dir):
    out = tmp_path / "out"
    killed_after(out, 2, run_args(good_input, out, tiny_model_dir, "--quiet", "--formats", "txt"))
    result = cli("resume", str(out), "--quiet")
    assert result.returncode == ExitCode.OK, result.stderr
    files = set(output_files(out))
    assert files == {name for name in expected_outputs(GOOD_PAGES) if name.endswith(".txt")}


def test_continuous_batching_with_few_rows_gives_the_same_outputs(
    tmp_path, good_input, tiny_model_dir, reference_run
):
    """--max-batch 2 with batches of 6 pages: rows refill as pages finish; every page's file is
    byte for byte what whole-batch decoding wrote (processingDateTime aside)."""
    out = tmp_path / "out"
    args = ("--workers", "2", "--batch-size", "6", "--max-batch", "2", "--quiet")
    result = cli(*run_args(good_input, out, tiny_model_dir, *args))
    assert result.returncode == ExitCode.OK, result.stderr
    assert comparable(assert_complete_outputs(out, GOOD_PAGES)) == comparable(reference_run)


def test_decode_graphs_run_at_fixed_shapes_and_give_the_same_outputs(
    tmp_path, good_input, tiny_model_dir, reference_run
):
    """--decode-graphs: the workers decode at bucketed shapes over a cache allocated whole (on
    this CPU eagerly; a GPU captures the same steps as graphs). Two rows refilled as pages
    finish, so the buckets change mid-batch; every file equals whole-batch eager decoding."""
    out = tmp_path / "out"
    args = ("--workers", "2", "--batch-size", "6", "--max-batch", "2", "--decode-graphs")
    result = cli(*run_args(good_input, out, tiny_model_dir, *args, "--quiet"))
    assert result.returncode == ExitCode.OK, result.stderr
    assert comparable(assert_complete_outputs(out, GOOD_PAGES)) == comparable(reference_run)
    log = (out / "run.log").read_text()
    # Every worker that loaded says so (a run this short may end before the second is ready).
    modes = re.findall(r"worker cpu:\d ready on .*; decode: (.*)", log)
    assert modes and set(modes) == {"fixed shapes, eager (no device graphs on cpu)"}, log


def test_decode_graphs_with_the_remote_code_model_is_refused_before_any_work(
    tmp_path, good_input, tiny_model_dir
):
    out = tmp_path / "out"
    args = ("--impl", "remote", "--decode-graphs")
    result = cli(*run_args(good_input, out, tiny_model_dir, *args))
    assert result.returncode == ExitCode.BAD_ARGUMENTS
    assert "--decode-graphs needs the native model" in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()


def test_a_token_budget_no_page_fits_stops_the_run_with_exit_2_and_pages_pending(
    tmp_path, tiny_model_dir, testdata
):
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(testdata / "pages/vertical/jp_vert.jpg", inputs / "a.jpg")
    out = tmp_path / "out"
    result = cli(*run_args(inputs, out, tiny_model_dir, "--token-budget", "5", "--quiet"))
    assert result.returncode == ExitCode.BAD_ARGUMENTS
    assert "Traceback" not in result.stderr
    assert "--token-budget 5 cannot hold one page" in result.stderr
    with JobStore.open(out, exclusive=False) as store:
        assert store.summary().pages["pending"] == 1


def test_resume_of_a_moved_output_folder_writes_into_it_not_where_it_came_from(
    tmp_path, good_input, tiny_model_dir
):
    first, moved = tmp_path / "first", tmp_path / "moved"
    killed_after(
        first, 2, run_args(good_input, first, tiny_model_dir, "--quiet", "--formats", "txt")
    )
    first.rename(moved)  # the unfinished run's folder, moved elsewhere
    result = cli("resume", str(moved), "--quiet")
    assert result.returncode == ExitCode.OK, result.stderr
    assert not first.exists()  # nothing written back where the folder came from
    files = set(output_files(moved))
    assert files == {name for name in expected_outputs(GOOD_PAGES) if name.endswith(".txt")}
