"""Worker pools: the model processes a run sends batches to.

The scheduler sees only `WorkerPool`: which workers can take a batch, `send`, and the events
that come back (`pool_events`). `LocalWorkerPool` runs one spawned process per device slot of
this machine, replaces workers that die or hang, and gives up on a device that keeps failing; a
cluster pool (one actor per device across nodes) implements the same interface.
"""

from __future__ import annotations

import abc
import logging
import multiprocessing as mp
import queue
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import AnandaSkyError, DevicesLost, ExitCode
from pipeline.runner.batching import ReadyPage
from pipeline.runner.device_plan import WorkerSlot
from pipeline.runner.device_worker import (
    BatchDone,
    BatchFailed,
    DeviceWorker,
    WorkerFailed,
    WorkerReady,
)
from pipeline.runner.model_session import LINE_ROWS_PER_PAGE, WorkerOptions
from pipeline.runner.pool_events import (
    BatchLost,
    BatchResult,
    PoolEvent,
    PoolFailed,
    WorkerRestarted,
    WorkerUp,
)
from pipeline.runner.settings import RunSettings

log = logging.getLogger("anandasky")

# A device whose worker keeps dying (driver fault, out of memory at load) is given up on.
MAX_WORKER_RESTARTS = 3
# Batches sent to a worker and not answered yet, at most (both pools' `takers`; the scheduler
# keeps loaded pages for this many batches per worker). A worker decodes its batches in one
# continuous batch, but a batch is answered, and a new one sent, only when its longest page
# stops: with too few out, rows stand empty behind each batch's long page. Rows in use per
# decode step while batches were still to come (real stream, tiny model, lengths of
# bench/continuous_batching.py's mix; 192 pages, 8 rows, batches of 8 / 256 pages, 16 rows,
# batches of 16): 1 out 40%, 2 out 74% / 66%, 3 out 96% / 91%, 4 out 100% / 99.8%, 6 out 100%.
# More than 4 buys nothing and holds more loaded pages, and more pages charged if a worker dies.
JOBS_PER_WORKER = 4


@dataclass(frozen=True)
class WorkerView:
    """What the scheduler may know of a worker when it hands out batches."""

    key: int
    label: str
    batches: int  # sent and not answered yet


class WorkerPool(abc.ABC):
    """One model worker per device; batches in, events out."""

    @abc.abstractmethod
    def start(self) -> None: ...

    @abc.abstractmethod
    def takers(self) -> list[WorkerView]:
        """Workers that can take one more batch now, least loaded first."""

    @abc.abstractmethod
    def live_count(self) -> int: ...

    @abc.abstractmethod
    def send(self, worker: WorkerView, pages: list[ReadyPage]) -> None: ...

    @abc.abstractmethod
    def events(self, timeout_s: float) -> list[PoolEvent]:
        """What happened since the last call, waiting up to `timeout_s` for something."""

    @abc.abstractmethod
    def wake(self) -> None:
        """Make a waiting `events` return now (called from other threads: loader callbacks)."""

    @abc.abstractmethod
    def busy(self) -> bool:
        """Some batch is out and not answered."""

    @abc.abstractmethod
    def begin_stop(self) -> None:
        """No replacements and no timeouts from now on: the run is stopping."""

    @abc.abstractmethod
    def shutdown(self, *, kill: bool) -> list[ReadyPage]:
        """End every worker; the pages of batches still out (to be released)."""


class LocalWorkerPool(WorkerPool):
    """One spawned process per device slot of this machine."""

    def __init__(
        self,
        slots: list[WorkerSlot],
        options: WorkerOptions,
        batch_timeout_s: float,
        ctx: mp.context.BaseContext | None = None,
    ) -> None:
        self.slots = slots
        self.options = options
        self.batch_timeout_s = batch_timeout_s
        self.ctx = ctx or mp.get_context("spawn")
        self.results = self.ctx.Queue()
        self.workers: dict[int, DeviceWorker] = {}
        self.stopping = False
        self._next_batch = 0

    def start(self) -> None:
        for key, slot in enumerate(self.slots):
            self.workers[key] = DeviceWorker.start(self.ctx, key, slot, self.options, self.results)

    def takers(self) -> list[WorkerView]:
        free = [
            w
            for w in self.workers.values()
            if w.ready and not w.dead and len(w.outstanding) < JOBS_PER_WORKER
        ]
        free.sort(key=lambda w: len(w.outstanding))
        return [WorkerView(w.worker_id, w.slot.label, len(w.outstanding)) for w in free]

    def live_count(self) -> int:
        return sum(1 for w in self.workers.values() if not w.dead)

    def send(self, worker: WorkerView, pages: list[ReadyPage]) -> None:
        self._next_batch += 1
        self.workers[worker.key].send(self._next_batch, pages, [page.model_input for page in pages])

    def wake(self) -> None:
        self.results.put(None)

    def busy(self) -> bool:
        return any(w.outstanding for w in self.workers.values())

    def begin_stop(self) -> None:
        self.stopping = True

    def events(self, timeout_s: float) -> list[PoolEvent]:
        events: list[PoolEvent] = []
        try:
            message = self.results.get(timeout=timeout_s)
        except queue.Empty:
            message = None
        if message is not None:
            events.extend(self._translate(message))
        events.extend(self._check_health())
        return events

    def shutdown(self, *, kill: bool) -> list[ReadyPage]:
        in_flight = [
            page
            for worker in self.workers.values()
            for batch in worker.outstanding.values()
            for page in batch
        ]
        for worker in self.workers.values():
            if kill:
                worker.kill()
            else:
                worker.stop()
        # Wake-ups nobody will read must not hold the process at exit (a feeder thread blocked
        # on a full pipe once its reader, this process, stopped reading).
        self.results.cancel_join_thread()
        return in_flight

    # -- inside -----------------------------------------------------------------------------

    def _translate(self, message) -> Iterator[PoolEvent]:
        worker = self.workers.get(getattr(message, "worker_id", -1))
        if worker is None:
            return
        if isinstance(message, WorkerReady):
            worker.ready = True
            log.info(
                "worker %s ready on %s (pid %d, visible devices %s) after %.1f s; decode: %s",
                message.label,
                message.device,
                message.pid,
                message.visible_devices if message.visible_devices is not None else "-",
                message.load_s,
                message.decode,
            )
            yield WorkerUp(message.label, message.load_s, visible_devices=message.visible_devices)
        elif isinstance(message, WorkerFailed):
            what = "could not load the model" if message.loading else "cannot run a batch"
            error = AnandaSkyError(f"worker {message.label} {what}: {message.message}")
            error.exit_code = ExitCode(message.exit_code)
            yield PoolFailed(error)
        elif isinstance(message, BatchDone):
            pages = worker.finished(message.batch_id)
            yield BatchResult(
                worker.slot.label, pages, message.recognitions, message.infer_s, message.wait_s
            )
        elif isinstance(message, BatchFailed):
            pages = worker.finished(message.batch_id)
            log.error("batch on %s failed: %s", worker.slot.label, message.error)
            yield BatchLost(worker.slot.label, pages, message.error)

    def _check_health(self) -> Iterator[PoolEvent]:
        """Dead or hung workers: their batches come back lost; they are replaced or given up."""
        for key, worker in list(self.workers.items()):
            if worker.dead:
                description = worker.exit_description()
            elif worker.overdue(self.batch_timeout_s) and not self.stopping:
                description = f"took longer than --batch-timeout {self.batch_timeout_s:g} s; killed"
                worker.kill()
            else:
                continue
            pages = [page for batch in worker.outstanding.values() for page in batch]
            worker.outstanding.clear()
            label = worker.slot.label
            log.error("worker %s %s; %d page(s) in flight", label, description, len(pages))
            yield BatchLost(label, pages, f"worker {label} {description}")
            worker.kill()
            if self.stopping or worker.restarts >= MAX_WORKER_RESTARTS:
                del self.workers[key]
                log.error("giving up on device %s", label)
                continue
            replacement = DeviceWorker.start(self.ctx, key, worker.slot, self.options, self.results)
            replacement.restarts = worker.restarts + 1
            self.workers[key] = replacement
            yield WorkerRestarted(label, replacement.restarts)
        if not self.workers and not self.stopping:
            yield PoolFailed(
                DevicesLost(
                    "every device worker died; see run.log. Unfinished pages stay pending: "
                    "fix the cause and run the same command again"
                )
            )


def worker_options(settings: RunSettings, slots: list[WorkerSlot], prompt: str) -> WorkerOptions:
    """How every worker loads and runs the model; CPU workers share the cores left to them."""
    cpu_slots = sum(slot.device_type == "cpu" for slot in slots)
    threads = None
    if cpu_slots:
        threads = max(1, (mp.cpu_count() - settings.loader_processes(slots)) // cpu_slots)
    return WorkerOptions(
        model_dir=str(Path(settings.model_dir).resolve()),
        dtype=settings.dtype,
        impl=settings.impl,
        prompt=prompt,
        max_new_tokens=settings.max_new_tokens,
        repetition_guard=settings.repetition_guard,
        torch_threads=threads,
        max_batch=settings.max_batch,
        token_budget=settings.token_budget,
        stream_rows=settings.batch_size * (LINE_ROWS_PER_PAGE if settings.layout == "lines" else 1),
        decode_graphs=settings.decode_graphs,
    )
