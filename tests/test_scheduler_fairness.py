"""Which idle worker the scheduler hands a batch to. In a run bound by its loaders, pages
arrive one at a time and every worker is idle each time: they must take turns, not leave every
batch to the first worker in line while the others stand idle.

Real parts throughout: the job store, registration, a page loader process, two worker
processes running the tiny model, the result writer (its ALTO validated against the schema).
"""

from __future__ import annotations

import os
import time
from collections import Counter

import pytest
from conftest import TESTDATA, assert_valid_alto

from pipeline.ingest.documents import IngestSettings
from pipeline.ingest.registration import DocumentRegistrar
from pipeline.jobs import open_for_run
from pipeline.recognition import page_pixel_budget
from pipeline.runner.device_plan import WorkerSlot
from pipeline.runner.loader_pool import LoaderPool
from pipeline.runner.model_session import WorkerOptions
from pipeline.runner.pending import PendingPages
from pipeline.runner.pool_events import BatchLost, PoolFailed
from pipeline.runner.progress import RunProgress, StageTimes
from pipeline.runner.reregistration import SourceChanges
from pipeline.runner.result_writer import ModelStamp, ResultWriter
from pipeline.runner.scheduler import Scheduler
from pipeline.runner.stopping import StopControl
from pipeline.runner.worker_pool import LocalWorkerPool

PDF_6 = TESTDATA / "pages/pdf/vicksburg_sample_ocr_6p.pdf"
PROMPT = "Read this page."
PAGES = 4


def handle_until(scheduler: Scheduler, done, timeout_s: float = 180) -> None:
    """Feed the pool's events to the scheduler until `done()`; a lost batch fails the test."""
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, "timed out waiting for the workers"
        for event in scheduler.workers.events(0.2):
            assert not isinstance(event, BatchLost | PoolFailed), event
            scheduler._handle(event)


@pytest.mark.slow
def test_idle_workers_take_turns_when_pages_arrive_one_at_a_time(tmp_path, tiny_model_dir):
    scans, out = tmp_path / "scans", tmp_path / "out"
    scans.mkdir()
    os.symlink(PDF_6, scans / "doc.pdf")
    ingest = IngestSettings(dpi=60)
    slots = [WorkerSlot(f"cpu:{i}", "cpu", None, None) for i in range(2)]
    options = WorkerOptions(str(tiny_model_dir), None, "native", PROMPT, 4, True, torch_threads=1)
    workers = LocalWorkerPool(slots, options, 120.0)
    loaders = LoaderPool(1, ingest, page_pixel_budget(tiny_model_dir, "native"), workers.wake)
    with open_for_run(out) as store:
        try:
            registrar = DocumentRegistrar(store, out, ingest, loaders.new_executor)
            loaders.executor = registrar.register([scans], loaders.executor)
            pending = PendingPages(store, out, ("alto", "txt"))
            progress = RunProgress(total=pending.remaining, quiet=True, loaders=1)
            writer = ResultWriter(
                out, store, ("alto", "txt"), ModelStamp("tiny", "0" * 64, PROMPT), StageTimes()
            )
            changes = SourceChanges(store, out, ingest, loaders.new_executor)
            scheduler = Scheduler(
                store, workers, loaders, writer, changes, StopControl(), progress,
                batch_size=2, max_attempts=3,
            )  # fmt: skip
            workers.start()
            handle_until(scheduler, lambda: len(progress.devices) == 2)  # both workers up
            for _ in range(PAGES):  # each page loaded, sent and answered before the next
                loaders.submit(pending.pop())
                while not scheduler.ready:
                    scheduler._take_loaded(pending)
                    time.sleep(0.05)
                assert [w.batches for w in workers.takers()] == [0, 0]  # every worker idle
                scheduler._dispatch(pending.remaining + len(loaders) + len(scheduler.ready))
                assert not scheduler.ready and workers.busy()
                handle_until(scheduler, lambda: not workers.busy())
        finally:
            loaders.shutdown()
            workers.shutdown(kill=True)
        by_worker = Counter(page.device for page in store.done_pages())
    assert by_worker == {"cpu:0": PAGES // 2, "cpu:1": PAGES // 2}
    altos = sorted(out.rglob("*.xml"))
    assert len(altos) == PAGES
    for alto in altos:
        assert_valid_alto(alto)
