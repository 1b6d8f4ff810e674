"""A page loader that dies while the run is stopping is a casualty of the stop (a job-wide
SIGTERM can reach a loader still starting, before it blocks SIGTERM), not of its pages: those
pages stay pending with no attempt counted. Outside a stop the same death still counts one, so
a file that crashes its loaders eventually fails.

Real parts: the job store (SQLite), registration, a page loader process, the scheduler. FAULT
INJECTION (labelled): ANANDASKY_TEST_FAULT=decode:hang holds the loader inside the decoder, and
the test SIGKILLs it there, as a crash would. No device worker is started: the pages never get
that far.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import time
from pathlib import Path

import pytest
from conftest import TESTDATA

from pipeline.faults import FAULT_VARIABLE
from pipeline.ingest.documents import IngestSettings
from pipeline.ingest.registration import DocumentRegistrar
from pipeline.jobs import open_for_run
from pipeline.runner.loader_pool import LoaderPool
from pipeline.runner.model_session import WorkerOptions
from pipeline.runner.pending import PendingPages
from pipeline.runner.progress import RunProgress, StageTimes
from pipeline.runner.reregistration import SourceChanges
from pipeline.runner.result_writer import ModelStamp, ResultWriter
from pipeline.runner.scheduler import Scheduler
from pipeline.runner.stopping import StopControl
from pipeline.runner.worker_pool import LocalWorkerPool

IMAGES = [TESTDATA / "pages/vertical/jp_vert.jpg", TESTDATA / "pages/vertical/ndl_3508165_9.jpg"]
PROMPT = "Read this page."


def _store_rows(out: Path) -> list[tuple[str, int]]:
    with contextlib.closing(sqlite3.connect(out / ".anandasky" / "jobs.sqlite")) as db:
        return list(db.execute("SELECT state, attempts FROM pages ORDER BY id"))


def _lose_both_pages_to_a_loader_crash(tmp_path: Path, monkeypatch, stopping: bool):
    """Both pages go to one loader; it hangs decoding the first and is killed there. Returns
    the store's (state, attempts) per page and how many pages are left to load."""
    scans, out = tmp_path / "scans", tmp_path / "out"
    scans.mkdir()
    for image in IMAGES:
        os.symlink(image, scans / image.name)
    ingest = IngestSettings(dpi=60)
    loaders = LoaderPool(1, ingest, None)
    options = WorkerOptions(str(tmp_path), None, "native", PROMPT, 4, True)
    workers = LocalWorkerPool([], options, 60.0)  # never started: no page reaches a device
    hanging = tmp_path / "decoding"
    with open_for_run(out) as store, StopControl() as stop:
        try:
            registrar = DocumentRegistrar(store, out, ingest, loaders.new_executor)
            registrar.register([scans], loaders.executor).shutdown(wait=True)
            # FAULT INJECTION: fresh loaders that hang in the decoder (once, marking it).
            monkeypatch.setenv(FAULT_VARIABLE, f"decode:hang:{hanging}")
            loaders.executor = loaders.new_executor()
            pending = PendingPages(store, out, ("alto",))
            progress = RunProgress(total=pending.remaining, quiet=True, loaders=1)
            writer = ResultWriter(
                out, store, ("alto",), ModelStamp("tiny", "0" * 64, PROMPT), StageTimes()
            )
            changes = SourceChanges(store, out, ingest, loaders.new_executor)
            scheduler = Scheduler(
                store, workers, loaders, writer, changes, stop, progress,
                batch_size=2, max_attempts=3,
            )  # fmt: skip
            while pending:
                loaders.submit(pending.pop())
            deadline = time.monotonic() + 60
            while not hanging.exists():
                assert time.monotonic() < deadline, "the loader never started decoding"
                time.sleep(0.05)
            if stopping:
                signal.raise_signal(signal.SIGTERM)  # the coordinator's own stop
                assert stop.stopping
            for process in list(loaders.executor._processes.values()):
                os.kill(process.pid, signal.SIGKILL)  # the loader crashes mid-page
            while len(loaders):
                assert time.monotonic() < deadline, "the dead loader's pages never came back"
                scheduler._take_loaded(pending)
                time.sleep(0.05)
        finally:
            loaders.shutdown()
        return _store_rows(out), pending.remaining


@pytest.mark.slow
def test_pages_of_a_loader_dying_during_a_stop_stay_pending_uncharged(tmp_path, monkeypatch):
    rows, to_load = _lose_both_pages_to_a_loader_crash(tmp_path, monkeypatch, stopping=True)
    assert rows == [("pending", 0), ("pending", 0)]
    assert to_load == 2


@pytest.mark.slow
def test_pages_of_a_loader_dying_outside_a_stop_are_charged_an_attempt(tmp_path, monkeypatch):
    rows, to_load = _lose_both_pages_to_a_loader_crash(tmp_path, monkeypatch, stopping=False)
    assert rows == [("pending", 1), ("pending", 1)]  # retried, one attempt closer to failing
    assert to_load == 2
