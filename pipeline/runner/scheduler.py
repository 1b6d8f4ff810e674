"""The scheduler: pages from the work queue to the loaders, loaded pages in batches to free
workers, results to the writer, failures back to the queue. It owns no process and no file;
the pools, the queue and the writer do the work, so a cluster pool or another job backend
changes nothing here.
"""

from __future__ import annotations

import logging
import math
from collections import Counter

from pipeline.errors import AnandaSkyError
from pipeline.ingest.page_loading import LoadFailure
from pipeline.ingest.source_changes import SourceChanged
from pipeline.jobs.backend import WorkQueue
from pipeline.jobs.records import printable
from pipeline.runner.batching import ReadyPage, ReadyPages
from pipeline.runner.loader_pool import LoaderPool
from pipeline.runner.pending import PendingPages
from pipeline.runner.pool_events import (
    BatchLost,
    BatchResult,
    PoolEvent,
    PoolFailed,
    WorkerRestarted,
    WorkerUp,
)
from pipeline.runner.progress import RunProgress
from pipeline.runner.reregistration import SourceChanges
from pipeline.runner.result_writer import ResultWriter, release_quietly
from pipeline.runner.stopping import StopControl
from pipeline.runner.worker_pool import JOBS_PER_WORKER, WorkerPool

log = logging.getLogger("anandasky")
_POLL_S = 0.05


class Scheduler:
    def __init__(
        self,
        queue: WorkQueue,
        workers: WorkerPool,
        loaders: LoaderPool,
        writer: ResultWriter,
        changes: SourceChanges,
        stop: StopControl,
        progress: RunProgress,
        *,
        batch_size: int,
        max_attempts: int,
    ) -> None:
        self.queue = queue
        self.workers = workers
        self.loaders = loaders
        self.writer = writer
        self.changes = changes
        self.stop = stop
        self.progress = progress
        self.batch_size = batch_size
        self.max_attempts = max_attempts
        self.ready = ReadyPages()
        self.alone: set[str] = set()  # workers holding a page that must go alone
        self.pages_sent: Counter[str] = Counter()  # per worker label, to break ties (`_dispatch`)
        self.fatal: AnandaSkyError | None = None

    def run(self, pending: PendingPages) -> None:
        """Until every page is done or failed, or the run stops (Ctrl-C, a fatal error)."""
        while not self.stop.aborting and self.fatal is None:
            # Loaded pages for every batch a device may hold, plus one per loader process.
            prefetch = self.batch_size * max(1, self.workers.live_count()) * JOBS_PER_WORKER
            prefetch += self.loaders.processes
            if self.stop.stopping:
                self.workers.begin_stop()
            else:
                while pending and len(self.loaders) + len(self.ready) < prefetch:
                    self.loaders.submit(pending.pop())
            self._take_loaded(pending)
            if not self.stop.stopping:
                self._dispatch(pending.remaining + len(self.loaders) + len(self.ready))
            idle = not self.workers.busy()
            if idle and (self.stop.stopping or not (pending or self.loaders or self.ready)):
                break
            if self.stop.grace_over():
                log.warning("batches in flight did not finish; they stay pending")
                break
            for event in self.workers.events(_POLL_S):
                self._handle(event)

    # -- loaded pages ------------------------------------------------------------------------

    def _take_loaded(self, pending: PendingPages) -> None:
        for task, result in self.loaders.harvest():
            if self.changes.is_stale(task):
                continue  # its file was registered again since; its new pages are queued
            if isinstance(result, SourceChanged):
                self.changes.handle(task, pending)
            elif isinstance(result, LoadFailure) and result.retry and self.stop.stopping:
                # Not the file's fault, and a loader dying now is most likely a casualty of the
                # stop (a job-wide SIGTERM reaching it while it started): no attempt is charged.
                # Pages being loaded are not claimed yet (`_dispatch` claims them), so the page
                # is still pending in the store for the next run.
                log.info(
                    "%s page %d: %s; the run is stopping, so no attempt is counted",
                    printable(task.relpath),
                    task.page_index + 1,
                    result.message,
                )
                pending.give_back(task)
            elif isinstance(result, LoadFailure):
                log.warning(
                    "%s page %d: %s", printable(task.relpath), task.page_index + 1, result.message
                )
                state = self.queue.fail(
                    task.page_id,
                    result.message,
                    max_attempts=self.max_attempts,
                    fatal=not result.retry,  # out of memory, a dead loader: not the file's fault
                )
                if state == "pending":
                    pending.give_back(task)
                else:
                    self.progress.page_failed()
            else:
                self.ready.add(ReadyPage.of(task, result))

    def _dispatch(self, remaining: int) -> None:
        live = self.workers.live_count() or 1
        # Near the end of the work, share what is left instead of handing it all to one device.
        batch_size = max(1, min(self.batch_size, math.ceil(remaining / live)))
        more_coming = remaining > len(self.ready)
        # Fewest batches out first (the pools' order); among equals the worker sent the fewest
        # pages, so idle workers take turns when pages trickle in instead of the first in line
        # taking every batch while the others stand idle.
        takers = sorted(self.workers.takers(), key=lambda w: (w.batches, self.pages_sent[w.label]))
        for worker in takers:
            if not self.ready:
                return
            if worker.label in self.alone:  # a page that must go alone is out on it
                continue
            # A worker already computing gets one more batch only when it is a full one.
            if worker.batches and len(self.ready) < batch_size and more_coming:
                continue
            # Pages of a file registered again since they were loaded are dropped, not sent:
            # their ids may already belong to the new registration's pages.
            taken = self.ready.take_batch(batch_size, alone=not worker.batches)
            batch = [p for p in taken if not self.changes.is_stale(p.task)]
            if batch:
                if batch[0].solo:  # nothing else goes to this worker until it answers
                    self.alone.add(worker.label)
                self.queue.claim([page.task.page_id for page in batch], worker.label)
                self.workers.send(worker, batch)
                self.pages_sent[worker.label] += len(batch)

    # -- what the workers say ----------------------------------------------------------------

    def _handle(self, event: PoolEvent) -> None:
        if isinstance(event, WorkerUp):
            stats = self.progress.device(event.label)
            stats.load_s, stats.node = event.load_s, event.node
            stats.visible_devices = event.visible_devices
        elif isinstance(event, WorkerRestarted):
            self.progress.device(event.label).restarts = event.restarts
        elif isinstance(event, PoolFailed):
            if self.fatal is None:
                self.fatal = event.error
        elif isinstance(event, BatchLost) and not event.charged:
            self._give_back(event.pages)
        elif isinstance(event, BatchLost):
            self._retry_or_fail(event.pages, event.error)
        elif isinstance(event, BatchResult):
            self._record(event)
        if isinstance(event, BatchLost | BatchResult):  # the worker answered (or is gone)
            self.alone.discard(event.label)

    def _record(self, event: BatchResult) -> None:
        stats = self.progress.device(event.label)
        stats.busy_s += event.infer_s
        stats.idle_s += event.wait_s
        pages = event.pages
        if len(event.recognitions) != len(pages):
            # Which answer belongs to which page is unknown: none is recorded, and no page may
            # stay "running" in a run that ends well.
            error = f"{len(event.recognitions)} result(s) for a batch of {len(pages)} pages"
            log.error("batch on %s: %s", event.label, error)
            self._retry_or_fail(pages, error)
            return
        per_page_s = event.infer_s / max(len(pages), 1)
        for page, recognition in zip(pages, event.recognitions, strict=True):
            if self.changes.is_stale(page.task):
                continue  # its file changed since it was loaded: never written
            if self.fatal is not None:
                release_quietly(self.queue, [page.task.page_id])
                continue
            try:
                self.writer.record(page, recognition, event.label, per_page_s, len(pages))
            except AnandaSkyError as error:  # OUT cannot take more pages: stop the run
                self.fatal = error
                continue
            stats.pages += 1
            self.progress.page_done()

    def _give_back(self, pages: list[ReadyPage]) -> None:
        """Pages whose worker was lost through no fault of theirs: pending again, no attempt
        counted; still loaded, so they go out in the next batch."""
        self.queue.release([page.task.page_id for page in pages])
        if not self.stop.stopping:
            for page in pages:
                if not self.changes.is_stale(page.task):
                    self.ready.add(page)

    def _retry_or_fail(self, pages: list[ReadyPage], error: str) -> None:
        for page in pages:
            if self.changes.is_stale(page.task):
                continue
            state = self.queue.fail(page.task.page_id, error, max_attempts=self.max_attempts)
            if state == "pending" and not self.stop.stopping:
                page.solo = True
                self.ready.add(page)
            elif state == "failed":
                task = page.task
                log.warning(
                    "%s page %d: failed: %s", printable(task.relpath), task.page_index + 1, error
                )
                self.progress.page_failed()
            else:
                self.queue.release([page.task.page_id])
