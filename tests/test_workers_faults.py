"""Device workers that hang, die, answer short or cannot load, through the real CLI.

Faults are injected with the test-only ANANDASKY_TEST_FAULT variable (pipeline/child_process.py
`injected_fault`), read by the real worker processes; everything else is the real run: real
model workers on the tiny checkpoint, real SQLite, real pages.
"""

from __future__ import annotations

import contextlib
import multiprocessing
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

from pipeline.errors import ExitCode
from pipeline.faults import FAULT_VARIABLE
from pipeline.runner.child_process import prepare_child_process

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
PAGES = ("handwriting/btv1b84473026_f10.jpg", "vertical/jp_vert.jpg", "vertical/ndl_3508165_9.jpg")
OPTIONS = ["--device", "cpu", "--max-new-tokens", "4", "--batch-size", "2", "--loaders", "1"]


@pytest.fixture
def scans(tmp_path, testdata) -> Path:
    root = tmp_path / "scans"
    for relpath in PAGES:
        target = root / relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(testdata / "pages" / relpath, target)
    return root


def run_args(scans: Path, out: Path, model: Path, *extra: str) -> list[str]:
    run = [sys.executable, "-m", "cli", "run", str(scans), "--out", str(out)]
    return [*run, "--model", str(model), *OPTIONS, "--quiet", *extra]


def fault_env(fault: str) -> dict[str, str]:
    return {**os.environ, FAULT_VARIABLE: fault}


def run_cli(args: list[str], fault: str | None = None, **kwargs) -> subprocess.CompletedProcess:
    env = fault_env(fault) if fault else None
    return subprocess.run(
        args, capture_output=True, text=True, timeout=300, cwd=REPO, env=env, **kwargs
    )


def start_cli(args: list[str], fault: str) -> subprocess.Popen:
    return subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=fault_env(fault),
        start_new_session=True,
    )


def page_states(out: Path) -> dict[str, int]:
    """Pages per state, read-only (never creates the store); {} while there is none yet."""
    uri = (out / ".anandasky" / "jobs.sqlite").as_uri() + "?mode=ro"
    try:
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
            rows = db.execute("SELECT state, COUNT(*) FROM pages GROUP BY state").fetchall()
    except sqlite3.OperationalError:  # not created yet, or its tables not yet
        return {}
    return dict(rows)


def ready_worker_pids(out: Path) -> list[int]:
    log = out / "run.log"
    text = log.read_text(errors="replace") if log.exists() else ""
    return [int(pid) for pid in re.findall(r"ready on \S+ \(pid (\d+)", text)]


def wait_for(condition, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if process.poll() is not None:
            pytest.fail(f"run ended early: {process.communicate()}")
        time.sleep(0.1)
    pytest.fail("condition not reached in time")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purpose (its parent, the test process, is not reaping it).
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    return False


def test_a_hung_batch_is_killed_after_the_batch_timeout_and_its_pages_retried(
    tmp_path, scans, tiny_model_dir
):
    out = tmp_path / "out"
    marker = tmp_path / "hung-once"
    args = run_args(scans, out, tiny_model_dir, "--batch-timeout", "3")
    result = run_cli(args, fault=f"batch:hang:{marker}")
    assert marker.exists()  # the fault did fire
    assert result.returncode == ExitCode.OK, result.stderr
    assert page_states(out) == {"done": len(PAGES)}
    log = (out / "run.log").read_text()
    assert "took longer than --batch-timeout 3 s; killed" in log
    assert len(set(ready_worker_pids(out))) == 2  # the hung worker was replaced


def test_first_ctrl_c_does_not_wait_for_a_hung_worker(tmp_path, scans, tiny_model_dir):
    out = tmp_path / "out"
    process = start_cli(run_args(scans, out, tiny_model_dir), fault="batch:hang")
    try:
        wait_for(lambda: page_states(out).get("running", 0) > 0, process)
        pid = ready_worker_pids(out)[0]
        asked = time.monotonic()
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=30)
        waited = time.monotonic() - asked
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == ExitCode.INTERRUPTED
    assert waited < 15, f"first Ctrl-C waited {waited:.1f} s on a hung worker"
    assert page_states(out) == {"pending": len(PAGES)}  # nothing counted against the pages
    assert not alive(pid)


def test_a_batch_answered_for_fewer_pages_is_retried_not_left_running(
    tmp_path, scans, tiny_model_dir
):
    out = tmp_path / "out"
    marker = tmp_path / "short-once"
    result = run_cli(run_args(scans, out, tiny_model_dir), fault=f"batch:short:{marker}")
    assert marker.exists()
    assert result.returncode == ExitCode.OK, result.stderr
    assert page_states(out) == {"done": len(PAGES)}
    assert "1 result(s) for a batch of 2 pages" in (out / "run.log").read_text()


def test_a_model_load_failure_that_is_no_usage_error_exits_devices_lost(
    tmp_path, scans, tiny_model_dir
):
    out = tmp_path / "out"
    result = run_cli(run_args(scans, out, tiny_model_dir), fault="load:error")
    assert result.returncode == ExitCode.DEVICES_LOST, result.stderr
    assert "could not load the model: RuntimeError" in result.stderr
    assert "Traceback" not in result.stderr
    assert page_states(out) == {"pending": len(PAGES)}


def test_workers_killed_from_outside_exit_devices_lost_with_pages_pending(
    tmp_path, scans, tiny_model_dir
):
    out = tmp_path / "out"
    # Workers hang on their batch so no page finishes; the test kills each one once it is ready.
    args = run_args(scans, out, tiny_model_dir, "--max-attempts", "100")
    process = start_cli(args, fault="batch:hang")
    killed: set[int] = set()
    try:
        deadline = time.monotonic() + 240
        while process.poll() is None and time.monotonic() < deadline:
            for pid in set(ready_worker_pids(out)) - killed:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            time.sleep(0.1)
        _, stderr = process.communicate(timeout=30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == ExitCode.DEVICES_LOST, stderr
    assert "every device worker died" in stderr
    assert len(killed) == 4  # the first worker and its three replacements
    assert set(page_states(out)) <= {"pending"}


def test_killing_the_coordinator_kills_its_workers(tmp_path, scans, tiny_model_dir):
    out = tmp_path / "out"
    process = start_cli(run_args(scans, out, tiny_model_dir), fault="batch:hang")
    try:
        wait_for(lambda: ready_worker_pids(out), process)
        worker = ready_worker_pids(out)[0]
        process.kill()
        process.wait(timeout=10)
        deadline = time.monotonic() + 10
        while alive(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(worker)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


def _can_unshare_pid() -> str | None:
    """Why a pid-namespace run cannot be tried here, or None when it can."""
    if shutil.which("unshare") is None:
        return "needs util-linux unshare"
    if os.geteuid() != 0:
        return "needs root to create a pid namespace (CI runs as root)"
    probe = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], check=False)
    return None if probe.returncode == 0 else "unshare --pid is not permitted here"


def test_a_run_whose_coordinator_is_pid_1_completes(tmp_path, scans, tiny_model_dir):
    """As in a container without init: the children must not take pid 1 for a dead parent."""
    reason = _can_unshare_pid()
    if reason:
        pytest.skip(reason)
    out = tmp_path / "out"
    args = ["unshare", "--pid", "--fork", "--mount-proc", *run_args(scans, out, tiny_model_dir)]
    result = run_cli([*args, "--workers", "2"])
    assert result.returncode == ExitCode.OK, result.stderr
    assert page_states(out) == {"done": len(PAGES)}
    assert "crashed" not in (out / "run.log").read_text()
    assert re.findall(r"ready on \S+ \(pid (\d+)", (out / "run.log").read_text())


def _stay_alive_as_child(parent_pid: int) -> None:
    prepare_child_process(parent_pid)
    time.sleep(30)


def test_a_child_whose_parent_is_already_gone_exits_at_once():
    """The parent pid each child compares with is the one it was given, whatever its value."""
    ctx = multiprocessing.get_context("spawn")
    orphan = ctx.Process(target=_stay_alive_as_child, args=(os.getpid() + 1_000_000,))
    orphan.start()
    orphan.join(30)
    assert orphan.exitcode == 1
    child = ctx.Process(target=_stay_alive_as_child, args=(os.getpid(),))
    child.start()
    child.join(3)
    assert child.exitcode is None  # its parent is alive: it stays
    child.kill()
    child.join(5)


def test_a_page_that_kills_its_worker_fails_alone_and_its_batch_mates_are_done(
    tmp_path, scans, tiny_model_dir
):
    """FAULT INJECTION (page:exit-97x61): a worker process exits whenever a 97x61-pixel page
    is among the pages it takes, as a page that crashes the device runtime would. The pages in
    flight are charged and retried alone, each on a worker with nothing else out, so only the
    poisonous page keeps killing workers: it fails after --max-attempts, the others are done."""
    from PIL import Image

    Image.new("RGB", (97, 61), "white").save(scans / "poison.png")
    out = tmp_path / "out"
    args = run_args(scans, out, tiny_model_dir, "--max-attempts", "2")
    result = run_cli(args, fault="page:exit-97x61")
    assert result.returncode == ExitCode.SOME_PAGES_FAILED, result.stderr
    assert page_states(out) == {"done": len(PAGES), "failed": 1}
    uri = (out / ".anandasky" / "jobs.sqlite").as_uri() + "?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
        attempts = dict(
            db.execute(
                "SELECT d.relpath, p.attempts FROM pages p JOIN documents d ON d.id = p.doc_id"
            ).fetchall()
        )
    assert attempts.pop("poison.png") == 2
    assert max(attempts.values()) <= 1, attempts  # a batch mate pays once at most
    assert "poison.png page 1: failed" in (out / "run.log").read_text()
