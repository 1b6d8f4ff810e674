"""SIGTERM (docker stop, Kubernetes, systemd, SLURM scancel and preemption) stops a run as
Ctrl-C does: exit 130 with one line, no traceback or leak warning, nothing charged to the pages,
and a rerun completes. Real CLI processes, real SQLite, the tiny checkpoint.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import pytest
from conftest import GOOD_PAGES
from PIL import Image
from test_run_end_to_end import (
    assert_complete_outputs,
    attempts,
    cli,
    comparable,
    run_args,
    start_cli,
    wait_for_done,
)

from pipeline.errors import ExitCode
from pipeline.jobs.sqlite_store import JobStore
from pipeline.runner.child_process import prepare_child_process

# Pages long enough (no stop token, no repetition guard) that batches are in flight at the signal,
# one a batch so that the four batches a worker may hold leave pages pending.
LONG_PAGES = ("--quiet", "--batch-size", "1", "--max-new-tokens", "600", "--no-repetition-guard")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, good_input, tiny_model_dir) -> dict[str, bytes]:
    """One uninterrupted run with the same options the interrupted runs use."""
    out = tmp_path_factory.mktemp("reference") / "out"
    result = cli(*run_args(good_input, out, tiny_model_dir, *LONG_PAGES))
    assert result.returncode == ExitCode.OK, result.stderr
    return assert_complete_outputs(out, GOOD_PAGES)


def stop_with_sigterm(tmp_path, good_input, tiny_model_dir, *, whole_group: bool):
    out = tmp_path / "out"
    args = run_args(good_input, out, tiny_model_dir, *LONG_PAGES)
    process = start_cli(*args)
    wait_for_done(out, process, 2)
    if whole_group:  # what SLURM does: every process of the job step gets it
        os.killpg(process.pid, signal.SIGTERM)
    else:  # docker stop, systemd, kill PID: the coordinator only
        os.kill(process.pid, signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == ExitCode.INTERRUPTED, stderr
    for text in (stdout, stderr):
        assert "Traceback" not in text and "leaked" not in text
    with JobStore.open(out, exclusive=False) as store:
        totals = store.summary().totals()
    assert totals.get("running", 0) == 0 and totals.get("failed", 0) == 0
    assert 2 <= totals.get("done", 0) < sum(GOOD_PAGES.values())
    # No child died of it: the worker kept computing through the grace period.
    assert "killed by" not in (out / "run.log").read_text()
    return out, args


@pytest.mark.slow
def test_sigterm_to_the_coordinator_stops_gracefully_with_130_and_the_rerun_completes(
    tmp_path, good_input, tiny_model_dir, reference
):
    out, args = stop_with_sigterm(tmp_path, good_input, tiny_model_dir, whole_group=False)
    result = cli(*args)
    assert result.returncode == ExitCode.OK, result.stderr
    assert comparable(assert_complete_outputs(out, GOOD_PAGES)) == comparable(reference)


@pytest.mark.slow
def test_sigterm_to_the_whole_group_charges_no_page_and_the_rerun_completes(
    tmp_path, good_input, tiny_model_dir, reference
):
    out, args = stop_with_sigterm(tmp_path, good_input, tiny_model_dir, whole_group=True)
    assert set(attempts(out).values()) == {0}
    result = cli(*args)
    assert result.returncode == ExitCode.OK, result.stderr
    assert comparable(assert_complete_outputs(out, GOOD_PAGES)) == comparable(reference)
    assert set(attempts(out).values()) == {0}


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_second_stop_signal_stops_at_once_and_the_run_stays_resumable(
    tmp_path, good_input, tiny_model_dir, signum
):
    out = tmp_path / "out"
    # Long pages, so a batch takes seconds to compute: the second signal must not wait for it.
    long_pages = ("--quiet", "--max-new-tokens", "2500", "--no-repetition-guard")
    process = start_cli(*run_args(good_input, out, tiny_model_dir, *long_pages))
    wait_for_done(out, process, 1)
    batch_started = time.monotonic()
    os.killpg(process.pid, signum)
    time.sleep(0.2)
    os.killpg(process.pid, signum)
    stdout, stderr = process.communicate(timeout=120)
    stopped_after = time.monotonic() - batch_started
    assert process.returncode == ExitCode.INTERRUPTED, stderr
    for text in (stdout, stderr):
        assert "Traceback" not in text and "leaked" not in text
    with JobStore.open(out, exclusive=False) as store:
        totals = store.summary().totals()
        done_s = [p.timings["infer_s"] * p.timings["batch_size"] for p in store.done_pages()]
    # Faster than the batch it abandoned took to compute the first time.
    assert stopped_after < max(done_s)
    assert totals.get("running", 0) == 0 and totals.get("failed", 0) == 0
    assert totals.get("done", 0) < sum(GOOD_PAGES.values())
    assert set(attempts(out).values()) == {0}
    finish = cli(*run_args(good_input, out, tiny_model_dir, *long_pages))
    assert finish.returncode == ExitCode.OK, finish.stderr
    assert_complete_outputs(out, GOOD_PAGES)


def _child(parent_pid: int) -> None:
    prepare_child_process(parent_pid)
    time.sleep(120)


def test_a_child_ignores_an_outside_sigterm_and_obeys_the_coordinators():
    child = mp.get_context("spawn").Process(target=_child, args=(os.getpid(),), daemon=True)
    child.start()
    try:
        time.sleep(3)  # past its set-up
        # SIGTERM from another process (SLURM, systemd, a user): the child stays.
        kill = f"import os; os.kill({child.pid}, {int(signal.SIGTERM)})"
        subprocess.run([sys.executable, "-c", kill], check=True)
        child.join(2)
        assert child.exitcode is None
        # The coordinator's own (what its process pools send a child they end): it dies of it.
        child.terminate()
        child.join(30)
        assert child.exitcode == -signal.SIGTERM
    finally:
        child.kill()


def test_a_loader_pool_whose_child_crashed_ends_the_others_instead_of_hanging():
    """A broken pool terminates its other children with SIGTERM and joins them: children that
    ignored it would keep the pool (and the run's exit) waiting for their work to end."""
    executor = ProcessPoolExecutor(
        max_workers=2,
        mp_context=mp.get_context("spawn"),
        initializer=prepare_child_process,
        initargs=(os.getpid(),),
    )
    # Both children started first (a submit to a pool with no idle child starts one), so the
    # pool watches both when one dies.
    started = [executor.submit(time.sleep, 1) for _ in range(2)]
    for future in started:
        future.result(timeout=60)
    busy = executor.submit(time.sleep, 120)  # the other child, still working when the pool breaks
    time.sleep(1)
    crash = executor.submit(os.abort)  # fault injection: a decoder crashing its loader
    with pytest.raises(BrokenProcessPool):
        crash.result(timeout=60)
    closing = threading.Thread(target=executor.shutdown, daemon=True)
    closing.start()
    closing.join(60)
    assert not closing.is_alive(), "the broken pool still waits for its other child"
    with pytest.raises(BrokenProcessPool):
        busy.result(timeout=0)


def test_sigterm_while_the_model_is_checked_exits_130_as_ctrl_c_does(tmp_path, tiny_model_dir):
    """Before any page is in flight (here: hashing a large weights file, as on a slow network
    share) a SIGTERM killed the run (-15); now it ends as Ctrl-C there does: quietly, 130."""
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    # A sparse 4 GiB weights file: hashing it takes seconds, it occupies no disk.
    with open(model / "model.safetensors", "r+b") as weights:
        weights.truncate(4 << 30)
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.new("RGB", (60, 40), "white").save(inputs / "a.png")
    out = tmp_path / "out"
    process = start_cli(*run_args(inputs, out, model))
    deadline = time.monotonic() + 60
    while not (out / "run.log").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)  # into the checksum
    os.kill(process.pid, signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == ExitCode.INTERRUPTED, stderr
    assert "Traceback" not in stdout + stderr
