"""Where a run's device workers run and its pages load: this machine, or a Ray cluster.

The runner asks its `Placement` and never imports the cluster package: that package sits above
the runner and builds on its parts (an actor holds a `ModelSession`, node loaders hand pages
back to a `LoaderPool`). `pipeline.launch` chooses the placement of each run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from pipeline.runner.device_plan import WorkerSlot, check_device_runtime, plan_workers
from pipeline.runner.loader_pool import LoaderPool
from pipeline.runner.model_session import WorkerOptions
from pipeline.runner.settings import RunSettings
from pipeline.runner.worker_pool import LocalWorkerPool, WorkerPool


class Placement(Protocol):
    def plan(self) -> None:
        """Refuse what can be refused before OUT exists (a refused device leaves no OUT)."""

    def slots(self) -> list[WorkerSlot]:
        """The run's device slots, one model per slot (called once OUT exists)."""

    def worker_pool(self, slots: list[WorkerSlot], options: WorkerOptions) -> WorkerPool:
        """The pool of device workers (processes here, or actors) for `slots`."""

    def page_loaders(self, workers: WorkerPool, head: LoaderPool):
        """What loads the pages: this machine's loader processes (`head`) or a stand-in for
        them with the same interface."""


ChoosePlacement = Callable[[RunSettings], Placement]


class LocalPlacement:
    """This machine's devices: one worker process per device (`--workers` on CPU), pages
    loaded by this machine's loader processes."""

    def __init__(self, settings: RunSettings) -> None:
        self.settings = settings
        self._slots: list[WorkerSlot] | None = None

    def plan(self) -> None:
        settings = self.settings
        check_device_runtime(settings.device)
        self._slots = plan_workers(settings.device, settings.devices, settings.workers)

    def slots(self) -> list[WorkerSlot]:
        if self._slots is None:
            self.plan()
        return self._slots

    def worker_pool(self, slots: list[WorkerSlot], options: WorkerOptions) -> WorkerPool:
        return LocalWorkerPool(slots, options, self.settings.batch_timeout_s)

    def page_loaders(self, workers: WorkerPool, head: LoaderPool) -> LoaderPool:
        return head
